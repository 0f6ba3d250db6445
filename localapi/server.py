"""HTTP front end: :class:`LocalCloudArmor` serves :class:`CloudArmorState`
over the compute v1 REST paths with ``http.server.ThreadingHTTPServer``.

Per request: read the body, route it (unknown path 404, known path with
another verb 405), reject query parameters the discovery document does not
declare for the method (400), draw faults, then run the method under the
state lock.  Every request is appended to :attr:`LocalCloudArmor.requests`.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from . import routes
from .errors import ApiError, bad_request
from .faults import FaultConfig, FaultInjector
from .state import CloudArmorState

_HANDLERS = {"globalOperations.get": "get_op", "globalOperations.wait": "wait_op",
             "regionOperations.get": "get_op", "regionOperations.wait": "wait_op"}

_FAULT_ERRORS = {
    "http_429": ApiError(429, "Rate Limit Exceeded", "rateLimitExceeded"),
    "http_500": ApiError(500, "Internal Error", "backendError"),
    "http_503": ApiError(503, "The service is currently unavailable.", "backendError"),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle
    # and delayed ACKs hold every answer about 40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        app = self.server.app
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        entry: dict[str, Any] = {"method": method, "path": url.path, "query": query,
                                 "body": None, "status": None, "time": time.time(),
                                 "fault": None, "route": None}
        try:
            entry["body"] = json.loads(raw) if raw else None
        except ValueError:
            entry["body"] = raw.decode("utf-8", "replace")
        delay = 0.0
        try:
            status, payload, delay = self._serve(app, method, url.path, query, raw, entry)
        except _Reset:
            status, payload = None, None
        entry["status"] = status
        with app._log_lock:  # logged before answering: a client never outruns its record
            app.requests.append(entry)
        if status is None:
            self.close_connection = True
            return
        if delay:
            time.sleep(delay)
        try:
            if isinstance(payload, str):
                self._send(status, payload.encode(), "text/plain")
            else:
                self._send(status, payload)
        except OSError:
            if not delay:
                raise  # after a deliberate delay the client is expected to be gone

    def _serve(self, app: LocalCloudArmor, method: str, path: str, query: dict[str, Any],
               raw: bytes, entry: dict[str, Any]) -> tuple[int, Any, float]:
        if path == "/healthz":
            return 200, "ok", 0.0
        ns = path.startswith("/v1/")  # the Network Security API (address groups)
        if ns:
            route, params, known = routes.match_ns(method, path[len(routes.NS_PREFIX):])
        elif path.startswith(routes.PREFIX):
            route, params, known = routes.match(method, path[len(routes.PREFIX):])
        else:
            return 404, ApiError(404, f"Not Found: {path}", "notFound").body(), 0.0

        def body_of(err: ApiError) -> dict[str, Any]:
            return err.rpc_body() if ns else err.body()

        if route is None:
            if known:
                return 405, body_of(ApiError(405, f"Method {method} not allowed for {path}",
                                             "methodNotAllowed")), 0.0
            return 404, body_of(ApiError(404, f"The requested URL {path} was not found.",
                                         "notFound")), 0.0
        entry["route"] = route.name
        project = params.get("project") or params.get("projectsId")
        if app.project and project != app.project:
            return 404, body_of(ApiError(404, f"The resource 'projects/{project}' was not found",
                                         "notFound")), 0.0
        draw = app.injector.draw(route.name, route.mutating)
        if draw.latency:
            app.injector.record("latency")
            time.sleep(draw.latency)
        if draw.kind in _FAULT_ERRORS:
            app.injector.record(draw.kind)
            entry["fault"] = draw.kind
            return _FAULT_ERRORS[draw.kind].code, body_of(_FAULT_ERRORS[draw.kind]), 0.0
        if draw.kind == "reset":
            app.injector.record("reset")
            entry["fault"] = "reset"
            raise _Reset
        try:
            unknown = set(query) - set(route.query) - routes.SYSTEM_PARAMS
            if unknown:
                raise bad_request(f"Invalid JSON payload received. Unknown name "
                                  f"\"{min(unknown)}\": Cannot bind query parameter.")
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                raise bad_request("Invalid JSON payload received.") from None
            if ns:
                payload, op = app.state.dispatch_ns(route.name, params, query, body,
                                                    op_error=draw.kind == "op_error")
            else:
                payload, op = app.state.dispatch(
                    _HANDLERS.get(route.name, route.method), params, query, body,
                    op_error=draw.kind == "op_error")
        except ApiError as err:
            return err.code, body_of(err), 0.0
        if op is not None and draw.kind in ("op_error", "commit_then_timeout"):
            app.injector.record(draw.kind)
            entry["fault"] = draw.kind
            if draw.kind == "commit_then_timeout":
                if app.injector.config.commit_then_timeout_mode == "reset":
                    raise _Reset
                return 200, payload, app.injector.config.commit_then_timeout_delay
        return 200, payload, 0.0


class _Reset(Exception):
    """Close the connection without answering."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: LocalCloudArmor


class LocalCloudArmor:
    """A local Cloud Armor API server for tests and local runs.

    Arguments: ``op_delay`` (seconds, or a ``(min, max)`` range), ``quota``
    (rules per project), ``quota_mode`` ("operation": a DONE operation with
    QUOTA_EXCEEDED; "http": a synchronous 403), ``duplicate_mode`` ("http": a
    synchronous 400; "operation": a DONE operation with the error),
    ``wait_timeout`` (longest operations.wait, seconds), ``state_file``
    (JSON persistence), ``faults`` (a FaultConfig), ``host``/``port``
    (port 0 picks a free one), ``seed`` (operation delays and ids),
    ``project`` (when set, every other project is 404), ``op_latency``
    (whole seconds every mutation's operation takes; overrides ``op_delay``),
    ``serialize_operations`` (refuse a mutation of a policy that has an
    operation in flight with 400 resourceNotReady) and ``not_ready_mode``
    ("http": that synchronous 400; "operation": a DONE operation with
    RESOURCE_NOT_READY). The last three model behaviour that is possible but
    not documented for security policies; see README.md.

    Address groups (Network Security API, same endpoint): ``tier``
    ("standard", the default, refuses CLOUD_ARMOR groups and rules that
    reference groups; "enterprise"), ``ceval_quota`` (advanced rules per
    project, SECURITY_POLICY_CEVAL_RULES), ``max_items_per_call``,
    ``duplicate_items`` / ``absent_items`` ("error": refused, the default;
    "ignore"), ``max_group_capacity`` (purpose CLOUD_ARMOR),
    ``request_id_ttl`` (seconds) and ``max_policy_attributes`` (None: off).
    """

    def __init__(self, *, op_delay: float | tuple[float, float] = 0.2, quota: int = 200,
                 quota_mode: str = "operation", duplicate_mode: str = "http",
                 wait_timeout: float = 30.0, state_file: str | None = None,
                 faults: FaultConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                 seed: int | None = None, project: str | None = None,
                 op_latency: int | None = None, serialize_operations: bool = False,
                 not_ready_mode: str = "http", tier: str = "standard", ceval_quota: int = 20,
                 max_items_per_call: int = 1000, duplicate_items: str = "error",
                 absent_items: str = "error", max_group_capacity: int = 150_000,
                 request_id_ttl: float = 3600.0,
                 max_policy_attributes: int | None = None) -> None:
        self.project = project
        self.state = CloudArmorState(op_delay=op_delay, quota=quota, quota_mode=quota_mode,
                                     duplicate_mode=duplicate_mode, wait_timeout=wait_timeout,
                                     state_file=state_file, seed=seed, op_latency=op_latency,
                                     serialize_operations=serialize_operations,
                                     not_ready_mode=not_ready_mode, tier=tier,
                                     ceval_quota=ceval_quota,
                                     max_items_per_call=max_items_per_call,
                                     duplicate_items=duplicate_items, absent_items=absent_items,
                                     max_group_capacity=max_group_capacity,
                                     request_id_ttl=request_id_ttl,
                                     max_policy_attributes=max_policy_attributes)
        self.injector = FaultInjector(faults or FaultConfig())
        self.requests: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        self.host, self.port = host, port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> Self:
        self._httpd = _Server((self.host, self.port), _Handler)
        self._httpd.app = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="localapi", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- knobs
    @property
    def faults(self) -> FaultConfig:
        return self.injector.config

    @faults.setter
    def faults(self, config: FaultConfig) -> None:
        self.injector.configure(config)

    @property
    def fault_counts(self) -> dict[str, int]:
        with self.injector._lock:
            return dict(self.injector.counts)

    # -- state helpers for tests
    def policy(self, project: str, name: str, region: str | None = None) -> dict[str, Any] | None:
        """The committed policy (deep copy, rules sorted by priority) or None."""
        return self.state.policy(project, name, region)

    def rule(self, project: str, name: str, priority: int, region: str | None = None) -> dict[str, Any] | None:
        policy = self.policy(project, name, region)
        return next((r for r in policy["rules"] if r["priority"] == priority), None) if policy else None

    def group(self, project: str, name: str, location: str = "global") -> dict[str, Any] | None:
        """The committed address group (deep copy) or None."""
        return self.state.group(project, name, location)

    def settle(self) -> None:
        """Commit every pending operation now."""
        self.state.settle()

    def pending_operations(self) -> int:
        with self.state.lock:
            self.state.tick()
            return len(self.state._pending)
