"""Scheduled feed pulls: ``{"action": "pull", "feed": "NAME"}`` on the
threat-feed topic (Cloud Scheduler publishes it, one job per feed with a
``url``; deploy.sh creates them).

The url, the headers and every limit come from ``[feeds.NAME]``, never from
the message: a pull message holds exactly ``action`` and ``feed``, no
attributes, and names a configured feed with a url; anything else is
refused (no server-side request forgery through the topic). Redirects are
followed at most three times and only to https (plain http only between
loopback addresses, for the local feed server), and the configured headers
go only to the configured host.

The downloaded list goes through the same path as a published one
(``threat_feed.ingest``: parsers, guards, snapshot rules, max_drop_share),
with the pull message's publish time as the base of every TTL, so a
redelivered pull computes the same expiries.

**Where the validators live.** One policy label per pulled feed,
``car-feed-<name>``, written with ``setLabels`` and the ``labelFingerprint``
just read (compare-and-set; a 412 means someone else wrote: read again,
twice, then give up, since the label is only an optimisation). Its value
(at most 63 of ``[a-z0-9_-]``) packs::

    <digest>-<applied>-<last-modified>-<etag>
    12 hex of the SHA-256 of the last applied body
                the publish time of the pull that applied it (epoch minutes, base 36)
                          the server's Last-Modified (epoch seconds, base 36), or empty
                                          the ETag: "h<hex>" / "w<hex>" for a strong / weak
                                          lowercase-hex ETag, "b<base32>" otherwise; empty
                                          when it does not fit (then If-Modified-Since and
                                          the digest do the work)

Each instance also keeps what it last saw in memory (``Runtime.feed_memory``,
with the full ETag), so a warm instance's conditional GET needs no policy
read: **a 304 costs 0 policy reads**. A 200 is checked against the label
(one read): **a body whose digest equals the last applied one costs 0
mutations**. So that an unchanged feed's entries never lapse, a pull made
once half the feed's TTL has passed since the last apply is unconditional
and applies the body again (the new publish time extends the entries).

**Bad downloads never cost a block**: each ends with one record and no
change to the band (README, "Feed pulls", has the table):

* acknowledged (``rejected``; the next scheduled pull tries again): a 4xx
  other than 408/429, a body over ``max_bytes``, an HTML page where a list
  was expected, a list that parses to nothing, a snapshot that would withdraw
  more than ``max_drop_share``, a header whose environment variable is unset;
* redelivered (``failed``, then raised so Pub/Sub retries with backoff and
  finally dead-letters): 5xx, 408, 429, connection errors and timeouts after
  three tries with jittered backoff, and a body cut mid-stream.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import re
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

from config.settings import LOOPBACK_HOSTS, FeedSettings
from handlers.envelope import Message
from handlers.runtime import Runtime
from responder.errors import BadEvent, FingerprintMismatch, ResponderError, TransientError
from responder.service import Outcome

log = logging.getLogger(__name__)

LABEL_PREFIX = "car-feed-"
LABEL_MAX = 63
ATTEMPTS = 3
BACKOFF = 0.5  # seconds; doubled per try, full jitter in [d/2, d]
MAX_REDIRECTS = 3
CHUNK = 64 * 1024
USER_AGENT = "cloud-armor-responder (feed pull)"
_HTML = (b"<!doctype", b"<html", b"<head", b"<body", b"<title")
_LOWER_HEX = re.compile(r"[0-9a-f]+")

Ingest = Callable[[Message, Runtime], Outcome]


class PullRefused(BadEvent):
    """A download that a retry would not fix: recorded, acknowledged."""


class PullFailed(TransientError):
    """A download that may work later: recorded, raised (Pub/Sub redelivers)."""


# ---------------------------------------------------------------- validators


@dataclass(frozen=True)
class Validators:
    """What the last applied download of a feed left behind."""

    digest: str = ""
    applied: datetime | None = None
    last_modified: datetime | None = None
    etag: str = ""


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _etag_code(etag: str) -> str:
    weak = etag.startswith("W/")
    inner = etag[2:] if weak else etag
    if len(inner) >= 2 and inner[0] == inner[-1] == '"' and _LOWER_HEX.fullmatch(inner[1:-1]):
        return ("w" if weak else "h") + inner[1:-1]
    return "b" + base64.b32encode(etag.encode()).decode().rstrip("=").lower()


def _etag_of(code: str) -> str:
    if not code:
        return ""
    kind, body = code[0], code[1:]
    if kind == "h":
        return f'"{body}"'
    if kind == "w":
        return f'W/"{body}"'
    if kind == "b":
        padded = body.upper() + "=" * (-len(body) % 8)
        return base64.b32decode(padded).decode()
    raise ValueError(code)


def encode(v: Validators) -> str:
    """The label value (at most 63 of [a-z0-9_-]); the ETag is left out
    when it does not fit."""
    applied = _b36(int(v.applied.timestamp()) // 60) if v.applied else ""
    modified = _b36(int(v.last_modified.timestamp())) if v.last_modified else ""
    head = f"{v.digest}-{applied}-{modified}-"
    etag = _etag_code(v.etag) if v.etag else ""
    return head + etag if len(head) + len(etag) <= LABEL_MAX else head


def decode(text: str) -> Validators | None:
    parts = text.split("-")
    if len(parts) != 4:
        return None
    try:
        return Validators(
            digest=parts[0],
            applied=datetime.fromtimestamp(int(parts[1], 36) * 60, tz=UTC) if parts[1] else None,
            last_modified=datetime.fromtimestamp(int(parts[2], 36), tz=UTC) if parts[2] else None,
            etag=_etag_of(parts[3]),
        )
    except (ValueError, UnicodeDecodeError, OverflowError):
        return None


def label_key(feed: str) -> str:
    return LABEL_PREFIX + feed


# ------------------------------------------------------------------ command


def command(message: Message, rt: Runtime) -> FeedSettings:
    """The configured feed a pull message names; BadEvent for anything else."""
    if message.attributes:
        raise BadEvent(f"feed pull: a pull message carries no attributes, got {sorted(message.attributes)}")
    doc = message.json()
    if not isinstance(doc, dict):
        raise BadEvent("feed pull: expected {\"action\": \"pull\", \"feed\": NAME}")
    extra = sorted(set(doc) - {"action", "feed"})
    if extra:
        raise BadEvent(f"feed pull: unknown field {extra[0]!r} (a pull names only its feed; the url comes from the configuration)")
    if doc.get("action") != "pull":
        raise BadEvent(f"feed pull: unknown action {doc.get('action')!r} (only 'pull')")
    name = doc.get("feed")
    if not isinstance(name, str) or not name:
        raise BadEvent("feed pull: 'feed' must name a configured feed")
    feed = rt.settings.feeds.get(name)
    if feed is None:
        raise BadEvent(f"feed pull: no feed {name[:40]!r} is configured ([feeds.NAME] with a url)")
    if not feed.url:
        raise BadEvent(f"feed pull: feed {name!r} has no url in its configuration")
    return feed


# ----------------------------------------------------------------- download


@dataclass(frozen=True)
class Download:
    status: int  # 200 or 304
    body: bytes = b""
    etag: str = ""
    last_modified: datetime | None = None
    content_type: str = ""


def _http_date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _headers(feed: FeedSettings, environ: Mapping[str, str], known: Validators | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip"}
    for header, var in feed.headers.items():
        value = environ.get(var)
        if not value:
            raise PullRefused(
                f"feed {feed.name}: header {header} needs the environment variable {var}, which is not set "
                f"(deploy.sh maps it from Secret Manager: [deploy.secrets] {var})"
            )
        headers[header] = value
    if known is not None:
        if known.etag:
            headers["If-None-Match"] = known.etag
        if known.last_modified:
            headers["If-Modified-Since"] = format_datetime(known.last_modified, usegmt=True)
    return headers


def _redirect_allowed(origin: str, target: str) -> bool:
    o, t = urlsplit(origin), urlsplit(target)
    if t.scheme == "https":
        return True
    return t.scheme == "http" and o.scheme == "http" and (t.hostname or "") in {h.strip("[]") for h in LOOPBACK_HOSTS}


def download(feed: FeedSettings, environ: Mapping[str, str], known: Validators | None,
             sleep: Callable[[float], None] = time.sleep) -> Download:
    """One conditional GET of the feed's url, retried on 5xx, 408, 429,
    connection errors, timeouts and cut bodies (``ATTEMPTS`` tries, jittered
    backoff). Raises PullRefused or PullFailed."""
    import requests

    headers = _headers(feed, environ, known)
    error = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            delay = BACKOFF * 2 ** (attempt - 1)
            sleep(random.uniform(delay / 2, delay))
        try:
            return _get(requests, feed, headers)
        except _Retry as exc:
            error = str(exc)
            log.info("feed %s: attempt %d failed: %s", feed.name, attempt + 1, error)
    raise PullFailed(f"feed {feed.name}: download failed after {ATTEMPTS} tries: {error}")


class _Retry(Exception):
    pass


def _get(requests: Any, feed: FeedSettings, headers: dict[str, str]) -> Download:
    timeout = (feed.connect_timeout.total_seconds(), feed.timeout.total_seconds())
    deadline = time.monotonic() + feed.timeout.total_seconds()
    url = feed.url
    host = urlsplit(url).netloc
    with requests.Session() as session:
        session.trust_env = False  # no proxies or .netrc credentials from the environment
        for _ in range(MAX_REDIRECTS + 1):
            sent = headers if urlsplit(url).netloc == host else {k: v for k, v in headers.items() if k not in feed.headers}
            try:
                resp = session.get(url, headers=sent, timeout=timeout, stream=True, allow_redirects=False, verify=True)
            except requests.exceptions.SSLError as exc:
                raise PullRefused(f"feed {feed.name}: TLS verification failed: {exc}") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                raise _Retry(f"{type(exc).__name__}: {exc}") from None
            with resp:
                if resp.is_redirect:
                    target = urljoin(url, resp.headers.get("Location", ""))
                    if not _redirect_allowed(url, target):
                        raise PullRefused(f"feed {feed.name}: redirect to {target[:200]!r} refused (https only)")
                    url = target
                    continue
                return _read(requests, feed, resp, deadline)
    raise PullRefused(f"feed {feed.name}: more than {MAX_REDIRECTS} redirects")


def _read(requests: Any, feed: FeedSettings, resp: Any, deadline: float) -> Download:
    status = int(resp.status_code)
    if status in (408, 429) or status >= 500:
        raise _Retry(f"HTTP {status}")
    if status == 304:
        return Download(304)
    if status != 200:
        raise PullRefused(f"feed {feed.name}: HTTP {status} {resp.reason or ''}".rstrip())
    length = resp.headers.get("Content-Length", "")
    encoded = bool(resp.headers.get("Content-Encoding", "").strip() not in ("", "identity"))
    if length.isdigit() and not encoded and int(length) > feed.max_bytes:
        raise PullRefused(f"feed {feed.name}: the body is {int(length)} bytes, over max_bytes ({feed.max_bytes})")
    parts: list[bytes] = []
    size = 0
    try:
        for chunk in resp.iter_content(CHUNK):  # decoded: the cap bounds what gzip expands to
            size += len(chunk)
            if size > feed.max_bytes:
                raise PullRefused(f"feed {feed.name}: the body is over max_bytes ({feed.max_bytes})")
            if time.monotonic() > deadline:
                raise _Retry(f"the download took longer than timeout ({feed.timeout})")
            parts.append(chunk)
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
            requests.exceptions.ContentDecodingError) as exc:
        raise _Retry(f"the body was cut mid-stream: {type(exc).__name__}") from None
    except requests.exceptions.Timeout:
        raise _Retry(f"no data for {feed.timeout} (read timeout)") from None
    body = b"".join(parts)
    if length.isdigit() and not encoded and len(body) < int(length):
        raise _Retry(f"the body was cut mid-stream ({len(body)} of {length} bytes)")
    return Download(200, body, resp.headers.get("ETag", ""), _http_date(resp.headers.get("Last-Modified")),
                    resp.headers.get("Content-Type", ""))


def unpack(feed: FeedSettings, got: Download) -> bytes:
    """The list in the body: a gzip file (a ``.gz`` url) inflated within
    the cap; an HTML page refused."""
    body = got.body
    if body[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, feed.max_bytes + 1)
        except zlib.error as exc:
            raise PullRefused(f"feed {feed.name}: not a readable gzip file: {exc}") from None
        if len(body) > feed.max_bytes:
            raise PullRefused(f"feed {feed.name}: the unpacked list is over max_bytes ({feed.max_bytes})")
        if not inflater.eof:
            raise PullFailed(f"feed {feed.name}: the gzip file ends early (cut mid-stream)")
    head = body[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if got.content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml") or head.startswith(_HTML):
        raise PullRefused(
            f"feed {feed.name}: the server sent an HTML page, not a list (a login, challenge or error page?)"
        )
    return body


# ------------------------------------------------------------------- handler


def _ttl(feed: FeedSettings, rt: Runtime) -> timedelta:
    source = rt.settings.source("feed")
    return min(feed.ttl or source.default_ttl, source.max_ttl)


def _due(known: Validators, now: datetime, ttl: timedelta) -> bool:
    """Whether the entries need the body applied again so they do not lapse."""
    return known.applied is None or now >= known.applied + ttl / 2


def handle(message: Message, rt: Runtime, ingest: Ingest) -> Outcome:
    feed = command(message, rt)
    key = label_key(feed.name)
    now = message.publish_time
    ttl = _ttl(feed, rt)
    memory = rt.feed_memory.get(feed.name)
    snap = None
    if memory is None:  # a cold instance learns the validators from the label
        snap = rt.api.get_policy()
        memory = decode(snap.labels.get(key, "")) or Validators()
        rt.feed_memory[feed.name] = memory
    conditional = not _due(memory, now, ttl) and bool(memory.digest)
    try:
        got = download(feed, rt.environ, memory if conditional else None)
        if got.status == 304:
            rt.audit.record("unchanged", f"feed {feed.name}: not modified since the last pull (304)",
                            message_id=message.message_id, source=feed.name)
            return Outcome()
        body = unpack(feed, got)
    except PullFailed as exc:
        rt.audit.record("failed", f"{exc}; raised so that Pub/Sub redelivers the pull", level=logging.ERROR,
                        message_id=message.message_id, source=feed.name, error=str(exc))
        raise
    digest = hashlib.sha256(body).hexdigest()[:12]
    if snap is None:
        snap = rt.api.get_policy()
    stored = decode(snap.labels.get(key, "")) or Validators()
    new = Validators(digest, now, got.last_modified, got.etag)
    if digest == stored.digest and not _due(stored, now, ttl):
        kept = replace(stored, last_modified=got.last_modified, etag=got.etag)
        rt.feed_memory[feed.name] = kept
        if encode(kept) != snap.labels.get(key):
            _write_label(rt, key, kept, snap)
        rt.audit.record("unchanged", f"feed {feed.name}: the list is the one applied at {stored.applied:%Y-%m-%d %H:%M}Z",
                        message_id=message.message_id, source=feed.name)
        return Outcome()
    attributes = {"feed": feed.name, **({"format": feed.format} if feed.format != "auto" else {})}
    outcome = ingest(Message(body, message.message_id, message.publish_time, attributes), rt)
    if not (rt.settings.band.validate_only or rt.settings.source("feed").validate_only):
        rt.feed_memory[feed.name] = new
        _write_label(rt, key, new, snap)
    return outcome


def _write_label(rt: Runtime, key: str, value: Validators, snap: Any) -> None:
    """setLabels with the labelFingerprint read (compare-and-set); on a 412
    reads again, twice, then leaves it: the label is only an optimisation."""
    for attempt in range(3):
        if attempt:
            snap = rt.api.get_policy()
        try:
            rt.api.set_labels({**snap.labels, key: encode(value)}, snap.label_fingerprint)
            return
        except FingerprintMismatch:
            continue
        except ResponderError as exc:  # e.g. no setLabels permission: pulls still work, at a read per pull
            log.warning("feed pull: could not record %s: %s", key, exc)
            return
    log.warning("feed pull: could not record %s (labels changed under us three times); the next pull reads the body again", key)


def is_pull(data: bytes) -> bool:
    """Whether a threat-feed message is a command (a small JSON object with
    an ``action`` and no ``indicators``) rather than a list."""
    if len(data) > 4096 or data.lstrip()[:1] != b"{":
        return False
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and "action" in doc and "indicators" not in doc

