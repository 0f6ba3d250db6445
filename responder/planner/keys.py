"""Networks as keys: the plain tuples the planner computes with.

Invariant: a key is ``(version, first address, prefix length)`` of a strict
network (no host bits set), so ``key_of(to_network(k)) == k`` and
``text(k) == str(to_network(k))`` for every key. Keys hash and compare in C,
sort as a rule lists its ranges, and a key's supernets are integer shifts
away: the planner works on keys and builds network objects only for what it
returns.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from operator import attrgetter, itemgetter

from responder.model import Network

Key = tuple[int, int, int]

BITS = {4: 32, 6: 128}
"""Address bits by IP version: a key whose prefix length is its version's
bits is a single address."""

key_of: Callable[[Network], Key] = attrgetter("_version", "network_address._ip", "_prefixlen")
"""``(net.version, int(net.network_address), net.prefixlen)``, read in one C
call from the attributes behind those properties (a quarter of the time)."""

address: Callable[[Key], int] = itemgetter(1)
"""A key's first address (to sort by it)."""


def to_network(k: Key) -> Network:
    """The network object of a key."""
    version, first, prefixlen = k
    return (ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)((first, prefixlen))


_OCTETS = [str(i) for i in range(256)]


def text(k: Key) -> str:
    """``str()`` of the key's network, without building it."""
    version, a, prefixlen = k
    if version == 4:
        o = _OCTETS
        return f"{o[a >> 24]}.{o[a >> 16 & 255]}.{o[a >> 8 & 255]}.{o[a & 255]}/{prefixlen}"
    return f"{ipaddress.IPv6Address(a)}/{prefixlen}"
