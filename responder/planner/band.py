"""The band as read from a policy, and the plan types: what the planner
reads and what it returns.

Invariant: reading loses nothing and invents nothing. Every rule inside the
band's priorities is either ours (a description of our tag, no expression,
1 to ``MAX_RANGES_PER_RULE`` ranges, each a strict network), decoded into a
``BandRule``, or foreign and kept as it is; ``used`` holds every priority
taken, ours or not. ``Band.entries`` is the band's meaning: one entry per
network, the ``merge`` of every rule that holds it (in priority order),
whatever rules happen to hold it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from config.settings import BandSettings
from responder.codec import RuleMeta, decode, decode_group
from responder.model import Intent, Network
from responder.planner.entry import Entry, Group, merge
from responder.planner.index import EntryIndex, EntryView
from responder.planner.keys import key_of, text, to_network
from responder.planner.nogc import gc_paused
from responder.planner.packing import MAX_RANGES_PER_RULE
from responder.policy import PolicyRule


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

    def entries(self, now: datetime | None = None) -> EntryView:
        """One entry per network, read-only; a network held by several rules
        merges (each source's latest expiry and highest severity, enforced
        over preview). With ``now``, expired entries and claims are left out."""
        return self.index(now).view()

    def index(self, now: datetime | None = None) -> EntryIndex:
        """``entries``, in a new index by key (the caller's own)."""
        index = EntryIndex()
        get, put = index.get, index.put
        for rule in sorted(self.rules, key=lambda r: r.priority):
            meta = rule.meta
            if now is not None:
                live = meta.live(now)  # without the claims that have ended
                if live is None:
                    continue
                meta = live
            for net in rule.networks:
                entry = Entry(net, meta, rule.action, rule.preview)
                k = key_of(net)
                seen = get(k)
                put(k, entry if seen is None else merge(seen, entry))
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


@gc_paused
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


def _parse(range_text: str) -> Network:
    """``ipaddress.ip_network(range_text, strict=True)``. An IPv4 range
    written as ``keys.text`` writes it (as ours are) is built from its
    integers, three times faster; anything else goes to ``ip_network``."""
    address, _, prefix = range_text.partition("/")
    try:
        k = (4, int.from_bytes(socket.inet_aton(address)), int(prefix))
    except (OSError, ValueError):
        return ipaddress.ip_network(range_text, strict=True)
    first, length = k[1], k[2]
    if text(k) != range_text or not 0 <= length <= 32 or first & ((1 << 32 - length) - 1):
        # inet_aton and int take more spellings than ip_network, and a key
        # must be a strict network: ip_network parses it, or says why not
        return ipaddress.ip_network(range_text, strict=True)
    return to_network(k)
