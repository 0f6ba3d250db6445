"""Concurrency and fault campaigns against one local Cloud Armor API.

    .venv/bin/python scripts/campaign.py --workers 16 --events 2000 [--concurrency 4] [--faults 0.25] [--kill] [--seed N]
        [--targets 2 [--fault-target notebooks]] [--group-feed]

The parent process starts a :class:`localapi.LocalCloudArmor` (operations
finish after a random delay, so they complete out of order), creates the
cluster policy with operator rules around the band and one foreign rule
inside it, and snapshots them. It then plays Pub/Sub: it generates events
from every source wired in ``handlers/`` (manual block / extend / unblock,
JSON threat feeds, log-sink entries matched by the built-in detectors, SCC
findings and Monitoring incidents) with fixed publish times, and hands them
to N worker **processes**. Each worker is one gen2 instance with
``deploy.concurrency`` = ``--concurrency`` C: it builds the five entry points
once with ``functions_framework.create_app(...)`` (one Runtime, responder and
adapter per process, as functions-framework has) and serves up to C events
at once on a pool of C threads, each delivering its event as a binary-mode
CloudEvent (``scripts/eventarc.py``) through a test client of the shared
app. The parent keeps up to C events in flight per worker; an event whose
function answers anything but 2xx is redelivered (same messageId and
publishTime) to the next worker with a free slot, at most
``max_deliveries`` times. With ``--kill`` the parent SIGKILLs the worker
holding the band lease, and later a busy one, mid-run; all their unacked
events go to other workers, as Pub/Sub would, and a fresh worker takes the
dead one's place.

Events come in two phases so that the final band is a function of the events
alone (Pub/Sub gives no order): phase A blocks from every source; phase B
extends ranges blocked in A, lifts a few ranges (manual unblock) and blocks
more ranges that do not overlap the lifted ones. After one ``on_cleanup`` the
band is checked address by address against a reference model computed from
the generated events only (no product code): every address that should be
blocked is, with the latest requested expiry rounded up to the 15-minute
granularity, nothing else is; no two rules share a priority; the rules
outside the band and the foreign rule are unchanged field for field.

A full rule quota makes the lease holder evict (lowest severity, soonest
expiry, never manual), and an evicted block stays missing unless a later
event names it again, so where the run ends depends on timing. Evictions are
therefore read back from the workers' audit records (``evicted``, with the
ranges and their sources): a missing address or a shorter expiry inside an
evicted range is counted as *evicted*, not as a difference; every other
difference counts, an eviction of a manual block is a problem, and so is a
manually blocked address that ends up missing.

``--targets 2`` adds a regional policy (same name, same band numbers, its own
operator and foreign rules) as the ``[[targets]]`` entry "notebooks": every
event applies to both targets except a share of the manual blocks, narrowed
to one with the attribute ``targets=NAME``; each policy is checked as above
against the reference computed for it (the blocks of every target plus those
narrowed to it; unblocks and extends name every target). ``--fault-target``
aims the faults at one policy's routes.

``--group-feed`` runs the local API on the Enterprise tier and adds a
snapshot feed stored in address groups: a few equal snapshots in phase A and
one changed snapshot in phase B, so the final group is the phase B list
whatever the delivery order. After the cleanup the band of the default
target must hold one rule per IP version referencing the feed's group, each
group must hold exactly that list aggregated, and no group of ours may be
left without a rule referencing it.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import math
import multiprocessing
import os
import random
import re
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "scripts")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

PROJECT = "campaign-project"
POLICY = "ml-edge"
BAND = (20000, 20999)
OWNER_TAG = "car1"
GRANULARITY = timedelta(minutes=15)
ENTRY_POINTS = ("on_threat_feed", "on_log_sink", "on_alert", "on_manual", "on_cleanup")
FOREIGN_PRIORITY = 20500
LEASE_LABEL = "car-lease"

OPERATOR_RULES: list[dict[str, Any]] = [
    {"priority": 1000, "action": "allow", "description": "trusted: CI runners",
     "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["34.120.10.0/28"]}}},
    {"priority": 3000, "action": "deny(403)", "description": "WAF: SQL injection",
     "match": {"expr": {"expression": "evaluatePreconfiguredWaf('sqli-v33-stable')"}}},
    {"priority": 30000, "action": "deny(404)", "description": "operator block after the band",
     "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["5.188.10.0/23"]}}},
    {"priority": 2147483647, "action": "allow", "description": "default rule",
     "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}}},
]
FOREIGN_RULE: dict[str, Any] = {
    "priority": FOREIGN_PRIORITY, "action": "deny(403)", "description": "team-x block inside the band",
    "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["2.58.56.0/24"]}},
}

# TTLs the generator asks for, and the ones the shipped configuration gives
# (config/detectors.toml, [alerts.*] of config/responder.toml). The reference
# model uses these numbers, never the product's code.
WAF_TTL = timedelta(hours=6)  # detector cloud-armor-waf
PROBE_TTL = timedelta(hours=24)  # detector ml-control-plane-probe
SCC_TTL = {"HIGH": timedelta(hours=24), "MEDIUM": timedelta(hours=6)}  # alerts.scc.ttl_by_severity
MONITORING_TTL = timedelta(hours=6)  # alerts.monitoring.ttl
EXTEND_TTL = timedelta(hours=48)
MANUAL_TTLS = ("2h", "6h", "24h")
FEED_TTLS = ("6h", "12h", "24h")
FEEDS = ("feed-a", "feed-b", "feed-c")
# --targets 2: a second, regional policy (same name and band numbers, its own
# band), the [[targets]] entry "notebooks"; manual messages may narrow targets.
REGION = "europe-west4"
TARGETS = ("default", "notebooks")
NARROW_SHARE = 0.35  # manual blocks narrowed to one target (attribute targets=...)
# --group-feed: one snapshot feed stored in address groups (default target only).
GROUP_FEED = "feed-g"
GROUP_TTL = timedelta(days=1)
GROUP_PREFIX = "car-"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---------------------------------------------------------------------------
# Settings of one campaign


@dataclass
class Spec:
    workers: int = 16
    events: int = 2000
    concurrency: int = 4  # events in flight per worker process (deploy.concurrency), one thread each
    faults: float = 0.0  # probability of a fault on a read (mutations: 4/3 of it)
    kill: bool = False
    seed: int = 1
    op_delay: tuple[float, float] = (0.05, 0.6)
    max_rules: int = 150  # band.max_rules
    quota: int = 200  # the local API's project rule quota
    universe: int = 0  # distinct networks (0: 80% of max_rules, at most 120)
    lease_duration: int = 30  # seconds ([lease] duration); at least 2 x (request + operation timeout + margin)
    lease_wait: int = 45
    retry_deadline: str = "10s"
    request_timeout: str = "2s"
    operation_timeout: str = "5s"  # the lease's timing bound: 2 x (2 s + 5 s + 1 s) <= lease_duration
    lease_margin: str = "1s"
    commit_then_timeout_mode: str = "delay"
    commit_then_timeout_delay: float = 3.0
    max_deliveries: int = 40
    phase_b_share: float = 0.3
    targets: int = 1  # 2: a regional policy as the [[targets]] entry "notebooks"
    group_feed: bool = False  # a snapshot feed stored in address groups (Enterprise tier)
    fault_target: str = "all"  # --targets 2: "default" or "notebooks" aims the faults at that policy's routes
    time_limit: float = 3600.0
    verbose: bool = False

    def universe_size(self) -> int:
        return self.universe or min(120, int(self.max_rules * 0.8))


@dataclass
class Event:
    idx: int
    phase: str
    target: str
    data: bytes
    attributes: dict[str, str]
    message_id: str
    publish_time: datetime
    kind: str


@dataclass
class Plan:
    """The generated events and the reference model they imply."""

    phases: list[list[Event]]
    blocks_a: list[tuple[Network, datetime | None]]
    blocks_b: list[tuple[Network, datetime | None]]
    lifted: list[Network]
    kinds: Counter[str] = field(default_factory=Counter)
    # manual blocks narrowed to one target (attribute targets=NAME): target -> (phase A, phase B)
    narrowed: dict[str, tuple[list[tuple[Network, datetime | None]], list[tuple[Network, datetime | None]]]] = field(
        default_factory=dict)
    group_items: list[Network] = field(default_factory=list)  # the group feed's final (phase B) snapshot


# ---------------------------------------------------------------------------
# The generator and the reference model


def round_up(moment: datetime, step: timedelta = GRANULARITY) -> datetime:
    s = int(step.total_seconds())
    return datetime.fromtimestamp(math.ceil(moment.timestamp() / s) * s, tz=UTC)


def _ttl(text: str) -> timedelta:
    return timedelta(hours=int(text[:-1]))


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def universe(size: int, rng: random.Random) -> dict[str, list[Network]]:
    """``size`` distinct networks in pools by what may name them. Hosts lie
    inside the feeds' /24s too, and neighbouring hosts aggregate."""
    n = ipaddress.ip_network
    k = max(1, size // 16)
    supers = [n(f"185.220.{100 + i}.0/24") for i in range(k)]
    mids = [n(f"91.92.{109 + i // 4}.{(i % 4) * 32}/28") for i in range(k)]
    v6_48 = [n(f"2a0b:4142:{i + 1:x}::/48") for i in range(max(1, k // 2))]
    v6_hosts = [f"2a0b:4142:{(i % len(v6_48)) + 1:x}:{i + 1:x}::{i + 7:x}" for i in range(max(1, k))]
    inner_count = 2 * k
    inner = [f"185.220.{100 + rng.randrange(k)}.{rng.randrange(1, 255)}" for _ in range(inner_count * 2)]
    inner = list(dict.fromkeys(inner))[:inner_count]
    rest = size - len(supers) - len(mids) - len(v6_48) - len(v6_hosts) - len(inner)
    outer: list[str] = []
    base = 0
    while len(outer) < max(rest, 4):
        block = f"45.{9 + base // 200}.{148 + (base // 50) % 4}"
        start = rng.randrange(0, 250)
        run = rng.choice((1, 1, 2, 2, 4))  # adjacent hosts aggregate when their metadata agree
        outer.extend(f"{block}.{start + j}" for j in range(run) if start + j < 255)
        base += 7
        outer = list(dict.fromkeys(outer))
    outer = outer[: max(rest, 4)]
    return {
        "supers": supers, "mids": mids, "v6_48": v6_48,
        "hosts4": [n(h) for h in inner + outer],
        "v6_hosts": [ipaddress.ip_address(h) for h in v6_hosts],  # type: ignore[misc]
    }


def _v6_64(addr: Any) -> Network:
    return ipaddress.ip_network(f"{addr}/64", strict=False)


def lb_entry(remote: str, when: datetime, *, waf: bool) -> dict[str, Any]:
    """An external Application Load Balancer request log entry: a WAF denial
    (detector cloud-armor-waf) or an ML control-plane probe that got through
    (detector ml-control-plane-probe)."""
    payload: dict[str, Any] = {
        "@type": "type.googleapis.com/google.cloud.loadbalancing.type.LoadBalancerLogEntry",
        "statusDetails": "response_sent_by_backend",
    }
    url = "https://api.example.com/v1/models/predict?q=1%27%20or%201=1" if waf else "https://ray.example.com/api/jobs/"
    if waf:
        payload["enforcedSecurityPolicy"] = {"name": POLICY, "priority": 3000, "configuredAction": "DENY",
                                             "outcome": "DENY", "preconfiguredExprIds": ["owasp-crs-v030301-id942100-sqli"]}
        payload["statusDetails"] = "denied_by_security_policy"
    return {
        "insertId": f"i{random.getrandbits(40):x}",
        "jsonPayload": payload,
        "httpRequest": {"requestMethod": "GET", "requestUrl": url, "status": 403 if waf else 200,
                        "remoteIp": remote, "userAgent": "python-requests/2.31", "latency": "0.002s"},
        "resource": {"type": "http_load_balancer",
                     "labels": {"project_id": PROJECT, "forwarding_rule_name": "fr", "url_map_name": "um"}},
        "timestamp": _stamp(when), "receiveTimestamp": _stamp(when),
        "severity": "WARNING" if waf else "INFO",
        "logName": f"projects/{PROJECT}/logs/requests",
    }


def scc_finding(ips: list[str], severity: str, when: datetime) -> dict[str, Any]:
    finding = {
        "name": f"organizations/1/sources/2/findings/f{random.getrandbits(40):x}", "parent": "organizations/1/sources/2",
        "resourceName": "//compute.googleapis.com/projects/p/zones/z/instances/gpu-node-1",
        "state": "ACTIVE", "category": "Malware: Bad IP", "severity": severity, "findingClass": "THREAT",
        "indicator": {"ipAddresses": ips}, "eventTime": _stamp(when), "createTime": _stamp(when),
    }
    return {"notificationConfigName": "organizations/1/notificationConfigs/car", "finding": finding,
            "resource": {"name": finding["resourceName"]}}


def monitoring_incident(ip: str, when: datetime) -> dict[str, Any]:
    inc = {
        "incident_id": f"0.{random.getrandbits(40):x}", "scoping_project_id": PROJECT, "state": "open",
        "started_at": int(when.timestamp()), "ended_at": None, "summary": "login failures per client above threshold",
        "url": "https://console.cloud.google.com/monitoring/alerting/incidents/1",
        "resource": {"type": "global", "labels": {"project_id": PROJECT}},
        "metric": {"type": "logging.googleapis.com/user/login_failures", "displayName": "login failures",
                   "labels": {"client_ip": ip}},
        "metadata": {"system_labels": {}, "user_labels": {}},
        "policy_name": "ml-edge brute force", "condition_name": "failures > 30", "threshold_value": "30",
    }
    return {"incident": inc, "version": "1.2"}


def publish_window(now: datetime) -> tuple[datetime, datetime]:
    """Publish times all fall in one expiry bucket, in the recent past, so
    that sightings of one TTL share an expiry (and so pack)."""
    bucket = datetime.fromtimestamp((int(now.timestamp()) // 900) * 900, tz=UTC)
    if (now - bucket).total_seconds() < 120:
        bucket -= GRANULARITY
    return bucket + timedelta(seconds=1), min(now, bucket + timedelta(minutes=14))


def generate(spec: Spec, now: datetime | None = None) -> Plan:
    rng = random.Random(spec.seed)
    random.seed(spec.seed)
    now = now or datetime.now(tz=UTC)
    lo, hi = publish_window(now)
    span = (hi - lo).total_seconds()
    pools = universe(spec.universe_size(), rng)
    supers, mids, v6_48, hosts4, v6_hosts = (pools[k] for k in ("supers", "mids", "v6_48", "hosts4", "v6_hosts"))
    wide = supers + mids + v6_48
    total_b = int(spec.events * spec.phase_b_share)
    total_a = spec.events - total_b - 1  # one cleanup at the end

    # What phase B lifts: two hosts inside a /24 (the /24 is split around them),
    # an outside host and a /28. Phase B never names anything that overlaps them.
    lifted: list[Network] = []
    inner_hosts = [h for h in hosts4 if any(h.subnet_of(s) for s in supers)]
    outer_hosts = [h for h in hosts4 if h not in inner_hosts]
    lifted += rng.sample(inner_hosts, min(2, len(inner_hosts)))
    lifted += rng.sample(outer_hosts, 1)
    lifted += rng.sample(mids, 1)

    def overlaps_lifted(net: Network) -> bool:
        return any(net.version == u.version and net.overlaps(u) for u in lifted)  # type: ignore[arg-type]

    events: list[list[Event]] = [[], [], []]
    blocks: list[list[tuple[Network, datetime | None]]] = [[], []]
    narrowed: dict[str, tuple[list[tuple[Network, datetime | None]], list[tuple[Network, datetime | None]]]] = {
        t: ([], []) for t in TARGETS[:spec.targets]} if spec.targets > 1 else {}
    kinds: Counter[str] = Counter()
    manual_hosts_a: list[Network] = []
    unblocks = 0
    counter = iter(range(10**9))

    def when() -> datetime:
        return lo + timedelta(seconds=rng.uniform(0, span))

    def add(phase: int, target: str, doc: Any, pt: datetime, kind: str, attrs: dict[str, str] | None = None) -> None:
        idx = next(counter)
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        events[phase].append(Event(idx, "AB"[phase] if phase < 2 else "C", target, data,
                                   attrs or {}, f"c{spec.seed}-{idx}", pt, kind))
        kinds[kind] += 1

    def pick(pool: list[Network], phase: int, k: int) -> list[Network]:
        cands = [p for p in pool if phase == 0 or not overlaps_lifted(p)]
        return rng.sample(cands, min(k, len(cands))) if cands else []

    for phase, count in ((0, total_a), (1, total_b)):
        for _ in range(count):
            pt = when()
            roll = rng.random()
            if phase == 1 and roll < 0.12 and manual_hosts_a:
                # extend hosts blocked by manual blocks in phase A
                targets = [h for h in rng.sample(manual_hosts_a, min(2, len(manual_hosts_a))) if not overlaps_lifted(h)]
                if targets:
                    add(1, "on_manual", {"action": "extend", "ranges": [str(h.network_address) for h in targets],
                                         "actor": "oncall@example.com", "ttl": "48h"}, pt, "manual-extend")
                    exp = round_up(pt + EXTEND_TTL)
                    blocks[1].extend((h, exp) for h in targets)
                    continue
            if phase == 1 and (roll < 0.15 or unblocks < len(lifted)):
                u = lifted[unblocks % len(lifted)]  # every lifted range at least once
                unblocks += 1
                add(1, "on_manual", {"action": "unblock", "ranges": [str(u)], "actor": "oncall@example.com",
                                     "reason": "customer"}, pt, "manual-unblock")
                continue
            if roll < 0.25:  # manual block
                nets = pick(rng.choice((wide, hosts4, hosts4)), phase, rng.randint(1, 4))
                if not nets:
                    continue
                doc: dict[str, Any] = {"action": "block", "ranges": [str(n) for n in nets],
                                       "actor": "oncall@example.com", "reason": "campaign"}
                if rng.random() < 0.03:
                    doc["permanent"] = True
                    exp: datetime | None = None
                else:
                    ttl = rng.choice(MANUAL_TTLS)
                    doc["ttl"] = ttl
                    exp = round_up(pt + _ttl(ttl))
                if narrowed and rng.random() < NARROW_SHARE:
                    only = rng.choice(sorted(narrowed))
                    add(phase, "on_manual", doc, pt, f"manual-block-{only}", {"targets": only})
                    narrowed[only][phase].extend((n, exp) for n in nets)
                    continue  # never extended in phase B (an extend names every target)
                add(phase, "on_manual", doc, pt, "manual-block")
                blocks[phase].extend((n, exp) for n in nets)
                if phase == 0:
                    manual_hosts_a.extend(n for n in nets if n.prefixlen == n.max_prefixlen)
            elif roll < 0.55:  # JSON threat feed, incremental
                feed = rng.choice(FEEDS)
                nets = pick(rng.choice((wide, wide + hosts4)), phase, rng.randint(2, 12))
                if not nets:
                    continue
                indicators = []
                for n in nets:
                    ttl = rng.choice(FEED_TTLS)
                    indicators.append({"range": str(n), "ttl": ttl, "confidence": 90})
                    blocks[phase].append((n, round_up(pt + _ttl(ttl))))
                add(phase, "on_threat_feed", {"feed": feed, "indicators": indicators}, pt, "feed",
                    {"feed": feed, "format": "json"})
            elif roll < 0.85:  # log sink: WAF denial or ML control-plane probe
                waf = rng.random() < 0.5
                if rng.random() < 0.15:
                    addr = rng.choice(v6_hosts)
                    net = _v6_64(addr)
                    if phase == 1 and overlaps_lifted(net):
                        continue
                    remote = str(addr)
                else:
                    cands = pick(hosts4, phase, 1)
                    if not cands:
                        continue
                    net, remote = cands[0], str(cands[0].network_address)
                add(phase, "on_log_sink", lb_entry(remote, pt, waf=waf), pt, "log-waf" if waf else "log-probe")
                blocks[phase].append((net, round_up(pt + (WAF_TTL if waf else PROBE_TTL))))
            else:  # alerts: SCC findings (indicator.ipAddresses) and Monitoring incidents
                if rng.random() < 0.6:
                    sev = rng.choice(("HIGH", "MEDIUM"))
                    addrs = [rng.choice(v6_hosts)] if rng.random() < 0.2 else []
                    addrs += [h.network_address for h in pick(hosts4, phase, rng.randint(1, 3))]
                    nets = [_v6_64(a) if a.version == 6 else ipaddress.ip_network(a) for a in addrs]
                    keep = [(a, n) for a, n in zip(addrs, nets, strict=True) if phase == 0 or not overlaps_lifted(n)]
                    if not keep:
                        continue
                    add(phase, "on_alert", scc_finding([str(a) for a, _ in keep], sev, pt), pt, "alert-scc")
                    blocks[phase].extend((n, round_up(pt + SCC_TTL[sev])) for _, n in keep)
                else:
                    cands = pick(hosts4, phase, 1)
                    if not cands:
                        continue
                    add(phase, "on_alert", monitoring_incident(str(cands[0].network_address), pt), pt, "alert-monitoring")
                    blocks[phase].append((cands[0], round_up(pt + MONITORING_TTL)))
    group_items: list[Network] = []
    if spec.group_feed:
        group_items = _group_feed(rng, lo, span, add)
    add(2, "on_cleanup", {"action": "cleanup"}, hi, "cleanup")
    return Plan(events, blocks[0], blocks[1], lifted, kinds, narrowed, group_items)


def _group_feed(rng: random.Random, lo: datetime, span: float, add: Any) -> list[Network]:
    """The group-stored snapshot feed: a few equal snapshots in phase A (any
    order gives the same group) and one changed snapshot in phase B, published
    after all of them, which must be the group's final content. Its ranges
    (203.0.0.0/16, 2a0b:4142::/32) are disjoint from the band's universe."""
    base4 = int(ipaddress.IPv4Address("203.0.0.0"))
    v4 = [ipaddress.ip_network(f"{ipaddress.IPv4Address(base4 + 256 * i)}/24") for i in range(0, 60, 2)]
    v4 += [ipaddress.ip_network(ipaddress.IPv4Address(base4 + 256 * i + 9)) for i in range(61, 81, 2)]
    # two adjacent /25s and a /24 with a host inside: aggregated to a /24 and a /24 by the product
    v4 += [ipaddress.ip_network("203.0.200.0/25"), ipaddress.ip_network("203.0.200.128/25"),
           ipaddress.ip_network("203.0.202.0/24"), ipaddress.ip_network("203.0.202.77/32")]
    v6 = [ipaddress.ip_network(f"2a0b:4142:{i:x}::/48") for i in range(1, 6)]
    first = v4 + v6
    final = [n for n in first if n not in rng.sample(v4[:30], 4)] + [
        ipaddress.ip_network(f"{ipaddress.IPv4Address(base4 + 256 * i)}/24") for i in range(100, 106)] + [
        ipaddress.ip_network("2a0b:4142:99::/48")]

    def doc(nets: list[Network]) -> bytes:
        lines = [str(n) for n in nets]
        rng.shuffle(lines)
        return ("\n".join(lines) + "\n").encode()

    attrs = {"feed": GROUP_FEED, "format": "plain", "snapshot": "true"}
    for _ in range(4):
        add(0, "on_threat_feed", doc(first), lo + timedelta(seconds=rng.uniform(0, span * 0.6)), "feed-group", dict(attrs))
    add(1, "on_threat_feed", doc(final), lo + timedelta(seconds=span * 0.9), "feed-group", dict(attrs))
    return final


# ---------------------------------------------------------------------------
# Address-level comparison

INF = float("inf")


def _interval(net: Network) -> tuple[int, int, int]:
    return net.version, int(net.network_address), int(net.broadcast_address) + 1


def _stamp_of(exp: datetime | None) -> float:
    return INF if exp is None else exp.timestamp()


def expected_map(plan: Plan, target: str | None = None) -> list[tuple[Network, float]]:
    """The reference: phase A blocks minus the lifted ranges, plus phase B;
    for one ``target``, the blocks of every target and those narrowed to it
    (the unblocks name every target)."""
    out: list[tuple[Network, float]] = []
    only_a, only_b = plan.narrowed.get(target or "", ([], []))
    for net, exp in plan.blocks_a + only_a:
        pieces = [net]
        for u in plan.lifted:
            nxt: list[Network] = []
            for p in pieces:
                if p.version != u.version or not p.overlaps(u):  # type: ignore[arg-type]
                    nxt.append(p)
                elif p.subnet_of(u):  # type: ignore[arg-type]
                    continue
                else:
                    nxt.extend(p.address_exclude(u))  # type: ignore[arg-type]
            pieces = nxt
        out.extend((p, _stamp_of(exp)) for p in pieces)
    out.extend((n, _stamp_of(e)) for n, e in plan.blocks_b + only_b)
    return out


def segments(items: list[tuple[Network, float]]) -> dict[tuple[int, int, int], float]:
    """Elementary address segments -> the latest expiry covering them."""
    out: dict[tuple[int, int, int], float] = {}
    for version in (4, 6):
        ivs = [(_interval(n)[1], _interval(n)[2], e) for n, e in items if n.version == version]
        if not ivs:
            continue
        cuts = sorted({a for a, _, _ in ivs} | {b for _, b, _ in ivs})
        ivs.sort()
        for a, b in zip(cuts, cuts[1:], strict=False):
            best = None
            for s, t, e in ivs:
                if s > a:
                    break
                if t >= b and (best is None or e > best):
                    best = e
            if best is not None:
                out[(version, a, b)] = best
    return out


def _segment_text(key: tuple[int, int, int]) -> str:
    version, a, b = key
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    nets = list(ipaddress.summarize_address_range(cls(a), cls(b - 1)))
    return ",".join(str(n) for n in nets[:3]) + ("..." if len(nets) > 3 else "")


def compare(
    expected: list[tuple[Network, float]], actual: list[tuple[Network, float]], evicted: Sequence[Network] = ()
) -> tuple[dict[str, list[str]], list[str]]:
    """missing / extra / wrong_expiry, each a list of address segments, and
    the segments that are missing or shorter only inside evicted ranges."""
    exp_s, act_s = segments(expected), segments(actual)
    spans = [_interval(n) for n in evicted]
    # Re-cut both on the union of their boundaries (and the evicted ranges').
    union = _recut(exp_s, act_s, spans)
    diffs: dict[str, list[str]] = {"missing": [], "extra": [], "wrong_expiry": []}
    explained: list[str] = []
    for key, (want, have) in union.items():
        version, lo, hi = key
        in_evicted = any(v == version and a <= lo and hi <= b for v, a, b in spans)
        if want is not None and (have is None or have < want) and in_evicted:
            explained.append(_segment_text(key))
        elif want is not None and have is None:
            diffs["missing"].append(_segment_text(key))
        elif want is None and have is not None:
            diffs["extra"].append(_segment_text(key))
        elif want != have:
            diffs["wrong_expiry"].append(f"{_segment_text(key)}: want {_when(want)} have {_when(have)}")
    return diffs, explained


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return "never" if stamp == INF else datetime.fromtimestamp(stamp, tz=UTC).strftime("%Y%m%d%H%M")


def _recut(
    a: dict[tuple[int, int, int], float], b: dict[tuple[int, int, int], float], extra: Sequence[tuple[int, int, int]] = ()
) -> dict[tuple[int, int, int], tuple[float | None, float | None]]:
    out: dict[tuple[int, int, int], tuple[float | None, float | None]] = {}
    for version in (4, 6):
        sa = sorted((k, v) for k, v in a.items() if k[0] == version)
        sb = sorted((k, v) for k, v in b.items() if k[0] == version)
        more = [k for k in extra if k[0] == version]
        cuts = sorted({k[1] for k, _ in sa + sb} | {k[2] for k, _ in sa + sb} | {k[1] for k in more} | {k[2] for k in more})
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            va = next((v for k, v in sa if k[1] <= lo and k[2] >= hi), None)
            vb = next((v for k, v in sb if k[1] <= lo and k[2] >= hi), None)
            if va is not None or vb is not None:
                out[(version, lo, hi)] = (va, vb)
    return out


def read_evictions(folder: Path) -> list[dict[str, Any]]:
    """The ``evicted`` audit records in the workers' logs (killed ones too)."""
    out: list[dict[str, Any]] = []
    for path in sorted(folder.glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if '"evicted"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by SIGKILL
            payload = record.get("responder") if isinstance(record, dict) else None
            if isinstance(payload, dict) and payload.get("change") == "evicted":
                out.append(payload)
    return out


def band_items(rules: list[dict[str, Any]], now: datetime) -> list[tuple[Network, float]]:
    """The live blocks of our band rules (foreign rules left out)."""
    out: list[tuple[Network, float]] = []
    for rule in rules:
        desc = rule.get("description", "")
        words = desc.split()
        if not words or words[0] != OWNER_TAG:
            continue
        word = next((w[2:] for w in words if w.startswith("x=")), "")
        if word == "never":
            stamp = INF
        else:
            stamp = datetime.strptime(word, "%Y%m%d%H%M").replace(tzinfo=UTC).timestamp()
            if stamp <= now.timestamp():
                continue
        if rule.get("preview"):
            continue  # logged, not enforced: blocks nothing
        if "config" not in rule.get("match", {}):
            continue  # a group rule (--group-feed): checked apart (check_groups)
        for r in rule["match"]["config"]["srcIpRanges"]:
            out.append((ipaddress.ip_network(r), stamp))
    return out


# ---------------------------------------------------------------------------
# Workers


def worker_main(conn: Any, env: dict[str, str], log_path: str, concurrency: int = 1) -> None:
    """One function instance: builds the five apps once, then serves up to
    ``concurrency`` events at once, each on its own thread (gen2 with
    ``deploy.concurrency`` above 1 runs requests on threads of one process,
    sharing its Runtime, responder and adapter)."""
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)  # the structured audit log goes to stdout
    os.dup2(out, 2)
    os.environ.update(env)
    try:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        import eventarc
        import functions_framework

        from handlers import runtime

        apps = {t: functions_framework.create_app(t, str(ROOT / "main.py"), "cloudevent") for t in ENTRY_POINTS}
        local = threading.local()  # a test client per thread (a client keeps cookies); the apps are shared
        send_lock = threading.Lock()  # the pipe is written from every thread
        rt = runtime.current()
        holder = rt.responder.holder
        rt.api.get_policy()  # import compute_v1 and connect before the first event
        conn.send(("ready", os.getpid(), holder))

        def deliver(idx: int, target: str, data: bytes, attrs: dict[str, str], message_id: str,
                    publish_time: str) -> None:
            clients = getattr(local, "clients", None)
            if clients is None:
                clients = local.clients = {t: app.test_client() for t, app in apps.items()}
            headers, body = eventarc.binary_request(data, attributes=attrs, message_id=message_id,
                                                    publish_time=datetime.fromisoformat(publish_time))
            start = time.monotonic()
            try:
                status = int(clients[target].post("/", headers=headers, data=body).status_code)
            except Exception:  # noqa: BLE001 - a crash is a 500 to Pub/Sub
                traceback.print_exc()
                status = 599
            with send_lock:
                conn.send(("done", idx, status, time.monotonic() - start))

        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="request") as pool:
            while True:
                msg = conn.recv()
                if msg[0] == "stop":
                    pool.shutdown(wait=True)
                    calls = dict(rt.api.calls()) if hasattr(rt.api, "calls") else {}
                    with send_lock:
                        conn.send(("stopped", calls))
                    return
                pool.submit(deliver, *msg[1:])
    except (EOFError, KeyboardInterrupt):
        return
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        raise


@dataclass
class Worker:
    proc: Any
    conn: Any
    holder: str = ""
    ready: bool = False
    busy: set[int] = field(default_factory=set)  # events in flight (at most Spec.concurrency)
    calls: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# The campaign


@dataclass
class Result:
    spec: Spec
    events: int
    kinds: dict[str, int]
    deliveries: int
    redeliveries: int
    dead_letters: int
    kills: int
    killed_holders: int
    api_calls: dict[str, int]
    faults: dict[str, int]
    adapter: dict[str, int]
    lease_takes: int
    lease_releases: int
    band_rules: int
    diffs: dict[str, list[str]]
    problems: list[str]
    wall: float
    phase_walls: list[float]
    blocked_segments: int
    addresses: dict[str, int]
    op_errors: dict[str, int] = field(default_factory=dict)
    evictions: int = 0  # audit records of evictions
    evicted: list[str] = field(default_factory=list)  # segments missing or shorter because they were evicted
    peak_in_flight: int = 0  # most events one worker had in flight at once
    orphaned: int = 0  # events in flight on killed workers, handed to others
    bands: dict[str, int] = field(default_factory=dict)  # --targets: band rules per target
    groups: str = ""  # --group-feed: the group(s) and their items (have/want)

    @property
    def differences(self) -> int:
        return sum(len(v) for v in self.diffs.values()) + len(self.problems) + self.dead_letters

    def lines(self) -> list[str]:
        s = self.spec
        calls = ", ".join(f"{k} {v}" for k, v in sorted(self.api_calls.items()))
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        adapter = ", ".join(f"{k} {v}" for k, v in sorted(self.adapter.items()) if k in ("retry", "get_rule", "wait"))
        out = [
            f"campaign: {s.workers} worker processes x concurrency {s.concurrency}, seed {s.seed}, faults {s.faults:.0%} (reads; mutations {min(1.0, s.faults * 4 / 3):.0%})"
            f"{'' if s.fault_target == 'all' else ' on ' + s.fault_target + ' routes only'}"
            f"{f', {s.targets} targets' if s.targets > 1 else ''}{', group feed' if s.group_feed else ''}"
            f"{', kill' if s.kill else ''}, op delay {s.op_delay[0]}-{s.op_delay[1]} s, band.max_rules {s.max_rules}, quota {s.quota}",
            f"events: {self.events} ({', '.join(f'{k} {v}' for k, v in sorted(self.kinds.items()))})",
            f"deliveries: {self.deliveries}, redeliveries {self.redeliveries}, dead-lettered {self.dead_letters}, "
            f"workers killed {self.kills} (lease holders {self.killed_holders}; {self.orphaned} event(s) in flight "
            f"on them redelivered), most events in flight on one worker {self.peak_in_flight}",
            f"API calls: {calls}",
            f"lease: setLabels taking it {self.lease_takes}, releasing it {self.lease_releases}",
            f"failed operations: {', '.join(f'{k} {v}' for k, v in sorted(self.op_errors.items())) or 'none'}",
            f"faults injected: {faults}",
            f"adapter (surviving workers): {adapter or 'n/a'}",
            f"final band: {self.band_rules} rules, {self.blocked_segments} blocked address segments "
            f"(expected IPv4 addresses {self.addresses.get('v4', 0)}, IPv6 /64s {self.addresses.get('v6', 0)})",
            *([f"bands per target: {', '.join(f'{k} {v} rules' for k, v in self.bands.items())}"] if self.bands else []),
            *([f"group feed: {self.groups}"] if self.groups else []),
            f"differences: missing {len(self.diffs['missing'])}, extra {len(self.diffs['extra'])}, "
            f"wrong expiry {len(self.diffs['wrong_expiry'])}, other {len(self.problems)}",
            f"evictions (quota or band full): {self.evictions} record(s); {len(self.evicted)} expected "
            f"segment(s) missing or shorter because they were evicted",
            f"wall time: {self.wall:.1f} s (phases {', '.join(f'{w:.1f}' for w in self.phase_walls)} s)",
        ]
        for kind, items in self.diffs.items():
            for item in items[:5]:
                out.append(f"  {kind}: {item}")
        out.extend(f"  problem: {p}" for p in self.problems[:10])
        return out


def fault_config(spec: Spec) -> Any:
    from localapi import FaultConfig

    f = spec.faults
    if not f:
        return FaultConfig()
    return FaultConfig(http_429=f / 4, http_500=f / 4, http_503=f / 4, reset=f / 4,
                       op_error=f / 6, commit_then_timeout=f / 6, latency=min(1.0, f / 2),
                       latency_range=(0.05, 0.3), commit_then_timeout_mode=spec.commit_then_timeout_mode,
                       commit_then_timeout_delay=spec.commit_then_timeout_delay, scope="all", seed=spec.seed,
                       methods=fault_methods(spec.fault_target))


def fault_methods(target: str) -> tuple[str, ...]:
    """The routes of one target's policy and its operations ("all": every route)."""
    if target == "all":
        return ()
    policy, ops = ("securityPolicies", "globalOperations") if target == "default" else (
        "regionSecurityPolicies", "regionOperations")
    return tuple(f"{policy}.{m}" for m in ("get", "getRule", "addRule", "patchRule", "removeRule", "setLabels")) + (
        f"{ops}.get", f"{ops}.wait")


def write_config(spec: Spec, path: Path) -> None:
    text = (ROOT / "config" / "responder.toml").read_text()
    subs = [
        (r'(?m)^request_timeout = "20s"', f'request_timeout = "{spec.request_timeout}"'),
        (r'(?m)^operation_timeout = "60s"', f'operation_timeout = "{spec.operation_timeout}"'),
        (r'(?m)^margin = "10s"', f'margin = "{spec.lease_margin}"'),
        (r'(?m)^max_rules = 150', f"max_rules = {spec.max_rules}"),
        (r'(?m)^duration = "240s"', f'duration = "{spec.lease_duration}s"'),
        (r'(?m)^wait = "60s"', f'wait = "{spec.lease_wait}s"'),
        (r'(?m)^file = "detectors.toml"', f"file = {json.dumps(str(ROOT / 'config' / 'detectors.toml'))}"),
    ]
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text, count=1)
        if n != 1:
            raise RuntimeError(f"config/responder.toml: cannot set {repl!r} (pattern {pattern!r} not found)")
    if spec.group_feed:  # a table of its own at the end (after every other table)
        text += (f'\n[feeds.{GROUP_FEED}]\nformat = "plain"\nttl = "{int(GROUP_TTL.total_seconds() // 3600)}h"\n'
                 'snapshot = true\nstore = "address-group"\nmax_drop_share = 0.5\n')
    for name in TARGETS[1:spec.targets]:
        text += (f'\n[[targets]]\nname = "{name}"\nproject = "{PROJECT}"\npolicy = "{POLICY}"\nregion = "{REGION}"\n'
                 f'band_start = {BAND[0]}\nband_end = {BAND[1]}\nmax_rules = {spec.max_rules}\n')
    path.write_text(text)


def call_kind(route: str) -> str:
    """A request's kind in the report: the method for a policy (global and
    regional summed), ``op get`` / ``op wait`` for operations, ``group ...``
    for address groups."""
    resource, _, method = route.rpartition(".")
    if resource.endswith(("perations", "operations")):
        return f"op {method}"
    if resource == "addressGroups":
        return f"group {method}"
    return method or route


def check_policy(spec: Spec, final: dict[str, Any], outside_before: list[dict[str, Any]],
                 foreign_before: list[dict[str, Any]], now: datetime) -> tuple[list[dict[str, Any]], list[str]]:
    """One policy after the run: its band rules (ours) and the problems."""
    problems: list[str] = []
    prios = [r["priority"] for r in final["rules"]]
    if len(prios) != len(set(prios)):
        problems.append(f"two rules share a priority: {sorted(p for p, c in Counter(prios).items() if c > 1)}")
    outside_after = [r for r in final["rules"] if not BAND[0] <= r["priority"] <= BAND[1]]
    if outside_after != outside_before:
        problems.append("rules outside the band changed")
    foreign_after = [r for r in final["rules"] if r["priority"] == FOREIGN_PRIORITY]
    if foreign_after != foreign_before:
        problems.append(f"the foreign rule changed: {foreign_after}")
    band = [r for r in final["rules"] if BAND[0] <= r["priority"] <= BAND[1] and r["priority"] != FOREIGN_PRIORITY]
    foreign_tagged = [r for r in band if not r.get("description", "").startswith(OWNER_TAG + " ")]
    if foreign_tagged:
        problems.append(f"{len(foreign_tagged)} unexpected foreign rule(s) in the band")
    if len(band) > spec.max_rules:
        problems.append(f"band holds {len(band)} rules after cleanup, more than band.max_rules {spec.max_rules}")
    if final.get("labels", {}).get(LEASE_LABEL):
        value = final["labels"][LEASE_LABEL]
        stamp = int(value.rpartition("-")[2])
        if stamp > time.time():
            problems.append(f"the lease is still held after the run: {value}")
    return band, problems


def check_groups(server: Any, items: list[Network], rules: list[dict[str, Any]]) -> tuple[list[str], str]:
    """The group feed after the final cleanup: one rule per IP version in the
    band, referencing a group whose items are the last snapshot aggregated;
    no group of ours that no rule references."""
    problems: list[str] = []
    referenced: dict[str, str] = {}  # group name -> the rule's g= word
    for rule in rules:
        expr = rule["match"].get("expr", {}).get("expression", "")
        m = re.fullmatch(r"evaluateAddressGroup\('([^']+)', origin\.ip\)", expr)
        word = next((w[2:] for w in rule["description"].split() if w.startswith("g=")), "")
        if not m:
            problems.append(f"group rule {rule['priority']} has no group expression: {expr!r}")
            continue
        referenced[m.group(1)] = word
    ours = {key[2] for key in list(server.state.groups) if key[2].startswith(GROUP_PREFIX)}
    for name in sorted(ours - set(referenced)):
        problems.append(f"group {name} is left unreferenced after the cleanup")
    sizes = []
    for version in (4, 6):
        want = sorted(str(n) for n in ipaddress.collapse_addresses(n for n in items if n.version == version))  # type: ignore[type-var]
        names = [g for g, w in referenced.items() if w == f"{GROUP_FEED}:{version}"]
        if len(names) != 1:
            problems.append(f"group feed IPv{version}: {len(names)} rule(s) in the band, want 1")
            continue
        group = server.group(PROJECT, names[0])
        have = sorted(str(ipaddress.ip_network(i)) for i in (group or {}).get("items", []))
        if have != want:
            problems.append(f"group {names[0]}: items differ: missing {sorted(set(want) - set(have))[:5]}, "
                            f"extra {sorted(set(have) - set(want))[:5]}")
        sizes.append(f"{names[0]} {len(have)}/{len(want)} items")
    return problems, ", ".join(sizes)


def _http(method: str, url: str, body: Any = None) -> Any:
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def _op(base: str, op: dict[str, Any]) -> None:
    done = _http("POST", f"{base}/operations/{op['name']}/wait")
    assert done["status"] == "DONE" and "error" not in done, done


def run(spec: Spec, *, log=print) -> Result:  # type: ignore[no-untyped-def]
    from localapi import LocalCloudArmor

    started = time.monotonic()
    plan = generate(spec)
    server = LocalCloudArmor(op_delay=spec.op_delay, quota=spec.quota, wait_timeout=10.0,
                             seed=spec.seed, project=PROJECT,
                             tier="enterprise" if spec.group_feed else "standard").start()
    targets = {"default": None, "notebooks": REGION}
    targets = {k: v for k, v in list(targets.items())[:spec.targets]}
    tmp = Path(tempfile.mkdtemp(prefix="campaign-"))
    ctx = multiprocessing.get_context("spawn")
    workers: list[Worker] = []
    try:
        outside_before: dict[str, list[dict[str, Any]]] = {}
        foreign_before: dict[str, list[dict[str, Any]]] = {}
        for name, region in targets.items():
            scope = f"regions/{region}" if region else "global"
            base = f"{server.endpoint}/compute/v1/projects/{PROJECT}/{scope}"
            _op(base, _http("POST", f"{base}/securityPolicies", {"name": POLICY, "rules": copy.deepcopy(OPERATOR_RULES)}))
            _op(base, _http("POST", f"{base}/securityPolicies/{POLICY}/addRule", copy.deepcopy(FOREIGN_RULE)))
            before = server.policy(PROJECT, POLICY, region)
            assert before is not None
            outside_before[name] = [r for r in before["rules"] if not BAND[0] <= r["priority"] <= BAND[1]]
            foreign_before[name] = [r for r in before["rules"] if r["priority"] == FOREIGN_PRIORITY]
        config = tmp / "responder.toml"
        write_config(spec, config)
        env = {
            "RESPONDER_CONFIG": str(config), "RESPONDER_PROJECT": PROJECT, "RESPONDER_POLICY": POLICY,
            "RESPONDER_REGION": "", "RESPONDER_API_ENDPOINT": server.endpoint,
            "RESPONDER_BAND_START": str(BAND[0]), "RESPONDER_BAND_END": str(BAND[1]),
            "RESPONDER_RETRY_DEADLINE": spec.retry_deadline,
        }
        server.requests.clear()
        server.faults = fault_config(spec)

        def spawn(n: int) -> Worker:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, env, str(tmp / f"worker-{n}.log"), spec.concurrency),
                               daemon=True)
            proc.start()
            child.close()
            return Worker(proc, parent)

        workers = [spawn(i) for i in range(spec.workers)]
        events = {e.idx: e for phase in plan.phases for e in phase}
        attempts: Counter[int] = Counter()
        stats = Counter()
        dead: list[int] = []
        phase_walls: list[float] = []
        kills_planned = 2 if spec.kill else 0
        acked_total = 0
        total = len(events)

        def handle_death(w: Worker) -> None:
            for idx in sorted(w.busy, reverse=True):
                queue.appendleft(idx)  # unacked: Pub/Sub redelivers it to another instance
                stats["redeliveries"] += 1
                stats["orphaned"] += 1
            w.busy.clear()
            workers.remove(w)
            workers.append(spawn(len(workers) + int(stats["kills"]) + 100))

        deadline = started + spec.time_limit
        for phase_no, phase in enumerate(plan.phases):
            t_phase = time.monotonic()
            queue: deque[int] = deque(e.idx for e in phase)
            outstanding = {e.idx for e in phase}
            last_poll = last_report = 0.0
            while outstanding:
                if spec.verbose and time.monotonic() - last_report > 5:
                    last_report = time.monotonic()
                    band_now = [r for r in (server.policy(PROJECT, POLICY) or {}).get("rules", [])
                                if BAND[0] <= r["priority"] <= BAND[1]]
                    log(f"  [{last_report - started:.0f} s] phase {'ABC'[phase_no]}: {len(outstanding)} outstanding, "
                        f"acked {acked_total}/{total}, redeliveries {stats['redeliveries']}, band {len(band_now)} rules, "
                        f"statuses {dict((k, v) for k, v in stats.items() if k.startswith('status'))}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"campaign over its time limit ({spec.time_limit:.0f} s)")
                # Fill the free slots breadth first, so that every worker gets events.
                while queue and any(w.ready and len(w.busy) < spec.concurrency for w in workers):
                    for w in workers:
                        if not (w.ready and len(w.busy) < spec.concurrency and queue):
                            continue
                        idx = queue.popleft()
                        e = events[idx]
                        attempts[idx] += 1
                        stats["deliveries"] += 1
                        stats["max_in_flight"] = max(stats["max_in_flight"], len(w.busy) + 1)
                        w.busy.add(idx)
                        try:
                            w.conn.send(("event", idx, e.target, e.data, e.attributes, e.message_id,
                                         e.publish_time.isoformat()))
                        except OSError:  # killed meanwhile: its death hands its events on
                            w.ready = False
                conns = {w.conn: w for w in workers}
                sentinels = {w.proc.sentinel: w for w in workers}
                for ready in mp_wait(list(conns) + list(sentinels), timeout=0.5):
                    if ready in sentinels:
                        w = sentinels[ready]
                        if w in workers and not w.proc.is_alive():
                            if w.conn.poll():
                                continue  # read its last message first
                            stats["deaths"] += 1
                            handle_death(w)
                        continue
                    w = conns[ready]
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        w.proc.join(1)
                        if w in workers:
                            stats["deaths"] += 1
                            handle_death(w)
                        continue
                    if msg[0] == "ready":
                        w.ready, w.holder = True, msg[2]
                        if spec.verbose:
                            log(f"  worker {msg[1]} ready after {time.monotonic() - started:.1f} s")
                    elif msg[0] == "done":
                        _, idx, status, elapsed = msg
                        w.busy.discard(idx)
                        if spec.verbose and stats["deliveries"] <= 2 * spec.workers:
                            log(f"  event {idx} ({events[idx].kind}) -> {status} in {elapsed:.2f} s "
                                f"[{time.monotonic() - started:.1f} s]")
                        if 200 <= status < 300:
                            outstanding.discard(idx)
                            acked_total += 1
                        else:
                            stats[f"status_{status}"] += 1
                            if attempts[idx] >= spec.max_deliveries:
                                dead.append(idx)
                                outstanding.discard(idx)
                            else:
                                stats["redeliveries"] += 1
                                queue.append(idx)
                # --kill: first the lease holder mid-reconcile, then a busy worker (one
                # that holds no lease if there is one: a writer's crash, not a second holder's)
                if kills_planned and time.monotonic() - last_poll > 0.2 and phase_no < 2:
                    last_poll = time.monotonic()
                    victim = None
                    value = (server.policy(PROJECT, POLICY) or {}).get("labels", {}).get(LEASE_LABEL, "")

                    def holds(w: Worker, value: str = value) -> bool:
                        return bool(w.holder and value.startswith(w.holder))

                    if kills_planned == 2 and phase_no == 0:
                        victim = next((w for w in workers if holds(w) and w.busy), None)
                    elif phase_no == 1 and len(outstanding) < len(phase) // 2:
                        busy = [w for w in workers if w.busy]
                        victim = next((w for w in busy if not holds(w)), busy[0] if busy else None)
                        kills_planned = 1 if victim is not None else kills_planned
                    if victim is not None and holds(victim):
                        stats["killed_holders"] += 1
                    if victim is not None:
                        os.kill(victim.proc.pid, signal.SIGKILL)
                        stats["kills"] += 1
                        kills_planned -= 1
                        if spec.verbose:
                            log(f"  killed worker {victim.proc.pid} (holder {victim.holder}) in phase {'ABC'[phase_no]}")
            phase_walls.append(time.monotonic() - t_phase)
            if spec.verbose:
                log(f"  phase {'ABC'[phase_no]}: {len(phase)} events in {phase_walls[-1]:.1f} s, "
                    f"acked {acked_total}/{total}, redeliveries {stats['redeliveries']}")
            # Pub/Sub gives no order: let whatever a killed worker left pending land before the next phase.
            quiet = time.monotonic() + 10
            while server.pending_operations() and time.monotonic() < quiet:
                time.sleep(0.05)

        adapter: Counter[str] = Counter()
        for w in workers:
            try:
                w.conn.send(("stop",))
                if w.conn.poll(10):
                    msg = w.conn.recv()
                    if msg[0] == "stopped":
                        adapter.update(msg[1])
            except (EOFError, OSError, BrokenPipeError):
                pass
        for w in workers:
            w.proc.join(5)

        # ---- the checks, target by target
        server.settle()
        now = datetime.now(tz=UTC)
        problems: list[str] = []
        diffs: dict[str, list[str]] = {"missing": [], "extra": [], "wrong_expiry": []}
        explained: list[str] = []
        evictions = read_evictions(tmp)
        band_rules: dict[str, int] = {}
        seg_count = v4 = v6 = 0
        group_rules: list[dict[str, Any]] = []
        for name, region in targets.items():
            tag = f"{name}: " if len(targets) > 1 else ""
            final = server.policy(PROJECT, POLICY, region)
            assert final is not None
            band, more = check_policy(spec, final, outside_before[name], foreign_before[name], now)
            problems += [tag + p for p in more]
            group_rules += [r for r in band if " g=" in r.get("description", "")] if region is None else []
            if region is not None and any(" g=" in r.get("description", "") for r in band):
                problems.append(f"{tag}a group rule in a regional policy")
            band_rules[name] = len(band)
            mine = [rec for rec in evictions if rec.get("target", "default") == name]
            for rec in mine:
                if "manual" in rec.get("sources", []):
                    problems.append(f"{tag}a manual block was evicted: {rec.get('ranges')}")
            evicted_nets = [ipaddress.ip_network(r) for rec in mine for r in rec.get("ranges", [])]
            expected = expected_map(plan, name if len(targets) > 1 else None)
            found, why = compare(expected, band_items(band, now), evicted_nets)
            for kind, items in found.items():
                diffs[kind] += [tag + x for x in items]
            explained += [tag + x for x in why]
            exp_segments = segments(expected)
            seg_count += len(exp_segments)
            v4 += sum(b - a for (v, a, b) in exp_segments if v == 4)
            v6 += sum((b - a) >> 64 for (v, a, b) in exp_segments if v == 6)
        group_report = ""
        if spec.group_feed:
            more, group_report = check_groups(server, plan.group_items, group_rules)
            problems += more

        api_calls = Counter(call_kind(r.get("route") or r["path"]) for r in server.requests)
        takes = releases = 0
        for r in server.requests:
            if (r.get("route") or "").endswith("setLabels") and isinstance(r.get("body"), dict):
                if LEASE_LABEL in (r["body"].get("labels") or {}):
                    takes += 1
                else:
                    releases += 1
        op_errors: Counter[str] = Counter()
        with server.state.lock:
            for op in server.state.operations.values():
                if op.done and op.error is not None:
                    rec = server.state.render_op(op)
                else:
                    continue
                for err in (rec.get("error") or {}).get("errors", []):
                    op_errors[f"{op.record.get('operationType')}:{err.get('code')}"] += 1
        kinds = dict(plan.kinds)
        return Result(
            spec=spec, events=total, kinds=kinds, deliveries=stats["deliveries"], redeliveries=stats["redeliveries"],
            dead_letters=len(dead), kills=stats["kills"], killed_holders=stats["killed_holders"],
            api_calls=dict(api_calls), faults=server.fault_counts, adapter=dict(adapter),
            lease_takes=takes, lease_releases=releases, band_rules=sum(band_rules.values()), diffs=diffs,
            problems=problems, wall=time.monotonic() - started, phase_walls=phase_walls, blocked_segments=seg_count,
            addresses={"v4": v4, "v6": v6}, op_errors=dict(op_errors),
            evictions=len(evictions), evicted=explained,
            peak_in_flight=stats["max_in_flight"], orphaned=stats["orphaned"],
            bands=band_rules if len(targets) > 1 else {}, groups=group_report,
        )
    finally:
        for w in workers:
            if w.proc.is_alive():
                w.proc.kill()
            w.proc.join(2)
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=4,
                   help="events each worker serves at once on threads (deploy.concurrency; 1: one at a time)")
    p.add_argument("--faults", type=float, default=0.0, help="fault probability on reads (mutations: 4/3 of it)")
    p.add_argument("--kill", action="store_true", help="SIGKILL the lease holder, then a busy worker, mid-run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--op-delay", default="0.05,0.6", help="seconds MIN,MAX per operation")
    p.add_argument("--max-rules", type=int, default=150)
    p.add_argument("--quota", type=int, default=200, help="the local API's project rule quota")
    p.add_argument("--universe", type=int, default=0, help="distinct networks (default: 80%% of max-rules, at most 120)")
    p.add_argument("--lease-duration", type=int, default=30)
    p.add_argument("--lease-wait", type=int, default=45)
    p.add_argument("--commit-mode", choices=("delay", "reset"), default="delay")
    p.add_argument("--targets", type=int, choices=(1, 2), default=1,
                   help="2: a second (regional) policy as a [[targets]] entry; some manual blocks narrowed to one")
    p.add_argument("--group-feed", action="store_true",
                   help="a snapshot feed stored in address groups (Enterprise tier) in the event mix")
    p.add_argument("--fault-target", choices=("all", *TARGETS), default="all",
                   help="with --targets 2: inject the faults on that policy's routes only")
    p.add_argument("--time-limit", type=float, default=3600.0)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    lo, _, hi = args.op_delay.partition(",")
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if args.fault_target == "notebooks" and args.targets < 2:
        p.error("--fault-target notebooks needs --targets 2")
    spec = Spec(workers=args.workers, events=args.events, concurrency=args.concurrency, faults=args.faults, kill=args.kill, seed=args.seed,
                op_delay=(float(lo), float(hi or lo)), max_rules=args.max_rules, quota=args.quota, universe=args.universe,
                lease_duration=args.lease_duration, lease_wait=args.lease_wait,
                commit_then_timeout_mode=args.commit_mode, time_limit=args.time_limit, verbose=args.verbose,
                targets=args.targets, group_feed=args.group_feed, fault_target=args.fault_target)
    result = run(spec)
    for line in result.lines():
        print(line, flush=True)
    print(f"RESULT: {'PASS' if result.differences == 0 else 'FAIL'} ({result.differences} differences)", flush=True)
    return 0 if result.differences == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
