"""The band planner: current band + intents + now -> rule operations.

Pure: no I/O, no clock, no environment, no logging. Everything it needs is
an argument, so the property tests can drive it with any state.

The model
---------
The band's state is a set of *entries*, one per blocked network, each with
its metadata (expiry, severity, sources) and the rule fields it needs
(action, preview). Entries with identical metadata form a *group*; a group's
networks are aggregated (``ipaddress.collapse_addresses``) and packed at most
10 to a rule, and the group's metadata is encoded in each of those rules'
descriptions (``responder.codec``). Expiries are rounded up to
``band.expiry_granularity`` so that sightings close in time share a group.

Repeat offenders
----------------
A block from a source kind with ``escalate`` on carries an ``Escalation``
(its sighting time, base TTL, factor, cap). The planner counts *strikes*
against the entry the band already holds for the network (its own entry,
else what its supernets' entries record): a sighting whose publish-time
bucket (``seen`` rounded down to ``expiry_granularity``) is later than the
entry's recorded bucket is one more strike, and its block lasts
``ttl * factor ** strikes`` from ``seen``, at most ``cap`` (never shorter
than the entry has). A sighting that finds no recorded bucket (a new
network, another source's block, a rule older than escalation) records its
own with 0 strikes; one in the same or an earlier bucket (the same message
redelivered) adds no strike and asks only for its base expiry, so replaying
intents changes nothing, and sightings within one bucket give the same band
in any order. Permanent entries never strike. Strikes and bucket merge by maximum, like
the expiry, and are stored in the description's ``n=`` field.

Two ways to plan
----------------
``plan_append`` is what event writers use: it only ever *adds* rules at free
priorities. A network whose entry changes (new, extended, another source) is
written again into a new rule carrying the merged metadata; the older rule
keeps blocking until the compactor drops its now-redundant copy. Adding
needs no lock: addRule at a taken priority fails, so concurrent writers
cannot overwrite each other (see README, "Concurrency").

``plan_reconcile`` is what the lease holder uses (cleanup, unblocks, a full
band): it computes the whole desired band, drops expired entries, evicts by
the capacity policy if needed, repacks, and diffs against the current rules
for the fewest adds, patches and removes, ordered so that coverage is added
before it is taken away.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from config.settings import BandSettings
from responder.codec import RuleMeta, decode, encode, representable
from responder.model import Escalation, Intent, Network, Severity, Verb
from responder.policy import PolicyRule

MAX_RANGES_PER_RULE = 10
MANUAL = "manual"
NEEDS_REMOVAL = "an entry must be removed or narrowed"


@dataclass(frozen=True)
class Entry:
    """One blocked network and everything recorded about it."""

    network: Network
    meta: RuleMeta
    action: str = "deny(403)"
    preview: bool = False

    @property
    def group(self) -> tuple[RuleMeta, str, bool]:
        return (self.meta, self.action, self.preview)

    @property
    def manual(self) -> bool:
        return MANUAL in self.meta.sources


@dataclass(frozen=True)
class BandRule:
    """A rule of ours, decoded."""

    priority: int
    networks: tuple[Network, ...]
    meta: RuleMeta
    action: str
    preview: bool
    rule: PolicyRule

    @property
    def group(self) -> tuple[RuleMeta, str, bool]:
        return (self.meta, self.action, self.preview)


@dataclass(frozen=True)
class Band:
    """The band as read from one policy snapshot."""

    rules: tuple[BandRule, ...]
    foreign: tuple[PolicyRule, ...]
    used: frozenset[int]

    def entries(self, now: datetime | None = None) -> dict[Network, Entry]:
        """One entry per network; a network held by several rules merges
        (latest expiry, highest severity, union of sources, enforced over
        preview). With ``now``, expired entries are left out."""
        out: dict[Network, Entry] = Entries()
        for rule in sorted(self.rules, key=lambda r: r.priority):
            if now is not None and rule.meta.expired(now):
                continue
            for net in rule.networks:
                entry = Entry(net, rule.meta, rule.action, rule.preview)
                seen = out.get(net)
                out[net] = entry if seen is None else _merge_entries(seen, entry)
        return out


@dataclass(frozen=True)
class Add:
    rule: PolicyRule


@dataclass(frozen=True)
class Patch:
    rule: PolicyRule
    before: PolicyRule


@dataclass(frozen=True)
class Remove:
    before: PolicyRule


Op = Add | Patch | Remove


@dataclass(frozen=True)
class Plan:
    """What to do, and what the band will hold once it is done."""

    ops: tuple[Op, ...] = ()
    entries: Mapping[Network, Entry] = field(default_factory=dict)
    refused: tuple[tuple[Intent, str], ...] = ()
    satisfied: int = 0
    expired: tuple[Entry, ...] = ()
    evicted: tuple[Entry, ...] = ()
    needs_lease: str = ""  # why an append plan cannot be applied by adds alone

    @property
    def mutations(self) -> int:
        return len(self.ops)


# --------------------------------------------------------------------------
# Reading the band


def read_band(rules: Iterable[PolicyRule], band: BandSettings) -> Band:
    """Splits the rules inside the band into ours and foreign ones."""
    ours: list[BandRule] = []
    foreign: list[PolicyRule] = []
    used: set[int] = set()
    for rule in rules:
        if not band.start <= rule.priority <= band.end:
            continue
        used.add(rule.priority)
        decoded = _decode_rule(rule, band.owner_tag)
        if decoded is None:
            foreign.append(rule)
        else:
            ours.append(decoded)
    return Band(tuple(ours), tuple(foreign), frozenset(used))


def _decode_rule(rule: PolicyRule, tag: str) -> BandRule | None:
    meta = decode(tag, rule.description)
    if meta is None or rule.expression or not rule.ranges or len(rule.ranges) > MAX_RANGES_PER_RULE:
        return None
    try:
        networks = tuple(ipaddress.ip_network(r, strict=True) for r in rule.ranges)
    except ValueError:
        return None
    return BandRule(rule.priority, networks, meta, rule.action, rule.preview, rule)


# --------------------------------------------------------------------------
# Applying intents to entries


def round_up(moment: datetime, granularity: timedelta) -> datetime:
    """The next multiple of ``granularity`` since the epoch, at or after
    ``moment`` (so expiries land on whole minutes and sightings share)."""
    step = int(granularity.total_seconds())
    seconds = math.ceil(moment.timestamp() / step) * step
    return datetime.fromtimestamp(seconds, tz=UTC)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later expiry; None (permanent) is later than any time."""
    if a is None or b is None:
        return None
    return max(a, b)


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later bucket; None (not known) is earlier than any time."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _merge_entries(a: Entry, b: Entry) -> Entry:
    meta = RuleMeta(
        expiry=_later(a.meta.expiry, b.meta.expiry),
        severity=max(a.meta.severity, b.meta.severity),
        sources=a.meta.sources | b.meta.sources,
        truncated=a.meta.truncated or b.meta.truncated,
        strikes=max(a.meta.strikes, b.meta.strikes),
        struck=_latest(a.meta.struck, b.meta.struck),
    )
    # The entry with the later expiry decides the action (on a tie the first,
    # so that reading the band back gives the same answer); enforced wins.
    newer = a if _later(a.meta.expiry, b.meta.expiry) == a.meta.expiry else b
    return Entry(a.network, meta, newer.action, a.preview and b.preview)


def _key(net: Network) -> tuple[int, int, int]:
    """A network as a plain tuple (version, first address, prefix length):
    hashed in C, and its supernets' keys are integer shifts away."""
    return (net.version, int(net.network_address), net.prefixlen)


class Entries(dict[Network, Entry]):
    """Entries by network, remembering which prefix lengths occur, so that
    looking for supernets tries only those lengths (a handful) instead of
    every one (33 for IPv4, 129 for IPv6). A length is never forgotten when
    its last entry goes: that only costs a useless look-up. Entries are also
    indexed by ``_key`` so that supernets are found by integer arithmetic,
    without building (and hashing) network objects."""

    def __init__(self, items: Iterable[tuple[Network, Entry]] = ()) -> None:
        super().__init__()
        self.lengths: dict[int, set[int]] = {4: set(), 6: set()}
        self._shorter: dict[int, tuple[int, ...]] = {4: (), 6: ()}  # lengths, longest first
        self.by_key: dict[tuple[int, int, int], Entry] = {}
        for net, entry in items:
            self[net] = entry

    def __setitem__(self, net: Network, entry: Entry) -> None:
        version, prefixlen = net.version, net.prefixlen
        lengths = self.lengths[version]
        if prefixlen not in lengths:
            lengths.add(prefixlen)
            self._shorter[version] = tuple(sorted(lengths, reverse=True))
        self.by_key[(version, int(net.network_address), prefixlen)] = entry
        super().__setitem__(net, entry)

    def __delitem__(self, net: Network) -> None:
        super().__delitem__(net)
        del self.by_key[_key(net)]

    def pop(self, net: Network, *default: Entry) -> Entry:  # type: ignore[override]
        if net in self:
            del self.by_key[_key(net)]
        return super().pop(net, *default)

    def popitem(self) -> tuple[Network, Entry]:
        net, entry = super().popitem()
        del self.by_key[_key(net)]
        return net, entry

    def clear(self) -> None:
        super().clear()
        self.by_key.clear()

    def setdefault(self, net: Network, default: Entry) -> Entry:
        if net not in self:
            self[net] = default
        return self[net]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for net, entry in dict(*args, **kwargs).items():
            self[net] = entry

    def __ior__(self, other: Any) -> Entries:  # type: ignore[override,misc]
        self.update(other)
        return self

    def covers(self, net: Network) -> list[Entry]:
        """The entries of strict supernets of ``net``, the most specific first."""
        version, prefixlen = net.version, net.prefixlen
        bits = 32 if version == 4 else 128
        addr = int(net.network_address)
        get = self.by_key.get
        out = []
        for p in self._shorter[version]:
            if p < prefixlen:
                shift = bits - p
                found = get((version, addr >> shift << shift, p))
                if found is not None:
                    out.append(found)
        return out


def _prefixes(entries: Mapping[Network, Entry], net: Network) -> Iterable[int]:
    """Shorter prefix lengths to try for supernets of ``net``, longest first."""
    known = getattr(entries, "lengths", None)
    if known is None:
        return range(net.prefixlen - 1, -1, -1)
    return sorted((p for p in known[net.version] if p < net.prefixlen), reverse=True)


def covers_of(entries: Mapping[Network, Entry], net: Network) -> list[Entry]:
    """The entries of strict supernets of ``net``, the most specific first."""
    if isinstance(entries, Entries):
        return entries.covers(net)
    return [c for p in _prefixes(entries, net) if (c := entries.get(net.supernet(new_prefix=p))) is not None]


def covering(entries: Mapping[Network, Entry], net: Network) -> Entry | None:
    """The entry of a strict supernet of ``net``, the most specific one."""
    if isinstance(entries, Entries):
        found = entries.covers(net)
        return found[0] if found else None
    for prefix in _prefixes(entries, net):
        cover = entries.get(net.supernet(new_prefix=prefix))
        if cover is not None:
            return cover
    return None


def _subnets(entries: Mapping[Network, Entry], net: Network) -> list[Network]:
    return [n for n in entries if n.version == net.version and n.subnet_of(net)]  # type: ignore[arg-type]


def round_down(moment: datetime, granularity: timedelta) -> datetime:
    """The multiple of ``granularity`` since the epoch at or before ``moment``:
    the publish-time bucket of a sighting."""
    step = int(granularity.total_seconds())
    return datetime.fromtimestamp(math.floor(moment.timestamp() / step) * step, tz=UTC)


def escalated_ttl(escalation: Escalation, strikes: int) -> timedelta:
    """``ttl * factor ** strikes``, at most ``cap`` (never less than ``ttl``)."""
    base = escalation.ttl.total_seconds()
    cap = max(escalation.cap.total_seconds(), base)
    try:
        scaled = base * escalation.factor ** strikes
    except OverflowError:
        scaled = math.inf
    return timedelta(seconds=min(max(scaled, base), cap))


def _strike(
    base: Entry | None, escalation: Escalation, expiry: datetime, granularity: timedelta
) -> tuple[int, datetime, datetime]:
    """(strikes, bucket, expiry) a sighting asks for, given the entry the
    band holds for its network (``base``; None: not blocked) and the
    sighting's own rounded expiry."""
    bucket = round_down(escalation.seen, granularity)
    if base is None or base.meta.expiry is None or base.meta.struck is None:
        # The first sighting an escalating source records (the entry may
        # hold other sources' claims, or predate escalation); permanent
        # entries never strike.
        return 0, bucket, expiry
    if bucket <= base.meta.struck:
        return 0, bucket, expiry  # the same message again, or an older one: no strike
    strikes = base.meta.strikes + 1
    longer = round_up(escalation.seen + escalated_ttl(escalation, strikes), granularity)
    return strikes, bucket, max(longer, expiry)


_MetaKey = tuple[datetime | None, Severity, str, int, datetime | None]


def _block(
    entries: dict[Network, Entry],
    intent: Intent,
    expiry: datetime | None,
    granularity: timedelta,
    metas: dict[_MetaKey, RuleMeta] | None = None,
) -> bool:
    """Applies a block; returns False when it was already in effect.
    ``metas`` caches the (immutable) metadata intents ask for: most intents
    of an event ask for the same."""
    existing = entries.get(intent.network)
    covers = covers_of(entries, intent.network) if existing is None else []
    strikes: int = 0
    struck: datetime | None = None
    if intent.escalation is not None and expiry is not None:
        base = existing
        for cover in reversed(covers):  # what the supernets record, folded
            base = replace(cover, network=intent.network) if base is None else _merge_entries(base, cover)
        strikes, struck, expiry = _strike(base, intent.escalation, expiry, granularity)
    key = (expiry, intent.severity, intent.source, strikes, struck)
    meta = None if metas is None else metas.get(key)
    if meta is None:
        meta = RuleMeta(expiry, intent.severity, frozenset({intent.source}), strikes=strikes, struck=struck)
        if metas is not None:
            metas[key] = meta
    wanted = Entry(intent.network, meta, intent.action, intent.preview)
    if existing is None:
        net = intent.network  # any supernet may satisfy it, not only the nearest
        if any(_satisfies(cover, _as_claim_on(cover, wanted)) for cover in covers):
            return False
        # The new entry also records the claims its supernets already make on
        # it, so that replaying the same intents finds them satisfied.
        for cover in covers:
            folded = _merge_entries(replace(cover, network=net), wanted)
            if cover.manual and intent.source != MANUAL:
                folded = replace(folded, action=cover.action, preview=cover.preview)
            wanted = folded
        entries[intent.network] = wanted
        return True
    merged = _merge_entries(existing, wanted)
    if existing.manual and intent.source != MANUAL:
        # Automation adds its claim but never changes a manual block's rule fields.
        merged = replace(merged, action=existing.action, preview=existing.preview)
    if merged == existing:
        return False
    entries[intent.network] = merged
    return True


def _as_claim_on(have: Entry, want: Entry) -> Entry:
    """``want`` as it would merge into ``have``: automation adds its claim to
    a manual block but never changes its rule fields (see ``_block``)."""
    if have.manual and MANUAL not in want.meta.sources:
        return replace(want, action=have.action, preview=have.preview)
    return want


def _satisfies(have: Entry, want: Entry) -> bool:
    return (
        _later(have.meta.expiry, want.meta.expiry) == have.meta.expiry
        and have.meta.severity >= want.meta.severity
        # a truncated record may hold the source already (it cannot show
        # more); the codec never drops manual
        and (want.meta.sources <= have.meta.sources
             or (have.meta.truncated and MANUAL not in want.meta.sources - have.meta.sources))
        # a permanent entry keeps no repeat-offender record (see RuleMeta)
        and (have.meta.expiry is None or (
            want.meta.strikes <= have.meta.strikes
            and _latest(have.meta.struck, want.meta.struck) == have.meta.struck))
        # no action check: as in _merge_entries, the entry that lasts at
        # least as long keeps its action
        and (want.preview or not have.preview)
    )


def _extend(entries: dict[Network, Entry], intent: Intent, expiry: datetime | None) -> str | None:
    """Moves the expiry of what blocks ``intent.network`` later; never
    earlier. Returns why it could not, or None."""
    targets = _subnets(entries, intent.network)
    if not targets:
        cover = covering(entries, intent.network)
        if cover is None:
            return "not blocked"
        net = intent.network  # already in effect through any supernet: no entry of its own
        for c in covers_of(entries, net):
            if _later(c.meta.expiry, expiry) == c.meta.expiry and intent.source in c.meta.sources:
                return None
        entries[intent.network] = replace(cover, network=intent.network)
        targets = [intent.network]
    for net in targets:
        entry = entries[net]
        meta = replace(
            entry.meta,
            expiry=_later(entry.meta.expiry, expiry),
            sources=entry.meta.sources | {intent.source},
        )
        entries[net] = replace(entry, meta=meta)
    return None


def _withdraw(entry: Entry, source: str) -> Entry | None:
    """``entry`` without ``source``'s claim (a manual unblock withdraws every
    claim); None when no claim is left."""
    if source == MANUAL:
        return None
    if source not in entry.meta.sources:
        return entry
    left = entry.meta.sources - {source}
    if not left and not entry.meta.truncated:
        return None
    return replace(entry, meta=replace(entry.meta, sources=left))


def _unblock(entries: dict[Network, Entry], intent: Intent) -> None:
    """Withdraws a claim on a network: a manual unblock lifts every block on
    it, another source only its own claim. Entries inside the network lose
    the claim; a broader entry holding the claim is split around the network
    (``address_exclude``), so the outcome is the same whether or not the band
    had aggregated the network with its neighbours. An entry goes when no
    claim is left."""
    net, source = intent.network, intent.source
    for sub in _subnets(entries, net):
        kept = _withdraw(entries[sub], source)
        if kept is None:
            del entries[sub]
        else:
            entries[sub] = kept
    for cover in covers_of(entries, net):
        if entries.get(cover.network) is not cover:
            continue  # already split
        kept = _withdraw(cover, source)
        if kept is cover:
            continue
        del entries[cover.network]
        parts = [replace(cover, network=p) for p in cover.network.address_exclude(net)]  # type: ignore[arg-type]
        if kept is not None:
            parts.append(replace(kept, network=net))
        for part in parts:
            seen = entries.get(part.network)  # a piece of a narrower cover split before
            entries[part.network] = part if seen is None else _merge_entries(seen, part)


def apply_intents(
    current: Mapping[Network, Entry],
    intents: Sequence[Intent],
    now: datetime,
    granularity: timedelta,
) -> tuple[dict[Network, Entry], list[tuple[Intent, str]], int]:
    """The live entries after the intents, in order; plus the intents
    refused (with why) and the number already in effect."""
    entries = Entries((n, e) for n, e in current.items() if not e.meta.expired(now))
    rounded: dict[datetime, datetime] = {}  # most intents of an event share an expiry
    metas: dict[_MetaKey, RuleMeta] = {}  # and metadata
    refused: list[tuple[Intent, str]] = []
    satisfied = 0
    for intent in intents:
        if intent.verb is Verb.UNBLOCK:
            before = len(entries), entries.get(intent.network)
            _unblock(entries, intent)
            satisfied += before == (len(entries), entries.get(intent.network))
            continue
        if intent.permanent:
            if intent.source != MANUAL:
                refused.append((intent, "only manual blocks can be permanent"))
                continue
            expiry = None
        elif intent.expiry is None:
            refused.append((intent, "no expiry"))
            continue
        else:
            expiry = rounded.get(intent.expiry) or rounded.setdefault(intent.expiry, round_up(intent.expiry, granularity))
            if expiry <= now:
                refused.append((intent, "expiry is in the past"))
                continue
        if intent.verb is Verb.BLOCK:
            satisfied += not _block(entries, intent, expiry, granularity, metas)
        else:
            why = _extend(entries, intent, expiry)
            if why:
                refused.append((intent, why))
    return entries, refused, satisfied


# --------------------------------------------------------------------------
# Packing and priorities


def pack(entries: Iterable[Entry]) -> dict[tuple[RuleMeta, str, bool], list[Network]]:
    """Groups entries by metadata and aggregates each group's networks."""
    groups: dict[tuple[RuleMeta, str, bool], list[Network]] = defaultdict(list)
    for entry in entries:
        groups[entry.group].append(entry.network)
    return {key: _collapse(nets) for key, nets in groups.items()}


def _collapse(nets: Iterable[Network]) -> list[Network]:
    """The same result as ``ipaddress.collapse_addresses`` per IP version
    (the fewest CIDR blocks covering the union, sorted), computed on integer
    intervals: a network that survives whole is reused, only merged runs are
    cut into new blocks. Several times faster on large feeds."""
    out: list[Network] = []
    by_version: dict[int, list[tuple[int, int, Network]]] = {4: [], 6: []}
    for n in nets:
        by_version[n.version].append((int(n.network_address), -n.prefixlen, n))
    for version, bits in ((4, 32), (6, 128)):
        spans = sorted(by_version[version])
        run_start = run_end = -1
        run: list[Network] = []
        for start, neg_prefix, net in spans:
            end = start + (1 << (bits + neg_prefix)) - 1
            if run and start <= run_end + 1:
                if end > run_end:
                    run_end = end
                    run.append(net)
                continue
            if run:
                out.extend(_blocks(run, run_start, run_end, version, bits))
            run_start, run_end, run = start, end, [net]
        if run:
            out.extend(_blocks(run, run_start, run_end, version, bits))
    return out


def _blocks(run: list[Network], start: int, end: int, version: int, bits: int) -> list[Network]:
    """CIDR blocks covering ``start..end``; the run's first network when it
    alone spans the interval (the others lie inside it)."""
    if len(run) == 1:
        return run
    make = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    blocks: list[Network] = []
    while start <= end:
        size = start & -start if start else 1 << bits
        while size > end - start + 1:
            size >>= 1
        blocks.append(make((start, bits - size.bit_length() + 1)))
        start += size
    return blocks


def _chunks(nets: Sequence[Network]) -> list[list[Network]]:
    return [list(nets[i : i + MAX_RANGES_PER_RULE]) for i in range(0, len(nets), MAX_RANGES_PER_RULE)]


class _Priorities:
    """Hands out free priorities of the band in a seeded random order, so
    that concurrent writers seldom pick the same one."""

    def __init__(self, band: BandSettings, used: Iterable[int], seed: int) -> None:
        self.band = band
        self.used = set(used)
        self.rng = random.Random(seed)

    @property
    def free(self) -> int:
        return self.band.size - len(self.used)

    def take(self) -> int | None:
        if self.free <= 0:
            return None
        if self.free * 4 >= self.band.size:  # plenty free: sample
            while True:
                candidate = self.rng.randint(self.band.start, self.band.end)
                if candidate not in self.used:
                    break
        else:
            candidates = [p for p in range(self.band.start, self.band.end + 1) if p not in self.used]
            candidate = self.rng.choice(candidates)
        self.used.add(candidate)
        return candidate


def make_rule(priority: int, nets: Sequence[Network], group: tuple[RuleMeta, str, bool], tag: str) -> PolicyRule:
    meta, action, preview = group
    ordered = sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    ranges = tuple(str(n) for n in ordered)
    return PolicyRule(priority=priority, action=action, ranges=ranges, description=encode(tag, meta), preview=preview)


# --------------------------------------------------------------------------
# The two planners


def plan_append(
    band: Band,
    intents: Sequence[Intent],
    now: datetime,
    settings: BandSettings,
    seed: int = 0,
) -> Plan:
    """Adds-only plan for an event writer. When the intents need a rule
    changed or removed (an unblock), or the band has no room, the plan is
    empty and ``needs_lease`` says why: the caller then reconciles under the
    lease."""
    current = band.entries(now)
    entries, refused, satisfied = apply_intents(current, intents, now, settings.expiry_granularity)
    if any(net not in entries for net in current) or any(
        current[n] != entries.get(n) and _weaker(current[n], entries[n]) for n in current if n in entries
    ):
        return Plan(entries=entries, refused=tuple(refused), satisfied=satisfied, needs_lease=NEEDS_REMOVAL)
    fresh: list[Entry] = []
    again: list[Entry] = []
    held = current.get
    for n, e in entries.items():
        before = held(n)
        if before is None:
            fresh.append(e)
        elif before != e:
            again.append(e)
    # New networks aggregate; a network the band already holds is written
    # again as it is, so that reading the band back merges it with its old rule.
    groups = pack(fresh)
    for e in again:
        groups.setdefault(e.group, []).append(e.network)
    priorities = _Priorities(settings, band.used, seed)
    ops: list[Op] = []
    for group, nets in sorted(groups.items(), key=lambda kv: _group_order(kv[0])):
        for chunk in _chunks(nets):
            priority = priorities.take()
            if priority is None:
                return Plan(entries=entries, refused=tuple(refused), satisfied=satisfied, needs_lease="the band is full")
            ops.append(Add(make_rule(priority, chunk, group, settings.owner_tag)))
    return Plan(tuple(ops), entries, tuple(refused), satisfied)


def _weaker(before: Entry, after: Entry) -> bool:
    """True when ``after`` drops something ``before`` had: a source claim,
    expiry, severity, enforcement or action (only a lease holder can rewrite
    a rule to take it away; an added rule would merge with the old one)."""
    return _merge_entries(before, after) != after


def _group_order(group: tuple[RuleMeta, str, bool]) -> tuple[int, float, str, str, bool]:
    meta, action, preview = group
    expiry = math.inf if meta.expiry is None else meta.expiry.timestamp()
    return (-int(meta.severity), -expiry, ",".join(sorted(meta.sources)), action, preview)


def plan_reconcile(
    band: Band,
    intents: Sequence[Intent],
    now: datetime,
    settings: BandSettings,
    *,
    capacity: int | None = None,
    compact: bool = True,
    seed: int = 0,
) -> Plan:
    """The whole desired band and the fewest operations to reach it.

    ``capacity`` caps the number of band rules (free band priorities and the
    project's rule quota, as the caller knows them); when the entries need
    more, non-manual entries are evicted, lowest severity and soonest expiry
    first. ``compact`` repacks partly filled rules of a group into as few
    rules as its ranges need."""
    current = band.entries(now)
    entries, refused, satisfied = apply_intents(current, intents, now, settings.expiry_granularity)
    expired = tuple(e for n, e in band.entries().items() if n not in current)
    groups = _pack_merged(entries.values())
    if any(representable(settings.owner_tag, g[0]) != g[0] for g in groups):
        # Some metadata has more sources than a description holds: plan for
        # what the rules will read back, or every run would rewrite them.
        fit: dict[RuleMeta, RuleMeta] = {}
        for n, e in entries.items():
            meta = fit.get(e.meta) or fit.setdefault(e.meta, representable(settings.owner_tag, e.meta))
            if meta is not e.meta:
                entries[n] = replace(e, meta=meta)
        groups = _pack_merged(entries.values())
    limit = settings.size - len(band.foreign)
    if capacity is not None:
        limit = min(limit, capacity)
    evicted = _evict(groups, entries, limit)
    packed_entries: dict[Network, Entry] = {}
    for g, nets in groups.items():
        for n in nets:  # two groups can aggregate to the same network
            seen = packed_entries.get(n)
            packed_entries[n] = Entry(n, *g) if seen is None else _merge_entries(seen, Entry(n, *g))

    by_group: dict[tuple[RuleMeta, str, bool], list[BandRule]] = defaultdict(list)
    for rule in band.rules:
        by_group[rule.group].append(rule)
    priorities = _Priorities(settings, band.used, seed)
    adds: list[Op] = []
    grows: list[Op] = []
    shrinks: list[Op] = []
    removes: list[Op] = []
    for group in sorted(set(groups) | set(by_group), key=_group_order):
        wanted = groups.get(group, [])
        rules = by_group.get(group, [])
        want_set = set(wanted)
        kept = {r.priority: [n for n in r.networks if n in want_set] for r in rules}
        needed = math.ceil(len(wanted) / MAX_RANGES_PER_RULE)
        if not compact:
            needed = max(needed, sum(1 for held in kept.values() if held))
        ranked = sorted(rules, key=lambda r: (-len(kept[r.priority]), r.priority))
        chosen, dropped = ranked[:needed], ranked[needed:]
        placed = {n for r in chosen for n in kept[r.priority]}
        pool = [n for n in wanted if n not in placed]
        for rule in chosen:
            held = kept[rule.priority]
            room = MAX_RANGES_PER_RULE - len(held)
            final, pool = held + pool[:room], pool[room:]
            after = make_rule(rule.priority, final, group, settings.owner_tag)
            if set(after.ranges) != set(rule.rule.ranges) or after.description != rule.rule.description:
                if set(rule.networks) <= set(final):
                    grows.append(Patch(after, rule.rule))
                    continue
                # A patch that drops some ranges and takes others could drop a
                # range before the rule taking it over holds it (two rules
                # swapping ranges): first grow to both, then shrink.
                both = list(dict.fromkeys([*rule.networks, *final]))
                gains = len(final) > len(held)
                if gains and len(both) <= MAX_RANGES_PER_RULE:
                    bridge = make_rule(rule.priority, both, group, settings.owner_tag)
                    grows.append(Patch(bridge, rule.rule))
                    shrinks.append(Patch(after, bridge))
                elif gains and (priority := priorities.take()) is not None:
                    # No room to bridge: the new content goes into a new rule
                    # (added first) and the old rule is removed last.
                    adds.append(Add(make_rule(priority, final, group, settings.owner_tag)))
                    removes.append(Remove(rule.rule))
                else:  # only drops ranges (their new homes are adds or grows)
                    shrinks.append(Patch(after, rule.rule))
        for chunk in _chunks(pool):
            priority = priorities.take()
            if priority is None:  # cannot happen within capacity; stay safe
                refused.extend((i, "the band is full") for i in intents if i.network in chunk)
                continue
            adds.append(Add(make_rule(priority, chunk, group, settings.owner_tag)))
        removes.extend(Remove(r.rule) for r in dropped)
    ops = tuple(adds + grows + shrinks + removes)
    return Plan(ops, packed_entries, tuple(refused), satisfied, expired, evicted)


def _pack_merged(entries: Iterable[Entry]) -> dict[tuple[RuleMeta, str, bool], list[Network]]:
    """``pack``, repeated until no two groups aggregate to the same network
    (such networks merge into one entry, as reading the band back would)."""
    groups = pack(entries)
    while True:
        if sum(map(len, groups.values())) == len({n for nets in groups.values() for n in nets}):
            # No network in two groups: merging changes nothing, and packing
            # the same groups again gives the same networks (collapsing is
            # idempotent).
            return groups
        merged: dict[Network, Entry] = {}
        for g, nets in groups.items():
            for n in nets:
                seen = merged.get(n)
                merged[n] = Entry(n, *g) if seen is None else _merge_entries(seen, Entry(n, *g))
        regrouped = pack(merged.values())
        if regrouped == groups:
            return groups
        groups = regrouped


def _evict(
    groups: dict[tuple[RuleMeta, str, bool], list[Network]],
    entries: Mapping[Network, Entry],
    limit: int,
) -> tuple[Entry, ...]:
    """Removes aggregated networks from ``groups`` until they fit ``limit``
    rules: lowest severity first, then soonest expiry; manual never."""

    def rules_needed() -> int:
        return sum(math.ceil(len(nets) / MAX_RANGES_PER_RULE) for nets in groups.values())

    need = rules_needed()
    if need <= max(limit, 0):
        return ()
    candidates = sorted(
        ((g, n) for g, nets in groups.items() if MANUAL not in g[0].sources for n in nets),
        key=lambda gn: (
            int(gn[0][0].severity),
            math.inf if gn[0][0].expiry is None else gn[0][0].expiry.timestamp(),
            str(gn[1]),
        ),
    )
    evicted: list[Entry] = []
    for group, net in candidates:
        if need <= limit:
            break
        nets = groups[group]
        before = math.ceil(len(nets) / MAX_RANGES_PER_RULE)
        nets.remove(net)
        need -= before - math.ceil(len(nets) / MAX_RANGES_PER_RULE)
        evicted.append(Entry(net, *group))
        if not nets:
            del groups[group]
    return tuple(evicted)
