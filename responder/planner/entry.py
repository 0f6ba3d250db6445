"""An entry: one blocked network and everything recorded about it, and how
two records of one network merge.

Invariant: merging never loses a claim. ``merge(a, b)`` holds each
source's claim of either, the two of one source merged (the later expiry,
permanent, None, being later than any time, and the higher severity); so
it has the later expiry, the higher severity, the union of the sources, the
most strikes and the latest strike bucket, is truncated when either is, and
is enforced unless both are preview; the
action is that of the entry with the later expiry (on a tie, the first's).
So its metadata is the same in any order, and merging an entry into the
result again changes nothing: this is how reading the band back folds the
rules that hold one network, and what every plan must agree with.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from responder.codec import RuleMeta
from responder.model import Network, Severity

MANUAL = "manual"  # the operators' source: permanent blocks, never evicted, unblocks every claim

Group = tuple[RuleMeta, str, bool]  # what the entries packed into one rule share: metadata, action, preview


class Entry(NamedTuple):
    """One blocked network and everything recorded about it (a named tuple:
    the planner makes one per indicator, and a tuple is made in a third of
    a frozen dataclass's time; change one with ``_replace``)."""

    network: Network
    meta: RuleMeta
    action: str = "deny(403)"
    preview: bool = False

    @property
    def group(self) -> Group:
        return (self.meta, self.action, self.preview)

    @property
    def manual(self) -> bool:
        return MANUAL in self.meta.sources


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later expiry; None (permanent) is later than any time."""
    if a is None or b is None:
        return None
    return max(a, b)


def latest(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later bucket; None (not known) is earlier than any time."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def merge(a: Entry, b: Entry) -> Entry:
    """One entry for ``a``'s network holding both records (see the invariant)."""
    am, bm = a.meta, b.meta
    meta = RuleMeta(
        expiry=later(am.expiry, bm.expiry),
        severity=max(am.severity, bm.severity),
        sources=am.sources | bm.sources,
        truncated=am.truncated or bm.truncated,
        strikes=max(am.strikes, bm.strikes),
        struck=latest(am.struck, bm.struck),
        claims=() if am.expiry == bm.expiry and am.severity == bm.severity and not am.claims and not bm.claims
        else merge_claims(am, bm),
    )
    # The entry with the later expiry decides the action (on a tie the first,
    # so that reading the band back gives the same answer); enforced wins.
    newer = a if later(a.meta.expiry, b.meta.expiry) == a.meta.expiry else b
    return Entry(a.network, meta, newer.action, a.preview and b.preview)


def merge_claims(a: RuleMeta, b: RuleMeta) -> tuple[tuple[str, datetime | None, Severity], ...]:
    """Each source's claim in either record, the two merged: the later
    expiry and the higher severity."""
    mine, theirs = a.claim_map(), b.claim_map()
    out = []
    for source in mine.keys() | theirs.keys():
        x, y = mine.get(source), theirs.get(source)
        if x is None or y is None:
            e, v = x or y  # type: ignore[misc]
        else:
            e, v = later(x[0], y[0]), max(x[1], y[1])
        out.append((source, e, v))
    return tuple(out)


def weaker(before: Entry, after: Entry) -> bool:
    """True when ``after`` drops something ``before`` had: a source claim,
    expiry, severity, enforcement or action (only a lease holder can rewrite
    a rule to take it away; an added rule would merge with the old one)."""
    return merge(before, after) != after
