"""The program's settings: Pulumi configuration over config/responder.toml.

Pure: `from_sources` takes the Pulumi configuration as a mapping of parsed
values and the responder's configuration as a parsed TOML document, so that
every check runs before a single resource is declared, and tests can call it
without Pulumi.

Pulumi configuration keys (namespace `car-edge`):

| key | default | meaning |
|---|---|---|
| `responderConfig` | `../../config/responder.toml` | the responder's configuration file (band, policy name, `[deploy]`) |
| `policyName` | `[policy].name` | the security policy |
| `policyDescription` | a sentence naming the band | the policy's description |
| `defaultAction` | `deny(403)` | the default rule (priority 2147483647) |
| `trustedRanges` | `[]` | allowed first, 10 ranges to a rule |
| `trustedPriority` | 1000 | the first trusted rule's priority; the next ones follow |
| `operatorRules` | `[]` | other rules: `{name?, priority, action, srcIpRanges or expression, description?, preview?}` |
| `bandStart`, `bandEnd` | `[band].start`, `[band].end` | the responder's band: no rule of this program may fall in it |
| `deployResponder` | false | also create the responder's own resources |
| `region` | `[deploy].region`, else `[policy].region` | the functions' region |
| `addressGroups` | false | as `deploy.sh --with-address-groups`: enable the Network Security API and grant the custom role the `networksecurity.addressGroups.*` permissions (feeds with `store = "address-group"` or `"auto"`) |

`gcp:project` names the project (default `[policy].project`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from car_iac.names import DEFAULT_RULE_PRIORITY, MAX_RULE_PRIORITY

DEFAULT_ACTIONS = ("allow", "deny(403)", "deny(404)", "deny(502)")
RULE_ACTIONS = DEFAULT_ACTIONS
TRUSTED_PER_RULE = 10  # Cloud Armor's limit of source ranges in one basic rule
DEFAULT_PROBE_REGEX = (
    "/(api/jobs|api/kernels|api/terminals|api/sessions|api/2[.]0/mlflow|"
    "ajax-api/2[.]0/mlflow|v2/repository|pipeline/apis|api/v1/namespaces)"
)
DEFAULT_FIREWALL_PORTS = (22, 2379, 2380, 6379, 6443, 8265, 8888, 10001, 10250)
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


class ConfigError(ValueError):
    """An invalid setting; the message names it."""


@dataclass(frozen=True)
class RuleSpec:
    """One rule of the policy, declared as its own SecurityPolicyRule."""

    name: str
    priority: int
    action: str
    src_ip_ranges: tuple[str, ...] = ()
    expression: str = ""
    description: str = ""
    preview: bool = False


@dataclass(frozen=True)
class DeploySettings:
    """[deploy] of the responder's configuration, with deploy.sh's defaults."""

    region: str
    runtime: str = "python312"
    memory: str = "512Mi"
    cpu: str = ""
    max_instances: int = 10
    concurrency: int = 1
    timeout_seconds: int = 540
    cleanup_schedule: str = "*/10 * * * *"
    topic_prefix: str = "car"
    probe_path_regex: str = DEFAULT_PROBE_REGEX
    firewall_ports: tuple[int, ...] = DEFAULT_FIREWALL_PORTS


@dataclass(frozen=True)
class Settings:
    project: str
    policy_name: str
    policy_description: str
    policy_region: str
    band_start: int
    band_end: int
    default_rule: RuleSpec
    rules: tuple[RuleSpec, ...] = field(default=())
    deploy_responder: bool = False
    deploy: DeploySettings | None = None
    address_groups: bool = False  # addressGroups: the Network Security API and the group permissions

    def in_band(self, priority: int) -> bool:
        return self.band_start <= priority <= self.band_end


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {value!r}") from None


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _ranges(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{key}: expected a list of addresses or CIDRs, got {value!r}")
    for i, text in enumerate(value):
        if text == "*":
            continue
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(f"{key}[{i}]: not an IP address or CIDR: {text!r}") from None
    return tuple(value)


def _trusted_rules(ranges: tuple[str, ...], first: int) -> list[RuleSpec]:
    rules = []
    for n in range(math.ceil(len(ranges) / TRUSTED_PER_RULE)):
        chunk = ranges[n * TRUSTED_PER_RULE : (n + 1) * TRUSTED_PER_RULE]
        rules.append(
            RuleSpec(
                name=f"trusted-{first + n}",
                priority=first + n,
                action="allow",
                src_ip_ranges=chunk,
                description="trusted ranges",
            )
        )
    return rules


def _operator_rule(raw: Any, i: int) -> RuleSpec:
    key = f"operatorRules[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected an object, got {raw!r}")
    known = {"name", "priority", "action", "srcIpRanges", "expression", "description", "preview"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
    if "priority" not in raw or "action" not in raw:
        raise ConfigError(f"{key}: priority and action are required")
    priority = _int(raw["priority"], f"{key}.priority")
    action = raw["action"]
    if action not in RULE_ACTIONS:
        raise ConfigError(f"{key}.action: one of {', '.join(RULE_ACTIONS)}, got {action!r}")
    has_ranges, has_expr = "srcIpRanges" in raw, "expression" in raw
    if has_ranges == has_expr:
        raise ConfigError(f"{key}: give exactly one of srcIpRanges and expression")
    ranges = _ranges(raw["srcIpRanges"], f"{key}.srcIpRanges") if has_ranges else ()
    if has_ranges and not 1 <= len(ranges) <= TRUSTED_PER_RULE:
        raise ConfigError(f"{key}.srcIpRanges: 1 to {TRUSTED_PER_RULE} ranges, got {len(ranges)}")
    expression = raw.get("expression", "")
    if has_expr and (not isinstance(expression, str) or not expression.strip()):
        raise ConfigError(f"{key}.expression: expected a non-empty string")
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > 64:
        raise ConfigError(f"{key}.description: a string of at most 64 characters")
    name = raw.get("name", f"rule-{priority}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{key}.name: lower-case letters, digits and '-', got {name!r}")
    return RuleSpec(
        name=name,
        priority=priority,
        action=action,
        src_ip_ranges=ranges,
        expression=expression,
        description=description,
        preview=_bool(raw.get("preview", False), f"{key}.preview"),
    )


def _deploy(doc: Mapping[str, Any], region: str) -> DeploySettings:
    dep = doc.get("deploy", {})
    timeout = str(dep.get("timeout", "540s"))
    m = re.fullmatch(r"([0-9]+)s", timeout)
    if not m:
        raise ConfigError(f"deploy.timeout: expected e.g. 120s, got {timeout!r}")
    concurrency = _int(dep.get("concurrency", 1), "deploy.concurrency")
    cpu = str(dep.get("cpu", ""))
    if concurrency > 1 and not cpu:
        cpu = "1"  # as deploy.sh: gen2 needs a whole vCPU for concurrency > 1
    return DeploySettings(
        region=region,
        runtime=str(dep.get("runtime", "python312")),
        memory=str(dep.get("memory", "512Mi")),
        cpu=cpu,
        max_instances=_int(dep.get("max_instances", 10), "deploy.max_instances"),
        concurrency=concurrency,
        timeout_seconds=int(m.group(1)),
        cleanup_schedule=str(dep.get("cleanup_schedule", "*/10 * * * *")),
        topic_prefix=str(dep.get("topic_prefix", "car")),
        probe_path_regex=str(dep.get("probe_path_regex", DEFAULT_PROBE_REGEX)),
        firewall_ports=tuple(_int(p, "deploy.firewall_ports") for p in dep.get("firewall_ports", DEFAULT_FIREWALL_PORTS)),
    )


def from_sources(values: Mapping[str, Any], responder_doc: Mapping[str, Any]) -> Settings:
    """Settings from Pulumi configuration `values` (key -> parsed value) and
    the responder's configuration document. Raises ConfigError."""
    policy = responder_doc.get("policy", {})
    band = responder_doc.get("band", {})
    project = values.get("project") or policy.get("project", "")
    if not project:
        raise ConfigError("gcp:project: not set, and [policy].project is empty")
    policy_name = values.get("policyName") or policy.get("name", "")
    if not isinstance(policy_name, str) or not _NAME.fullmatch(policy_name):
        raise ConfigError(f"policyName: not a valid resource name: {policy_name!r}")
    policy_region = str(policy.get("region", ""))
    band_start = _int(values.get("bandStart", band.get("start", 20000)), "bandStart")
    band_end = _int(values.get("bandEnd", band.get("end", 20999)), "bandEnd")
    if not 0 <= band_start < band_end <= MAX_RULE_PRIORITY:
        raise ConfigError(f"bandStart, bandEnd: need 0 <= start < end <= {MAX_RULE_PRIORITY}, got {band_start}..{band_end}")

    default_action = values.get("defaultAction", "deny(403)")
    if default_action not in DEFAULT_ACTIONS:
        raise ConfigError(f"defaultAction: one of {', '.join(DEFAULT_ACTIONS)}, got {default_action!r}")
    default_rule = RuleSpec(
        name="default-rule",
        priority=DEFAULT_RULE_PRIORITY,
        action=default_action,
        src_ip_ranges=("*",),
        description="default rule",
    )

    trusted = _ranges(values.get("trustedRanges", []), "trustedRanges")
    trusted_priority = _int(values.get("trustedPriority", 1000), "trustedPriority")
    raw_rules = values.get("operatorRules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"operatorRules: expected a list, got {raw_rules!r}")
    rules = _trusted_rules(trusted, trusted_priority) + [_operator_rule(raw, i) for i, raw in enumerate(raw_rules)]

    seen: dict[int, str] = {}
    names: set[str] = set()
    for rule in rules:
        if not 0 <= rule.priority <= MAX_RULE_PRIORITY:
            raise ConfigError(f"{rule.name}: priority {rule.priority} is outside 0..{MAX_RULE_PRIORITY} (the default rule is defaultAction)")
        if band_start <= rule.priority <= band_end:
            raise ConfigError(
                f"{rule.name}: priority {rule.priority} is inside the responder's band {band_start}..{band_end}; "
                "the band belongs to the responder: move the rule out of it"
            )
        if rule.priority in seen:
            raise ConfigError(f"{rule.name}: priority {rule.priority} is taken by {seen[rule.priority]}")
        if rule.name in names:
            raise ConfigError(f"{rule.name}: two rules have this name")
        seen[rule.priority] = rule.name
        names.add(rule.name)

    deploy_responder = _bool(values.get("deployResponder", False), "deployResponder")
    address_groups = _bool(values.get("addressGroups", False), "addressGroups")
    if address_groups and not deploy_responder:
        raise ConfigError("addressGroups: grants the responder's role the address-group permissions; "
                          "set deployResponder: true too")
    deploy = None
    if deploy_responder:
        region = values.get("region") or responder_doc.get("deploy", {}).get("region") or policy_region
        if not region:
            raise ConfigError("region: no functions region (set car-edge:region, [deploy].region or [policy].region)")
        deploy = _deploy(responder_doc, region)
    if policy_region:
        raise ConfigError(
            f"[policy].region is {policy_region!r}: this program manages a global policy "
            "(gcp.compute.SecurityPolicy); use a configuration whose [policy].region is empty"
        )

    description = values.get("policyDescription") or (
        f"Edge policy of the ML cluster; priorities {band_start}..{band_end} belong to the Cloud Armor responder"
    )
    return Settings(
        project=project,
        policy_name=policy_name,
        policy_description=description,
        policy_region=policy_region,
        band_start=band_start,
        band_end=band_end,
        default_rule=default_rule,
        rules=tuple(rules),
        deploy_responder=deploy_responder,
        deploy=deploy,
        address_groups=address_groups,
    )
