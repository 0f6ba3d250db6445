"""The reference model on its own, against cases worked out by hand from
the README's per-source claims (no API, no planner): each source keeps its
own expiry and severity on an entry, a withdrawal or an expiry leaves the
others as they were, extends and splits keep every other claim, and the
strike record is clamped and dropped as the README says."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from reference import Answer, Claim, Entry, Kind, Reference, eviction_order_holds

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
KINDS = {
    "manual": Kind(16, 48, None, 1.0, timedelta(days=365)),
    "feed": Kind(12, 32, None, 1.0, timedelta(days=30)),
    "log": Kind(32, 64, 64, 2.0, timedelta(days=2)),
}
L, M, HI = 1, 2, 3


def net(text: str) -> Any:
    return ipaddress.ip_network(text)


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def model() -> Reference:
    return Reference(timedelta(minutes=15), KINDS, (net("45.9.150.0/26"),), (net("10.0.0.0/8"),))


def feed(m: Reference, source: str, text: str, hours: float, severity: int, now: datetime = T0) -> bool:
    return m.block(net(text), "feed", source, now, expiry=now + hours * H, severity=severity)


def manual(m: Reference, text: str, hours: float | None, severity: int, now: datetime = T0) -> bool:
    return m.block(net(text), "manual", "manual", now, expiry=None if hours is None else now + hours * H, severity=severity)


def claims(**each: tuple[float | None, int]) -> Answer:
    """An answer: source=(hours after T0 or None, severity)."""
    return Answer({s: Claim(None if h is None else T0 + h * H, v) for s, (h, v) in each.items()})


def entry_claims(m: Reference, text: str) -> dict[str, Claim]:
    return m.entries[net(text)].claims


def test_the_same_range_from_two_sources_is_one_entry_with_each_sources_claim() -> None:
    m = model()
    feed(m, "fa", "45.9.148.0/24", 4, M)
    feed(m, "fb", "45.9.148.0/24", 12, L)
    assert list(m.entries) == [net("45.9.148.0/24")]
    a = m.answer(ip("45.9.148.9"), T0)
    assert a == claims(fa=(4, M), fb=(12, L))
    assert a is not None and (a.expiry, a.severity, a.sources) == (T0 + 12 * H, M, frozenset({"fa", "fb"}))
    assert m.answer(ip("45.9.149.9"), T0) is None


@pytest.mark.parametrize(("gone", "left"), [("fa", claims(fb=(12, L))), ("fb", claims(fa=(4, M)))])
def test_a_withdrawal_leaves_the_other_sources_own_expiry_and_severity(gone: str, left: Answer) -> None:
    m = model()
    feed(m, "fa", "45.9.148.0/24", 4, M)
    feed(m, "fb", "45.9.148.0/24", 12, L)
    m.unblock(net("45.9.148.0/24"), gone, T0 + H)
    assert m.answer(ip("45.9.148.9"), T0 + H) == left
    m.unblock(net("45.9.148.0/24"), gone, T0 + H)  # again: nothing left to withdraw
    assert m.answer(ip("45.9.148.9"), T0 + H) == left


def test_an_expired_claim_is_gone_and_the_others_stay() -> None:
    m = model()
    feed(m, "fa", "45.9.148.0/24", 4, M)
    feed(m, "fb", "45.9.148.0/24", 12, L)
    assert m.answer(ip("45.9.148.9"), T0 + 4 * H - timedelta(minutes=1)) == claims(fa=(4, M), fb=(12, L))
    assert m.answer(ip("45.9.148.9"), T0 + 4 * H) == claims(fb=(12, L))  # fa's ends at its expiry
    assert m.answer(ip("45.9.148.9"), T0 + 12 * H) is None
    m.cleanup(T0 + 5 * H)
    assert entry_claims(m, "45.9.148.0/24") == {"fb": Claim(T0 + 12 * H, L)}
    m.cleanup(T0 + 12 * H)
    assert m.entries == {}


def test_a_re_sighting_takes_the_later_expiry_and_the_higher_severity_of_its_own_source_only() -> None:
    m = model()
    feed(m, "fa", "45.9.148.0/24", 4, HI)
    feed(m, "fb", "45.9.148.0/24", 12, L)
    feed(m, "fa", "45.9.148.0/24", 4, L, now=T0 + 2 * H)  # later, lighter
    assert m.answer(ip("45.9.148.9"), T0 + 2 * H) == claims(fa=(6, HI), fb=(12, L))
    feed(m, "fa", "45.9.148.0/24", 1, L, now=T0 + 2 * H)  # shorter: nothing
    assert m.answer(ip("45.9.148.9"), T0 + 2 * H) == claims(fa=(6, HI), fb=(12, L))


def test_expiries_round_up_and_only_manual_blocks_are_permanent() -> None:
    m = model()
    assert feed(m, "fa", "45.9.148.0/24", 1 + 1 / 60, M)  # 13:01 -> 13:15
    assert entry_claims(m, "45.9.148.0/24") == {"fa": Claim(T0 + timedelta(minutes=75), M)}
    assert not m.block(net("45.9.148.0/24"), "feed", "fa", T0, expiry=None, severity=M)
    assert manual(m, "45.9.148.0/24", None, L)
    assert m.answer(ip("45.9.148.9"), T0 + 1000 * H) == claims(manual=(None, L))
    a = m.answer(ip("45.9.148.9"), T0)
    assert a is not None and (a.expiry, a.severity) == (None, M)


def test_a_block_a_supernet_already_makes_changes_nothing() -> None:
    m = model()
    feed(m, "fa", "45.9.148.0/23", 4, M)
    feed(m, "fa", "45.9.148.0/24", 4, M)
    feed(m, "fa", "45.9.148.0/25", 2, L)
    assert list(m.entries) == [net("45.9.148.0/23")]
    feed(m, "fb", "45.9.148.0/24", 1, L)  # another source's claim is not held by the supernet
    assert entry_claims(m, "45.9.148.0/24") == {"fa": Claim(T0 + 4 * H, M), "fb": Claim(T0 + H, L)}


def test_a_new_entry_holds_what_its_supernets_claim_of_it_and_a_withdrawal_takes_one_source_from_both() -> None:
    m = model()
    feed(m, "fb", "45.9.148.0/23", 12, L)
    manual(m, "45.9.148.0/24", 2, HI)
    assert entry_claims(m, "45.9.148.0/24") == {"fb": Claim(T0 + 12 * H, L), "manual": Claim(T0 + 2 * H, HI)}
    m.unblock(net("45.9.148.0/23"), "fb", T0)
    assert list(m.entries) == [net("45.9.148.0/24")]
    assert m.answer(ip("45.9.148.9"), T0) == claims(manual=(2, HI))
    assert m.answer(ip("45.9.149.9"), T0) is None


def test_supernets_claims_merge_per_source_into_a_new_entry() -> None:
    m = model()
    feed(m, "fa", "45.9.148.0/23", 4, HI)
    feed(m, "fa", "45.9.148.0/24", 6, L)  # not held: a new entry, fa's claims merged
    assert entry_claims(m, "45.9.148.0/24") == {"fa": Claim(T0 + 6 * H, HI)}


def test_a_withdrawal_does_not_depend_on_aggregation() -> None:
    """The issue's case: fa's two /25s and fb's /24 stay three entries; fb's
    withdrawal of the /23 leaves fa's own 4 h, medium."""
    m = model()
    feed(m, "fa", "45.9.148.0/25", 4, M)
    feed(m, "fa", "45.9.148.128/25", 4, M)
    feed(m, "fb", "45.9.148.0/24", 12, L)
    assert m.answer(ip("45.9.148.9"), T0) == claims(fa=(4, M), fb=(12, L))
    m.unblock(net("45.9.148.0/23"), "fb", T0)
    for a in ("45.9.148.9", "45.9.148.200"):
        assert m.answer(ip(a), T0) == claims(fa=(4, M))
    assert m.answer(ip("45.9.148.9"), T0 + 4 * H) is None


def test_an_unblock_splits_a_broader_entry() -> None:
    m = model()
    feed(m, "fa", "45.9.148.0/24", 4, M)
    feed(m, "fb", "45.9.148.0/24", 12, L)
    m.unblock(net("45.9.148.0/25"), "fa", T0)  # fa's claim only, on the /25 only
    assert m.answer(ip("45.9.148.9"), T0) == claims(fb=(12, L))
    assert m.answer(ip("45.9.148.200"), T0) == claims(fa=(4, M), fb=(12, L))
    assert set(m.entries) == {net("45.9.148.0/25"), net("45.9.148.128/25")}
    m.unblock(net("45.9.148.128/26"), "manual", T0)  # every claim
    assert m.answer(ip("45.9.148.130"), T0) is None
    assert m.answer(ip("45.9.148.200"), T0) == claims(fa=(4, M), fb=(12, L))
    assert m.answer(ip("45.9.148.9"), T0) == claims(fb=(12, L))
    m.unblock(net("45.9.148.0/23"), "manual", T0)
    assert m.entries == {}


def test_a_split_part_landing_on_an_entry_merges_with_it() -> None:
    m = model()
    feed(m, "fa", "45.9.148.0/24", 4, M)
    feed(m, "fb", "45.9.148.128/25", 12, L)
    feed(m, "fa", "45.9.148.128/25", 2, HI)  # held? no: heavier than the /24's
    assert entry_claims(m, "45.9.148.128/25") == {"fa": Claim(T0 + 4 * H, HI), "fb": Claim(T0 + 12 * H, L)}
    m.unblock(net("45.9.148.0/25"), "fa", T0)
    assert set(m.entries) == {net("45.9.148.128/25")}
    assert m.answer(ip("45.9.148.200"), T0) == claims(fa=(4, HI), fb=(12, L))
    assert m.answer(ip("45.9.148.9"), T0) is None


def test_a_withdrawal_leaves_a_supernet_without_that_source_alone() -> None:
    m = model()
    feed(m, "fb", "45.9.148.0/23", 12, L)
    feed(m, "fa", "45.9.148.0/24", 4, M)
    m.unblock(net("45.9.148.0/25"), "fa", T0)
    # the /23 holds no fa claim: not split; the /24 is
    assert set(m.entries) == {net("45.9.148.0/23"), net("45.9.148.0/25"), net("45.9.148.128/25")}
    assert entry_claims(m, "45.9.148.0/25") == {"fb": Claim(T0 + 12 * H, L)}
    assert m.answer(ip("45.9.148.9"), T0) == claims(fb=(12, L))
    assert m.answer(ip("45.9.148.200"), T0) == claims(fa=(4, M), fb=(12, L))


def test_extend_adds_the_extenders_own_claim() -> None:
    m = model()
    assert not m.extend(net("45.9.148.0/24"), "manual", T0, T0 + 24 * H)  # nothing blocked: refused
    feed(m, "fa", "45.9.148.0/24", 4, M)
    feed(m, "fb", "45.9.148.0/24", 12, L)
    assert m.extend(net("45.9.148.0/24"), "manual", T0, T0 + 24 * H)
    # a new claim weighs the least (an extend says how long, not how bad); the others are unchanged
    assert m.answer(ip("45.9.148.9"), T0) == claims(fa=(4, M), fb=(12, L), manual=(24, L))
    m.unblock(net("45.9.148.0/24"), "fa", T0)
    m.unblock(net("45.9.148.0/24"), "fb", T0)
    assert m.answer(ip("45.9.148.9"), T0) == claims(manual=(24, L))
    assert m.extend(net("45.9.148.0/24"), "manual", T0, T0 + 3 * H)  # never shortens
    assert m.answer(ip("45.9.148.9"), T0) == claims(manual=(24, L))


def test_extend_keeps_the_extenders_own_severity() -> None:
    m = model()
    manual(m, "45.9.148.0/24", 2, L)
    feed(m, "fa", "45.9.148.0/24", 4, HI)
    m.extend(net("45.9.148.0/24"), "manual", T0, T0 + 3 * H)
    assert m.answer(ip("45.9.148.9"), T0) == claims(fa=(4, HI), manual=(3, L))
    # a claim a broader entry makes on the addresses is theirs too: it moves, as heavy as it was
    manual(m, "45.9.150.0/23", 2, HI)
    feed(m, "fa", "45.9.150.0/25", 4, M)
    m.extend(net("45.9.150.0/24"), "manual", T0, T0 + 5 * H)
    assert m.answer(ip("45.9.150.9"), T0) == claims(fa=(4, M), manual=(5, HI))
    assert m.answer(ip("45.9.151.9"), T0) == claims(manual=(2, HI))


def test_a_block_merges_into_its_sources_claims_inside_the_network() -> None:
    """One claim per source and address, whatever entries hold it: blocking
    both /25 for 6 h at low and then the /24 for 1 h at high leaves high for
    6 h, as it would where the band aggregated the two /25 into the /24."""
    m = model()
    manual(m, "45.9.148.0/25", 6, L)
    manual(m, "45.9.148.128/25", 6, L)
    manual(m, "45.9.148.0/24", 1, HI)
    assert m.answer(ip("45.9.148.9"), T0 + 2 * H) == claims(manual=(6, HI))
    feed(m, "fa", "45.9.149.0/26", 1, HI)
    feed(m, "fa", "45.9.149.0/24", 8, L)
    assert m.answer(ip("45.9.149.9"), T0 + 2 * H) == claims(fa=(8, HI))
    assert m.answer(ip("45.9.149.99"), T0 + 2 * H) == claims(fa=(8, L))


def test_extend_inside_a_broader_entry() -> None:
    m = model()
    feed(m, "fa", "45.9.148.0/23", 4, M)
    feed(m, "fb", "45.9.148.0/25", 12, L)  # a new entry: fa's and fb's claims
    assert m.extend(net("45.9.148.0/24"), "manual", T0, T0 + 24 * H)
    # the /24 gets an entry of its own (the /23's claims), then every entry inside gets manual's claim
    assert entry_claims(m, "45.9.148.0/24") == {"fa": Claim(T0 + 4 * H, M), "manual": Claim(T0 + 24 * H, L)}
    assert entry_claims(m, "45.9.148.0/25") == {"fa": Claim(T0 + 4 * H, M), "fb": Claim(T0 + 12 * H, L),
                                                "manual": Claim(T0 + 24 * H, L)}
    assert m.answer(ip("45.9.149.9"), T0) == claims(fa=(4, M))  # the rest of the /23 keeps its expiry
    # a supernet holding manual's claim long enough: no new entry, nothing changes
    before = dict(m.entries)
    assert m.extend(net("45.9.148.128/25"), "manual", T0, T0 + 3 * H)
    assert m.entries == before


def test_snapshot_withdraws_what_the_list_no_longer_covers() -> None:
    m = model()
    feed(m, "fa", "45.9.148.0/24", 4, M)
    feed(m, "fa", "45.9.149.77/32", 4, M)
    feed(m, "fb", "45.9.149.77/32", 12, L)
    gone = m.snapshot("fa", [net("45.9.148.0/25"), net("45.9.148.128/25")], T0 + H)
    assert gone == [net("45.9.149.77/32")]
    assert m.answer(ip("45.9.149.77"), T0 + H) == claims(fb=(12, L))
    assert m.answer(ip("45.9.148.9"), T0 + H) == claims(fa=(4, M))


def test_the_strike_record_escalates_and_stays_with_the_entry() -> None:
    m = model()
    host = net("45.9.148.7/32")

    def sighting(at: datetime) -> None:
        m.block(host, "log", "waf", at, expiry=at + H, severity=HI, seen=at, ttl=H)

    sighting(T0)
    assert m.entries[host] == Entry({"waf": Claim(T0 + H, HI)}, 0, T0)
    sighting(T0)  # the same bucket: no strike
    assert m.entries[host] == Entry({"waf": Claim(T0 + H, HI)}, 0, T0)
    sighting(T0 + timedelta(minutes=20))  # a later bucket: 2 h from the sighting, rounded up
    assert m.entries[host] == Entry({"waf": Claim(T0 + timedelta(minutes=150), HI)}, 1, T0 + timedelta(minutes=15))
    feed(m, "fa", "45.9.148.0/24", 1, L, now=T0 + timedelta(minutes=20))  # other claims leave the record alone
    assert m.entries[host].strikes == 1
    # the record is gone with the entry: the next sighting starts again
    sighting(T0 + 3 * H)
    assert m.entries[host] == Entry({"waf": Claim(T0 + 4 * H, HI)}, 0, T0 + 3 * H)


def test_a_sighting_under_a_supernet_reads_its_record() -> None:
    m = model()
    host = net("2a0b:4142:0:1::5/128")
    wide = m.screen(host, "log")
    assert wide == net("2a0b:4142:0:1::/64")
    m.block(wide, "log", "waf", T0, expiry=T0 + H, severity=HI, seen=T0, ttl=H)
    m.block(net("2a0b:4142:0:1::/80"), "log", "waf", T0 + 2 * timedelta(minutes=15), expiry=T0 + 90 * timedelta(minutes=1),
            severity=HI, seen=T0 + timedelta(minutes=30), ttl=H)
    # the /64's record (0 strikes, T0): one strike, 2 h from the sighting
    assert m.entries[net("2a0b:4142:0:1::/80")] == Entry({"waf": Claim(T0 + timedelta(minutes=150), HI)}, 1,
                                                         T0 + timedelta(minutes=30))


def test_a_permanent_entry_keeps_no_strike_record_and_never_strikes() -> None:
    m = model()
    host = net("45.9.148.7/32")
    manual(m, "45.9.148.7/32", None, L)
    m.block(host, "log", "waf", T0, expiry=T0 + H, severity=HI, seen=T0, ttl=H)
    assert m.entries[host] == Entry({"manual": Claim(None, L), "waf": Claim(T0 + H, HI)})
    later = T0 + timedelta(minutes=30)
    m.block(host, "log", "waf", later, expiry=later + H, severity=HI, seen=later, ttl=H)
    assert m.entries[host] == Entry({"manual": Claim(None, L), "waf": Claim(later + H, HI)})


def test_the_strike_record_is_never_later_than_the_entrys_latest_expiry() -> None:
    e = Entry({"waf": Claim(T0 + 4 * H, HI), "fa": Claim(T0 + 2 * H, L)}, 2, T0 + 3 * H)
    assert e.without("waf") == Entry({"fa": Claim(T0 + 2 * H, L)}, 2, T0 + 2 * H)
    assert e.without("fa") == e.with_claims({"waf": Claim(T0 + 4 * H, HI)})
    assert e.without("fa") == Entry({"waf": Claim(T0 + 4 * H, HI)}, 2, T0 + 3 * H)
    assert e.without("manual") is None
    assert e.live(T0 + 2 * H) == Entry({"waf": Claim(T0 + 4 * H, HI)}, 2, T0 + 3 * H)
    assert e.live(T0 + 4 * H) is None
    # through the model: a sighting published after "now" records a bucket past fa's expiry
    m = model()
    host = net("45.9.148.7/32")
    m.block(host, "log", "waf", T0, expiry=T0 + 4 * H, severity=HI, seen=T0 + 3 * H, ttl=H)
    feed(m, "fa", "45.9.148.7/32", 2, L)
    assert m.entries[host].bucket == T0 + 3 * H
    m.unblock(host, "waf", T0)
    assert m.entries[host] == Entry({"fa": Claim(T0 + 2 * H, L)}, 0, T0 + 2 * H)


def test_guards() -> None:
    m = model()
    assert m.screen(net("45.9.150.0/24"), "manual") is None  # allowlist
    assert m.screen(net("10.1.0.0/16"), "manual") is None  # special-purpose
    assert m.screen(net("45.8.0.0/15"), "feed") is None  # holds the allowlisted 45.9.150.0/26
    assert m.screen(net("46.0.0.0/15"), "manual") is None  # broader than /16
    assert m.screen(net("46.0.0.0/15"), "feed") == net("46.0.0.0/15")
    assert m.screen(net("2a0b:4142:0:1::5/128"), "manual") == net("2a0b:4142:0:1::5/128")


def test_evict_takes_the_entries_that_say_what_the_evicted_rule_says() -> None:
    m = model()
    feed(m, "fa", "45.9.148.0/25", 4, M)
    feed(m, "fa", "45.9.148.128/25", 4, M)
    feed(m, "fa", "45.9.149.0/25", 4, M)
    feed(m, "fb", "45.9.148.128/25", 12, L)
    gone = m.evict(net("45.9.148.0/24"), {"fa": Claim(T0 + 4 * H, M)}, T0)
    assert gone == [net("45.9.148.0/25")]  # not the /25 that also holds fb's claim, nor the one outside
    assert m.evict(net("45.9.148.128/25"), {"fb": Claim(T0 + 12 * H, L)}, T0) == []
    assert m.evict(net("45.9.148.128/25"), {"fa": Claim(T0 + 4 * H, M), "fb": Claim(T0 + 12 * H, L)}, T0) == [
        net("45.9.148.128/25")]


def test_eviction_order() -> None:
    low_soon = {"fa": Claim(T0 + H, L)}
    low_late = {"fb": Claim(T0 + 5 * H, L)}
    mixed = {"fa": Claim(T0 + H, L), "fb": Claim(T0 + 5 * H, M)}  # ranks by its highest and latest
    assert eviction_order_holds([low_soon], [low_late, mixed]) == ""
    assert eviction_order_holds([low_late], [low_soon])  # the sooner one must go first
    assert eviction_order_holds([low_soon, low_late], [mixed]) == ""
    assert eviction_order_holds([mixed], [low_late])  # the lighter one must go first
    assert eviction_order_holds([{"manual": Claim(T0 + H, L)}], []) == "a manual block was evicted"
    assert eviction_order_holds([mixed], [{"manual": Claim(T0 + H, L)}]) == ""  # manual never goes: not ranked


def test_evict_allows_for_copies_of_what_a_broader_entry_holds() -> None:
    m = model()
    manual(m, "45.9.148.64/26", 1, L)
    manual(m, "45.9.148.0/25", 6, HI)  # one claim per source and address: the /26's takes it in
    feed(m, "fa", "45.9.148.64/26", 4, M)
    assert entry_claims(m, "45.9.148.64/26") == {"manual": Claim(T0 + 6 * H, HI), "fa": Claim(T0 + 4 * H, M)}
    # the band may have dropped the /26's manual copy (the /25 holds as much): its /26 entry then says fa alone
    view = m.eviction_view(T0)
    assert view[net("45.9.148.64/26")] == {"manual": Claim(T0 + 6 * H, HI), "fa": Claim(T0 + 4 * H, M)}
    # and the /25 as it may be once packing aggregates what lies inside it with it
    assert view[net("45.9.148.0/25")] == {"manual": Claim(T0 + 6 * H, HI), "fa": Claim(T0 + 4 * H, M)}
    assert m.evict(net("45.9.148.64/26"), {"fa": Claim(T0 + 4 * H, L)}, T0) == []
    assert m.evict(net("45.9.148.64/26"), {"fa": Claim(T0 + 4 * H, M)}, T0) == [net("45.9.148.64/26")]
    assert m.answer(ip("45.9.148.70"), T0) == claims(manual=(6, HI))
    # an evicted entry may also hold such a copy the model's entry lacks
    feed(m, "fb", "45.9.148.0/25", 12, L)
    feed(m, "fa", "45.9.148.0/26", 4, M)
    assert m.evict(net("45.9.148.0/26"), {"fa": Claim(T0 + 4 * H, M), "fb": Claim(T0 + 2 * H, L)}, T0) == [net("45.9.148.0/26")]
