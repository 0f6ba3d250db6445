"""Aggregation and packing: entries grouped by what they share, each
group's networks aggregated and packed into rules.

Invariant: a group's networks are the fewest CIDR blocks covering exactly
the union of its entries' networks (``ipaddress.collapseaddresses``, per
IP version, sorted), the same in any order of the entries; a rule holds at
most ``MAX_RANGES_PER_RULE`` of them, all of one group. After
``pack_merged`` no network is in two groups (such networks merge, as
reading the band back would). ``evict`` takes networks away only until the
groups fit, lowest severity and soonest expiry first, and never a manual one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from responder.codec import RuleMeta, encode, fits, parts
from responder.model import Network
from responder.planner.entry import MANUAL, Entry, Group, merge
from responder.planner.keys import BITS, Key, address, key_of, text, to_network
from responder.policy import PolicyRule

MAX_RANGES_PER_RULE = 10  # Cloud Armor's limit of source ranges in one rule


def pack(entries: Iterable[Entry]) -> dict[Group, list[Network]]:
    """Groups entries by metadata and aggregates each group's networks."""
    entries = list(entries)
    network = networks_by_key({key_of(e.network): e for e in entries})
    return {g: [network(k) for k in keys] for g, keys in pack_keys((key_of(e.network), e) for e in entries).items()}


def pack_keys(entries: Iterable[tuple[Key, Entry]]) -> dict[Group, list[Key]]:
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
    return {g: collapse(keys) for g, keys in groups.items()}


def networks_by_key(entries: Mapping[Key, Entry]) -> Callable[[Key], Network]:
    """Network objects by key: the entries' own, else built once."""
    made: dict[Key, Network] = {}

    def network(key: Key) -> Network:
        entry = entries.get(key)
        if entry is not None:
            return entry.network
        net = made.get(key)
        if net is None:
            net = made[key] = to_network(key)
        return net

    return network


def collapse(keys: Iterable[Key]) -> list[Key]:
    """The same result as ``ipaddress.collapseaddresses`` per IP version
    (the fewest CIDR blocks covering the union, sorted), computed on integer
    intervals. Several times faster on large feeds."""
    keys = list(keys)
    v4 = [k for k in keys if k[0] == 4]
    v6 = [k for k in keys if k[0] == 6] if len(v4) < len(keys) else []
    out: list[Key] = []
    # By first address only: networks that start together are in one run,
    # which gives the same blocks in any order.
    for part, bits in ((sorted(v4, key=address), 32), (sorted(v6, key=address), 128)):
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
                out.extend(blocks(run, run_end) if merged else (run,))
            run, run_end, merged = key, end, False
        if run is not None:
            out.extend(blocks(run, run_end) if merged else (run,))
    return out


def blocks(first: Key, end: int) -> list[Key]:
    """The CIDR blocks covering ``first``'s start address to ``end``."""
    version, start, _ = first
    bits = BITS[version]
    blocks: list[Key] = []
    while start <= end:
        size = start & -start if start else 1 << bits
        while size > end - start + 1:
            size >>= 1
        blocks.append((version, start, bits - size.bit_length() + 1))
        start += size
    return blocks


def chunks(keys: Sequence[Key]) -> list[list[Key]]:
    return [list(keys[i : i + MAX_RANGES_PER_RULE]) for i in range(0, len(keys), MAX_RANGES_PER_RULE)]




def pack_merged(entries: Iterable[tuple[Key, Entry]]) -> dict[Group, list[Key]]:
    """``pack``, repeated until no two groups aggregate to the same network
    (such networks merge into one entry, as reading the band back would)."""
    groups = pack_keys(entries)
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
                entry = Entry(to_network(k), *g)
                merged[k] = entry if seen is None else merge(seen, entry)
        regrouped = pack_keys(merged.items())
        if regrouped == groups:
            return groups
        groups = regrouped


def split_groups(groups: dict[Group, list[Key]], tag: str) -> dict[Group, list[Key]]:
    """``groups`` with every metadata too long for one description split
    into records that fit (``codec.parts``): the networks of such a group
    are in each of its parts' groups, as they are (never aggregated again:
    each network keeps exactly the entry it had), and reading the band back
    merges the parts into the whole. The only way a network is in two
    groups; a part equal to another group shares its rules."""
    if all(fits(tag, g[0]) for g in groups):
        return groups
    out: dict[Group, list[Key]] = {}
    for (meta, action, preview), keys in groups.items():
        for part in parts(tag, meta):
            held = out.setdefault((part, action, preview), [])
            seen = set(held)
            held.extend(k for k in keys if k not in seen)
    return out


def evict(groups: dict[Group, list[Key]], limit: int, network: Callable[[Key], Network]) -> tuple[Entry, ...]:
    """Removes aggregated networks from ``groups`` until they fit ``limit``
    rules: lowest severity first, then soonest expiry; manual never. A
    network in several groups (the parts of one entry) goes whole."""

    def rules_needed() -> int:
        return sum(math.ceil(len(keys) / MAX_RANGES_PER_RULE) for keys in groups.values())

    need = rules_needed()
    if need <= max(limit, 0):
        return ()
    owners: dict[Key, list[Group]] = {}
    for g, keys in groups.items():
        for k in keys:
            owners.setdefault(k, []).append(g)
    whole: dict[Key, Entry] = {}
    for k, gs in owners.items():
        entry = Entry(network(k), *gs[0])
        for g in gs[1:]:
            entry = merge(entry, Entry(entry.network, *g))
        whole[k] = entry
    candidates = sorted(
        (k for k, e in whole.items() if MANUAL not in e.meta.sources),
        key=lambda k: (
            int(whole[k].meta.severity),
            math.inf if whole[k].meta.expiry is None else whole[k].meta.expiry.timestamp(),  # type: ignore[union-attr]
            text(k),
        ),
    )
    evicted: list[Entry] = []
    for key in candidates:
        if need <= limit:
            break
        for group in owners[key]:
            keys = groups[group]
            before = math.ceil(len(keys) / MAX_RANGES_PER_RULE)
            keys.remove(key)
            need -= before - math.ceil(len(keys) / MAX_RANGES_PER_RULE)
            if not keys:
                del groups[group]
        evicted.append(whole[key])
    return tuple(evicted)


def make_rule(priority: int, nets: Sequence[Network], group: Group, tag: str) -> PolicyRule:
    return build_rule(priority, [key_of(n) for n in nets], group, encode(tag, group[0]))


def build_rule(priority: int, keys: Iterable[Key], group: Group, description: str) -> PolicyRule:
    """A rule for the networks of ``keys``, in order; ``description`` is the
    group's metadata encoded (once per group, not per rule)."""
    _, action, preview = group
    ranges = tuple(map(text, sorted(keys)))
    return PolicyRule(priority=priority, action=action, ranges=ranges, description=description, preview=preview)


