"""Rule methods: validation, priorities, patch semantics, quota, validateOnly."""
from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from localapi_testkit import PROJECT

DEFAULT = 2147483647


def _priorities(server, name="pol"):
    return [r["priority"] for r in server.policy(PROJECT, name)["rules"]]


def _req(**kw):
    return {"project": PROJECT, "security_policy": "pol", **kw}


def test_add_get_remove(api, server):
    api.create()
    api.add(100, ranges=["192.0.2.1", "2001:db8::/32"], description="bad actors")
    rule = api.policies.get_rule(request=_req(priority=100))
    assert list(rule.match.config.src_ip_ranges) == ["192.0.2.1", "2001:db8::/32"]
    assert rule.description == "bad actors" and rule.preview is False
    api.wait(api.policies.remove_rule_unary(request=_req(priority=100)))
    assert _priorities(server) == [DEFAULT]


def test_duplicate_priority_http_400(api, server):
    api.create()
    api.add(100)
    before = server.policy(PROJECT, "pol")
    with pytest.raises(gexc.BadRequest, match="already contains a rule at priority 100"):
        api.add(100, ranges=["1.1.1.1"])
    with pytest.raises(gexc.BadRequest, match="already contains a rule at priority 2147483647"):
        api.add(DEFAULT, ranges=["*"], action="allow")
    assert server.policy(PROJECT, "pol") == before


def test_pending_add_reserves_priority(api, server):
    api.create()
    first = api.add(100, wait=False)
    with pytest.raises(gexc.BadRequest, match="already contains a rule at priority 100"):
        api.add(100, ranges=["1.1.1.1"], wait=False)
    api.wait(first)
    assert server.rule(PROJECT, "pol", 100)["match"]["config"]["srcIpRanges"] == ["10.0.0.0/8"]


def test_duplicate_priority_operation_mode(api, server):
    server.state.duplicate_mode = "operation"
    api.create()
    api.add(100)
    done = api.add(100, ranges=["1.1.1.1"])
    assert done.error.errors[0].message == "The security policy already contains a rule at priority 100."
    assert done.http_error_status_code == 400
    assert server.rule(PROJECT, "pol", 100)["match"]["config"]["srcIpRanges"] == ["10.0.0.0/8"]


@pytest.mark.parametrize("method", ["get_rule", "patch_rule_unary", "remove_rule_unary"])
def test_empty_priority_is_400(api, server, method):
    api.create()
    kw = {"security_policy_rule_resource": {"description": "x"}} if method == "patch_rule_unary" else {}
    with pytest.raises(gexc.BadRequest, match="does not contain a rule at priority 5"):
        getattr(api.policies, method)(request=_req(priority=5, **kw))
    # A missing priority means priority 0.
    with pytest.raises(gexc.BadRequest, match="does not contain a rule at priority 0"):
        getattr(api.policies, method)(request=_req(**kw))
    assert _priorities(server) == [DEFAULT]


def test_priority_zero_is_a_real_priority(api, server):
    api.create()
    api.add(0)
    assert api.policies.get_rule(request=_req()).priority == 0
    api.wait(api.policies.remove_rule_unary(request=_req(priority=0)))
    assert _priorities(server) == [DEFAULT]


@pytest.mark.parametrize("ranges, message", [
    ([f"10.0.{i}.0/24" for i in range(11)], "Maximum number of src_ip_ranges allowed is 10"),
    (["10.0.0.0/33"], "Invalid IP address or CIDR range"),
    (["not-an-ip"], "Invalid IP address or CIDR range"),
    (["300.1.1.1"], "Invalid IP address or CIDR range"),
    (["*", "1.1.1.1"], "'\\*' must be alone"),
])
def test_bad_ranges(api, server, ranges, message):
    api.create()
    with pytest.raises(gexc.BadRequest, match=message):
        api.add(10, ranges=ranges)
    assert _priorities(server) == [DEFAULT]


def test_ten_ranges_accepted(api, server):
    api.create()
    api.add(10, ranges=[f"10.0.{i}.0/24" for i in range(9)] + ["2001:db8::1"])
    assert len(server.rule(PROJECT, "pol", 10)["match"]["config"]["srcIpRanges"]) == 10


def test_description_limit(api, server):
    api.create()
    api.add(1, description="d" * 64)
    with pytest.raises(gexc.BadRequest, match="at most 64 characters"):
        api.add(2, description="d" * 65)
    assert _priorities(server) == [1, DEFAULT]


@pytest.mark.parametrize("action", ["deny(451)", "deny", "block", ""])
def test_bad_action(api, server, action):
    api.create()
    with pytest.raises(gexc.BadRequest, match="resource.action"):
        api.add(3, action=action)
    assert _priorities(server) == [DEFAULT]


def test_rate_limit_options_rules(api, server):
    c = api.compute_v1
    rlo = c.SecurityPolicyRuleRateLimitOptions(
        conform_action="allow", exceed_action="deny(429)",
        rate_limit_threshold=c.SecurityPolicyRuleRateLimitOptionsThreshold(count=10, interval_sec=60))
    api.create()
    with pytest.raises(gexc.BadRequest, match="rateLimitOptions is required"):
        api.add(1, action="throttle")
    with pytest.raises(gexc.BadRequest, match="rateLimitOptions cannot be specified"):
        api.add(1, action="deny(403)", rate_limit_options=rlo)
    api.add(1, action="throttle", rate_limit_options=rlo)
    api.add(2, action="deny(404)")
    # deny <-> throttle through patchRule fails on rateLimitOptions.
    with pytest.raises(gexc.BadRequest, match="rateLimitOptions"):
        api.policies.patch_rule_unary(request=_req(
            priority=2, security_policy_rule_resource={"action": "throttle",
                                                       "rate_limit_options": rlo}))
    with pytest.raises(gexc.BadRequest, match="rateLimitOptions"):
        api.policies.patch_rule_unary(request=_req(
            priority=1, security_policy_rule_resource={"action": "deny(403)"},
            update_mask="action,rate_limit_options"))
    assert server.rule(PROJECT, "pol", 1)["action"] == "throttle"
    assert server.rule(PROJECT, "pol", 2)["action"] == "deny(404)"


def test_cel_expression_rule(api, server):
    c = api.compute_v1
    api.create()
    expr = c.SecurityPolicyRule(priority=20, action="deny(403)", match=c.SecurityPolicyRuleMatcher(
        expr=c.Expr(expression="inIpRange(origin.ip, '1.2.3.0/24')")))
    api.wait(api.policies.add_rule_unary(project=PROJECT, security_policy="pol",
                                         security_policy_rule_resource=expr))
    assert server.rule(PROJECT, "pol", 20)["match"]["expr"]["expression"].startswith("inIpRange")
    empty = c.SecurityPolicyRule(priority=21, action="deny(403)",
                                 match=c.SecurityPolicyRuleMatcher(expr=c.Expr(title="t")))
    with pytest.raises(gexc.BadRequest, match="expression must not be empty"):
        api.policies.add_rule_unary(project=PROJECT, security_policy="pol",
                                    security_policy_rule_resource=empty)


def test_patch_rule_without_mask_replaces_given_fields(api, server):
    api.create()
    api.add(50, description="old", preview=True)
    api.wait(api.policies.patch_rule_unary(request=_req(
        priority=50, security_policy_rule_resource={"action": "deny(404)"})))
    rule = server.rule(PROJECT, "pol", 50)
    assert (rule["action"], rule["description"], rule["preview"]) == ("deny(404)", "old", True)
    assert rule["match"]["config"]["srcIpRanges"] == ["10.0.0.0/8"]


def test_patch_rule_with_mask_changes_only_listed_fields(api, server):
    api.create()
    api.add(50, description="old")
    body = {"action": "deny(502)", "description": "ignored",
            "match": {"versioned_expr": "SRC_IPS_V1", "config": {"src_ip_ranges": ["1.2.3.4"]}}}
    api.wait(api.policies.patch_rule_unary(request=_req(
        priority=50, security_policy_rule_resource=body, update_mask="match")))
    rule = server.rule(PROJECT, "pol", 50)
    assert rule["match"]["config"]["srcIpRanges"] == ["1.2.3.4"]
    assert (rule["action"], rule["description"]) == ("deny(403)", "old")
    # A listed field absent from the body is cleared.
    api.wait(api.policies.patch_rule_unary(request=_req(
        priority=50, security_policy_rule_resource={"action": "deny(403)"},
        update_mask="description")))
    assert "description" not in server.rule(PROJECT, "pol", 50)


def test_patch_rule_validates_result_and_priority(api, server):
    api.create()
    api.add(50)
    with pytest.raises(gexc.BadRequest, match="Maximum number of src_ip_ranges"):
        api.policies.patch_rule_unary(request=_req(
            priority=50, security_policy_rule_resource={
                "match": {"versioned_expr": "SRC_IPS_V1",
                          "config": {"src_ip_ranges": [f"10.{i}.0.0/16" for i in range(11)]}}}))
    with pytest.raises(gexc.BadRequest, match="cannot change a rule's priority"):
        api.policies.patch_rule_unary(request=_req(
            priority=50, security_policy_rule_resource={"priority": 51}))
    assert server.rule(PROJECT, "pol", 50)["match"]["config"]["srcIpRanges"] == ["10.0.0.0/8"]


def test_default_rule(api, server):
    api.create()
    with pytest.raises(gexc.BadRequest, match="default rule cannot be removed"):
        api.policies.remove_rule_unary(request=_req(priority=DEFAULT))
    # Its action may change, its match may not.
    api.wait(api.policies.patch_rule_unary(request=_req(
        priority=DEFAULT, security_policy_rule_resource={"action": "deny(403)"})))
    with pytest.raises(gexc.BadRequest, match="default rule"):
        api.policies.patch_rule_unary(request=_req(
            priority=DEFAULT, security_policy_rule_resource={
                "match": {"versioned_expr": "SRC_IPS_V1", "config": {"src_ip_ranges": ["1.0.0.0/8"]}}}))
    assert server.rule(PROJECT, "pol", DEFAULT)["action"] == "deny(403)"


def test_validate_only_commits_nothing(api, server):
    api.create()
    fp = server.policy(PROJECT, "pol")["fingerprint"]
    op = api.policies.add_rule_unary(request=_req(security_policy_rule_resource=api.rule(9),
                                                  validate_only=True))
    assert op.status == op.Status.DONE and not op.error.errors
    with pytest.raises(gexc.BadRequest, match="Maximum number"):
        api.policies.add_rule_unary(request=_req(
            security_policy_rule_resource=api.rule(9, ranges=[f"1.1.1.{i}" for i in range(11)]),
            validate_only=True))
    api.add(9)
    fp = server.policy(PROJECT, "pol")["fingerprint"]
    op = api.policies.patch_rule_unary(request=_req(
        priority=9, security_policy_rule_resource={"action": "allow"}, validate_only=True))
    assert op.status == op.Status.DONE
    with pytest.raises(gexc.BadRequest, match="resource.action"):
        api.policies.patch_rule_unary(request=_req(
            priority=9, security_policy_rule_resource={"action": "nope"}, validate_only=True))
    server.settle()
    policy = server.policy(PROJECT, "pol")
    assert policy["fingerprint"] == fp
    assert _priorities(server) == [9, DEFAULT] and server.rule(PROJECT, "pol", 9)["action"] == "deny(403)"


def test_quota_operation_mode(api, server):
    server.state.quota = 3  # the default rule counts
    api.create()
    api.add(1)
    pending = api.add(2, wait=False)  # pending adds count against the quota
    done = api.add(3)
    assert done.error.errors[0].code == "QUOTA_EXCEEDED"
    assert done.error.errors[0].message == "Quota 'SECURITY_POLICY_RULES' exceeded.  Limit: 3.0 globally."
    assert done.http_error_status_code == 403 and done.http_error_message == "FORBIDDEN"
    api.wait(pending)
    assert _priorities(server) == [1, 2, DEFAULT]
    # Rules of every policy of the project count, default rules included.
    op = api.policies.insert_unary(project=PROJECT,
                                   security_policy_resource=api.compute_v1.SecurityPolicy(name="b"))
    assert api.wait(op).error.errors[0].code == "QUOTA_EXCEEDED"
    assert server.policy(PROJECT, "b") is None
    api.wait(api.policies.remove_rule_unary(request=_req(priority=1)))
    api.add(3)
    assert _priorities(server) == [2, 3, DEFAULT]


def test_quota_default_is_200_and_http_mode(api, server):
    assert server.state.quota == 200
    server.state.quota_mode = "http"
    server.state.quota = 2
    api.create()
    api.add(1)
    with pytest.raises(gexc.Forbidden, match="Quota 'SECURITY_POLICY_RULES' exceeded") as info:
        api.add(2)
    assert info.value.errors[0]["reason"] == "quotaExceeded"
    assert _priorities(server) == [1, DEFAULT]


def test_rules_on_missing_policy_are_404(api):
    with pytest.raises(gexc.NotFound):
        api.add(1, name="ghost")
    with pytest.raises(gexc.NotFound):
        api.policies.get_rule(request={"project": PROJECT, "security_policy": "ghost", "priority": 1})


def test_concurrent_patch_rules_lose_updates_silently(api, server):
    api.create()
    api.add(5, description="a")
    one = api.policies.patch_rule_unary(request=_req(
        priority=5, security_policy_rule_resource={"description": "one"}))
    two = api.policies.patch_rule_unary(request=_req(
        priority=5, security_policy_rule_resource={"description": "two"}))
    assert not api.wait(one).error.errors and not api.wait(two).error.errors
    assert server.rule(PROJECT, "pol", 5)["description"] == "two"


def test_remove_twice_pending_second_fails_at_commit(api, server):
    api.create()
    api.add(5)
    a = api.policies.remove_rule_unary(request=_req(priority=5))
    b = api.policies.remove_rule_unary(request=_req(priority=5))
    assert not api.wait(a).error.errors
    done = api.wait(b)
    assert "does not contain a rule at priority 5" in done.error.errors[0].message
    assert _priorities(server) == [DEFAULT]
