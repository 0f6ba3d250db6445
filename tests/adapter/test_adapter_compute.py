"""The compute adapter against the local Cloud Armor API, through the real
google-cloud-compute client over HTTP (no mocks of the client)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from localapi import FaultConfig, LocalCloudArmor
from responder.compute import CloudArmor
from responder.errors import (
    FingerprintMismatch,
    OutcomeUnknown,
    PermanentError,
    PolicyNotFound,
    PriorityTaken,
    QuotaExceeded,
    ResponderError,
    RuleNotFound,
    TransientError,
)
from responder.policy import DEFAULT_RULE_PRIORITY, PolicyRule

# The same values as conftest.py (not imported from it: several test folders
# have a conftest module).
PROJECT = "proj"
POLICY = "armor"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def deny(priority: int, *ranges: str, description: str = "car1 test", preview: bool = False,
         action: str = "deny(403)") -> PolicyRule:
    return PolicyRule(priority=priority, action=action, ranges=ranges or ("192.0.2.1/32",),
                      description=description, preview=preview)


def stored(server: LocalCloudArmor, priority: int, region: str = "") -> dict | None:
    return server.rule(PROJECT, POLICY, priority, region or None)


def stored_priorities(server: LocalCloudArmor, region: str = "") -> list[int]:
    return [r["priority"] for r in server.policy(PROJECT, POLICY, region or None)["rules"]]


# ------------------------------------------------------------------ basics

def test_import_does_not_load_compute_v1():
    code = ("import sys, responder.compute; "
            "assert 'google.cloud.compute_v1' not in sys.modules, 'compute_v1 imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_anonymous_credentials_with_endpoint(make_adapter, server):
    from google.auth.credentials import AnonymousCredentials

    armor = make_adapter()
    armor.get_policy()
    policies, operations = armor._clients
    assert isinstance(policies._transport._credentials, AnonymousCredentials)
    assert isinstance(operations._transport._credentials, AnonymousCredentials)
    assert all(r["path"].startswith("/compute/v1/projects/proj/") for r in server.requests)


def test_get_policy_maps_rules_and_fingerprints(armor, server, scope):
    armor.add_rule(deny(1000, "10.0.0.0/8", "2001:db8::/32", description="d", preview=True))
    snap = armor.get_policy()
    state = server.policy(PROJECT, POLICY, scope or None)
    assert snap.name == POLICY
    assert snap.fingerprint == state["fingerprint"]
    assert snap.label_fingerprint == state["labelFingerprint"]
    assert snap.labels == {}
    assert [r.priority for r in snap.rules] == [1000, DEFAULT_RULE_PRIORITY]
    rule = snap.rule_at(1000)
    assert rule == deny(1000, "10.0.0.0/8", "2001:db8::/32", description="d", preview=True)
    assert rule.expression is None
    # raw is plain JSON data, camelCase like the REST API
    assert rule.raw["match"] == {"versionedExpr": "SRC_IPS_V1",
                                 "config": {"srcIpRanges": ["10.0.0.0/8", "2001:db8::/32"]}}
    assert rule.raw["priority"] == 1000 and rule.raw["preview"] is True
    default = snap.rule_at(DEFAULT_RULE_PRIORITY)
    assert default.action == "allow" and default.ranges == ("*",)


def test_add_get_patch_remove_round_trip(armor, server, scope):
    wanted = deny(20000, "198.51.100.0/24", "203.0.113.7/32", description="car1 a")
    armor.add_rule(wanted)
    # the operation was waited on: committed as soon as add_rule returns
    assert stored(server, 20000, scope)["match"]["config"]["srcIpRanges"] == [
        "198.51.100.0/24", "203.0.113.7/32"]
    assert armor.get_rule(20000) == wanted

    patched = deny(20000, "198.51.100.0/25", description="car1 b", preview=True, action="deny(404)")
    armor.patch_rule(patched)
    rule = stored(server, 20000, scope)
    assert rule["match"]["config"]["srcIpRanges"] == ["198.51.100.0/25"]
    assert (rule["action"], rule["description"], rule["preview"]) == ("deny(404)", "car1 b", True)
    assert armor.get_rule(20000) == patched

    # an empty description is sent explicitly and replaces the old one
    armor.patch_rule(deny(20000, "198.51.100.0/25", description="", preview=False))
    assert stored(server, 20000, scope)["description"] == ""
    assert stored(server, 20000, scope)["preview"] is False

    armor.remove_rule(20000)
    assert stored(server, 20000, scope) is None
    assert armor.get_rule(20000) is None
    assert stored_priorities(server, scope) == [DEFAULT_RULE_PRIORITY]

    calls = armor.calls()
    assert (calls["add"], calls["patch"], calls["remove"], calls["get_rule"]) == (1, 2, 1, 3)
    assert calls["wait"] == 4 and calls["retry"] == 0


def test_priority_always_sent(armor, server, scope):
    """patchRule/removeRule/getRule carry the priority in the query (even 0)."""
    armor.add_rule(deny(0, "192.0.2.0/24"))
    armor.get_rule(0)
    armor.patch_rule(deny(0, "192.0.2.0/25"))
    armor.remove_rule(0)
    for entry in server.requests:
        if entry["route"] and entry["route"].split(".")[1] in ("getRule", "patchRule", "removeRule"):
            assert entry["query"].get("priority") == "0", entry


def test_set_labels_round_trip_and_stale_fingerprint(armor, server, scope):
    before = armor.get_policy()
    armor.set_labels({"car-lease": "w1-123", "team": "ml"}, before.label_fingerprint)
    after = armor.get_policy()
    assert after.labels == {"car-lease": "w1-123", "team": "ml"}
    assert server.policy(PROJECT, POLICY, scope or None)["labels"] == after.labels
    assert after.label_fingerprint != before.label_fingerprint
    with pytest.raises(FingerprintMismatch):
        armor.set_labels({"car-lease": "w2-456"}, before.label_fingerprint)
    assert server.policy(PROJECT, POLICY, scope or None)["labels"] == after.labels
    assert armor.calls()["retry"] == 0  # a stale fingerprint is not retried
    armor.set_labels({}, after.label_fingerprint)
    assert armor.get_policy().labels == {}


def test_validate_only_commits_nothing(armor, server, scope):
    armor.add_rule(deny(3000, "192.0.2.0/24"), validate_only=True)
    assert stored(server, 3000, scope) is None
    assert armor.get_rule(3000) is None
    armor.add_rule(deny(3000, "192.0.2.0/24"))
    fingerprint = server.policy(PROJECT, POLICY, scope or None)["fingerprint"]
    armor.patch_rule(deny(3000, "198.51.100.0/24", description="changed"), validate_only=True)
    assert stored(server, 3000, scope)["match"]["config"]["srcIpRanges"] == ["192.0.2.0/24"]
    assert server.policy(PROJECT, POLICY, scope or None)["fingerprint"] == fingerprint
    # validation still happens
    with pytest.raises(PriorityTaken):
        armor.add_rule(deny(3000, "203.0.113.0/24"), validate_only=True)
    with pytest.raises(PermanentError):
        armor.add_rule(deny(3001, *[f"10.0.{i}.0/24" for i in range(11)]), validate_only=True)
    sent = [e for e in server.requests if e["route"] and e["route"].endswith("Rule")
            and e["method"] == "POST"]
    assert [e["query"].get("validateOnly") for e in sent] == ["true", None, "true", "true", "true"]


# ---------------------------------------------------------- error mapping

@pytest.mark.parametrize("duplicate_mode", ["http", "operation"])
def test_duplicate_priority_is_priority_taken(make_adapter, server, duplicate_mode):
    server.state.duplicate_mode = duplicate_mode
    armor = make_adapter()
    armor.add_rule(deny(1000, "192.0.2.0/24"))
    with pytest.raises(PriorityTaken):
        armor.add_rule(deny(1000, "198.51.100.0/24"))
    assert stored(server, 1000)["match"]["config"]["srcIpRanges"] == ["192.0.2.0/24"]
    assert armor.calls()["retry"] == 0


@pytest.mark.parametrize("quota_mode", ["operation", "http"])
def test_quota_is_quota_exceeded(make_adapter, server, quota_mode):
    server.state.quota = 3  # the default rule counts
    server.state.quota_mode = quota_mode
    armor = make_adapter()
    armor.add_rule(deny(1, "192.0.2.1/32"))
    armor.add_rule(deny(2, "192.0.2.2/32"))
    with pytest.raises(QuotaExceeded):
        armor.add_rule(deny(3, "192.0.2.3/32"))
    assert stored_priorities(server) == [1, 2, DEFAULT_RULE_PRIORITY]
    assert armor.calls()["retry"] == 0


def test_missing_policy_is_policy_not_found(make_adapter, server, scope):
    armor = make_adapter(scope, create=False, name="nope")
    for call in (armor.get_policy, lambda: armor.get_rule(5),
                 lambda: armor.add_rule(deny(5)), lambda: armor.patch_rule(deny(5)),
                 lambda: armor.remove_rule(5), lambda: armor.set_labels({}, "x")):
        with pytest.raises(PolicyNotFound):
            call()
    assert armor.calls()["retry"] == 0


def test_too_many_ranges_is_permanent(armor, server, scope):
    with pytest.raises(PermanentError) as info:
        armor.add_rule(deny(7, *[f"10.0.{i}.0/24" for i in range(11)]))
    assert type(info.value) is PermanentError
    assert "10" in str(info.value)
    assert stored(server, 7, scope) is None
    armor.add_rule(deny(7, *[f"10.0.{i}.0/24" for i in range(10)]))
    assert len(stored(server, 7, scope)["match"]["config"]["srcIpRanges"]) == 10


def test_rule_not_found_on_patch_and_remove(armor, server):
    with pytest.raises(RuleNotFound):
        armor.patch_rule(deny(404))
    with pytest.raises(RuleNotFound):
        armor.remove_rule(404)
    assert armor.get_rule(404) is None


def test_bad_action_is_permanent(armor):
    with pytest.raises(PermanentError):
        armor.add_rule(deny(9, action="deny(451)"))


def test_connection_refused_is_transient(server, make_adapter):
    armor = make_adapter(retry_deadline=0.3)
    server.stop()
    with pytest.raises(TransientError) as info:
        armor.add_rule(deny(10))
    assert not isinstance(info.value, OutcomeUnknown)  # never sent
    with pytest.raises(TransientError):
        armor.get_policy()
    assert armor.calls()["retry"] >= 2


def test_retry_deadline_gives_up_with_mapped_errors(make_adapter, server):
    armor = make_adapter(retry_deadline=0.3)
    server.faults = FaultConfig(http_503=1.0, scope="all", seed=1)
    with pytest.raises(TransientError) as info:
        armor.get_policy()
    assert type(info.value) is TransientError
    with pytest.raises(OutcomeUnknown):  # a 5xx on a mutation may have been applied
        armor.remove_rule(DEFAULT_RULE_PRIORITY - 1)
    server.faults = FaultConfig(http_429=1.0, scope="all", seed=1)
    with pytest.raises(TransientError) as info:
        armor.add_rule(deny(11))
    assert type(info.value) is TransientError  # 429: refused before anything was done
    assert armor.calls()["retry"] >= 3


def test_operation_timeout_is_outcome_unknown(make_adapter, server):
    armor = make_adapter(operation_timeout=0.3, retry_deadline=0.5)
    server.state.op_delay = 3.0
    server.state.wait_timeout = 0.1  # operations.wait returns before DONE
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        armor.add_rule(deny(12))
    assert time.monotonic() - started < 3.0
    assert armor.calls()["wait"] >= 2
    # the add was accepted: the priority is reserved, then committed once
    server.settle()
    assert stored(server, 12) is not None


# ------------------------------------------------------------------ faults

def _workload(armor: CloudArmor, n: int = 6) -> None:
    for i in range(n):
        armor.add_rule(deny(100 + i, f"10.{i}.0.0/16", description=f"r{i}"))
    for i in range(0, n, 2):
        armor.patch_rule(deny(100 + i, f"10.{i}.0.0/17", description=f"p{i}"))
    for i in range(1, n, 2):
        armor.remove_rule(100 + i)


def _check_workload(armor: CloudArmor, server: LocalCloudArmor, n: int = 6, region: str = "") -> None:
    server.faults = FaultConfig()
    expected = {100 + i: ([f"10.{i}.0.0/17"], f"p{i}") for i in range(0, n, 2)}
    policy = server.policy(PROJECT, POLICY, region or None)
    got = {r["priority"]: (r["match"]["config"]["srcIpRanges"], r["description"])
           for r in policy["rules"] if r["priority"] != DEFAULT_RULE_PRIORITY}
    assert got == expected
    snap = armor.get_policy()
    assert {r.priority: (list(r.ranges), r.description) for r in snap.rules
            if r.priority != DEFAULT_RULE_PRIORITY} == expected


@pytest.mark.parametrize("region,kind", [("", "http_503"), ("", "http_429"), ("", "http_500"),
                                         ("", "reset"), ("us-central1", "http_503"),
                                         ("us-central1", "reset")])
def test_faults_on_mutations_are_retried(make_adapter, server, region, kind):
    scope = region
    armor = make_adapter(scope)
    server.faults = FaultConfig(**{kind: 0.35}, scope="mutations", seed=3)
    _workload(armor)
    assert server.fault_counts.get(kind, 0) > 0
    assert armor.calls()["retry"] >= server.fault_counts[kind]
    _check_workload(armor, server, region=scope)


@pytest.mark.parametrize("kind", ["http_503", "http_429", "reset"])
def test_faults_on_reads_are_retried(make_adapter, server, kind):
    armor = make_adapter()
    armor.add_rule(deny(50, "192.0.2.0/24"))
    server.faults = FaultConfig(**{kind: 0.4}, scope="reads", seed=5)
    for _ in range(6):
        assert armor.get_policy().rule_at(50) == deny(50, "192.0.2.0/24")
        assert armor.get_rule(50) == deny(50, "192.0.2.0/24")
        assert armor.get_rule(51) is None
    # operation waits are reads too
    armor.add_rule(deny(52, "192.0.2.52/32"))
    armor.remove_rule(50)
    assert server.fault_counts[kind] > 0
    assert armor.calls()["retry"] >= server.fault_counts[kind]
    server.faults = FaultConfig()
    assert stored(server, 50) is None and stored(server, 52) is not None


def test_op_error_is_retried(make_adapter, server, scope):
    armor = make_adapter(scope)
    server.faults = FaultConfig(op_error=0.4, scope="mutations", seed=11)
    _workload(armor)
    base = armor.get_policy()
    armor.set_labels({"a": "b"}, base.label_fingerprint)
    assert server.fault_counts["op_error"] > 0
    assert armor.calls()["retry"] >= server.fault_counts["op_error"]
    _check_workload(armor, server, region=scope)
    assert armor.get_policy().labels == {"a": "b"}


@pytest.mark.parametrize("mode", ["delay", "reset"])
def test_commit_then_timeout_on_add_rule_adds_once(make_adapter, server, mode):
    armor = make_adapter(request_timeout=0.3)
    server.faults = FaultConfig(commit_then_timeout=1.0, commit_then_timeout_mode=mode,
                                commit_then_timeout_delay=0.8,
                                methods=("securityPolicies.addRule",), seed=1)
    armor.add_rule(deny(700, "192.0.2.0/24", "198.51.100.0/24"))  # no error
    server.faults = FaultConfig()
    assert server.fault_counts["commit_then_timeout"] >= 1
    assert stored_priorities(server) == [700, DEFAULT_RULE_PRIORITY]
    assert armor.get_rule(700) == deny(700, "192.0.2.0/24", "198.51.100.0/24")
    assert armor.calls()["get_rule"] >= 2  # the re-read path was taken
    # (a held answer is logged by the server only once it has been sent)
    deadline = time.monotonic() + 2
    while not any(e["fault"] for e in server.requests) and time.monotonic() < deadline:
        time.sleep(0.02)
    sends = [e for e in server.requests if e["route"] == "securityPolicies.addRule"]
    assert sends[0]["fault"] == "commit_then_timeout"
    assert all(e["status"] == 400 for e in sends[1:])  # only duplicates after the lost one


def test_commit_then_timeout_then_someone_else_is_priority_taken(make_adapter, server):
    """After a lost add, a different rule at the priority is not ours."""
    armor = make_adapter(request_timeout=0.3)
    other = make_adapter(create=False)
    other.add_rule(deny(701, "203.0.113.0/24"))
    server.faults = FaultConfig(reset=1.0, methods=("securityPolicies.addRule",), seed=1)
    armor.retry_deadline = armor.retry_deadline.__class__(seconds=1)
    with pytest.raises(PriorityTaken):
        armor.add_rule(deny(701, "192.0.2.0/24"))
    server.faults = FaultConfig()
    assert stored(server, 701)["match"]["config"]["srcIpRanges"] == ["203.0.113.0/24"]


@pytest.mark.parametrize("mode", ["delay", "reset"])
def test_commit_then_timeout_on_patch_and_remove(make_adapter, server, mode):
    armor = make_adapter(request_timeout=0.3)
    armor.add_rule(deny(800, "192.0.2.0/24"))
    armor.add_rule(deny(801, "192.0.2.0/24"))
    server.faults = FaultConfig(commit_then_timeout=1.0, commit_then_timeout_mode=mode,
                                commit_then_timeout_delay=0.8,
                                methods=("securityPolicies.patchRule",
                                         "securityPolicies.removeRule"), seed=1)
    # every answer is lost: the re-read after the unknown outcome sees the patch
    armor.patch_rule(deny(800, "198.51.100.0/24", description="patched"))
    armor.remove_rule(801)  # the retried remove finds no rule: success
    server.faults = FaultConfig()
    assert stored_priorities(server) == [800, DEFAULT_RULE_PRIORITY]
    assert armor.get_rule(800) == deny(800, "198.51.100.0/24", description="patched")
    assert server.fault_counts["commit_then_timeout"] >= 2


def test_commit_then_timeout_on_set_labels(make_adapter, server):
    armor = make_adapter(request_timeout=0.3)
    fp = armor.get_policy().label_fingerprint
    server.faults = FaultConfig(commit_then_timeout=1.0, commit_then_timeout_mode="reset",
                                methods=("securityPolicies.setLabels",), seed=1)
    armor.set_labels({"car-lease": "w1"}, fp)  # the retry's 412 is re-checked
    server.faults = FaultConfig()
    assert armor.get_policy().labels == {"car-lease": "w1"}


def test_backoff_uses_injected_sleep(make_adapter, server):
    slept: list[float] = []
    armor = make_adapter(sleep=lambda s: (slept.append(s), time.sleep(s)))
    server.faults = FaultConfig(http_503=0.5, scope="all", seed=2)
    for i in range(5):
        armor.add_rule(deny(900 + i))
    assert slept and all(0 <= s <= 0.05 for s in slept)
    assert armor.calls()["retry"] >= len(slept) - armor.calls()["wait"]


def test_no_google_exception_escapes(make_adapter, server):
    armor = make_adapter(retry_deadline=0.3)
    server.faults = FaultConfig(http_500=0.3, http_503=0.3, reset=0.3, scope="all", seed=9)
    for i in range(4):
        calls = (lambda p=1000 + i: armor.add_rule(deny(p)), armor.get_policy,
                 lambda p=1000 + i: armor.remove_rule(p))
        for call in calls:
            try:
                call()
            except ResponderError:
                pass
