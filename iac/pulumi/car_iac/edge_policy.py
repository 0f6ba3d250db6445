"""The edge policy, declared the safe way.

The seed program declared the policy with its rules inline
(`gcp.compute.SecurityPolicy(rules=[...])`). The provider treats inline rules
as the complete set: after a refresh the responder's band rules show up as
drift, and the next `up` removes them one by one. Here:

* The policy declares **no inline rules**, and its `rules` property is in
  `ignore_changes`, so the program never diffs, adds or removes a rule
  through the policy resource, whatever a refresh reads back.
* **Every rule is its own `gcp.compute.SecurityPolicyRule`**, the default rule
  included: Cloud Armor creates the default rule (allow) with the policy, and
  the provider's rule resource at priority 2147483647 takes it over and sets
  its action (the provider documents this as "Security Policy Rule Default
  Rule"). A rule resource manages only its own priority, so rules that others
  add (the band) are never read as drift.
* No rule of this program may fall inside the responder's band: settings
  refuse it before any resource is declared.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from car_iac.settings import RuleSpec, Settings


@dataclass
class EdgePolicy:
    policy: gcp.compute.SecurityPolicy
    default_rule: gcp.compute.SecurityPolicyRule
    rules: dict[str, gcp.compute.SecurityPolicyRule]


def _match(spec: RuleSpec) -> dict[str, object]:
    if spec.expression:
        return {"expr": {"expression": spec.expression}}
    return {"versioned_expr": "SRC_IPS_V1", "config": {"src_ip_ranges": list(spec.src_ip_ranges)}}


def _rule(spec: RuleSpec, settings: Settings, policy: gcp.compute.SecurityPolicy) -> gcp.compute.SecurityPolicyRule:
    return gcp.compute.SecurityPolicyRule(
        spec.name,
        project=settings.project,
        security_policy=policy.name,
        priority=spec.priority,
        action=spec.action,
        match=_match(spec),
        description=spec.description or None,
        preview=spec.preview,
        opts=pulumi.ResourceOptions(parent=policy),
    )


def declare(settings: Settings) -> EdgePolicy:
    """Declares the policy, its default rule and its operator rules."""
    policy = gcp.compute.SecurityPolicy(
        "edge-policy",
        project=settings.project,
        name=settings.policy_name,
        description=settings.policy_description,
        type="CLOUD_ARMOR",
        # No `rules=` here, ever: see the module's docstring. ignore_changes
        # keeps a refreshed rule list (the band included) out of every diff.
        opts=pulumi.ResourceOptions(ignore_changes=["rules"]),
    )
    default_rule = _rule(settings.default_rule, settings, policy)
    rules = {spec.name: _rule(spec, settings, policy) for spec in settings.rules}
    return EdgePolicy(policy=policy, default_rule=default_rule, rules=rules)
