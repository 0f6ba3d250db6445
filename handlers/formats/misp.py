"""MISP events to sightings.

Follows the MISP core format (https://www.misp-standard.org/rfc/misp-standard-core.html
and the MISP REST API): an event is ``{"Event": {...}}``, a REST search
answer is ``{"response": [{"Event": {...}}, ...]}`` (or
``{"response": {"Attribute": [...]}}`` for an attribute search), and a
bare event object (with ``Attribute``) is accepted too.

Attributes are read at event level and inside each ``Object``. Types
``ip-src``, ``ip-dst``, ``ip-src|port``, ``ip-dst|port`` (the port after
``|`` is dropped) with ``to_ids`` true (bool, ``1`` or ``"1"``/``"true"``)
give sightings; the same types without ``to_ids``, and all other types,
are skipped and counted; ``deleted`` attributes are skipped and counted.
The reason is the event ``info``; the event ``threat_level_id`` (1 high,
2 medium, 3 low, 4 undefined) sets the severity.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from responder.model import ParseResult, Severity

from ._common import Collector
from .errors import FormatError

IP_TYPES = ("ip-src", "ip-dst", "ip-src|port", "ip-dst|port")
_LEVELS = {"1": Severity.HIGH, "2": Severity.MEDIUM, "3": Severity.LOW}


def _true(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return value is True or (isinstance(value, int) and value == 1)


def _events(doc: Any) -> list[Any]:
    if isinstance(doc, dict):
        if "Event" in doc:
            return [doc["Event"]]
        if "response" in doc:
            response = doc["response"]
            if isinstance(response, dict):
                return [response.get("Event", response)]
            if isinstance(response, list):
                return [x.get("Event", x) if isinstance(x, dict) else x for x in response]
            raise FormatError("misp: 'response' is neither a list nor an object")
        if "Attribute" in doc or "Object" in doc or "info" in doc:
            return [doc]
        raise FormatError("misp: no 'Event', 'response' or 'Attribute' at top level")
    if isinstance(doc, list):
        return [x.get("Event", x) if isinstance(x, dict) else x for x in doc]
    raise FormatError("misp: top level must be an object or a list of events")


def parse_misp(doc: Any, now: datetime) -> ParseResult:
    """Sightings from a decoded MISP event / REST answer (see module doc)."""
    out = Collector(now)
    for number, event in enumerate(_events(doc)):
        if not isinstance(event, dict):
            out.error(f"event {number}", "event is not an object")
            continue
        info = event.get("info")
        reason = info if isinstance(info, str) else ""
        severity = _LEVELS.get(str(event.get("threat_level_id", "")))
        attributes = _list(out, f"event {number}", event.get("Attribute"))
        for obj in _list(out, f"event {number}", event.get("Object")):
            if isinstance(obj, dict):
                attributes.extend(_list(out, f"event {number}", obj.get("Attribute")))
            else:
                out.error(f"event {number}", "Object entry is not an object")
        for index, attr in enumerate(attributes):
            try:
                _attribute(out, attr, reason, severity)
            except RecursionError:
                out.error(f"event {number} attribute {index}", "attribute nested too deeply to read")
    return out.result()


def _list(out: Collector, where: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return list(value)
    out.error(where, "Attribute/Object is not a list")
    return []


def _attribute(out: Collector, attr: Any, reason: str, severity: Severity | None) -> None:
    if not isinstance(attr, dict):
        out.error(str(attr), "attribute is not an object")
        return
    kind = attr.get("type")
    if kind not in IP_TYPES or _true(attr.get("deleted")) or not _true(attr.get("to_ids")):
        out.skipped += 1
        return
    value = attr.get("value")
    item = attr.get("uuid") if isinstance(attr.get("uuid"), str) else str(value)
    if not isinstance(value, str):
        out.error(item, "attribute value is not a string")
        return
    if kind.endswith("|port"):
        value = value.rpartition("|")[0] if "|" in value else value
    out.add(value, f"{item}: {attr.get('value')}", reason=reason, severity=severity)
