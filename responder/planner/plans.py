"""The two planners: the band and some intents, now -> the operations.

Invariant: a plan's operations, applied in order to the band it was planned
on, leave a band whose entries read back (``Band.entries``) equal
``plan.entries``, and at no point between two operations is an address
unblocked that both the band before and ``plan.entries`` block: coverage is
added before it is taken away. Every rule planned holds at most
``MAX_RANGES_PER_RULE`` ranges of one group at a free priority inside the
band. An append plan only adds rules, and is empty (with ``needs_lease``)
when the intents ask for more; planning again on the band a plan leaves, with
the same intents, plans nothing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from config.settings import BandSettings
from responder.codec import RuleMeta, encode, representable
from responder.model import Intent, Network
from responder.planner.band import Add, Band, BandRule, Op, Patch, Plan, Remove
from responder.planner.entry import Entry, Group, merge, weaker
from responder.planner.index import EntryIndex
from responder.planner.intents import apply, said_by_a_supernet
from responder.planner.keys import Key, key_of
from responder.planner.nogc import gc_paused
from responder.planner.packing import (
    MAX_RANGES_PER_RULE,
    build_rule,
    chunks,
    evict,
    networks_by_key,
    pack_keys,
    pack_merged,
    split_groups,
)
from responder.planner.priorities import Priorities

NEEDS_REMOVAL = "an entry must be removed or narrowed"


@gc_paused
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
    current = band.index(now)
    index, refused, satisfied = apply(current, intents, now, settings.expiry_granularity)
    held, now_held = current.by_key, index.by_key
    for k in index.derived:
        if k not in held and (e := now_held.get(k)) is not None and said_by_a_supernet(index, k, e):
            index.drop(k)
    entries = index.view()
    if any(k not in now_held for k in held) or any(
        e is not now_held[k] and e != now_held[k] and weaker(e, now_held[k]) for k, e in held.items()
    ):
        return Plan(entries=entries, refused=tuple(refused), satisfied=satisfied, needs_lease=NEEDS_REMOVAL)
    # New networks aggregate; a network the band already holds is written
    # again as it is, so that reading the band back merges it with its old rule.
    groups = pack_keys((k, e) for k, e in now_held.items() if k not in held)
    again = [(k, e) for k, e in now_held.items() if (before := held.get(k)) is not None and before is not e and before != e]
    for k, e in again:
        groups.setdefault(e.group, []).append(k)
    groups = split_groups(groups, settings.owner_tag)  # metadata too long for one description: several records
    priorities = Priorities(settings, band.used, seed)
    ops: list[Op] = []
    for group, keys in sorted(groups.items(), key=lambda kv: _group_order(kv[0])):
        description = encode(settings.owner_tag, group[0])
        for chunk in chunks(keys):
            priority = priorities.take()
            if priority is None:
                return Plan(entries=entries, refused=tuple(refused), satisfied=satisfied, needs_lease="the band is full")
            ops.append(Add(build_rule(priority, chunk, group, description)))
    return Plan(tuple(ops), entries, tuple(refused), satisfied)


@gc_paused
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
    current = band.index(now)
    index, refused, satisfied = apply(current, intents, now, settings.expiry_granularity)
    expired: tuple[Entry, ...] = ()
    if any(rule.meta.expired(now) for rule in band.rules):
        expired = tuple(e for k, e in band.index().by_key.items() if not current.holds(k))
    if any(rule.meta.truncated for rule in band.rules):
        # Rules written truncated (before per-source claims): plan their
        # entries as such a rule reads back, or every run would rewrite them.
        fit: dict[RuleMeta, RuleMeta] = {}
        for k, e in list(index.by_key.items()):
            if e.meta.truncated:
                meta = fit.get(e.meta) or fit.setdefault(e.meta, representable(settings.owner_tag, e.meta))
                if meta is not e.meta:
                    index.put(k, e._replace(meta=meta))
    merged = pack_merged(index.by_key.items())
    # Metadata too long for one description is written as several records
    # that read back merged (``codec.parts``): such networks are in two groups.
    groups = split_groups(merged, settings.owner_tag)
    split = groups is not merged
    limit = settings.size - len(band.foreign)
    if capacity is not None:
        limit = min(limit, capacity)
    network = networks_by_key(index.by_key)
    evicted = evict(groups, limit, network)
    packed: dict[Key, Entry] = {}  # a key is in two groups only when split
    known = index.by_key.get
    for g, keys in groups.items():
        meta, action, preview = g
        for k in keys:
            entry = known(k)
            # An entry aggregated with nothing stays as it is (an equal Entry).
            if entry is None or entry.meta is not meta or entry.action != action or entry.preview != preview:
                entry = Entry(network(k), meta, action, preview)
            if split and (seen := packed.get(k)) is not None:
                entry = merge(seen, entry)  # the parts of one entry, merged as reading back merges them
            packed[k] = entry

    by_group: dict[Group, list[BandRule]] = defaultdict(list)
    for rule in band.rules:
        by_group[rule.group].append(rule)
    priorities = Priorities(settings, band.used, seed)
    adds: list[Op] = []
    grows: list[Op] = []
    shrinks: list[Op] = []
    removes: list[Op] = []
    for group in sorted(set(groups) | set(by_group), key=_group_order):
        wanted = groups.get(group, [])
        rules = by_group.get(group, [])
        description = encode(settings.owner_tag, group[0])
        want_set = set(wanted) if rules else set()
        holds = {r.priority: [key_of(n) for n in r.networks] for r in rules}
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
            after = build_rule(rule.priority, final, group, description)
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
                    bridge = build_rule(rule.priority, both, group, description)
                    grows.append(Patch(bridge, rule.rule))
                    shrinks.append(Patch(after, bridge))
                elif gains and (priority := priorities.take()) is not None:
                    # No room to bridge: the new content goes into a new rule
                    # (added first) and the old rule is removed last.
                    adds.append(Add(build_rule(priority, final, group, description)))
                    removes.append(Remove(rule.rule))
                else:  # only drops ranges (their new homes are adds or grows)
                    shrinks.append(Patch(after, rule.rule))
        for chunk in chunks(pool[taken:]):
            priority = priorities.take()
            if priority is None:  # cannot happen within capacity; stay safe
                refused.extend((i, "the band is full") for i in intents if key_of(i.network) in chunk)
                continue
            adds.append(Add(build_rule(priority, chunk, group, description)))
        removes.extend(Remove(r.rule) for r in dropped)
    ops = tuple(adds + grows + shrinks + removes)
    return Plan(ops, EntryIndex(packed).view(), tuple(refused), satisfied, expired, evicted)


def within_quota(plan: Plan, band: Band, gone: Collection[int] = ()) -> Plan:
    """``plan`` for a band at the project's rule quota, where no add lands
    before a removal frees a rule (``gone``: the band's rules already
    removed). Each add takes over, by one patch, a rule the plan removes
    whose other ranges are held by then (after the grows, by other rules)
    or blocked by nothing the plan leaves: no address that the band and the
    plan both block is unblocked in between. An add that finds no such rule
    stays an add. Order: grows, take-overs, adds, shrinks, removals."""
    adds = [op for op in plan.ops if isinstance(op, Add)]
    removes = [op for op in plan.ops if isinstance(op, Remove) and op.before.priority not in gone]
    if not adds or not removes:
        return plan
    patches = [op for op in plan.ops if isinstance(op, Patch)]
    grows = [op for op in patches if set(op.rule.ranges) >= set(op.before.ranges)]
    shrinks = [op for op in patches if op not in grows]
    held = {r.priority: r.networks for r in band.rules if r.priority not in gone}
    for op in grows:
        held[op.rule.priority] = tuple(ipaddress.ip_network(n) for n in op.rule.ranges)
    blocked = list(plan.entries)

    def still_blocked(n: Network) -> bool:
        return any(b.version == n.version and b.overlaps(n) for b in blocked)

    def covered(n: Network, by: Mapping[int, tuple[Network, ...]]) -> bool:
        return any(m.version == n.version and n.subnet_of(m) for ms in by.values() for m in ms)  # type: ignore[arg-type]

    taken: list[Op] = []
    left: list[Op] = []
    free = list(removes)
    for add in adds:
        for remove in free:
            priority = remove.before.priority
            after = dict(held)
            after[priority] = tuple(ipaddress.ip_network(n) for n in add.rule.ranges)
            if all(covered(n, after) or not still_blocked(n) for n in held[priority]):
                taken.append(Patch(dataclasses.replace(add.rule, priority=priority), remove.before))
                held = after
                free.remove(remove)
                break
        else:
            left.append(add)
    if not taken:
        return plan
    return dataclasses.replace(plan, ops=(*grows, *taken, *left, *shrinks, *free))


def _group_order(group: Group) -> tuple[int, float, str, str, bool]:
    """Groups in the order their rules are planned: most severe first, then
    the longest lasting."""
    meta, action, preview = group
    expiry = math.inf if meta.expiry is None else meta.expiry.timestamp()
    return (-int(meta.severity), -expiry, ",".join(sorted(meta.sources)), action, preview)
