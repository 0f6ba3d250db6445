"""The responder's own view of a security policy, independent of the client.

The compute adapter maps ``compute_v1`` protos to these frozen types and
back; everything above the adapter works with them only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_RULE_PRIORITY = 2147483647


@dataclass(frozen=True)
class PolicyRule:
    """One rule of a security policy.

    ``ranges`` is ``match.config.srcIpRanges`` for basic rules; ``expression``
    is ``match.expr.expression`` for advanced ones. ``raw`` keeps every field
    the API returned (as JSON-like data) so that rules the responder does not
    own can be compared field for field and are never rewritten.
    """

    priority: int
    action: str
    ranges: tuple[str, ...] = ()
    description: str = ""
    preview: bool = False
    expression: str | None = None
    raw: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class PolicySnapshot:
    """A policy as read once: its rules and the fingerprints of that read."""

    name: str
    rules: tuple[PolicyRule, ...]
    fingerprint: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    label_fingerprint: str = ""

    def rule_at(self, priority: int) -> PolicyRule | None:
        for rule in self.rules:
            if rule.priority == priority:
                return rule
        return None
