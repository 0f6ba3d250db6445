"""The Pub/Sub envelope of a CloudEvent, as Eventarc delivers it.

A gen2 function triggered by a topic receives a CloudEvent of type
``google.cloud.pubsub.topic.v1.messagePublished`` whose data is::

    {"message": {"data": "<base64>", "attributes": {...},
                 "messageId": "...", "publishTime": "RFC3339"},
     "subscription": "projects/.../subscriptions/...",
     "deliveryAttempt": 1}

(``deliveryAttempt`` only when the subscription dead-letters.)

``messageId``/``publishTime`` also appear as ``message_id``/``publish_time``
(the legacy background-function spelling; both are set by Pub/Sub). The
publish time is the base of every TTL, so that a redelivered message computes
the same expiry and changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from responder.errors import BadEvent

MAX_MESSAGE_BYTES = 10 * 1024 * 1024  # Pub/Sub's limit


@dataclass(frozen=True)
class Message:
    data: bytes
    message_id: str
    publish_time: datetime
    attributes: Mapping[str, str] = field(default_factory=dict)
    # Pub/Sub's count of deliveries of this message (1 on the first), when
    # the subscription has a dead-letter policy; 0 when unknown.
    delivery_attempt: int = 0

    def json(self) -> Any:
        """The data as JSON; a BadEvent that says why when it is not."""
        if not self.data.strip():
            raise BadEvent("the message has no data")
        try:
            return json.loads(self.data)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, absurd nesting or numbers
            raise BadEvent(f"the message data is not JSON: {str(exc) or type(exc).__name__}") from None


def parse_time(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"expected an RFC 3339 time, got {text!r}")
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"time without a timezone: {text!r}")
    return value.astimezone(UTC)


def from_cloud_event(event: Any) -> Message:
    """Decodes a functions-framework CloudEvent carrying a Pub/Sub message."""
    data = event.data
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):
            raise BadEvent("the CloudEvent data is not a Pub/Sub envelope (not JSON)") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("message"), Mapping):
        raise BadEvent("the CloudEvent data is not a Pub/Sub envelope (no 'message' object)")
    message = data["message"]
    raw = message.get("data") or ""
    if not isinstance(raw, str):
        raise BadEvent("message.data is not a base64 string")
    if len(raw) > MAX_MESSAGE_BYTES * 4 // 3 + 4:
        raise BadEvent("message.data is larger than Pub/Sub's 10 MB")
    try:
        payload = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadEvent("message.data is not valid base64") from None
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(isinstance(v, str) for v in attributes.values()):
        raise BadEvent("message.attributes is not a map of strings")
    message_id = message.get("messageId") or message.get("message_id") or _attr(event, "id")
    if not isinstance(message_id, str) or not message_id:
        raise BadEvent("the message has no messageId")
    stamp = message.get("publishTime") or message.get("publish_time") or _attr(event, "time")
    try:
        publish_time = parse_time(stamp)
    except ValueError as exc:
        raise BadEvent(f"message.publishTime: {exc}") from None
    attempt = data.get("deliveryAttempt", message.get("deliveryAttempt", 0))
    attempt = attempt if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 0 else 0
    return Message(payload, message_id, publish_time, dict(attributes), attempt)


def _attr(event: Any, name: str) -> Any:
    try:
        return event[name]
    except (KeyError, TypeError):
        return None
