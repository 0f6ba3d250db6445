"""A small feed server for the local stack: serves the files of one folder
over real HTTP on loopback, as a threat-feed publisher would.

    python scripts/feed_server.py FOLDER [--port 8090]

It speaks HTTP/1.1 with ``ETag`` (a digest of the file), ``Last-Modified``
(the file's mtime) and ``304 Not Modified`` for ``If-None-Match`` /
``If-Modified-Since``, and gzip (``Content-Encoding: gzip`` when the client
accepts it; ``.gz`` files are served as they are). Test modes, chosen per
request with the query string (or per path: ``FeedServer.modes``), reproduce what goes wrong with real feeds:

====================  =====================================================
``?status=N``         answer N (a short text body)
``?fail=N``           the first N requests to this url answer 503, then serve
``?truncate=1``       announce the whole length, send half, close
``?slow=S``           send the body in 4 parts, S seconds apart
``?html=1``           a login page (text/html); ``html=plain``: the same as text/plain
``?oversize=N``       a list padded with comment lines to N bytes
``?gzip=0``           never gzip; ``?validators=0``: no ETag / Last-Modified
====================  =====================================================

Standard library only; imports nothing of the responder. Every request is
appended to ``FeedServer.requests`` (method, path, query, the conditional
headers, status).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import threading
import time
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOGIN_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n"
    b"<body><form method=post action=/login><input name=user><input name=password type=password>"
    b"<button>Sign in</button></form></body></html>\n"
)


class FeedServer:
    def __init__(self, folder: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.folder = Path(folder).resolve()
        self.requests: list[dict[str, Any]] = []
        self.failures: dict[str, int] = {}
        # Test modes per path ("/drop.txt" -> {"status": "503"}), as if given in the query.
        self.modes: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.app = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.endpoint}/{path.lstrip('/')}"

    def start(self) -> FeedServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="feed-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == "/" + path.lstrip("/")]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "feed-server/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        app: FeedServer = self.server.app  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        q = {**app.modes.get(url.path, {}), **{k: v[-1] for k, v in parse_qs(url.query).items()}}
        entry = {"method": self.command, "path": url.path, "query": q, "time": time.time(),
                 "if_none_match": self.headers.get("If-None-Match"),
                 "if_modified_since": self.headers.get("If-Modified-Since"),
                 "headers": dict(self.headers.items()), "status": None}
        self._app, self._entry = app, entry
        self._answer(app, url.path, q, entry, head)

    def _start(self, status: int) -> None:
        """Logs the request, then starts the answer: a client never outruns its record."""
        self._entry["status"] = status
        with self._app.lock:
            self._app.requests.append(self._entry)
        self.send_response(status)

    def _text(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8", head: bool = False) -> int:
        self._start(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.close_connection = True
        return status

    def _answer(self, app: FeedServer, path: str, q: dict[str, str], entry: dict[str, Any], head: bool) -> int:
        if "status" in q:
            return self._text(int(q["status"]), f"status {q['status']}\n".encode(), head=head)
        if "fail" in q:
            key = self.path
            with app.lock:
                seen = app.failures.get(key, 0)
                app.failures[key] = seen + 1
            if seen < int(q["fail"]):
                return self._text(503, b"temporarily unavailable\n", head=head)
        if q.get("html") == "1":
            return self._text(200, LOGIN_PAGE, "text/html; charset=utf-8", head=head)
        if q.get("html") == "plain":
            return self._text(200, LOGIN_PAGE, head=head)
        file = (app.folder / path.lstrip("/")).resolve()
        if app.folder not in file.parents or not file.is_file():
            return self._text(404, b"not found\n", head=head)
        body = file.read_bytes()
        if "oversize" in q:
            pad = b"# padding line to make the list larger than the pull's max_bytes\n"
            body += pad * (max(0, int(q["oversize"]) - len(body)) // len(pad) + 1)
        mtime = file.stat().st_mtime
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        modified = format_datetime(_utc(mtime), usegmt=True)
        validators = q.get("validators") != "0"
        streaming_fault = "truncate" in q or "slow" in q  # always send the body these modes spoil
        if validators and not streaming_fault and self._not_modified(etag, int(mtime)):
            self._start(304)
            self.send_header("ETag", etag)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            return 304
        encoding = ""
        if (not file.name.endswith(".gz") and q.get("gzip") != "0"
                and "gzip" in (self.headers.get("Accept-Encoding") or "")):
            body = gzip.compress(body, mtime=0)
            encoding = "gzip"
        self._start(200)
        self.send_header("Content-Type", "application/gzip" if file.name.endswith(".gz") else "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        if validators:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if head:
            return 200
        if q.get("truncate") == "1":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            return 200
        if "slow" in q:
            step = -(-len(body) // 4)
            for i in range(0, len(body), step):
                self.wfile.write(body[i:i + step])
                self.wfile.flush()
                time.sleep(float(q["slow"]))
            return 200
        self.wfile.write(body)
        return 200

    def _not_modified(self, etag: str, mtime: int) -> bool:
        match = self.headers.get("If-None-Match")
        if match is not None:
            tags = [t.strip().removeprefix("W/") for t in match.split(",")]
            return etag in tags or "*" in tags
        since = self.headers.get("If-Modified-Since")
        if since:
            try:
                return mtime <= int(parsedate_to_datetime(since).timestamp())
            except (TypeError, ValueError):
                return False
        return False


def _utc(seconds: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(seconds), tz=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    server = FeedServer(args.folder, args.host, args.port)
    print(f"serving {server.folder} on {server.endpoint}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
