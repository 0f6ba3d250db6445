"""Alert notifications to sightings.

Cloud Monitoring incidents
    The notification a Pub/Sub (or webhook) channel receives, schema
    version 1.2 (https://cloud.google.com/monitoring/support/notification-options#schema-pubsub):
    ``{"incident": {"incident_id", "state": "open"|"closed", "policy_name",
    "condition_name", "summary", "started_at", "ended_at", "metric":
    {"labels"}, "resource": {"labels"}, "metadata": {"system_labels",
    "user_labels"}, ...}, "version": "1.2"}``. Version 1.1 uses the same
    ``incident`` layout and is read the same way; a bare incident object is
    accepted too. Addresses are the values of configured label keys, looked
    up in ``metric.labels``, ``resource.labels``,
    ``metadata.system_labels``, ``metadata.user_labels`` (notes say where:
    ``address=<key>@<where>``).

    The console's "send test notification" payload is recognised (heuristic,
    no published schema): a summary or documentation subject starting with
    "Test incident"/"Test notification", a ``test.googleapis.com`` metric,
    or an ``example_resource`` resource. It is returned with ``is_test``
    and no sightings.

Security Command Center notifications
    ``NotificationMessage`` (https://cloud.google.com/security-command-center/docs/how-to-api-notifications):
    ``{"notificationConfigName", "finding": {...}, "resource": {...}}``, or
    ``{"finding": ...}``, or a bare ``Finding``
    (https://cloud.google.com/security-command-center/docs/reference/rest/v1/organizations.sources.findings).
    Addresses come from ``indicator.ipAddresses``, ``connections[]`` (the
    external side: ``sourceIp`` for INGRESS, ``destinationIp`` for EGRESS;
    without a direction, the one side that is a global address), and the
    Event Threat Detection ``sourceProperties.properties`` fields that carry
    them: ``attempts[].sourceIp`` / ``loginAttempts[].sourceIp`` (brute
    force), ``ip`` (legacy bad_ip) and ``ipConnection`` (external side as
    for connections). Each value is reported once.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from responder.model import ParseResult, Severity

from ._common import Collector, clip, epoch_time, get_path, load_json, parse_time
from .errors import FormatError

_LABEL_PLACES = ("metric.labels", "resource.labels", "metadata.system_labels",
                 "metadata.user_labels")
_TEST_TEXT = re.compile(r"\s*test (incident|notification)\b", re.IGNORECASE)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class MonitoringIncident:
    """One Cloud Monitoring notification."""

    state: str  # "open", "closed", or as given (lower case); "" if absent
    incident_id: str
    policy_name: str
    condition_name: str = ""
    summary: str = ""
    version: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    is_test: bool = False
    result: ParseResult = field(default_factory=ParseResult)


def _is_test_incident(inc: dict[str, Any]) -> bool:
    texts = (_text(inc.get("summary")), _text(get_path(inc, "documentation.subject")),
             _text(inc.get("condition_name")))
    if any(_TEST_TEXT.match(t) for t in texts):
        return True
    if _text(get_path(inc, "metric.type")).startswith("test.googleapis.com"):
        return True
    return get_path(inc, "resource.type") == "example_resource"


def parse_monitoring_incident(payload: Any, label_keys: Sequence[str]) -> MonitoringIncident:
    """Read a Monitoring notification (dict, or JSON bytes/str)."""
    doc = load_json(payload)
    if not isinstance(doc, dict):
        raise FormatError("monitoring: notification is not a JSON object")
    inc = doc.get("incident", doc if "incident_id" in doc else None)
    if not isinstance(inc, dict):
        raise FormatError("monitoring: no 'incident' object")
    version = doc.get("version")
    base: dict[str, Any] = {
        "state": _text(inc.get("state")).lower(),
        "incident_id": _text(inc.get("incident_id")),
        "policy_name": _text(inc.get("policy_name")),
        "condition_name": _text(inc.get("condition_name")),
        "summary": _text(inc.get("summary")),
        "version": str(version) if isinstance(version, (str, int, float)) else "",
        "started_at": epoch_time(inc.get("started_at")) if inc.get("started_at") else None,
        "ended_at": epoch_time(inc.get("ended_at")) if inc.get("ended_at") else None,
    }
    if _is_test_incident(inc):
        return MonitoringIncident(**base, is_test=True,
                                  result=ParseResult(notes=("test-notification",)))
    out = Collector(None)
    seen: set[str] = set()
    reason = base["policy_name"] or base["condition_name"]
    for key in label_keys:
        for place in _LABEL_PLACES:
            labels = get_path(inc, place)
            if not isinstance(labels, dict) or key not in labels:
                continue
            raw = labels[key]
            out.notes.append(f"address={key}@{place}")
            if isinstance(raw, str) and raw in seen:
                continue
            seen.add(raw if isinstance(raw, str) else "")
            out.add(raw, f"{place}.{key}: {clip(raw)}", reason=reason)
    if not out.sightings and not out.errors:
        out.notes.append("no-address")
    return MonitoringIncident(**base, result=out.result())


# --------------------------------------------------------------------------
# Security Command Center


@dataclass(frozen=True)
class SccFinding:
    """One Security Command Center finding notification."""

    category: str
    severity: Severity | None  # None for SEVERITY_UNSPECIFIED / absent
    state: str  # ACTIVE / INACTIVE / "" if absent
    mute: str  # MUTED / UNMUTED / UNDEFINED (the default when absent)
    event_time: datetime | None
    finding_name: str = ""
    finding_class: str = ""
    notification_config: str = ""
    result: ParseResult = field(default_factory=ParseResult)


def _finding(doc: Any) -> tuple[dict[str, Any], str]:
    if not isinstance(doc, dict):
        raise FormatError("scc: notification is not a JSON object")
    if "finding" in doc:
        finding = doc["finding"]
        if not isinstance(finding, dict):
            raise FormatError("scc: 'finding' is not an object")
        return finding, _text(doc.get("notificationConfigName"))
    if any(k in doc for k in ("category", "sourceProperties", "findingClass")):
        return doc, ""
    raise FormatError("scc: neither a notification with 'finding' nor a finding")


def _external(source: Any, dest: Any, direction: Any) -> tuple[Any, str | None]:
    """Pick the external side of a connection; (value, None) or (None, why)."""
    if direction == "INGRESS":
        return source, None
    if direction == "EGRESS":
        return dest, None
    global_sides = [v for v in (source, dest) if _is_global(v)]
    if len(global_sides) == 1:
        return global_sides[0], None
    return None, "cannot tell the external side (no direction, not exactly one global address)"


def _is_global(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return ipaddress.ip_address(value.strip()).is_global
    except ValueError:
        return False


def parse_scc_notification(payload: Any) -> SccFinding:
    """Read an SCC notification or finding (dict, or JSON bytes/str)."""
    finding, config = _finding(load_json(payload))
    props = finding.get("sourceProperties")
    props = props if isinstance(props, dict) else {}
    severity_text = _text(finding.get("severity")) or _text(props.get("detectionPriority"))
    try:
        severity: Severity | None = Severity.parse(severity_text) if severity_text else None
    except ValueError:
        severity = None
    category = _text(finding.get("category"))
    out = Collector(None)
    event_time = None
    if finding.get("eventTime") is not None:
        try:
            event_time = parse_time(finding["eventTime"])
        except ValueError:
            out.notes.append("bad-event-time")
    seen: set[str] = set()

    def add(raw: Any, where: str) -> None:
        key = raw if isinstance(raw, str) else repr(raw)
        if key in seen:
            return
        seen.add(key)
        if f"address@{where}" not in out.notes:
            out.notes.append(f"address@{where}")
        out.add(raw, f"{where}: {clip(raw)}", severity=severity, reason=category)

    ips = get_path(finding, "indicator.ipAddresses")
    for raw in ips if isinstance(ips, list) else []:
        add(raw, "indicator.ipAddresses")
    conns = finding.get("connections")
    for i, conn in enumerate(conns if isinstance(conns, list) else []):
        if not isinstance(conn, dict):
            out.error(f"connections[{i}]", "connection is not an object")
            continue
        raw, why = _external(conn.get("sourceIp"), conn.get("destinationIp"), conn.get("direction"))
        if why:
            out.error(f"connections[{i}]", why)
        else:
            add(raw, "connections")
    inner = props.get("properties")
    inner = inner if isinstance(inner, dict) else {}
    for key in ("attempts", "loginAttempts"):
        attempts = inner.get(key)
        for attempt in attempts if isinstance(attempts, list) else []:
            if isinstance(attempt, dict) and "sourceIp" in attempt:
                add(attempt["sourceIp"], f"sourceProperties.properties.{key}")
    legacy = inner.get("ip")
    for raw in legacy if isinstance(legacy, list) else []:
        add(raw, "sourceProperties.properties.ip")
    conn = inner.get("ipConnection")
    if isinstance(conn, dict):
        raw, why = _external(conn.get("srcIp"), conn.get("destIp"), None)
        if why:
            out.error("sourceProperties.properties.ipConnection", why)
        else:
            add(raw, "sourceProperties.properties.ipConnection")
    if not out.sightings and not out.errors:
        out.notes.append("no-address")
    return SccFinding(
        category=category,
        severity=severity,
        state=_text(finding.get("state")),
        mute=_text(finding.get("mute")) or "UNDEFINED",
        event_time=event_time,
        finding_name=_text(finding.get("name")),
        finding_class=_text(finding.get("findingClass")),
        notification_config=config,
        result=out.result(),
    )
