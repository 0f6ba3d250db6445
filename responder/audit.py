"""The audit trail: one structured record per change to the band.

Records go through the standard ``logging`` module. On Cloud Functions,
``setup_logging()`` installs google-cloud-logging's ``StructuredLogHandler``
on stdout, which Cloud Logging ingests as ``jsonPayload``; every record then
carries the stable field ``jsonPayload.responder.change`` (see ``CHANGES``)
for log-based metrics. Locally, records can also be appended to a JSON-lines
file (``RESPONDER_AUDIT_FILE``) that ``cli.py explain`` reads.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOGGER_NAME = "responder.audit"

# Values of ``responder.change``; stable, used by log-based metrics.
CHANGES = (
    "added",  # a range is now blocked
    "extended",  # a blocked range got a later expiry or another source
    "removed",  # unblocked on request
    "expired",  # dropped by cleanup after its expiry
    "evicted",  # dropped to make room (capacity policy)
    "refused",  # an intent the guards or the planner would not apply
    "unchanged",  # an event that needed no change
    "rejected",  # a malformed event, acknowledged
    "failed",  # a transient failure recorded before raising (Pub/Sub redelivers), e.g. a feed download
    "lint",  # a problem in the policy found at cleanup/start
    "usage",  # band utilisation, reported by cleanup
    "breaker",  # a source flooded: its new rules go to preview or are refused
    "mode",  # the break-glass switch: every band rule to preview, or back
    "deferred",  # work stopped for lack of lease or delivery time; the redelivery continues it
    "dead-lettered",  # a message failed on its last allowed delivery: it goes to the dead-letter topic
    "wiped",  # band rules disappeared without a record of ours (another writer removed them): restore
    "group",  # an address group of a feed (and its band rule) created, updated, replaced or deleted
    "fallback",  # a group-stored feed falls back to band rules (Standard tier), recorded once
    "target-failed",  # one target failed for good (policy gone, permission denied); the others went ahead
)

_setup_lock = threading.Lock()
_configured = False


def setup_logging(stream: Any = None) -> None:
    """Installs the structured handler on the root logger, once."""
    global _configured
    with _setup_lock:
        if _configured:
            return
        from google.cloud.logging_v2.handlers import StructuredLogHandler

        handler = StructuredLogHandler(stream=stream or sys.stdout)  # type: ignore[no-untyped-call]
        root = logging.getLogger()
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        _configured = True


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


#: How many of its latest records a process keeps in memory: enough for the
#: CLI and the run script to report on what they just did; bounded, so a warm
#: function instance never grows with the records it has written.
KEEP_RECORDS = 10_000


class Audit:
    """Writes audit records; keeps the latest ``keep`` of this process for
    callers that want to report on them (the CLI, the run script, tests)."""

    def __init__(self, logger: logging.Logger | None = None, file: str | Path | None = None,
                 keep: int = KEEP_RECORDS) -> None:
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.file = Path(file) if file else None
        self.keep = keep
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.fields: dict[str, Any] = {}  # added to every record (``bound``)

    def bound(self, **fields: Any) -> Audit:
        """This trail, with ``fields`` added to every record written through
        the copy (e.g. the target's name); records, file and lock are shared."""
        copy = object.__new__(Audit)
        copy.__dict__.update(self.__dict__)
        copy.fields = {**self.fields, **fields}
        return copy

    def record(self, change: str, message: str, *, level: int = logging.INFO, **fields: Any) -> dict[str, Any]:
        if change not in CHANGES:
            raise ValueError(f"unknown audit change {change!r}")
        if self.fields:
            fields = {**self.fields, **fields}
        body = {"change": change, **{k: _jsonable(v) for k, v in fields.items() if v is not None}}
        self.logger.log(level, message, extra={"json_fields": {"responder": body}})
        with self._lock:
            self.records.append({"message": message, **body})
            if len(self.records) > 2 * self.keep:  # trimmed now and then: amortised O(1)
                del self.records[: len(self.records) - self.keep]
            if self.file is not None:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                with open(self.file, "a", encoding="utf-8") as fh:  # time: as Cloud Logging stamps each entry
                    stamp = _jsonable(datetime.now(tz=UTC).replace(microsecond=0))
                    fh.write(json.dumps({"time": stamp, "message": message, **body}) + "\n")
        return body

    def changes(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["change"] == kind]


def read_file(path: str | Path) -> Iterable[dict[str, Any]]:
    """The records of a local audit file, oldest first."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
    except FileNotFoundError:
        return


def file_trail(path: str | Path) -> Callable[[datetime], list[dict[str, Any]]]:
    """A reader of the records of a local audit file. It returns them all,
    whatever the time asked: the file is local and small, and its stamps are
    the wall clock, which a test's clock need not follow."""

    def read(since: datetime) -> list[dict[str, Any]]:
        return list(read_file(path))

    return read


def cloud_trail(project: str, changes: Sequence[str]) -> Callable[[datetime], list[dict[str, Any]]]:
    """A reader of the records of the given kinds in Cloud Logging written
    since a time, oldest first (the caller needs ``logging.logEntries.list``,
    e.g. roles/logging.viewer). Each record gets the entry's ``time``."""

    def read(since: datetime) -> list[dict[str, Any]]:
        from google.cloud import logging as cloud_logging

        client = cloud_logging.Client(project=project)  # type: ignore[no-untyped-call]
        kinds = " OR ".join(f'"{c}"' for c in changes)
        query = f'jsonPayload.responder.change=({kinds}) AND timestamp>="{_jsonable(since.astimezone(UTC))}"'
        out = []
        for entry in client.list_entries(  # type: ignore[no-untyped-call]
            filter_=query, order_by=cloud_logging.ASCENDING, page_size=1000, max_results=20000
        ):
            payload = getattr(entry, "payload", None)
            if isinstance(payload, Mapping) and isinstance(payload.get("responder"), Mapping):
                stamp = getattr(entry, "timestamp", None)
                out.append({**payload["responder"], "time": _jsonable(stamp) if isinstance(stamp, datetime) else None})
        return out

    return read
