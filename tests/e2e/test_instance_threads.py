"""Requests served at once by one instance (gen2 with deploy.concurrency > 1)
share its responder: the read cache, the parsed band and the live entries
are per process and read by every thread. These tests drive one real
responder (the real adapter against the local API) from several threads."""

from __future__ import annotations

import ipaddress
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from config import settings as config
from handlers import runtime
from localapi import LocalCloudArmor
from responder import planner
from responder.audit import Audit
from responder.compute import CloudArmor
from responder.model import Intent, Verb
from responder.policy import PolicyRule
from responder.service import EventRef, Responder
from tests.e2e.conftest import BAND, OPERATOR_RULES, POLICY, PROJECT, create_policy


@pytest.fixture
def server() -> Iterator[LocalCloudArmor]:
    srv = LocalCloudArmor(op_delay=0.02, wait_timeout=10.0, project=PROJECT).start()
    create_policy(srv, rules=list(OPERATOR_RULES))
    yield srv
    srv.stop()


def _settings(server: LocalCloudArmor, path: Path) -> config.Settings:
    path.write_text(f"""
[policy]
project = "{PROJECT}"
name = "{POLICY}"
api_endpoint = "{server.endpoint}"
request_timeout = "1s"
operation_timeout = "2s"
retry_deadline = "3s"
read_cache = "30s"

[band]
start = {BAND[0]}
end = {BAND[1]}

[lease]
duration = "8s"
margin = "1s"
""")
    return config.load(path)


class Rendezvous:
    """The real adapter, with its first ``parties`` addRule calls held until
    all of them are in flight: requests that planned from the same view
    then write at the same time."""

    def __init__(self, api: CloudArmor, parties: int) -> None:
        self.api = api
        self.parties = parties
        self.barrier = threading.Barrier(parties, timeout=20)
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)

    def add_rule(self, rule: PolicyRule, **kw: Any) -> None:
        with self.lock:
            wait, self.parties = self.parties > 0, self.parties - 1
        if wait:
            self.barrier.wait()
        self.api.add_rule(rule, **kw)


def _band(server: LocalCloudArmor) -> list[dict[str, Any]]:
    server.settle()
    policy = server.policy(PROJECT, POLICY)
    assert policy is not None
    return [r for r in policy["rules"] if BAND[0] <= r["priority"] <= BAND[1]]


def test_blocks_written_at_once_by_one_instance_all_stay_in_its_read_cache(server: LocalCloudArmor, tmp_path: Path) -> None:
    """Two requests plan from the same cached read and add their rules at
    the same time. Both rules must join the cached view: a block of either
    range repeated within read_cache then finds it blocked and writes
    nothing (before, the second request's rule was dropped from the view,
    and the repeat wrote a duplicate rule)."""
    settings = _settings(server, tmp_path / "responder.toml")
    real = CloudArmor(settings.policy, retry_deadline=settings.policy.retry_deadline)
    responder = Responder(settings, Rendezvous(real, 2), Audit())
    until = datetime.now(tz=UTC) + timedelta(hours=6)
    nets = [ipaddress.ip_network("45.9.148.7/32"), ipaddress.ip_network("91.92.109.0/28")]

    def block(net: Any, message_id: str) -> None:
        responder.apply([Intent(Verb.BLOCK, net, "manual", until)], EventRef(message_id, "manual"))

    responder.apply([], EventRef("warm", "manual"), derive=lambda entries: [])  # the one cached read
    threads = [threading.Thread(target=block, args=(net, f"m{i}")) for i, net in enumerate(nets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(_band(server)) == 2
    server.requests.clear()
    for i, net in enumerate(nets):
        block(net, f"again{i}")  # the same blocks again, from the cached view
    assert [r["path"].rpartition("/")[2] for r in server.requests] == []
    assert sorted(r["match"]["config"]["srcIpRanges"][0] for r in _band(server)) == [str(n) for n in nets]


def test_threads_sharing_the_parsed_band_each_get_their_own_snapshots_band(
    server: LocalCloudArmor, tmp_path: Path
) -> None:
    """The parsed band and its live entries are one slot per instance. A
    thread that parses its snapshot must get that snapshot's band (and its
    entries), never the one another thread put in the slot meanwhile."""
    settings = _settings(server, tmp_path / "responder.toml")
    responder = Responder(settings, CloudArmor(settings.policy), Audit())
    base = CloudArmor(settings.policy).get_policy()
    now = datetime.now(tz=UTC)
    desc = "car1 x=never v=h s=manual"
    snaps = [replace(base, rules=base.rules + tuple(
        PolicyRule(priority=BAND[0] + j, action="deny(403)", ranges=(f"45.9.{i}.{j}/32",), description=desc)
        for j in range(i + 1))) for i in range(6)]
    wrong: list[str] = []
    start = threading.Barrier(len(snaps))

    def hammer(i: int) -> None:
        start.wait()
        for _ in range(400):
            band = responder._band_of(snaps[i])
            if len(band.rules) != i + 1:
                wrong.append(f"snapshot {i} got a band of {len(band.rules)} rules")
            entries = responder._entries_of(band, now)
            if set(entries) != {ipaddress.ip_network(f"45.9.{i}.{j}/32") for j in range(i + 1)}:
                wrong.append(f"band {i} got the entries of another band")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(len(snaps))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert wrong == []
    assert planner.read_band(snaps[2].rules, settings.band).rules == responder._band_of(snaps[2]).rules


def test_requests_arriving_at_once_on_a_cold_instance_build_one_adapter_and_one_responder(
    server: LocalCloudArmor, tmp_path: Path
) -> None:
    """The first requests of a cold instance arrive together: they must
    share one adapter (one compute client, one call count) and one
    responder (one read cache, one holder prefix), not each build their
    own. (functools.cached_property stopped locking in Python 3.12.)"""
    settings = _settings(server, tmp_path / "responder.toml")
    built: list[CloudArmor] = []

    def slow_factory(s: config.Settings) -> CloudArmor:
        time.sleep(0.2)  # what a cold compute_v1 import gives every other request time to do
        built.append(CloudArmor(s.policy))
        return built[-1]

    rt = runtime.Runtime(settings, Audit(), api_factory=slow_factory)
    start = threading.Barrier(6)

    def first_request(_: int) -> tuple[int, int]:
        start.wait()
        return id(rt.responder), id(rt.api)

    with ThreadPoolExecutor(6) as pool:
        seen = set(pool.map(first_request, range(6)))
    assert len(built) == 1
    assert seen == {(id(rt.responder), id(built[0]))}
    rt.responder.apply([Intent(Verb.BLOCK, ipaddress.ip_network("45.9.148.7/32"), "manual",
                               datetime.now(tz=UTC) + timedelta(hours=1))], EventRef("m1", "manual"))
    assert [r["match"]["config"]["srcIpRanges"] for r in _band(server)] == [["45.9.148.7/32"]]
