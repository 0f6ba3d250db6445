"""The group store's pure parts: aggregation of a feed's items, the exact
diff, and the group rule's description."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from responder.codec import GroupMeta, decode_group, encode_group
from responder.groups import AddressGroup, normalize_items
from responder.groupstore import items_by_version, plan_items

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
