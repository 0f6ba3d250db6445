"""The address-group adapter (responder/groups.py) against the local API,
through the real google-cloud-network-security client. Each test asserts on
the groups and the policy the server holds afterwards."""
from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import FAST, PROJECT, create_policy, settings

from config.settings import GroupSettings
from localapi import FaultConfig, LocalCloudArmor
from responder.errors import (
    GroupFull,
    GroupInUse,
    ItemConflict,
    PermanentError,
    TierRequired,
)
from responder.groups import AddressGroups, request_id


@pytest.fixture
def ent():
    srv = LocalCloudArmor(op_delay=0.05, wait_timeout=5.0, seed=5, tier="enterprise").start()
    yield srv
    srv.stop()


def adapter(server, **group_kw) -> AddressGroups:
    return AddressGroups(settings(server), GroupSettings(**group_kw),
                         retry_deadline=timedelta(seconds=5), backoff=FAST, poll=FAST)


def test_create_then_exact_diffs_in_batches(ent):
    groups = adapter(ent, max_items_per_call=2)
    made = groups.create_group("car-feed-v4", "IPV4", 10, labels={"feed": "drop"})
    assert (made.name, made.type, made.capacity, made.purpose, made.items) == (
        "car-feed-v4", "IPV4", 10, ("CLOUD_ARMOR",), ())
    groups.add_items("car-feed-v4", ["192.0.2.0/24", "198.51.100.7", "203.0.113.0/25"],
                     message_id="m1")
    after = groups.remove_items("car-feed-v4", ["198.51.100.7/32"], message_id="m2")
    assert after is not None and after.items == ("192.0.2.0/24", "203.0.113.0/25")
    assert ["192.0.2.0/24", "203.0.113.0/25"] == sorted(ent.group(PROJECT, "car-feed-v4")["items"])
    assert groups.calls()["add_items"] == 2  # ceil(3 / 2)
    assert [g.name for g in groups.list_groups(labels={"feed": "drop"})] == ["car-feed-v4"]
    assert groups.get_group("car-other") is None


def test_request_id_retry_after_a_lost_answer_is_harmless(ent):
    groups = adapter(ent)
    groups.create_group("car-feed-v4", "IPV4", 10)
    ent.faults = FaultConfig(commit_then_timeout=1.0, commit_then_timeout_mode="reset",
                             methods=("addressGroups.addItems",))
    attempts = []

    def guard() -> None:
        attempts.append(1)
        if len(attempts) == 2:
            ent.faults = FaultConfig()  # the retry gets its answer

    groups.add_items("car-feed-v4", ["192.0.2.0/24"], message_id="m1", guard=guard)
    sent = [r for r in ent.requests if r["route"] == "addressGroups.addItems"]
    assert len(sent) == 2 and sent[0]["body"]["requestId"] == sent[1]["body"]["requestId"]
    assert sent[0]["body"]["requestId"] == request_id("m1", "car-feed-v4", "add", 0,
                                                      ["192.0.2.0/24"])
    assert ["192.0.2.0/24"] == ent.group(PROJECT, "car-feed-v4")["items"]


def test_request_ids_differ_when_the_items_differ():
    assert request_id("m", "g", "add", 0, ["192.0.2.0/24"]) != request_id(
        "m", "g", "add", 0, ["198.51.100.0/24"])
    assert request_id("m", "g", "add", 0, ["192.0.2.0/24"]) == request_id(
        "m", "g", "add", 0, ["192.0.2.0/24"])


def test_group_full(ent):
    groups = adapter(ent)
    groups.create_group("car-feed-v4", "IPV4", 2)
    with pytest.raises(GroupFull):
        groups.add_items("car-feed-v4", ["192.0.2.1", "192.0.2.2", "192.0.2.3"], message_id="m")
    assert [] == ent.group(PROJECT, "car-feed-v4")["items"]


def test_wrong_family_is_permanent(ent):
    groups = adapter(ent)
    groups.create_group("car-feed-v4", "IPV4", 5)
    with pytest.raises(PermanentError):
        groups.add_items("car-feed-v4", ["2001:db8::/32"], message_id="m")
    assert [] == ent.group(PROJECT, "car-feed-v4")["items"]


def test_duplicate_and_absent_items_are_item_conflicts(ent):
    groups = adapter(ent)
    groups.create_group("car-feed-v4", "IPV4", 5)
    groups.add_items("car-feed-v4", ["192.0.2.0/24"], message_id="m1")
    with pytest.raises(ItemConflict):
        groups.add_items("car-feed-v4", ["192.0.2.0/24"], message_id="m2")
    with pytest.raises(ItemConflict):
        groups.remove_items("car-feed-v4", ["198.51.100.0/24"], message_id="m3")
    assert ["192.0.2.0/24"] == ent.group(PROJECT, "car-feed-v4")["items"]


def test_delete_refused_while_a_rule_references_the_group(ent):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    groups = adapter(ent)
    groups.create_group("car-feed-v4", "IPV4", 5)
    create_policy(ent)
    kw = {"credentials": AnonymousCredentials(), "client_options": {"api_endpoint": ent.endpoint}}
    rule = compute_v1.SecurityPolicyRule(
        priority=20000, action="deny(403)", match=compute_v1.SecurityPolicyRuleMatcher(
            expr=compute_v1.Expr(expression="evaluateAddressGroup('car-feed-v4', origin.ip)")))
    compute_v1.SecurityPoliciesClient(**kw).add_rule_unary(
        project=PROJECT, security_policy="armor", security_policy_rule_resource=rule)
    ent.settle()
    with pytest.raises(GroupInUse):
        groups.delete_group("car-feed-v4")
    assert ent.group(PROJECT, "car-feed-v4") is not None
    assert 20000 in [r["priority"] for r in ent.policy(PROJECT, "armor")["rules"]]


def test_delete(ent):
    groups = adapter(ent)
    groups.create_group("car-feed-v6", "IPV6", 5)
    groups.delete_group("car-feed-v6")
    assert ent.group(PROJECT, "car-feed-v6") is None


def test_standard_tier_is_refused_with_tier_required():
    with LocalCloudArmor(op_delay=0.05, tier="standard") as std:
        with pytest.raises(TierRequired):
            adapter(std).create_group("car-feed-v4", "IPV4", 10)
        assert std.group(PROJECT, "car-feed-v4") is None


def test_capacity_above_the_setting_is_refused_before_any_call(ent):
    groups = adapter(ent, max_capacity=1000)
    with pytest.raises(GroupFull):
        groups.create_group("car-feed-v4", "IPV4", 1001)
    assert groups.calls()["create"] == 0 and ent.group(PROJECT, "car-feed-v4") is None
