"""A reference model of the band's meaning, written from README.md (not from
the planner): deliberately simple, with no index, no packing and no rules.

The state is one entry per blocked network ("the same range from two sources
is one entry that remembers both"), each with its expiry (None: permanent),
severity, sources and repeat-offender record (strikes, publish-time bucket).
What an address means is the union of the live entries that cover it: the
latest expiry, the highest severity, every source (README, "Concurrency":
"the band's state is the union of its rules").

Rules, each from the README section named beside it:

* block ("Get, plan, apply"): an expiry is rounded up to the granularity
  ("The policy is the state store"); a re-sighting extends to the later
  expiry and never shortens; only manual blocks can be permanent. A network
  already blocked by a broader entry that says at least as much changes
  nothing; otherwise the new entry carries what the broader ones say of it
  (one entry per network holds the whole meaning of that network).
* extend (manual schema): every blocked address of the range is blocked at
  least until the new expiry, and the range records the source; never
  shortens; a range nothing blocks is refused.
* unblock (manual schema): a manual unblock lifts every block on the range
  from every source, a broader block split around it; a feed's withdrawal
  (snapshot, revoked) lifts only that feed's claim, the same way.
* snapshot feeds ("Snapshot feeds"): the feed's entries that the new list no
  longer covers lose the feed's claim, then the list is blocked.
* guards ("Guards"): a block or extend overlapping a special-purpose range
  or the allowlist, or broader than the kind's minimum prefix, is refused
  whole; single IPv6 addresses of detectors and alerts widen to /64;
  unblocks always pass.
* escalation ("Repeat offenders' TTL escalates").
* expiry: an entry whose expiry has passed is not live; cleanup drops it.
* capacity ("The rule quota full", Runbook): the model does not pack, so it
  cannot know how many rules the band needs; it is told what was evicted
  and checks the order (never manual; lowest severity, soonest expiry first).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MANUAL = "manual"
FOREVER = datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(frozen=True)
class Claim:
    expiry: datetime | None  # None: permanent
    severity: int
    sources: frozenset[str]
    strikes: int = 0
    bucket: datetime | None = None  # publish-time bucket of the last escalating sighting
    # The known defect (test_band_machine.py, test_a_withdrawal_does_not_depend_on_aggregation):
    # after a withdrawal the band may keep the withdrawn claim's expiry and
    # severity on what it had aggregated with it. ``hi`` and ``sev_hi`` bound
    # what the band may say; both equal expiry and severity until a withdrawal.
    hi: datetime | None = None  # set by __post_init__: never before the expiry (FOREVER: permanent)
    sev_hi: int = 0

    def __post_init__(self) -> None:
        floor = FOREVER if self.expiry is None else self.expiry
        object.__setattr__(self, "hi", floor if self.hi is None else max(self.hi, floor))
        object.__setattr__(self, "sev_hi", max(self.sev_hi, self.severity))

    def live(self, now: datetime) -> bool:
        return self.expiry is None or self.expiry > now

    def may_live(self, now: datetime) -> bool:
        assert self.hi is not None
        return self.hi > now


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    return None if a is None or b is None else max(a, b)


def latest_bucket(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def merge(a: Claim, b: Claim) -> Claim:
    return Claim(later(a.expiry, b.expiry), max(a.severity, b.severity), a.sources | b.sources,
                 max(a.strikes, b.strikes), latest_bucket(a.bucket, b.bucket), max(a.hi or FOREVER, b.hi or FOREVER), max(a.sev_hi, b.sev_hi))


def says_at_least(have: Claim, want: Claim) -> bool:
    """``have`` already says everything ``want`` says."""
    return merge(have, want) == have


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


@dataclass
class Reference:
    granularity: timedelta
    kinds: dict[str, Kind]
    allowlist: tuple[Network, ...]
    special: tuple[Network, ...]
    entries: dict[Network, Claim] = field(default_factory=dict)

    # -- reading -------------------------------------------------------------

    def live(self, now: datetime) -> dict[Network, Claim]:
        return {n: c for n, c in self.entries.items() if c.live(now)}

    def answer(self, address: Address, now: datetime) -> Claim | None:
        """What the band means for one address: None, or the union of the
        live entries that cover it (strike records left out)."""
        found = [c for n, c in self.live(now).items() if n.version == address.version and address in n]
        if not found:
            return None
        out = found[0]
        for c in found[1:]:
            out = merge(out, c)
        return Claim(out.expiry, out.severity, out.sources)

    def bounds(self, address: Address, now: datetime) -> tuple[Claim | None, Claim | None]:
        """What the band must say of one address (the live entries that cover
        it), and the most it may say (with what the known defect may leave
        behind: ``Claim.hi``, ``sev_hi``)."""
        covering = [c for n, c in self.entries.items() if n.version == address.version and address in n]
        must = [c for c in covering if c.live(now)]
        may = [c for c in covering if c.may_live(now)]

        def union(cs: list[Claim]) -> Claim | None:
            if not cs:
                return None
            out = cs[0]
            for c in cs[1:]:
                out = merge(out, c)
            return out

        return union(must), union(may)

    def _covers(self, net: Network, now: datetime) -> list[Claim]:
        """Live entries of strict supernets of ``net``."""
        return [c for n, c in self.live(now).items()
                if n.version == net.version and n != net and net.subnet_of(n)]  # type: ignore[arg-type]

    def _inside(self, net: Network, now: datetime) -> list[Network]:
        """Live entries of ``net`` and its subnets."""
        return [n for n, c in self.live(now).items() if n.version == net.version and n.subnet_of(net)]  # type: ignore[arg-type]

    # -- guards --------------------------------------------------------------

    def screen(self, net: Network, kind: str) -> Network | None:
        """The network a block or extend of this kind may touch (widened), or None: refused."""
        k = self.kinds[kind]
        if net.version == 6 and k.widen_v6_to is not None and net.prefixlen > k.widen_v6_to:
            net = net.supernet(new_prefix=k.widen_v6_to)
        if any(s.version == net.version and s.overlaps(net) for s in self.special + self.allowlist):  # type: ignore[arg-type]
            return None
        if net.prefixlen < (k.min_prefix_v4 if net.version == 4 else k.min_prefix_v6):
            return None
        return net

    # -- changes -------------------------------------------------------------

    def _forget_expired(self, now: datetime) -> None:
        self.entries = {n: c for n, c in self.entries.items() if c.may_live(now)}

    def block(self, net: Network, kind: str, source: str, now: datetime, *, expiry: datetime | None,
              severity: int, seen: datetime | None = None, ttl: timedelta | None = None) -> bool:
        """A block; ``expiry`` None is permanent (manual only). ``seen`` and
        ``ttl`` (publish time, base TTL) for kinds that escalate."""
        self._forget_expired(now)
        if expiry is None and source != MANUAL:
            return False
        if expiry is not None:
            expiry = round_up(expiry, self.granularity)
            if expiry <= now:
                return False
        want = Claim(expiry, severity, frozenset({source}))
        k = self.kinds[kind]
        if k.escalate > 1 and expiry is not None and seen is not None and ttl is not None and ttl > timedelta(0):
            want = self._escalate(net, want, seen, ttl, k, now)
        covers = self._covers(net, now)
        if any(says_at_least(c, want) for c in covers):
            return True
        if net in self.entries:
            self.entries[net] = merge(self.entries[net], want)
            return True
        for c in covers:
            want = merge(c, want)
        self.entries[net] = want
        return True

    def _escalate(self, net: Network, want: Claim, seen: datetime, ttl: timedelta, k: Kind, now: datetime) -> Claim:
        bucket = round_down(seen, self.granularity)
        base = self.entries.get(net)
        if base is None:
            for c in self._covers(net, now):
                base = c if base is None else merge(base, c)
        if base is None or base.expiry is None or base.bucket is None or bucket <= base.bucket:
            return replace(want, strikes=0, bucket=bucket)  # first record, or no later bucket: no strike
        strikes = base.strikes + 1
        cap = max(k.max_ttl, ttl).total_seconds()
        try:
            scaled = ttl.total_seconds() * k.escalate ** strikes
        except OverflowError:
            scaled = math.inf
        longer = round_up(seen + timedelta(seconds=min(max(scaled, ttl.total_seconds()), cap)), self.granularity)
        assert want.expiry is not None
        return replace(want, expiry=max(longer, want.expiry), strikes=strikes, bucket=bucket)

    def extend(self, net: Network, source: str, now: datetime, expiry: datetime) -> bool:
        self._forget_expired(now)
        expiry = round_up(expiry, self.granularity)
        if expiry <= now:
            return False
        inside, covers = self._inside(net, now), self._covers(net, now)
        if not inside and not covers:
            return False  # not blocked
        if net not in self.entries and covers and not any(
                later(c.expiry, expiry) == c.expiry and source in c.sources for c in covers):
            own = covers[0]
            for c in covers[1:]:
                own = merge(own, c)
            self.entries[net] = own
            inside.append(net)
        for n in inside:
            c = self.entries[n]
            self.entries[n] = replace(c, expiry=later(c.expiry, expiry), sources=c.sources | {source})
        return True

    def unblock(self, net: Network, source: str, now: datetime) -> None:
        """A manual unblock lifts every claim; another source only its own."""
        self._forget_expired(now)

        def without(c: Claim) -> Claim | None:
            if source == MANUAL or (source in c.sources and len(c.sources) == 1):
                return None
            return replace(c, sources=c.sources - {source})

        withdrawn = [] if source == MANUAL else [
            (n, c) for n, c in self.entries.items() if source in c.sources and n.version == net.version
            and (n.subnet_of(net) or net.subnet_of(n))]  # type: ignore[arg-type]

        for n in self._inside(net, now):
            kept = without(self.entries.pop(n))
            if kept is not None:
                self.entries[n] = kept
        # A broader entry holding the claim is split around the network.
        for n in sorted((n for n in self.entries if n.version == net.version and n != net and net.subnet_of(n)),  # type: ignore[arg-type]
                        key=lambda n: -n.prefixlen):
            c = self.entries.get(n)
            if c is None or (source != MANUAL and source not in c.sources):
                continue
            del self.entries[n]
            parts: list[tuple[Network, Claim]] = [(p, c) for p in n.address_exclude(net)]  # type: ignore[arg-type]
            kept = without(c)
            if kept is not None:
                parts.append((net, kept))
            for p, pc in parts:
                self.entries[p] = merge(self.entries[p], pc) if p in self.entries else pc
        # The known defect: what the band had aggregated with a withdrawn claim
        # may keep its expiry and severity (never its source).
        for w, wc in withdrawn:
            for n, c in list(self.entries.items()):
                if n.version == w.version and n.overlaps(w):  # type: ignore[arg-type]
                    self.entries[n] = replace(c, hi=max(c.hi or FOREVER, wc.hi or FOREVER), sev_hi=max(c.sev_hi, wc.sev_hi))

    def snapshot(self, feed: str, listed: Iterable[Network], now: datetime) -> list[Network]:
        """The withdrawals of a snapshot of ``feed`` listing ``listed`` (already
        screened): entries of the feed no listed network covers."""
        self._forget_expired(now)
        nets = list(listed)
        listed = [*ipaddress.collapse_addresses([n for n in nets if n.version == 4]),  # type: ignore[misc]
                  *ipaddress.collapse_addresses([n for n in nets if n.version == 6])]  # type: ignore[misc]
        gone = [n for n, c in self.entries.items() if feed in c.sources
                and not any(x.version == n.version and n.subnet_of(x) for x in listed)]  # type: ignore[arg-type]
        for n in sorted(gone, key=lambda n: (n.version, n.prefixlen)):  # all at once: broadest first
            self.unblock(n, feed, now)
        return gone

    def evict(self, net: Network, claim: Claim) -> None:
        """Told that the band evicted ``net`` (an aggregate of entries that
        all say ``claim``): those entries go."""
        for n in [n for n, c in self.entries.items() if n.version == net.version and n.subnet_of(net)  # type: ignore[arg-type]
                  and (c.expiry, c.severity, c.sources) == (claim.expiry, claim.severity, claim.sources)]:
            del self.entries[n]

    def cleanup(self, now: datetime) -> None:
        self._forget_expired(now)


def eviction_order_holds(evicted: list[Claim], kept: Iterable[Claim]) -> str:
    """'' when the evicted claims all come before every kept non-manual
    claim in the eviction order (lowest severity, then soonest expiry), and
    none is manual; else why not."""
    if any(MANUAL in c.sources for c in evicted):
        return "a manual block was evicted"

    def rank(c: Claim) -> tuple[int, float]:
        return (c.severity, math.inf if c.expiry is None else c.expiry.timestamp())

    if not evicted:
        return ""
    worst = max(rank(c) for c in evicted)
    for c in kept:
        if MANUAL not in c.sources and rank(c) < worst:
            return f"kept {c} ranks before an evicted claim {worst}"
    return ""
