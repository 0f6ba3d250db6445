"""Builders and a tiny policy simulator shared by the core tests."""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from config.settings import BandSettings
from responder.codec import RuleMeta, decode, encode
from responder.model import Intent, Network, Severity, Verb
from responder.planner import Add, Patch, Plan, Remove, read_band
from responder.policy import PolicyRule

UTC = UTC
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TAG = "car1"
BAND = BandSettings(start=1000, end=1039, owner_tag=TAG, expiry_granularity=timedelta(minutes=15))


def net(text: str) -> Network:
    return ipaddress.ip_network(text)


def at(minutes: float) -> datetime:
    return NOW + timedelta(minutes=minutes)


def meta(expiry: datetime | None = None, severity: Severity = Severity.MEDIUM, sources: Iterable[str] = ("feed",)) -> RuleMeta:
    return RuleMeta(expiry=expiry, severity=severity, sources=frozenset(sources))


def our_rule(
    priority: int,
    ranges: Iterable[str],
    expiry: datetime | None = None,
    severity: Severity = Severity.MEDIUM,
    sources: Iterable[str] = ("feed",),
    action: str = "deny(403)",
    preview: bool = False,
    tag: str = TAG,
) -> PolicyRule:
    description = encode(tag, meta(expiry, severity, sources))
    return PolicyRule(priority=priority, action=action, ranges=tuple(ranges), description=description, preview=preview)


def foreign_rule(priority: int, ranges: Iterable[str] = ("192.0.2.0/24",), description: str = "team-x manual block") -> PolicyRule:
    return PolicyRule(priority=priority, action="deny(403)", ranges=tuple(ranges), description=description,
                      raw={"priority": priority, "description": description, "kind": "compute#securityPolicyRule"})


def intent(verb: Verb, network: str, source: str = "feed", expiry: datetime | None = None, **kw: object) -> Intent:
    return Intent(verb, net(network), source, expiry, **kw)  # type: ignore[arg-type]


def block(network: str, source: str = "feed", expiry: datetime | None = None, **kw: object) -> Intent:
    return intent(Verb.BLOCK, network, source, expiry, **kw)


def extend(network: str, source: str = "feed", expiry: datetime | None = None, **kw: object) -> Intent:
    return intent(Verb.EXTEND, network, source, expiry, **kw)


def unblock(network: str, source: str = "manual") -> Intent:
    return intent(Verb.UNBLOCK, network, source)


def by_priority(rules: Iterable[PolicyRule]) -> dict[int, PolicyRule]:
    out: dict[int, PolicyRule] = {}
    for rule in rules:
        assert rule.priority not in out, f"two rules at {rule.priority}"
        out[rule.priority] = rule
    return out


# --------------------------------------------------------------------------
# The simulator


def op_priority(op: Add | Patch | Remove) -> int:
    return op.before.priority if isinstance(op, Remove) else op.rule.priority


def apply_op(rules: dict[int, PolicyRule], op: Add | Patch | Remove) -> dict[int, PolicyRule]:
    out = dict(rules)
    if isinstance(op, Add):
        assert op.rule.priority not in out, f"addRule at taken priority {op.rule.priority}"
        out[op.rule.priority] = op.rule
    elif isinstance(op, Patch):
        assert op.rule.priority in out, f"patchRule at empty priority {op.rule.priority}"
        assert op.before.priority == op.rule.priority
        out[op.rule.priority] = op.rule
    else:
        assert op.before.priority in out, f"removeRule at empty priority {op.before.priority}"
        del out[op.before.priority]
    return out


def apply(rules: Mapping[int, PolicyRule], plan: Plan) -> dict[int, PolicyRule]:
    out = dict(rules)
    for op in plan.ops:
        out = apply_op(out, op)
    return out


# --------------------------------------------------------------------------
# Coverage: address -> latest expiry, in a canonical form


def _rank(expiry: datetime | None) -> float:
    return float("inf") if expiry is None else expiry.timestamp()


def later_or_equal(a: datetime | None, b: datetime | None) -> bool:
    return _rank(a) >= _rank(b)


def subtract(nets: Iterable[Network], cut: Network) -> list[Network]:
    out: list[Network] = []
    for n in nets:
        if n.version != cut.version or not n.overlaps(cut):  # type: ignore[arg-type]
            out.append(n)
        elif n.subnet_of(cut):  # type: ignore[arg-type]
            continue
        else:
            out.extend(n.address_exclude(cut))  # type: ignore[arg-type]
    return out


def collapse(nets: Iterable[Network]) -> tuple[Network, ...]:
    nets = list(nets)
    v4 = ipaddress.collapse_addresses(n for n in nets if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in nets if n.version == 6)
    return tuple(v4) + tuple(v6)  # type: ignore[operator]


def canonical(pairs: Iterable[tuple[Network, datetime | None]]) -> dict[datetime | None, tuple[Network, ...]]:
    """Each address with the latest expiry that covers it, grouped by expiry."""
    covered: list[Network] = []
    out: dict[datetime | None, list[Network]] = defaultdict(list)
    for network, expiry in sorted(pairs, key=lambda p: -_rank(p[1])):
        pieces = [network]
        for c in covered:
            pieces = subtract(pieces, c)
        out[expiry].extend(pieces)
        covered.append(network)
    return {e: collapse(v) for e, v in out.items() if v}


def rule_pairs(rules: Mapping[int, PolicyRule], now: datetime, band: BandSettings = BAND, enforced_only: bool = False) -> list[tuple[Network, datetime | None]]:
    """(network, expiry) of every live range of our band rules."""
    pairs = []
    for r in read_band(rules.values(), band).rules:
        if r.meta.expired(now) or (enforced_only and r.preview):
            continue
        pairs.extend((n, r.meta.expiry) for n in r.networks)
    return pairs


def entry_pairs(entries: Iterable, now: datetime, enforced_only: bool = False) -> list[tuple[Network, datetime | None]]:
    return [(e.network, e.meta.expiry) for e in entries
            if not e.meta.expired(now) and not (enforced_only and e.preview)]


def blocked(rules: Mapping[int, PolicyRule], now: datetime, band: BandSettings = BAND) -> dict[datetime | None, tuple[Network, ...]]:
    return canonical(rule_pairs(rules, now, band))


def covered(pairs: Iterable[tuple[Network, datetime | None]], network: Network, expiry: datetime | None = NOW) -> bool:
    """True when every address of ``network`` is covered until ``expiry`` or later."""
    pieces = [network]
    for n, e in pairs:
        if later_or_equal(e, expiry):
            pieces = subtract(pieces, n)
    return not pieces


def intersect(a: Iterable[Network], b: Iterable[Network]) -> tuple[Network, ...]:
    out = []
    b = list(b)
    for x in a:
        for y in b:
            if x.version == y.version and x.overlaps(y):  # type: ignore[arg-type]
                out.append(x if x.subnet_of(y) else y)  # type: ignore[arg-type]
    return collapse(out)


def addresses(pairs: Iterable[tuple[Network, datetime | None]]) -> tuple[Network, ...]:
    return collapse(n for n, _ in pairs)


def decodes(rule: PolicyRule, tag: str = TAG) -> bool:
    return decode(tag, rule.description) is not None
