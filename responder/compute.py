"""The compute adapter: one Cloud Armor security policy through ``compute_v1``.

This is the only module of the project that touches ``google.cloud.compute_v1``
and ``google.api_core``; both are imported lazily, inside the methods that make
calls (importing ``compute_v1`` costs about 3 s and 150 MB). Everything the
adapter returns is a domain type of :mod:`responder.policy`; everything it
raises is a :class:`responder.errors.ResponderError`.

How calls are made (see the project's notes on Cloud Armor facts, summarised in README):

* mutations use the ``*_unary`` methods and the returned Operation is waited
  on with our own Global/RegionOperationsClient (same ``client_options`` and
  credentials), never ``ExtendedOperation.result()`` which polls Google;
* every call passes ``retry=None`` (the adapter retries, once, itself) and an
  explicit ``timeout`` (``PolicySettings.request_timeout``);
* ``priority`` always goes inside ``request={...}`` (a missing one means 0);
* a DONE operation's ``error.errors`` is checked and mapped here.

Retries: transient failures are retried with jittered, truncated exponential
backoff (``google.api_core.retry``: ``exponential_sleep_generator`` and
``retry_target``) until ``retry_deadline``. The sleeping itself goes through
the injectable ``sleep`` so tests and benchmarks can observe or skip it.

Refusals while the policy is busy: a 400 with reason ``resourceNotReady``
("The resource '...' is not ready"), or an operation that ends with
``RESOURCE_NOT_READY``, means another operation on the policy is in flight
and nothing was done. It is a plain :class:`TransientError` (never
:class:`OutcomeUnknown`), retried with the same backoff.

Unknown outcomes: a mutation whose answer was lost (read timeout, connection
reset after sending, 5xx) raises :class:`OutcomeUnknown` internally and is
retried:

* addRule re-reads the rule at its priority before adding again: an equal
  rule there means the lost add committed (success); another rule there means
  :class:`PriorityTaken`; nothing there means add again. A later "priority
  taken" answer is re-checked the same way (the lost add may still be
  pending and reserving the priority);
* patchRule is idempotent and retried; after an unknown outcome the rule is
  re-read first, and an equal rule counts as success (the patch committed);
* removeRule is retried; "no rule at priority" after an unknown outcome means
  the lost remove committed (success);
* setLabels is retried with the same fingerprint; a 412 after an unknown
  outcome is re-checked against the labels now on the policy.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import quote

from config.settings import PolicySettings
from responder.errors import (
    FingerprintMismatch,
    OutcomeUnknown,
    OutOfTime,
    PermanentError,
    PermissionDenied,
    PolicyNotFound,
    PriorityTaken,
    QuotaExceeded,
    ResponderError,
    RuleNotFound,
    TierRequired,
    TransientError,
    Unresolvable,
)
from responder.policy import PolicyRule, PolicySnapshot

__all__ = ["Backoff", "CloudArmor", "CALL_KINDS", "map_exception", "map_operation_error", "retrying"]

T = TypeVar("T")

#: The keys of :meth:`CloudArmor.calls` (``insert`` only via ``create_policy``).
CALL_KINDS = ("get", "add", "patch", "remove", "get_rule", "set_labels", "insert", "wait", "retry")

SRC_IPS_V1 = "SRC_IPS_V1"
DEFAULT_ENDPOINT = "https://compute.googleapis.com"
COMPUTE_SCOPES = ("https://www.googleapis.com/auth/compute",)


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff: each sleep is uniform in
    ``[0, min(initial * multiplier**n, maximum)]`` (api_core's algorithm)."""

    initial: float = 0.5
    maximum: float = 8.0
    multiplier: float = 2.0


# --------------------------------------------------------------------------
# Error classification (pure functions). Optional modules (urllib3, protobuf,
# google.auth) are matched by class name through the MRO so that nothing is
# imported for them.

_PRIORITY_TAKEN_MARKERS = (
    "already contains a rule at priority",  # the local API, and the documented shape
    "same priorit",  # Google: "Cannot have rules with the same priorities."
    "already exists a rule",
    "rule already exists",
    "priority is already",
    "priority already",
)
_NO_RULE_MARKER = "does not contain a rule at priority"
# An operation on the resource is in flight; the request was refused and nothing
# was done (HTTP 400 reason resourceNotReady, or an operation error
# RESOURCE_NOT_READY). Seen for backend services; possible for security policies.
_NOT_READY_REASON = "resourcenotready"
_NOT_READY_MARKER = "is not ready"
_TRANSIENT_OP_CODES = frozenset({
    "INTERNAL_ERROR", "BACKEND_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT", "DEADLINE_EXCEEDED",
    "RESOURCE_NOT_READY", "RATE_LIMIT_EXCEEDED", "RESOURCE_OPERATION_RATE_EXCEEDED",
    "OPERATION_CANCELED_BY_USER",  # nothing committed
    "UNAVAILABLE", "ABORTED",
})
_RATE_REASONS = frozenset({"ratelimitexceeded", "userratelimitexceeded"})


def _class_names(exc: BaseException) -> set[str]:
    return {f"{k.__module__}.{k.__qualname__}" for k in type(exc).__mro__}


def _has(exc: BaseException, *names: str) -> bool:
    mro = _class_names(exc)
    return any(n in mro for n in names)


def _reasons(exc: BaseException) -> list[str]:
    out = []
    for err in getattr(exc, "errors", None) or []:
        if isinstance(err, Mapping) and err.get("reason"):
            out.append(str(err["reason"]).lower())
    reason = getattr(exc, "reason", None)
    if reason:
        out.append(str(reason).lower())
    return out


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    return str(msg if msg else exc)


def _classify_400(message: str, reasons: list[str]) -> type[ResponderError]:
    low = message.lower()
    if _NOT_READY_REASON in reasons or _NOT_READY_MARKER in low:
        return TransientError  # refused before anything was done: back off and retry
    if "cloud armor enterprise" in low:
        return TierRequired  # e.g. a rule referencing an address group on Standard
    if _NO_RULE_MARKER in low:
        return RuleNotFound
    if any(m in low for m in _PRIORITY_TAKEN_MARKERS):
        return PriorityTaken
    if "quota" in low and "exceeded" in low:
        return QuotaExceeded
    return PermanentError


def _connection_never_made(exc: BaseException) -> bool:
    """True when a requests ConnectionError failed before anything was sent
    (connection refused, DNS, connect timeout)."""
    return _caused_by(exc, "requests.exceptions.ConnectTimeout",
                      "urllib3.exceptions.NewConnectionError",
                      "urllib3.exceptions.ConnectTimeoutError",
                      "urllib3.exceptions.NameResolutionError")


def _caused_by(exc: BaseException, *names: str) -> bool:
    """True when ``exc`` or an exception it wraps (args, reason, cause,
    context) is one of the classes ``names``."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if _has(e, *names):
            return True
        if isinstance(e, BaseException):
            todo.extend(a for a in e.args if isinstance(a, BaseException))
            reason = getattr(e, "reason", None)
            todo.append(reason if isinstance(reason, BaseException) else None)
            todo.append(e.__cause__)
            todo.append(e.__context__)
    return False


def map_exception(exc: BaseException, *, mutation: bool = False) -> ResponderError:
    """Translate an exception raised by a client call into a ResponderError.

    ``mutation``: the call was a mutation, so an answer lost after the request
    may have reached the server (timeouts, resets, 5xx) becomes
    :class:`OutcomeUnknown`; for reads it is a plain :class:`TransientError`.
    """
    if isinstance(exc, ResponderError):
        return exc
    # Imported here, not at module import: a client call has loaded them already.
    import requests.exceptions as rexc
    from google.api_core import exceptions as gexc

    msg = _message(exc)
    lost = OutcomeUnknown if mutation else TransientError
    if isinstance(exc, gexc.RetryError):
        return lost(f"retries exhausted: {msg}")
    if isinstance(exc, gexc.GoogleAPICallError):
        if isinstance(exc, gexc.BadRequest):
            return _classify_400(msg, _reasons(exc))(msg)
        if isinstance(exc, gexc.NotFound):
            return PolicyNotFound(msg)
        if isinstance(exc, gexc.Forbidden):
            reasons = _reasons(exc)
            if any("quota" in r for r in reasons) or "quota" in msg.lower():
                return QuotaExceeded(msg)
            if any(r in _RATE_REASONS for r in reasons):
                return TransientError(msg)  # 403 rateLimitExceeded: refused, nothing done
            return PermissionDenied(msg)
        if isinstance(exc, gexc.Unauthorized):
            return PermissionDenied(msg)
        if isinstance(exc, gexc.PreconditionFailed):
            return FingerprintMismatch(msg)
        if isinstance(exc, gexc.TooManyRequests):
            return TransientError(msg)  # refused before anything was done
        if isinstance(exc, (gexc.ServerError, gexc.DeadlineExceeded)):
            return lost(msg)  # 500, 502, 503, 504 and deadline: may have been applied
        if isinstance(exc.code, int) and exc.code >= 500:
            return lost(msg)
        return PermanentError(msg)  # 409 Conflict, 405, other 4xx
    if isinstance(exc, rexc.RequestException):
        if isinstance(exc, rexc.ConnectTimeout) or (
                isinstance(exc, rexc.ConnectionError) and _connection_never_made(exc)):
            if _caused_by(exc, "urllib3.exceptions.NameResolutionError", "socket.gaierror"):
                return Unresolvable(f"cannot resolve the host name: {msg}")  # not retried here
            return TransientError(f"connection failed: {msg}")  # nothing was sent
        return lost(f"{type(exc).__name__}: {msg}")  # reset, read timeout, broken answer
    if _has(exc, "google.protobuf.json_format.ParseError"):
        return lost(f"unreadable answer: {msg}")
    if _has(exc, "google.auth.exceptions.TransportError"):
        return TransientError(f"credentials: {msg}")
    if _has(exc, "google.auth.exceptions.GoogleAuthError"):
        return PermissionDenied(f"credentials: {msg}")
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return lost(f"{type(exc).__name__}: {msg}")
    return PermanentError(f"{type(exc).__name__}: {msg}")


def map_operation_error(op: Any) -> ResponderError | None:
    """The error of a DONE operation, or None when it succeeded."""
    errors = list(op.error.errors) if op.error else []
    http_status = int(getattr(op, "http_error_status_code", 0) or 0)
    if not errors and http_status < 400:
        return None
    codes = [str(e.code) for e in errors]
    text = "; ".join(f"{e.code}: {e.message}" for e in errors) or (
        f"HTTP {http_status} {getattr(op, 'http_error_message', '')}")
    messages = " ".join(str(e.message) for e in errors).lower()
    if "RESOURCE_NOT_READY" in codes or _NOT_READY_MARKER in messages:
        return TransientError(text)  # refused, nothing committed
    if "QUOTA_EXCEEDED" in codes:
        return QuotaExceeded(text)
    if _NO_RULE_MARKER in messages:
        return RuleNotFound(text)
    if any(m in messages for m in _PRIORITY_TAKEN_MARKERS):
        return PriorityTaken(text)
    if "CONDITION_NOT_MET" in codes or http_status == 412:
        return FingerprintMismatch(text)
    # A DONE operation that failed committed nothing: safe to retry.
    if any(c in _TRANSIENT_OP_CODES for c in codes) or http_status >= 500 or http_status == 429:
        return TransientError(text)
    if "RESOURCE_NOT_FOUND" in codes or http_status == 404:
        return PolicyNotFound(text)
    if http_status == 403:
        return PermissionDenied(text)
    return PermanentError(text)


def _retryable(exc: Exception) -> bool:
    # A stale fingerprint fails again with the same fingerprint; running out of
    # lease or delivery time means the caller stops; a host name that does not
    # resolve is a wrong endpoint or DNS down: none is retried here (all still
    # propagate as transient).
    return isinstance(exc, TransientError) and not isinstance(exc, FingerprintMismatch | OutOfTime | Unresolvable)


def _last_error(exc_list: list[Exception], reason: Any, timeout: float | None,
                **_: Any) -> tuple[Exception, Exception | None]:
    """exception_factory for retry_target: raise the last (already mapped) error."""
    if exc_list:
        last = exc_list[-1]
        cause = last.__cause__
        return last, cause if isinstance(cause, Exception) else None
    return TransientError(f"retry deadline of {timeout}s exceeded"), None


def retrying(attempt: Callable[[], T], deadline: timedelta, backoff: Backoff,
             sleep: Callable[[float], None], on_retry: Callable[[], None]) -> T:
    """Run ``attempt`` until it succeeds, raises an error ``_retryable`` refuses
    or ``deadline`` passes (then the last transient error is raised), with
    api_core's jittered exponential backoff; the sleeping goes through
    ``sleep`` so tests and benchmarks can observe or skip it. Shared by the
    compute and the address-group adapters."""
    from google.api_core.retry import exponential_sleep_generator, retry_target

    timeout = deadline.total_seconds()
    end = time.monotonic() + timeout

    def sleeps() -> Iterator[float]:
        # Yields the delay (without sleeping) when it would pass the deadline,
        # so that retry_target gives up with the last error.
        for delay in exponential_sleep_generator(backoff.initial, backoff.maximum, multiplier=backoff.multiplier):
            if time.monotonic() + delay > end:
                yield delay
                continue
            sleep(delay)
            yield 0.0

    result = retry_target(attempt, _retryable, sleeps(), timeout=timeout, on_error=lambda exc: on_retry(),
                          exception_factory=_last_error)
    return result  # type: ignore[no-any-return]


def _same_rule(a: PolicyRule, b: PolicyRule) -> bool:
    return (set(a.ranges) == set(b.ranges) and a.action == b.action
            and (a.description or "") == (b.description or "")
            and bool(a.preview) == bool(b.preview)
            and (a.expression or None) == (b.expression or None))


# --------------------------------------------------------------------------


class CloudArmor:
    """Adapter for one security policy (global or regional)."""

    def __init__(self, policy: PolicySettings, *, credentials: Any = None,
                 retry_deadline: timedelta | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 backoff: Backoff = Backoff(),
                 poll: Backoff = Backoff(initial=0.1, maximum=2.0, multiplier=1.5)) -> None:
        self.settings = policy
        self.project = policy.project
        self.name = policy.name
        self.region = policy.region
        # None: PolicySettings.retry_deadline (60 s by default)
        self.retry_deadline = retry_deadline if retry_deadline is not None else getattr(
            policy, "retry_deadline", timedelta(seconds=60))
        self.backoff = backoff
        self.poll = poll  # pause between operation waits that return before DONE
        self._credentials = credentials
        self._sleep = sleep
        self._lock = threading.Lock()
        self._build = threading.Lock()  # requests served at once build the clients once
        self._client_pair: tuple[Any, Any] | None = None  # compute_v1, mutations only
        self._compute: Any = None
        self._session: Any = None  # reads: requests / AuthorizedSession, no compute_v1
        self.call_counts: Counter[str] = Counter()

    # ----------------------------------------------------------- plumbing
    def calls(self) -> Counter[str]:
        """A copy of the count of API calls made, by kind (see CALL_KINDS);
        ``retry`` counts retried attempts and ``wait`` operation waits."""
        with self._lock:
            return Counter(self.call_counts)

    def reset_calls(self) -> None:
        with self._lock:
            self.call_counts.clear()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.call_counts[kind] += 1

    @property
    def _timeout(self) -> float:
        return self.settings.request_timeout.total_seconds()

    @property
    def _clients(self) -> tuple[Any, Any]:
        """The compute_v1 (policies, operations) clients, built on first use."""
        return self._ensure_clients()

    def _ensure_clients(self) -> tuple[Any, Any]:
        pair = self._client_pair
        if pair is not None:
            return pair
        with self._build:
            return self._build_clients()

    def _build_clients(self) -> tuple[Any, Any]:
        if self._client_pair is None:
            from google.cloud import compute_v1

            options: dict[str, str] = {}
            credentials = self._credentials
            if self.settings.api_endpoint:
                options["api_endpoint"] = self.settings.api_endpoint
                if credentials is None:
                    from google.auth.credentials import AnonymousCredentials

                    credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
            kw: dict[str, Any] = {"client_options": options or None}
            if credentials is not None:
                kw["credentials"] = credentials
            policies: Any
            operations: Any
            try:
                if self.region:
                    policies = compute_v1.RegionSecurityPoliciesClient(**kw)
                    operations = compute_v1.RegionOperationsClient(**kw)
                else:
                    policies = compute_v1.SecurityPoliciesClient(**kw)
                    operations = compute_v1.GlobalOperationsClient(**kw)
            except Exception as exc:  # e.g. DefaultCredentialsError without ADC
                raise map_exception(exc) from exc
            self._compute = compute_v1
            self._client_pair = (policies, operations)
        return self._client_pair

    # ------------------------------------------------- REST reads (no compute_v1)
    def _ensure_session(self) -> Any:
        """The HTTP session of reads: a plain ``requests`` session against
        ``api_endpoint`` (what AnonymousCredentials amounts to: no auth header),
        else an ``AuthorizedSession`` with Application Default Credentials."""
        with self._lock:
            if self._session is None:
                try:
                    if self._credentials is not None:
                        from google.auth.transport.requests import AuthorizedSession

                        self._session = AuthorizedSession(self._credentials)  # type: ignore[no-untyped-call]
                    elif self.settings.api_endpoint:
                        import requests

                        self._session = requests.Session()
                    else:
                        import google.auth
                        from google.auth.transport.requests import AuthorizedSession

                        credentials, _ = google.auth.default(scopes=list(COMPUTE_SCOPES))
                        self._session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
                except Exception as exc:  # e.g. DefaultCredentialsError without ADC
                    raise map_exception(exc) from exc
            return self._session

    def _policy_url(self, suffix: str = "") -> str:
        endpoint = (self.settings.api_endpoint or DEFAULT_ENDPOINT).rstrip("/")
        if "://" not in endpoint:
            endpoint = "https://" + endpoint  # as compute_v1 does with a bare host
        scope = f"regions/{quote(self.region, safe='')}" if self.region else "global"
        return (f"{endpoint}/compute/v1/projects/{quote(self.project, safe='')}/{scope}"
                f"/securityPolicies/{quote(self.name, safe='')}{suffix}")

    def _rest_get(self, kind: str, url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """One GET: counted, explicit timeout, errors mapped as compute_v1's REST
        transport raises them (``google.api_core.exceptions.from_http_response``)."""
        session = self._ensure_session()
        self._count(kind)
        try:
            response = session.get(url, params=params, timeout=self._timeout)
        except Exception as exc:
            raise map_exception(exc, mutation=False) from exc
        if response.status_code >= 400:
            from google.api_core import exceptions as gexc

            error = gexc.from_http_response(response)  # type: ignore[no-untyped-call]
            raise map_exception(error, mutation=False) from error
        try:
            body = response.json()
        except ValueError as exc:
            raise TransientError(f"unreadable answer to GET {url}: {exc}") from exc
        if not isinstance(body, dict):
            raise TransientError(f"unreadable answer to GET {url}: not a JSON object")
        return body

    def _scope(self, **fields: Any) -> dict[str, Any]:
        req = {"project": self.project, **fields}
        if self.region:
            req["region"] = self.region
        return req

    def _invoke(self, kind: str, fn: Callable[..., T], request: dict[str, Any], *,
                mutation: bool) -> T:
        """One HTTP call: counted, no client retry, explicit timeout, mapped errors."""
        self._count(kind)
        try:
            return fn(request=request, retry=None, timeout=self._timeout)
        except Exception as exc:
            raise map_exception(exc, mutation=mutation) from exc

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it succeeds, raises a non-transient error or the
        retry deadline passes (then the last transient error is raised)."""
        return retrying(attempt, self.retry_deadline, self.backoff, self._sleep, lambda: self._count("retry"))

    def _wait(self, op: Any) -> None:
        """Wait for ``op`` to be DONE with our own operations client, then raise its
        mapped error if it failed. OutcomeUnknown if it is not DONE in time."""
        compute_v1 = self._compute
        _, operations = self._ensure_clients()
        done_status = compute_v1.Operation.Status.DONE
        timeout = self.settings.operation_timeout.total_seconds()
        deadline = time.monotonic() + timeout
        poll_pauses: Iterator[float] | None = None
        error_pauses: Iterator[float] | None = None
        last_error: Exception | None = None
        while op.status != done_status:
            if not op.name:
                raise OutcomeUnknown("the API answered an operation without a name")
            if time.monotonic() >= deadline:
                raise OutcomeUnknown(
                    f"operation {op.name} not DONE after {timeout:g}s"
                    + (f" (last error: {last_error})" if last_error else ""))
            try:
                op = self._invoke("wait", operations.wait,
                                  self._scope(operation=op.name), mutation=False)
            except TransientError as exc:
                last_error = exc
                self._count("retry")
                error_pauses = error_pauses or self._pause_iter(self.backoff)
                delay = next(error_pauses)
            except PermanentError as exc:
                raise OutcomeUnknown(f"cannot wait for operation {op.name}: {exc}") from exc
            else:
                last_error = error_pauses = None
                if op.status == done_status:
                    break
                # operations.wait returned before DONE (its own deadline): pause, wait again
                poll_pauses = poll_pauses or self._pause_iter(self.poll)
                delay = next(poll_pauses)
            self._sleep(max(0.0, min(delay, deadline - time.monotonic())))
        error = map_operation_error(op)
        if error is not None:
            raise error

    @staticmethod
    def _pause_iter(backoff: Backoff) -> Iterator[float]:
        from google.api_core.retry import exponential_sleep_generator

        return iter(exponential_sleep_generator(backoff.initial, backoff.maximum,
                                                multiplier=backoff.multiplier))

    def _mutate(self, kind: str, method: str, request: dict[str, Any],
                guard: Callable[[], None] | None = None) -> None:
        """One mutation attempt: send it, wait for its operation, map its error.
        ``guard`` runs right before the send (each retry is a new attempt), and
        raises OutOfTime when the caller's lease or time budget cannot cover it."""
        policies, _ = self._ensure_clients()
        if guard is not None:
            guard()
        op = self._invoke(kind, getattr(policies, method), request, mutation=True)
        self._wait(op)

    # ------------------------------------------------------------ mapping
    def _rule_proto(self, rule: PolicyRule) -> Any:
        c = self._compute
        if rule.expression is not None:
            match = c.SecurityPolicyRuleMatcher(expr=c.Expr(expression=rule.expression))
        else:
            match = c.SecurityPolicyRuleMatcher(
                versioned_expr=SRC_IPS_V1,
                config=c.SecurityPolicyRuleMatcherConfig(src_ip_ranges=list(rule.ranges)))
        return c.SecurityPolicyRule(priority=rule.priority, action=rule.action,
                                    description=rule.description, preview=bool(rule.preview),
                                    match=match)

    @staticmethod
    def _json_rule(raw: Mapping[str, Any]) -> PolicyRule:
        """A REST ``SecurityPolicyRule`` (camelCase JSON) as a PolicyRule; ``raw``
        keeps the JSON as read. Absent fields take their proto3 defaults."""
        match = raw.get("match") or {}
        expr = match.get("expr")
        config = match.get("config") or {}
        return PolicyRule(
            priority=int(raw.get("priority", 0)),
            action=str(raw.get("action", "")),
            ranges=tuple(str(r) for r in config.get("srcIpRanges") or ()),
            description=str(raw.get("description", "")),
            preview=bool(raw.get("preview", False)),
            expression=str(expr.get("expression", "")) if isinstance(expr, Mapping) else None,
            raw=dict(raw),
        )

    # -------------------------------------------------------------- reads
    def get_policy(self) -> PolicySnapshot:
        """One GET of the policy over the REST JSON API (retried on transient
        errors); never imports compute_v1, so a message that changes nothing
        does not pay for it."""
        url = self._policy_url()
        body = self._retrying(lambda: self._rest_get("get", url))
        return PolicySnapshot(
            name=str(body.get("name") or self.name),
            rules=tuple(self._json_rule(r) for r in body.get("rules") or ()),
            fingerprint=str(body.get("fingerprint", "")),
            labels={str(k): str(v) for k, v in (body.get("labels") or {}).items()},
            label_fingerprint=str(body.get("labelFingerprint", "")),
        )

    def _get_rule_once(self, priority: int) -> PolicyRule | None:
        try:
            body = self._rest_get("get_rule", self._policy_url("/getRule"),
                                  {"priority": str(int(priority))})
        except RuleNotFound:
            return None
        return self._json_rule(body)

    def get_rule(self, priority: int) -> PolicyRule | None:
        """The rule at ``priority``, or None when that priority holds no rule."""
        return self._retrying(lambda: self._get_rule_once(priority))

    # ---------------------------------------------------------- mutations
    def add_rule(self, rule: PolicyRule, *, validate_only: bool = False,
                 guard: Callable[[], None] | None = None) -> None:
        """addRule and wait. A lost answer is resolved by re-reading the priority."""
        self._ensure_clients()
        body = self._rule_proto(rule)
        uncertain = False

        def check_existing() -> bool:
            """True if our rule is in place; raise PriorityTaken if another is;
            False if the priority is empty."""
            existing = self._get_rule_once(rule.priority)
            if existing is None:
                return False
            if _same_rule(existing, rule):
                return True
            raise PriorityTaken(f"priority {rule.priority} holds another rule "
                                f"(after an add with an unknown outcome)")

        def attempt() -> None:
            nonlocal uncertain
            if uncertain and not validate_only and check_existing():
                return
            request = self._scope(security_policy=self.name, security_policy_rule_resource=body)
            if validate_only:
                request["validate_only"] = True
            try:
                self._mutate("add", "add_rule_unary", request, guard)
            except OutcomeUnknown:
                uncertain = True
                raise
            except PriorityTaken:
                # Our own lost add may have committed, or be pending and reserving
                # the priority: re-read before blaming another writer.
                if not uncertain or validate_only:
                    raise
                if check_existing():
                    return
                raise OutcomeUnknown(f"priority {rule.priority} reserved but empty: "
                                     f"an earlier add may still be pending") from None

        self._retrying(attempt)

    def patch_rule(self, rule: PolicyRule, *, validate_only: bool = False,
                   guard: Callable[[], None] | None = None) -> None:
        """patchRule at ``rule.priority``: replaces ranges (or expression), action,
        description and preview. Idempotent, so retried on unknown outcomes; after
        one, the rule is re-read first and an equal rule counts as success."""
        self._ensure_clients()
        body = self._rule_proto(rule)
        request = self._scope(security_policy=self.name, priority=rule.priority,
                              security_policy_rule_resource=body)
        if validate_only:
            request["validate_only"] = True
        uncertain = False

        def attempt() -> None:
            nonlocal uncertain
            if uncertain and not validate_only:
                current = self._get_rule_once(rule.priority)
                if current is not None and _same_rule(current, rule):
                    return  # the lost patch committed (or the rule already was so)
            try:
                self._mutate("patch", "patch_rule_unary", request, guard)
            except OutcomeUnknown:
                uncertain = True
                raise

        self._retrying(attempt)

    def remove_rule(self, priority: int, *, guard: Callable[[], None] | None = None) -> None:
        """removeRule; RuleNotFound unless an earlier attempt's outcome was unknown."""
        self._ensure_clients()
        request = self._scope(security_policy=self.name, priority=priority)
        uncertain = False

        def attempt() -> None:
            nonlocal uncertain
            try:
                self._mutate("remove", "remove_rule_unary", request, guard)
            except OutcomeUnknown:
                uncertain = True
                raise
            except RuleNotFound:
                if not uncertain:
                    raise
                # the lost remove committed

        self._retrying(attempt)

    def set_labels(self, labels: Mapping[str, str], label_fingerprint: str) -> None:
        """setLabels (compare-and-set on labelFingerprint); FingerprintMismatch on 412."""
        self._ensure_clients()
        c = self._compute
        wanted = dict(labels)
        if self.region:
            request = self._scope(resource=self.name, region_set_labels_request_resource=(
                c.RegionSetLabelsRequest(labels=wanted, label_fingerprint=label_fingerprint)))
        else:
            request = self._scope(resource=self.name, global_set_labels_request_resource=(
                c.GlobalSetLabelsRequest(labels=wanted, label_fingerprint=label_fingerprint)))
        uncertain = False

        def attempt() -> None:
            nonlocal uncertain
            try:
                self._mutate("set_labels", "set_labels_unary", request)
            except OutcomeUnknown:
                uncertain = True
                raise
            except FingerprintMismatch:
                if not uncertain:
                    raise
                # Our lost setLabels may have committed and changed the fingerprint.
                policies, _ = self._ensure_clients()
                current = self._invoke("get", policies.get,
                                       self._scope(security_policy=self.name), mutation=False)
                if dict(current.labels) != wanted:
                    raise

        self._retrying(attempt)

    def create_policy(self, description: str = "", *, policy_type: str = "CLOUD_ARMOR",
                      validate_only: bool = False) -> None:
        """insert the configured policy (used by bootstrap and tests). Not retried
        on unknown outcomes beyond what a 409 makes safe: a 409 after a lost
        answer means our insert committed. ``validate_only``: the API checks
        the insert and creates nothing (a dry run)."""
        self._ensure_clients()
        c = self._compute
        resource = c.SecurityPolicy(name=self.name, description=description, type_=policy_type)
        request = self._scope(security_policy_resource=resource)
        if validate_only:
            request["validate_only"] = True
        uncertain = False

        def attempt() -> None:
            nonlocal uncertain
            try:
                self._mutate("insert", "insert_unary", request)
            except OutcomeUnknown:
                uncertain = True
                raise
            except PermanentError as exc:
                if uncertain and "already exists" in str(exc).lower():
                    return  # the lost insert committed (or is pending)
                raise

        self._retrying(attempt)
