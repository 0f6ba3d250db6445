"""Unit tests of the band planner (responder.planner)."""
from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import timedelta

import pytest
from bandkit import (
    BAND,
    NOW,
    TAG,
    apply,
    apply_op,
    at,
    block,
    blocked,
    by_priority,
    covered,
    extend,
    foreign_rule,
    meta,
    net,
    our_rule,
    rule_pairs,
    unblock,
)

from responder.codec import decode
from responder.model import Severity
from responder.planner import Add, Patch, Remove, plan_append, plan_reconcile, read_band, within_quota
from responder.policy import PolicyRule

T1 = at(60)   # 13:00, on the 15-minute grid
T2 = at(120)  # 14:00


def hosts(first: str, count: int, step: int = 2) -> list[str]:
    """``count`` non-adjacent /32s, so that none aggregate."""
    base = int(ipaddress.ip_address(first))
    return [f"{ipaddress.ip_address(base + i * step)}/32" for i in range(count)]


def ranges_of(plan) -> list[tuple[str, ...]]:
    return [op.rule.ranges for op in plan.ops]


def band_rules(rules) -> list[PolicyRule]:
    return sorted(read_band(rules.values(), BAND).rules, key=lambda r: r.priority)


# --------------------------------------------------------------------------
# read_band


def test_read_band_splits_ours_from_foreign():
    ours = our_rule(1001, ["192.0.2.0/24"], T1)
    foreign = foreign_rule(1002)
    wrong_tag = our_rule(1003, ["198.51.100.0/24"], T1, tag="car2")

    band = read_band([ours, foreign, wrong_tag], BAND)

    assert [1001] == [r.priority for r in band.rules]
    assert [foreign, wrong_tag] == list(band.foreign)


def test_read_band_treats_an_advanced_rule_with_our_tag_as_foreign():
    cel = replace(our_rule(1001, [], T1), expression="inIpRange(origin.ip, '192.0.2.0/24')")

    band = read_band([cel], BAND)

    assert ((), (cel,)) == (band.rules, band.foreign)


def test_read_band_ignores_rules_outside_the_band():
    below = our_rule(BAND.start - 1, ["192.0.2.0/24"], T1)
    above = our_rule(BAND.end + 1, ["192.0.2.0/24"], T1)

    band = read_band([below, above], BAND)

    assert ((), (), frozenset()) == (band.rules, band.foreign, band.used)


def test_read_band_records_every_used_priority_of_the_band():
    band = read_band([our_rule(1001, ["192.0.2.0/24"], T1), foreign_rule(1002), foreign_rule(5)], BAND)

    assert frozenset({1001, 1002}) == band.used


def test_no_plan_touches_a_foreign_rule_in_the_band():
    foreign = foreign_rule(1002, ["192.0.2.0/24"], "car1 x=never v=h s=manual+broken desc")
    rules = by_priority([foreign, our_rule(1001, ["192.0.2.0/25"], at(-15)), our_rule(1003, ["192.0.2.0/26"], T1)])
    intents = [block("192.0.2.0/24", expiry=T2), unblock("192.0.2.0/26")]

    plan = plan_reconcile(read_band(rules.values(), BAND), intents, NOW, BAND)

    assert 1002 not in {op.before.priority if isinstance(op, Remove) else op.rule.priority for op in plan.ops}



@pytest.mark.parametrize("text", [
    "192.0.2.0/24", "192.0.2.7/32", "0.0.0.0/0", "192.0.2.7", "192.0.2.7/24", "192.0.2.7/33", "192.0.2.7/-1",
    "192.0.2.7/032", "192.0.2.7/+32", "192.0.2.7/ 32", "192.0.02.7/32", "192.0.2/24", "0xc0.0.2.7/32",
    "192.0.2.7 x/32", "192.0.2.0/255.255.255.0", "2001:db8::/32", "2001:DB8::/32", "192.0.2.7/32/1", "",
])
def test_read_band_reads_a_range_as_ip_network_strict_does(text):
    try:
        want = (ipaddress.ip_network(text, strict=True),)
    except ValueError:
        want = None

    band = read_band([our_rule(1001, [text], T1)], BAND)

    assert want == (band.rules[0].networks if band.rules else None)


# --------------------------------------------------------------------------
# Aggregation and packing


def test_adjacent_networks_of_one_group_aggregate():
    plan = plan_append(read_band([], BAND), [block("192.0.2.0/25", expiry=T1), block("192.0.2.128/25", expiry=T1)], NOW, BAND)

    assert [("192.0.2.0/24",)] == ranges_of(plan)


@pytest.mark.parametrize(
    "second",
    [
        {"expiry": T2},
        {"severity": Severity.HIGH},
        {"source": "spamhaus"},
        {"action": "deny(404)"},
        {"preview": True},
    ],
    ids=["expiry", "severity", "sources", "action", "preview"],
)
def test_adjacent_networks_of_different_groups_do_not_aggregate(second):
    first = block("192.0.2.0/25", expiry=T1)
    other = block("192.0.2.128/25", **{"expiry": T1, **second})

    plan = plan_append(read_band([], BAND), [first, other], NOW, BAND)

    assert [("192.0.2.0/25",), ("192.0.2.128/25",)] == sorted(ranges_of(plan))


def test_a_group_packs_ten_ranges_to_a_rule():
    intents = [block(h, expiry=T1) for h in hosts("192.0.2.1", 25)]

    plan = plan_append(read_band([], BAND), intents, NOW, BAND)

    assert [10, 10, 5] == [len(r) for r in ranges_of(plan)]


def test_expiry_is_rounded_up_to_the_granularity():
    plan = plan_append(read_band([], BAND), [block("192.0.2.1/32", expiry=at(1))], NOW, BAND)

    assert at(15) == decode(TAG, plan.ops[0].rule.description).expiry


def test_an_expiry_on_the_grid_is_kept():
    plan = plan_append(read_band([], BAND), [block("192.0.2.1/32", expiry=T1)], NOW, BAND)

    assert T1 == decode(TAG, plan.ops[0].rule.description).expiry


# --------------------------------------------------------------------------
# Re-sightings, cover, refusals


def test_a_resighting_with_a_later_expiry_adds_one_rule_with_merged_metadata():
    rules = [our_rule(1001, ["192.0.2.0/24"], T1, sources=("feed",))]

    plan = plan_append(read_band(rules, BAND), [block("192.0.2.0/24", "spamhaus", T2)], NOW, BAND)

    assert 1 == len(plan.ops)
    assert isinstance(plan.ops[0], Add)
    assert ("192.0.2.0/24",) == plan.ops[0].rule.ranges
    # one entry, each source's own claim: feed's ends at T1
    merged = replace(meta(T2, sources=("feed", "spamhaus")), claims=(("feed", T1, Severity.MEDIUM),))
    assert merged == decode(TAG, plan.ops[0].rule.description)
    assert (T1, Severity.MEDIUM) == merged.claim("feed") and (T2, Severity.MEDIUM) == merged.claim("spamhaus")


def test_a_resighting_with_an_earlier_expiry_never_shortens():
    rules = [our_rule(1001, ["192.0.2.0/24"], T2, sources=("feed",))]

    plan = plan_append(read_band(rules, BAND), [block("192.0.2.0/24", "spamhaus", T1)], NOW, BAND)

    merged = replace(meta(T2, sources=("feed", "spamhaus")), claims=(("spamhaus", T1, Severity.MEDIUM),))
    assert merged == decode(TAG, plan.ops[0].rule.description)
    assert T2 == read_band(apply(by_priority(rules), plan).values(), BAND).entries(NOW)[net("192.0.2.0/24")].meta.expiry


def test_an_already_blocked_range_needs_no_op_and_counts_as_satisfied():
    rules = [our_rule(1001, ["192.0.2.0/24"], T2, sources=("feed",))]

    plan = plan_append(read_band(rules, BAND), [block("192.0.2.0/24", "feed", T1)], NOW, BAND)

    assert ((), 1) == (plan.ops, plan.satisfied)


def test_a_range_covered_by_a_supernet_entry_needs_no_op():
    rules = [our_rule(1001, ["192.0.2.0/24"], T2, sources=("feed",))]

    plan = plan_append(read_band(rules, BAND), [block("192.0.2.77/32", "feed", T1)], NOW, BAND)

    assert ((), 1) == (plan.ops, plan.satisfied)


def test_a_range_covered_by_a_broader_but_not_the_nearest_supernet_needs_no_op():
    rules = [our_rule(1001, ["192.0.2.0/25"], T1, sources=("log",)), our_rule(1002, ["192.0.2.0/24"], T2, sources=("feed",))]

    plan = plan_append(read_band(rules, BAND), [block("192.0.2.77/32", "feed", T1)], NOW, BAND)

    assert () == plan.ops


def test_only_manual_blocks_can_be_permanent():
    intents = [block("192.0.2.1/32", "feed", permanent=True), block("192.0.2.3/32", "manual", permanent=True)]

    plan = plan_append(read_band([], BAND), intents, NOW, BAND)

    assert [intents[0]] == [i for i, _ in plan.refused]
    assert [None] == [decode(TAG, op.rule.description).expiry for op in plan.ops]


def test_an_expiry_in_the_past_is_refused():
    plan = plan_append(read_band([], BAND), [block("192.0.2.1/32", expiry=at(-1))], NOW, BAND)

    assert ((), 1) == (plan.ops, len(plan.refused))


def test_extending_an_unblocked_range_is_refused():
    plan = plan_append(read_band([], BAND), [extend("192.0.2.1/32", expiry=T1)], NOW, BAND)

    assert ((), 1) == (plan.ops, len(plan.refused))


def test_extend_moves_the_expiry_later():
    rules = [our_rule(1001, ["192.0.2.0/24"], T1, sources=("feed",))]

    plan = plan_append(read_band(rules, BAND), [extend("192.0.2.0/24", "feed", T2)], NOW, BAND)

    assert [T2] == [decode(TAG, op.rule.description).expiry for op in plan.ops]


def test_extend_never_shortens():
    rules = [our_rule(1001, ["192.0.2.0/24"], T2, sources=("feed",))]

    plan = plan_append(read_band(rules, BAND), [extend("192.0.2.0/24", "feed", T1)], NOW, BAND)

    assert () == plan.ops
    assert T2 == plan.entries[net("192.0.2.0/24")].meta.expiry


def test_a_second_extend_in_the_same_expiry_bucket_plans_no_mutation():
    # Bans that follow traffic: every deny of one bucket asks for an expiry that rounds to the one already written.
    rules = [our_rule(1001, ["192.0.2.7/32"], T2, sources=("cloud-armor-waf",))]

    plan = plan_append(read_band(rules, BAND), [extend("192.0.2.7/32", "cloud-armor-waf", T2 - timedelta(minutes=7))],
                       NOW, BAND)

    assert ((), ()) == (plan.ops, plan.refused)


# --------------------------------------------------------------------------
# Unblocks


def test_a_manual_unblock_of_a_host_splits_the_covering_range():
    rules = by_priority([our_rule(1001, ["192.0.2.0/24"], T1)])

    plan = plan_reconcile(read_band(rules.values(), BAND), [unblock("192.0.2.77/32")], NOW, BAND)
    after = apply(rules, plan)

    expected = tuple(ipaddress.ip_network("192.0.2.0/24").address_exclude(net("192.0.2.77/32")))
    assert {T1: tuple(sorted(expected))} == blocked(after, NOW)


def test_a_manual_unblock_lifts_every_block_inside_the_network():
    rules = by_priority([our_rule(1001, ["192.0.2.0/26", "198.51.100.0/24"], T1, sources=("feed",)),
                         our_rule(1002, ["192.0.2.128/25"], T2, sources=("log",))])

    plan = plan_reconcile(read_band(rules.values(), BAND), [unblock("192.0.2.0/24")], NOW, BAND)
    after = apply(rules, plan)

    assert {T1: (net("198.51.100.0/24"),)} == blocked(after, NOW)


def test_a_non_manual_unblock_only_withdraws_that_sources_claim():
    rules = by_priority([our_rule(1001, ["192.0.2.0/24"], T1, sources=("feed", "spamhaus"))])

    plan = plan_reconcile(read_band(rules.values(), BAND), [unblock("192.0.2.0/24", "feed")], NOW, BAND)
    after = apply(rules, plan)

    assert [(("192.0.2.0/24",), meta(T1, sources=("spamhaus",)))] == [(r.rule.ranges, r.meta) for r in band_rules(after)]


def test_a_non_manual_unblock_of_the_last_claim_removes_the_entry():
    rules = by_priority([our_rule(1001, ["192.0.2.0/24"], T1, sources=("feed",))])

    plan = plan_reconcile(read_band(rules.values(), BAND), [unblock("192.0.2.0/24", "feed")], NOW, BAND)

    assert [Remove(rules[1001])] == list(plan.ops)


def test_a_non_manual_unblock_leaves_a_covering_block_of_other_sources_alone():
    rules = by_priority([our_rule(1001, ["192.0.2.0/24"], T1, sources=("spamhaus",))])

    plan = plan_reconcile(read_band(rules.values(), BAND), [unblock("192.0.2.77/32", "feed")], NOW, BAND)

    assert () == plan.ops


def test_a_source_withdrawing_part_of_its_aggregated_block_splits_it():
    # The feed listed two /25s, which the band aggregated to a /24; the feed
    # now revokes one /25: the other stays blocked, as if never aggregated.
    rules = by_priority([our_rule(1001, ["192.0.2.0/24"], T1, sources=("feed",))])

    plan = plan_reconcile(read_band(rules.values(), BAND), [unblock("192.0.2.128/25", "feed")], NOW, BAND)

    assert ["192.0.2.0/25"] == [str(n) for n in plan.entries]
    assert ("192.0.2.0/25",) == apply(rules, plan)[1001].ranges


def test_a_source_withdrawing_part_of_a_shared_block_keeps_the_other_claims():
    rules = by_priority([our_rule(1001, ["192.0.2.0/24"], T1, sources=("feed", "spamhaus"))])

    plan = plan_reconcile(read_band(rules.values(), BAND), [unblock("192.0.2.128/25", "feed")], NOW, BAND)

    claims = {str(n): sorted(e.meta.sources) for n, e in plan.entries.items()}
    assert {"192.0.2.0/25": ["feed", "spamhaus"], "192.0.2.128/25": ["spamhaus"]} == claims


def test_an_append_with_an_unblock_needs_the_lease_and_has_no_ops():
    rules = [our_rule(1001, ["192.0.2.0/24"], T1)]

    plan = plan_append(read_band(rules, BAND), [block("198.51.100.0/24", expiry=T1), unblock("192.0.2.0/24")], NOW, BAND)

    assert () == plan.ops
    assert plan.needs_lease


def test_an_append_that_would_lift_a_permanent_block_needs_the_lease():
    rules = [our_rule(1001, ["192.0.2.0/24"], None, sources=("manual",))]
    intents = [unblock("192.0.2.0/24"), block("192.0.2.0/24", "manual", T1)]

    plan = plan_append(read_band(rules, BAND), intents, NOW, BAND)

    assert () == plan.ops
    assert plan.needs_lease


# --------------------------------------------------------------------------
# Reconcile: expiry, compaction, order, eviction


def test_reconcile_removes_expired_rules_and_lists_their_entries():
    rules = by_priority([our_rule(1001, ["192.0.2.0/24"], at(-15)), our_rule(1002, ["198.51.100.0/24"], T1)])

    plan = plan_reconcile(read_band(rules.values(), BAND), [], NOW, BAND)

    assert [Remove(rules[1001])] == list(plan.ops)
    assert [net("192.0.2.0/24")] == [e.network for e in plan.expired]


def test_reconcile_compacts_partly_filled_rules_of_one_group():
    chunks = [hosts("192.0.2.1", 4), hosts("198.51.100.1", 4), hosts("203.0.113.1", 4)]
    rules = by_priority(our_rule(1001 + i, chunk, T1) for i, chunk in enumerate(chunks))

    plan = plan_reconcile(read_band(rules.values(), BAND), [], NOW, BAND, compact=True)
    after = apply(rules, plan)

    assert 2 == len(band_rules(after))  # ceil(12 / 10)
    assert blocked(rules, NOW) == blocked(after, NOW)


def test_reconcile_without_compact_leaves_partly_filled_rules():
    chunks = [hosts("192.0.2.1", 4), hosts("198.51.100.1", 4), hosts("203.0.113.1", 4)]
    rules = by_priority(our_rule(1001 + i, chunk, T1) for i, chunk in enumerate(chunks))

    plan = plan_reconcile(read_band(rules.values(), BAND), [], NOW, BAND, compact=False)

    assert () == plan.ops


def _kind(op) -> int:
    if isinstance(op, Add):
        return 0
    if isinstance(op, Patch):
        return 1 if set(op.before.ranges) <= set(op.rule.ranges) else 2
    return 3


def test_reconcile_orders_adds_then_growing_then_shrinking_patches_then_removes():
    rules = by_priority([
        our_rule(1001, hosts("192.0.2.1", 4), T1),          # grows: takes 1002's ranges
        our_rule(1002, hosts("192.0.2.101", 2), T1),        # removed
        our_rule(1003, ["198.51.100.1/32", "198.51.100.3/32"], T2, sources=("log",)),  # shrinks
    ])
    intents = [unblock("198.51.100.3/32"), block("203.0.113.0/24", "spamhaus", T2)]  # add

    plan = plan_reconcile(read_band(rules.values(), BAND), intents, NOW, BAND)

    assert [0, 1, 2, 3] == [_kind(op) for op in plan.ops]


def test_reconcile_evicts_lowest_severity_first_and_never_manual():
    rules = by_priority([
        our_rule(1001, ["192.0.2.0/24"], T1, Severity.LOW, ("manual",)),
        our_rule(1002, ["198.51.100.0/24"], T2, Severity.LOW, ("feed",)),
        our_rule(1003, ["203.0.113.0/24"], T1, Severity.HIGH, ("feed",)),
    ])

    plan = plan_reconcile(read_band(rules.values(), BAND), [], NOW, BAND, capacity=2)

    assert [net("198.51.100.0/24")] == [e.network for e in plan.evicted]
    assert [Remove(rules[1002])] == list(plan.ops)


def test_reconcile_evicts_the_soonest_expiry_first_within_a_severity():
    rules = by_priority([
        our_rule(1001, ["192.0.2.0/24"], T2, Severity.LOW, ("feed",)),
        our_rule(1002, ["198.51.100.0/24"], T1, Severity.LOW, ("feed",)),
    ])

    plan = plan_reconcile(read_band(rules.values(), BAND), [], NOW, BAND, capacity=1)

    assert [net("198.51.100.0/24")] == [e.network for e in plan.evicted]


def test_reconcile_never_evicts_manual_entries_even_over_capacity():
    rules = by_priority([our_rule(1001, ["192.0.2.0/24"], T1, Severity.LOW, ("manual",)),
                         our_rule(1002, ["198.51.100.0/24"], T2, Severity.LOW, ("manual",))])

    plan = plan_reconcile(read_band(rules.values(), BAND), [], NOW, BAND, capacity=1)

    assert ((), ()) == (plan.evicted, plan.ops)


# --------------------------------------------------------------------------
# Priorities


def test_new_rules_take_free_priorities_inside_the_band():
    used = [foreign_rule(p) for p in range(BAND.start, BAND.start + 20, 2)]
    intents = [block(h, expiry=T1) for h in hosts("192.0.2.1", 100)]

    plan = plan_append(read_band(used, BAND), intents, NOW, BAND)

    priorities = [op.rule.priority for op in plan.ops]
    assert 10 == len(set(priorities))
    assert all(BAND.start <= p <= BAND.end and p not in {r.priority for r in used} for p in priorities)


def test_a_full_band_makes_an_append_need_the_lease():
    full = [foreign_rule(p) for p in range(BAND.start, BAND.end + 1)]

    plan = plan_append(read_band(full, BAND), [block("192.0.2.1/32", expiry=T1)], NOW, BAND)

    assert () == plan.ops
    assert plan.needs_lease


def test_a_nearly_full_band_uses_exactly_the_free_priorities():
    taken = [foreign_rule(p) for p in range(BAND.start, BAND.end + 1) if p not in (1007, 1033)]
    intents = [block(h, expiry=T1) for h in hosts("192.0.2.1", 20)]

    plan = plan_append(read_band(taken, BAND), intents, NOW, BAND)

    assert [1007, 1033] == sorted(op.rule.priority for op in plan.ops)


def test_reconcile_never_uncovers_a_range_while_two_rules_swap_ranges():
    rules = by_priority([our_rule(1001, ["192.0.2.1/32"], T1, sources=("feed",)),
                         our_rule(1002, ["198.51.100.1/32"], T1, sources=("feed", "log"))])
    intents = [block("192.0.2.1/32", "log", T1), unblock("198.51.100.1/32", "log")]  # the two swap groups
    plan = plan_reconcile(read_band(rules.values(), BAND), intents, NOW, BAND)

    state = dict(rules)
    seen = []
    for op in plan.ops:
        state = apply(state, replace(plan, ops=(op,)))
        seen.append(blocked(state, NOW))

    both = {T1: (net("192.0.2.1/32"), net("198.51.100.1/32"))}
    assert [both] * len(plan.ops) == seen


# --------------------------------------------------------------------------
# Regressions found by the property tests


def _append_twice(rules, intents):
    rules = by_priority(rules)
    first = plan_append(read_band(rules.values(), BAND), intents, NOW, BAND, seed=1)
    return plan_append(read_band(apply(rules, first).values(), BAND), intents, NOW, BAND, seed=2)


def _reconcile_twice(rules, intents):
    rules = by_priority(rules)
    first = plan_reconcile(read_band(rules.values(), BAND), intents, NOW, BAND, seed=1)
    return plan_reconcile(read_band(apply(rules, first).values(), BAND), intents, NOW, BAND, seed=2)


def test_a_resighting_with_another_action_and_the_same_expiry_is_replayable():
    rules = [our_rule(1001, ["192.0.2.0/24"], None, sources=("manual",)), our_rule(1009, ["192.0.2.0/24"], None, sources=("manual",))]

    again = _append_twice(rules, [block("192.0.2.0/24", "manual", permanent=True, action="deny(404)")])

    assert () == again.ops


def test_extending_a_range_its_supernet_already_outlasts_needs_no_op():
    rules = [our_rule(1001, ["192.0.2.0/24"], None, sources=("manual",))]

    plan = plan_append(read_band(rules, BAND), [extend("192.0.2.0/25", "manual", permanent=True)], NOW, BAND)

    assert () == plan.ops


def test_a_resighted_range_is_rewritten_as_it_is_not_aggregated_away():
    rules = [our_rule(1001, ["192.0.2.0/25"], T1)]

    again = _append_twice(rules, [block("192.0.2.0/25", expiry=T2), block("192.0.2.128/25", expiry=T2)])

    assert () == again.ops


def test_a_manual_unblock_keeps_the_longest_block_on_each_piece():
    rules = by_priority([our_rule(1001, ["192.0.2.0/24"], None, sources=("log",)),
                         our_rule(1002, ["192.0.2.0/23"], T1, sources=("feed",))])

    plan = plan_reconcile(read_band(rules.values(), BAND), [unblock("192.0.2.0/25")], NOW, BAND)

    assert None is plan.entries[net("192.0.2.128/25")].meta.expiry


def test_groups_that_aggregate_to_the_same_network_merge_in_one_reconcile():
    rules = [our_rule(1001, ["203.0.113.0/24"], None, Severity.LOW, ("manual",)),
             our_rule(1002, ["203.0.113.0/25", "203.0.113.128/25"], None, Severity.LOW, ("feed", "manual"))]

    again = _reconcile_twice(rules, [])

    assert () == again.ops


def test_a_feed_block_inside_a_manual_preview_block_needs_no_op():
    rules = [our_rule(1001, ["192.0.2.0/23"], None, Severity.LOW, ("feed", "manual"), preview=True)]

    again = _reconcile_twice(rules, [block("192.0.2.0/24", "feed", T1)])

    assert () == again.ops


def test_plan_entries_read_as_the_dict_of_the_same_entries():
    rules = by_priority([our_rule(1001, ["192.0.2.0/24"], T1), our_rule(1002, ["2001:db8::/48"], T1)])
    band = read_band(rules.values(), BAND)
    intents = [block("198.51.100.7/32", "feed", T2), block("2001:db8:1::/64", "feed", T2)]

    for plan in (plan_append(band, intents, NOW, BAND), plan_reconcile(band, intents, NOW, BAND)):
        entries = dict(plan.entries.items())
        assert {str(n) for n in entries} == {"192.0.2.0/24", "2001:db8::/48", "198.51.100.7/32", "2001:db8:1::/64"}
        assert entries == plan.entries and len(entries) == len(plan.entries)
        assert all(plan.entries[n] is e and n in plan.entries for n, e in entries.items())
        assert net("192.0.2.0/25") not in plan.entries and "192.0.2.0/24" not in plan.entries
        assert None is plan.entries.get(net("2001:db8::/64"))
        with pytest.raises(KeyError):
            plan.entries[net("192.0.2.0/25")]


def test_extend_reaches_every_blocked_address_also_through_a_supernet():
    """A feed rule holds 198.51.100.0/23 and 198.51.101.0/26 (2 h); extending
    198.51.101.0/25 to 7 days extends all of the /25 (the /23's part of it
    too), not only the /26, and leaves the rest of the /23 at 2 h."""
    rules = by_priority([our_rule(1002, ["198.51.100.0/23", "198.51.101.0/26"], at(120), sources=("feed",))])
    week = at(7 * 24 * 60)

    for planner in (plan_append, plan_reconcile):
        plan = planner(read_band(rules.values(), BAND), [extend("198.51.101.0/25", "manual", week)], NOW, BAND)
        after = rule_pairs(apply(rules, plan), NOW)

        assert covered(after, net("198.51.101.0/25"), week), planner.__name__
        assert not covered(after, net("198.51.101.128/25"), at(121)), planner.__name__
        assert not covered(after, net("198.51.100.0/24"), at(121)), planner.__name__
        assert covered(after, net("198.51.100.0/23"), at(120)), planner.__name__


def test_a_permanent_extend_beside_an_unblock_reconciles_once():
    """The minimal falsifying example of test_reconcile_is_idempotent: an
    extend whose range a supernet entry also covers, and an unblock that
    splits that supernet."""
    rules = [our_rule(1000, ["198.51.101.128/25"], None, sources=("manual",)),
             our_rule(1002, ["198.51.100.0/23", "198.51.101.0/26"], None, sources=("feed",))]

    again = _reconcile_twice(rules, [extend("198.51.101.0/25", "manual", permanent=True),
                                     unblock("198.51.101.128/25", "manual")])

    assert () == again.ops


# --------------------------------------------------------------------------
# Per-source claims


LONG = ("cloud-armor-waf", "example-intel-ab", "monitoring-alert", "scc-findings")


def test_each_source_keeps_its_own_claim_and_a_withdrawal_leaves_exactly_the_others():
    rules = {}
    for i, source in enumerate(("fa", "fb")):
        plan = plan_reconcile(read_band(rules.values(), BAND), [block("192.0.2.0/24", source, at(60 * (4 + 8 * i)),
                                                                      severity=Severity.HIGH if i else Severity.LOW)], NOW, BAND)
        rules = apply(rules, plan)
    held = read_band(rules.values(), BAND).entries(NOW)[net("192.0.2.0/24")].meta
    assert {"fa": (at(240), Severity.LOW), "fb": (at(720), Severity.HIGH)} == held.claim_map()

    plan = plan_reconcile(read_band(rules.values(), BAND), [unblock("192.0.2.0/24", "fb")], NOW, BAND)
    rules = apply(rules, plan)

    left = read_band(rules.values(), BAND).entries(NOW)[net("192.0.2.0/24")].meta
    assert (at(240), Severity.LOW, frozenset({"fa"})) == (left.expiry, left.severity, left.sources)


def test_claims_too_long_for_one_description_are_written_as_records_that_read_back_whole():
    intents = [block("192.0.2.0/24", s, at(60 * (2 + 3 * i)), severity=list(Severity)[i]) for i, s in enumerate(LONG)]

    plan = plan_reconcile(read_band([], BAND), intents, NOW, BAND)
    rules = apply({}, plan)

    assert 1 < len(rules)  # four long names with their own expiries: more than 64 characters
    assert all(not decode(TAG, r.description).truncated for r in rules.values())
    whole = read_band(rules.values(), BAND).entries(NOW)[net("192.0.2.0/24")].meta
    assert {s: (at(60 * (2 + 3 * i)), list(Severity)[i]) for i, s in enumerate(LONG)} == whole.claim_map()
    assert () == plan_reconcile(read_band(rules.values(), BAND), intents, NOW, BAND).ops
    assert () == plan_append(read_band(rules.values(), BAND), intents, NOW, BAND).ops

    # the latest claim withdraws: the entry ends with the next one, at its severity
    plan = plan_reconcile(read_band(rules.values(), BAND), [unblock("192.0.2.0/24", LONG[-1])], NOW, BAND)
    rules = apply(rules, plan)
    left = read_band(rules.values(), BAND).entries(NOW)[net("192.0.2.0/24")].meta
    assert (at(60 * 8), list(Severity)[2], frozenset(LONG[:-1])) == (left.expiry, left.severity, left.sources)
    # and a claim that ends leaves the entry at that moment
    later = read_band(rules.values(), BAND).entries(at(60 * 2))[net("192.0.2.0/24")].meta
    assert frozenset(LONG[1:-1]) == later.sources


def test_an_appended_claim_too_long_for_the_rule_it_joins_is_written_in_records():
    rules = {1001: our_rule(1001, ["192.0.2.0/24"], at(600), sources=LONG[:2])}
    intents = [block("192.0.2.0/24", s, at(60 * (2 + i)), severity=Severity.HIGH) for i, s in enumerate(LONG[2:])]

    plan = plan_append(read_band(rules.values(), BAND), intents, NOW, BAND)
    rules = apply(rules, plan)

    assert plan.ops and all(isinstance(op, Add) for op in plan.ops)
    assert all(not decode(TAG, r.description).truncated for r in rules.values())
    whole = read_band(rules.values(), BAND).entries(NOW)[net("192.0.2.0/24")].meta
    assert frozenset(LONG) == whole.sources
    assert (at(120), Severity.HIGH) == whole.claim(LONG[2]) and (at(600), Severity.MEDIUM) == whole.claim(LONG[0])
    assert () == plan_append(read_band(rules.values(), BAND), intents, NOW, BAND).ops


def test_at_the_quota_an_add_takes_over_a_rule_the_plan_removes() -> None:
    """With the project's rule quota full, no add lands until a removal
    frees a rule, and a removal first would unblock its ranges. The add
    takes over the removed rule by one patch instead, when the rest of that
    rule's ranges are held elsewhere by then (or the plan unblocks them)."""
    rules = by_priority([our_rule(1001, ["192.0.2.0/24"], at(60), sources=("fa",)),
                         our_rule(1002, ["198.51.100.0/24", "198.51.101.7/32"], at(60), sources=("fb",)),
                         our_rule(1003, ["198.51.101.0/24"], at(120), sources=("fb",))])
    todo = [block("192.0.2.0/24", "fb", at(90)), unblock("198.51.100.0/24", "fb")]
    plan = plan_reconcile(read_band(rules.values(), BAND), todo, NOW, BAND, compact=True, seed=1)
    assert sorted(type(op).__name__ for op in plan.ops) == ["Add", "Patch", "Remove"]
    fitted = within_quota(plan, read_band(rules.values(), BAND))
    # the add of 192.0.2.0/24 (now fa's and fb's) takes over 1001, which the plan removed
    assert not any(isinstance(op, (Add, Remove)) for op in fitted.ops)
    taken = fitted.ops[0]
    assert isinstance(taken, Patch) and taken.before.priority == 1001 and taken.rule.ranges == ("192.0.2.0/24",)
    after = apply(rules, fitted)
    assert len(after) == len(rules) and read_band(after.values(), BAND).entries(NOW) == dict(plan.entries)
    # never an address both bands block unblocked in between: replay op by op
    state = dict(rules)
    for op in fitted.ops:
        state = apply_op(state, op)
        held = [ipaddress.ip_network(n) for r in state.values() for n in r.ranges]
        for wanted in ("192.0.2.9", "198.51.101.9", "198.51.101.7"):
            assert any(ipaddress.ip_address(wanted) in n for n in held), (op, wanted)

    # no rule to take over safely: the add stays an add
    lone = by_priority([our_rule(1001, ["192.0.2.0/24"], at(60), sources=("fa",)),
                        our_rule(1002, ["203.0.113.0/24"], at(60), sources=("fc",))])
    plan = plan_reconcile(read_band(lone.values(), BAND), [block("192.0.2.0/25", "fb", at(90))], NOW, BAND, seed=1)
    fitted = within_quota(plan, read_band(lone.values(), BAND))
    assert fitted.ops == plan.ops
