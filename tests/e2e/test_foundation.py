"""The foundation end to end: manual commands, JSON feeds and cleanup
through the real entry points, against the local Cloud Armor API, asserting
on the resulting policy."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest

from localapi import FaultConfig
from tests.e2e.conftest import OPERATOR_RULES, Harness, expiry_word

ATTACKER = "185.220.101.34"
ATTACKER_NET = "185.220.101.34/32"


def block(ranges: list[str], **extra: object) -> dict[str, object]:
    return {"action": "block", "ranges": ranges, "actor": "oncall@example.com", "reason": "test", **extra}


def test_block_extend_unblock_expire_cycle_leaves_exactly_the_expected_rules(functions: Harness) -> None:
    operator_rules_before = copy.deepcopy(functions.other_rules())
    start = functions.clock()

    assert 200 == functions.publish("on_manual", block([ATTACKER, "91.92.109.0/24"], ttl="2h"))
    assert {ATTACKER_NET: expiry_word(start + timedelta(hours=2)), "91.92.109.0/24": expiry_word(start + timedelta(hours=2))} == functions.blocked()

    assert 200 == functions.publish("on_manual", {**block([ATTACKER], ttl="10h"), "action": "extend"})
    assert expiry_word(start + timedelta(hours=10)) == functions.blocked()[ATTACKER_NET]

    assert 200 == functions.publish("on_manual", {"action": "unblock", "ranges": ["91.92.109.0/24"], "actor": "oncall@example.com"})
    assert {ATTACKER_NET: expiry_word(start + timedelta(hours=10))} == functions.blocked()

    functions.clock.advance(timedelta(hours=11))
    assert 200 == functions.publish("on_cleanup", {"action": "cleanup"})
    assert [] == functions.band_rules()
    assert operator_rules_before == functions.other_rules()


def test_block_packs_aggregated_ranges_ten_to_a_rule(functions: Harness) -> None:
    # 24 adjacent /26s aggregate to 6 /24s; plus 12 scattered hosts: 18 ranges, 2 rules.
    quarters = [f"62.{i}.1.{q * 64}/26" for i in range(60, 66) for q in range(4)]
    hosts = [f"77.{i}.3.9" for i in range(90, 102)]
    assert 200 == functions.publish("on_manual", block(quarters + hosts, ttl="1h"))
    rules = functions.band_rules()
    ranges = sorted(r for rule in rules for r in rule["match"]["config"]["srcIpRanges"])
    assert sorted([f"62.{i}.1.0/24" for i in range(60, 66)] + [f"77.{i}.3.9/32" for i in range(90, 102)]) == ranges
    assert [10, 8] == sorted((len(r["match"]["config"]["srcIpRanges"]) for r in rules), reverse=True)
    assert all(20000 <= r["priority"] <= 20999 for r in rules)


def test_redelivered_message_changes_nothing(functions: Harness) -> None:
    message = block([ATTACKER], ttl="6h")
    assert 200 == functions.publish("on_manual", message, message_id="m-1")
    band = functions.band_rules()
    writes = len(functions.mutations())

    functions.clock.advance(timedelta(minutes=7))  # redelivery comes later
    assert 200 == functions.publish("on_manual", message, message_id="m-1", publish_time=functions.clock() - timedelta(minutes=7))

    assert band == functions.band_rules()
    assert writes == len(functions.mutations())


def test_malformed_message_is_acknowledged_with_one_record_and_changes_nothing(functions: Harness) -> None:
    before = functions.policy()

    status = functions.publish("on_manual", b"{not json", message_id="bad-1")

    assert 200 == status
    assert before["rules"] == functions.policy()["rules"]
    assert [] == functions.mutations()
    rejected = [r for r in functions.audit if r["change"] == "rejected"]
    assert 1 == len(rejected)
    assert "bad-1" == rejected[0]["message_id"]
    assert "not JSON" in rejected[0]["error"]


@pytest.mark.parametrize(
    "command, complaint",
    [
        ({"action": "ban", "ranges": [ATTACKER], "actor": "a"}, "'action'"),
        ({"action": "block", "ranges": [], "actor": "a"}, "'ranges'"),
        ({"action": "block", "ranges": [ATTACKER]}, "'actor'"),
        ({"action": "block", "ranges": [ATTACKER], "actor": "a", "ttl": "soon"}, "ttl"),
        ({"action": "block", "ranges": [ATTACKER], "actor": "a", "ttl": "1h", "permanent": True}, "only one of"),
        ({"action": "extend", "ranges": [ATTACKER], "actor": "a"}, "needs a ttl"),
        ({"action": "block", "ranges": ["not-an-ip"], "actor": "a"}, "no valid range"),
        ({"action": "block", "ranges": [ATTACKER], "actor": "a", "tll": "1h"}, "unknown field 'tll'"),
        ({"action": "block", "ranges": [ATTACKER], "actor": "a", "expiry": "2030-01-01T00:00:00"}, "timezone"),
    ],
)
def test_invalid_manual_command_is_rejected_and_changes_nothing(functions: Harness, command: dict[str, object], complaint: str) -> None:
    assert 200 == functions.publish("on_manual", command)
    assert [] == functions.band_rules()
    rejected = [r for r in functions.audit if r["change"] == "rejected"]
    assert 1 == len(rejected)
    assert complaint in rejected[0]["error"]


def test_transient_api_failure_raises_so_pubsub_redelivers(functions: Harness) -> None:
    functions.server.faults = FaultConfig(http_503=1.0, scope="all", seed=1)
    message = block([ATTACKER], ttl="1h")

    first = functions.publish("on_manual", message, message_id="m-503")

    assert 500 == first
    functions.server.faults = FaultConfig()
    assert 200 == functions.publish("on_manual", message, message_id="m-503")
    assert [ATTACKER_NET] == list(functions.blocked())


def test_guards_refuse_private_allowlisted_and_too_broad_ranges(functions: Harness) -> None:
    status = functions.publish("on_manual", block(["10.0.0.1", "35.191.3.4", "80.0.0.0/8", ATTACKER], ttl="1h"))
    assert 200 == status
    assert [ATTACKER_NET] == list(functions.blocked())
    refused = sorted(r["ranges"][0] for r in functions.audit if r["change"] == "refused")
    assert ["10.0.0.1/32", "35.191.3.4/32", "80.0.0.0/8"] == refused


def test_forced_manual_block_may_be_broader_than_the_minimum_prefix(functions: Harness) -> None:
    assert 200 == functions.publish("on_manual", block(["80.0.0.0/8"], ttl="1h", force=True))
    assert ["80.0.0.0/8"] == list(functions.blocked())


def test_permanent_manual_block_survives_cleanup_and_feed_sightings(functions: Harness) -> None:
    assert 200 == functions.publish("on_manual", block([ATTACKER], permanent=True))
    feed = {"feed": "intel", "indicators": [{"range": ATTACKER, "ttl": "1h"}]}
    assert 200 == functions.publish("on_threat_feed", feed)
    functions.clock.advance(timedelta(days=400))
    assert 200 == functions.publish("on_cleanup", {})
    assert {ATTACKER_NET: "never"} == functions.blocked()


def test_json_feed_applies_indicators_with_their_ttls_and_skips_low_confidence(functions: Harness) -> None:
    start = functions.clock()
    feed = {
        "feed": "example-intel",
        "indicators": [
            {"range": "193.142.146.0/24", "confidence": 90},
            {"range": "91.92.109.43", "ttl": "6h", "confidence": 80},
            {"range": "5.188.11.0/24", "confidence": 30},
            {"range": "not-an-address"},
        ],
    }
    assert 200 == functions.publish("on_threat_feed", feed)
    # example-intel is configured with ttl 12h and min_confidence 50.
    assert {
        "193.142.146.0/24": expiry_word(start + timedelta(hours=12)),
        "91.92.109.43/32": expiry_word(start + timedelta(hours=6)),
    } == functions.blocked()
    refused = [r for r in functions.audit if r["change"] == "refused"]
    assert 1 == len(refused) and 1 == refused[0]["error_count"]


def test_feed_resighting_extends_and_never_shortens(functions: Harness) -> None:
    start = functions.clock()
    feed = {"feed": "intel", "indicators": [{"range": ATTACKER, "ttl": "6h"}]}
    assert 200 == functions.publish("on_threat_feed", feed)
    functions.clock.advance(timedelta(hours=1))
    assert 200 == functions.publish("on_threat_feed", {"feed": "intel", "indicators": [{"range": ATTACKER, "ttl": "1h"}]})
    assert expiry_word(start + timedelta(hours=6)) == functions.blocked()[ATTACKER_NET]
    assert 200 == functions.publish("on_threat_feed", {"feed": "intel", "indicators": [{"range": ATTACKER, "ttl": "9h"}]})
    assert expiry_word(start + timedelta(hours=10)) == functions.blocked()[ATTACKER_NET]


def test_same_range_from_two_sources_is_one_entry_that_remembers_both(functions: Harness) -> None:
    assert 200 == functions.publish("on_threat_feed", {"feed": "intel-a", "indicators": [{"range": ATTACKER, "ttl": "6h"}]})
    assert 200 == functions.publish("on_threat_feed", {"feed": "intel-b", "indicators": [{"range": ATTACKER, "ttl": "2h"}]})
    assert 200 == functions.publish("on_cleanup", {})
    rules = functions.band_rules()
    assert 1 == len(rules)
    assert "s=intel-a+intel-b" in rules[0]["description"]


def test_cleanup_repacks_partly_filled_rules(functions: Harness) -> None:
    for i in range(12):  # twelve events, one host each, same expiry bucket
        assert 200 == functions.publish("on_manual", block([f"77.{i + 10}.3.9"], ttl="3h"))
    assert 12 == len(functions.band_rules())

    assert 200 == functions.publish("on_cleanup", {})

    rules = functions.band_rules()
    assert [10, 2] == sorted((len(r["match"]["config"]["srcIpRanges"]) for r in rules), reverse=True)
    assert sorted(f"77.{i + 10}.3.9/32" for i in range(12)) == sorted(functions.blocked())
    usage = [r for r in functions.audit if r["change"] == "usage"]
    assert 2 == usage[-1]["band_rules"]


def test_cleanup_with_nothing_to_do_reads_once_and_writes_nothing(functions: Harness) -> None:
    assert 200 == functions.publish("on_manual", block([ATTACKER], ttl="3h"))
    functions.server.requests.clear()
    assert 200 == functions.publish("on_cleanup", {})
    reads = [r for r in functions.server.requests if r["method"] == "GET"]
    assert [] == functions.mutations()
    assert 1 == len(reads)


def test_foreign_rule_inside_the_band_is_reported_and_never_changed(functions: Harness) -> None:
    foreign = {"priority": 20500, "action": "deny(403)", "description": "someone else's rule",
               "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["2.58.56.0/24"]}}}
    import tests.e2e.conftest as c

    c._http("POST", f"{functions.server.endpoint}/compute/v1/projects/{c.PROJECT}/global/securityPolicies/{c.POLICY}/addRule", foreign)
    assert 200 == functions.publish("on_manual", block([ATTACKER], ttl="1h"))
    assert 200 == functions.publish("on_cleanup", {})
    kept = [r for r in functions.band_rules() if r["priority"] == 20500]
    assert [foreign["description"]] == [r["description"] for r in kept]
    assert ["2.58.56.0/24"] == kept[0]["match"]["config"]["srcIpRanges"]
    lint = [r["message"] for r in functions.audit if r["change"] == "lint"]
    assert 1 == len(lint)
    assert lint[0].startswith("rule 20500 (someone else's rule) is inside the band")


def test_regional_policy_is_managed_the_same_way(regional_functions: Harness) -> None:
    assert 200 == regional_functions.publish("on_manual", block([ATTACKER], ttl="1h"))
    assert [ATTACKER_NET] == list(regional_functions.blocked())
    assert 200 == regional_functions.publish("on_manual", {"action": "unblock", "ranges": [ATTACKER], "actor": "a"})
    assert [] == regional_functions.band_rules()


def test_operator_rules_are_untouched_after_every_kind_of_change(functions: Harness) -> None:
    before = copy.deepcopy(functions.other_rules())
    assert [r["priority"] for r in before] == [r["priority"] for r in OPERATOR_RULES]
    functions.publish("on_manual", block([ATTACKER, "91.92.109.0/24"], ttl="1h"))
    functions.publish("on_threat_feed", {"feed": "intel", "indicators": [{"range": "193.142.146.0/24"}]})
    functions.publish("on_manual", {"action": "unblock", "ranges": ["91.92.109.7"], "actor": "a"})
    functions.clock.advance(timedelta(days=2))
    functions.publish("on_cleanup", {})
    assert before == functions.other_rules()


def test_repeated_sightings_reuse_a_recent_read_and_write_once(functions: Harness) -> None:
    functions.server.requests.clear()
    for i in range(20):
        feed = {"feed": "intel", "indicators": [{"range": ATTACKER, "ttl": "6h"}]}
        assert 200 == functions.publish("on_threat_feed", feed, message_id=f"hot-{i}")
    reads = [r for r in functions.server.requests if r["method"] == "GET" and r["path"].endswith("/securityPolicies/ml-edge")]
    assert 1 == len([m for m in functions.mutations() if m["path"].endswith("/addRule")])
    assert len(reads) <= 2  # one read, reused within policy.read_cache (5 s)
    assert [ATTACKER_NET] == list(functions.blocked())
