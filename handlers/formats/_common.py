"""Small helpers shared by the parsers: text decoding, JSON loading, address
shape checks, port stripping, durations and RFC 3339 times.

Nothing here validates an address properly (that is the handler's job); the
shape check only rejects text that is obviously not an address or range.
"""

from __future__ import annotations

import contextvars
import io
import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from responder.model import ItemError, ParseResult, Sighting

from .errors import FormatError

_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}"
_IPV6 = r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?::" + _IPV4 + r")?"
_ADDRESS_RE = re.compile(rf"(?:{_IPV4}(?:/\d{{1,2}})?|{_IPV6}(?:/\d{{1,3}})?)")
_V4_PORT_RE = re.compile(rf"({_IPV4}):\d{{1,5}}")
_V6_BRACKET_RE = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?")
_DURATION_RE = re.compile(r"(\d+)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Longest item text kept in an ItemError, so one huge line cannot bloat it.
MAX_ITEM = 200


def clip(text: object) -> str:
    """A short printable form of a bad item for an ItemError."""
    s = text if isinstance(text, str) else repr(text)
    return s if len(s) <= MAX_ITEM else s[: MAX_ITEM - 3] + "..."


def decode_text(payload: bytes | bytearray | memoryview | str) -> str:
    """UTF-8 text of a payload (BOM dropped); FormatError when not text."""
    if isinstance(payload, str):
        return payload.lstrip("\ufeff")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise FormatError(f"payload must be bytes or str, not {type(payload).__name__}")
    try:
        return bytes(payload).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(f"payload is not UTF-8 text (byte {exc.start})") from None


def load_json(payload: bytes | str | Any) -> Any:
    """Decoded JSON; accepts bytes, str, or an already-decoded value."""
    if not isinstance(payload, (bytes, bytearray, memoryview, str)):
        return payload
    text = decode_text(payload)
    try:
        return json.loads(text)
    except RecursionError:
        raise FormatError("payload is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise FormatError(f"payload is not valid JSON: {exc}") from None


def strip_port(text: str) -> str:
    """Drop a port the source attached: ``1.2.3.4:443`` and
    ``[2001:db8::1]:443`` (brackets dropped too). Anything else is returned
    unchanged (a bare IPv6 address cannot carry a port unambiguously)."""
    text = text.strip()
    m = _V4_PORT_RE.fullmatch(text)
    if m:
        return m.group(1)
    m = _V6_BRACKET_RE.fullmatch(text)
    if m:
        return m.group(1)
    return text


def looks_like_address(text: str) -> bool:
    """True when text has the shape of an IPv4/IPv6 address or CIDR range.

    A shape check only: ``999.1.1.1`` passes and is refused later by the
    handler's real validation; ``example.com`` or ``x.x.x.x`` do not pass.
    """
    return bool(text) and len(text) <= 64 and _ADDRESS_RE.fullmatch(text) is not None


def address_or_error(raw: object) -> tuple[str | None, str | None]:
    """(value, None) for an address-shaped string (port stripped), else
    (None, error message)."""
    if not isinstance(raw, str):
        return None, f"address is {type(raw).__name__}, not a string"
    value = strip_port(raw)
    if not looks_like_address(value):
        return None, "not an IP address or CIDR range"
    return value, None


def parse_duration(value: object) -> timedelta:
    """``3600`` (seconds, int) or ``"<int>[smhd]"`` (no unit = seconds).

    Raises ValueError with a short message otherwise (also for <= 0).
    """
    if isinstance(value, bool):
        raise ValueError("duration must be a number of seconds or '<int>[smhd]'")  # noqa: TRY004 (data error)
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float) and value.is_integer():
        seconds = int(value)
    elif isinstance(value, str):
        m = _DURATION_RE.fullmatch(value.strip())
        if not m or len(m.group(1)) > 12:
            raise ValueError(f"bad duration {clip(value)!r} (want '<int>[smhd]')")
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("duration must be a number of seconds or '<int>[smhd]'")
    if seconds <= 0:
        raise ValueError("duration must be positive")
    if seconds > 100 * 365 * 86400:
        raise ValueError("duration is longer than 100 years")
    return timedelta(seconds=seconds)


def parse_time(value: object, *, naive_utc: bool = False) -> datetime:
    """An RFC 3339 timestamp as an aware UTC datetime.

    A trailing ``Z`` and any number of fraction digits are accepted. Text
    without an offset raises ValueError unless ``naive_utc`` (formats that
    document UTC without saying so, e.g. TorDNSEL).
    """
    if not isinstance(value, str):
        raise ValueError("timestamp must be a string")  # noqa: TRY004 (data error)
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    # Python 3.11 accepts at most 6 fraction digits: trim nanoseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"bad timestamp {clip(value)!r}") from None
    if when.tzinfo is None:
        if not naive_utc:
            raise ValueError(f"timestamp {clip(value)!r} has no timezone")
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def epoch_time(value: object) -> datetime | None:
    """Seconds since the epoch (int/float/numeric string) as UTC, else None."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
        return datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


_MISSING = object()


def get_path(obj: Any, path: str, default: Any = None) -> Any:
    """Value at a dotted path in nested dicts (``a.b.c``); default if absent.

    A path step that is a decimal number also indexes lists (``a.0.b``).
    """
    cur = obj
    for step in path.split("."):
        if isinstance(cur, Mapping):
            cur = cur.get(step, _MISSING)
        elif isinstance(cur, list) and step.isdigit() and int(step) < len(cur):
            cur = cur[int(step)]
        else:
            return default
        if cur is _MISSING:
            return default
    return cur


def iter_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for every line of a text payload."""
    for number, line in enumerate(text.splitlines(), 1):
        yield number, line.strip()


#: The most sightings a parse keeps (``parse_feed(limit=...)``); past it
#: blocks are only counted (note ``over-limit=N``), so a list far longer
#: than the feed may apply costs no memory per line. Revocations are kept.
SIGHTING_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("sighting_limit", default=None)


def lines(text: str) -> Iterator[str]:
    """The lines of ``text`` one at a time (universal newlines), without
    building a list of them: a 10 MB list is 700,000 lines."""
    for line in io.StringIO(text, newline=None):
        yield line.rstrip("\n")


class Collector:
    """Accumulates sightings, errors, skips and notes while parsing."""

    def __init__(self, now: datetime | None):
        self.now = now
        self.sightings: list[Sighting] = []
        self.errors: list[ItemError] = []
        self.skipped = 0
        self.expired = 0
        self.over = 0
        self.limit = SIGHTING_LIMIT.get()
        self.notes: list[str] = []

    def error(self, item: object, message: str) -> None:
        self.errors.append(ItemError(item=clip(item), error=message))

    def add(self, raw: object, item: object, **fields: Any) -> None:
        if self.limit is not None and len(self.sightings) >= self.limit and not fields.get("revoked"):
            self.over += 1
            return
        value, problem = address_or_error(raw)
        if problem or value is None:
            self.error(item, problem or "no address")
            return
        expiry = fields.get("expiry")
        if (expiry is not None and self.now is not None and expiry <= self.now
                and not fields.get("revoked")):
            self.skipped += 1
            self.expired += 1
            return
        self.sightings.append(Sighting(value=value, **fields))

    def result(self) -> ParseResult:
        notes = list(self.notes)
        if self.expired:
            notes.append(f"expired={self.expired}")
        if self.over:
            notes.append(f"over-limit={self.over}")
        return ParseResult(tuple(self.sightings), tuple(self.errors), self.skipped, tuple(notes))
