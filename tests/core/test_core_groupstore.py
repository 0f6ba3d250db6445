"""The group store's pure parts: aggregation of a feed's items, the exact
diff, and the group rule's description."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from responder.codec import GroupMeta, decode_group, encode_group
from responder.groups import AddressGroup, normalize_items
from responder.groupstore import items_by_version, plan_items, plan_lift

v4 = st.builds(lambda a, p: ipaddress.ip_network((a >> (32 - p) << (32 - p), p)),
               st.integers(0, 2**32 - 1), st.integers(20, 32))
v6 = st.builds(lambda a, p: ipaddress.ip_network((a >> (128 - p) << (128 - p), p)),
               st.integers(0, 2**20 - 1).map(lambda x: (0x2A0B << 112) + (x << 80)), st.integers(40, 128))


@given(st.lists(st.one_of(v4, v6), max_size=60))
def test_items_are_the_collapsed_networks_normalised(nets: list) -> None:
    expected = {
        version: normalize_items(ipaddress.collapse_addresses([n for n in nets if n.version == version]))
        for version in (4, 6)
    }
    assert expected == items_by_version(nets)


def test_the_diff_is_exact_and_a_list_past_the_capacity_is_a_replacement() -> None:
    group = AddressGroup("car-f-v4-1", "IPV4", 4, ("192.0.2.0/24", "198.51.100.7/32"))
    diff = plan_items(group, ["192.0.2.0/24", "203.0.113.0/25"], lambda n: n * 2)
    assert (diff.add, diff.remove, diff.replace) == (("203.0.113.0/25",), ("198.51.100.7/32",), False)
    grown = plan_items(group, [f"203.0.113.{i}/32" for i in range(5)], lambda n: n * 2)
    assert (grown.replace, grown.capacity, len(grown.add), grown.remove) == (True, 10, 5, ())


def test_a_group_rule_description_round_trips_within_64_characters() -> None:
    meta = GroupMeta("sixteen-chars-ok", 6, datetime(2026, 12, 5, 18, 30, tzinfo=UTC))
    text = encode_group("car1", meta)
    assert len(text) <= 64 and decode_group("car1", text) == meta
    assert decode_group("car1", "car1 x=202612051830 v=m s=feed") is None  # a range rule is not a group rule
    assert decode_group("car2", text) is None


def _addresses(items: tuple[str, ...] | list[str]) -> set[int]:
    return {int(a) for i in items for a in ipaddress.ip_network(i)}


def test_the_diff_adds_first_when_the_group_holds_the_adds_on_top() -> None:
    group = AddressGroup("car-f-v4-1", "IPV4", 10, ("45.9.148.0/24", "198.51.100.7/32"))
    split = ["45.9.148.0/25", "45.9.148.128/26", "45.9.148.192/27", "198.51.100.7/32"]
    diff = plan_items(group, split, lambda n: n * 2)
    assert (diff.replace, diff.first, diff.add, diff.last, diff.peak) == (
        False, (), tuple(split[:3]), ("45.9.148.0/24",), 5)


def test_a_full_group_removes_only_true_withdrawals_before_the_adds() -> None:
    # 5 of 7 held: 9 with the adds on top. A /24 split in 3, another kept in part (neither a withdrawal).
    group = AddressGroup("car-f-v4-1", "IPV4", 7, ("45.9.148.0/24", "45.9.150.0/24", "198.51.100.7/32",
                                                   "198.51.100.9/32", "203.0.113.0/24"))
    want = ["45.9.148.0/25", "45.9.148.128/26", "45.9.148.192/27", "45.9.150.0/25", "203.0.113.0/24"]
    diff = plan_items(group, want, lambda n: n * 2)
    assert diff.replace is False
    assert diff.first == ("198.51.100.7/32", "198.51.100.9/32")  # no wanted item overlaps them
    assert diff.add == ("45.9.148.0/25", "45.9.148.128/26", "45.9.148.192/27", "45.9.150.0/25")
    assert diff.last == ("45.9.148.0/24", "45.9.150.0/24")  # they go once their parts are in
    assert diff.peak == 5 - 2 + 4 == group.capacity


def test_a_change_no_in_place_order_fits_is_a_replacement_filled_with_the_list() -> None:
    group = AddressGroup("car-f-v4-1", "IPV4", 4, ("45.9.148.0/24", "198.51.100.7/32"))
    want = ["45.9.148.0/25", "45.9.148.128/26", "45.9.148.192/27", "198.51.100.7/32"]
    diff = plan_items(group, want, lambda n: n * 2)
    assert (diff.replace, diff.why, diff.capacity, diff.add, diff.remove, diff.peak) == (
        True, "order", 8, tuple(want), (), 5)
    merged = plan_items(AddressGroup("car-f-v4-1", "IPV4", 3, ("45.9.148.0/25", "45.9.148.128/25")),
                        ["45.9.148.0/24"], lambda n: n * 2)
    assert (merged.replace, merged.add, merged.first, merged.last) == (  # 3 <= 3: the /24 first, then the halves
        False, ("45.9.148.0/24",), (), ("45.9.148.0/25", "45.9.148.128/25"))


def test_a_lift_splits_one_item_around_several_holes() -> None:
    group = AddressGroup("car-f-v4-1", "IPV4", 40, ("45.9.148.0/24", "198.51.100.7/32"))
    holes = [ipaddress.ip_network(h) for h in ("45.9.148.7/32", "45.9.148.64/27", "45.9.148.200/31",
                                               "8.8.8.8/32", "2a0b:4142::/48")]
    lift = plan_lift(group, holes)
    assert lift is not None
    assert (lift.group, lift.holes, lift.inside, lift.broad) == (
        "car-f-v4-1", ("45.9.148.7/32", "45.9.148.64/27", "45.9.148.200/31"), (), ("45.9.148.0/24",))
    assert _addresses(lift.parts) == _addresses(["45.9.148.0/24"]) - _addresses(lift.holes)
    assert len(_addresses(lift.parts)) == sum(ipaddress.ip_network(p).num_addresses for p in lift.parts)  # disjoint
    assert (lift.size, lift.peak, lift.after, lift.fits) == (2, 2 + len(lift.parts), 1 + len(lift.parts), True)


def test_a_lift_touching_two_items_splits_each_and_removes_one_inside_a_hole() -> None:
    group = AddressGroup("car-f-v4-1", "IPV4", 12,
                         ("45.9.148.0/24", "45.9.149.0/26", "185.220.101.0/24", "198.51.100.7/32"))
    holes = [ipaddress.ip_network(h) for h in ("45.9.148.7/32", "45.9.149.0/24", "185.220.101.128/25")]
    lift = plan_lift(group, holes)
    assert lift is not None
    assert lift.inside == ("45.9.149.0/26",)  # inside the lifted /24: removed
    assert lift.broad == ("45.9.148.0/24", "185.220.101.0/24")
    assert lift.holes == ("45.9.148.7/32", "45.9.149.0/24", "185.220.101.128/25")
    assert _addresses(lift.parts) == (_addresses(["45.9.148.0/24"]) - _addresses(["45.9.148.7/32"])) | _addresses(
        ["185.220.101.0/25"])
    assert "185.220.101.0/25" in lift.parts
    assert (lift.peak, lift.after, lift.fits) == (4 - 1 + 9, 4 - 1 + 9 - 2, True)  # 8 + 1 parts
    small = plan_lift(AddressGroup("car-f-v4-1", "IPV4", 11, group.items), holes)
    assert small is not None and not small.fits  # 12 at the peak, over 11


def test_a_lift_of_exactly_an_item_removes_it_and_adds_nothing() -> None:
    group = AddressGroup("car-f-v4-1", "IPV4", 4, ("185.220.101.0/24", "198.51.100.7/32"))
    lift = plan_lift(group, [ipaddress.ip_network("185.220.101.0/24")])
    assert lift is not None
    assert (lift.holes, lift.inside, lift.broad, lift.parts) == (("185.220.101.0/24",), ("185.220.101.0/24",), (), ())
    assert (lift.peak, lift.after, lift.fits) == (1, 1, True)
    assert plan_lift(group, [ipaddress.ip_network("185.220.102.0/24")]) is None  # touches no item


small = st.builds(lambda a, p: ipaddress.ip_network(((0x2D099000 + a) >> (32 - p) << (32 - p), p)),
                  st.integers(0, 2**10 - 1), st.integers(26, 32))  # within 45.9.144.0/22


@given(st.lists(small, min_size=1, max_size=12), st.lists(small, min_size=1, max_size=12),
       st.integers(0, 8), st.integers(1, 4))
def test_no_in_place_order_unblocks_what_both_lists_block_or_overfills_the_group(
        old: list, new: list, room: int, batch: int) -> None:
    have, want = items_by_version(old)[4], items_by_version(new)[4]
    group = AddressGroup("car-f-v4-1", "IPV4", len(have) + room, tuple(have))
    diff = plan_items(group, want, lambda n: n * 2)
    if diff.replace:
        assert diff.why == "capacity" and len(want) > group.capacity or diff.why == "order" and diff.peak > group.capacity
        return
    need = _addresses(have) & _addresses(want)
    held = set(have)
    for items, kind in ((diff.first, "remove"), (diff.add, "add"), (diff.last, "remove")):
        for at in range(0, len(items), batch):
            part = set(items[at:at + batch])
            assert (part <= held) == (kind == "remove") and (part & held == set()) == (kind == "add")  # exact
            held = held - part if kind == "remove" else held | part
            assert len(held) <= group.capacity
            assert need <= _addresses(sorted(held))
    assert sorted(held) == sorted(want)
