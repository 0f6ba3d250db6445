"""Validation of security policy rules, labels and names.

The checks below are the documented Cloud Armor limits (see
CLOUD_ARMOR_FACTS.md); every violation is an HTTP 400 ``invalid``:

* ``priority`` is an integer in 0..2147483647 (2147483647 is the default rule);
* ``match`` is either ``versionedExpr: SRC_IPS_V1`` with
  ``config.srcIpRanges`` holding 1..10 IPv4/IPv6 addresses or CIDRs (or the
  single value ``"*"``), or ``expr.expression`` (a CEL expression, an
  *advanced* rule; only non-emptiness is checked), never both;
* ``description`` is at most 64 characters;
* ``action`` is ``allow``, ``deny(403)``, ``deny(404)``, ``deny(502)``,
  ``throttle``, ``rate_based_ban`` or ``redirect``; ``throttle`` and
  ``rate_based_ban`` require ``rateLimitOptions``, every other action must not
  carry it; ``redirect`` requires ``redirectOptions``;
* ``preview`` is a boolean.

Unknown rule fields (``headerAction``, ``networkMatch``...) are kept as given.
CIDRs with host bits set (``10.0.0.1/24``) are accepted, as undocumented;
the stored value is the string the caller sent.
"""
from __future__ import annotations

import copy
import ipaddress
import re
from typing import Any

from .errors import bad_request

MAX_PRIORITY = 2147483647
DEFAULT_PRIORITY = MAX_PRIORITY
MAX_SRC_IP_RANGES = 10
MAX_RULE_DESCRIPTION = 64
MAX_POLICY_DESCRIPTION = 2048
ACTIONS = frozenset({"allow", "deny(403)", "deny(404)", "deny(502)",
                     "throttle", "rate_based_ban", "redirect"})
RATE_LIMITED = frozenset({"throttle", "rate_based_ban"})
NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?\Z")
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}\Z")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}\Z")
MAX_LABELS = 64
#: ``evaluateAddressGroup('NAME', origin.ip)`` (or ``origin.user_ip``), the
#: documented way a rule references a project's global address group.
ADDRESS_GROUP_CALL = re.compile(
    r"evaluateAddressGroup\(\s*(['\"])([^'\"]*)\1\s*,\s*origin\.(?:ip|user_ip)\s*\)")


def parse_priority(value: Any, field: str = "priority") -> int:
    """An int32 in 0..2147483647, given as a JSON number or a decimal string."""
    if isinstance(value, bool):
        raise bad_request(f"Invalid value for field '{field}': '{value}'.")
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= MAX_PRIORITY:
        raise bad_request(f"Invalid value for field '{field}': '{value}'. "
                          f"Priority must be between 0 and {MAX_PRIORITY}.")
    return value


def default_rule(action: str = "allow") -> dict[str, Any]:
    return {
        "kind": "compute#securityPolicyRule",
        "description": "default rule",
        "priority": DEFAULT_PRIORITY,
        "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}},
        "action": action,
        "preview": False,
    }


def _validate_ranges(ranges: Any) -> None:
    if not isinstance(ranges, list) or not ranges:
        raise bad_request("Invalid value for field 'resource.match.config.srcIpRanges': "
                          "at least one source IP range is required.")
    if len(ranges) > MAX_SRC_IP_RANGES:
        raise bad_request(
            f"Invalid value for field 'resource.match.config.srcIpRanges': "
            f"{len(ranges)} ranges given. Maximum number of src_ip_ranges allowed is "
            f"{MAX_SRC_IP_RANGES}.")
    for value in ranges:
        if value == "*":
            if len(ranges) != 1:
                raise bad_request("Invalid value for field "
                                  "'resource.match.config.srcIpRanges': '*' must be alone.")
            continue
        try:
            if not isinstance(value, str) or value != value.strip():
                raise ValueError(value)
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise bad_request(
                f"Invalid value for field 'resource.match.config.srcIpRanges': "
                f"'{value}'. Invalid IP address or CIDR range.") from None


def validate_match(match: Any) -> None:
    if not isinstance(match, dict) or not match:
        raise bad_request("Invalid value for field 'resource.match': "
                          "a rule requires a match condition.")
    has_basic = "versionedExpr" in match or "config" in match
    has_expr = "expr" in match
    if has_basic and has_expr:
        raise bad_request("Invalid value for field 'resource.match': "
                          "specify either versionedExpr/config or expr, not both.")
    if has_expr:
        expr = match["expr"]
        text = expr.get("expression") if isinstance(expr, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise bad_request("Invalid value for field 'resource.match.expr.expression': "
                              "the expression must not be empty.")
        _validate_group_calls(text)
        return
    if match.get("versionedExpr") != "SRC_IPS_V1":
        raise bad_request(f"Invalid value for field 'resource.match.versionedExpr': "
                          f"'{match.get('versionedExpr')}'. Must be SRC_IPS_V1.")
    config = match.get("config")
    _validate_ranges(config.get("srcIpRanges") if isinstance(config, dict) else None)


def group_refs(rule: dict[str, Any]) -> list[str]:
    """The address-group names a (validated) rule's expression references."""
    expr = (rule.get("match") or {}).get("expr")
    text = expr.get("expression", "") if isinstance(expr, dict) else ""
    return [m.group(2) for m in ADDRESS_GROUP_CALL.finditer(text or "")]


def _validate_group_calls(text: str) -> None:
    if "evaluateOrganizationAddressGroup" in text:
        raise bad_request("Invalid value for field 'resource.match.expr.expression': "
                          "organization address groups are not modelled by the local API.")
    if text.count("evaluateAddressGroup") != len(ADDRESS_GROUP_CALL.findall(text)):
        raise bad_request("Invalid value for field 'resource.match.expr.expression': "
                          "evaluateAddressGroup takes a quoted group name and origin.ip "
                          "(or origin.user_ip).")
    for m in ADDRESS_GROUP_CALL.finditer(text):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,62}", m.group(2)):
            raise bad_request(f"Invalid value for field 'resource.match.expr.expression': "
                              f"'{m.group(2)}' is not an address group name.")


def validate_rule(rule: Any) -> dict[str, Any]:
    """Check a complete rule; return it with ``kind`` set.  Raises ApiError(400)."""
    if not isinstance(rule, dict):
        raise bad_request("Invalid value for field 'resource': a rule object is required.")
    rule = dict(rule)
    rule["priority"] = parse_priority(rule.get("priority", 0), "resource.priority")
    validate_match(rule.get("match"))
    description = rule.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_RULE_DESCRIPTION:
        raise bad_request(f"Invalid value for field 'resource.description': the description "
                          f"must be at most {MAX_RULE_DESCRIPTION} characters long.")
    action = rule.get("action")
    if action not in ACTIONS:
        raise bad_request(f"Invalid value for field 'resource.action': '{action}'. "
                          f"Valid actions are {', '.join(sorted(ACTIONS))}.")
    if action in RATE_LIMITED and not rule.get("rateLimitOptions"):
        raise bad_request(f"Invalid value for field 'resource.rateLimitOptions': "
                          f"rateLimitOptions is required when action is {action}.")
    if action not in RATE_LIMITED and "rateLimitOptions" in rule:
        raise bad_request(f"Invalid value for field 'resource.rateLimitOptions': "
                          f"rateLimitOptions cannot be specified when action is {action}; "
                          f"it is only allowed with throttle or rate_based_ban.")
    if action == "redirect" and not rule.get("redirectOptions"):
        raise bad_request("Invalid value for field 'resource.redirectOptions': "
                          "redirectOptions is required when action is redirect.")
    if "preview" in rule and not isinstance(rule["preview"], bool):
        raise bad_request("Invalid value for field 'resource.preview': must be a boolean.")
    if rule["priority"] == DEFAULT_PRIORITY:
        m = rule["match"]
        if m.get("versionedExpr") != "SRC_IPS_V1" or m.get("config", {}).get("srcIpRanges") != ["*"]:
            raise bad_request("The default rule (priority 2147483647) must match all "
                              "source IPs: versionedExpr SRC_IPS_V1 with srcIpRanges ['*'].")
    out: dict[str, Any] = rule
    out["kind"] = "compute#securityPolicyRule"
    out.setdefault("preview", False)
    return out


def validate_labels(labels: Any) -> dict[str, Any]:
    """Label keys: lowercase letter first, then [a-z0-9_-], at most 63 characters;
    values: [a-z0-9_-], at most 63 characters; at most 64 labels."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise bad_request("Invalid value for field 'labels': must be a map.")
    if len(labels) > MAX_LABELS:
        raise bad_request(f"Invalid value for field 'labels': at most {MAX_LABELS} labels.")
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(key):
            raise bad_request(f"Invalid value for field 'labels': invalid label key '{key}'.")
        if not isinstance(value, str) or not LABEL_VALUE_RE.match(value):
            raise bad_request(
                f"Invalid value for field 'labels': invalid value '{value}' for label '{key}'.")
    return dict(labels)


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise bad_request(f"Invalid value for field 'resource.name': '{name}'. Must be a "
                          "match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
    return name


def apply_mask(target: dict[str, Any], source: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """Copy each dotted ``path`` from ``source`` into a copy of ``target``;
    a path absent from ``source`` is cleared in the result."""
    out = copy.deepcopy(target)
    for path in paths:
        keys = path.split(".")
        src: Any = source
        for k in keys:
            src = src.get(k) if isinstance(src, dict) else None
            if src is None:
                break
        dst = out
        for k in keys[:-1]:
            dst = dst.setdefault(k, {})
            if not isinstance(dst, dict):
                raise bad_request(f"Invalid value for field 'updateMask': '{path}'.")
        if src is None:
            dst.pop(keys[-1], None)
        else:
            dst[keys[-1]] = copy.deepcopy(src)
    return out


def parse_mask(value: str | None) -> list[str] | None:
    if value is None:
        return None
    paths = [p.strip() for p in value.split(",") if p.strip()]
    return paths
