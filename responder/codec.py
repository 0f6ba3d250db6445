"""The band rule description: where the policy itself stores the band's state.

Every rule the responder writes carries, in its description (at most 64
characters), the owner tag and the metadata shared by all its ranges::

    car1 x=202611291830 v=h s=manual+spamhaus
    |    |              |   `- sources, sorted, '+'-joined ('*' = more not kept)
    |    |              `----- severity: l, m, h, c
    |    `-------------------- expiry, UTC, YYYYMMDDhhmm; 'never' = permanent
    `------------------------- owner tag (band.owner_tag)

Entries blocked by a source kind with escalation on also carry their
repeat-offender record, before the sources::

    car1 x=202611300630 v=m n=1-720 s=cloud-armor-waf
                            |   `- the last sighting's publish-time bucket,
                            |      in minutes before the expiry
                            `----- strikes so far (0: sighted once)

An absent ``n`` decodes as 0 strikes and no bucket, so rules written before
escalation existed still read; ``n=<strikes>`` alone (no bucket) reads too.
A permanent rule never carries it.

Each source keeps its own claim (expiry and severity): ``x`` is the latest
claim's expiry and ``v`` the highest claim's severity, and a source whose
claim differs says how::

    car1 x=202611300630 v=m s=fa:480+fb:l+manual@202612010000
         fa:480    fa's claim ends 480 minutes before x (severity v)
         fb:l      fb's ends at x, severity low
         fa:480l   both; in a permanent rule (x=never) a finite claim
                   gives its own expiry: manual@202612010000[c]

A source written bare claims until ``x`` at ``v``, so rules written before
per-source claims read as before. A truncated record (``*``) may hide
claims: none ends after ``x`` or weighs more than ``v``.

A rule in the band whose description does not start with the owner tag and
decode cleanly is *foreign*: reported, never changed. Unknown ``key=value``
fields are ignored on decode so that a newer writer's rules still read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from responder.model import Severity

MAX_DESCRIPTION = 64
_TIME_FORMAT = "%Y%m%d%H%M"
PERMANENT = "never"
TRUNCATED = "*"
MANUAL = "manual"  # the source that must survive truncation: it protects a block from eviction


@dataclass(frozen=True)
class RuleMeta:
    """Metadata shared by every range of one band rule."""

    expiry: datetime | None  # None: permanent
    severity: Severity
    sources: frozenset[str]
    truncated: bool = False  # more sources existed than the description holds
    # Repeat offenders (escalating sources only): strikes counted so far, and
    # the publish-time bucket of the last sighting that set them (None: not
    # known). A permanent entry keeps neither; the bucket is never after the
    # expiry (whole minutes, as the description holds it).
    strikes: int = 0
    struck: datetime | None = None
    # The claims of the sources whose own expiry or severity is not the
    # entry's (every other source claims until ``expiry`` at ``severity``):
    # (source, expiry, severity), sorted; normalized on construction.
    claims: tuple[tuple[str, datetime | None, Severity], ...] = ()

    def __post_init__(self) -> None:
        if self.expiry is None:
            if self.strikes or self.struck is not None:
                object.__setattr__(self, "strikes", 0)
                object.__setattr__(self, "struck", None)
        elif self.struck is not None and self.struck > self.expiry:
            object.__setattr__(self, "struck", self.expiry)
        if self.claims:
            object.__setattr__(self, "claims", self._normal(self.claims))

    def _normal(self, claims: tuple[tuple[str, datetime | None, Severity], ...]) -> tuple[tuple[str, datetime | None, Severity], ...]:
        """Claims of known sources only, none later or heavier than the
        entry, none equal to it; sorted."""
        out = []
        for source, expiry, severity in claims:
            if source not in self.sources:
                continue
            if self.expiry is not None and (expiry is None or expiry > self.expiry):
                expiry = self.expiry
            severity = min(severity, self.severity)
            if expiry != self.expiry or severity != self.severity:
                out.append((source, expiry, severity))
        return tuple(sorted(out))

    def expired(self, now: datetime) -> bool:
        return self.expiry is not None and self.expiry <= now

    def claim(self, source: str) -> tuple[datetime | None, Severity] | None:
        """``source``'s own claim (expiry, severity), or None when the
        record does not show the source."""
        if source not in self.sources:
            return None
        for name, expiry, severity in self.claims:
            if name == source:
                return expiry, severity
        return self.expiry, self.severity

    def claim_map(self) -> dict[str, tuple[datetime | None, Severity]]:
        """Every shown source's own claim."""
        own = {name: (expiry, severity) for name, expiry, severity in self.claims}
        return {s: own.get(s, (self.expiry, self.severity)) for s in self.sources}

    def live(self, now: datetime) -> RuleMeta | None:
        """The record without the claims that ended by ``now``; None when no
        claim is left (the entry has expired)."""
        if self.expired(now):
            return None
        if not any(expiry is not None and expiry <= now for _, expiry, _ in self.claims):
            return self
        kept = {s: c for s, c in self.claim_map().items() if c[0] is None or c[0] > now}
        return with_claims(self, kept)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return None if a is None or b is None else max(a, b)


def with_claims(meta: RuleMeta, claims: dict[str, tuple[datetime | None, Severity]]) -> RuleMeta | None:
    """``meta`` holding exactly ``claims`` (its strike record kept); None
    when nothing is left. A truncated record never ends sooner or weighs
    less than it did: the claims it hides may be the latest or heaviest."""
    if not claims and not meta.truncated:
        return None
    first = not meta.truncated
    expiry, severity = meta.expiry, meta.severity
    for e, v in claims.values():
        expiry, severity = (e, v) if first else (_later(expiry, e), max(severity, v))
        first = False
    return RuleMeta(expiry, severity, frozenset(claims), meta.truncated, meta.strikes, meta.struck,
                    tuple((s, e, v) for s, (e, v) in claims.items()))


def encode(tag: str, meta: RuleMeta) -> str:
    """The description for a rule; sources that do not fit are dropped
    (kept: manual first, then in sorted order; the rest marked ``*``) so
    the result is at most 64 characters."""
    head, names, own, text = _layout(tag, meta)
    if len(text) > MAX_DESCRIPTION:
        kept: list[str] = []
        # Manual first, then sorted; a source that does not fit is skipped,
        # so any set between the kept sources and all of them keeps the same ones.
        for name in sorted(names, key=lambda n: n != MANUAL):
            token = name + own.get(name, "")
            if len(head + "+".join([*kept, token, TRUNCATED])) <= MAX_DESCRIPTION:
                kept.append(token)
        text = head + "+".join([*kept, TRUNCATED])
    assert len(text) <= MAX_DESCRIPTION, text
    return text


def _layout(tag: str, meta: RuleMeta) -> tuple[str, list[str], dict[str, str], str]:
    """(head, sorted names, each claim's text, the whole text untruncated)."""
    expiry = PERMANENT if meta.expiry is None else meta.expiry.astimezone(UTC).strftime(_TIME_FORMAT)
    head = f"{tag} x={expiry} v={meta.severity.code} {_strikes(meta)}s="
    names = sorted(meta.sources)
    own = {name: _claim_text(meta, e, v) for name, e, v in meta.claims}
    text = head + "+".join([n + own.get(n, "") for n in names] + ([TRUNCATED] if meta.truncated else []))
    return head, names, own, text


def fits(tag: str, meta: RuleMeta) -> bool:
    """True when one description holds ``meta`` whole."""
    return len(_layout(tag, meta)[3]) <= MAX_DESCRIPTION


def parts(tag: str, meta: RuleMeta) -> tuple[RuleMeta, ...]:
    """``meta`` as records that each fit one description and merge back
    into it (each source's claim in one of them): ``(meta,)`` when it fits.

    The first record holds the latest claim and the strike record; then
    the claims in order of expiry, latest first, each record filled while
    it fits. A truncated record (written before per-source claims) stays
    one record, as it reads back. A claim too long to fit even
    alone is truncated away (``representable``). The same metadata always
    gives the same records, so a band written this way plans nothing new."""
    if meta.truncated:  # a record written truncated (before per-source claims) stays one record
        return (representable(tag, meta),)
    if fits(tag, meta):
        return (meta,)
    own = meta.claim_map()
    order = sorted(own, key=lambda s: (_never_last(own[s][0]), s), reverse=True)
    groups: list[list[str]] = [[]]
    for name in order:
        trial = _part(meta, [*groups[-1], name], first=len(groups) == 1)
        if groups[-1] and not fits(tag, trial):
            groups.append([name])
        else:
            groups[-1].append(name)
    out = [_part(meta, names, first=i == 0) for i, names in enumerate(groups)]
    return tuple(representable(tag, m) for m in out)


def _never_last(expiry: datetime | None) -> float:
    return float("inf") if expiry is None else expiry.timestamp()


def _part(meta: RuleMeta, names: list[str], *, first: bool) -> RuleMeta:
    own = meta.claim_map()
    claims = tuple((s, *own[s]) for s in names)
    if first and (meta.truncated or not names):
        expiry, severity = meta.expiry, meta.severity
    else:
        expiry = meta.expiry if first else own[names[0]][0]  # the latest (names are in that order)
        severity = max(own[s][1] for s in names)
    return RuleMeta(expiry, severity, frozenset(names), meta.truncated and first,
                    meta.strikes if first else 0, meta.struck if first else None, claims)


def _claim_text(meta: RuleMeta, expiry: datetime | None, severity: Severity) -> str:
    """How a source's own claim differs from the record's (see the module
    docstring): ``:<minutes before x>``, ``@<its expiry>`` in a permanent
    record, then its severity code when that differs."""
    code = severity.code if severity != meta.severity else ""
    if expiry == meta.expiry:
        return ":" + code
    if meta.expiry is None:
        assert expiry is not None
        return "@" + expiry.astimezone(UTC).strftime(_TIME_FORMAT) + code
    assert expiry is not None
    minutes = int((_minute(meta.expiry) - _minute(expiry)).total_seconds()) // 60
    return f":{minutes}{code}"


def _minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def representable(tag: str, meta: RuleMeta) -> RuleMeta:
    """``meta`` as a rule's description gives it back: only the sources that
    fit, and the truncation mark. A plan must want what the band can hold,
    or it rewrites the same rule on every run."""
    back = decode(tag, encode(tag, meta))
    assert back is not None
    if back.sources == meta.sources and back.truncated == meta.truncated:
        return meta
    return replace(meta, sources=back.sources, truncated=back.truncated)


def _strikes(meta: RuleMeta) -> str:
    """The ``n=`` field with its trailing space, or nothing."""
    if meta.expiry is None or (meta.strikes == 0 and meta.struck is None):
        return ""
    if meta.struck is None:
        return f"n={meta.strikes} "
    expiry = meta.expiry.astimezone(UTC).replace(second=0, microsecond=0)
    before = max(0, int((expiry - meta.struck).total_seconds()) // 60)
    return f"n={meta.strikes}-{before} "


def _decode_strikes(raw: str | None, expiry: datetime | None) -> tuple[int, datetime | None] | None:
    """(strikes, bucket) from an ``n=`` value; None when malformed."""
    if raw is None:
        return 0, None
    count, sep, before = raw.partition("-")
    if not count.isdigit() or len(count) > 9 or (sep and (not before.isdigit() or len(before) > 9)):
        return None
    if not sep or expiry is None:
        return int(count), None
    return int(count), expiry - timedelta(minutes=int(before))


def decode(tag: str, description: str) -> RuleMeta | None:
    """The metadata of a band rule, or None when the rule is not ours."""
    words = description.split(" ")
    if not words or words[0] != tag:
        return None
    fields: dict[str, str] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or key in fields:
            return None
        fields[key] = value
    try:
        raw_expiry, raw_severity, raw_sources = fields["x"], fields["v"], fields["s"]
        if raw_expiry == PERMANENT:
            expiry = None
        else:
            if len(raw_expiry) != 12 or not raw_expiry.isdigit():
                return None
            expiry = datetime.strptime(raw_expiry, _TIME_FORMAT).replace(tzinfo=UTC)
        severity = Severity.from_code(raw_severity)
        strikes = _decode_strikes(fields.get("n"), expiry)
    except (KeyError, ValueError, OverflowError):
        return None
    if strikes is None:
        return None
    tokens = [n for n in raw_sources.split("+") if n]
    truncated = TRUNCATED in tokens
    names: list[str] = []
    claims: list[tuple[str, datetime | None, Severity]] = []
    for token in tokens:
        if token == TRUNCATED:
            continue
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        name, mark, number, code = match.groups()
        names.append(name)
        if not mark:
            continue
        try:
            own = Severity.from_code(code) if code else severity
            if mark == "@":
                if expiry is not None or len(number) != 12:
                    return None
                until: datetime | None = datetime.strptime(number, _TIME_FORMAT).replace(tzinfo=UTC)
            elif number:
                if expiry is None or len(number) > 9:
                    return None
                until = expiry - timedelta(minutes=int(number))
            else:
                until = expiry
        except (ValueError, OverflowError):
            return None
        claims.append((name, until, own))
    if len(set(names)) != len(names):
        return None
    return RuleMeta(expiry=expiry, severity=severity, sources=frozenset(names), truncated=truncated,
                    strikes=strikes[0], struck=strikes[1], claims=tuple(claims))


# A source and how its own claim differs: ``name``, ``name:[minutes][c]``, ``name@YYYYMMDDhhmm[c]``.
_TOKEN = re.compile(r"([^:@]+)(?:([:@])(\d{0,12})([a-z]?))?")


# --------------------------------------------------------------------------
# Group rules: one band rule per (feed, IP version) stored in an address group
#
#     car1 g=firehol-l1:4 x=202612051830
#     |    |            | `- the group's expiry: last good snapshot + TTL (UTC, to the minute)
#     |    |            `--- IP version of the group the rule references
#     |    `---------------- the feed
#     `--------------------- owner tag
#
# The rule matches ``evaluateAddressGroup('NAME', origin.ip)``; the group's
# name is in the expression, not here. At most 4 + 3 + 16 + 2 + 15 = 40 characters.


@dataclass(frozen=True)
class GroupMeta:
    """What a group rule's description says."""

    feed: str
    version: int  # 4 or 6
    expiry: datetime

    def expired(self, now: datetime) -> bool:
        return self.expiry <= now


def encode_group(tag: str, meta: GroupMeta) -> str:
    text = f"{tag} g={meta.feed}:{meta.version} x={meta.expiry.astimezone(UTC).strftime(_TIME_FORMAT)}"
    assert len(text) <= MAX_DESCRIPTION, text
    return text


def decode_group(tag: str, description: str) -> GroupMeta | None:
    """The metadata of a group rule, or None when the description is not one of ours."""
    words = description.split(" ")
    if len(words) != 3 or words[0] != tag or not words[1].startswith("g=") or not words[2].startswith("x="):
        return None
    feed, sep, version = words[1][2:].rpartition(":")
    raw = words[2][2:]
    if not sep or not feed or version not in ("4", "6") or len(raw) != 12 or not raw.isdigit():
        return None
    try:
        expiry = datetime.strptime(raw, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return GroupMeta(feed=feed, version=int(version), expiry=expiry)
