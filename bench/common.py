"""Shared helpers of the benchmark suite: tables, budget verdicts, the local
Cloud Armor API, settings and seeded range generators."""

from __future__ import annotations

import copy
import ipaddress
import json
import random
import sys
import urllib.request
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

PROJECT = "bench-project"
POLICY = "ml-edge"

OPERATOR_RULES = [
    {"priority": 1000, "action": "allow", "description": "trusted: CI runners",
     "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["34.120.10.0/28"]}}},
    {"priority": 3000, "action": "deny(403)", "description": "WAF: SQL injection",
     "match": {"expr": {"expression": "evaluatePreconfiguredWaf('sqli-v33-stable')"}}},
    {"priority": 2147483647, "action": "allow", "description": "default rule",
     "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}}},
]


# ------------------------------------------------------------------ tables

@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([_cell(c) for c in cells])

    def text(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
                  for i, h in enumerate(self.headers)]
        line = "  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True))
        out = [self.title, line, "  ".join("-" * w for w in widths)]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in self.rows]
        out += [f"  * {n}" for n in self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |",
               "|" + "|".join("---" for _ in self.headers) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"* {n}" for n in self.notes]
        return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


@dataclass
class Budget:
    name: str
    met: bool
    detail: str


class Report:
    def __init__(self) -> None:
        self.tables: list[Table] = []
        self.budgets: list[Budget] = []
        self.extra: list[str] = []

    def table(self, table: Table) -> Table:
        """Registers a table (printed by ``show`` once its rows are in)."""
        self.tables.append(table)
        return table

    def show(self, table: Table) -> None:
        print("\n" + table.text(), flush=True)

    def budget(self, name: str, met: bool, detail: str) -> str:
        self.budgets.append(Budget(name, met, detail))
        verdict = "met" if met else "MISSED"
        print(f"  budget {verdict}: {name} ({detail})", flush=True)
        return verdict

    def note(self, text: str) -> None:
        self.extra.append(text)
        print("\n" + text, flush=True)


def verdict(met: bool) -> str:
    return "met" if met else "**MISSED**"


def ratio(value: float, base: float) -> str:
    if base == 0:
        return "-" if value == 0 else "inf"
    return f"{value / base:.3g}x"


# ------------------------------------------------------------- local API

def http(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.load(resp)


def start_api(quota: int = 200, op_delay: float = 0.0):  # -> LocalCloudArmor
    """The local API with TCP_NODELAY on its connections: its handler writes
    headers and body apart, so with Nagle + delayed ACK every answer on a
    kept-alive connection stalls ~40 ms (measured here: 45 ms -> 2.3 ms per
    addRule + wait). Calls are counted, not timed, so this changes no count."""
    import localapi.server
    from localapi import LocalCloudArmor

    localapi.server._Handler.disable_nagle_algorithm = True

    return LocalCloudArmor(op_delay=op_delay, quota=quota, wait_timeout=30.0, seed=7, project=PROJECT).start()


def create_policy(server: Any, rules: list[dict[str, Any]] | None = None) -> None:
    base = f"{server.endpoint}/compute/v1/projects/{PROJECT}/global"
    op = http("POST", f"{base}/securityPolicies", {"name": POLICY, "rules": copy.deepcopy(rules or OPERATOR_RULES)})
    done = http("POST", f"{base}/operations/{op['name']}/wait")
    assert done["status"] == "DONE" and "error" not in done, done


def request_counts(server: Any, since: int = 0) -> dict[str, int]:
    """Requests the local API served since index ``since``, by route method."""
    out: dict[str, int] = {}
    for entry in server.requests[since:]:
        route = entry.get("route") or "?"
        name = route.split(".")[-1]
        out[name] = out.get(name, 0) + 1
    return out


def settings(endpoint: str, *, band: tuple[int, int] = (20000, 20999), max_rules: int | None = None,
             read_cache: float | None = None) -> Any:
    """config/responder.toml pointed at the local API, with an optional
    larger band (bench-only: see each table's notes)."""
    from config import settings as config

    env = {"RESPONDER_PROJECT": PROJECT, "RESPONDER_POLICY": POLICY, "RESPONDER_API_ENDPOINT": endpoint,
           "RESPONDER_BAND_START": str(band[0]), "RESPONDER_BAND_END": str(band[1]),
           "RESPONDER_RETRY_DEADLINE": "10s"}
    s = config.load(ROOT / "config" / "responder.toml", environ=env)
    if max_rules is not None:
        s = replace(s, band=replace(s.band, max_rules=max_rules))
    if read_cache is not None:
        s = replace(s, policy=replace(s.policy, read_cache=timedelta(seconds=read_cache)))
    return s


# ------------------------------------------------------------- generators

def _public(net: ipaddress.IPv4Network) -> bool:
    return net.is_global and not net.is_multicast and not net.is_reserved


def random_network(rng: random.Random, prefix: int) -> ipaddress.IPv4Network:
    while True:
        addr = rng.randrange(1 << 24, 224 << 24)
        net = ipaddress.ip_network((addr >> (32 - prefix) << (32 - prefix), prefix))
        if _public(net):  # type: ignore[arg-type]
            return net  # type: ignore[return-value]


def _sibling(net: ipaddress.IPv4Network) -> ipaddress.IPv4Network | None:
    """The next block of the same size (an owner's adjacent allocation)."""
    nxt = int(net.network_address) + net.num_addresses
    if nxt >= 224 << 24:
        return None
    cand = ipaddress.ip_network((nxt, net.prefixlen))
    return cand if _public(cand) else None  # type: ignore[return-value]


def feed_list(n: int, mix: dict[int, float], seed: int, adjacent: float) -> list[ipaddress.IPv4Network]:
    """``n`` distinct public IPv4 networks with the prefix-length mix ``mix``
    (prefix -> share); a share ``adjacent`` of entries is the next block after
    the previous entry (as consecutive allocations of one owner), which is what
    aggregation can merge."""
    rng = random.Random(seed)
    prefixes = list(mix)
    weights = [mix[p] for p in prefixes]
    out: list[ipaddress.IPv4Network] = []
    seen: set[ipaddress.IPv4Network] = set()
    while len(out) < n:
        nxt = _sibling(out[-1]) if out and rng.random() < adjacent else None
        net = nxt or random_network(rng, rng.choices(prefixes, weights)[0])
        if net not in seen:
            seen.add(net)
            out.append(net)
    return out


#: Spamhaus DROP's shape: ~1,500 IPv4 ranges, mostly /24, then /16-/23, a few broader.
DROP_MIX = {24: 0.55, 23: 0.10, 22: 0.12, 21: 0.06, 20: 0.05, 19: 0.04, 18: 0.02, 17: 0.02, 16: 0.025,
            15: 0.005, 14: 0.003, 13: 0.002}
#: FireHOL level1's shape: ~4,500 entries, many single hosts and /24s, some big ranges.
FIREHOL_MIX = {32: 0.45, 31: 0.01, 30: 0.01, 29: 0.02, 28: 0.02, 27: 0.02, 26: 0.02, 25: 0.02, 24: 0.25,
               23: 0.04, 22: 0.05, 21: 0.03, 20: 0.02, 19: 0.015, 18: 0.01, 17: 0.008, 16: 0.01,
               15: 0.003, 14: 0.002, 13: 0.002, 12: 0.001}
#: One event's indicators in the calls-per-event table: single hosts and /24s.
EVENT_MIX = {32: 0.8, 24: 0.2}


def collapse(nets: list[Any]) -> list[Any]:
    return list(ipaddress.collapse_addresses(nets))
