"""Threat-feed parsers: one payload in, one ``ParseResult`` out.

Formats (the names are the values of the Pub/Sub ``format`` attribute):

``json``
    The project's own format::

        {"feed": "name", "snapshot": false,
         "indicators": [{"range": "203.0.113.0/24", "ttl": "6h" | 3600,
                         "expiry": "2025-01-01T00:00:00Z", "confidence": 80,
                         "reason": "...", "revoked": false}]}

    or a bare list of indicator objects. ``ttl`` is seconds (int) or
    ``<int>[smhd]``; ``expiry`` is RFC 3339 with ``Z`` or an offset.
    Notes: ``feed=<name>``, ``snapshot=true|false``.
``spamhaus``
    Spamhaus DROP / EDROP / DROPv6 text (https://www.spamhaus.org/drop/):
    ``<cidr> ; SBLnnnn`` lines, ``;`` comment lines, a final ``; EOF`` line.
    Also the JSON-lines variant (``drop_v4.json``/``drop_v6.json``): one
    ``{"cidr": ..., "sblid": ..., "rir": ...}`` object per line and a final
    ``{"type": "metadata", ...}`` line. A missing end marker adds the note
    ``truncated``. The reason is the SBL id.
``netset``
    FireHOL ``.netset``/``.ipset`` (https://iplists.firehol.org/): ``#``
    header comments, then one address or CIDR per line.
``plain``
    Any one-address-per-line list (Emerging Threats
    ``compromised-ips.txt``): ``#`` comments, blank lines; text after the
    first whitespace on a line is ignored.
``tor``
    Tor exit lists: bare addresses (``torbulkexitlist``) or the TorDNSEL
    exit-list format (``ExitNode``/``Published``/``LastStatus`` lines,
    ``ExitAddress <addr> YYYY-MM-DD HH:MM:SS``), see
    https://metrics.torproject.org/collector.html#type-tordnsel and the
    TorDNSEL ``exitlist-spec.txt``.
``stix`` / ``misp``
    See ``stix.py`` and ``misp.py``.

Every parse adds the note ``format=<name>``; detection adds
``format-detected``. Sightings whose source expiry is not after ``now``
are skipped and counted (note ``expired=N``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from responder.model import ParseResult

from . import misp
from ._common import (
    SIGHTING_LIMIT,
    Collector,
    decode_text,
    lines,
    load_json,
    parse_duration,
    parse_time,
)
from .errors import FormatError

FEED_FORMATS = ("json", "spamhaus", "netset", "plain", "tor", "stix", "misp")
_ALIASES = {
    "drop": "spamhaus", "edrop": "spamhaus", "dropv6": "spamhaus",
    "firehol": "netset", "ipset": "netset", "text": "plain", "txt": "plain",
    "stix2": "stix", "stix21": "stix",
}

_SBL_LINE = re.compile(r"\S+\s*;\s*SBL\d+", re.IGNORECASE)
_FIREHOL_MARKERS = ("firehol", "ipset", "hash:net", "hash:ip", "netset", "iplists")
_DETECT_WINDOW = 16384


# --------------------------------------------------------------------------
# detection


def detect_feed_format(payload: bytes | str) -> str:
    """The feed format name of a payload, judged from its content.

    JSON (first non-blank character ``{`` or ``[``): ``stix`` when the top
    object (or the first list element) has ``type: bundle``/``indicator``,
    ``spec_version`` or ``pattern``; ``misp`` for ``Event``/``response``
    (or a bare event with ``Attribute``); ``spamhaus`` for JSON lines with
    ``cidr``/``sblid``; otherwise ``json``. Text: ``tor`` if a line starts
    with ``ExitNode``/``ExitAddress``; ``spamhaus`` for ``<cidr> ; SBL``
    lines or ``;`` comments; ``netset`` for ``#`` headers naming FireHOL or
    ipset; otherwise ``plain``. Raises FormatError for non-text payloads and
    for text starting with ``{`` that is neither JSON nor Spamhaus JSON lines.
    """
    text = decode_text(payload)
    head = text.lstrip()
    if head[:1] in ("{", "["):
        try:
            return _json_kind(json.loads(head))
        except (ValueError, RecursionError):
            pass
        first = head.split("\n", 1)[0].strip()
        try:
            obj = json.loads(first)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and ("sblid" in obj or "cidr" in obj):
            return "spamhaus"
        if head[0] == "{":
            raise FormatError("payload starts like JSON but is not valid JSON")
    return _text_kind(head[:_DETECT_WINDOW])


def _json_kind(doc: Any) -> str:
    probe = doc
    if isinstance(doc, list):
        probe = next((x for x in doc if isinstance(x, dict)), {})
    if not isinstance(probe, dict):
        return "json"
    if probe.get("type") in ("bundle", "indicator") or "spec_version" in probe \
            or "pattern" in probe:
        return "stix"
    if "Event" in probe or "response" in probe or "Attribute" in probe:
        return "misp"
    if "sblid" in probe:
        return "spamhaus"
    return "json"


def _text_kind(head: str) -> str:
    lines = [ln.strip() for ln in head.splitlines()[:200]]
    lines = [ln for ln in lines if ln]
    if any(ln.startswith(("ExitNode ", "ExitAddress ")) for ln in lines):
        return "tor"
    if any(ln.startswith(";") or _SBL_LINE.match(ln) for ln in lines):
        return "spamhaus"
    comments = " ".join(ln.lower() for ln in lines if ln.startswith("#"))
    if any(marker in comments for marker in _FIREHOL_MARKERS):
        return "netset"
    return "plain"


# --------------------------------------------------------------------------
# entry point


def parse_feed(payload: bytes | str, fmt: str | None, now: datetime, *, limit: int | None = None) -> ParseResult:
    """Parse a feed payload in format ``fmt`` (detected when None).

    Raises FormatError for an unknown format name or a wholly unreadable
    payload; bad items become ItemErrors. ``limit``: keep at most that many
    sightings; the blocks past it are only counted (note ``over-limit=N``).
    """
    notes: list[str] = []
    if fmt is None or not fmt.strip():
        fmt = detect_feed_format(payload)
        notes.append("format-detected")
    name = fmt.strip().lower()
    name = _ALIASES.get(name, name)
    parser = _PARSERS.get(name)
    if parser is None:
        raise FormatError(f"unknown feed format {fmt!r} (one of {', '.join(FEED_FORMATS)})")
    token = SIGHTING_LIMIT.set(limit)
    try:
        result = parser(payload, now)
    finally:
        SIGHTING_LIMIT.reset(token)
    return ParseResult(
        sightings=result.sightings,
        errors=result.errors,
        skipped=result.skipped,
        notes=(f"format={name}", *notes, *result.notes),
    )


# --------------------------------------------------------------------------
# json (the project's own format)


def parse_json_feed(payload: bytes | str | Any, now: datetime) -> ParseResult:
    doc = load_json(payload)
    out = Collector(now)
    if isinstance(doc, dict):
        if not isinstance(doc.get("indicators"), list):
            raise FormatError("json feed: top-level object has no 'indicators' list")
        feed = doc.get("feed")
        if feed is not None:
            if not isinstance(feed, str):
                raise FormatError("json feed: 'feed' must be a string")
            out.notes.append(f"feed={feed}")
        snapshot = doc.get("snapshot", False)
        if not isinstance(snapshot, bool):
            raise FormatError("json feed: 'snapshot' must be true or false")
        out.notes.append(f"snapshot={'true' if snapshot else 'false'}")
        indicators = doc["indicators"]
    elif isinstance(doc, list):
        indicators = doc
    else:
        raise FormatError("json feed: top level must be an object or a list of indicators")
    for index, ind in enumerate(indicators):
        try:
            _json_indicator(out, index, ind)
        except RecursionError:
            out.error(f"indicators[{index}]", "indicator nested too deeply to read")
    return out.result()


def _json_indicator(out: Collector, index: int, ind: Any) -> None:
    if not isinstance(ind, dict):
        out.error(f"indicators[{index}]", "indicator is not an object")
        return
    item = ind.get("range", f"indicators[{index}]")
    if "range" not in ind:
        out.error(item, "indicator has no 'range'")
        return
    fields: dict[str, Any] = {}
    try:
        if ind.get("ttl") is not None:
            fields["ttl"] = parse_duration(ind["ttl"])
        if ind.get("expiry") is not None:
            fields["expiry"] = parse_time(ind["expiry"])
        conf = ind.get("confidence")
        if conf is not None:
            if isinstance(conf, bool) or not isinstance(conf, int) or not 0 <= conf <= 100:
                raise ValueError("confidence must be an integer 0-100")
            fields["confidence"] = conf
        reason = ind.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError("reason must be a string")  # noqa: TRY004
        fields["reason"] = reason
        revoked = ind.get("revoked", False)
        if not isinstance(revoked, bool):
            raise ValueError("revoked must be true or false")  # noqa: TRY004
        fields["revoked"] = revoked
    except ValueError as exc:
        out.error(item, str(exc))
        return
    out.add(ind["range"], item, **fields)


# --------------------------------------------------------------------------
# line formats


def _first_token(line: str) -> str:
    return line.split(None, 1)[0] if line else ""


def parse_spamhaus(payload: bytes | str, now: datetime) -> ParseResult:
    text = decode_text(payload)
    if text.lstrip().startswith("{"):
        return _spamhaus_jsonl(text, now)
    out = Collector(now)
    ended = False
    for number, raw in enumerate(lines(text), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(";"):
            comment = line[1:].strip()
            if comment.upper() == "EOF":
                ended = True
                break
            if comment.lower().startswith("expires:"):
                _note_expires(out, comment[8:])
            elif comment.lower().startswith("spamhaus"):
                out.notes.append(f"list={comment}")
            continue
        value, _, sbl = line.partition(";")
        out.add(value.strip(), f"line {number}: {line}", reason=sbl.strip())
    if not ended:
        out.notes.append("truncated")
    return out.result()


def _note_expires(out: Collector, text: str) -> None:
    try:
        out.notes.append(f"expires={parsedate_to_datetime(text.strip()).isoformat()}")
    except (TypeError, ValueError, IndexError):
        pass


def _spamhaus_jsonl(text: str, now: datetime) -> ParseResult:
    out = Collector(now)
    metadata = False
    for number, raw in enumerate(lines(text), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            out.error(f"line {number}: {line}", "not a JSON object")
            continue
        if not isinstance(obj, dict):
            out.error(f"line {number}: {line}", "not a JSON object")
            continue
        if obj.get("type") == "metadata":
            metadata = True
            records = obj.get("records")
            if isinstance(records, int):
                out.notes.append(f"records={records}")
            continue
        if "cidr" not in obj:
            out.error(f"line {number}: {line}", "no 'cidr'")
            continue
        sbl = obj.get("sblid")
        out.add(obj["cidr"], f"line {number}: {line}", reason=sbl if isinstance(sbl, str) else "")
    if not metadata:
        out.notes.append("truncated")
    return out.result()


def _parse_lines(payload: bytes | str, now: datetime, reason: str = "") -> ParseResult:
    """One address per line; ``#``/``;``/``//`` comment lines, blank lines;
    ``#`` starts a trailing comment; only the first token counts."""
    out = Collector(now)
    for number, raw in enumerate(lines(decode_text(payload)), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith((";", "//")):
            continue
        out.add(_first_token(line), f"line {number}: {line}", reason=reason)
    return out.result()


def parse_netset(payload: bytes | str, now: datetime) -> ParseResult:
    return _parse_lines(payload, now)


def parse_plain(payload: bytes | str, now: datetime) -> ParseResult:
    return _parse_lines(payload, now)


_TOR_IGNORED = ("ExitNode", "Published", "LastStatus")


def parse_tor(payload: bytes | str, now: datetime) -> ParseResult:
    out = Collector(now)
    for number, raw in enumerate(lines(decode_text(payload)), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword in _TOR_IGNORED:
            continue
        if keyword == "ExitAddress":
            out.add(_first_token(rest), f"line {number}: {line}", reason="tor exit")
        elif " " not in line:
            out.add(line, f"line {number}: {line}", reason="tor exit")
        else:
            out.error(f"line {number}: {line}", "not a TorDNSEL record or an address")
    return out.result()


def parse_stix_feed(payload: bytes | str | Any, now: datetime) -> ParseResult:
    from . import stix  # its pattern grammar (antlr4) is paid only by STIX feeds, not by every cold start

    return stix.parse_stix(load_json(payload), now)


def parse_misp_feed(payload: bytes | str | Any, now: datetime) -> ParseResult:
    return misp.parse_misp(load_json(payload), now)


_PARSERS: dict[str, Callable[[Any, datetime], ParseResult]] = {
    "json": parse_json_feed,
    "spamhaus": parse_spamhaus,
    "netset": parse_netset,
    "plain": parse_plain,
    "tor": parse_tor,
    "stix": parse_stix_feed,
    "misp": parse_misp_feed,
}
