"""The adapter against a local API whose operations are serialized per policy
and slow (1 s each): a mutation refused with ``resourceNotReady`` while
another operation is in flight is retried with the adapter's backoff and
lands; none is dropped. The options are the local API's "possible, not
documented" ones (localapi/README.md)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from localapi import LocalCloudArmor
from responder.errors import TransientError
from responder.policy import DEFAULT_RULE_PRIORITY, PolicyRule

PROJECT = "proj"  # as conftest.py
POLICY = "armor"


def deny(priority: int, *ranges: str) -> PolicyRule:
    return PolicyRule(priority=priority, action="deny(403)", ranges=ranges or ("192.0.2.1/32",),
                      description="car1 test")


def band(server: LocalCloudArmor) -> dict[int, list[str]]:
    """priority -> ranges of the committed policy, default rule left out."""
    return {r["priority"]: r["match"]["config"]["srcIpRanges"]
            for r in server.policy(PROJECT, POLICY)["rules"]
            if r["priority"] != DEFAULT_RULE_PRIORITY}


def serialize(server: LocalCloudArmor, latency: int = 1, mode: str = "http") -> None:
    server.state.op_latency = latency
    server.state.serialize_operations = True
    server.state.not_ready_mode = mode


def start_foreign_add(server: LocalCloudArmor, priority: int) -> None:
    """Another writer's addRule, left in flight (not waited on)."""
    client = compute_v1.SecurityPoliciesClient(
        credentials=AnonymousCredentials(), client_options={"api_endpoint": server.endpoint})
    client.add_rule_unary(project=PROJECT, security_policy=POLICY, timeout=5,
                          security_policy_rule_resource=compute_v1.SecurityPolicyRule(
                              priority=priority, action="deny(403)",
                              match=compute_v1.SecurityPolicyRuleMatcher(
                                  versioned_expr="SRC_IPS_V1",
                                  config=compute_v1.SecurityPolicyRuleMatcherConfig(
                                      src_ip_ranges=["198.51.100.0/24"]))))


@pytest.mark.parametrize("mode", ["http", "operation"])
def test_not_ready_is_retried_until_the_mutation_lands(make_adapter, server, mode):
    armor = make_adapter()
    serialize(server, mode=mode)
    start_foreign_add(server, 100)
    armor.add_rule(deny(200, "203.0.113.0/24"))
    assert band(server) == {100: ["198.51.100.0/24"], 200: ["203.0.113.0/24"]}
    assert armor.calls()["retry"] >= 1
    assert armor.calls()["add"] == armor.calls()["retry"] + 1


def test_concurrent_writers_on_a_serialized_policy_drop_nothing(make_adapter, server):
    first = make_adapter(retry_deadline=20.0)
    second = make_adapter(create=False, retry_deadline=20.0)
    serialize(server)

    def writer_a() -> None:
        first.add_rule(deny(100, "198.51.100.0/24"))
        first.patch_rule(deny(100, "198.51.100.0/24", "192.0.2.0/24"))

    def writer_b() -> None:
        second.add_rule(deny(200, "203.0.113.0/24"))
        second.add_rule(deny(201, "203.0.113.128/25"))

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(writer_a), pool.submit(writer_b)]:
            future.result()
    assert band(server) == {100: ["198.51.100.0/24", "192.0.2.0/24"],
                            200: ["203.0.113.0/24"], 201: ["203.0.113.128/25"]}
    assert first.calls()["retry"] + second.calls()["retry"] >= 1


def test_not_ready_past_the_retry_deadline_is_transient(make_adapter, server):
    armor = make_adapter(retry_deadline=0.5)
    serialize(server, latency=30)
    start_foreign_add(server, 100)
    with pytest.raises(TransientError) as info:
        armor.add_rule(deny(200))
    assert type(info.value) is TransientError  # refused, nothing done: Pub/Sub redelivers
    server.settle()
    assert band(server) == {100: ["198.51.100.0/24"]}
