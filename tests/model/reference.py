"""A reference model of the band's meaning, written from README.md (not from
the planner): deliberately simple, with no index, no packing and no rules.

The state is one entry per blocked network ("Get, plan, apply": "the same
range from two sources is one entry that remembers each source's claim (its
own expiry and severity)"): a claim per source, (expiry, severity), expiry
None being permanent, plus one repeat-offender record (strikes, publish-time
bucket). What an address means is the union of the live claims of the
entries that cover it ("The policy is the state store", "Each source keeps
its own claim"; "Concurrency": "the band's state is the union of its
rules"): blocked if any; until the latest expiry (None if one is
permanent); the highest severity; those claims' sources. ``answer`` keeps
it per source (each source's latest expiry and highest severity over the
entries that cover the address), which says all four.

Rules, each from the README section named beside it:

* block ("Get, plan, apply"): an expiry is rounded up to the granularity
  ("The policy is the state store"); a re-sighting extends the source's
  claim to the later expiry and the higher severity, never less; only
  manual blocks can be permanent. A source has one claim on an address
  ("Each source keeps its own claim"), so a block also merges its claim
  into the source's claims on narrower entries inside the network. A network whose broader entry already
  holds the source's claim at least as long and as heavy (and a strike
  record at least as far) changes nothing; otherwise its own entry takes the
  claim, or a new entry holds what the broader ones claim of it plus the
  claim (one entry per network holds the whole meaning of that network).
* extend (manual schema): every blocked address of the range is blocked by
  the extender at least until the new expiry: its claim there (an entry's
  own, else a broader entry's) moves later, as heavy as it was, else a new
  claim at the lowest severity; other sources' claims are unchanged; never
  shortens; a range nothing blocks is refused.
* unblock (manual schema): a manual unblock lifts every claim on the range
  from every source, a broader entry split around it; a feed's withdrawal
  (snapshot, revoked) lifts only that feed's claims, the same way: the
  other sources keep their own expiry and severity.
* snapshot feeds ("Snapshot feeds"): the entries holding the feed's claim
  that the new list no longer covers lose it, then the list is blocked.
* guards ("Guards"): a block or extend overlapping a special-purpose range
  or the allowlist, or broader than the kind's minimum prefix, is refused
  whole; single IPv6 addresses of detectors and alerts widen to /64;
  unblocks always pass.
* escalation ("Repeat offenders' TTL escalates"): the strike rule reads the
  entry's record (its own, else its supernets' folded); the record stays
  with the entry, never later than its latest expiry; a permanent entry
  keeps none.
* expiry: a claim whose expiry has passed is gone, before anything else; an
  entry with no live claim is gone; cleanup drops them.
* capacity ("The rule quota full", Runbook): the model does not pack, so it
  cannot know how many rules the band needs; it is told what was evicted
  and checks the order (never manual; lowest severity, then soonest expiry,
  of an entry's live claims, first). A claim that a broader entry already
  holds for the same source changes no address's meaning, so the band may
  keep it in an entry or not (a compaction drops copies; two writers may
  add both at once; the model's own order of blocks decides whether it made
  one), and packing may aggregate narrower entries into a broader one:
  eviction is compared with such claims merged in (``evict``,
  ``eviction_view``).

The model knows nothing of descriptions (an entry that does not fit one is
written as several records, "The policy is the state store").
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MANUAL = "manual"
LOWEST = 1  # the lowest severity (low)


class Claim(NamedTuple):
    """One source's claim: until ``expiry`` (None: permanent), this heavy."""

    expiry: datetime | None
    severity: int

    def live(self, now: datetime) -> bool:
        return self.expiry is None or self.expiry > now


Claims = Mapping[str, Claim]


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    return None if a is None or b is None else max(a, b)


def latest_bucket(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def stronger(a: Claim, b: Claim) -> Claim:
    """Two claims of one source merged: the later expiry, the higher severity."""
    return Claim(later(a.expiry, b.expiry), max(a.severity, b.severity))


def holds(have: Claim, want: Claim) -> bool:
    """``have`` lasts at least as long as ``want`` and weighs at least as much."""
    return stronger(have, want) == have


def merge_claims(a: Claims, b: Claims) -> dict[str, Claim]:
    """Per source, the stronger of the two claims."""
    out = dict(a)
    for s, c in b.items():
        out[s] = stronger(out[s], c) if s in out else c
    return out


def until(claims: Claims) -> datetime | None:
    """The latest expiry of some claims (None: one is permanent)."""
    return None if any(c.expiry is None for c in claims.values()) else max(c.expiry for c in claims.values())  # type: ignore[type-var]


def rank(claims: Claims) -> tuple[int, float]:
    """Eviction order: lowest highest-severity first, then soonest latest expiry."""
    last = until(claims)
    return (max(c.severity for c in claims.values()), math.inf if last is None else last.timestamp())


class _Claimed:
    """What some live claims say together: until the latest expiry, at the
    highest severity, from their sources."""

    claims: Claims

    @property
    def expiry(self) -> datetime | None:
        return until(self.claims)

    @property
    def severity(self) -> int:
        return max(c.severity for c in self.claims.values())

    @property
    def sources(self) -> frozenset[str]:
        return frozenset(self.claims)


@dataclass(frozen=True)
class Entry(_Claimed):
    """One blocked network: a claim per source and one strike record.
    Never mutated: changes build a new one (``normal`` keeps the record's
    rules: none on a permanent entry, never later than the latest expiry)."""

    claims: dict[str, Claim]
    strikes: int = 0
    bucket: datetime | None = None  # publish-time bucket of the last escalating sighting


    def with_claims(self, claims: Claims) -> Entry | None:
        """This entry holding ``claims`` (its record kept, clamped); None when empty."""
        if not claims:
            return None
        expiry = until(claims)
        if expiry is None:
            return Entry(dict(claims))
        bucket = self.bucket if self.bucket is None or self.bucket <= expiry else expiry
        return Entry(dict(claims), self.strikes, bucket)

    def live(self, now: datetime) -> Entry | None:
        """Without the claims that ended by ``now``; None when none is left."""
        if all(c.live(now) for c in self.claims.values()):
            return self
        return self.with_claims({s: c for s, c in self.claims.items() if c.live(now)})

    def without(self, source: str) -> Entry | None:
        """A withdrawal: a manual one takes every claim, another source only its own."""
        if source == MANUAL:
            return None
        if source not in self.claims:
            return self
        return self.with_claims({s: c for s, c in self.claims.items() if s != source})


def normal(claims: Claims, strikes: int, bucket: datetime | None) -> Entry:
    e = Entry(dict(claims), strikes, bucket)
    out = e.with_claims(claims)
    assert out is not None
    return out


def merge(a: Entry, b: Entry) -> Entry:
    """Two entries of one network: claims merged per source; the most
    strikes and the latest bucket."""
    return normal(merge_claims(a.claims, b.claims), max(a.strikes, b.strikes), latest_bucket(a.bucket, b.bucket))


def fold(entries: Iterable[Entry]) -> Entry | None:
    out: Entry | None = None
    for e in entries:
        out = e if out is None else merge(out, e)
    return out


def record_holds(have: Entry, want: Entry) -> bool:
    """``have``'s strike record is at least as far as ``want``'s; a permanent
    entry keeps none and never strikes, so any record is moot there."""
    return have.expiry is None or (have.strikes >= want.strikes and latest_bucket(have.bucket, want.bucket) == have.bucket)


@dataclass(frozen=True)
class Answer(_Claimed):
    """What the band means for one address: each source's live claim
    (merged over the entries that cover the address)."""

    claims: dict[str, Claim]


    def __str__(self) -> str:
        def when(e: datetime | None) -> str:
            return "never" if e is None else e.strftime("%d %H:%M")

        each = ", ".join(f"{s} {when(c.expiry)} v{c.severity}" for s, c in sorted(self.claims.items()))
        return f"until {when(self.expiry)} v{self.severity} [{each}]"


def round_up(moment: datetime, step: timedelta) -> datetime:
    s = int(step.total_seconds())
    return datetime.fromtimestamp(math.ceil(moment.timestamp() / s) * s, tz=UTC)


def round_down(moment: datetime, step: timedelta) -> datetime:
    s = int(step.total_seconds())
    return datetime.fromtimestamp(math.floor(moment.timestamp() / s) * s, tz=UTC)


@dataclass(frozen=True)
class Kind:
    """What the configuration says of one kind of source."""

    min_prefix_v4: int
    min_prefix_v6: int
    widen_v6_to: int | None = None
    escalate: float = 1.0
    max_ttl: timedelta = timedelta(days=365)


def _within(n: Network, net: Network) -> bool:
    return n.version == net.version and n.subnet_of(net)  # type: ignore[arg-type]


def _strictly_covers(n: Network, net: Network) -> bool:
    return n != net and _within(net, n)


@dataclass
class Reference:
    granularity: timedelta
    kinds: dict[str, Kind]
    allowlist: tuple[Network, ...]
    special: tuple[Network, ...]
    entries: dict[Network, Entry] = field(default_factory=dict)

    # -- reading -------------------------------------------------------------

    def live(self, now: datetime) -> dict[Network, Entry]:
        """The entries with their live claims only."""
        out = {}
        for n, e in self.entries.items():
            if (kept := e.live(now)) is not None:
                out[n] = kept
        return out

    def answer(self, address: Address, now: datetime) -> Answer | None:
        """What the band means for one address: None (not blocked), or the
        live claims of the entries that cover it, merged per source."""
        claims: dict[str, Claim] = {}
        for n, e in self.live(now).items():
            if n.version == address.version and address in n:
                claims = merge_claims(claims, e.claims)
        return Answer(claims) if claims else None

    def _covers(self, net: Network) -> list[Entry]:
        """Entries of strict supernets of ``net`` (call after ``_forget_expired``)."""
        return [e for n, e in self.entries.items() if _strictly_covers(n, net)]

    def _inside(self, net: Network) -> list[Network]:
        """Networks with an entry inside ``net`` (``net`` included)."""
        return [n for n in self.entries if _within(n, net)]

    def _put(self, net: Network, e: Entry) -> None:
        """Adds ``e``; on an existing entry of that network, merges."""
        self.entries[net] = merge(self.entries[net], e) if net in self.entries else e

    # -- guards --------------------------------------------------------------

    def screen(self, net: Network, kind: str) -> Network | None:
        """The network a block or extend of this kind may touch (widened), or None: refused."""
        k = self.kinds[kind]
        if net.version == 6 and k.widen_v6_to is not None and net.prefixlen > k.widen_v6_to:
            net = net.supernet(new_prefix=k.widen_v6_to)
        if any(s.version == net.version and s.overlaps(net) for s in self.special + self.allowlist):
            return None
        if net.prefixlen < (k.min_prefix_v4 if net.version == 4 else k.min_prefix_v6):
            return None
        return net

    # -- changes -------------------------------------------------------------

    def _forget_expired(self, now: datetime) -> None:
        self.entries = self.live(now)

    def block(self, net: Network, kind: str, source: str, now: datetime, *, expiry: datetime | None,
              severity: int, seen: datetime | None = None, ttl: timedelta | None = None) -> bool:
        """A block; ``expiry`` None is permanent (manual only). ``seen`` and
        ``ttl`` (publish time, base TTL) for kinds that escalate. False: refused."""
        self._forget_expired(now)
        if expiry is None and source != MANUAL:
            return False
        if expiry is not None:
            expiry = round_up(expiry, self.granularity)
            if expiry <= now:
                return False
        claim = Claim(expiry, severity)
        strikes, bucket = 0, None
        k = self.kinds[kind]
        if k.escalate > 1 and expiry is not None and seen is not None and ttl is not None and ttl > timedelta(0):
            strikes, bucket, expiry = self._escalate(net, seen, ttl, k, expiry)
            claim = Claim(expiry, severity)
        want = normal({source: claim}, strikes, bucket)
        covers = self._covers(net)
        if any(source in c.claims and holds(c.claims[source], claim) and record_holds(c, want) for c in covers):
            return True
        if net in self.entries:
            self.entries[net] = merge(self.entries[net], want)
        else:
            self.entries[net] = merge(fold(covers) or want, want)
        # One claim per source and address: the source's claims inside the
        # network take this one in too.
        mine = self.entries[net].claims[source]
        for n in self._inside(net):
            e = self.entries[n]
            if n != net and source in e.claims:
                kept = e.with_claims({**e.claims, source: stronger(e.claims[source], mine)})
                assert kept is not None
                self.entries[n] = kept
        return True

    def _escalate(self, net: Network, seen: datetime, ttl: timedelta, k: Kind,
                  expiry: datetime) -> tuple[int, datetime, datetime]:
        """(strikes, bucket, expiry) of a sighting, from the record of the
        network's entry, else of its supernets' entries folded."""
        bucket = round_down(seen, self.granularity)
        base = self.entries.get(net) or fold(self._covers(net))
        if base is None or base.expiry is None or base.bucket is None or bucket <= base.bucket:
            return 0, bucket, expiry  # first record, permanent, or no later bucket: no strike
        strikes = base.strikes + 1
        cap = max(k.max_ttl, ttl).total_seconds()
        try:
            scaled = ttl.total_seconds() * k.escalate ** strikes
        except OverflowError:
            scaled = math.inf
        longer = round_up(seen + timedelta(seconds=min(max(scaled, ttl.total_seconds()), cap)), self.granularity)
        return strikes, bucket, max(longer, expiry)

    def extend(self, net: Network, source: str, now: datetime, expiry: datetime) -> bool:
        """False: refused (nothing blocked in or around ``net``)."""
        self._forget_expired(now)
        expiry = round_up(expiry, self.granularity)
        if expiry <= now:
            return False
        inside, covers = self._inside(net), self._covers(net)
        if not inside and not covers:
            return False  # not blocked
        if net not in self.entries and covers and not any(
                source in c.claims and later(c.claims[source].expiry, expiry) == c.claims[source].expiry for c in covers):
            own = fold(covers)
            assert own is not None
            self.entries[net] = own
            inside.append(net)
        above = {n: self._above(n).get(source) for n in inside}  # before any change
        for n in inside:
            e = self.entries[n]
            had = e.claims.get(source) or above[n]  # the source's claim on these addresses
            if had is None:
                new = Claim(expiry, LOWEST)
            elif source not in e.claims and later(had.expiry, expiry) == had.expiry:
                continue  # a broader entry holds it as long: these addresses keep their claim
            else:
                new = Claim(later(had.expiry, expiry), had.severity)
            kept = e.with_claims({**e.claims, source: new})
            assert kept is not None
            self.entries[n] = kept
        return True

    def unblock(self, net: Network, source: str, now: datetime) -> None:
        """A manual unblock lifts every claim; another source only its own."""
        self._forget_expired(now)
        for n in self._inside(net):
            kept = self.entries.pop(n).without(source)
            if kept is not None:
                self.entries[n] = kept
        # A broader entry holding the claim is split around the network: the
        # parts keep every claim, the network every claim but the withdrawn.
        for n in [n for n in self.entries if _strictly_covers(n, net)]:
            e = self.entries[n]
            kept = e.without(source)
            if kept is e:
                continue
            del self.entries[n]
            for part in n.address_exclude(net):  # type: ignore[arg-type]
                self._put(part, e)
            if kept is not None:
                self._put(net, kept)

    def snapshot(self, feed: str, listed: Iterable[Network], now: datetime) -> list[Network]:
        """The withdrawals of a snapshot of ``feed`` listing ``listed`` (already
        screened): entries holding the feed's claim that no listed network covers."""
        self._forget_expired(now)
        nets = list(listed)
        listed = [*ipaddress.collapse_addresses([n for n in nets if n.version == 4]),
                  *ipaddress.collapse_addresses([n for n in nets if n.version == 6])]
        gone = [n for n, e in self.entries.items() if feed in e.claims
                and not any(x.version == n.version and n.subnet_of(x) for x in listed)]  # type: ignore[arg-type]
        for n in sorted(gone, key=lambda n: (n.version, n.prefixlen)):  # all at once: broadest first
            self.unblock(n, feed, now)
        return gone

    def _above(self, net: Network) -> dict[str, Claim]:
        """The claims of the entries strictly covering ``net``, merged per source."""
        out: dict[str, Claim] = {}
        for e in self._covers(net):  # after _forget_expired: live
            out = merge_claims(out, e.claims)
        return out

    def evict(self, net: Network, claims: Claims, now: datetime, loose: bool = False) -> list[Network]:
        """Told that the band evicted ``net`` (an aggregate of entries whose
        live claims are ``claims``): those entries go. Returns the networks
        dropped.

        An entry may hold, or not, a claim that a broader entry already
        holds for the same source (a copy a compaction drops, or that two
        writers added at once), so entries are compared with the claims of
        the entries above ``net`` merged in. ``loose``: the stateful test
        does not hold the band to the model there (an earlier eviction), so
        only the sources must agree."""
        self._forget_expired(now)
        above = self._above(net)
        theirs = merge_claims(claims, above)

        def matches(e: Entry) -> bool:
            mine = merge_claims(e.claims, above)
            for s in set(e.claims) | set(claims):
                if s in claims:
                    if s not in mine or (mine[s] != theirs[s] and not loose):
                        return False
                elif not (s in above and holds(above[s], e.claims[s])):
                    return False
            return True

        gone = [n for n, e in self.entries.items() if _within(n, net) and matches(e)]
        for n in gone:
            del self.entries[n]
        return gone

    def eviction_view(self, now: datetime) -> dict[Network, dict[str, Claim]]:
        """Each live entry as eviction may rank it at most: with the claims of
        the entries above it and inside it merged in. The band may hold
        copies of a broader entry's claims in it, and packing aggregates
        narrower entries of equal claims into a network that may be this
        one's, where they merge with it; a manual claim among them may
        protect it."""
        self._forget_expired(now)
        out = {}
        for n, e in self.entries.items():
            claims = merge_claims(e.claims, self._above(n))
            for m in self._inside(n):
                claims = merge_claims(claims, self.entries[m].claims)
            out[n] = claims
        return out

    def cleanup(self, now: datetime) -> None:
        self._forget_expired(now)


def eviction_order_holds(evicted: list[Claims], kept: Iterable[Claims]) -> str:
    """'' when the evicted entries (their live claims) all come before every
    kept entry without a manual claim in the eviction order (lowest
    highest-severity, then soonest latest expiry), and none holds a manual
    claim; else why not."""
    if any(MANUAL in c for c in evicted):
        return "a manual block was evicted"
    if not evicted:
        return ""
    worst = max(rank(c) for c in evicted)
    for c in kept:
        if MANUAL not in c and rank(c) < worst:
            return f"kept {Answer(dict(c))} ranks {rank(c)}, before an evicted entry's {worst}"
    return ""
