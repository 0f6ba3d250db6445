"""Shared helpers of the localapi tests: the project/region used and :class:`Api`,
the real google-cloud-compute clients bound to one local server."""
from __future__ import annotations

from localapi import LocalCloudArmor

PROJECT = "proj"
REGION = "us-central1"



class Api:
    """The four compute clients bound to one server, plus small helpers."""

    def __init__(self, server: LocalCloudArmor) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import compute_v1

        self.compute_v1 = compute_v1
        self.server = server
        kw = {"credentials": AnonymousCredentials(),
              "client_options": {"api_endpoint": server.endpoint}}
        self.policies = compute_v1.SecurityPoliciesClient(**kw)
        self.region_policies = compute_v1.RegionSecurityPoliciesClient(**kw)
        self.global_ops = compute_v1.GlobalOperationsClient(**kw)
        self.region_ops = compute_v1.RegionOperationsClient(**kw)

    def wait(self, op, region: str | None = None):
        """Wait on the local endpoint; return the DONE operation."""
        if region:
            done = self.region_ops.wait(project=PROJECT, region=region, operation=op.name,
                                        timeout=10)
        else:
            done = self.global_ops.wait(project=PROJECT, operation=op.name, timeout=10)
        assert done.status == self.compute_v1.Operation.Status.DONE
        return done

    def rule(self, priority: int, ranges=("10.0.0.0/8",), action: str = "deny(403)", **extra):
        return self.compute_v1.SecurityPolicyRule(
            priority=priority, action=action,
            match=self.compute_v1.SecurityPolicyRuleMatcher(
                versioned_expr="SRC_IPS_V1",
                config=self.compute_v1.SecurityPolicyRuleMatcherConfig(src_ip_ranges=list(ranges))),
            **extra)

    def create(self, name: str = "pol", region: str | None = None, **fields):
        policy = self.compute_v1.SecurityPolicy(name=name, **fields)
        if region:
            op = self.region_policies.insert_unary(project=PROJECT, region=region,
                                                   security_policy_resource=policy)
        else:
            op = self.policies.insert_unary(project=PROJECT, security_policy_resource=policy)
        done = self.wait(op, region)
        assert not done.error.errors, done.error
        return done

    def add(self, priority: int, name: str = "pol", wait: bool = True, **kw):
        op = self.policies.add_rule_unary(project=PROJECT, security_policy=name,
                                          security_policy_rule_resource=self.rule(priority, **kw))
        return self.wait(op) if wait else op

