"""The band lease under a stalled holder, and under several requests of one
instance (issue: a stale lease holder is not fenced; two requests in one
instance both held the lease). Each scenario loses an operator's unblock on
the code before the fix; the assertions are on the band the local API holds.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import eventarc
import pytest

from config import settings as config
from localapi import LocalCloudArmor
from responder.audit import Audit
from responder.compute import CloudArmor
from responder.errors import TransientError
from responder.model import Intent, Verb
from responder.service import EventRef, Responder
from tests.e2e.conftest import BAND, OPERATOR_RULES, POLICY, PROJECT, create_policy
from tests.e2e.test_processes import _env, _start

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("lease_worker.py"))
BLOCKED = ipaddress.ip_network("45.9.148.0/24")
BAND_RULE = {"priority": 20500, "action": "deny(403)", "description": "car1 x=never v=h s=manual",
             "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": [str(BLOCKED)]}}}


@pytest.fixture
def server() -> Iterator[LocalCloudArmor]:
    srv = LocalCloudArmor(op_delay=0.02, wait_timeout=10.0, project=PROJECT).start()
    create_policy(srv, rules=[*OPERATOR_RULES, BAND_RULE])
    yield srv
    srv.stop()


def _config(server: LocalCloudArmor, path: Path, lease: str = "8s") -> Path:
    # The timing bound: 2 x (1 s request + 2 s operation + 1 s margin) = 8 s.
    path.write_text(f"""
[policy]
project = "{PROJECT}"
name = "{POLICY}"
api_endpoint = "{server.endpoint}"
request_timeout = "1s"
operation_timeout = "2s"
retry_deadline = "3s"
read_cache = "0"

[band]
start = {BAND[0]}
end = {BAND[1]}

[lease]
duration = "{lease}"
wait = "40s"
margin = "1s"
""")
    return path


def _band(server: LocalCloudArmor) -> list[dict[str, Any]]:
    server.settle()
    policy = server.policy(PROJECT, POLICY)
    assert policy is not None
    return [r for r in policy["rules"] if BAND[0] <= r["priority"] <= BAND[1]]


def _outside(server: LocalCloudArmor) -> list[dict[str, Any]]:
    server.settle()
    policy = server.policy(PROJECT, POLICY)
    assert policy is not None
    return [{k: r.get(k) for k in ("priority", "action", "description", "match", "preview")}
            for r in policy["rules"] if not BAND[0] <= r["priority"] <= BAND[1]]


def _blocked_addresses(server: LocalCloudArmor) -> set[Any]:
    return {addr for rule in _band(server) for text in rule["match"]["config"]["srcIpRanges"]
            for addr in ipaddress.ip_network(text)}


def _expected(*lifted: str) -> set[ipaddress.IPv4Address]:
    return set(BLOCKED) - {ipaddress.ip_address(a) for a in lifted}


def _worker(cfg: Path, address: str, message_id: str, *stall: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, WORKER, str(cfg), address, message_id, *stall],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_stalled_lease_holder_never_overwrites_the_next_holders_unblock(server: LocalCloudArmor, tmp_path: Path) -> None:
    """Worker A takes the lease to unblock .7, passes the service's lease
    check and stalls for longer than its lease. Worker B takes the expired
    lease, unblocks .200 and releases. When A resumes, its patch, planned
    before B's change, must not be sent (it would block .200 again): A
    raises, and its redelivery lifts .7 from the band as B left it."""
    cfg = _config(server, tmp_path / "responder.toml")
    outside = _outside(server)
    marker = tmp_path / "a-stalled"
    a = _worker(cfg, "45.9.148.7", "msg-a", "12", str(marker))
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert a.poll() is None, a.communicate()
        assert time.monotonic() < deadline, "worker A never reached its first mutation"
        time.sleep(0.1)
    b = _worker(cfg, "45.9.148.200", "msg-b")
    _, b_err = b.communicate(timeout=90)
    assert b.returncode == 0, b_err
    assert _blocked_addresses(server) == _expected("45.9.148.200")  # B's unblock landed

    _, a_err = a.communicate(timeout=90)
    assert a.returncode == 75, a_err  # A stopped before sending: Pub/Sub redelivers
    assert "OutOfTime" in a_err
    assert _blocked_addresses(server) == _expected("45.9.148.200"), "the stalled holder overwrote B's unblock"

    redelivered = _worker(cfg, "45.9.148.7", "msg-a")
    _, err = redelivered.communicate(timeout=90)
    assert redelivered.returncode == 0, err
    assert _blocked_addresses(server) == _expected("45.9.148.7", "45.9.148.200")
    assert _outside(server) == outside
    assert "car-lease" not in (server.policy(PROJECT, POLICY) or {}).get("labels", {})


def test_requests_sharing_one_instance_take_the_lease_one_at_a_time(server: LocalCloudArmor, tmp_path: Path) -> None:
    """Gen2 with concurrency > 1: several requests share one responder (one
    process, one holder prefix). Each acquisition has its own holder id, so
    they take turns; every unblock lands and none is lost."""
    settings = config.load(_config(server, tmp_path / "responder.toml", lease="20s"))
    responder = Responder(settings, CloudArmor(settings.policy, retry_deadline=settings.policy.retry_deadline), Audit())
    outside = _outside(server)
    addresses = [f"45.9.148.{i}" for i in (3, 17, 64, 99, 130, 131, 200, 254)]
    start = threading.Barrier(len(addresses))

    def unblock(address: str) -> int:
        start.wait()
        for delivery in range(1, 30):  # Pub/Sub redelivers what raised
            try:
                responder.apply([Intent(Verb.UNBLOCK, ipaddress.ip_network(address), "manual")],
                                EventRef(f"m-{address}", "manual", actor="oncall@example.com"))
                return delivery
            except TransientError:
                time.sleep(0.2)
        raise AssertionError(f"the unblock of {address} never succeeded")

    with ThreadPoolExecutor(len(addresses)) as pool:
        list(pool.map(unblock, addresses))
    assert _blocked_addresses(server) == _expected(*addresses)
    assert _outside(server) == outside


def test_concurrent_unblocks_through_two_threaded_function_instances(server: LocalCloudArmor, tmp_path: Path) -> None:
    """Black box: a /24 is blocked, then 20 unblocks of single addresses in it
    are sent at once to two function instances that serve requests on
    threads (functions-framework's default, as gen2 with concurrency > 1);
    every message not acked is redelivered. All 20 must be lifted."""
    cfg = _config(server, tmp_path / "responder.toml", lease="20s")
    env = _env(server, RESPONDER_CONFIG=str(cfg), RESPONDER_RETRY_DEADLINE="3s")
    instances = [_start("on_manual", env, tmp_path / f"on_manual-{i}.log") for i in range(2)]
    outside = _outside(server)
    addresses = [f"45.9.148.{10 * i + 5}" for i in range(20)]
    try:
        def deliver(item: tuple[int, str]) -> int:
            n, address = item
            body = json.dumps({"action": "unblock", "ranges": [address], "actor": "oncall@example.com"}).encode()
            for attempt in range(1, 40):
                url = instances[(n + attempt) % 2][1]
                if eventarc.post(url, body, message_id=f"u-{n}") < 300:
                    return attempt
                time.sleep(0.3)
            raise AssertionError(f"unblock of {address} never acked")

        with ThreadPoolExecutor(len(addresses)) as pool:
            list(pool.map(deliver, enumerate(addresses)))
    finally:
        for proc, _ in instances:
            proc.terminate()
            proc.wait(timeout=10)
    assert _blocked_addresses(server) == _expected(*addresses)
    assert _outside(server) == outside


class _Clock:
    def __init__(self) -> None:
        from datetime import UTC, datetime

        self.now = datetime.now(tz=UTC).replace(microsecond=0)

    def __call__(self) -> Any:
        return self.now


def _label(server: LocalCloudArmor) -> str:
    return ((server.policy(PROJECT, POLICY) or {}).get("labels") or {}).get("car-lease", "")


def test_the_lease_renews_itself_refuses_to_start_too_late_and_waits_out_a_taken_over_lease(
    server: LocalCloudArmor, tmp_path: Path
) -> None:
    from datetime import timedelta

    from responder.errors import OutOfTime
    from responder.service import Lease

    settings = config.load(_config(server, tmp_path / "responder.toml", lease="20s"))  # bound 4 s
    api = CloudArmor(settings.policy, retry_deadline=settings.policy.retry_deadline)
    clock, slept = _Clock(), []
    first = Lease(api, settings, "wa", clock, slept.append)
    first.acquire()
    taken = _label(server)
    assert taken.startswith(first.holder + "-")
    clock.now += timedelta(seconds=9)
    first.keep()  # more than half left: nothing to do
    assert _label(server) == taken
    clock.now += timedelta(seconds=2)
    first.keep()  # less than half left: renewed by compare-and-set
    assert _label(server) != taken and first.left() >= timedelta(seconds=19)
    clock.now += timedelta(seconds=17)
    with pytest.raises(OutOfTime):  # 3 s left, the bound is 4 s: no operation may start
        first.require()

    # The holder dies here. Another instance, same process prefix, takes the
    # expired lease over: it must not read the band before the bound has
    # passed since that expiry.
    clock.now = first.expiry + timedelta(seconds=1)
    second = Lease(api, settings, "wa", clock, slept.append)
    assert second.holder != first.holder  # one id per acquisition
    second.acquire()
    assert slept == [3.0]  # expiry + 4 s bound - (expiry + 1 s)
    assert _label(server).startswith(second.holder + "-")
    first.release()  # a stale holder's release leaves the new lease alone
    assert _label(server).startswith(second.holder + "-")
    second.release()
    assert _label(server) == ""
