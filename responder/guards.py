"""Safety guards: what no event may block, whatever it says.

Every intent passes ``screen`` before it reaches the planner:

* the network must parse; host bits are cleared and IPv4-mapped IPv6
  addresses become IPv4;
* single IPv6 hosts (and anything narrower than ``widen_v6_to``) from
  detectors and alerts widen to that prefix, since one host owns a /64;
* no block may overlap a special-purpose range (private, loopback,
  link-local, multicast, reserved, documentation, CGNAT, ...) nor the
  allowlist: such intents are refused whole, never trimmed;
* a block broader than the source kind's minimum prefix is refused, unless a
  manual block says ``force`` explicitly;
* an event may carry at most ``guards.max_ranges_per_event`` ranges.

Unblocks are only parsed: lifting a block is always allowed.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta

from config.settings import Settings
from responder.model import Intent, Network, Verb

SPECIAL_RANGES: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        # IPv4 special-purpose registry (RFC 6890 and successors)
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        # IPv6 special-purpose registry
        "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23",
        "2001:db8::/32", "3fff::/20", "fc00::/7", "fe80::/10", "ff00::/8",
    )
)


def parse_network(text: str) -> Network:
    """An address or CIDR as a network; raises ValueError saying why."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"not an IP address or CIDR: {text!r}")
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR: {text!r}") from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped and net.prefixlen >= 96:
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return net


def _overlaps(net: Network, others: Iterable[Network]) -> Network | None:
    for other in others:
        if other.version == net.version and net.overlaps(other):
            return other
    return None


def screen(
    intents: Iterable[Intent],
    kind: str,
    settings: Settings,
    *,
    force: bool = False,
) -> tuple[list[Intent], list[tuple[Intent, str]]]:
    """Splits intents into those that may go ahead (possibly widened) and
    those refused, each with a one-line reason."""
    source = settings.source(kind)
    accepted: list[Intent] = []
    refused: list[tuple[Intent, str]] = []
    for intent in intents:
        if intent.verb is Verb.UNBLOCK:
            accepted.append(intent)
            continue
        net = intent.network
        if net.version == 6 and source.widen_v6_to is not None and net.prefixlen > source.widen_v6_to:
            net = net.supernet(new_prefix=source.widen_v6_to)
            intent = replace(intent, network=net)
        if (special := _overlaps(net, SPECIAL_RANGES)) is not None:
            refused.append((intent, f"{net} overlaps the special-purpose range {special}"))
            continue
        if (allowed := _overlaps(net, settings.guards.allowlist)) is not None:
            refused.append((intent, f"{net} overlaps the allowlisted range {allowed}"))
            continue
        minimum = source.min_prefix_v4 if net.version == 4 else source.min_prefix_v6
        if net.prefixlen < minimum and not (force and kind == "manual"):
            refused.append((intent, f"{net} is broader than /{minimum}, the minimum prefix for {kind} sources"))
            continue
        accepted.append(intent)
    cap = settings.guards.max_ranges_per_event
    if len(accepted) > cap:
        refused.extend((i, f"over the cap of {cap} ranges per event") for i in accepted[cap:])
        accepted = accepted[:cap]
    return accepted, refused


class FloodBreaker:
    """A circuit breaker per kind of source, for one function instance.

    It counts the new block ranges each kind asks for in a sliding window
    (``flood_window``); past ``flood_limit`` the breaker is open and
    ``admit`` says what to do with the rest: put them in preview or refuse
    them (``on_flood``). Counting lives in this process only: instances that
    scale out count apart and a restart forgets, so the limit is a per-
    instance bound, documented as such. The clock is an argument.
    """

    def __init__(self) -> None:
        self._seen: dict[str, deque[tuple[datetime, int]]] = {}
        self._lock = threading.Lock()

    def admit(self, kind: str, count: int, now: datetime, limit: int, window: timedelta) -> bool:
        """Counts ``count`` new ranges; True while the total in the window
        stays within ``limit`` (always True when limit is 0)."""
        if limit <= 0 or count <= 0:
            return True
        with self._lock:
            seen = self._seen.setdefault(kind, deque())
            while seen and seen[0][0] <= now - window:
                seen.popleft()
            total = sum(n for _, n in seen)
            seen.append((now, count))
            return total + count <= limit
