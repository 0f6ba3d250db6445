"""Rebuilding the band from the audit trail (``cli.py restore``).

Pure: records in, claims and intents out; no clock, no I/O. The records are
those the band service writes (``responder.service``): ``added`` and
``extended`` name ranges with the metadata their entry has after the change
(expiry, sources, severity, action, preview, the repeat-offender record
``strikes``/``struck`` when there is one, and ``claims``: the sources whose
own claim ends sooner or weighs less than the entry's); ``removed``, ``expired`` and
``evicted`` name the ranges that left the band. A ``removed`` record with
``split`` names broader ranges that were split around its ranges (an unblock
inside a broader block): the pieces around the hole stay.

Replaying them in time order gives what the band held, entry by entry. The
records of one event are applied removals first, so that both the current
records and those written before ``split`` existed (the pieces recorded as
``extended``, the broader range as ``removed``) read right. Records of dry
runs (``outcome: validate_only``) changed nothing and are skipped; so are
``wiped`` records: a wipe is not an unblock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from responder.model import Escalation, Intent, Network, Severity, Verb, minus

SETS = ("added", "extended")
LIFTS = ("removed", "expired", "evicted")
MANUAL = "manual"


@dataclass(frozen=True)
class Claim:
    """One entry of the band as the trail last recorded it."""

    network: Network
    expiry: datetime | None  # None: permanent
    sources: tuple[str, ...]
    severity: Severity
    action: str
    preview: bool
    strikes: int | None = None  # the repeat-offender record, when the entry has one
    struck: datetime | None = None
    time: str | None = None  # when the record that set it was written
    # sources whose own claim is not the entry's: source -> (expiry, severity)
    own: tuple[tuple[str, datetime | None, Severity], ...] = ()


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str) or text in ("", "permanent"):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _networks(value: Any) -> list[Network]:
    out: list[Network] = []
    for text in value if isinstance(value, list) else []:
        try:
            out.append(ipaddress.ip_network(str(text), strict=False))
        except ValueError:
            continue
    return out


def _claim(net: Network, r: Mapping[str, Any]) -> Claim | None:
    expiry = _time(r.get("expiry"))
    if expiry is None and r.get("expiry") != "permanent":
        return None
    try:
        severity = Severity.parse(str(r.get("severity") or "medium"))
    except ValueError:
        severity = Severity.MEDIUM
    strikes = r.get("strikes")
    struck = _time(r.get("struck"))
    return Claim(
        net, expiry, tuple(sorted(str(s) for s in r.get("sources") or [r.get("source") or MANUAL])), severity,
        str(r.get("action") or "deny(403)"), bool(r.get("preview")),
        int(strikes) if isinstance(strikes, (int, float)) and struck is not None else None, struck,
        r.get("time") if isinstance(r.get("time"), str) else None, _own(r.get("claims"), severity),
    )


def _own(value: Any, severity: Severity) -> tuple[tuple[str, datetime | None, Severity], ...]:
    """The recorded per-source claims (``claims``: source -> expiry, severity)."""
    out = []
    for source, claim in (value.items() if isinstance(value, dict) else ()):
        if not isinstance(claim, dict):
            continue
        expiry = _time(claim.get("expiry"))
        if expiry is None and claim.get("expiry") != "permanent":
            continue
        try:
            own = Severity.parse(str(claim.get("severity") or severity.name))
        except ValueError:
            own = severity
        out.append((str(source), expiry, own))
    return tuple(sorted(out))


def _lift(state: dict[Network, Claim], r: Mapping[str, Any]) -> None:
    ranges = _networks(r.get("ranges"))
    for net in ranges:
        state.pop(net, None)
    for broad in _networks(r.get("split")):
        claim = state.pop(broad, None)
        if claim is None:
            continue
        inside = [n for n in ranges if n.version == broad.version and n.subnet_of(broad)]  # type: ignore[arg-type]
        for piece in minus(broad, inside):
            state.setdefault(piece, replace(claim, network=piece))


def _set(state: dict[Network, Claim], r: Mapping[str, Any]) -> None:
    for net in _networks(r.get("ranges")):
        claim = _claim(net, r)
        if claim is not None:
            state[net] = claim


def replay(records: Iterable[Mapping[str, Any]], since: datetime | None = None) -> dict[Network, Claim]:
    """What the band held after the records (those at or after ``since``),
    one claim per recorded range, expired ones included."""
    ordered = sorted(
        (r for r in records if r.get("change") in SETS + LIFTS and r.get("outcome") != "validate_only"),
        key=lambda r: _time(r.get("time")) or datetime.min.replace(tzinfo=UTC),
    )  # stable: records of one second keep the order they were written in
    if since is not None:
        ordered = [r for r in ordered if (t := _time(r.get("time"))) is None or t >= since]
    state: dict[Network, Claim] = {}
    i = 0
    while i < len(ordered):  # one event's records: removals first
        j = i + 1
        mid = ordered[i].get("message_id")
        while mid and j < len(ordered) and ordered[j].get("message_id") == mid:
            j += 1
        event = ordered[i:j]
        for r in event:
            if r["change"] in LIFTS:
                _lift(state, r)
        for r in event:
            if r["change"] in SETS:
                _set(state, r)
        i = j
    return state


def live(claims: Mapping[Network, Claim], now: datetime) -> list[Claim]:
    """The claims still unexpired at ``now``, in address order."""
    kept = [c for c in claims.values() if c.expiry is None or c.expiry > now]
    return sorted(kept, key=lambda c: (c.network.version, int(c.network.network_address), c.network.prefixlen))


def intents(claims: Iterable[Claim], now: datetime) -> list[Intent]:
    """Block intents that give each claim's entry back as recorded: one per
    source, with its own expiry and severity (the planner merges them into
    one entry), with the recorded strikes replayed. In a permanent entry a
    source recorded with no claim of its own (written before per-source
    claims) is claimed for a day: merged with the manual block, the entry
    stays permanent."""
    out: list[Intent] = []
    for c in claims:
        escalation = None
        if c.strikes is not None and c.struck is not None and c.expiry is not None:
            ttl = max(c.expiry - c.struck, timedelta(seconds=1))
            escalation = Escalation(seen=c.struck, ttl=ttl, factor=1.0, cap=ttl, strikes=c.strikes)
        sources = sorted(c.sources, key=lambda s: s != MANUAL)  # manual first: it may be permanent
        own = {s: (e, v) for s, e, v in c.own}
        for source in sources:
            until, severity = own.get(source, (c.expiry, c.severity))
            permanent = until is None and source == MANUAL
            expiry = until if until is not None else (None if permanent else now + timedelta(days=1))
            out.append(Intent(
                Verb.BLOCK, c.network, source, expiry=expiry, permanent=permanent, severity=severity,
                action=c.action, preview=c.preview, escalation=escalation if expiry == c.expiry else None,
            ))
    return out
