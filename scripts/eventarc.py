"""Builds Pub/Sub CloudEvents the way Eventarc delivers them (binary mode).

Shared by the local run script and the tests: each message becomes an HTTP
POST whose ``ce-*`` headers carry the CloudEvent attributes and whose JSON
body is the Pub/Sub envelope with base64 data.
"""

from __future__ import annotations

import base64
import itertools
import json
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
_ids = itertools.count(1)


def envelope(
    data: bytes,
    *,
    attributes: Mapping[str, str] | None = None,
    message_id: str | None = None,
    publish_time: datetime | None = None,
    topic: str = "projects/local/topics/car",
    delivery_attempt: int | None = None,
) -> tuple[dict[str, str], dict[str, object]]:
    """(CloudEvent attributes, envelope dict) for one Pub/Sub message.
    ``delivery_attempt``: Pub/Sub's count, set when the subscription
    dead-letters (1 on the first delivery)."""
    message_id = message_id or f"local-{next(_ids)}"
    when = (publish_time or datetime.now(tz=UTC)).astimezone(UTC)
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body: dict[str, object] = {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": dict(attributes or {}),
            "messageId": message_id,
            "publishTime": stamp,
        },
        "subscription": f"{topic.replace('/topics/', '/subscriptions/')}-sub",
    }
    if delivery_attempt is not None:
        body["deliveryAttempt"] = delivery_attempt
    ce = {
        "type": EVENT_TYPE,
        "source": f"//pubsub.googleapis.com/{topic}",
        "id": message_id,
        "time": stamp,
        "specversion": "1.0",
        "datacontenttype": "application/json",
    }
    return ce, body


def binary_request(data: bytes, **kwargs: object) -> tuple[dict[str, str], bytes]:
    """(headers, body) of the HTTP POST Eventarc sends for one message."""
    attrs, body = envelope(data, **kwargs)  # type: ignore[arg-type]
    headers, payload = to_binary(CloudEvent(attrs, body))
    return dict(headers), payload


def post(url: str, data: bytes, timeout: float = 120.0, **kwargs: object) -> int:
    """Delivers one message to a running function; returns the HTTP status."""
    headers, payload = binary_request(data, **kwargs)
    request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def json_bytes(doc: object) -> bytes:
    return json.dumps(doc).encode()
