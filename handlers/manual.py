"""Manual commands from operators, published to the manual topic.

Schema (JSON object; unknown keys are refused so that a typo never silently
falls back to a default)::

    {"action": "block" | "unblock" | "extend",       required
     "ranges": ["45.155.205.233", "2a0e:1c80::/48"], required, 1..1000
     "actor": "alice@example.com",                    required
     "reason": "credential stuffing on /predict",     optional
     "ttl": "6h" | 21600,        block/extend: TTL from the publish time
     "expiry": "2026-12-01T00:00:00Z",                or an absolute expiry
     "permanent": true,          block only: no expiry (automation never shortens it)
     "severity": "high",         optional, default from [sources.manual]
     "force": false,             accept ranges broader than the manual minimum prefix
     "preview": false}           commit the rule with preview: true

The message attribute ``targets`` (``targets=inference,notebooks``) narrows
the targets the command applies to (default: those of ``[sources.manual]``,
all by default); a name that is not one of them is refused.

Without ttl/expiry/permanent a block lasts ``sources.manual.default_ttl``.

Break-glass: ``{"action": "preview-all", "actor": ..., "reason": ...}`` puts
every band rule in preview (logged, not enforced), and every new one while
it lasts; ``{"action": "enforce-all", ...}`` enforces them again. Neither
takes ranges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from config.settings import ConfigError, parse_duration
from handlers import common
from handlers.envelope import Message, parse_time
from handlers.runtime import Runtime, event_ref
from responder.errors import BadEvent
from responder.guards import parse_network
from responder.model import Intent, ItemError, Severity, Verb
from responder.service import Outcome, Responder

KIND = "manual"
MAX_RANGES = 1000
KEYS = {"action", "ranges", "actor", "reason", "ttl", "expiry", "permanent", "severity", "force", "preview"}


def _field(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = doc.get(key, default)
    if value is not default and (not isinstance(value, kind) or isinstance(value, bool) and bool not in _tuple(kind)):
        raise BadEvent(f"manual command: '{key}' has the wrong type ({type(value).__name__})")
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def handle(message: Message, rt: Runtime) -> Outcome:
    doc = message.json()
    if not isinstance(doc, Mapping):
        raise BadEvent("manual command: expected a JSON object")
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise BadEvent(f"manual command: unknown field '{unknown[0]}' (fields: {', '.join(sorted(KEYS))})")
    targets = _targets(message, rt)
    if isinstance(doc.get("action"), str) and doc["action"] in BREAK_GLASS:
        return _break_glass(doc, message, rt, targets)
    try:
        verb = Verb(doc.get("action")) if isinstance(doc.get("action"), str) else Verb("")
    except ValueError:
        raise BadEvent("manual command: 'action' must be block, unblock, extend, preview-all or enforce-all") from None
    ranges = _field(doc, "ranges", list)
    if not ranges or len(ranges) > MAX_RANGES:
        raise BadEvent(f"manual command: 'ranges' must list 1 to {MAX_RANGES} addresses or CIDRs")
    actor = _field(doc, "actor", str)
    if not actor or not actor.strip():
        raise BadEvent("manual command: 'actor' is required (who asks for this)")
    reason = _field(doc, "reason", str, "")
    permanent = _field(doc, "permanent", bool, False)
    force = _field(doc, "force", bool, False)
    preview = _field(doc, "preview", bool, False)
    source = rt.settings.source(KIND)
    try:
        severity = Severity.parse(_field(doc, "severity", str, source.severity))
    except ValueError as exc:
        raise BadEvent(f"manual command: 'severity': {exc}") from None
    timing = [k for k in ("ttl", "expiry", "permanent") if doc.get(k) not in (None, False)]
    if len(timing) > 1:
        raise BadEvent(f"manual command: give only one of ttl, expiry, permanent (got {', '.join(timing)})")
    if verb is Verb.UNBLOCK and timing:
        raise BadEvent("manual command: unblock takes no ttl, expiry or permanent")
    if verb is Verb.EXTEND and (permanent or not timing):
        raise BadEvent("manual command: extend needs a ttl or an expiry")
    if permanent and not source.allow_permanent:
        raise BadEvent("manual command: permanent blocks are disabled (sources.manual.allow_permanent)")
    try:
        ttl = parse_duration(doc["ttl"], "ttl") if "ttl" in doc else None
        expiry = parse_time(doc["expiry"]) if "expiry" in doc else None
    except (ConfigError, ValueError) as exc:
        raise BadEvent(f"manual command: {exc}") from None
    when = None if permanent or verb is Verb.UNBLOCK else common.expiry_for(message.publish_time, source, ttl=ttl, expiry=expiry)
    intents: list[Intent] = []
    errors: list[ItemError] = []
    with common.reading("manual command"):
        for item in ranges:
            try:
                network = parse_network(item)
            except ValueError as exc:
                errors.append(ItemError(str(item), str(exc)))
                continue
            intents.append(Intent(
                verb, network, KIND, expiry=when, permanent=permanent, severity=severity,
                action=source.action, preview=preview, reason=reason,
            ))
    if not intents:
        raise BadEvent(f"manual command: no valid range ({errors[0].error})")
    common.report_items(rt, message, KIND, errors)
    accepted, refused = common.screen(rt, message, KIND, intents, force=force)
    outcome = common.apply_screened(rt, message, KIND, accepted, refused, actor=actor.strip(), reason=reason,
                                    targets=targets)
    if verb is Verb.UNBLOCK and accepted and rt.uses_groups and rt.settings.default_target in targets:
        outcome = _lift_groups(rt, message, accepted, outcome, actor.strip(), reason)
    return outcome


def _lift_groups(rt: Runtime, message: Message, accepted: Sequence[Intent], outcome: Outcome, actor: str,
                 reason: str) -> Outcome:
    """An unblock lifts the ranges from the feeds' address groups too
    (responder.groupstore.GroupStore.lift: items inside removed, broader
    items split around them), on the default target, whose policy the
    groups' rules are in."""
    validate_only = rt.settings.band.validate_only or rt.settings.source(KIND).validate_only
    lifted = rt.group_store.lift([i.network for i in accepted], event_ref(message, KIND, actor, reason),
                                 validate_only=validate_only)
    outcome.removed += lifted.removed
    outcome.refused += lifted.refused
    outcome.ops += lifted.ops
    outcome.leased = outcome.leased or lifted.leased
    return outcome


def _targets(message: Message, rt: Runtime) -> tuple[str, ...]:
    """The targets the command applies to: the attribute ``targets`` (a
    comma-separated list of names), else all that manual commands reach."""
    allowed = common.targets_for(rt, KIND)
    text = message.attributes.get("targets")
    if text is None:
        return allowed
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise BadEvent("manual command: attribute 'targets' names no target")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise BadEvent(f"manual command: attribute 'targets': {unknown[0][:40]!r} is not a target of manual "
                       f"commands (targets: {', '.join(allowed)})")
    return tuple(n for n in allowed if n in names)


BREAK_GLASS = {"preview-all": True, "enforce-all": False}


def _break_glass(doc: Mapping[str, Any], message: Message, rt: Runtime, targets: tuple[str, ...]) -> Outcome:
    extra = sorted(set(doc) - {"action", "actor", "reason"})
    if extra:
        raise BadEvent(f"manual command: {doc['action']} takes only actor and reason (got '{extra[0]}')")
    actor = _field(doc, "actor", str)
    if not actor or not actor.strip():
        raise BadEvent("manual command: 'actor' is required (who asks for this)")
    reason = _field(doc, "reason", str, "")
    ref = event_ref(message, KIND, actor.strip(), reason)
    if not targets:
        raise BadEvent("manual command: no target takes manual commands ([sources.manual] targets)")

    def one(name: str, responder: Responder) -> Outcome:
        return responder.set_mode(BREAK_GLASS[doc["action"]], ref)

    return common.each_target(rt, message, KIND, targets, one)
