"""Policy methods: insert, get, list, patch, setLabels, regional policies."""
from __future__ import annotations

import base64

import pytest
from google.api_core import exceptions as gexc
from localapi_testkit import PROJECT, REGION

DEFAULT = 2147483647


def test_insert_defaults(api, server):
    api.create(description="ml cluster")
    p = api.policies.get(project=PROJECT, security_policy="pol")
    assert p.kind == "compute#securityPolicy" and p.type_ == "CLOUD_ARMOR"
    assert p.id and p.self_link.endswith(f"projects/{PROJECT}/global/securityPolicies/pol")
    for fp in (p.fingerprint, p.label_fingerprint):
        assert len(base64.urlsafe_b64decode(fp)) == 8
    [rule] = p.rules
    assert (rule.priority, rule.action) == (DEFAULT, "allow")
    assert rule.match.versioned_expr == "SRC_IPS_V1"
    assert list(rule.match.config.src_ip_ranges) == ["*"]
    assert server.policy(PROJECT, "pol")["description"] == "ml cluster"


def test_insert_with_default_rule_and_rules(api, server):
    c = api.compute_v1
    api.create(name="deny-all", rules=[api.rule(DEFAULT, ranges=["*"], action="deny(404)"),
                                       api.rule(10, ranges=["1.2.3.4"], action="allow")])
    assert [(r["priority"], r["action"]) for r in server.policy(PROJECT, "deny-all")["rules"]] == \
        [(10, "allow"), (DEFAULT, "deny(404)")]
    with pytest.raises(gexc.BadRequest, match="already contains a rule at priority 10"):
        api.policies.insert_unary(project=PROJECT, security_policy_resource=c.SecurityPolicy(
            name="dup", rules=[api.rule(10), api.rule(10)]))
    with pytest.raises(gexc.BadRequest, match="resource.name"):
        api.policies.insert_unary(project=PROJECT,
                                  security_policy_resource=c.SecurityPolicy(name="Bad_Name"))
    assert server.policy(PROJECT, "dup") is None


def test_insert_existing_name_409(api, server):
    c = api.compute_v1
    api.create()
    fp = server.policy(PROJECT, "pol")["fingerprint"]
    with pytest.raises(gexc.Conflict):
        api.policies.insert_unary(project=PROJECT,
                                  security_policy_resource=c.SecurityPolicy(name="pol"))
    # A pending insert reserves the name too.
    api.policies.insert_unary(project=PROJECT, security_policy_resource=c.SecurityPolicy(name="p2"))
    with pytest.raises(gexc.Conflict):
        api.policies.insert_unary(project=PROJECT,
                                  security_policy_resource=c.SecurityPolicy(name="p2"))
    assert server.policy(PROJECT, "pol")["fingerprint"] == fp


def test_get_missing_404(api):
    with pytest.raises(gexc.NotFound):
        api.policies.get(project=PROJECT, security_policy="nope")


def test_list_paginates(api, server):
    c = api.compute_v1
    for i in range(5):
        api.policies.insert_unary(project=PROJECT,
                                  security_policy_resource=c.SecurityPolicy(name=f"p{i}"))
    server.settle()
    pager = api.policies.list(request={"project": PROJECT, "max_results": 2})
    assert [p.name for p in pager] == [f"p{i}" for i in range(5)]
    assert sum(1 for r in server.requests if r["path"].endswith("/global/securityPolicies")
               and r["method"] == "GET") == 3
    filtered = api.policies.list(request={"project": PROJECT, "filter": 'name = "p3"'})
    assert [p.name for p in filtered] == ["p3"]
    assert list(api.region_policies.list(project=PROJECT, region=REGION)) == []


def test_fingerprint_changes_on_every_change(api, server):
    api.create()
    seen = {server.policy(PROJECT, "pol")["fingerprint"]}
    api.add(1)
    seen.add(server.policy(PROJECT, "pol")["fingerprint"])
    api.wait(api.policies.patch_rule_unary(request={
        "project": PROJECT, "security_policy": "pol", "priority": 1,
        "security_policy_rule_resource": {"description": "x"}}))
    seen.add(server.policy(PROJECT, "pol")["fingerprint"])
    lf = server.policy(PROJECT, "pol")["labelFingerprint"]
    api.wait(api.policies.set_labels_unary(
        project=PROJECT, resource="pol",
        global_set_labels_request_resource={"labels": {"a": "b"}, "label_fingerprint": lf}))
    p = server.policy(PROJECT, "pol")
    seen.add(p["fingerprint"])
    assert p["labelFingerprint"] != lf and len(seen) == 4


def test_patch_with_rules_refused(api, server):
    api.create()
    p = api.policies.get(project=PROJECT, security_policy="pol")
    p.description = "changed"
    with pytest.raises(gexc.BadRequest, match="Rules cannot be updated with patch, please use "
                                              "addRule, removeRule, or patchRule instead."):
        api.policies.patch_unary(project=PROJECT, security_policy="pol", security_policy_resource=p)
    assert server.policy(PROJECT, "pol")["description"] == ""


def test_patch_fingerprint(api, server):
    c = api.compute_v1
    api.create()
    old = server.policy(PROJECT, "pol")["fingerprint"]
    api.wait(api.policies.patch_unary(project=PROJECT, security_policy="pol",
                                      security_policy_resource=c.SecurityPolicy(
                                          description="v1", fingerprint=old)))
    assert server.policy(PROJECT, "pol")["description"] == "v1"
    with pytest.raises(gexc.PreconditionFailed) as info:
        api.policies.patch_unary(project=PROJECT, security_policy="pol",
                                 security_policy_resource=c.SecurityPolicy(
                                     description="v2", fingerprint=old))
    assert info.value.errors[0]["reason"] == "conditionNotMet"
    # Without a fingerprint the patch is accepted (documented choice).
    api.wait(api.policies.patch_unary(project=PROJECT, security_policy="pol",
                                      security_policy_resource=c.SecurityPolicy(description="v3")))
    assert server.policy(PROJECT, "pol")["description"] == "v3"


def test_patch_fingerprint_rechecked_at_commit(api, server):
    c = api.compute_v1
    api.create()
    fp = server.policy(PROJECT, "pol")["fingerprint"]
    a = api.policies.patch_unary(project=PROJECT, security_policy="pol",
                                 security_policy_resource=c.SecurityPolicy(description="a",
                                                                           fingerprint=fp))
    b = api.policies.patch_unary(project=PROJECT, security_policy="pol",
                                 security_policy_resource=c.SecurityPolicy(description="b",
                                                                           fingerprint=fp))
    assert not api.wait(a).error.errors
    done = api.wait(b)
    assert done.error.errors[0].code == "CONDITION_NOT_MET" and done.http_error_status_code == 412
    assert server.policy(PROJECT, "pol")["description"] == "a"


def test_patch_request_id_dedupes(api, server):
    c = api.compute_v1
    api.create()
    rid = "8f4c2d8e-1f0a-4a8e-9f5e-0c6a1d2b3c4d"
    def patch(description):
        return api.policies.patch_unary(request={
            "project": PROJECT, "security_policy": "pol", "request_id": rid,
            "security_policy_resource": c.SecurityPolicy(description=description)})

    one, two = patch("x"), patch("y")
    assert one.name == two.name
    api.wait(one)
    assert server.policy(PROJECT, "pol")["description"] == "x"


def test_set_labels(api, server):
    api.create()
    lf = server.policy(PROJECT, "pol")["labelFingerprint"]
    api.wait(api.policies.set_labels_unary(
        project=PROJECT, resource="pol",
        global_set_labels_request_resource={"labels": {"team": "ml", "env": "prod"},
                                            "label_fingerprint": lf}))
    p = api.policies.get(project=PROJECT, security_policy="pol")
    assert dict(p.labels) == {"team": "ml", "env": "prod"}
    # Stale fingerprint: 412, labels unchanged.
    with pytest.raises(gexc.PreconditionFailed):
        api.policies.set_labels_unary(
            project=PROJECT, resource="pol",
            global_set_labels_request_resource={"labels": {"x": "y"}, "label_fingerprint": lf})
    # The new map replaces the old one.
    api.wait(api.policies.set_labels_unary(
        project=PROJECT, resource="pol",
        global_set_labels_request_resource={"labels": {"owner": "sre"},
                                            "label_fingerprint": p.label_fingerprint}))
    assert server.policy(PROJECT, "pol")["labels"] == {"owner": "sre"}


@pytest.mark.parametrize("labels", [{"Team": "ml"}, {"1team": "ml"}, {"team": "ML"},
                                    {"k" * 64: "v"}, {"team": "v" * 64}, {"team": "a.b"}])
def test_set_labels_validation(api, server, labels):
    api.create()
    lf = server.policy(PROJECT, "pol")["labelFingerprint"]
    with pytest.raises(gexc.BadRequest, match="labels"):
        api.policies.set_labels_unary(
            project=PROJECT, resource="pol",
            global_set_labels_request_resource={"labels": labels, "label_fingerprint": lf})
    assert server.policy(PROJECT, "pol")["labels"] == {}


def test_set_labels_requires_fingerprint(api, server):
    api.create()
    with pytest.raises(gexc.BadRequest, match="labelFingerprint"):
        api.policies.set_labels_unary(project=PROJECT, resource="pol",
                                      global_set_labels_request_resource={"labels": {"a": "b"}})


def test_regional_policy_lifecycle(api, server):
    c = api.compute_v1
    rp = api.region_policies
    api.create(region=REGION)
    assert server.policy(PROJECT, "pol") is None
    p = rp.get(project=PROJECT, region=REGION, security_policy="pol")
    assert p.region.endswith(f"/regions/{REGION}") and f"/regions/{REGION}/" in p.self_link
    op = rp.add_rule_unary(project=PROJECT, region=REGION, security_policy="pol",
                           security_policy_rule_resource=api.rule(10, ranges=["2001:db8::/48"]))
    assert op.region.endswith(REGION)
    assert server.policy(PROJECT, "pol", REGION)["rules"][0]["priority"] == DEFAULT
    api.wait(op, REGION)
    assert rp.get_rule(request={"project": PROJECT, "region": REGION, "security_policy": "pol",
                                "priority": 10}).action == "deny(403)"
    with pytest.raises(gexc.BadRequest, match="already contains a rule at priority 10"):
        rp.add_rule_unary(project=PROJECT, region=REGION, security_policy="pol",
                          security_policy_rule_resource=api.rule(10))
    api.wait(rp.patch_rule_unary(request={
        "project": PROJECT, "region": REGION, "security_policy": "pol", "priority": 10,
        "security_policy_rule_resource": {"action": "deny(502)"}}), REGION)
    lf = server.policy(PROJECT, "pol", REGION)["labelFingerprint"]
    api.wait(rp.set_labels_unary(project=PROJECT, region=REGION, resource="pol",
                                 region_set_labels_request_resource={"labels": {"a": "b"},
                                                                     "label_fingerprint": lf}),
             REGION)
    with pytest.raises(gexc.PreconditionFailed):
        rp.set_labels_unary(project=PROJECT, region=REGION, resource="pol",
                            region_set_labels_request_resource={"labels": {},
                                                                "label_fingerprint": lf})
    with pytest.raises(gexc.BadRequest, match="Rules cannot be updated with patch"):
        rp.patch_unary(project=PROJECT, region=REGION, security_policy="pol",
                       security_policy_resource=c.SecurityPolicy(rules=[api.rule(3)]))
    with pytest.raises(gexc.BadRequest, match="default rule cannot be removed"):
        rp.remove_rule_unary(request={"project": PROJECT, "region": REGION,
                                      "security_policy": "pol", "priority": DEFAULT})
    api.wait(rp.remove_rule_unary(request={"project": PROJECT, "region": REGION,
                                           "security_policy": "pol", "priority": 10}), REGION)
    p = server.policy(PROJECT, "pol", REGION)
    assert [r["priority"] for r in p["rules"]] == [DEFAULT] and p["labels"] == {"a": "b"}
    # Same name in another region or globally is a different policy.
    api.create(region="europe-west1")
    api.create()


def test_regional_rules_count_against_project_quota(api, server):
    server.state.quota = 2
    api.create()
    api.create(region=REGION)
    op = api.region_policies.add_rule_unary(project=PROJECT, region=REGION, security_policy="pol",
                                            security_policy_rule_resource=api.rule(1))
    assert api.wait(op, REGION).error.errors[0].code == "QUOTA_EXCEEDED"


def test_delete_policy(api, server):
    api.create()
    api.wait(api.policies.delete_unary(project=PROJECT, security_policy="pol"))
    assert server.policy(PROJECT, "pol") is None
    with pytest.raises(gexc.NotFound):
        api.policies.delete_unary(project=PROJECT, security_policy="pol")
