"""The range index: entries by network, and the supernets of a network found
by integer arithmetic, without building (and hashing) network objects.

Invariant: an ``EntryIndex`` is the one owner of its entries and of what
finding supernets needs; it changes only through ``put`` and ``drop``, which
keep both in step (``put_address``, for single addresses, which no look-up
of supernets needs, is ``put`` without a Python call). Every key it holds whose prefix is shorter than a single
address's is registered in its spans (once they are built), so
``covering(k)`` finds every held strict supernet of ``k``. The spans may
still name keys dropped since (a look-up there finds nothing), never miss a
held one. What others get to read is read-only: ``by_key`` (by key, read-only by
its type) and ``EntryView`` (by network).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from operator import attrgetter

from responder.model import Network
from responder.planner.entry import Entry
from responder.planner.keys import BITS, Key, key_of

_network_of: Callable[[Entry], Network] = attrgetter("network")


class _Spans:
    """What an ``EntryIndex`` knows of its entries of one IP version whose
    prefix lengths are in ``low .. low + 7``: the first ``low`` bits of
    their addresses, and for each of those lengths the first addresses."""

    __slots__ = ("low", "shift", "tops", "lengths")

    def __init__(self, low: int, bits: int) -> None:
        self.low, self.shift = low, bits - low
        self.tops: set[int] = set()
        self.lengths: list[tuple[int, int, set[int]]] = []  # (length, host bits, first addresses), longest first


class EntryIndex:
    """Entries by key, and what looking for supernets needs: the prefix
    lengths that occur (a handful, not 33 or 129), and for each the first
    addresses, each in a set of integers. The lengths are in spans of 8, each
    with the set of first bits its entries start with: most look-ups test
    a set or two and build a key only on a hit. The spans are made on the
    first look-up for supernets; a single address is no one's supernet, so
    only its entry is kept."""

    __slots__ = ("_entries", "_spans", "_starts", "by_key", "derived", "get", "holds", "put_address")

    by_key: Mapping[Key, Entry]
    """The entries by key, in the order they were first put: read-only by
    its type (mypy, strict on this package, refuses a write through it). It
    is the dict itself, not a ``MappingProxyType``, whose ``get`` looks the
    method up on every call: the plans read it in their hottest loops."""
    get: Callable[[Key], Entry | None]
    """The entry of a key, or None (the mapping's own ``get``: a C call)."""
    holds: Callable[[Key], bool]
    """True when the index holds an entry of exactly that key."""
    put_address: Callable[[Key, Entry], None]
    """``put`` for the key of a single address only: no one's supernet, so
    nothing to register (the mapping's own item assignment: the planner's
    most frequent write, without a Python call)."""

    def __init__(self, entries: dict[Key, Entry] | None = None) -> None:
        """An index of ``entries``, which it takes over: the caller must
        keep no other reference to that dict."""
        self._entries: dict[Key, Entry] = {} if entries is None else entries
        self._spans: dict[int, list[_Spans]] | None = None  # by version, longest first; made on first use
        self._starts: dict[tuple[int, int], tuple[set[int], _Spans]] = {}  # by (version, length)
        self.by_key = self._entries
        self.derived: set[Key] = set()
        """Keys whose entry a block made from its supernets' (their claims
        on the network, plus its own): what an append plan checks for a
        copy that says nothing the supernets do not."""
        self.get = self._entries.get
        self.holds = self._entries.__contains__
        self.put_address = self._entries.__setitem__

    @classmethod
    def live_copy(cls, entries: Mapping[Network, Entry] | EntryIndex, now: datetime) -> EntryIndex:
        """A new index of the entries not expired at ``now``, in their order
        (``entries`` is left as it is)."""
        if isinstance(entries, EntryView):
            entries = entries._index
        if isinstance(entries, EntryIndex):
            return cls({k: e for k, e in entries._entries.items() if not e.meta.expired(now)})
        # A mapping may hold claims that have ended (an index from
        # ``Band.index(now)`` holds none): they go too.
        out = {}
        for n, e in entries.items():
            meta = e.meta.live(now)
            if meta is not None:
                out[key_of(n)] = e if meta is e.meta else e._replace(meta=meta)
        return cls(out)

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, k: Key, entry: Entry) -> None:
        """Holds ``entry`` as the entry of ``k`` (new, or in place of the old one)."""
        if self._spans is not None and k[2] < BITS[k[0]]:
            self._register(k)
        self._entries[k] = entry

    def drop(self, k: Key) -> None:
        """Forgets the entry of ``k`` (which must be held); its spans keep
        the key, which only costs a useless look-up."""
        del self._entries[k]

    def covering(self, k: Key) -> list[Entry]:
        """The entries of strict supernets of ``k``, the most specific first."""
        version, first, prefixlen = k
        out = []
        get = self._entries.get
        for span in (self._spans or self._build())[version]:
            if span.low < prefixlen and first >> span.shift in span.tops:
                for p, host_bits, starts in span.lengths:
                    if p < prefixlen:
                        start = first >> host_bits << host_bits
                        if start in starts and (found := get((version, start, p))) is not None:
                            out.append(found)
        return out

    def inside(self, k: Key) -> list[Key]:
        """The keys of the entries inside ``k``'s network (itself too), in order."""
        version, first, prefixlen = k
        shift = BITS[version] - prefixlen
        top = first >> shift
        return [h for h in self._entries if h[0] == version and h[2] >= prefixlen and h[1] >> shift == top]

    def view(self) -> EntryView:
        """The entries by network, read-only."""
        return EntryView(self)

    def _build(self) -> dict[int, list[_Spans]]:
        self._spans = {4: [], 6: []}
        for k in self._entries:
            if k[2] < BITS[k[0]]:
                self._register(k)
        return self._spans

    def _register(self, k: Key) -> None:
        version, first, prefixlen = k
        found = self._starts.get((version, prefixlen))
        if found is None:
            found = self._starts[(version, prefixlen)] = self._length(version, prefixlen)
        starts, span = found
        starts.add(first)
        span.tops.add(first >> span.shift)

    def _length(self, version: int, prefixlen: int) -> tuple[set[int], _Spans]:
        """The first addresses of a length not seen before, and its span."""
        spans = self._spans or self._build()
        bits, low = BITS[version], prefixlen - prefixlen % 8
        span = next((s for s in spans[version] if s.low == low), None)
        if span is None:
            span = _Spans(low, bits)
            spans[version] = sorted([*spans[version], span], key=lambda s: -s.low)
        starts: set[int] = set()
        span.lengths = sorted([*span.lengths, (prefixlen, bits - prefixlen, starts)], key=lambda t: -t[0])
        return starts, span


class EntryView(Mapping[Network, Entry]):
    """An ``EntryIndex``'s entries by network, read-only, straight from the
    index: in its order, without hashing a network object for each
    (looking one up costs its key)."""

    __slots__ = ("_index",)

    def __init__(self, index: EntryIndex) -> None:
        self._index = index

    def __getitem__(self, net: Network) -> Entry:
        try:
            return self._index._entries[key_of(net)]
        except (KeyError, AttributeError):  # AttributeError: not a network
            raise KeyError(net) from None

    def __iter__(self) -> Iterator[Network]:
        return map(_network_of, self._index._entries.values())

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def covering(self, net: Network) -> list[Entry]:
        """The entries of strict supernets of ``net``, the most specific first."""
        return self._index.covering(key_of(net))


def covers_of(entries: Mapping[Network, Entry], net: Network) -> list[Entry]:
    """The entries of strict supernets of ``net``, the most specific first."""
    if isinstance(entries, EntryView):
        return entries.covering(net)
    supernets = (net.supernet(new_prefix=p) for p in range(net.prefixlen - 1, -1, -1))
    return [c for s in supernets if (c := entries.get(s)) is not None]


def covering(entries: Mapping[Network, Entry], net: Network) -> Entry | None:
    """The entry of a strict supernet of ``net``, the most specific one."""
    if isinstance(entries, EntryView):
        found = entries.covering(net)
        return found[0] if found else None
    for prefix in range(net.prefixlen - 1, -1, -1):
        cover = entries.get(net.supernet(new_prefix=prefix))
        if cover is not None:
            return cover
    return None
