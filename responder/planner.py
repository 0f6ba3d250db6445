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
import socket
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from config.settings import BandSettings
from responder.codec import RuleMeta, decode, decode_group, encode, representable
from responder.model import Escalation, Intent, Network, Severity, Verb
from responder.policy import PolicyRule

MAX_RANGES_PER_RULE = 10
MANUAL = "manual"
NEEDS_REMOVAL = "an entry must be removed or narrowed"

Group = tuple[RuleMeta, str, bool]  # what the entries packed into one rule share


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
    def group(self) -> Group:
        return (self.meta, self.action, self.preview)


@dataclass(frozen=True)
class Band:
    """The band as read from one policy snapshot."""

    rules: tuple[BandRule, ...]
    foreign: tuple[PolicyRule, ...]
    used: frozenset[int]
    # Our group rules (one per feed and IP version stored in an address
    # group, ``responder.groupstore``): their priorities are taken (in
    # ``used``), and no range plan ever reads, patches or removes them.
    groups: tuple[PolicyRule, ...] = ()

    def entries(self, now: datetime | None = None) -> dict[Network, Entry]:
        """One entry per network; a network held by several rules merges
        (latest expiry, highest severity, union of sources, enforced over
        preview). With ``now``, expired entries are left out."""
        return Entries.of(self._index(now))

    def _index(self, now: datetime | None = None) -> _Index:
        """``entries``, by key."""
        index = _Index()
        get = index.by_key.get
        for rule in sorted(self.rules, key=lambda r: r.priority):
            if now is not None and rule.meta.expired(now):
                continue
            for net in rule.networks:
                entry = Entry(net, rule.meta, rule.action, rule.preview)
                key = _key(net)
                seen = get(key)
                index.set(key, entry if seen is None else _merge_entries(seen, entry))
        return index


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
    held: list[PolicyRule] = []
    used: set[int] = set()
    metas: dict[str, RuleMeta | None] = {}  # the rules of a group share their description
    for rule in rules:
        if not band.start <= rule.priority <= band.end:
            continue
        used.add(rule.priority)
        decoded = _decode_rule(rule, band.owner_tag, metas)
        if decoded is not None:
            ours.append(decoded)
        elif rule.expression and decode_group(band.owner_tag, rule.description) is not None:
            held.append(rule)
        else:
            foreign.append(rule)
    return Band(tuple(ours), tuple(foreign), frozenset(used), tuple(held))


def _decode_rule(rule: PolicyRule, tag: str, metas: dict[str, RuleMeta | None]) -> BandRule | None:
    description = rule.description
    meta = metas[description] if description in metas else metas.setdefault(description, decode(tag, description))
    if meta is None or rule.expression or not rule.ranges or len(rule.ranges) > MAX_RANGES_PER_RULE:
        return None
    try:
        networks = tuple(map(_parse, rule.ranges))
    except ValueError:
        return None
    return BandRule(rule.priority, networks, meta, rule.action, rule.preview, rule)


def _parse(text: str) -> Network:
    """``ipaddress.ip_network(text, strict=True)``. An IPv4 range written as
    ``_text`` writes it (as ours are) is built from its integers, three
    times faster; anything else goes to ``ip_network``."""
    address, _, prefix = text.partition("/")
    try:
        key = (4, int.from_bytes(socket.inet_aton(address)), int(prefix))
    except (OSError, ValueError):
        return ipaddress.ip_network(text, strict=True)
    if _text(key) != text:  # inet_aton and int take more spellings than ip_network
        return ipaddress.ip_network(text, strict=True)
    return ipaddress.IPv4Network(key[1:])


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


Key = tuple[int, int, int]
"""A network as a plain tuple (version, first address, prefix length): hashed
and compared in C, sorted as a rule lists its ranges, and its supernets'
keys are integer shifts away. The planner works on keys and builds network
objects only for what it returns."""

_BITS = {4: 32, 6: 128}


_key: Callable[[Network], Key] = attrgetter("_version", "network_address._ip", "_prefixlen")
"""``(net.version, int(net.network_address), net.prefixlen)``, read in one C
call from the attributes behind those properties (a quarter of the time)."""


def _network(key: Key) -> Network:
    version, address, prefixlen = key
    return (ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)((address, prefixlen))


_OCTETS = [str(i) for i in range(256)]


def _text(key: Key) -> str:
    """``str()`` of the key's network, without building it."""
    version, a, prefixlen = key
    if version == 4:
        o = _OCTETS
        return f"{o[a >> 24]}.{o[a >> 16 & 255]}.{o[a >> 8 & 255]}.{o[a & 255]}/{prefixlen}"
    return f"{ipaddress.IPv6Address(a)}/{prefixlen}"


class _Spans:
    """What an ``_Index`` knows of its entries of one IP version whose
    prefix lengths are in ``low .. low + 7``: the first ``low`` bits of
    their addresses, and for each of those lengths the first addresses."""

    __slots__ = ("low", "shift", "tops", "lengths")

    def __init__(self, low: int, bits: int) -> None:
        self.low, self.shift = low, bits - low
        self.tops: set[int] = set()
        self.lengths: list[tuple[int, int, set[int]]] = []  # (length, host bits, first addresses), longest first


class _Index:
    """Entries by key, and what looking for supernets needs: the prefix
    lengths that occur (a handful, not 33 or 129), and for each the first
    addresses, each in a set of integers. The lengths are in spans of 8, each
    with the set of first bits its entries start with: most look-ups test
    a set or two and build a key only on a hit. Entries are added with
    ``set``, and changed or deleted in ``by_key`` directly: addresses and
    lengths are never forgotten, which only costs a useless look-up."""

    def __init__(self, by_key: dict[Key, Entry] | None = None) -> None:
        self.by_key: dict[Key, Entry] = {} if by_key is None else by_key
        self._spans: dict[int, list[_Spans]] | None = None  # by version, longest first; made on first use
        self._starts: dict[tuple[int, int], tuple[set[int], _Spans]] = {}  # by (version, length)

    def _build(self) -> dict[int, list[_Spans]]:
        self._spans = {4: [], 6: []}
        for key in self.by_key:
            if key[2] < _BITS[key[0]]:
                self._add(key)
        return self._spans

    def _add(self, key: Key) -> None:
        version, address, prefixlen = key
        found = self._starts.get((version, prefixlen))
        if found is None:
            found = self._starts[(version, prefixlen)] = self._length(version, prefixlen)
        starts, span = found
        starts.add(address)
        span.tops.add(address >> span.shift)

    def _length(self, version: int, prefixlen: int) -> tuple[set[int], _Spans]:
        """The first addresses of a length not seen before, and its span."""
        spans = self._spans or self._build()
        bits, low = _BITS[version], prefixlen - prefixlen % 8
        span = next((s for s in spans[version] if s.low == low), None)
        if span is None:
            span = _Spans(low, bits)
            spans[version] = sorted([*spans[version], span], key=lambda s: -s.low)
        starts: set[int] = set()
        span.lengths = sorted([*span.lengths, (prefixlen, bits - prefixlen, starts)], key=lambda t: -t[0])
        return starts, span

    def set(self, key: Key, entry: Entry) -> None:
        # A single address is no one's supernet: only its entry is kept.
        if self._spans is not None and key[2] < _BITS[key[0]]:
            self._add(key)
        self.by_key[key] = entry

    def covers(self, key: Key) -> list[Entry]:
        """The entries of strict supernets of ``key``, the most specific first."""
        version, address, prefixlen = key
        out = []
        for span in (self._spans or self._build())[version]:
            if span.low < prefixlen and address >> span.shift in span.tops:
                for p, host_bits, starts in span.lengths:
                    if p < prefixlen:
                        start = address >> host_bits << host_bits
                        if start in starts and (found := self.by_key.get((version, start, p))) is not None:
                            out.append(found)
        return out

    def subnets(self, key: Key) -> list[Key]:
        """The keys of the entries inside ``key``'s network (itself too), in order."""
        version, address, prefixlen = key
        shift = _BITS[version] - prefixlen
        top = address >> shift
        return [k for k in self.by_key if k[0] == version and k[2] >= prefixlen and k[1] >> shift == top]


class Entries(dict[Network, Entry]):
    """Entries by network, with an ``_Index`` of them by key, so that
    supernets are found by integer arithmetic, without building (and
    hashing) network objects."""

    def __init__(self, items: Iterable[tuple[Network, Entry]] = ()) -> None:
        super().__init__()
        self.index = _Index()
        for net, entry in items:
            self[net] = entry

    @classmethod
    def of(cls, index: _Index) -> Entries:
        """The entries of ``index`` (which they take over), in its order."""
        out = cls()
        out.index = index
        entries = index.by_key.values()
        dict.update(out, zip(map(_network_of, entries), entries, strict=True))
        return out

    def __setitem__(self, net: Network, entry: Entry) -> None:
        self.index.set(_key(net), entry)
        super().__setitem__(net, entry)

    def __delitem__(self, net: Network) -> None:
        super().__delitem__(net)
        del self.index.by_key[_key(net)]

    def pop(self, net: Network, *default: Entry) -> Entry:  # type: ignore[override]
        if net in self:
            del self.index.by_key[_key(net)]
        return super().pop(net, *default)

    def popitem(self) -> tuple[Network, Entry]:
        net, entry = super().popitem()
        del self.index.by_key[_key(net)]
        return net, entry

    def clear(self) -> None:
        super().clear()
        self.index.by_key.clear()

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
        return self.index.covers(_key(net))


class EntryView(Mapping[Network, Entry]):
    """A plan's entries by network, read-only, straight from their
    ``_Index``: the same contents and order as ``Entries.of`` gives, without
    hashing a network object for each (looking one up costs its key)."""

    __slots__ = ("index",)

    def __init__(self, index: _Index) -> None:
        self.index = index

    def __getitem__(self, net: Network) -> Entry:
        try:
            return self.index.by_key[_key(net)]
        except (KeyError, AttributeError):  # AttributeError: not a network
            raise KeyError(net) from None

    def __iter__(self) -> Iterator[Network]:
        return map(_network_of, self.index.by_key.values())

    def __len__(self) -> int:
        return len(self.index.by_key)

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def covers(self, net: Network) -> list[Entry]:
        """The entries of strict supernets of ``net``, the most specific first."""
        return self.index.covers(_key(net))


_network_of = attrgetter("network")
_address = itemgetter(1)


def _prefixes(net: Network) -> Iterable[int]:
    """Shorter prefix lengths to try for supernets of ``net``, longest first."""
    return range(net.prefixlen - 1, -1, -1)


def covers_of(entries: Mapping[Network, Entry], net: Network) -> list[Entry]:
    """The entries of strict supernets of ``net``, the most specific first."""
    if isinstance(entries, Entries | EntryView):
        return entries.covers(net)
    return [c for p in _prefixes(net) if (c := entries.get(net.supernet(new_prefix=p))) is not None]


def covering(entries: Mapping[Network, Entry], net: Network) -> Entry | None:
    """The entry of a strict supernet of ``net``, the most specific one."""
    if isinstance(entries, Entries | EntryView):
        found = entries.covers(net)
        return found[0] if found else None
    for prefix in _prefixes(net):
        cover = entries.get(net.supernet(new_prefix=prefix))
        if cover is not None:
            return cover
    return None


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
    entries: _Index,
    key: Key,
    intent: Intent,
    expiry: datetime | None,
    granularity: timedelta,
    metas: dict[_MetaKey, RuleMeta],
) -> bool:
    """Applies a block (to ``key``, ``intent.network``'s); returns False
    when it was already in effect."""
    net = intent.network
    existing = entries.by_key.get(key)
    covers = entries.covers(key) if existing is None else []
    strikes: int = 0
    struck: datetime | None = None
    if intent.escalation is not None and expiry is not None:
        base = existing
        for cover in reversed(covers):  # what the supernets record, folded
            base = cover._replace(network=intent.network) if base is None else _merge_entries(base, cover)
        strikes, struck, expiry = _strike(base, intent.escalation, expiry, granularity)
    wanted = Entry(net, _meta(metas, expiry, intent, strikes, struck), intent.action, intent.preview)
    if existing is None:
        # any supernet may satisfy it, not only the nearest
        if covers and any(_satisfies(cover, _as_claim_on(cover, wanted)) for cover in covers):
            return False
        # The new entry also records the claims its supernets already make on
        # it, so that replaying the same intents finds them satisfied.
        for cover in covers:
            folded = _merge_entries(cover._replace(network=net), wanted)
            if cover.manual and intent.source != MANUAL:
                folded = folded._replace(action=cover.action, preview=cover.preview)
            wanted = folded
        entries.set(key, wanted)
        return True
    merged = _merge_entries(existing, wanted)
    if existing.manual and intent.source != MANUAL:
        # Automation adds its claim but never changes a manual block's rule fields.
        merged = merged._replace(action=existing.action, preview=existing.preview)
    if merged == existing or _hidden_sources_only(existing, merged):
        return False
    entries.by_key[key] = merged
    return True


def _may_hold(meta: RuleMeta, sources: frozenset[str]) -> bool:
    """True when a rule with ``meta`` holds, or may hold, every one of
    ``sources``: a truncated record cannot show more, and the codec never
    drops manual, so only a missing manual claim is certain."""
    return sources <= meta.sources or (meta.truncated and MANUAL not in sources - meta.sources)


def _hidden_sources_only(before: Entry, after: Entry) -> bool:
    """True when ``after`` differs from ``before`` only by sources that
    ``before`` may hold already."""
    return _may_hold(before.meta, after.meta.sources) and after == before._replace(
        meta=replace(before.meta, sources=after.meta.sources)
    )


def _meta(
    metas: dict[_MetaKey, RuleMeta], expiry: datetime | None, intent: Intent, strikes: int = 0, struck: datetime | None = None
) -> RuleMeta:
    """The metadata a block asks for; ``metas`` caches them (immutable):
    most intents of an event ask for the same."""
    asked = (expiry, intent.severity, intent.source, strikes, struck)
    meta = metas.get(asked)
    if meta is None:
        meta = metas[asked] = RuleMeta(expiry, intent.severity, frozenset({intent.source}), strikes=strikes, struck=struck)
    return meta


def _as_claim_on(have: Entry, want: Entry) -> Entry:
    """``want`` as it would merge into ``have``: automation adds its claim to
    a manual block but never changes its rule fields (see ``_block``)."""
    if have.manual and MANUAL not in want.meta.sources:
        return want._replace(action=have.action, preview=have.preview)
    return want


def _satisfies(have: Entry, want: Entry) -> bool:
    return (
        _later(have.meta.expiry, want.meta.expiry) == have.meta.expiry
        and have.meta.severity >= want.meta.severity
        and _may_hold(have.meta, want.meta.sources)
        # a permanent entry keeps no repeat-offender record (see RuleMeta)
        and (have.meta.expiry is None or (
            want.meta.strikes <= have.meta.strikes
            and _latest(have.meta.struck, want.meta.struck) == have.meta.struck))
        # no action check: as in _merge_entries, the entry that lasts at
        # least as long keeps its action
        and (want.preview or not have.preview)
    )


def _extend(entries: _Index, key: Key, intent: Intent, expiry: datetime | None) -> str | None:
    """Moves the expiry of every address ``intent.network`` (``key``) blocks
    later; never earlier. Returns why it could not, or None.

    The blocked addresses are those of the entries inside the network, and
    all of it when a supernet's entry covers it: then the network gets an
    entry of its own (the claims its supernets make on it, extended), and
    the rest of each supernet keeps its expiry."""
    targets = entries.subnets(key)
    if key not in entries.by_key:
        covers = entries.covers(key)
        if not covers and not targets:
            return "not blocked"
        # in effect through a supernet already: no entry of its own
        if covers and not any(
            _later(c.meta.expiry, expiry) == c.meta.expiry and intent.source in c.meta.sources for c in covers
        ):
            own = covers[0]._replace(network=intent.network)
            for cover in covers[1:]:
                own = _merge_entries(own, cover)
            entries.set(key, own)
            targets.append(key)
    for k in targets:
        entry = entries.by_key[k]
        meta = replace(
            entry.meta,
            expiry=_later(entry.meta.expiry, expiry),
            sources=entry.meta.sources | {intent.source},
        )
        entries.by_key[k] = entry._replace(meta=meta)
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
    return entry._replace(meta=replace(entry.meta, sources=left))


def _unblock(entries: _Index, key: Key, intent: Intent) -> None:
    """Withdraws a claim on a network: a manual unblock lifts every block on
    it, another source only its own claim. Entries inside the network lose
    the claim; a broader entry holding the claim is split around the network
    (``address_exclude``), so the outcome is the same whether or not the band
    had aggregated the network with its neighbours. An entry goes when no
    claim is left."""
    net, source = intent.network, intent.source
    by_key = entries.by_key
    for sub in entries.subnets(key):
        kept = _withdraw(by_key[sub], source)
        if kept is None:
            del by_key[sub]
        else:
            by_key[sub] = kept
    for cover in entries.covers(key):
        cover_key = _key(cover.network)
        if by_key.get(cover_key) is not cover:
            continue  # already split
        kept = _withdraw(cover, source)
        if kept is cover:
            continue
        del by_key[cover_key]
        parts = [cover._replace(network=p) for p in cover.network.address_exclude(net)]  # type: ignore[arg-type]
        if kept is not None:
            parts.append(kept._replace(network=net))
        for part in parts:
            part_key = _key(part.network)
            seen = by_key.get(part_key)  # a piece of a narrower cover split before
            entries.set(part_key, part if seen is None else _merge_entries(seen, part))


def apply_intents(
    current: Mapping[Network, Entry],
    intents: Sequence[Intent],
    now: datetime,
    granularity: timedelta,
) -> tuple[dict[Network, Entry], list[tuple[Intent, str]], int]:
    """The live entries after the intents, in order; plus the intents
    refused (with why) and the number already in effect."""
    entries, refused, satisfied = _apply(current, intents, now, granularity)
    return Entries.of(entries), refused, satisfied


def _apply(
    current: Mapping[Network, Entry] | _Index,
    intents: Sequence[Intent],
    now: datetime,
    granularity: timedelta,
) -> tuple[_Index, list[tuple[Intent, str]], int]:
    """``apply_intents``, the entries by key."""
    entries = _Index({k: e for k, e in _index_of(current).by_key.items() if not e.meta.expired(now)})
    by_key = entries.by_key
    # Most intents of an event share an expiry (None: in the past once rounded) and metadata.
    rounded: dict[datetime, datetime | None] = {}
    metas: dict[_MetaKey, RuleMeta] = {}
    refused: list[tuple[Intent, str]] = []
    satisfied = 0
    unblock, block = Verb.UNBLOCK, Verb.BLOCK
    key_of, held, covers, put, host_bits = _key, by_key.__contains__, entries.covers, entries.set, _BITS
    last: tuple[Any, Any, Any, Any] = (object(), None, None, None)  # expiry, severity, source, meta
    for intent in intents:
        verb, key = intent.verb, key_of(intent.network)
        if verb is unblock:
            before = len(by_key), by_key.get(key)
            _unblock(entries, key, intent)
            satisfied += before == (len(by_key), by_key.get(key))
            continue
        expiry: datetime | None
        if intent.permanent:
            if intent.source != MANUAL:
                refused.append((intent, "only manual blocks can be permanent"))
                continue
            expiry = None
        elif intent.expiry is None:
            refused.append((intent, "no expiry"))
            continue
        else:
            expiry = rounded.get(intent.expiry, now)  # now: not seen yet (a rounded expiry is never now)
            if expiry is now:
                up = round_up(intent.expiry, granularity)
                expiry = rounded[intent.expiry] = up if up > now else None
            if expiry is None:
                refused.append((intent, "expiry is in the past"))
                continue
        if verb is block:
            if intent.escalation is None and not held(key) and not covers(key):
                # The usual block, in line: a network nothing blocks yet. Its
                # metadata is most often the previous intent's.
                if expiry is not last[0] or intent.severity is not last[1] or intent.source != last[2]:
                    last = (expiry, intent.severity, intent.source, _meta(metas, expiry, intent))
                entry = Entry(intent.network, last[3], intent.action, intent.preview)
                if key[2] == host_bits[key[0]]:
                    by_key[key] = entry  # a single address is no one's supernet (see _Index.set)
                else:
                    put(key, entry)
            else:
                satisfied += not _block(entries, key, intent, expiry, granularity, metas)
        else:
            why = _extend(entries, key, intent, expiry)
            if why:
                refused.append((intent, why))
    return entries, refused, satisfied


# --------------------------------------------------------------------------
# Packing and priorities


def pack(entries: Iterable[Entry]) -> dict[Group, list[Network]]:
    """Groups entries by metadata and aggregates each group's networks."""
    entries = list(entries)
    network = _networks({_key(e.network): e for e in entries})
    return {g: [network(k) for k in keys] for g, keys in _pack((_key(e.network), e) for e in entries).items()}


def _pack(entries: Iterable[tuple[Key, Entry]]) -> dict[Group, list[Key]]:
    """``pack`` on keys."""
    groups: dict[Group, list[Key]] = {}
    meta: RuleMeta | None = None
    action, preview, keys = "", False, []
    for key, entry in entries:
        # Entries of one rule or one event share their metadata object: the
        # group is looked up (and its metadata hashed) only when it changes.
        if entry.meta is not meta or entry.action != action or entry.preview != preview:
            meta, action, preview = entry.meta, entry.action, entry.preview
            keys = groups.setdefault((meta, action, preview), [])
        keys.append(key)
    return {g: _collapse(keys) for g, keys in groups.items()}


def _networks(entries: Mapping[Key, Entry]) -> Callable[[Key], Network]:
    """Network objects by key: the entries' own, else built once."""
    made: dict[Key, Network] = {}

    def network(key: Key) -> Network:
        entry = entries.get(key)
        if entry is not None:
            return entry.network
        net = made.get(key)
        if net is None:
            net = made[key] = _network(key)
        return net

    return network


def _collapse(keys: Iterable[Key]) -> list[Key]:
    """The same result as ``ipaddress.collapse_addresses`` per IP version
    (the fewest CIDR blocks covering the union, sorted), computed on integer
    intervals. Several times faster on large feeds."""
    keys = list(keys)
    v4 = [k for k in keys if k[0] == 4]
    v6 = [k for k in keys if k[0] == 6] if len(v4) < len(keys) else []
    out: list[Key] = []
    # By first address only: networks that start together are in one run,
    # which gives the same blocks in any order.
    for part, bits in ((sorted(v4, key=_address), 32), (sorted(v6, key=_address), 128)):
        run: Key | None = None  # the first network of a run of overlapping or adjacent ones
        run_end = -2
        merged = False
        for key in part:
            start = key[1]
            end = start + (1 << bits - key[2]) - 1
            if start <= run_end + 1:
                if end > run_end:
                    run_end, merged = end, True
                continue
            if run is not None:
                out.extend(_blocks(run, run_end) if merged else (run,))
            run, run_end, merged = key, end, False
        if run is not None:
            out.extend(_blocks(run, run_end) if merged else (run,))
    return out


def _blocks(first: Key, end: int) -> list[Key]:
    """The CIDR blocks covering ``first``'s start address to ``end``."""
    version, start, _ = first
    bits = _BITS[version]
    blocks: list[Key] = []
    while start <= end:
        size = start & -start if start else 1 << bits
        while size > end - start + 1:
            size >>= 1
        blocks.append((version, start, bits - size.bit_length() + 1))
        start += size
    return blocks


def _chunks(keys: Sequence[Key]) -> list[list[Key]]:
    return [list(keys[i : i + MAX_RANGES_PER_RULE]) for i in range(0, len(keys), MAX_RANGES_PER_RULE)]


class _Priorities:
    """Hands out free priorities of the band in a seeded random order, so
    that concurrent writers seldom pick the same one."""

    def __init__(self, band: BandSettings, used: Iterable[int], seed: int) -> None:
        self.band = band
        self.size = band.size
        self.used = set(used)
        self.rng = random.Random(seed)

    @property
    def free(self) -> int:
        return self.size - len(self.used)

    def take(self) -> int | None:
        free = self.free
        if free <= 0:
            return None
        if free * 4 >= self.size:  # plenty free: sample
            while True:
                candidate = self.rng.randint(self.band.start, self.band.end)
                if candidate not in self.used:
                    break
        else:
            candidates = [p for p in range(self.band.start, self.band.end + 1) if p not in self.used]
            candidate = self.rng.choice(candidates)
        self.used.add(candidate)
        return candidate


def make_rule(priority: int, nets: Sequence[Network], group: Group, tag: str) -> PolicyRule:
    return _rule(priority, [_key(n) for n in nets], group, encode(tag, group[0]))


def _rule(priority: int, keys: Iterable[Key], group: Group, description: str) -> PolicyRule:
    """A rule for the networks of ``keys``, in order; ``description`` is the
    group's metadata encoded (once per group, not per rule)."""
    _, action, preview = group
    ranges = tuple(map(_text, sorted(keys)))
    return PolicyRule(priority=priority, action=action, ranges=ranges, description=description, preview=preview)


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
    current = band._index(now)
    index, refused, satisfied = _apply(current, intents, now, settings.expiry_granularity)
    entries = EntryView(index)
    held, now_held = current.by_key, index.by_key
    if any(k not in now_held for k in held) or any(
        e is not now_held[k] and e != now_held[k] and _weaker(e, now_held[k]) for k, e in held.items()
    ):
        return Plan(entries=entries, refused=tuple(refused), satisfied=satisfied, needs_lease=NEEDS_REMOVAL)
    # New networks aggregate; a network the band already holds is written
    # again as it is, so that reading the band back merges it with its old rule.
    groups = _pack((k, e) for k, e in now_held.items() if k not in held)
    again = [(k, e) for k, e in now_held.items() if (before := held.get(k)) is not None and before is not e and before != e]
    for k, e in again:
        groups.setdefault(e.group, []).append(k)
    priorities = _Priorities(settings, band.used, seed)
    ops: list[Op] = []
    for group, keys in sorted(groups.items(), key=lambda kv: _group_order(kv[0])):
        description = encode(settings.owner_tag, group[0])
        for chunk in _chunks(keys):
            priority = priorities.take()
            if priority is None:
                return Plan(entries=entries, refused=tuple(refused), satisfied=satisfied, needs_lease="the band is full")
            ops.append(Add(_rule(priority, chunk, group, description)))
    return Plan(tuple(ops), entries, tuple(refused), satisfied)


def _index_of(entries: Mapping[Network, Entry] | _Index) -> _Index:
    if isinstance(entries, _Index):
        return entries
    return entries.index if isinstance(entries, Entries | EntryView) else _Index({_key(n): e for n, e in entries.items()})


def _weaker(before: Entry, after: Entry) -> bool:
    """True when ``after`` drops something ``before`` had: a source claim,
    expiry, severity, enforcement or action (only a lease holder can rewrite
    a rule to take it away; an added rule would merge with the old one)."""
    return _merge_entries(before, after) != after


def _group_order(group: Group) -> tuple[int, float, str, str, bool]:
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
    current = band._index(now)
    index, refused, satisfied = _apply(current, intents, now, settings.expiry_granularity)
    expired: tuple[Entry, ...] = ()
    if any(rule.meta.expired(now) for rule in band.rules):
        expired = tuple(e for k, e in band._index().by_key.items() if k not in current.by_key)
    groups = _pack_merged(index.by_key.items())
    if any(representable(settings.owner_tag, g[0]) != g[0] for g in groups):
        # Some metadata has more sources than a description holds: plan for
        # what the rules will read back, or every run would rewrite them.
        fit: dict[RuleMeta, RuleMeta] = {}
        for k, e in index.by_key.items():
            meta = fit.get(e.meta) or fit.setdefault(e.meta, representable(settings.owner_tag, e.meta))
            if meta is not e.meta:
                index.by_key[k] = e._replace(meta=meta)
        groups = _pack_merged(index.by_key.items())
    limit = settings.size - len(band.foreign)
    if capacity is not None:
        limit = min(limit, capacity)
    network = _networks(index.by_key)
    evicted = _evict(groups, limit, network)
    packed: dict[Key, Entry] = {}  # no key is in two groups (_pack_merged)
    known = index.by_key.get
    for g, keys in groups.items():
        meta, action, preview = g
        for k in keys:
            entry = known(k)
            # An entry aggregated with nothing stays as it is (an equal Entry).
            if entry is None or entry.meta is not meta or entry.action != action or entry.preview != preview:
                entry = Entry(network(k), meta, action, preview)
            packed[k] = entry

    by_group: dict[Group, list[BandRule]] = defaultdict(list)
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
        description = encode(settings.owner_tag, group[0])
        want_set = set(wanted) if rules else set()
        holds = {r.priority: [_key(n) for n in r.networks] for r in rules}
        kept = {p: [k for k in keys if k in want_set] for p, keys in holds.items()}
        needed = math.ceil(len(wanted) / MAX_RANGES_PER_RULE)
        if not compact:
            needed = max(needed, sum(1 for held in kept.values() if held))
        ranked = sorted(rules, key=lambda r: (-len(kept[r.priority]), r.priority))
        chosen, dropped = ranked[:needed], ranked[needed:]
        placed = {k for r in chosen for k in kept[r.priority]}
        pool = [k for k in wanted if k not in placed] if placed else wanted
        taken = 0  # pool[:taken] went into chosen rules
        for rule in chosen:
            held = kept[rule.priority]
            room = MAX_RANGES_PER_RULE - len(held)
            final = held + pool[taken : taken + room]
            taken += room
            after = _rule(rule.priority, final, group, description)
            if set(after.ranges) != set(rule.rule.ranges) or after.description != rule.rule.description:
                if set(holds[rule.priority]) <= set(final):
                    grows.append(Patch(after, rule.rule))
                    continue
                # A patch that drops some ranges and takes others could drop a
                # range before the rule taking it over holds it (two rules
                # swapping ranges): first grow to both, then shrink.
                both = list(dict.fromkeys([*holds[rule.priority], *final]))
                gains = len(final) > len(held)
                if gains and len(both) <= MAX_RANGES_PER_RULE:
                    bridge = _rule(rule.priority, both, group, description)
                    grows.append(Patch(bridge, rule.rule))
                    shrinks.append(Patch(after, bridge))
                elif gains and (priority := priorities.take()) is not None:
                    # No room to bridge: the new content goes into a new rule
                    # (added first) and the old rule is removed last.
                    adds.append(Add(_rule(priority, final, group, description)))
                    removes.append(Remove(rule.rule))
                else:  # only drops ranges (their new homes are adds or grows)
                    shrinks.append(Patch(after, rule.rule))
        for chunk in _chunks(pool[taken:]):
            priority = priorities.take()
            if priority is None:  # cannot happen within capacity; stay safe
                refused.extend((i, "the band is full") for i in intents if _key(i.network) in chunk)
                continue
            adds.append(Add(_rule(priority, chunk, group, description)))
        removes.extend(Remove(r.rule) for r in dropped)
    ops = tuple(adds + grows + shrinks + removes)
    return Plan(ops, EntryView(_Index(packed)), tuple(refused), satisfied, expired, evicted)


def _pack_merged(entries: Iterable[tuple[Key, Entry]]) -> dict[Group, list[Key]]:
    """``pack``, repeated until no two groups aggregate to the same network
    (such networks merge into one entry, as reading the band back would)."""
    groups = _pack(entries)
    while True:
        if sum(map(len, groups.values())) == len({k for keys in groups.values() for k in keys}):
            # No network in two groups: merging changes nothing, and packing
            # the same groups again gives the same networks (collapsing is
            # idempotent).
            return groups
        merged: dict[Key, Entry] = {}
        for g, keys in groups.items():
            for k in keys:
                seen = merged.get(k)
                entry = Entry(_network(k), *g)
                merged[k] = entry if seen is None else _merge_entries(seen, entry)
        regrouped = _pack(merged.items())
        if regrouped == groups:
            return groups
        groups = regrouped


def _evict(groups: dict[Group, list[Key]], limit: int, network: Callable[[Key], Network]) -> tuple[Entry, ...]:
    """Removes aggregated networks from ``groups`` until they fit ``limit``
    rules: lowest severity first, then soonest expiry; manual never."""

    def rules_needed() -> int:
        return sum(math.ceil(len(keys) / MAX_RANGES_PER_RULE) for keys in groups.values())

    need = rules_needed()
    if need <= max(limit, 0):
        return ()
    candidates = sorted(
        ((g, k) for g, keys in groups.items() if MANUAL not in g[0].sources for k in keys),
        key=lambda gk: (
            int(gk[0][0].severity),
            math.inf if gk[0][0].expiry is None else gk[0][0].expiry.timestamp(),
            _text(gk[1]),
        ),
    )
    evicted: list[Entry] = []
    for group, key in candidates:
        if need <= limit:
            break
        keys = groups[group]
        before = math.ceil(len(keys) / MAX_RANGES_PER_RULE)
        keys.remove(key)
        need -= before - math.ceil(len(keys) / MAX_RANGES_PER_RULE)
        evicted.append(Entry(network(key), *group))
        if not keys:
            del groups[group]
    return tuple(evicted)
