"""Address groups in the local API, driven by the real google-cloud-network-security
client over REST (AnonymousCredentials, explicit http:// endpoint). Each test
asserts on the groups and policies the server holds afterwards."""
from __future__ import annotations

import pytest
from localapi_testkit import PROJECT, Api

from localapi import LocalCloudArmor

PARENT = f"projects/{PROJECT}/locations/global"


@pytest.fixture
def ent():
    srv = LocalCloudArmor(op_delay=0.05, wait_timeout=5.0, seed=3, tier="enterprise",
                          ceval_quota=3).start()
    yield srv
    srv.stop()


@pytest.fixture
def ns(ent):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import network_security_v1

    client = network_security_v1.AddressGroupServiceClient(
        transport="rest", credentials=AnonymousCredentials(),
        client_options={"api_endpoint": ent.endpoint})
    client.ns = network_security_v1
    return client


def create(ns, name="feed-v4", type_="IPV4", capacity=10, purpose=("CLOUD_ARMOR",), items=(),
           parent=PARENT):
    G = ns.ns.AddressGroup
    group = G(type_=G.Type[type_], capacity=capacity, purpose=[G.Purpose[p] for p in purpose],
              items=list(items))
    return ns.create_address_group(request={"parent": parent, "address_group_id": name,
                                            "address_group": group}, retry=None)


def add(ns, items, name="feed-v4", request_id=""):
    return ns.add_address_group_items(request={"address_group": f"{PARENT}/addressGroups/{name}",
                                               "items": items, "request_id": request_id},
                                      retry=None)


def remove(ns, items, name="feed-v4"):
    return ns.remove_address_group_items(
        request={"address_group": f"{PARENT}/addressGroups/{name}", "items": items}, retry=None)


def test_create_is_asynchronous_and_result_polls_the_local_endpoint(ent, ns):
    op = create(ns, items=["192.0.2.0/24"])
    assert op.operation.done is False and ent.group(PROJECT, "feed-v4") is None
    op.result(timeout=10)  # the client's own polling reaches this endpoint
    group = ent.group(PROJECT, "feed-v4")
    assert (group["type"], group["capacity"], group["purpose"], group["items"]) == (
        "IPV4", 10, ["CLOUD_ARMOR"], ["192.0.2.0/24"])
    assert any(r["route"] == "operations.get" for r in ent.requests)


def test_add_and_remove_items(ent, ns):
    create(ns).result(timeout=10)
    add(ns, ["198.51.100.0/24", "203.0.113.7/32"]).result(timeout=10)
    remove(ns, ["198.51.100.0/24"]).result(timeout=10)
    assert ["203.0.113.7/32"] == ent.group(PROJECT, "feed-v4")["items"]


@pytest.mark.parametrize("name", ["9lives", "a" * 64, "bad.name", "has space"])
def test_bad_names_are_refused(ent, ns, name):
    from google.api_core import exceptions as gexc

    with pytest.raises(gexc.BadRequest, match="addressGroupId"):
        create(ns, name=name)
    assert ent.state.groups == {}


@pytest.mark.parametrize("items,match", [
    (["2001:db8::/32"], "accepts only IPv4"),
    (["10.0.0.1/24"], "host bits"),
    (["not-an-ip"], "not a valid IP"),
])
def test_items_of_another_family_or_invalid_are_refused(ent, ns, items, match):
    from google.api_core import exceptions as gexc

    create(ns).result(timeout=10)
    with pytest.raises(gexc.BadRequest, match=match):
        add(ns, items)
    ent.settle()
    assert [] == ent.group(PROJECT, "feed-v4")["items"]


def test_capacity_is_enforced_and_fixed(ent, ns):
    from google.api_core import exceptions as gexc

    create(ns, capacity=2, items=["192.0.2.1/32"]).result(timeout=10)
    with pytest.raises(gexc.BadRequest, match="capacity of 2") as info:
        add(ns, ["192.0.2.2/32", "192.0.2.3/32"])
    assert info.value.reason == "ADDRESS_GROUP_CAPACITY_EXCEEDED"
    G = ns.ns.AddressGroup
    with pytest.raises(gexc.BadRequest, match="cannot be changed"):
        ns.update_address_group(request={
            "address_group": G(name=f"{PARENT}/addressGroups/feed-v4", capacity=5),
            "update_mask": {"paths": ["capacity"]}}, retry=None)
    ent.settle()
    assert (2, ["192.0.2.1/32"]) == (ent.group(PROJECT, "feed-v4")["capacity"],
                                     ent.group(PROJECT, "feed-v4")["items"])


def test_group_without_cloud_armor_purpose_holds_at_most_1000(ent, ns):
    from google.api_core import exceptions as gexc

    with pytest.raises(gexc.BadRequest, match="without purpose CLOUD_ARMOR is 1000"):
        create(ns, purpose=("DEFAULT",), capacity=1001)
    create(ns, purpose=("DEFAULT",), capacity=1000).result(timeout=10)
    assert ["DEFAULT"] == ent.group(PROJECT, "feed-v4")["purpose"]


def test_duplicate_and_absent_items_are_refused_by_default(ent, ns):
    from google.api_core import exceptions as gexc

    create(ns, items=["192.0.2.0/24"]).result(timeout=10)
    with pytest.raises(gexc.BadRequest, match="already exists") as dup:
        add(ns, ["192.0.2.0/24"])
    with pytest.raises(gexc.BadRequest, match="does not exist") as absent:
        remove(ns, ["198.51.100.0/24"])
    assert (dup.value.reason, absent.value.reason) == (
        "ADDRESS_GROUP_ITEM_ALREADY_EXISTS", "ADDRESS_GROUP_ITEM_NOT_FOUND")
    assert ["192.0.2.0/24"] == ent.group(PROJECT, "feed-v4")["items"]


def test_lenient_item_modes(ent, ns):
    ent.state.duplicate_items = ent.state.absent_items = "ignore"
    create(ns, items=["192.0.2.0/24"]).result(timeout=10)
    add(ns, ["192.0.2.0/24", "198.51.100.0/24"]).result(timeout=10)
    remove(ns, ["203.0.113.0/24", "192.0.2.0/24"]).result(timeout=10)
    assert ["198.51.100.0/24"] == ent.group(PROJECT, "feed-v4")["items"]


def test_max_items_per_call(ent, ns):
    from google.api_core import exceptions as gexc

    ent.state.max_items_per_call = 2
    create(ns).result(timeout=10)
    with pytest.raises(gexc.BadRequest, match="at most 2 per call"):
        add(ns, ["192.0.2.1/32", "192.0.2.2/32", "192.0.2.3/32"])
    ent.settle()
    assert [] == ent.group(PROJECT, "feed-v4")["items"]


def test_request_id_replay_is_a_no_op_returning_the_same_operation(ent, ns):
    create(ns).result(timeout=10)
    rid = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
    first = add(ns, ["192.0.2.0/24"], request_id=rid)
    first.result(timeout=10)
    again = add(ns, ["192.0.2.0/24"], request_id=rid)  # would be a duplicate without the id
    assert again.operation.name == first.operation.name
    assert again.result(timeout=10).items == ["192.0.2.0/24"]
    assert ["192.0.2.0/24"] == ent.group(PROJECT, "feed-v4")["items"]


def test_request_id_must_be_a_nonzero_uuid(ent, ns):
    from google.api_core import exceptions as gexc

    create(ns).result(timeout=10)
    for bad in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        with pytest.raises(gexc.BadRequest, match="request_id"):
            add(ns, ["192.0.2.0/24"], request_id=bad)
    assert [] == ent.group(PROJECT, "feed-v4")["items"]


def test_errors_have_googles_rpc_shape(ent, ns):
    import requests

    answer = requests.get(f"{ent.endpoint}/v1/{PARENT}/addressGroups/nope", timeout=5)
    body = answer.json()
    assert answer.status_code == 404
    assert set(body["error"]) == {"code", "message", "status", "details"}
    assert (body["error"]["code"], body["error"]["status"]) == (404, "NOT_FOUND")


def test_standard_tier_refuses_cloud_armor_groups(ent, ns):
    from google.api_core import exceptions as gexc

    ent.state.tier = "standard"
    with pytest.raises(gexc.BadRequest, match="Cloud Armor Enterprise") as info:
        create(ns)
    assert info.value.reason == "CLOUD_ARMOR_ENTERPRISE_REQUIRED"
    assert ent.group(PROJECT, "feed-v4") is None


def group_rule(api: Api, priority: int, group: str = "feed-v4"):
    c = api.compute_v1
    return c.SecurityPolicyRule(
        priority=priority, action="deny(403)",
        match=c.SecurityPolicyRuleMatcher(expr=c.Expr(
            expression=f"evaluateAddressGroup('{group}', origin.ip)")))


def test_rule_referencing_a_group_and_delete_refused_while_referenced(ent, ns):
    from google.api_core import exceptions as gexc

    api = Api(ent)
    api.create("pol")
    create(ns).result(timeout=10)
    api.wait(api.policies.add_rule_unary(project=PROJECT, security_policy="pol",
                                         security_policy_rule_resource=group_rule(api, 100)))
    refs = ns.list_address_group_references(
        request={"address_group": f"{PARENT}/addressGroups/feed-v4"})
    assert [(r.security_policy, r.rule_priority) for r in refs] == [
        (f"projects/{PROJECT}/global/securityPolicies/pol", 100)]
    with pytest.raises(gexc.BadRequest, match="is referenced by") as info:
        ns.delete_address_group(request={"name": f"{PARENT}/addressGroups/feed-v4"}, retry=None)
    assert info.value.reason == "ADDRESS_GROUP_IN_USE"
    api.wait(api.policies.remove_rule_unary(request={"project": PROJECT, "security_policy": "pol",
                                                  "priority": 100}))
    ns.delete_address_group(request={"name": f"{PARENT}/addressGroups/feed-v4"},
                            retry=None).result(timeout=10)
    assert ent.group(PROJECT, "feed-v4") is None


@pytest.mark.parametrize("case", ["missing", "regional-group", "default-purpose",
                                  "regional-policy", "standard"])
def test_rules_referencing_unusable_groups_are_refused(ent, ns, case):
    from google.api_core import exceptions as gexc

    api = Api(ent)
    region = "us-central1" if case == "regional-policy" else None
    api.create("pol", region)
    if case == "regional-group":
        create(ns, parent=f"projects/{PROJECT}/locations/us-central1").result(timeout=10)
    elif case != "missing":
        create(ns, purpose=("DEFAULT",) if case == "default-purpose" else ("CLOUD_ARMOR",)
               ).result(timeout=10)
    if case == "standard":
        ent.state.tier = "standard"
    expected = {"missing": "was not found", "regional-group": "only global address groups",
                "default-purpose": "does not have purpose CLOUD_ARMOR",
                "regional-policy": "only in global backend", "standard": "Cloud Armor Enterprise"}
    with pytest.raises(gexc.BadRequest, match=expected[case]):
        if region:
            api.region_policies.add_rule_unary(project=PROJECT, region=region,
                                               security_policy="pol",
                                               security_policy_rule_resource=group_rule(api, 100))
        else:
            api.policies.add_rule_unary(project=PROJECT, security_policy="pol",
                                        security_policy_rule_resource=group_rule(api, 100))
    ent.settle()
    assert [2147483647] == [r["priority"] for r in ent.policy(PROJECT, "pol", region)["rules"]]


def test_advanced_rules_count_against_their_own_quota(ent, ns):
    api = Api(ent)
    api.create("pol")
    create(ns).result(timeout=10)
    results = [api.wait(api.policies.add_rule_unary(
        project=PROJECT, security_policy="pol",
        security_policy_rule_resource=group_rule(api, 100 + i))) for i in range(4)]
    assert [bool(r.error.errors) for r in results] == [False, False, False, True]
    assert results[3].error.errors[0].code == "QUOTA_EXCEEDED"
    assert "SECURITY_POLICY_CEVAL_RULES" in results[3].error.errors[0].message
    assert [100, 101, 102, 2147483647] == [r["priority"] for r in ent.policy(PROJECT, "pol")["rules"]]


def test_policy_attribute_limit_counts_group_capacity(ent, ns):
    from google.api_core import exceptions as gexc

    ent.state.max_policy_attributes = 15
    api = Api(ent)
    api.create("pol")
    create(ns, capacity=10).result(timeout=10)
    create(ns, name="other", capacity=10).result(timeout=10)
    api.wait(api.policies.add_rule_unary(project=PROJECT, security_policy="pol",
                                         security_policy_rule_resource=group_rule(api, 100)))
    with pytest.raises(gexc.BadRequest, match="20 attributes"):
        api.policies.add_rule_unary(project=PROJECT, security_policy="pol",
                                    security_policy_rule_resource=group_rule(api, 101, "other"))
    ent.settle()
    assert [100, 2147483647] == [r["priority"] for r in ent.policy(PROJECT, "pol")["rules"]]


def test_groups_survive_a_restart_with_a_state_file(tmp_path):
    path = str(tmp_path / "state.json")
    with LocalCloudArmor(op_delay=0.0, tier="enterprise", state_file=path) as first:
        first.state.dispatch_ns("addressGroups.create", {"projectsId": PROJECT,
                                "locationsId": "global"}, {"addressGroupId": "g"},
                                {"type": "IPV6", "capacity": 5, "purpose": ["CLOUD_ARMOR"],
                                 "items": ["2001:db8::/32"]})
        first.settle()
    with LocalCloudArmor(tier="enterprise", state_file=path) as second:
        assert ["2001:db8::/32"] == second.group(PROJECT, "g")["items"]
