"""The band means what the README says: a stateful property test.

A Hypothesis state machine drives the real functions' handlers (manual
commands, JSON feeds with snapshots and revocations, load-balancer log
entries, Monitoring incidents, cleanup), the real band service and the real
compute adapter against the local Cloud Armor API, with a fake clock; and
the same steps through the reference model (``reference.py``). After every
step, for addresses in and around every range the steps use, the band's
answer equals the model's: each source's live claim (until when, how
heavy), so blocked or not, until when, which sources and what severity.
The band's answer is read from its rules' descriptions alone (each
source's own expiry and severity, ``parse_description``): the union of the
live claims of the rules that cover the address. The band also keeps its
invariants. Redelivered messages change nothing (0 mutating calls); a new
instance (cold cache) and a second writer (another runtime on the same API)
take turns, and both write at once. The vocabulary of networks aggregates
(two /26 into a /25, two /25 into a /24, ...): whether the band packed a
range with its neighbours must not change what a withdrawal leaves.

An entry whose claims do not fit one description is written as several
records, each of its own sources; the answer merges every rule that holds
a range, so it reads them whole (a truncated description fails).

One thing the README leaves inexact: eviction takes an entry, not the
copies of its claims that narrower entries hold (a new entry holds what its
supernets claim of it; whether a narrower entry already existed, or was
dropped as a copy by a compaction or aggregated away, depends on packing
and timing), so after an eviction the evicted sources' claims may live on
under the evicted range on either side. There (from the eviction until
neither the band nor the model holds anything overlapping the range) the
evicted sources are left out of the comparison; the other sources, manual
always among them, are compared exactly. ``policy.read_cache`` is 0: the
README documents the window a cached read leaves after an unblock.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from reference import Answer, Claim, Claims, Kind, Reference, eviction_order_holds, holds, merge_claims

from config import settings as config
from handlers import alert, cleanup, log_sink, manual, runtime, threat_feed
from localapi import LocalCloudArmor
from responder import planner
from responder.audit import Audit
from responder.guards import SPECIAL_RANGES
from tests.conftest import hypothesis_scale
from tests.e2e.conftest import OPERATOR_RULES
from tests.e2e.support import incident, lb_entry

pytestmark = pytest.mark.property

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "machine-project"
BAND = (20000, 20039)
MAX_RULES = 8  # small, so that eviction happens
GRANULARITY = timedelta(minutes=15)
ALLOWLIST = ("35.191.0.0/16", "45.9.150.0/26")
FOREIGN = {"priority": 20017, "action": "deny(403)", "description": "team-x block",
           "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["2.58.56.0/24"]}}}
NETS = [ipaddress.ip_network(n) for n in (
    # Neighbours aggregate, and the aggregates are in the vocabulary too, so
    # that claims of several sources meet on packed ranges: the two /26 make
    # 45.9.148.0/25, the two /25 of each /24 make it, 45.9.148.0/24 and
    # 45.9.149.0/25 + 45.9.149.128/25 make the /23, the two /64 a /63
    # (test_a_withdrawal_does_not_depend_on_aggregation).
    "45.9.148.0/23", "45.9.148.0/24", "45.9.148.0/25", "45.9.148.128/25", "45.9.148.0/26", "45.9.148.64/26",
    "45.9.148.7/32", "45.9.148.200/32", "45.9.149.0/25", "45.9.149.128/25", "45.9.149.77/32", "45.9.150.0/24",
    "45.9.150.99/32", "45.9.151.3/32", "45.8.0.0/15", "2a0b:4142::/48", "2a0b:4142::/64", "2a0b:4142:0:1::/64",
)]
HOSTS = [n for n in NETS if n.prefixlen == n.max_prefixlen] + [ipaddress.ip_network("2a0b:4142:0:1::5/128")]
FEEDS = {"fa": ("4h", "medium"), "fb": ("12h", "low")}
START = datetime(2026, 3, 1, 12, 3, tzinfo=UTC)
SEVERITY = {"l": 1, "m": 2, "h": 3, "c": 4}
NAMES = {"low": 1, "medium": 2, "high": 3, "critical": 4}
MUTATIONS = ("/addRule", "/patchRule", "/removeRule")

CONFIG = f"""
[policy]
project = "{PROJECT}"
name = "unused"
read_cache = "0"
request_timeout = "2s"
operation_timeout = "5s"
retry_deadline = "3s"

[band]
start = {BAND[0]}
end = {BAND[1]}
max_rules = {MAX_RULES}
expiry_granularity = "15m"

[lease]
duration = "120s"
wait = "5s"
margin = "1s"

[sources.feed]
flood_limit = 0
[sources.log]
flood_limit = 0
default_ttl = "1h"
max_ttl = "2d"
[sources.alert]
default_ttl = "6h"
max_ttl = "3d"

[feeds.fa]
format = "json"
ttl = "{FEEDS['fa'][0]}"
severity = "{FEEDS['fa'][1]}"
max_drop_share = 1.0

[feeds.fb]
format = "json"
ttl = "{FEEDS['fb'][0]}"
severity = "{FEEDS['fb'][1]}"
max_drop_share = 1.0

[detectors]
file = "{{detectors}}"

[guards]
allowlist = {json.dumps(list(ALLOWLIST))}
"""

DETECTORS = """
[[detector]]
name = "waf"
description = "Cloud Armor preconfigured WAF rule denied a request"
address_field = "httpRequest.remoteIp"
severity = "high"
ttl = "1h"
[detector.match]
resource_type = ["http_load_balancer"]
log_name_suffix = ["/requests"]
fields = [
  { path = "jsonPayload.enforcedSecurityPolicy.outcome", equals = "DENY" },
  { path = "jsonPayload.enforcedSecurityPolicy.preconfiguredExprIds", exists = true },
]
"""

KINDS = {
    "manual": Kind(16, 48, None, 1.0, timedelta(days=365)),
    "feed": Kind(12, 32, None, 1.0, timedelta(days=30)),
    "log": Kind(32, 64, 64, 2.0, timedelta(days=2)),
    "alert": Kind(32, 64, 64, 2.0, timedelta(days=3)),
}
TTL = {"waf": timedelta(hours=1), "monitoring": timedelta(hours=6)}
SEV = {"waf": 3, "monitoring": 3}


def _samples() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out: set[Any] = set()
    for n in NETS:
        first, last = int(n.network_address), int(n.broadcast_address)
        for a in (first, last, (first + last) // 2, first - 1, last + 1, first + 7, first + 77):
            out.add(ipaddress.ip_address(a) if n.version == 4 else ipaddress.IPv6Address(a))
    out.add(ipaddress.ip_address("2a0b:4142:0:1::5"))
    return sorted(out, key=lambda a: (a.version, int(a)))


SAMPLES = _samples()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Event:
    """A CloudEvent as handlers.envelope reads it (``data`` is the envelope)."""

    data: dict[str, Any]


_server: LocalCloudArmor | None = None
_lock = threading.Lock()
_names = iter(range(10**9))


def server() -> LocalCloudArmor:
    global _server
    with _lock:
        if _server is None:
            _server = LocalCloudArmor(op_delay=0.0, quota=500, wait_timeout=5.0, seed=7, project=PROJECT).start()
        return _server


def _http(method: str, url: str, body: Any = None) -> Any:
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def _op(base: str, op: dict[str, Any]) -> None:
    done = _http("POST", f"{base}/operations/{op['name']}/wait")
    assert done["status"] == "DONE" and "error" not in done, done


_settings_cache: dict[str, config.Settings] = {}


def base_settings(tmp: Path) -> config.Settings:
    if "s" not in _settings_cache:
        (tmp / "detectors.toml").write_text(DETECTORS)
        (tmp / "responder.toml").write_text(CONFIG.replace("{detectors}", str(tmp / "detectors.toml")))
        _settings_cache["s"] = config.load(tmp / "responder.toml", environ={
            "RESPONDER_API_ENDPOINT": server().endpoint})
    return _settings_cache["s"]


# The last reconcile plan of each thread (the one executed), to learn what was evicted.
_plans = threading.local()


def _spy_reconcile(fn: Callable[..., planner.Plan]) -> Callable[..., planner.Plan]:
    def wrapped(*args: Any, **kwargs: Any) -> planner.Plan:
        plan = fn(*args, **kwargs)
        _plans.last = plan
        return plan
    return wrapped


# A source's token: ``name``, ``name:<minutes before x>[c]``, ``name:<c>``,
# ``name@YYYYMMDDhhmm[c]`` (a permanent rule's finite claim); README, "The
# policy is the state store".
TOKEN = re.compile(r"([a-z0-9-]+)(?::(\d*)([lmhc]?)|@(\d{12})([lmhc]?))?")


@dataclass(frozen=True)
class Described:
    """What a band rule's description says."""

    expiry: datetime | None  # x: the latest claim's (None: never)
    severity: int  # v: the heaviest claim's
    claims: dict[str, Claim] = field(default_factory=dict)  # each shown source's own

    def live(self, now: datetime) -> bool:
        return self.expiry is None or self.expiry > now

    def live_claims(self, now: datetime) -> dict[str, Claim]:
        return {s: c for s, c in self.claims.items() if c.live(now)} if self.live(now) else {}


def parse_description(text: str) -> Described:
    words = dict(w.split("=", 1) for w in text.split()[1:])
    x = words["x"]
    expiry = None if x == "never" else datetime.strptime(x, "%Y%m%d%H%M").replace(tzinfo=UTC)
    severity = SEVERITY[words["v"]]
    claims: dict[str, Claim] = {}
    for token in words["s"].split("+"):
        assert token != "*", f"a truncated description (an entry that does not fit is written as several records): {text}"
        match = TOKEN.fullmatch(token)
        assert match is not None, f"a malformed source token {token!r}: {text}"
        name, minutes, code, at, at_code = match.groups()
        assert name not in claims, f"{name} twice: {text}"
        if at is not None:
            assert expiry is None, f"{token}: an own expiry in a rule that is not permanent: {text}"
            own = Claim(datetime.strptime(at, "%Y%m%d%H%M").replace(tzinfo=UTC), SEVERITY[at_code] if at_code else severity)
        elif ":" in token:
            assert minutes or code, f"{token}: an empty claim: {text}"
            until: datetime | None = expiry
            if minutes:
                assert expiry is not None, f"{token}: minutes before 'never': {text}"
                until = expiry - timedelta(minutes=int(minutes))
            own = Claim(until, SEVERITY[code] if code else severity)
        else:
            own = Claim(expiry, severity)
        assert holds(Claim(expiry, severity), own), f"{token} claims more than the rule: {text}"
        claims[name] = own
    return Described(expiry, severity, claims)


def _address_in(address: Any, nets: list[Any]) -> bool:
    return any(n.version == address.version and address in n for n in nets)


def _overlap(a: Any, b: Any) -> bool:
    return bool(a.version == b.version and a.overlaps(b))


class BandMachine(RuleBasedStateMachine):
    tmp: Path

    def __init__(self) -> None:
        super().__init__()
        self.srv = server()
        self.name = f"edge-{next(_names)}"
        self.base = f"{self.srv.endpoint}/compute/v1/projects/{PROJECT}/global"
        _op(self.base, _http("POST", f"{self.base}/securityPolicies", {"name": self.name, "rules": copy.deepcopy(OPERATOR_RULES)}))
        _op(self.base, _http("POST", f"{self.base}/securityPolicies/{self.name}/addRule", copy.deepcopy(FOREIGN)))
        s = base_settings(self.tmp)
        self.settings = replace(s, policy=replace(s.policy, name=self.name))
        self.clock = Clock()
        self.audit = Audit()
        self.runtimes = [self._runtime(), self._runtime()]
        self.model = Reference(GRANULARITY, KINDS, tuple(ipaddress.ip_network(a) for a in ALLOWLIST), SPECIAL_RANGES)
        policy = self.srv.policy(PROJECT, self.name)
        assert policy is not None
        self.outside = [r for r in policy["rules"] if not BAND[0] <= r["priority"] <= BAND[1]]
        self.foreign = self.srv.rule(PROJECT, self.name, FOREIGN["priority"])
        self.last: tuple[str, Event] | None = None
        self.messages = 0
        self.original = planner.plan_reconcile
        planner.plan_reconcile = _spy_reconcile(self.original)
        self.compacted = False
        # Where the README leaves the band's answer inexact (see the module
        # docstring): an evicted range, and the evicted claims' sources.
        self.inexact: list[tuple[Any, frozenset[str]]] = []

    def _runtime(self) -> runtime.Runtime:
        from responder.compute import Backoff, CloudArmor

        fast = Backoff(initial=0.01, maximum=0.05)

        def api(s: config.Settings) -> Any:
            return CloudArmor(s.policy, retry_deadline=timedelta(seconds=3), sleep=lambda _: None, backoff=fast, poll=fast)

        return runtime.Runtime(self.settings, self.audit, api_factory=api, clock=self.clock)

    def teardown(self) -> None:
        planner.plan_reconcile = self.original
        try:
            _op(self.base, _http("DELETE", f"{self.base}/securityPolicies/{self.name}"))
        except Exception:
            pass

    # -- delivering --------------------------------------------------------

    def _mutations(self) -> int:
        return sum(1 for r in self.srv.requests if r["method"] == "POST" and r["path"].endswith(MUTATIONS)
                   and f"/{self.name}/" in r["path"])

    def _deliver(self, kind: str, event: Event, writer: int) -> None:
        handler = {"manual": manual.handle, "feed": threat_feed.handle, "log": log_sink.handle,
                   "alert": alert.handle, "cleanup": cleanup.handle}[kind]
        plan = self._dispatch(kind, handler, event, writer)
        self._evicted(plan)

    def _dispatch(self, kind: str, handler: Callable[..., Any], event: Event, writer: int) -> planner.Plan | None:
        _plans.last = None
        runtime.dispatch(kind, handler, event, self.runtimes[writer])
        return getattr(_plans, "last", None)

    def _evicted(self, plan: planner.Plan | None) -> None:
        if plan is None or not plan.evicted:
            return
        now = self.clock.now
        ranked: list[Claims] = []
        for e in plan.evicted:
            meta = e.meta
            claims = {}
            for source in meta.sources:
                own = meta.claim(source)
                assert own is not None, (source, meta)
                if (c := Claim(own[0], int(own[1]))).live(now):
                    claims[source] = c
            assert not meta.truncated, meta
            self.model.evict(e.network, claims, now, loose=self._inexact_in(e.network))
            self.inexact.append((e.network, frozenset(claims)))
            ranked.append(claims)
        kept = [c for n, c in self.model.eviction_view(now).items() if not self._inexact_in(n)]
        why = eviction_order_holds(ranked, kept)
        assert not why, why

    def _send(self, kind: str, body: Any, writer: int, attributes: dict[str, str] | None = None) -> None:
        event = self._event(body, attributes)
        self._deliver(kind, event, writer)
        self.last = (kind, event)

    def _event(self, body: Any, attributes: dict[str, str] | None = None) -> Event:
        self.messages += 1
        message = {"data": base64.b64encode(json.dumps(body).encode()).decode(), "attributes": attributes or {},
                   "messageId": f"{self.name}-m{self.messages}",
                   "publishTime": self.clock.now.isoformat().replace("+00:00", "Z")}
        return Event({"message": message, "subscription": "projects/p/subscriptions/s"})

    # -- rules -------------------------------------------------------------

    writers = st.integers(0, 1)
    nets = st.sampled_from(NETS)

    @rule(nets=st.lists(nets, min_size=1, max_size=3), hours=st.sampled_from([1, 2, 6, 48]), permanent=st.booleans(),
          severity=st.sampled_from(["low", "medium", "high"]), writer=writers)
    def block(self, nets: list[Any], hours: int, permanent: bool, severity: str, writer: int) -> None:
        body: dict[str, Any] = {"action": "block", "ranges": [str(n) for n in nets], "actor": "op", "severity": severity}
        permanent = permanent and hours == 48
        if permanent:
            body["permanent"] = True
        else:
            body["ttl"] = f"{hours}h"
        now = self.clock.now
        for n in nets:
            if (net := self.model.screen(n, "manual")) is not None:
                self.model.block(net, "manual", "manual", now, expiry=None if permanent else now + timedelta(hours=hours),
                                 severity=NAMES[severity])
        self._send("manual", body, writer)

    @rule(net=nets, hours=st.sampled_from([1, 3, 24, 168]), writer=writers)
    def extend(self, net: Any, hours: int, writer: int) -> None:
        now = self.clock.now
        if (screened := self.model.screen(net, "manual")) is not None:
            self.model.extend(screened, "manual", now, now + timedelta(hours=hours))
        self._send("manual", {"action": "extend", "ranges": [str(net)], "actor": "op", "ttl": f"{hours}h"}, writer)

    @rule(net=nets, writer=writers)
    def unblock(self, net: Any, writer: int) -> None:
        self.model.unblock(net, "manual", self.clock.now)
        self._send("manual", {"action": "unblock", "ranges": [str(net)], "actor": "op"}, writer)

    @rule(feed=st.sampled_from(sorted(FEEDS)), nets=st.lists(nets, min_size=0, max_size=4, unique=True),
          revoked=st.lists(nets, max_size=1), snapshot=st.booleans(), writer=writers)
    def feed(self, feed: str, nets: list[Any], revoked: list[Any], snapshot: bool, writer: int) -> None:
        now = self.clock.now
        ttl, severity = FEEDS[feed]
        indicators = [{"range": str(n)} for n in nets] + [{"range": str(n), "revoked": True} for n in revoked]
        if not indicators:
            return
        accepted = [x for n in nets if (x := self.model.screen(n, "feed")) is not None]
        if snapshot and not accepted:
            pass  # refused whole: a snapshot with no valid indicator never withdraws
        else:
            if snapshot:
                self.model.snapshot(feed, accepted, now)
            for n in accepted:
                self.model.block(n, "feed", feed, now, expiry=now + timedelta(hours=int(ttl[:-1])), severity=NAMES[severity])
            for n in revoked:
                self.model.unblock(n, feed, now)
        self._send("feed", {"feed": feed, "indicators": indicators},
                   writer, {"feed": feed, "format": "json", "snapshot": "true" if snapshot else "false"})

    @rule(host=st.sampled_from(HOSTS), writer=writers)
    def log_sighting(self, host: Any, writer: int) -> None:
        self._sighting("log", "waf", host)
        self._send("log", lb_entry(str(host.network_address), outcome="DENY", exprs=["sqli-v33-stable"]), writer)

    @rule(host=st.sampled_from(HOSTS), writer=writers)
    def alert_sighting(self, host: Any, writer: int) -> None:
        self._sighting("alert", "monitoring", host)
        self._send("alert", incident(str(host.network_address), incident_id=f"0.{self.messages}"), writer)

    def _sighting(self, kind: str, source: str, host: Any) -> None:
        now = self.clock.now
        if (net := self.model.screen(host, kind)) is not None:
            self.model.block(net, kind, source, now, expiry=now + TTL[source], severity=SEV[source], seen=now, ttl=TTL[source])

    @rule(minutes=st.sampled_from([1, 14, 15, 61, 180, 24 * 60]))
    def advance(self, minutes: int) -> None:
        self.clock.now += timedelta(minutes=minutes)
        self.last = None

    @rule(writer=writers)
    def run_cleanup(self, writer: int) -> None:
        self.model.cleanup(self.clock.now)
        self._send("cleanup", {"action": "cleanup"}, writer)
        self.compacted = True

    @precondition(lambda self: self.last is not None)
    @rule(writer=writers)
    def redeliver(self, writer: int) -> None:
        assert self.last is not None
        kind, event = self.last
        before = self._mutations()
        self._deliver(kind, event, writer)
        assert self._mutations() == before, f"the redelivered {kind} message changed the band"

    @rule(a=st.lists(nets, min_size=1, max_size=2), b=st.lists(nets, min_size=1, max_size=2),
          hours=st.sampled_from([1, 6]), severity=st.sampled_from(["low", "high"]))
    def concurrent_blocks(self, a: list[Any], b: list[Any], hours: int, severity: str) -> None:
        """Both writers at once, each with its own block (blocks commute)."""
        now = self.clock.now
        events = []
        for nets in (a, b):
            for n in nets:
                if (x := self.model.screen(n, "manual")) is not None:
                    self.model.block(x, "manual", "manual", now, expiry=now + timedelta(hours=hours), severity=NAMES[severity])
            events.append(self._event({"action": "block", "ranges": [str(n) for n in nets], "actor": "op",
                                       "severity": severity, "ttl": f"{hours}h"}))
        plans: list[planner.Plan | None] = [None, None]
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                plans[i] = self._dispatch("manual", manual.handle, events[i], i)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for plan in plans:
            self._evicted(plan)
        self.last = None

    @rule(writer=writers)
    def new_instance(self, writer: int) -> None:
        self.runtimes[writer] = self._runtime()

    # -- checks ------------------------------------------------------------

    def _band(self) -> list[dict[str, Any]]:
        policy = self.srv.policy(PROJECT, self.name)
        assert policy is not None
        return policy["rules"]

    def _rules(self) -> list[tuple[list[Any], Described]]:
        return [([ipaddress.ip_network(x) for x in r["match"]["config"]["srcIpRanges"]], parse_description(r["description"]))
                for r in self._band() if BAND[0] <= r["priority"] <= BAND[1] and r["priority"] != FOREIGN["priority"]]

    def _inexact_in(self, net: Any) -> bool:
        return any(_overlap(net, n) for n, _ in self.inexact)

    def _inexact_at(self, address: Any) -> frozenset[str]:
        """The sources whose claims on an address are not exact."""
        return frozenset().union(*(sources for n, sources in self.inexact if _address_in(address, [n])))

    @invariant()
    def band_means_what_the_model_says(self) -> None:
        now = self.clock.now
        rules = self._rules()
        live = [(nets, d) for nets, d in rules if d.live(now)]
        # A range comes back to exact checks once neither side holds anything on it.
        model = list(self.model.live(now))
        self.inexact = [(h, s) for h, s in self.inexact if any(_overlap(h, n) for nets, _ in live for n in nets)
                        or any(_overlap(h, n) for n in model)]
        for address in SAMPLES:
            seen: dict[str, Claim] = {}
            for nets, d in live:
                if _address_in(address, nets):
                    seen = merge_claims(seen, d.live_claims(now))
            have = Answer(seen) if seen else None
            want = self.model.answer(address, now)
            if sources := self._inexact_at(address):
                # what an evicted entry left in narrower entries: its sources are not compared
                mine = want.claims if want else {}
                assert {s: c for s, c in seen.items() if s not in sources} == {s: c for s, c in mine.items() if s not in sources}, \
                    f"{address} (the claims of {sorted(sources)} not compared: evicted): band says {have}, model says {want}"
            else:
                assert have == want, f"{address}: band says {have}, model says {want}"

    @invariant()
    def band_invariants(self) -> None:
        rules = self._band()
        prios = [r["priority"] for r in rules]
        assert len(prios) == len(set(prios))
        assert [r for r in rules if not BAND[0] <= r["priority"] <= BAND[1]] == self.outside
        assert self.srv.rule(PROJECT, self.name, FOREIGN["priority"]) == self.foreign
        ours = [r for r in rules if BAND[0] <= r["priority"] <= BAND[1] and r["priority"] != FOREIGN["priority"]]
        for r in ours:
            assert r["description"].startswith("car1 ")
            assert 1 <= len(r["match"]["config"]["srcIpRanges"]) <= 10
            d = parse_description(r["description"])  # x and v are the latest and the heaviest claim's
            assert d.claims and (d.expiry, d.severity) == (Answer(d.claims).expiry, Answer(d.claims).severity), r["description"]
        if self.compacted:  # right after a cleanup: nothing expired, no range in two rules but one entry's records
            self.compacted = False
            now = self.clock.now
            seen: dict[str, tuple[int, frozenset[str]]] = {}
            for r in ours:
                d = parse_description(r["description"])
                assert d.live(now), f"rule {r['priority']} expired but kept"
                for x in r["match"]["config"]["srcIpRanges"]:
                    if x in seen:
                        assert not seen[x][1] & set(d.claims), f"{x} in rules {seen[x][0]} and {r['priority']}, both of {sorted(seen[x][1] & set(d.claims))}"
                    seen[x] = (r["priority"], seen.get(x, (0, frozenset()))[1] | frozenset(d.claims))


@pytest.fixture(scope="module")
def machine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("machine")


def test_the_band_means_what_the_reference_model_says(machine_dir: Path, record_property: Any) -> None:
    BandMachine.tmp = machine_dir
    run = BandMachine.TestCase
    run.settings = settings(max_examples=max(1, int(25 * hypothesis_scale())), stateful_step_count=25, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    start = next(_names)
    try:
        run().runTest()
    finally:
        record_property("examples", next(_names) - start - 1)  # one policy per example (scripts/hunt.py counts them)


# -- the falsifying examples, and what the machine found -------------


def _machine(machine_dir: Path) -> BandMachine:
    BandMachine.tmp = machine_dir
    return BandMachine()


def _check(m: BandMachine) -> None:
    m.band_invariants()
    m.band_means_what_the_model_says()


def net(text: str) -> Any:
    return ipaddress.ip_network(text)


def test_extend_through_a_supernet_then_unblock_is_idempotent(machine_dir: Path) -> None:
    """Issue 13's first example (test_reconcile_is_idempotent), in public
    ranges: a permanent manual /25, a feed's /23 and /26, a permanent-length
    extend of the other /25, then an unblock of the manual /25."""
    m = _machine(machine_dir)
    try:
        m.block([net("45.9.149.128/25")], 48, True, "medium", 0)
        _check(m)
        m.feed("fa", [net("45.9.148.0/23"), net("45.9.149.0/26")], [], False, 1)
        _check(m)
        m.extend(net("45.9.149.0/25"), 168, 0)
        _check(m)
        m.unblock(net("45.9.149.128/25"), 1)
        _check(m)
        m.redeliver(0)
        m.run_cleanup(1)
        _check(m)
        m.redeliver(0)  # a reconcile of the same band changes nothing
        _check(m)
    finally:
        m.teardown()


def test_a_permanent_manual_block_with_a_feed_claim_is_not_added_again(machine_dir: Path) -> None:
    """Issue 13's second example (test_append_plan_is_idempotent): a range
    held as ``x=never v=l s=feed+manual``, the same messages again."""
    m = _machine(machine_dir)
    try:
        m.block([net("45.9.148.0/27")], 48, True, "low", 0)
        m.feed("fa", [net("45.9.148.0/27")], [], False, 1)
        _check(m)
        m.redeliver(0)
        m.run_cleanup(0)
        _check(m)
        m.redeliver(1)
        m.feed("fa", [net("45.9.148.0/27")], [], False, 0)
        m.redeliver(1)
        _check(m)
    finally:
        m.teardown()


def _says(m: BandMachine, address: str) -> Answer | None:
    """What the band's rules say of one address, from their descriptions alone."""
    a = ipaddress.ip_address(address)
    now = m.clock.now
    seen: dict[str, Claim] = {}
    for nets, d in m._rules():
        if _address_in(a, nets):
            seen = merge_claims(seen, d.live_claims(now))
    return Answer(seen) if seen else None


def _at(hours: int) -> datetime:
    """START + hours, rounded up to the granularity as the band rounds expiries."""
    return START + timedelta(hours=hours) + timedelta(minutes=12)


FA = Claim(_at(4), NAMES["medium"])  # fa's claim made at START: 16:15, medium
FB = Claim(_at(12), NAMES["low"])  # fb's: 00:15 the next day, low


def test_a_withdrawal_does_not_depend_on_aggregation(machine_dir: Path) -> None:
    """A regression test: found by the stateful test when an entry held one
    expiry and one severity for all its sources. Feed fa blocks both halves
    of a /24 (4 h, medium); the band aggregates them into one /24. Feed fb
    blocks the /24 (12 h, low) and, in the same message, revokes the /23.
    Had the band kept the halves apart, fa's block would end after 4 h;
    because it aggregated them, fb's claim merged into the same entry and
    its 12 h expiry stayed behind under fa's name after fb withdrew. Each
    source's own claim now lives in the entry, so fa's 4 h, medium is what
    is left, aggregated or not."""
    m = _machine(machine_dir)
    try:
        m.feed("fa", [net("45.9.148.0/25"), net("45.9.148.128/25")], [], False, 0)
        _check(m)
        m.feed("fb", [net("45.9.148.0/24")], [net("45.9.148.0/23")], False, 0)
        _check(m)
        for address in ("45.9.148.9", "45.9.148.200"):
            assert _says(m, address) == Answer({"fa": FA})
        assert _says(m, "45.9.149.9") is None
    finally:
        m.teardown()


@pytest.mark.parametrize("withdrawn", ["fa", "fb"])
def test_the_same_range_from_two_feeds_keeps_each_feeds_claim(machine_dir: Path, withdrawn: str) -> None:
    """Two feeds claim the very same range with different TTLs and
    severities; one withdraws (fa revokes it; fb's snapshot no longer lists
    it): the other's own expiry and severity remain, neither the withdrawn
    one's expiry nor its severity."""
    m = _machine(machine_dir)
    try:
        m.feed("fa", [net("45.9.148.0/24")], [], False, 0)
        m.feed("fb", [net("45.9.148.0/24")], [], False, 1)
        _check(m)
        assert _says(m, "45.9.148.9") == Answer({"fa": FA, "fb": FB})
        m.advance(61)
        if withdrawn == "fa":
            m.feed("fa", [], [net("45.9.148.0/24")], False, 1)
            left = {"fb": FB}
        else:
            m.feed("fb", [net("45.9.151.3/32")], [], True, 0)
            left = {"fa": FA}
        _check(m)
        assert _says(m, "45.9.148.9") == Answer(left)
        m.run_cleanup(0)
        _check(m)
        m.redeliver(1)
        _check(m)
        assert _says(m, "45.9.148.200") == Answer(left)
    finally:
        m.teardown()


def test_a_claim_on_an_aggregated_range_ends_on_its_own(machine_dir: Path) -> None:
    """fa blocks both halves of a /24 (aggregated into one /24, 4 h, medium)
    and fb the /24 (12 h, low). Once fa's claim has ended, the band shows fb
    alone: fb's expiry, fb's severity, fb's name."""
    m = _machine(machine_dir)
    try:
        m.feed("fa", [net("45.9.148.0/25"), net("45.9.148.128/25")], [], False, 0)
        m.feed("fb", [net("45.9.148.0/24")], [], False, 1)
        _check(m)
        assert _says(m, "45.9.148.9") == Answer({"fa": FA, "fb": FB})
        for minutes in (180, 61, 14):  # 16:18: fa's claim ended at 16:15
            m.advance(minutes)
            _check(m)
        for address in ("45.9.148.9", "45.9.148.200"):
            a = _says(m, address)
            assert a == Answer({"fb": FB})
            assert a is not None and (a.sources, a.expiry, a.severity) == (frozenset({"fb"}), FB.expiry, NAMES["low"])
        m.run_cleanup(1)
        _check(m)
        m.feed("fa", [net("45.9.148.0/26"), net("45.9.148.64/26")], [], False, 0)  # a new claim on a quarter
        _check(m)
        assert _says(m, "45.9.148.9") == Answer({"fa": Claim(_at(4) + timedelta(minutes=255), NAMES["medium"]), "fb": FB})
        assert _says(m, "45.9.148.200") == Answer({"fb": FB})
    finally:
        m.teardown()


def test_an_eviction_leaves_the_copies_narrower_entries_hold(machine_dir: Path) -> None:
    """Where the README leaves the answer inexact (the module docstring).
    The band packs the operator's /32 and /25 (same metadata) into the /25;
    the model, which does not pack, keeps an entry for each. The Monitoring
    sighting of the /32 makes a new entry in the band, holding what its
    supernets claim of it (fa's /24 among them), and lands in the model's
    existing /32 entry. Once the band is full, the next block evicts fa's
    /24 entry (the only one without manual's claim; 8 rules): the band's /32 entry
    keeps its copy of fa's claim, the model has none, and neither is wrong
    by the README's words. The machine leaves fa out of the comparison under
    the /24 from then on, and compares the rest exactly."""
    m = _machine(machine_dir)
    try:
        m.block([net("45.9.149.77/32"), net("45.9.149.0/25")], 1, False, "low", 0)
        m.feed("fa", [net("45.9.149.0/24")], [], False, 0)
        m.alert_sighting(net("45.9.149.77/32"), 0)
        _check(m)
        for text, hours, permanent, severity in (("45.9.148.7/32", 2, False, "high"), ("45.9.148.200/32", 6, False, "high"),
                                                 ("45.9.151.3/32", 48, False, "high"), ("45.9.150.99/32", 48, True, "high"),
                                                 ("45.9.148.0/26", 2, False, "medium"), ("45.9.148.64/26", 6, False, "medium")):
            m.block([net(text)], hours, permanent, severity, 0)
            _check(m)
        assert m.inexact == [(net("45.9.149.0/24"), frozenset({"fa"}))]
        band = _says(m, "45.9.149.77")
        model = m.model.answer(ipaddress.ip_address("45.9.149.77"), m.clock.now)
        assert band is not None and model is not None
        assert {s: c for s, c in band.claims.items() if s != "fa"} == model.claims
        assert _says(m, "45.9.149.200") is None
    finally:
        m.teardown()


@pytest.mark.parametrize("case", ["revoke", "snapshot"])
def test_a_message_that_blocks_and_revokes_is_idempotent(machine_dir: Path, case: str) -> None:
    """Found by the stateful test (seeds 6 and 31). A feed message blocks a
    range and revokes a broader one around it (or the same one). The first
    delivery leaves the range a copy of what a broader entry claims of it,
    and writes no entry of its own for it. Delivered again, the block makes
    a new entry for the range (holding what the broader entries claim of
    it), the revocation takes the feed's claim out of it again, and what is
    left is a copy of the broader entry's claims: the redelivery must write
    nothing (README, "Get, plan, apply": a redelivered message changes
    nothing)."""
    m = _machine(machine_dir)
    try:
        if case == "revoke":
            m.feed("fa", [net("45.9.148.0/23")], [], False, 0)
            m.feed("fb", [net("45.9.148.0/26"), net("45.9.148.0/23")], [net("45.9.148.0/24")], False, 0)
            left = {"fa": FA}
        else:
            m.feed("fb", [net("45.9.148.0/23")], [], False, 0)
            m.feed("fa", [net("45.9.148.0/24")], [], False, 0)
            m.feed("fa", [net("45.9.148.0/26")], [net("45.9.148.0/26")], True, 0)
            left = {"fb": FB}
        _check(m)
        assert _says(m, "45.9.148.9") == Answer(left)
        m.redeliver(0)
        _check(m)
    finally:
        m.teardown()


@pytest.mark.parametrize("case", ["block", "extend"])
def test_a_sources_severity_does_not_depend_on_aggregation(machine_dir: Path, case: str) -> None:
    """Found by the stateful test (seeds 11, 17 and 44 at HYPOTHESIS_SCALE=4,
    and the default run), when entries held a source's claim per network:
    the answer then depended on whether the band had aggregated. ``block``:
    the operator blocks both /25 of a /24 for 6 h at low (the band
    aggregates them into one /24 entry), then the /24 for 1 h at high.
    Aggregated, the block merged into manual's one claim on the /24 (high
    for 6 h); unaggregated, the high claim ended after the hour. A source
    has one claim on an address, so the block merges into the /25's too:
    high for 6 h either way. ``extend``: fa blocks the /23 (medium), the
    operator the /24 and both /25 of the other /24 for 1 h at low (the band
    aggregates the three into the /23), then extends the /23 by 1 h.
    Aggregated, the /23 held manual's low claim, which the extend kept low;
    unaggregated, the /23 had none, and the new claim weighed what the entry
    weighed (medium). Where a source claims nothing, an extend's new claim
    is now the lowest; where it claims, its claim moves as heavy as it was:
    low either way."""
    m = _machine(machine_dir)
    try:
        if case == "block":
            m.block([net("45.9.148.0/25"), net("45.9.148.128/25")], 6, False, "low", 0)
            m.block([net("45.9.148.0/24")], 1, False, "high", 0)
            _check(m)
            m.advance(61)
            m.advance(14)  # 13:18: past the hour of the high block
            want = {"manual": Claim(_at(6), NAMES["high"])}
        else:
            m.feed("fa", [net("45.9.148.0/23")], [], False, 0)
            m.block([net("45.9.149.0/25"), net("45.9.148.0/24"), net("45.9.149.128/25")], 1, False, "low", 0)
            _check(m)
            m.extend(net("45.9.148.0/23"), 1, 0)
            want = {"fa": FA, "manual": Claim(_at(1), NAMES["low"])}
        assert _says(m, "45.9.148.9") == Answer(want)
        _check(m)
    finally:
        m.teardown()
