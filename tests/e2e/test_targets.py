"""Many targets: one deployment, two policies (the global ``[policy]``
target "default" and a regional ``[[targets]]`` entry "notebooks", both
named ml-edge in the test project), through the real functions.

Each test asserts on the two bands as the local API holds them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from localapi import FaultConfig, LocalCloudArmor
from tests.e2e.conftest import BAND, POLICY, PROJECT, REGION, Harness, create_policy, expiry_word
from tests.e2e.support import configured, incident, lb_entry, records

NB_BAND = (40000, 40999)
TARGETS = f"""
[[targets]]
name = "notebooks"
project = "{PROJECT}"
policy = "{POLICY}"
region = "{REGION}"
band_start = {NB_BAND[0]}
band_end = {NB_BAND[1]}
"""
# Every route of the regional policy (and its operations): a fault here
# touches the notebooks target only.
REGIONAL_ROUTES = tuple(f"regionSecurityPolicies.{m}" for m in
                        ("get", "getRule", "addRule", "patchRule", "removeRule", "setLabels")) + (
    "regionOperations.get", "regionOperations.wait")


def _two(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, extra: str = "") -> Harness:
    create_policy(local_api, REGION)
    return configured(local_api, monkeypatch, tmp_path, TARGETS + extra)


@pytest.fixture
def two(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Harness:
    return _two(local_api, monkeypatch, tmp_path)


def band(h: Harness, region: str | None) -> dict[str, str]:
    """Range -> expiry word, in the band of the global (None) or regional policy."""
    h.server.settle()
    policy = h.server.policy(PROJECT, POLICY, region)
    assert policy is not None
    lo, hi = NB_BAND if region else BAND
    out: dict[str, str] = {}
    for rule in policy["rules"]:
        if lo <= rule["priority"] <= hi:
            word = next(w for w in rule["description"].split() if w.startswith("x="))[2:]
            for net in rule["match"]["config"]["srcIpRanges"]:
                out[net] = max(out.get(net, ""), word)
    return out


def mutations(h: Harness) -> dict[str, int]:
    """Mutations sent so far, per target (by the policy's path)."""
    out = {"default": 0, "notebooks": 0}
    for r in h.mutations():
        out["notebooks" if "/regions/" in r["path"] else "default"] += 1
    return out


def block(ranges: list[str], **more: Any) -> dict[str, Any]:
    return {"action": "block", "ranges": ranges, "actor": "oncall@example.com", "reason": "test", **more}


def test_a_feed_lands_on_both_targets(two: Harness) -> None:
    feed = {"feed": "example-intel", "indicators": [{"range": "193.142.146.0/24", "confidence": 90}]}
    assert two.publish("on_threat_feed", feed) == 200
    want = expiry_word(two.clock() + timedelta(hours=12))
    assert band(two, None) == {"193.142.146.0/24": want}
    assert band(two, REGION) == {"193.142.146.0/24": want}
    added = records(two, "added")
    assert sorted(r["target"] for r in added) == ["default", "notebooks"]


def test_a_feed_and_a_kind_say_which_targets_they_apply_to(
    local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    h = _two(local_api, monkeypatch, tmp_path, '[feeds.nb-only]\ntargets = ["notebooks"]\n')
    assert h.publish("on_threat_feed", {"feed": "nb-only", "indicators": [{"range": "91.92.110.0/24"}]}) == 200
    assert band(h, None) == {}
    assert list(band(h, REGION)) == ["91.92.110.0/24"]


def test_a_manual_block_narrowed_to_one_target(two: Harness) -> None:
    assert two.publish("on_manual", block(["185.220.102.7"]), attributes={"targets": "notebooks"}) == 200
    assert band(two, None) == {}
    assert list(band(two, REGION)) == ["185.220.102.7/32"]
    # An unknown name is refused whole: nothing changes anywhere.
    assert two.publish("on_manual", block(["185.220.102.8"]), attributes={"targets": "notebooks,nope"},
                       message_id="m-bad") == 200
    assert records(two, "rejected", "m-bad") and "'nope' is not a target" in records(two, "rejected", "m-bad")[0]["error"]
    assert band(two, None) == {} and list(band(two, REGION)) == ["185.220.102.7/32"]


def test_a_transient_fault_on_one_target_resolves_on_redelivery_without_repeating_the_other(two: Harness) -> None:
    two.server.faults = FaultConfig(http_503=1.0, scope="all", methods=REGIONAL_ROUTES)
    message = block(["185.220.101.34", "91.92.109.0/24"], ttl="6h")
    published = two.clock()
    assert two.publish("on_manual", message, message_id="m-1", publish_time=published) == 500
    assert set(band(two, None)) == {"185.220.101.34/32", "91.92.109.0/24"}
    assert band(two, REGION) == {}
    assert [r["target"] for r in records(two, "failed", "m-1")] == ["notebooks"]
    first = mutations(two)
    assert first == {"default": 1, "notebooks": 0}

    two.server.faults = FaultConfig()
    assert two.publish("on_manual", message, message_id="m-1", publish_time=published, delivery_attempt=2) == 200
    assert band(two, REGION) == band(two, None)
    after = mutations(two)
    assert after["default"] == first["default"], "the redelivery repeated work on the target already done"
    assert after["notebooks"] == 1


def test_a_permanent_failure_on_one_target_is_recorded_and_the_others_go_ahead(
    local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ghost = (f'[[targets]]\nname = "ghost"\nproject = "{PROJECT}"\npolicy = "no-such-policy"\n'
             f"band_start = 20000\nband_end = 20999\n")
    h = _two(local_api, monkeypatch, tmp_path, ghost)
    assert h.publish("on_manual", block(["185.220.102.9"]), message_id="m-2") == 200
    assert list(band(h, None)) == ["185.220.102.9/32"] and list(band(h, REGION)) == ["185.220.102.9/32"]
    failed = records(h, "target-failed", "m-2")
    assert [r["target"] for r in failed] == ["ghost"] and "PolicyNotFound" in failed[0]["error"]


def test_a_permanent_manual_block_is_untouched_on_both(two: Harness) -> None:
    assert two.publish("on_manual", block(["45.155.205.0/24"], permanent=True)) == 200
    assert two.publish("on_threat_feed", {"feed": "example-intel", "indicators": [{"range": "45.155.205.0/24"}]}) == 200
    two.clock.advance(timedelta(days=40))
    assert two.publish("on_cleanup", {}) == 200
    assert band(two, None) == {"45.155.205.0/24": "never"}
    assert band(two, REGION) == {"45.155.205.0/24": "never"}


def test_cleanup_runs_per_target(two: Harness) -> None:
    assert two.publish("on_manual", block(["193.142.147.1"], ttl="1h"), attributes={"targets": "notebooks"}) == 200
    assert two.publish("on_manual", block(["193.142.147.2"], ttl="3h")) == 200
    two.clock.advance(timedelta(hours=2))
    assert two.publish("on_cleanup", {}) == 200
    assert list(band(two, None)) == ["193.142.147.2/32"]
    assert list(band(two, REGION)) == ["193.142.147.2/32"]
    expired = records(two, "expired")
    assert [r["target"] for r in expired] == ["notebooks"]


def test_a_band_deny_by_the_regional_policy_extends_only_that_targets_entry(two: Harness) -> None:
    assert two.publish("on_alert", incident("185.220.101.34")) == 200
    start = two.clock()
    assert band(two, None) == band(two, REGION) == {"185.220.101.34/32": expiry_word(start + timedelta(hours=6))}
    nb = next(r for r in two.server.policy(PROJECT, POLICY, REGION)["rules"] if NB_BAND[0] <= r["priority"] <= NB_BAND[1])
    two.clock.advance(timedelta(hours=2))
    deny = lb_entry("185.220.101.34", outcome="DENY", regional=True, region=REGION, policy=POLICY,
                    priority=nb["priority"], project=PROJECT, when=two.clock())
    assert two.publish("on_log_sink", deny) == 200
    bucket = two.clock().replace(minute=two.clock().minute // 15 * 15, second=0)  # the deny's time, rounded down
    assert band(two, REGION) == {"185.220.101.34/32": expiry_word(bucket + timedelta(hours=6))}
    assert band(two, None) == {"185.220.101.34/32": expiry_word(start + timedelta(hours=6))}
    # A priority inside the default target's band but outside the regional one's is not ours there.
    other = lb_entry("185.220.101.34", outcome="DENY", regional=True, region=REGION, policy=POLICY,
                     priority=BAND[0], project=PROJECT, when=two.clock() + timedelta(hours=1))
    two.clock.advance(timedelta(hours=1))
    before = mutations(two)
    assert two.publish("on_log_sink", other) == 200
    assert mutations(two) == before


def test_cli_target_option_and_status_of_every_target(two: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import cli

    assert 0 == cli.main(["--target", "notebooks", "block", "185.220.101.40", "--ttl", "2h", "--actor", "me"])
    assert 0 == cli.main(["block", "185.220.101.41", "--ttl", "2h", "--actor", "me"])  # the first target
    assert list(band(two, REGION)) == ["185.220.101.40/32"]
    assert list(band(two, None)) == ["185.220.101.41/32"]
    capsys.readouterr()
    assert 0 == cli.main(["status", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert {n: [r["ranges"] for r in d["rules"]] for n, d in doc["targets"].items()} == {
        "default": [["185.220.101.41/32"]], "notebooks": [["185.220.101.40/32"]]}
    assert 0 == cli.main(["status", "--target", "notebooks"])
    out = capsys.readouterr().out
    assert "185.220.101.40/32" in out and "185.220.101.41/32" not in out
    assert 2 == cli.main(["status", "--target", "nope"])
    assert "no target named 'nope'" in capsys.readouterr().err


def test_break_glass_narrowed_to_one_target(two: Harness) -> None:
    assert two.publish("on_manual", block(["185.220.101.50"])) == 200
    glass = {"action": "preview-all", "actor": "oncall@example.com", "reason": "false positives on notebooks"}
    assert two.publish("on_manual", glass, attributes={"targets": "notebooks"}) == 200
    two.server.settle()
    regional = two.server.policy(PROJECT, POLICY, REGION)
    default = two.server.policy(PROJECT, POLICY, None)
    assert regional is not None and default is not None
    assert regional["labels"].get("car-mode") == "preview" and "car-mode" not in default.get("labels", {})
    assert [r["preview"] for r in regional["rules"] if NB_BAND[0] <= r["priority"] <= NB_BAND[1]] == [True]
    assert [r.get("preview", False) for r in default["rules"] if BAND[0] <= r["priority"] <= BAND[1]] == [False]
