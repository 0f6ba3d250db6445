"""`cli.py replay-dead-letters` against a loopback fake of the Pub/Sub REST
API (tests/e2e/fake_pubsub.py; the Pub/Sub emulator is a Java gcloud
component, not installable here). The CLI is the real one, run as a process."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.fake_pubsub import FakePubSub

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "config" / "responder.toml").read_text())["policy"]["project"]
HOLD = f"projects/{PROJECT}/subscriptions/car-dead-letter-hold"
FEED_SUB = f"projects/{PROJECT}/subscriptions/eventarc-us-central1-car-threat-feed-000001-sub-001"
MANUAL_SUB = f"projects/{PROJECT}/subscriptions/eventarc-us-central1-car-manual-000004-sub-004"
FEED_TOPIC = f"projects/{PROJECT}/topics/car-threat-feed"
MANUAL_TOPIC = f"projects/{PROJECT}/topics/car-manual"


@pytest.fixture
def pubsub() -> Iterator[FakePubSub]:
    fake = FakePubSub()
    fake.subscribe(HOLD, f"projects/{PROJECT}/topics/car-dead-letter")
    fake.subscribe(FEED_SUB, FEED_TOPIC)
    fake.subscribe(MANUAL_SUB, MANUAL_TOPIC)
    yield fake
    fake.close()


def dead_letter(fake: FakePubSub, source: str, data: bytes, **attributes: str) -> None:
    """A message as Pub/Sub forwards it to the dead-letter topic: its own
    attributes plus the CloudPubSubDeadLetter* ones."""
    fake.put(HOLD, {"data": base64.b64encode(data).decode(), "publishTime": "2026-01-01T00:00:00Z", "attributes": {
        **attributes,
        "CloudPubSubDeadLetterSourceSubscription": source.rsplit("/", 1)[-1],
        "CloudPubSubDeadLetterSourceSubscriptionProject": PROJECT,
        "CloudPubSubDeadLetterSourceDeliveryCount": "5",
        "CloudPubSubDeadLetterSourceTopicPublishTime": "2026-01-01T00:00:00Z"}})


def cli(fake: FakePubSub, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RESPONDER_PUBSUB_ENDPOINT": fake.url}
    env.pop("RESPONDER_CONFIG", None)
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "replay-dead-letters", *argv],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_each_message_goes_back_to_its_original_topic_with_its_own_attributes(pubsub: FakePubSub) -> None:
    dead_letter(pubsub, FEED_SUB, b"1.2.3.0/24\n", feed="drop", format="plain")
    dead_letter(pubsub, MANUAL_SUB, b'{"action":"block"}')
    result = cli(pubsub)
    assert 0 == result.returncode, result.stderr
    assert [(FEED_TOPIC, {"feed": "drop", "format": "plain"}, b"1.2.3.0/24\n"),
            (MANUAL_TOPIC, {}, b'{"action":"block"}')] == [
        (topic, m["attributes"], base64.b64decode(m["data"])) for topic, m in pubsub.published]
    assert [] == pubsub.queues[HOLD] and {} == pubsub.leased          # each acknowledged
    assert 1 == len(pubsub.queues[FEED_SUB]) and 1 == len(pubsub.queues[MANUAL_SUB])


def test_dry_run_lists_and_hands_every_message_back(pubsub: FakePubSub) -> None:
    dead_letter(pubsub, FEED_SUB, b"x", feed="drop")
    result = cli(pubsub, "--dry-run")
    assert 0 == result.returncode, result.stderr
    assert "would republish message" in result.stdout and FEED_TOPIC in result.stdout
    assert [] == pubsub.published
    assert 1 == len(pubsub.queues[HOLD]) and {} == pubsub.leased


def test_limit_replays_at_most_n(pubsub: FakePubSub) -> None:
    for i in range(3):
        dead_letter(pubsub, MANUAL_SUB, f"m{i}".encode())
    result = cli(pubsub, "--limit", "2")
    assert 0 == result.returncode, result.stderr
    assert 2 == len(pubsub.published) and 1 == len(pubsub.queues[HOLD])


def test_a_failed_publish_leaves_the_message_unacknowledged(pubsub: FakePubSub) -> None:
    dead_letter(pubsub, MANUAL_SUB, b"m")
    pubsub.fail_publish = 1
    result = cli(pubsub)
    assert 5 == result.returncode
    assert "HTTP 503" in result.stderr and "Traceback" not in result.stderr
    assert [] == pubsub.published
    assert 1 == len(pubsub.leased)      # not acked: Pub/Sub redelivers it after the ack deadline
