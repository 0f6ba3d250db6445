"""A generated, seeded stand-in for the four feeds platform teams pull
(Spamhaus DROP, FireHOL level1, Emerging Threats compromised IPs, Tor
exits), in each feed's own file format. No list is copied: every range is
drawn from public IPv4 space in the prefix-length mix of the published
lists, so figures computed from it are those of a real-sized set.

Shared by the capacity tests (tests/e2e/test_capacity.py) and the
convergence benchmarks (bench/convergence.py); ``python -m bench.feeds DIR``
writes the four files.

The four lists are disjoint: no range overlaps another of any list (the
real FireHOL level1 includes DROP; overlap would only make the set smaller
after aggregation, so disjoint lists are the harder case).
"""

from __future__ import annotations

import bisect
import ipaddress
import random
import sys
from dataclasses import dataclass
from pathlib import Path

#: Spamhaus DROP's shape: mostly /24-/20, a share of /22s, some /16-/19.
DROP_MIX = {24: 0.36, 23: 0.10, 22: 0.17, 21: 0.10, 20: 0.09, 19: 0.06, 18: 0.05, 17: 0.03, 16: 0.04}
#: FireHOL level1's shape: single hosts and /24s above all, everything from /31 to /12 besides.
FIREHOL_MIX = {32: 0.45, 31: 0.01, 30: 0.01, 29: 0.02, 28: 0.02, 27: 0.02, 26: 0.02, 25: 0.02, 24: 0.25,
               23: 0.04, 22: 0.05, 21: 0.03, 20: 0.02, 19: 0.015, 18: 0.01, 17: 0.008, 16: 0.01,
               15: 0.003, 14: 0.002, 13: 0.002, 12: 0.001}

#: name -> (format, entries, what it stands for)
FEEDS = {
    "spamhaus-drop": ("spamhaus", 1500, "DROP-like CIDRs"),
    "firehol-l1": ("netset", 4500, "FireHOL-level1-like CIDRs and hosts"),
    "et-compromised": ("plain", 1000, "ET-like /32s"),
    "tor-exits": ("tor", 1500, "Tor-like /32s"),
}
SEED = 2026


@dataclass(frozen=True)
class Feed:
    name: str
    format: str
    networks: tuple[ipaddress.IPv4Network, ...]
    body: bytes

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.name}.txt"
        path.write_bytes(self.body)
        return path


class _Taken:
    """Non-overlapping address intervals, so that no generated range
    overlaps another of any list."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, net: ipaddress.IPv4Network) -> bool:
        start, end = int(net.network_address), int(net.broadcast_address)
        i = bisect.bisect_right(self.starts, end)
        if i and self.ends[i - 1] >= start:
            return False
        self.starts.insert(i, start)
        self.ends.insert(i, end)
        return True


def _public(net: ipaddress.IPv4Network) -> bool:
    return net.is_global and not net.is_multicast and not net.is_reserved


#: Kept out of every list: the shipped allowlist (Google's health checks).
_ALLOWLIST = (ipaddress.ip_network("35.191.0.0/16"), ipaddress.ip_network("130.211.0.0/22"))


def _net(addr: int, prefix: int) -> ipaddress.IPv4Network | None:
    net = ipaddress.IPv4Network((addr >> (32 - prefix) << (32 - prefix), prefix))
    if not _public(net) or any(net.overlaps(a) for a in _ALLOWLIST):
        return None
    return net


def _draw(rng: random.Random, n: int, mix: dict[int, float], taken: _Taken, adjacent: float,
          hubs: int = 0) -> list[ipaddress.IPv4Network]:
    """``n`` networks in the prefix mix; a share ``adjacent`` is the block
    right after the previous one (an owner's consecutive allocations, which
    aggregation merges). ``hubs``: hosts cluster in that many hosting /24s
    (as Tor exits do)."""
    prefixes, weights = list(mix), list(mix.values())
    centres = [rng.randrange(1 << 24, 224 << 24) >> 8 << 8 for _ in range(hubs)]
    out: list[ipaddress.IPv4Network] = []
    while len(out) < n:
        prefix = rng.choices(prefixes, weights)[0]
        if out and rng.random() < adjacent and out[-1].prefixlen == prefix:
            addr = int(out[-1].broadcast_address) + 1
        elif hubs and rng.random() < 0.6:
            addr = rng.choice(centres) + rng.randrange(256)
        else:
            addr = rng.randrange(1 << 24, 224 << 24)
        if addr >= 224 << 24:
            continue
        net = _net(addr, prefix)
        if net is not None and taken.add(net):
            out.append(net)
    return out


def _spamhaus(nets: list[ipaddress.IPv4Network], rng: random.Random) -> bytes:
    lines = ["; Spamhaus DROP-like list (generated for tests; not Spamhaus data)", "; Last-Modified: generated", "; Expires: generated"]
    lines += [f"{n} ; SBL{rng.randrange(100000, 700000)}" for n in nets]
    return ("\n".join(lines) + "\n; EOF\n").encode()


def _netset(nets: list[ipaddress.IPv4Network]) -> bytes:
    head = ["#", "# firehol_level1-like netset (generated for tests; not FireHOL data)", "#"]
    body = [str(n.network_address) if n.prefixlen == 32 else str(n) for n in nets]
    return ("\n".join(head + body) + "\n").encode()


def _plain(nets: list[ipaddress.IPv4Network]) -> bytes:
    return ("\n".join(str(n.network_address) for n in nets) + "\n").encode()


def four_feeds(seed: int = SEED, scale: float = 1.0) -> dict[str, Feed]:
    """The four lists, disjoint, in their own formats (``scale`` shrinks
    the entry counts for quicker tests)."""
    rng = random.Random(seed)
    taken = _Taken()
    counts = {name: max(1, round(n * scale)) for name, (_, n, _) in FEEDS.items()}
    drop = _draw(rng, counts["spamhaus-drop"], DROP_MIX, taken, adjacent=0.12)
    firehol = _draw(rng, counts["firehol-l1"], FIREHOL_MIX, taken, adjacent=0.15)
    et = _draw(rng, counts["et-compromised"], {32: 1.0}, taken, adjacent=0.05)
    tor = _draw(rng, counts["tor-exits"], {32: 1.0}, taken, adjacent=0.10, hubs=max(1, counts["tor-exits"] // 25))
    rng.shuffle(et)  # ET publishes unsorted
    return {
        "spamhaus-drop": Feed("spamhaus-drop", "spamhaus", tuple(drop), _spamhaus(drop, rng)),
        "firehol-l1": Feed("firehol-l1", "netset", tuple(firehol), _netset(firehol)),
        "et-compromised": Feed("et-compromised", "plain", tuple(et), _plain(et)),
        "tor-exits": Feed("tor-exits", "tor", tuple(tor), _plain(tor)),
    }


def sized_list(size: int, seed: int = SEED) -> tuple[bytes, int]:
    """A plain list of about ``size`` bytes of public single addresses and
    /24s (a large reputation list), and its number of entries."""
    rng = random.Random(seed)
    lines: list[str] = []
    total = 0
    seen: set[int] = set()
    while total < size:
        addr = rng.randrange(1 << 24, 224 << 24)
        prefix = 24 if rng.random() < 0.1 else 32
        net = _net(addr, prefix)
        if net is None or int(net.network_address) in seen:
            continue
        seen.add(int(net.network_address))
        line = str(net.network_address) if prefix == 32 else str(net)
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode(), len(lines)


FEED_CONFIG = """
[feeds.spamhaus-drop]
format = "spamhaus"
snapshot = true
ttl = "2d"

[feeds.firehol-l1]
format = "netset"
snapshot = true
ttl = "1d"

[feeds.et-compromised]
format = "plain"
ttl = "1d"

[feeds.tor-exits]
format = "tor"
ttl = "3h"
"""
"""The four feeds' sections (urls added by whoever serves them)."""


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    folder.mkdir(parents=True, exist_ok=True)
    for feed in four_feeds().values():
        print(feed.write(folder))
