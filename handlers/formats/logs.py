"""Cloud Logging entries to sightings, through data-driven detectors.

Input is one ``LogEntry`` as JSON (https://cloud.google.com/logging/docs/reference/v2/rest/v2/LogEntry),
as a log sink routes it to Pub/Sub (one entry per message). A ``Detector``
says which entries it cares about and where the address is; it is built
from a plain dict (from TOML/JSON configuration) by ``Detector.from_dict``.

Detector dict (every key; only ``name`` and ``address_field`` are required)::

    name          = "cloud-armor-waf"     # [a-z0-9][a-z0-9_-]{0,62}
    description   = "..."                 # free text
    enabled       = true                  # disabled detectors never match
    address_field = "httpRequest.remoteIp"            # dotted path, or
    address_field = { by = "jsonPayload.direction",   # pick the path by the
                      map = { "client-to-server" = "jsonPayload.source_ip_address" } }
    ttl           = "6h"                  # or seconds; optional
    severity      = "high"                # low|medium|high|critical, default medium
    action        = "deny(403)"           # Cloud Armor action for the rule
    reason        = "waf {jsonPayload.enforcedSecurityPolicy.name}"  # template
    threshold     = { hits = 5, window = "5m" }        # optional, counted elsewhere
    [match]                               # every given condition must hold
    resource_type   = ["http_load_balancer"]           # str or list
    log_name_suffix = ["/requests"]                    # str or list
    log_name_regex  = "..."                            # re.search on logName
    status          = [403, 404]                       # httpRequest.status
    url_paths       = ["/api/kernels", "re:^/nodes\\?view=", "@ml_probe_paths"]
    fields          = [ { path = "jsonPayload.x", equals = "DENY" },
                        { path = "...", in = ["A", "B"] },
                        { path = "...", regex = "..." },
                        { path = "...", exists = true },
                        { path = "...", gte = "MEDIUM", scale = ["LOW", "MEDIUM"] },
                        { path = "...", equals = "DENY", negate = true } ]

``url_paths`` entries are path prefixes, ``re:<regex>`` (``re.search``), or
``@<list>`` naming a signature list passed to ``from_dict`` (one entry per
line, ``#`` comments; see ``config/ml_probe_paths.txt``). They are matched against
the percent-decoded path of ``httpRequest.requestUrl``, followed by
``?query`` when there is one. ``gte`` compares numbers; with ``scale`` it
compares positions in that list (case-insensitive); a Cloud Logging
severity name (``WARNING``...) without ``scale`` counts as its number.
``exists`` means present, not null and not empty. ``negate`` inverts one
condition (a missing field then matches). Reason templates replace
``{dotted.path}`` with the entry's value and ``{url_path}`` with the
request path (each clipped to 100 characters).

``evaluate`` raises ``FormatError`` for a malformed entry (not an object,
no ``resource.type`` or ``logName``); an empty answer means no detector
matched. An address field that is a list gives one sighting per element.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from responder.model import ItemError, Severity, Sighting

from ._common import address_or_error, clip, get_path, load_json, parse_duration
from .errors import FormatError

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ACTION_RE = re.compile(r"[a-z_]+(\(\d{3}\))?")
_TEMPLATE_RE = re.compile(r"\{([A-Za-z0-9_.@-]+)\}")
_LOG_SEVERITY = {
    "DEFAULT": 0, "DEBUG": 100, "INFO": 200, "NOTICE": 300, "WARNING": 400,
    "ERROR": 500, "CRITICAL": 600, "ALERT": 700, "EMERGENCY": 800,
}
_TOP_KEYS = {"name", "description", "enabled", "address_field", "ttl", "severity",
             "action", "reason", "threshold", "match"}
_MATCH_KEYS = {"resource_type", "log_name_suffix", "log_name_regex", "status",
               "url_paths", "fields"}
_TESTS = ("equals", "in", "regex", "exists", "gte")


class DetectorError(ValueError):
    """A detector definition is invalid; the message names the field."""


@dataclass(frozen=True)
class Threshold:
    """Fire only after ``hits`` matches within ``window`` (counted elsewhere)."""

    hits: int
    window: timedelta


@dataclass(frozen=True)
class FieldCondition:
    path: str
    test: str  # one of _TESTS
    value: Any  # str/int for equals, tuple for in, Pattern for regex, bool, gte number/name
    scale: tuple[str, ...] = ()
    negate: bool = False

    def holds(self, entry: Mapping[str, Any]) -> bool:
        return self._test(get_path(entry, self.path)) != self.negate

    def _test(self, got: Any) -> bool:
        if self.test == "exists":
            present = got is not None and got != "" and got != [] and got != {}
            return present == self.value
        if got is None:
            return False
        if self.test == "equals":
            return _same(got, self.value)
        if self.test == "in":
            return any(_same(got, v) for v in self.value)
        if self.test == "regex":
            return isinstance(got, str) and self.value.search(got) is not None
        rank = _rank(got, self.scale)
        return rank is not None and rank >= _rank(self.value, self.scale)  # type: ignore[operator]


def _same(got: Any, want: Any) -> bool:
    if got == want and type(got) is not bool and type(want) is not bool:
        return True
    if isinstance(got, bool) or isinstance(want, bool):
        return got is want
    if isinstance(got, (str, int, float)) and isinstance(want, (str, int, float)):
        return str(got) == str(want)
    return False


def _rank(value: Any, scale: tuple[str, ...]) -> float | None:
    if scale:
        text = str(value).strip().upper()
        return float(scale.index(text)) if text in scale else None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        if value.strip().upper() in _LOG_SEVERITY:
            return float(_LOG_SEVERITY[value.strip().upper()])
        try:
            return float(value)
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class Detector:
    """One data-driven detection rule (see the module docstring)."""

    name: str
    address_field: str = ""
    address_by: str = ""
    address_map: tuple[tuple[str, str], ...] = ()
    description: str = ""
    enabled: bool = True
    resource_types: tuple[str, ...] = ()
    log_name_suffixes: tuple[str, ...] = ()
    log_name_regex: re.Pattern[str] | None = None
    status: tuple[int, ...] = ()
    url_prefixes: tuple[str, ...] = ()
    url_regexes: tuple[re.Pattern[str], ...] = ()
    fields: tuple[FieldCondition, ...] = ()
    ttl: timedelta | None = None
    severity: Severity = Severity.MEDIUM
    action: str = "deny(403)"
    reason: str = ""
    threshold: Threshold | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any],
                  named_lists: Mapping[str, Sequence[str]] | None = None) -> Detector:
        """Build and validate a detector; DetectorError names the bad field."""
        if not isinstance(d, Mapping):
            raise DetectorError("detector: must be a table/object")
        name = d.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise DetectorError(
                f"detector name: {name!r} is not a name ([a-z0-9][a-z0-9_-], up to 63)")
        where = f"detector {name!r}"

        def fail(field: str, message: str) -> DetectorError:
            return DetectorError(f"{where}: {field}: {message}")

        unknown = sorted(set(d) - _TOP_KEYS)
        if unknown:
            raise fail(unknown[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
        kw: dict[str, Any] = {"name": name}
        for key in ("description", "reason", "action"):
            if key in d:
                if not isinstance(d[key], str):
                    raise fail(key, "must be a string")
                kw[key] = d[key]
        if "action" in kw and not _ACTION_RE.fullmatch(kw["action"]):
            raise fail("action", f"{kw['action']!r} is not a Cloud Armor action like deny(403)")
        if "enabled" in d:
            if not isinstance(d["enabled"], bool):
                raise fail("enabled", "must be true or false")
            kw["enabled"] = d["enabled"]
        if "ttl" in d:
            try:
                kw["ttl"] = parse_duration(d["ttl"])
            except ValueError as exc:
                raise fail("ttl", str(exc)) from None
        if "severity" in d:
            try:
                kw["severity"] = Severity.parse(d["severity"])
            except (ValueError, AttributeError) as exc:
                raise fail("severity", str(exc)) from None
        if "threshold" in d:
            kw["threshold"] = _threshold(d["threshold"], fail)
        kw.update(_address(d.get("address_field"), fail))
        kw.update(_match(d.get("match", {}), fail, named_lists or {}))
        return cls(**kw)

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """True when every condition holds for this (well-formed) entry."""
        if self.resource_types and get_path(entry, "resource.type") not in self.resource_types:
            return False
        log_name = entry.get("logName", "")
        if self.log_name_suffixes and not log_name.endswith(self.log_name_suffixes):
            return False
        if self.log_name_regex is not None and not self.log_name_regex.search(log_name):
            return False
        if self.status:
            status = get_path(entry, "httpRequest.status")
            if not any(_same(status, s) for s in self.status):
                return False
        if self.url_prefixes or self.url_regexes:
            target = request_target(entry)
            if target is None or not (
                target.startswith(self.url_prefixes)
                or any(r.search(target) for r in self.url_regexes)
            ):
                return False
        return all(cond.holds(entry) for cond in self.fields)

    def address_path(self, entry: Mapping[str, Any]) -> str | None:
        """The dotted path holding the address for this entry, or None."""
        if self.address_field:
            return self.address_field
        side = get_path(entry, self.address_by)
        return dict(self.address_map).get(side) if isinstance(side, str) else None


def _threshold(value: Any, fail: Any) -> Threshold:
    if not isinstance(value, Mapping) or set(value) - {"hits", "window"}:
        raise fail("threshold", "must be {hits = N, window = \"5m\"}")
    hits = value.get("hits")
    if isinstance(hits, bool) or not isinstance(hits, int) or hits < 1:
        raise fail("threshold.hits", "must be an integer >= 1")
    try:
        window = parse_duration(value.get("window"))
    except ValueError as exc:
        raise fail("threshold.window", str(exc)) from None
    return Threshold(hits, window)


def _path(value: Any, field: str, fail: Any) -> str:
    if not isinstance(value, str) or not value or any(not p for p in value.split(".")):
        raise fail(field, "must be a dotted field path like jsonPayload.remoteIp")
    return value


def _address(value: Any, fail: Any) -> dict[str, Any]:
    if value is None:
        raise fail("address_field", "is required")
    if isinstance(value, str):
        return {"address_field": _path(value, "address_field", fail)}
    if not isinstance(value, Mapping) or set(value) != {"by", "map"}:
        raise fail("address_field", "must be a path or {by = path, map = {value = path}}")
    by = _path(value["by"], "address_field.by", fail)
    mapping = value["map"]
    if not isinstance(mapping, Mapping) or not mapping:
        raise fail("address_field.map", "must be a non-empty table")
    pairs = tuple((str(k), _path(v, f"address_field.map.{k}", fail)) for k, v in mapping.items())
    return {"address_by": by, "address_map": pairs}


def _strings(value: Any, field: str, fail: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fail(field, "must be a string or a list of non-empty strings")
    return tuple(value)


def _regex(value: Any, field: str, fail: Any) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise fail(field, "must be a regular expression string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise fail(field, f"invalid regular expression: {exc}") from None


def _match(match: Any, fail: Any, named_lists: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    if not isinstance(match, Mapping):
        raise fail("match", "must be a table")
    unknown = sorted(set(match) - _MATCH_KEYS)
    if unknown:
        raise fail(f"match.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_MATCH_KEYS))})")
    kw: dict[str, Any] = {}
    if "resource_type" in match:
        kw["resource_types"] = _strings(match["resource_type"], "match.resource_type", fail)
    if "log_name_suffix" in match:
        kw["log_name_suffixes"] = _strings(match["log_name_suffix"], "match.log_name_suffix", fail)
    if "log_name_regex" in match:
        kw["log_name_regex"] = _regex(match["log_name_regex"], "match.log_name_regex", fail)
    if "status" in match:
        status = match["status"]
        status = [status] if isinstance(status, int) else status
        if not isinstance(status, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in status):
            raise fail("match.status", "must be an HTTP status code or a list of them")
        kw["status"] = tuple(status)
    if "url_paths" in match:
        prefixes: list[str] = []
        regexes: list[re.Pattern[str]] = []
        for i, entry in enumerate(_strings(match["url_paths"], "match.url_paths", fail)):
            if entry.startswith("@"):
                if entry[1:] not in named_lists:
                    raise fail(f"match.url_paths[{i}]", f"no signature list named {entry[1:]!r}")
                entries: Sequence[str] = named_lists[entry[1:]]
            else:
                entries = [entry]
            for item in entries:
                if item.startswith("re:"):
                    regexes.append(_regex(item[3:], f"match.url_paths[{i}] {item!r}", fail))
                elif item.startswith("/"):
                    prefixes.append(item)
                else:
                    raise fail(f"match.url_paths[{i}]",
                               f"{item!r} is neither a /path prefix nor re:<regex>")
        kw["url_prefixes"], kw["url_regexes"] = tuple(prefixes), tuple(regexes)
    if "fields" in match:
        fields = match["fields"]
        if not isinstance(fields, list):
            raise fail("match.fields", "must be a list of conditions")
        kw["fields"] = tuple(_condition(c, f"match.fields[{i}]", fail) for i, c in enumerate(fields))
    return kw


def _condition(c: Any, where: str, fail: Any) -> FieldCondition:
    if not isinstance(c, Mapping):
        raise fail(where, "must be a table like {path = ..., equals = ...}")
    unknown = sorted(set(c) - {"path", "negate", "scale", *_TESTS})
    if unknown:
        raise fail(f"{where}.{unknown[0]}", "unknown key")
    path = _path(c.get("path"), f"{where}.path", fail)
    tests = [t for t in _TESTS if t in c]
    if len(tests) != 1:
        raise fail(where, f"needs exactly one of {', '.join(_TESTS)}")
    test = tests[0]
    value = c[test]
    if test == "in":
        if not isinstance(value, list) or not value:
            raise fail(f"{where}.in", "must be a non-empty list")
        value = tuple(value)
    elif test == "regex":
        value = _regex(value, f"{where}.regex", fail)
    elif test == "exists" and not isinstance(value, bool):
        raise fail(f"{where}.exists", "must be true or false")
    elif test == "equals" and not isinstance(value, (str, int, float, bool)):
        raise fail(f"{where}.equals", "must be a string, number or boolean")
    scale: tuple[str, ...] = ()
    if "scale" in c:
        if test != "gte":
            raise fail(f"{where}.scale", "only goes with gte")
        scale = tuple(s.upper() for s in _strings(c["scale"], f"{where}.scale", fail))
    if test == "gte" and _rank(value, scale) is None:
        raise fail(f"{where}.gte", f"{value!r} is not a number" + (" in scale" if scale else ""))
    negate = c.get("negate", False)
    if not isinstance(negate, bool):
        raise fail(f"{where}.negate", "must be true or false")
    return FieldCondition(path, test, value, scale, negate)


# --------------------------------------------------------------------------
# evaluation


class Evaluation(NamedTuple):
    """Matches as (detector name, sighting), and detectors that matched but
    gave no usable address (as ItemErrors whose item is the detector name)."""

    matches: tuple[tuple[str, Sighting], ...]
    errors: tuple[ItemError, ...]


def request_target(entry: Mapping[str, Any]) -> str | None:
    """Percent-decoded path (plus ``?query``) of ``httpRequest.requestUrl``."""
    url = get_path(entry, "httpRequest.requestUrl")
    if not isinstance(url, str) or not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    path = unquote(parts.path) or "/"
    return f"{path}?{unquote(parts.query)}" if parts.query else path


def check_entry(entry: Any) -> Mapping[str, Any]:
    """The entry as a dict, or FormatError when it is not a LogEntry."""
    entry = load_json(entry)
    if not isinstance(entry, dict):
        raise FormatError("log entry is not a JSON object")
    resource = entry.get("resource")
    if not isinstance(resource, dict) or not isinstance(resource.get("type"), str):
        raise FormatError("log entry has no resource.type")
    if not isinstance(entry.get("logName"), str):
        raise FormatError("log entry has no logName")
    return entry


def _render(template: str, entry: Mapping[str, Any]) -> str:
    def field(m: re.Match[str]) -> str:
        key = m.group(1)
        value = request_target(entry) if key == "url_path" else get_path(entry, key)
        if value is None:
            return ""
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        return clip(value if isinstance(value, str) else str(value))[:100]
    return _TEMPLATE_RE.sub(field, template)


def evaluate_detailed(entry: Any, detectors: Sequence[Detector],
                      include_disabled: bool = False) -> Evaluation:
    """Run every (enabled) detector on one LogEntry; see ``Evaluation``."""
    entry = check_entry(entry)
    matches: list[tuple[str, Sighting]] = []
    errors: list[ItemError] = []
    for det in detectors:
        if not (det.enabled or include_disabled) or not det.matches(entry):
            continue
        path = det.address_path(entry)
        raw = get_path(entry, path) if path else None
        if raw is None:
            side = f"{det.address_by}={get_path(entry, det.address_by)!r}" if not path else path
            errors.append(ItemError(det.name, f"matched but no address at {clip(side)}"))
            continue
        reason = _render(det.reason, entry) if det.reason else det.name
        for item in raw if isinstance(raw, list) else [raw]:
            value, problem = address_or_error(item)
            if problem or value is None:
                errors.append(ItemError(det.name, f"{path}: {clip(item)}: {problem}"))
                continue
            matches.append((det.name, Sighting(
                value=value, ttl=det.ttl, severity=det.severity, reason=reason)))
    return Evaluation(tuple(matches), tuple(errors))


def evaluate(entry: Any, detectors: Sequence[Detector]) -> list[tuple[str, Sighting]]:
    """(detector name, sighting) for every enabled detector matching the entry.

    An empty list means no detector matched; FormatError means the entry is
    malformed. Use ``evaluate_detailed`` to also see matches without a
    usable address.
    """
    return list(evaluate_detailed(entry, detectors).matches)


# --------------------------------------------------------------------------
# loading definitions


def parse_signature_list(text: str) -> tuple[str, ...]:
    """Entries of a signature list: one per line, ``#`` comments, blanks."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return tuple(out)


def load_detectors(toml_text: str,
                   named_lists: Mapping[str, Sequence[str]] | None = None) -> tuple[Detector, ...]:
    """Detectors from TOML text with a ``[[detector]]`` array of tables."""
    try:
        doc = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as exc:
        raise DetectorError(f"detectors: invalid TOML: {exc}") from None
    tables = doc.get("detector", [])
    if not isinstance(tables, list):
        raise DetectorError("detectors: 'detector' must be an array of tables ([[detector]])")
    detectors = tuple(Detector.from_dict(t, named_lists) for t in tables)
    names = [d.name for d in detectors]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DetectorError(f"detectors: duplicate name {dupes[0]!r}")
    return detectors


CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def builtin_detectors(toml_path: Path | None = None,
                      lists_dir: Path | None = None) -> tuple[Detector, ...]:
    """The shipped detector definitions (reads files; not a parser):
    ``config/detectors.toml``, with ``@name`` references resolved to
    ``<lists_dir>/<name>.txt`` (default: ``config/``, e.g.
    ``config/ml_probe_paths.txt``).
    """
    toml_path = toml_path or CONFIG_DIR / "detectors.toml"
    lists_dir = lists_dir or CONFIG_DIR
    lists = {p.stem: parse_signature_list(p.read_text("utf-8")) for p in lists_dir.glob("*.txt")}
    return load_detectors(toml_path.read_text("utf-8"), lists)
