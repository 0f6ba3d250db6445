"""Keys and the networks the planner makes from them: a network built from a
key (``to_network``, which skips ``IPv4Network.__init__``) and a range read
from a rule (``band._parse``) are the same as ``ipaddress`` parses, in every
way a caller sees."""

from __future__ import annotations

import copy
import ipaddress
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.planner.band import _parse
from responder.planner.keys import key_of, text, to_network

pytestmark = pytest.mark.property


@st.composite
def networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    version = draw(st.sampled_from([4, 4, 4, 6]))
    bits = 32 if version == 4 else 128
    prefix = draw(st.integers(0, bits))
    first = draw(st.integers(0, (1 << bits) - 1)) >> (bits - prefix) << (bits - prefix)
    return ipaddress.ip_network((first, prefix))


def _same(made: ipaddress.IPv4Network | ipaddress.IPv6Network, want: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    assert type(made) is type(want)
    assert made == want and hash(made) == hash(want) and not made < want and not want < made
    assert (str(made), repr(made), made.with_netmask, made.with_hostmask) == (str(want), repr(want), want.with_netmask, want.with_hostmask)
    assert (made.network_address, made.netmask, made.hostmask, made.broadcast_address) == (
        want.network_address, want.netmask, want.hostmask, want.broadcast_address)
    assert (made.prefixlen, made.num_addresses, made.version, made.max_prefixlen) == (
        want.prefixlen, want.num_addresses, want.version, want.max_prefixlen)
    assert (made.is_private, made.is_global, made.is_multicast, made.is_reserved) == (
        want.is_private, want.is_global, want.is_multicast, want.is_reserved)
    assert want.network_address in made and made.broadcast_address in want
    assert made.subnet_of(want) and made.supernet_of(want) and made.overlaps(want)
    if made.prefixlen:
        assert made.supernet() == want.supernet() and made.supernet().subnet_of(made.supernet())
    if made.prefixlen < made.max_prefixlen:
        assert list(made.subnets()) == list(want.subnets())
        half = next(want.subnets())
        assert list(made.address_exclude(half)) == list(want.address_exclude(half))
    assert list(ipaddress.collapse_addresses([made, want])) == [want]
    assert {made: 1}[want] == 1
    assert pickle.loads(pickle.dumps(made)) == want and copy.deepcopy(made) == want
    assert key_of(made) == key_of(want) and text(key_of(made)) == str(want)


@settings(max_examples=300, deadline=None)
@given(networks())
def test_a_network_made_from_its_key_is_the_parsed_network(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    _same(to_network(key_of(net)), net)


@settings(max_examples=300, deadline=None)
@given(networks())
def test_a_range_read_from_a_rule_is_the_parsed_network(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    _same(_parse(str(net)), net)


@pytest.mark.parametrize("written", ["10.0.0.1/8", "010.0.0.0/8", "10.0.0.0/33", "1.2.3/24", "10.0.0.0", "::1/129", "x"])
def test_a_range_not_written_as_ours_is_parsed_strictly(written: str) -> None:
    try:
        want = ipaddress.ip_network(written, strict=True)
    except ValueError:
        with pytest.raises(ValueError):
            _parse(written)
        return
    _same(_parse(written), want)
