"""Bans that follow traffic, end to end through on_log_sink: a request our
own band denied extends the entry that denied it (handlers/follow.py), and
nothing else. Every test asserts on the band the local API holds."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from handlers import follow
from localapi import LocalCloudArmor
from responder.codec import decode
from responder.planner import round_down
from tests.e2e.conftest import BAND, GRANULARITY, PROJECT, REGION, Harness, _harness, expiry_word
from tests.e2e.support import BASE_CONFIG, lb_entry, records, sample

WAF = ["owasp-crs-v030301-id942100-sqli"]
A, B, C = "185.220.101.34", "45.155.205.233", "91.92.109.43"


@pytest.fixture(autouse=True)
def _fresh_memory() -> None:
    """Each test starts as a fresh instance: no denies followed yet."""
    follow._followed.clear()


def net(address: str) -> str:
    return f"{address}/32"


def waf_block(h: Harness, address: str, mid: str) -> None:
    """A WAF hit: the cloud-armor-waf detector blocks the client for 6h."""
    entry = lb_entry(address, outcome="DENY", exprs=WAF, status=403, when=h.clock(), project=PROJECT,
                     regional=h.region is not None, region=h.region)
    assert 200 == h.publish("on_log_sink", entry, message_id=mid)


def priority_of(h: Harness, network: str) -> int:
    return max(r["priority"] for r in h.band_rules() if network in r["match"]["config"]["srcIpRanges"])


def band_deny(h: Harness, address: str, *, priority: int | None = None, when: datetime | None = None,
              **fields: Any) -> dict[str, Any]:
    """The request log entry of a request a band rule denied."""
    if priority is None:
        priority = priority_of(h, net(address)) if net(address) in h.blocked() else BAND[0]
    fields.setdefault("project", PROJECT)
    fields.setdefault("regional", h.region is not None)
    fields.setdefault("region", h.region)
    return lb_entry(address, outcome="DENY", status=403, when=when or h.clock(), priority=priority, **fields)


def reads(h: Harness, since: int) -> int:
    return sum(1 for r in h.server.requests[since:] if r.get("route") in ("get", "getRule"))


def writes(h: Harness, since: int) -> int:
    return sum(1 for r in h.server.requests[since:] if r.get("route") in ("addRule", "patchRule", "removeRule"))


@pytest.mark.parametrize("scope", ["functions", "regional_functions"])
def test_denied_requests_extend_exactly_the_hit_entries_and_the_others_expire(
    scope: str, request: pytest.FixtureRequest
) -> None:
    h: Harness = request.getfixturevalue(scope)
    start = h.clock()
    for i, address in enumerate((A, B, C)):
        waf_block(h, address, f"waf-{i}")
    six = expiry_word(start + timedelta(hours=6))
    assert {net(A): six, net(B): six, net(C): six} == h.blocked()

    h.clock.advance(timedelta(hours=5))
    assert 200 == h.publish("on_log_sink", band_deny(h, A), message_id="deny-1")
    followed = expiry_word(round_down(h.clock(), GRANULARITY) + timedelta(hours=6))
    assert {net(A): followed, net(B): six, net(C): six} == h.blocked()
    extended = records(h, "extended", "deny-1")
    assert [[net(A)]] == [r["ranges"] for r in extended]
    assert "follows traffic" in extended[0]["reason"] and ["cloud-armor-waf"] == extended[0]["sources"]

    h.clock.advance(timedelta(hours=2))  # past the 6h of B and C, not the extended A
    assert 200 == h.publish("on_cleanup", {})
    assert {net(A): followed} == h.blocked()


def test_the_extension_counts_from_the_request_time_and_never_from_a_future_one(functions: Harness) -> None:
    start = functions.clock()
    waf_block(functions, A, "waf-a")
    waf_block(functions, B, "waf-b")
    functions.clock.advance(timedelta(hours=5))
    now = functions.clock()
    earlier = band_deny(functions, A, when=now - timedelta(hours=1))  # delivered an hour late
    future = band_deny(functions, B, when=now + timedelta(days=2))  # a clock gone wrong: not trusted
    assert 200 == functions.publish("on_log_sink", earlier, message_id="late")
    assert 200 == functions.publish("on_log_sink", future, message_id="future")
    assert {
        net(A): expiry_word(round_down(now - timedelta(hours=1), GRANULARITY) + timedelta(hours=6)),
        net(B): expiry_word(round_down(now, GRANULARITY) + timedelta(hours=6)),
    } == functions.blocked()
    assert start < now


def test_a_permanent_manual_block_is_untouched(functions: Harness) -> None:
    command = {"action": "block", "ranges": [A], "actor": "oncall@example.com", "permanent": True}
    assert 200 == functions.publish("on_manual", command)
    waf_block(functions, A, "waf-a")  # a detector's claim on it too: still permanent
    assert {net(A): "never"} == functions.blocked()
    band = functions.band_rules()
    functions.clock.advance(timedelta(hours=5))
    since = len(functions.server.requests)
    assert 200 == functions.publish("on_log_sink", band_deny(functions, A))
    assert band == functions.band_rules()
    assert 0 == writes(functions, since)


def test_an_entry_only_a_feed_holds_is_not_extended_and_expires(functions: Harness) -> None:
    feed = {"feed": "example-intel", "indicators": [{"range": C, "confidence": 90}]}  # ttl 12h
    start = functions.clock()
    assert 200 == functions.publish("on_threat_feed", feed)
    assert {net(C): expiry_word(start + timedelta(hours=12))} == functions.blocked()
    functions.clock.advance(timedelta(hours=11))
    since = len(functions.server.requests)
    assert 200 == functions.publish("on_log_sink", band_deny(functions, C))
    assert 0 == writes(functions, since)
    assert {net(C): expiry_word(start + timedelta(hours=12))} == functions.blocked()
    functions.clock.advance(timedelta(hours=2))
    assert 200 == functions.publish("on_cleanup", {})
    assert {} == functions.blocked()


def claims_on(h: Harness, network: str) -> dict[str, str]:
    """Each source's own claim on ``network`` (its expiry word), over the
    band rules that hold it."""
    out: dict[str, str] = {}
    for rule in h.band_rules():
        meta = decode("car1", rule["description"])
        if meta is None or network not in rule["match"]["config"]["srcIpRanges"]:
            continue
        for source, (expiry, _) in meta.claim_map().items():
            word = "never" if expiry is None else expiry.strftime("%Y%m%d%H%M")
            out[source] = max(out.get(source, word), word)
    return out


def test_an_entry_a_feed_and_a_detector_share_follows_by_the_detectors_own_claim(functions: Harness) -> None:
    feed = {"feed": "example-intel", "indicators": [{"range": C, "confidence": 90}]}  # ttl 12h
    start = functions.clock()
    assert 200 == functions.publish("on_threat_feed", feed)
    waf_block(functions, C, "waf-c")  # 6h
    functions.clock.advance(timedelta(hours=5))
    assert 200 == functions.publish("on_log_sink", band_deny(functions, C))
    # The detector's claim follows the traffic; the feed's stays its own 12 h.
    followed = expiry_word(round_down(functions.clock(), GRANULARITY) + timedelta(hours=6))
    assert {"cloud-armor-waf": followed, "example-intel": expiry_word(start + timedelta(hours=12))} == claims_on(functions, net(C))
    # The feed withdraws: the detector's own claim keeps the address blocked
    # exactly until it ends. (The two claims and the strike record do not
    # fit one 64-character description: the entry is written as two
    # records, and reading the band back merges them.)
    revoke = {"feed": "example-intel", "indicators": [{"range": C, "revoked": True}]}
    assert 200 == functions.publish("on_threat_feed", revoke)
    assert {"cloud-armor-waf": followed} == claims_on(functions, net(C))
    assert {net(C): followed} == functions.blocked()


def test_a_deny_after_the_detectors_claim_ended_is_not_followed(functions: Harness) -> None:
    feed = {"feed": "example-intel", "indicators": [{"range": C, "confidence": 90}]}  # ttl 12h
    start = functions.clock()
    assert 200 == functions.publish("on_threat_feed", feed)
    waf_block(functions, C, "waf-c")  # 6h
    functions.clock.advance(timedelta(hours=11))  # the detector's claim ended 5 h ago: only the feed's is left
    since = len(functions.server.requests)
    assert 200 == functions.publish("on_log_sink", band_deny(functions, C))
    assert 0 == writes(functions, since)
    assert 200 == functions.publish("on_cleanup", {})
    assert {net(C): expiry_word(start + timedelta(hours=12))} == functions.blocked()
    assert {"example-intel": expiry_word(start + timedelta(hours=12))} == claims_on(functions, net(C))


def test_a_burst_of_1000_denies_on_5_entries_writes_at_most_once_per_entry(functions: Harness) -> None:
    hit = [f"45.148.10.{i}" for i in range(1, 6)]
    for i, address in enumerate([*hit, A]):
        waf_block(functions, address, f"waf-{i}")  # one rule each, as the append writer adds them
    rules = {net(a): priority_of(functions, net(a)) for a in hit}
    assert 5 == len(set(rules.values()))
    before = functions.blocked()
    functions.clock.advance(timedelta(hours=2))
    since = len(functions.server.requests)
    for i in range(1000):
        address = hit[i % 5]
        assert 200 == functions.publish("on_log_sink", band_deny(functions, address, priority=rules[net(address)]),
                                        message_id=f"burst-{i}")
    assert writes(functions, since) <= len(rules)
    assert reads(functions, since) <= 2
    followed = expiry_word(round_down(functions.clock(), GRANULARITY) + timedelta(hours=6))
    assert {**{net(a): followed for a in hit}, net(A): before[net(A)]} == functions.blocked()

    # Another instance (nothing followed yet) sees a deny in the same bucket: the band already holds it.
    follow._followed.clear()
    since = len(functions.server.requests)
    assert 200 == functions.publish("on_log_sink", band_deny(functions, hit[0], priority=rules[net(hit[0])]))
    assert 0 == writes(functions, since)


@pytest.mark.parametrize("fields", [
    {"policy": "other-edge"},  # not our policy
    {"priority": 3000},  # the operators' WAF rule, before the band
    {"priority": BAND[1] + 1},  # after the band
    {"priority": 2147483647},  # the default rule
    {"project": "another-project"},  # a policy of that name in another project
    {"regional": True, "region": REGION},  # a regional policy of that name; ours is global
    {"outcome_accept": True},  # our rule matched in preview, or the request was allowed
])
def test_a_deny_of_another_policy_or_outside_the_band_is_ignored(functions: Harness, fields: dict[str, Any]) -> None:
    waf_block(functions, A, "waf-a")
    band = functions.band_rules()
    functions.clock.advance(timedelta(hours=5))
    since = len(functions.server.requests)
    if fields.pop("outcome_accept", False):
        entry = lb_entry(A, outcome="ACCEPT", when=functions.clock(), priority=priority_of(functions, net(A)),
                         project=PROJECT)
    else:
        entry = band_deny(functions, A, **fields)
    assert 200 == functions.publish("on_log_sink", entry, message_id="other")
    assert band == functions.band_rules()
    assert 0 == writes(functions, since)
    assert ["other"] == [r["message_id"] for r in records(functions, "unchanged", "other")]


def test_a_deny_of_an_address_no_entry_covers_blocks_nothing(functions: Harness) -> None:
    waf_block(functions, A, "waf-a")
    band = functions.band_rules()
    since = len(functions.server.requests)
    assert 200 == functions.publish("on_log_sink", band_deny(functions, B, priority=priority_of(functions, net(A))))
    assert band == functions.band_rules()
    assert 0 == writes(functions, since)
    assert [] == records(functions, "added")[1:]


def test_an_ipv6_deny_extends_the_64_that_holds_the_client(functions: Harness) -> None:
    waf_block(functions, "2a0b:4142:2::1", "waf-v6")
    assert ["2a0b:4142:2::/64"] == list(functions.blocked())
    functions.clock.advance(timedelta(hours=4))
    entry = band_deny(functions, "[2a0b:4142:2::99]:443", priority=priority_of(functions, "2a0b:4142:2::/64"))
    assert 200 == functions.publish("on_log_sink", entry)
    assert {"2a0b:4142:2::/64": expiry_word(round_down(functions.clock(), GRANULARITY) + timedelta(hours=6))} == (
        functions.blocked())


def test_the_recorded_deny_sample_as_our_band_wrote_it_extends_its_client(functions: Harness) -> None:
    waf_block(functions, "1.2.3.4", "waf-1")
    functions.clock.advance(timedelta(hours=3))
    entry = json.loads(sample("lb_request_log_cloud_armor_deny_sekoia.json"))
    entry["jsonPayload"]["enforcedSecurityPolicy"].update(name="ml-edge", priority=priority_of(functions, "1.2.3.4/32"))
    entry["resource"]["labels"]["project_id"] = PROJECT
    entry["timestamp"] = functions.clock().isoformat()
    assert 200 == functions.publish("on_log_sink", entry)
    assert {"1.2.3.4/32": expiry_word(round_down(functions.clock(), GRANULARITY) + timedelta(hours=6))} == (
        functions.blocked())


def test_with_follow_denies_off_for_logs_a_deny_changes_nothing(
    local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "responder.toml"
    config.write_text(BASE_CONFIG.read_text().replace("[sources.log]\n", "[sources.log]\nfollow_denies = false\n"))
    monkeypatch.setenv("RESPONDER_CONFIG", str(config))
    h = _harness(local_api, monkeypatch, tmp_path, None)
    start = h.clock()
    waf_block(h, A, "waf-a")
    h.clock.advance(timedelta(hours=5))
    since = len(h.server.requests)
    assert 200 == h.publish("on_log_sink", band_deny(h, A))
    assert 0 == writes(h, since)
    assert {net(A): expiry_word(start + timedelta(hours=6))} == h.blocked()


def test_a_deny_of_an_allowlisted_address_is_refused_and_extends_nothing(functions: Harness) -> None:
    waf_block(functions, A, "waf-a")
    band = functions.band_rules()
    since = len(functions.server.requests)
    entry = band_deny(functions, "35.191.0.5", priority=priority_of(functions, net(A)))  # guards.allowlist
    assert 200 == functions.publish("on_log_sink", entry, message_id="allowed")
    assert band == functions.band_rules()
    assert 0 == writes(functions, since)
    assert ["allowed"] == [r["message_id"] for r in records(functions, "refused", "allowed")]


@pytest.mark.parametrize("remote, complaint", [
    ("not-an-address", "httpRequest.remoteIp"),
    ("45.155.205.0/24", "is a range, not a client"),
])
def test_a_band_deny_without_a_client_address_is_rejected_once(functions: Harness, remote: str, complaint: str) -> None:
    waf_block(functions, A, "waf-a")
    band = functions.band_rules()
    entry = band_deny(functions, A, priority=priority_of(functions, net(A)))
    entry["httpRequest"]["remoteIp"] = remote
    assert 200 == functions.publish("on_log_sink", entry, message_id="bad")
    assert band == functions.band_rules()
    rejected = records(functions, "rejected", "bad")
    assert 1 == len(rejected) and complaint in rejected[0]["error"]

