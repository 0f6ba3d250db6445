"""Serialized operations and per-operation latency, through the real client.

Both options model behaviour that is possible but not documented for
security policies (see localapi/README.md): ``serialize_operations`` refuses
a mutation of a policy that has an operation not yet DONE with 400
``resourceNotReady``; ``op_latency`` makes every mutation's operation take
N whole seconds.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from google.api_core import exceptions as gexc
from localapi_testkit import PROJECT, REGION, Api

from localapi import LocalCloudArmor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NOT_READY = f"The resource 'projects/{PROJECT}/global/securityPolicies/pol' is not ready"


def _mutations(api: Api):
    """Each mutation the option covers, sent without waiting for its operation."""
    c = api.compute_v1

    def labels():
        fp = api.policies.get(project=PROJECT, security_policy="pol").label_fingerprint
        return api.policies.set_labels_unary(
            project=PROJECT, resource="pol",
            global_set_labels_request_resource=c.GlobalSetLabelsRequest(
                labels={"team": "ml"}, label_fingerprint=fp))

    return {
        "addRule": lambda: api.policies.add_rule_unary(
            project=PROJECT, security_policy="pol", security_policy_rule_resource=api.rule(30)),
        "patchRule": lambda: api.policies.patch_rule_unary(request={
            "project": PROJECT, "security_policy": "pol", "priority": 10,
            "security_policy_rule_resource": api.rule(10, ranges=["192.0.2.0/24"])}),
        "removeRule": lambda: api.policies.remove_rule_unary(request={
            "project": PROJECT, "security_policy": "pol", "priority": 10}),
        "setLabels": labels,
        "patch": lambda: api.policies.patch_unary(
            project=PROJECT, security_policy="pol",
            security_policy_resource=c.SecurityPolicy(description="patched")),
    }


def _effect(server: LocalCloudArmor, method: str) -> bool:
    """True when ``method``'s change is on the committed policy."""
    policy = server.policy(PROJECT, "pol")
    rules = {r["priority"]: r for r in policy["rules"]}
    return {
        "addRule": 30 in rules,
        "patchRule": 10 in rules and rules[10]["match"]["config"]["srcIpRanges"] == ["192.0.2.0/24"],
        "removeRule": 10 not in rules,
        "setLabels": policy.get("labels") == {"team": "ml"},
        "patch": policy.get("description") == "patched",
    }[method]


@pytest.fixture
def serialized(api, server):
    """A policy with a rule at 10; operations serialized and slow (settle() ends them)."""
    api.create()
    api.add(10)
    server.state.serialize_operations = True
    server.state.op_latency = 30
    return api


@pytest.mark.parametrize("method", ["addRule", "patchRule", "removeRule", "setLabels", "patch"])
def test_mutation_while_operation_in_flight_is_resource_not_ready(serialized, server, method):
    in_flight = serialized.add(20, wait=False)
    with pytest.raises(gexc.BadRequest) as caught:
        _mutations(serialized)[method]()
    assert caught.value.code == 400
    assert [(e["reason"], e["message"]) for e in caught.value.errors] == \
        [("resourceNotReady", NOT_READY)]
    server.settle()
    assert serialized.wait(in_flight).error.errors == []
    assert server.rule(PROJECT, "pol", 20) is not None
    assert not _effect(server, method)  # the refused mutation changed nothing


@pytest.mark.parametrize("method", ["addRule", "patchRule", "removeRule", "setLabels", "patch"])
def test_mutation_after_operation_done_is_accepted(serialized, server, method):
    serialized.add(20, wait=False)
    server.settle()
    op = _mutations(serialized)[method]()
    server.settle()
    assert serialized.wait(op).error.errors == []
    assert _effect(server, method)


def test_reads_and_other_policies_are_not_blocked(serialized, server):
    op = serialized.policies.insert_unary(
        project=PROJECT, security_policy_resource=serialized.compute_v1.SecurityPolicy(name="other"))
    server.settle()
    serialized.wait(op)
    serialized.add(20, wait=False)
    assert serialized.policies.get(project=PROJECT, security_policy="pol").name == "pol"
    op = serialized.add(5, name="other", wait=False)  # accepted: another policy
    server.settle()
    assert serialized.wait(op).error.errors == []
    assert server.rule(PROJECT, "other", 5) is not None


def test_regional_policy_is_serialized_too(api, server):
    api.create("rp", region=REGION)
    server.state.serialize_operations = True
    server.state.op_latency = 30
    add = api.region_policies.add_rule_unary
    add(project=PROJECT, region=REGION, security_policy="rp",
        security_policy_rule_resource=api.rule(1))
    with pytest.raises(gexc.BadRequest) as caught:
        add(project=PROJECT, region=REGION, security_policy="rp",
            security_policy_rule_resource=api.rule(2))
    assert caught.value.errors[0]["message"] == (f"The resource 'projects/{PROJECT}/regions/{REGION}/"
                                    "securityPolicies/rp' is not ready")
    server.settle()
    assert [r["priority"] for r in server.policy(PROJECT, "rp", REGION)["rules"]] == [1, 2147483647]


def test_replayed_request_id_returns_the_first_operation(serialized, server):
    c = serialized.compute_v1
    patch = serialized.policies.patch_unary
    request = {"project": PROJECT, "security_policy": "pol",
               "request_id": "6f1c3e2a-7b5d-4c1e-9a0b-2d4f6e8a0c1e",
               "security_policy_resource": c.SecurityPolicy(description="once")}
    first = patch(request=request)
    again = patch(request=request)  # its own operation is in flight: a replay, not a refusal
    assert again.name == first.name
    server.settle()
    assert server.policy(PROJECT, "pol")["description"] == "once"


def test_not_ready_as_operation_error(serialized, server):
    server.state.not_ready_mode = "operation"
    in_flight = serialized.add(20, wait=False)
    refused = serialized.add(30, wait=False)
    assert refused.status == refused.Status.DONE
    assert [e.code for e in refused.error.errors] == ["RESOURCE_NOT_READY"]
    assert refused.error.errors[0].message == NOT_READY
    assert refused.http_error_status_code == 400
    server.settle()
    serialized.wait(in_flight)
    assert server.rule(PROJECT, "pol", 30) is None
    # The refused operation holds nothing: the next mutation is accepted.
    op = serialized.add(30, wait=False)
    server.settle()
    assert serialized.wait(op).error.errors == []
    assert server.rule(PROJECT, "pol", 30) is not None


def test_off_by_default(api, server):
    api.create()
    server.state.op_latency = 30
    api.add(1, wait=False)
    api.add(2, wait=False)  # accepted while the first is in flight
    server.settle()
    assert [r["priority"] for r in server.policy(PROJECT, "pol")["rules"]] == [1, 2, 2147483647]


def test_operation_latency_in_whole_seconds(api, server):
    api.create()
    server.state.op_latency = 1
    server.state.wait_timeout = 0.3
    start = time.monotonic()
    op = api.add(7, wait=False)
    assert op.status == op.Status.PENDING
    early = api.global_ops.wait(project=PROJECT, operation=op.name, timeout=5)
    # wait gives up at its limit and returns the operation not yet DONE, like Google's
    assert early.status in (op.Status.PENDING, op.Status.RUNNING)
    assert server.rule(PROJECT, "pol", 7) is None
    server.state.wait_timeout = 5.0
    done = api.global_ops.wait(project=PROJECT, operation=op.name, timeout=10)
    assert done.status == op.Status.DONE
    assert time.monotonic() - start >= 1.0
    assert server.rule(PROJECT, "pol", 7) is not None


@pytest.mark.parametrize("bad", [1.5, -1, True, "1"])
def test_operation_latency_must_be_whole_seconds(bad):
    with pytest.raises(ValueError):
        LocalCloudArmor(op_latency=bad)


def test_command_line_flags():
    proc = subprocess.Popen(
        [sys.executable, "-m", "localapi", "--port", "0", "--op-latency", "1",
         "--serialize-operations", "--wait-timeout", "5"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = proc.stdout.readline().strip().rsplit(" ", 1)[1]
        api = Api(SimpleNamespace(endpoint=endpoint))  # Api reads only .endpoint
        op = api.policies.insert_unary(project=PROJECT,
                                       security_policy_resource=api.compute_v1.SecurityPolicy(name="pol"))
        start = time.monotonic()
        done = api.global_ops.wait(project=PROJECT, operation=op.name, timeout=10)
        assert done.status == done.Status.DONE and time.monotonic() - start >= 0.9
        api.policies.add_rule_unary(project=PROJECT, security_policy="pol",
                                    security_policy_rule_resource=api.rule(1))
        with pytest.raises(gexc.BadRequest) as caught:
            api.policies.add_rule_unary(project=PROJECT, security_policy="pol",
                                        security_policy_rule_resource=api.rule(2))
        assert [e["reason"] for e in caught.value.errors] == ["resourceNotReady"]
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        proc.stdout.close()


def test_command_line_latency_excludes_delay():
    result = subprocess.run(
        [sys.executable, "-m", "localapi", "--port", "0", "--op-latency", "1",
         "--op-delay", "0.2"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr
