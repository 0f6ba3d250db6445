"""An entry: one blocked network and everything recorded about it, and how
two records of one network merge.

Invariant: merging never loses a claim. ``merge(a, b)`` has the later
expiry (permanent, None, is later than any time), the higher severity, the
union of the sources, the most strikes and the latest strike bucket, is
truncated when either is, and is enforced unless both are preview; the
action is that of the entry with the later expiry (on a tie, the first's).
So its metadata is the same in any order, and merging an entry into the
result again changes nothing: this is how reading the band back folds the
rules that hold one network, and what every plan must agree with.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from responder.codec import RuleMeta
from responder.model import Network

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
    meta = RuleMeta(
        expiry=later(a.meta.expiry, b.meta.expiry),
        severity=max(a.meta.severity, b.meta.severity),
        sources=a.meta.sources | b.meta.sources,
        truncated=a.meta.truncated or b.meta.truncated,
        strikes=max(a.meta.strikes, b.meta.strikes),
        struck=latest(a.meta.struck, b.meta.struck),
    )
    # The entry with the later expiry decides the action (on a tie the first,
    # so that reading the band back gives the same answer); enforced wins.
    newer = a if later(a.meta.expiry, b.meta.expiry) == a.meta.expiry else b
    return Entry(a.network, meta, newer.action, a.preview and b.preview)


def weaker(before: Entry, after: Entry) -> bool:
    """True when ``after`` drops something ``before`` had: a source claim,
    expiry, severity, enforcement or action (only a lease holder can rewrite
    a rule to take it away; an added rule would merge with the old one)."""
    return merge(before, after) != after
