"""Repeat offenders: the planner escalates the TTL of a network sighted again
by an escalating source while the band still holds its entry."""
from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import timedelta

import pytest
from bandkit import BAND, NOW, TAG, apply, at, block, net, our_rule

from config import settings as config
from handlers import common
from responder.codec import decode, encode
from responder.model import Escalation, Severity
from responder.planner import Add, escalated_ttl, plan_append, plan_reconcile, read_band, round_down

HOUR = timedelta(hours=1)
WEEK = timedelta(days=7)
HOST = "203.0.113.7/32"


def sighting(seen, ttl=HOUR, factor=2.0, cap=WEEK, source="cloud-armor-waf", network=HOST, **kw):
    """A block as the log-sink handler makes it: expiry from the publish
    time, with the kind's escalation."""
    return block(network, source, seen + ttl, escalation=Escalation(seen, ttl, factor, cap), **kw)


def run(rules, intents, now=NOW, reconcile=False):
    band = read_band(rules.values(), BAND)
    if reconcile:
        plan = plan_reconcile(band, intents, now, BAND, seed=3)
    else:
        plan = plan_append(band, intents, now, BAND, seed=3)
        assert not plan.needs_lease
    return plan, apply(rules, plan)


def entry(rules, network=HOST, now=NOW):
    return read_band(rules.values(), BAND).entries(now)[net(network)]


def test_a_first_sighting_records_its_bucket_and_no_strike():
    plan, rules = run({}, [sighting(at(7))])

    meta = entry(rules).meta
    assert (at(75), 0, at(0)) == (meta.expiry, meta.strikes, meta.struck)  # 12:07 + 1h -> 13:15; bucket 12:00
    assert ["car1 x=202605011315 v=m n=0-75 s=cloud-armor-waf"] == [op.rule.description for op in plan.ops]


def test_a_second_sighting_in_a_later_bucket_doubles_the_ttl():
    _, rules = run({}, [sighting(at(0))])

    plan, rules = run(rules, [sighting(at(30))], now=at(30))

    meta = entry(rules, now=at(30)).meta
    assert (at(30 + 120), 1, at(30)) == (meta.expiry, meta.strikes, meta.struck)
    assert 1 == len(plan.ops)
    assert decode(TAG, plan.ops[0].rule.description).strikes == 1


def test_each_later_strike_doubles_again():
    rules = {}
    for k, minutes in enumerate((0, 30, 60, 90)):
        _, rules = run(rules, [sighting(at(minutes))], now=at(minutes))
        meta = entry(rules, now=at(minutes)).meta
        assert (k, at(minutes) + HOUR * 2 ** k) == (meta.strikes, meta.expiry)


def test_the_same_message_again_changes_nothing():
    _, rules = run({}, [sighting(at(0))])
    _, rules = run(rules, [sighting(at(30))], now=at(30))

    for again in (sighting(at(30)), sighting(at(0)), sighting(at(40))):  # same message, older one, same bucket
        plan, _ = run(rules, [again], now=at(45))
        assert () == plan.ops, again


def test_a_redelivered_first_sighting_changes_nothing():
    _, rules = run({}, [sighting(at(0))])

    plan, _ = run(rules, [sighting(at(0))], now=at(20))

    assert () == plan.ops


def test_escalation_stops_at_the_cap():
    cap = timedelta(hours=3)
    rules = {}
    for minutes in (0, 30, 60, 90):
        _, rules = run(rules, [sighting(at(minutes), cap=cap)], now=at(minutes))

    meta = entry(rules, now=at(90)).meta
    assert (3, at(90) + cap) == (meta.strikes, meta.expiry)  # 1h * 2**3 = 8h, capped at 3h
    assert cap == escalated_ttl(Escalation(NOW, HOUR, 2.0, cap), 50_000)


def test_a_longer_claim_is_never_shortened_by_a_strike():
    rules = {1001: our_rule(1001, [HOST], at(60 * 24), sources=("spamhaus",))}
    _, rules = run(rules, [sighting(at(0))])

    plan, rules = run(rules, [sighting(at(30))], now=at(30))

    meta = entry(rules, now=at(30)).meta
    assert at(60 * 24) == meta.expiry  # the feed's 24h outlasts 2h
    assert ({"spamhaus", "cloud-armor-waf"}, 1) == (set(meta.sources), meta.strikes)


def test_another_sources_block_or_an_old_rule_records_a_first_sighting():
    for sources in (("spamhaus",), ("cloud-armor-waf",)):  # a feed's block; a rule from before escalation
        rules = {1001: our_rule(1001, [HOST], at(60), sources=sources)}

        _, rules = run(rules, [sighting(at(30))], now=at(30))
        meta = entry(rules, now=at(30)).meta
        assert (0, at(30), at(90)) == (meta.strikes, meta.struck, meta.expiry)

        _, rules = run(rules, [sighting(at(45))], now=at(45))
        meta = entry(rules, now=at(45)).meta
        assert (1, at(45), at(165)) == (meta.strikes, meta.struck, meta.expiry)


def test_sightings_in_one_bucket_give_the_same_band_in_any_order():
    feed = our_rule(1001, [HOST], at(60), sources=("spamhaus",))
    a = sighting(at(1), source="scc", ttl=24 * HOUR)
    b = sighting(at(9), source="cloud-armor-waf", ttl=6 * HOUR)

    _, one = run({1001: feed}, [a, b], now=at(10))
    _, other = run({1001: feed}, [b, a], now=at(10))

    assert entry(one, now=at(10)) == entry(other, now=at(10))
    assert (0, at(15) + 24 * HOUR) == (entry(one, now=at(10)).meta.strikes, entry(one, now=at(10)).meta.expiry)


def test_a_lapsed_block_starts_again_with_no_strike():
    _, rules = run({}, [sighting(at(0))])

    _, rules = run(rules, [sighting(at(90))], now=at(90))  # the 1h block ran out at 13:00

    meta = entry(rules, now=at(90)).meta
    assert (0, at(150)) == (meta.strikes, meta.expiry)


def test_a_permanent_manual_block_stays_permanent_and_a_sighting_keeps_its_own_claim():
    rules = {1001: our_rule(1001, [HOST], None, Severity.HIGH, sources=("manual",))}

    plan, rules = run(rules, [sighting(at(30))], now=at(30))
    same, _ = run(rules, [sighting(at(30))], now=at(30))
    later, after = run(rules, [sighting(at(30)), sighting(at(60))], now=at(60))

    meta = entry(rules, now=at(30)).meta
    assert (None, 0, None) == (meta.expiry, meta.strikes, meta.struck)  # a permanent entry keeps no strikes
    assert (None, Severity.HIGH) == meta.claim("manual")
    own = meta.claim("cloud-armor-waf")
    assert own is not None and own[0] is not None and own[0] > at(30)  # the sighting's own, finite claim
    assert all(" n=" not in op.rule.description for op in plan.ops)
    assert () == same.ops
    # a later sighting lengthens only its own claim; the block stays permanent
    assert later.ops
    moved = entry(after, now=at(60)).meta
    assert moved.expiry is None and (None, Severity.HIGH) == moved.claim("manual")
    assert moved.claim("cloud-armor-waf")[0] > own[0]  # type: ignore[index]


def test_a_timed_manual_block_is_never_shortened():
    rules = {1001: our_rule(1001, [HOST], at(60 * 48), Severity.HIGH, sources=("manual",), action="deny(404)")}

    _, rules = run(rules, [sighting(at(30))], now=at(30))

    found = entry(rules, now=at(30))
    assert (at(60 * 48), "deny(404)") == (found.meta.expiry, found.action)


def test_manual_blocks_never_carry_an_escalation():
    manual = block(HOST, "manual", at(60))
    _, rules = run({}, [manual])
    plan, rules = run(rules, [block(HOST, "manual", at(90))], now=at(30))

    meta = entry(rules, now=at(30)).meta
    assert (0, None, at(90)) == (meta.strikes, meta.struck, meta.expiry)


def test_a_sighting_inside_a_blocked_supernet_counts_from_its_record():
    rules = {1001: our_rule(1001, ["203.0.113.0/24"], at(60), sources=("spamhaus",))}

    _, rules = run(rules, [sighting(at(30))], now=at(30))
    assert (0, at(90)) == (entry(rules, now=at(30)).meta.strikes, entry(rules, now=at(30)).meta.expiry)
    _, rules = run(rules, [sighting(at(45))], now=at(45))
    again, _ = run(rules, [sighting(at(45)), sighting(at(30))], now=at(45))

    meta = entry(rules, now=at(45)).meta
    assert (1, at(165)) == (meta.strikes, meta.expiry)
    assert () == again.ops


def test_two_sightings_of_one_message_count_one_strike():
    _, rules = run({}, [sighting(at(0))])

    plan, rules = run(rules, [sighting(at(30)), sighting(at(30), ttl=2 * HOUR, source="ml-probe")], now=at(30))

    meta = entry(rules, now=at(30)).meta
    # the first strikes (1h doubled); the second, in the same bucket, adds
    # no strike and asks only for its own base TTL (2h): both end at 14:30
    assert (1, at(30) + 2 * HOUR) == (meta.strikes, meta.expiry)


def test_reconcile_counts_strikes_the_same_way():
    _, rules = run({}, [sighting(at(0))])

    plan, rules = run(rules, [sighting(at(30))], now=at(30), reconcile=True)
    again, _ = run(rules, [sighting(at(30))], now=at(30), reconcile=True)

    assert (1, at(150)) == (entry(rules, now=at(30)).meta.strikes, entry(rules, now=at(30)).meta.expiry)
    assert () == again.ops


def test_concurrent_strikes_merge_by_the_maximum():
    # two writers struck at once from the same band: each added its own rule
    rules = {
        1001: replace(our_rule(1001, [HOST]), description="car1 x=202605011430 v=m n=1-120 s=cloud-armor-waf"),
        1002: replace(our_rule(1002, [HOST]), description="car1 x=202605011445 v=m n=2-150 s=ml-probe"),
    }

    meta = entry(rules, now=at(30)).meta

    assert (2, at(30), at(165)) == (meta.strikes, meta.struck, meta.expiry)
    assert (1, at(30)) == (decode(TAG, rules[1001].description).strikes, decode(TAG, rules[1001].description).struck)


def test_different_strike_records_are_different_groups():
    first = sighting(at(0), network="203.0.113.7/32")
    plan, rules = run({}, [first, sighting(at(0), network="203.0.113.9/32")])
    assert 1 == len(plan.ops)  # same bucket, same TTL: one rule

    plan, _ = run(rules, [sighting(at(30), network="203.0.113.7/32"), sighting(at(30), network="198.51.100.1/32")],
                  now=at(30))

    assert 2 == len(plan.ops) and all(isinstance(op, Add) for op in plan.ops)


def test_round_down_is_the_publish_time_bucket():
    assert at(0) == round_down(at(14.9), BAND.expiry_granularity)
    assert at(15) == round_down(at(15), BAND.expiry_granularity)


@pytest.mark.parametrize("kind, factor", [("log", 2.0), ("alert", 2.0), ("feed", 1.0), ("manual", 1.0)])
def test_escalation_is_on_for_log_and_alert_and_off_for_feed_and_manual(kind, factor):
    source = config.load(environ={}).source(kind)

    escalation = common.escalation_for(NOW, source, NOW + source.default_ttl)

    assert factor == source.escalate
    assert (escalation is not None) == (factor > 1)
    if escalation is not None:
        assert (NOW, source.default_ttl, source.max_ttl) == (escalation.seen, escalation.ttl, escalation.cap)


def test_escalate_is_validated():
    with open(config.DEFAULT_PATH, "rb") as fh:
        raw = tomllib.load(fh)
    raw["sources"]["feed"]["escalate"] = 0.5
    with pytest.raises(config.ConfigError, match=r"^sources\.feed\.escalate: must be between 1"):
        config.from_dict(raw)
    raw["sources"]["feed"]["escalate"] = 1.5
    assert 1.5 == config.from_dict(raw).source("feed").escalate
    raw["sources"]["manual"]["escalate"] = 2
    with pytest.raises(config.ConfigError, match=r"^sources\.manual\.escalate"):
        config.from_dict(raw)


def test_encode_of_an_escalated_rule_fits():
    rule = plan_append(read_band([], BAND), [sighting(at(0), source="cloud-ids-threat")], NOW, BAND).ops[0].rule
    assert len(rule.description) <= 64
    assert rule.description == encode(TAG, decode(TAG, rule.description))


def test_a_replayed_record_restores_its_strikes_without_striking_again():
    """A restore (cli.py restore) re-applies an entry's recorded strikes and
    bucket: the band gets exactly that record, and replaying it changes nothing."""
    replay = Escalation(at(30), HOUR, 2.0, WEEK, strikes=3)
    intent = block(HOST, "cloud-armor-waf", at(300), escalation=replay)

    plan, rules = run({}, [intent], now=at(40))
    again, _ = run(rules, [intent], now=at(40))

    meta = entry(rules, now=at(40)).meta
    assert (at(300), 3, at(30)) == (meta.expiry, meta.strikes, meta.struck)
    assert () == again.ops
