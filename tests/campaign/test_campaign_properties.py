"""Property: for any sequence of intents applied through
``responder.service.Responder`` (the real adapter ``responder.compute.CloudArmor``
against a LocalCloudArmor), the band read back after each step equals what the
planner said the band would hold (``plan.entries`` of the plan that was
executed), address by address; and no rule outside the band, nor the foreign
rule inside it, changes by a single field."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import campaign
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import settings as config
from localapi import LocalCloudArmor
from responder import planner
from responder.audit import Audit
from responder.model import Intent, Severity, Verb
from responder.planner import Entry
from responder.service import EventRef, Responder

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "prop-project"
POLICY = "prop-edge"
BAND = (20000, 20029)
FOREIGN = {"priority": 20013, "action": "deny(403)", "description": "team-x block",
           "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["2.58.56.0/24"]}}}
NETS = [ipaddress.ip_network(n) for n in (
    "45.9.0.0/23", "45.9.0.0/24", "45.9.0.0/25", "45.9.0.128/25", "45.9.0.7/32", "45.9.0.8/32",
    "45.9.0.9/32", "45.9.1.0/24", "185.220.101.0/24", "185.220.101.34/32", "2a0b:4142::/48", "2a0b:4142:0:1::/64",
)]
SOURCES = ("manual", "fa", "fb", "log")  # short: every union fits a 64-character description
START = datetime.now(tz=UTC).replace(second=0, microsecond=0)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@st.composite
def intents(draw: st.DrawFn) -> tuple[str, str, int, str, bool, str]:
    verb = draw(st.sampled_from(("block", "block", "block", "extend", "unblock")))
    net = draw(st.integers(0, len(NETS) - 1))
    source = draw(st.sampled_from(SOURCES))
    hours = draw(st.integers(1, 48))
    permanent = verb == "block" and source == "manual" and draw(st.integers(0, 9)) == 0
    severity = draw(st.sampled_from(("low", "medium", "high")))
    return verb, source, net, f"{hours}", permanent, severity


steps = st.lists(
    st.tuples(
        st.sampled_from(("apply", "apply", "apply", "cleanup")),
        st.lists(intents(), min_size=1, max_size=5),
        st.integers(0, 180),  # minutes the clock moves before the step
    ),
    min_size=1, max_size=6,
)

pytestmark = pytest.mark.property  # rerun with a seed from the commit on CI; ./test.sh --hunt


def make_intent(spec: tuple[str, str, int, str, bool, str], now: datetime) -> Intent:
    verb, source, net, hours, permanent, severity = spec
    expiry = None if verb == "unblock" or permanent else now + timedelta(hours=int(hours), minutes=7)
    return Intent(Verb(verb), NETS[net], source, expiry, permanent=permanent, severity=Severity.parse(severity))


# -- address-level view ---------------------------------------------------------

Value = tuple[float, int, frozenset[str]]


def _combine(values: list[Value]) -> Value | None:
    if not values:
        return None
    return (max(v[0] for v in values), max(v[1] for v in values), frozenset().union(*(v[2] for v in values)))


def view(entries: Mapping[Any, Entry]) -> dict[tuple[int, int, int], Value]:
    items = [(campaign._interval(e.network), (campaign._stamp_of(e.meta.expiry), int(e.meta.severity), e.meta.sources))
             for e in entries.values()]
    return _cut(items)


def _cut(items: list[tuple[tuple[int, int, int], Value]], cuts_from: list[tuple[tuple[int, int, int], Value]] | None = None) -> dict[tuple[int, int, int], Value]:
    out: dict[tuple[int, int, int], Value] = {}
    for version in (4, 6):
        ivs = [(a, b, v) for (ver, a, b), v in items if ver == version]
        extra = [(a, b) for (ver, a, b), _ in (cuts_from or []) if ver == version]
        cuts = sorted({a for a, _, _ in ivs} | {b for _, b, _ in ivs} | {a for a, _ in extra} | {b for _, b in extra})
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            got = _combine([v for a, b, v in ivs if a <= lo and b >= hi])
            if got is not None:
                out[(version, lo, hi)] = got
    return out


def same_band(expected: Mapping[Any, Entry], actual: Mapping[Any, Entry]) -> tuple[bool, str]:
    e_items = [(campaign._interval(e.network), (campaign._stamp_of(e.meta.expiry), int(e.meta.severity), e.meta.sources))
               for e in expected.values()]
    a_items = [(campaign._interval(e.network), (campaign._stamp_of(e.meta.expiry), int(e.meta.severity), e.meta.sources))
               for e in actual.values()]
    want, have = _cut(e_items, a_items), _cut(a_items, e_items)
    if want == have:
        return True, ""
    diff = [(k, want.get(k), have.get(k)) for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    return False, "; ".join(f"{campaign._segment_text(k)}: planned {w} read {h}" for k, w, h in diff[:5])


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[LocalCloudArmor]:
    srv = LocalCloudArmor(op_delay=0.0, quota=200, wait_timeout=5.0, seed=3, project=PROJECT).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def band_settings(server: LocalCloudArmor, tmp_path_factory: pytest.TempPathFactory) -> config.Settings:
    path = tmp_path_factory.mktemp("prop") / "responder.toml"
    spec = campaign.Spec(max_rules=0, lease_duration=60, lease_wait=5, request_timeout="5s")
    campaign.write_config(spec, path)
    return config.load(path, environ={
        "RESPONDER_PROJECT": PROJECT, "RESPONDER_POLICY": POLICY, "RESPONDER_API_ENDPOINT": server.endpoint,
        "RESPONDER_BAND_START": str(BAND[0]), "RESPONDER_BAND_END": str(BAND[1]), "RESPONDER_RETRY_DEADLINE": "5s",
    })


_examples = iter(range(10**6))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenario=steps)
def test_applied_band_equals_the_planned_band_and_nothing_else_changes(
    scenario: list[tuple[str, list[tuple[str, str, int, str, bool, str]], int]],
    server: LocalCloudArmor, band_settings: config.Settings,
) -> None:
    from responder.compute import Backoff, CloudArmor

    name = f"{POLICY}-{next(_examples)}"
    base = f"{server.endpoint}/compute/v1/projects/{PROJECT}/global"
    campaign._op(base, campaign._http("POST", f"{base}/securityPolicies",
                                      {"name": name, "rules": copy.deepcopy(campaign.OPERATOR_RULES)}))
    campaign._op(base, campaign._http("POST", f"{base}/securityPolicies/{name}/addRule", copy.deepcopy(FOREIGN)))
    try:
        s = replace(band_settings, policy=replace(band_settings.policy, name=name))
        fast = Backoff(initial=0.01, maximum=0.05)
        api = CloudArmor(s.policy, retry_deadline=timedelta(seconds=5), sleep=lambda _: None, backoff=fast, poll=fast)
        clock = Clock()
        responder = Responder(s, api, Audit(), clock=clock, sleep=lambda _: None, holder="prop")
        outside = [r for r in server.policy(PROJECT, name)["rules"] if not BAND[0] <= r["priority"] <= BAND[1]]
        foreign = server.rule(PROJECT, name, FOREIGN["priority"])

        recorded: list[planner.Plan] = []
        originals = planner.plan_append, planner.plan_reconcile

        def spy(fn):  # type: ignore[no-untyped-def]
            def wrapped(*args: Any, **kwargs: Any) -> planner.Plan:
                plan = fn(*args, **kwargs)
                recorded.append(plan)
                return plan
            return wrapped

        planner.plan_append, planner.plan_reconcile = spy(originals[0]), spy(originals[1])
        try:
            for i, (kind, specs, minutes) in enumerate(scenario):
                clock.now += timedelta(minutes=minutes)
                recorded.clear()
                event = EventRef(message_id=f"{name}-{i}", source="manual" if kind == "apply" else "cleanup")
                if kind == "apply":
                    responder.apply([make_intent(x, clock.now) for x in specs], event)
                else:
                    responder.cleanup(event)
                assert recorded, "no plan was made"
                plan = recorded[-1]
                snap = api.get_policy()
                band = planner.read_band(snap.rules, s.band)
                ok, why = same_band(plan.entries, band.entries(clock.now))
                assert ok, f"step {i} ({kind}): {why}"
                prios = [r.priority for r in snap.rules]
                assert len(prios) == len(set(prios))
                assert all(len(r.ranges) <= 10 for r in snap.rules)
                policy = server.policy(PROJECT, name)
                assert outside == [r for r in policy["rules"] if not BAND[0] <= r["priority"] <= BAND[1]]
                assert foreign == server.rule(PROJECT, name, FOREIGN["priority"])
        finally:
            planner.plan_append, planner.plan_reconcile = originals
    finally:
        campaign._op(base, campaign._http("DELETE", f"{base}/securityPolicies/{name}"))
