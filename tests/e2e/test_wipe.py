"""The hazard itself (issue 16): a tool that owns the policy (Terraform,
Pulumi after a refresh) removes the band's rules one removeRule at a time;
the cleanup notices, and ``cli.py restore`` brings the band back exactly.

Through the real functions (functions-framework test clients) and the CLI,
against the local API through the real compute client."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import cli
from tests.e2e.conftest import BAND, POLICY, PROJECT, Harness, _http
from tests.e2e.support import lb_entry, records

ATTACKER = "185.220.101.34"
SCANNER = "45.95.147.236"


def band_view(h: Harness) -> dict[str, tuple[str, str, bool]]:
    """Every range in the band -> its rule's description (expiry, severity,
    strikes, sources), action and preview."""
    return {
        net: (rule["description"], rule["action"], bool(rule.get("preview", False)))
        for rule in h.band_rules()
        for net in rule["match"]["config"]["srcIpRanges"]
    }


def remove_as_a_provider_would(h: Harness) -> int:
    """One removeRule per band rule over plain HTTP: the responder plays no part."""
    base = f"{h.server.endpoint}/compute/v1/projects/{PROJECT}/global"
    priorities = [r["priority"] for r in h.band_rules()]
    for priority in priorities:
        op = _http("POST", f"{base}/securityPolicies/{POLICY}/removeRule?priority={priority}")
        done = _http("POST", f"{base}/operations/{op['name']}/wait")
        assert "error" not in done, done
    return len(priorities)


def land_blocks(h: Harness) -> None:
    """Manual (one split by an unblock afterwards), feed and log blocks; the
    log offender is sighted twice, so it carries a strike."""
    manual = {"action": "block", "ranges": [ATTACKER, "91.92.109.0/24"], "actor": "oncall@example.com", "ttl": "2h"}
    assert 200 == h.publish("on_manual", manual)
    feed = {"feed": "example-intel", "indicators": [
        {"range": "193.142.146.0/24", "ttl": "12h"}, {"range": "91.92.109.43", "ttl": "6h"}]}
    assert 200 == h.publish("on_threat_feed", feed)
    entry = lb_entry(SCANNER, outcome="DENY", exprs=["owasp-crs-v030301-id942100-sqli"], status=403)
    assert 200 == h.publish("on_log_sink", entry, message_id="log-1")
    h.clock.advance(timedelta(minutes=20))
    assert 200 == h.publish("on_log_sink", entry, message_id="log-2")
    unblock = {"action": "unblock", "ranges": ["91.92.109.7"], "actor": "oncall@example.com", "reason": "customer"}
    assert 200 == h.publish("on_manual", unblock)


def test_a_wiped_band_is_noticed_and_restored_exactly(functions: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    land_blocks(functions)
    assert 200 == functions.publish("on_cleanup", {})  # records what the band holds
    before = band_view(functions)
    others = functions.other_rules()
    assert any(" n=1-" in d for d, _, _ in before.values())  # the log offender's strike
    assert "91.92.109.7/32" not in before and "91.92.109.6/32" in before  # the unblock split the /24
    assert {"manual", "example-intel", "cloud-armor-waf"} <= {
        s for d, _, _ in before.values() for s in d.split("s=")[1].split("+")}

    rules = remove_as_a_provider_would(functions)
    assert {} == band_view(functions)

    functions.clock.advance(timedelta(minutes=15))
    assert 200 == functions.publish("on_cleanup", {})
    wiped = records(functions, "wiped")
    assert 1 == len(wiped)
    assert len(before) == wiped[0]["count"]
    assert sorted(before) == sorted(wiped[0]["ranges"])
    assert rules == wiped[0]["rules"]

    capsys.readouterr()
    assert cli.EXIT_REFUSED == cli.main(["restore"])  # the plan, then a request for --yes
    assert {} == band_view(functions)
    assert f"the band lacks {len(before)}" in capsys.readouterr().out

    assert 0 == cli.main(["restore", "--yes", "--actor", "oncall@example.com"])
    assert before == band_view(functions)

    writes = len(functions.mutations())
    assert 0 == cli.main(["restore", "--yes", "--actor", "oncall@example.com"])
    assert writes == len(functions.mutations())
    assert "nothing to restore" in capsys.readouterr().out
    assert others == functions.other_rules()

    functions.clock.advance(timedelta(minutes=15))
    assert 200 == functions.publish("on_cleanup", {})  # the band is whole again: no second warning
    assert 1 == len(records(functions, "wiped"))


def test_the_cleanup_does_not_cry_wipe_for_its_own_removals(functions: Harness) -> None:
    """Unblocks between two cleanups shrink the band by our hand: no warning."""
    manual = {"action": "block", "ranges": [ATTACKER, "91.92.109.0/24"], "actor": "me", "ttl": "2h"}
    assert 200 == functions.publish("on_manual", manual)
    assert 200 == functions.publish("on_cleanup", {})
    unblock: dict[str, Any] = {"action": "unblock", "ranges": ["91.92.109.0/24"], "actor": "me"}
    assert 200 == functions.publish("on_manual", unblock)
    functions.clock.advance(timedelta(minutes=15))

    assert 200 == functions.publish("on_cleanup", {})

    assert [] == records(functions, "wiped")
    assert {f"{ATTACKER}/32"} == set(band_view(functions))


def test_the_cleanup_records_the_band_once_per_change(functions: Harness) -> None:
    """The car-band label is set when the band changed, not at every cleanup."""
    assert 200 == functions.publish("on_manual", {"action": "block", "ranges": [ATTACKER], "actor": "me", "ttl": "2h"})
    assert 200 == functions.publish("on_cleanup", {})
    label = functions.policy()["labels"]["car-band"]
    assert label.startswith("r1-n1-")
    calls = len([r for r in functions.server.requests if r["path"].endswith("/setLabels")])

    assert 200 == functions.publish("on_cleanup", {})

    assert calls == len([r for r in functions.server.requests if r["path"].endswith("/setLabels")])
    assert label == functions.policy()["labels"]["car-band"]
    assert BAND[0] <= functions.band_rules()[0]["priority"] <= BAND[1]
