"""A load larger than one delivery's time: the service stops starting
operations when the delivery's budget (deploy.timeout) cannot cover one
more, records what remains, and raises; Pub/Sub redelivers, and each
redelivery continues from the band as it is, repeating nothing.

The local API runs as a slow real API might: every operation takes 2 s and a
policy with an operation in flight refuses other mutations (400
resourceNotReady, retried by the adapter)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from localapi import FaultConfig, LocalCloudArmor
from tests.e2e.conftest import PROJECT, Harness, _harness
from tests.e2e.support import BASE_CONFIG, records

FEED = "\n".join(f"45.{9 + i // 100}.{i % 100}.7" for i in range(300)) + "\n"  # 300 ranges, none adjacent: 30 rules
# A read cache longer than a delivery: each redelivery lands on the same warm
# instance while its cached view of the band is still fresh, so that view must
# not miss the adds of the delivery that ran out of time.
TIMING = """[policy]
request_timeout = "2s"
operation_timeout = "6s"
read_cache = "60s"
"""
EXTRA = """
[lease]
margin = "1s"

[feeds.bulk]
format = "plain"
snapshot = true
ttl = "1d"
"""


def _harness_with(server: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, timeout: str) -> Harness:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "responder.toml"
    config.write_text(BASE_CONFIG.read_text().replace("[policy]\n", TIMING, 1) + EXTRA)
    monkeypatch.setenv("RESPONDER_CONFIG", str(config))
    monkeypatch.setenv("RESPONDER_FUNCTION_TIMEOUT", timeout)
    return _harness(server, monkeypatch, tmp_path, None)


def _entries(h: Harness) -> dict[str, tuple[str, ...]]:
    """range -> (expiry, severity, sources) as the band's rules describe it."""
    out: dict[str, tuple[str, ...]] = {}
    for rule in h.band_rules():
        words = dict(w.split("=", 1) for w in rule["description"].split()[1:])
        for net in rule["match"]["config"]["srcIpRanges"]:
            assert net not in out, f"{net} is in two band rules"
            out[net] = (words["x"], words["v"], words["s"], rule["action"])
    return out


def _added_ranges(h: Harness) -> Counter[str]:
    return Counter(net for r in h.server.requests if r["path"].endswith("/addRule") and r.get("status") == 200
                   for net in (r["body"] or {}).get("match", {}).get("config", {}).get("srcIpRanges", []))


def test_a_snapshot_too_large_for_one_delivery_lands_across_redeliveries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # One unlimited run: the band the budgeted deliveries must end with.
    with LocalCloudArmor(op_delay=0.0, wait_timeout=10.0, project=PROJECT) as fast:
        ref = _harness_with(fast, monkeypatch, tmp_path / "ref", "540s")
        assert ref.publish("on_threat_feed", FEED.encode(), attributes={"feed": "bulk"}, message_id="bulk-1") == 200
        expected = _entries(ref)
        publish_time = ref.clock()
    assert len(expected) == 300

    slow = LocalCloudArmor(op_latency=2, serialize_operations=True, wait_timeout=10.0, project=PROJECT).start()
    try:
        h = _harness_with(slow, monkeypatch, tmp_path / "slow", "20s")
        h.clock.now = publish_time
        statuses = []
        for attempt in range(1, 16):
            status = h.publish("on_threat_feed", FEED.encode(), attributes={"feed": "bulk"}, message_id="bulk-1",
                               publish_time=publish_time, delivery_attempt=attempt)
            statuses.append(status)
            if status < 300:
                break
        assert statuses[-1] == 200, statuses
        assert len(statuses) >= 3  # 30 rules at 2 s each do not fit a 20 s budget
        deferred = records(h, "deferred", "bulk-1")
        assert len(deferred) == len(statuses) - 1
        assert all(r["remaining"] > 0 and r["done"] > 0 for r in deferred)
        assert _entries(h) == expected
        priorities = [r["priority"] for r in h.policy()["rules"]]
        assert len(priorities) == len(set(priorities))
        assert set(_added_ranges(h).values()) == {1}, "a range was added twice"
        # Every addRule sent landed: no redelivery planned from a stale cached view
        # (which would collide with its own earlier adds at the same seeded priorities).
        sent = [r for r in h.server.requests if r["path"].endswith("/addRule")]
        assert len(sent) == len(h.band_rules()) == 30
    finally:
        slow.stop()


def test_a_message_that_fails_its_last_delivery_is_reported_plainly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """deploy.max_delivery_attempts = 5 (the default): the fifth failing
    delivery says the message goes to the dead-letter topic."""
    server = LocalCloudArmor(op_delay=0.0, project=PROJECT).start()
    try:
        h = _harness_with(server, monkeypatch, tmp_path, "20s")
        server.faults = FaultConfig(http_503=1.0, scope="reads")  # every read fails until the retry deadline (2 s)
        for attempt in (4, 5):
            assert h.publish("on_threat_feed", FEED.encode(), attributes={"feed": "bulk"}, message_id="bulk-2",
                             delivery_attempt=attempt) == 500
        dead: list[dict[str, Any]] = records(h, "dead-lettered", "bulk-2")
        assert len(dead) == 1 and dead[0]["delivery_attempt"] == 5
        server.faults = FaultConfig()
        assert h.band_rules() == []
    finally:
        server.stop()
