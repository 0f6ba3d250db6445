"""Decoding the Pub/Sub envelope of a CloudEvent."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from cloudevents.http import CloudEvent

from handlers.envelope import from_cloud_event
from responder.errors import BadEvent

ATTRS = {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub.googleapis.com/projects/p/topics/t",
         "id": "ce-1", "time": "2026-11-29T10:00:00Z"}


def _event(message: object) -> CloudEvent:
    return CloudEvent(ATTRS, {"message": message, "subscription": "projects/p/subscriptions/s"})


def test_decodes_data_attributes_id_and_publish_time() -> None:
    event = _event({"data": base64.b64encode(b'{"a": 1}').decode(), "attributes": {"feed": "x"},
                    "messageId": "42", "publishTime": "2026-11-29T09:59:58.123Z"})
    message = from_cloud_event(event)
    assert (b'{"a": 1}', "42", {"feed": "x"}) == (message.data, message.message_id, dict(message.attributes))
    assert datetime(2026, 11, 29, 9, 59, 58, 123000, tzinfo=UTC) == message.publish_time


def test_accepts_the_legacy_snake_case_spelling() -> None:
    event = _event({"data": "", "message_id": "7", "publish_time": "2026-11-29T09:00:00+00:00"})
    message = from_cloud_event(event)
    assert ("7", b"") == (message.message_id, message.data)


def test_falls_back_to_the_cloudevent_id_and_time() -> None:
    message = from_cloud_event(_event({"data": base64.b64encode(b"x").decode()}))
    assert ("ce-1", datetime(2026, 11, 29, 10, tzinfo=UTC)) == (message.message_id, message.publish_time)


@pytest.mark.parametrize(
    "message, complaint",
    [
        ("not an object", "no 'message' object"),
        ({"data": "%%%", "messageId": "1"}, "not valid base64"),
        ({"data": 5, "messageId": "1"}, "not a base64 string"),
        ({"data": "", "messageId": "1", "attributes": {"a": 1}}, "not a map of strings"),
        ({"data": "", "messageId": "1", "publishTime": "yesterday"}, "publishTime"),
    ],
)
def test_malformed_envelope_is_a_bad_event(message: object, complaint: str) -> None:
    with pytest.raises(BadEvent, match=complaint):
        from_cloud_event(_event(message))


def test_the_audit_keeps_a_bounded_number_of_records_in_memory() -> None:
    """A warm instance writes records for days: memory must not grow with them."""
    import logging

    from responder.audit import Audit

    audit = Audit(logger=logging.getLogger("test.audit.bounded"), keep=100)
    for i in range(1_000):
        audit.record("unchanged", "nothing to apply", message_id=f"m-{i}")
    assert 100 <= len(audit.records) <= 200
    assert audit.records[-1]["message_id"] == "m-999"
    assert audit.records[0]["message_id"] == f"m-{1000 - len(audit.records)}"
