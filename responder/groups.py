"""The address-group adapter: Cloud Armor Enterprise address groups through
``google.cloud.network_security_v1`` (the Network Security API v1).

This is the only module of the project that imports ``network_security_v1``;
it does so lazily, on the first call, as :mod:`responder.compute` does for
``compute_v1``. Everything it returns is an :class:`AddressGroup` (a frozen
domain type, items normalised by :mod:`ipaddress`); everything it raises is a
:class:`responder.errors.ResponderError`:

==========================================  =====================================
what the API said                           raised
==========================================  =====================================
Cloud Armor Enterprise needed (Standard)    :class:`TierRequired` (permanent)
items beyond the group's capacity           :class:`GroupFull` (permanent)
delete of a group a policy rule references  :class:`GroupInUse` (permanent)
no such group                               :class:`GroupNotFound` (permanent)
add of a present item, remove of an absent  :class:`ItemConflict` (permanent)
other 4xx                                   :class:`PermanentError`
429, 5xx, resets, timeouts                  retried here, then :class:`TransientError`
                                            (:class:`OutcomeUnknown` for a mutation)
==========================================  =====================================

How calls are made
------------------
* The client uses its REST transport (``transport="rest"``). With
  ``api_endpoint`` set (the local API), credentials are anonymous.
* Every call passes ``retry=None`` and an explicit ``timeout``
  (``policy.request_timeout``); the adapter retries transient failures
  itself with jittered exponential backoff until ``retry_deadline``, like the
  compute adapter, and calls ``guard()`` before each mutation attempt (it
  raises :class:`OutOfTime` when the caller's lease or delivery budget cannot
  cover one more attempt).
* Each mutation returns a long-running operation; the adapter polls it with
  the client's ``get_operation`` (``GET /v1/{name=projects/*/locations/*/
  operations/*}``) until ``done`` or ``policy.operation_timeout``. Unlike
  compute's ``ExtendedOperation.result()``, this client's own polling
  (``operation.result()``) does go to the configured endpoint (its
  operations client is built on the transport's host); the adapter polls
  itself anyway to own the timeout, the retries and the error mapping.
* Mutations carry a ``requestId``. The server ignores a repeated request with
  the same id for at least 60 minutes and answers the first operation, so a
  retry after a lost answer is harmless. Item calls derive the id with
  :func:`request_id` from (message id, group, kind, call index, the call's
  items): the same delivery retried, or redelivered, sends the same ids for
  the same calls, while a recomputed diff with other items gets new ids and
  is not swallowed as a replay of an older call.
* After an unknown outcome the adapter also re-reads the group before
  trusting an :class:`ItemConflict` (the lost call may have committed even if
  a server did not honour the requestId).

Items are sent in batches of ``groups.max_items_per_call`` (Google does not
document a limit): ``add_items`` of k items makes ``ceil(k / batch)`` calls.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from config.settings import GroupSettings, PolicySettings
from responder.compute import Backoff, map_exception, retrying
from responder.errors import (
    GroupFull,
    GroupInUse,
    GroupNotFound,
    ItemConflict,
    OutcomeUnknown,
    PermanentError,
    PermissionDenied,
    ResponderError,
    TierRequired,
    TransientError,
)

__all__ = ["AddressGroup", "AddressGroups", "GROUP_CALL_KINDS", "map_group_error",
           "normalize_items", "request_id"]

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The keys of :meth:`AddressGroups.calls`.
GROUP_CALL_KINDS = ("create", "get", "list", "add_items", "remove_items", "delete",
                    "get_operation", "retry")

DEFAULT_ENDPOINT = "https://networksecurity.googleapis.com"
#: Namespace of the deterministic requestIds (a fixed, arbitrary UUID).
REQUEST_ID_NAMESPACE = uuid.UUID("6f1d3c0e-6a52-4d1b-9a57-2b1c8f0e7a31")

# Markers of the errors this adapter distinguishes: the local API's ErrorInfo
# reasons, and words of the messages (Google's own reasons are not documented).
_TIER_MARKERS = ("cloud armor enterprise", "cloud_armor_enterprise")
_CAPACITY_MARKERS = ("capacity_exceeded", "capacity of")
_IN_USE_MARKERS = ("in_use", "is referenced by", "in use", "being used")
_ITEM_MARKERS = ("item_already_exists", "item_not_found", "already exists in address group",
                 "does not exist in address group")
# google.rpc.Code numbers of a failed operation that committed nothing and may be retried.
_TRANSIENT_RPC = frozenset({1, 4, 8, 10, 13, 14})  # CANCELLED, DEADLINE, EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE


@dataclass(frozen=True)
class AddressGroup:
    """One address group as read back. ``items`` are normalised networks
    (``str(ipaddress.ip_network(item))``, sorted); ``name`` is the short name."""

    name: str
    type: str  # "IPV4" or "IPV6"
    capacity: int
    items: tuple[str, ...] = ()
    purpose: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    location: str = "global"

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def version(self) -> int:
        return 6 if self.type == "IPV6" else 4

    @property
    def free(self) -> int:
        return self.capacity - len(self.items)


def normalize_items(items: Iterable[str | Network]) -> list[str]:
    """Each item as ``str(ip_network(item))`` (a bare address becomes /32 or
    /128), duplicates dropped, sorted by (version, network). Raises
    PermanentError on an item that is not an address or CIDR without host bits."""
    nets: set[Network] = set()
    for item in items:
        try:
            nets.add(item if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network)
                     else ipaddress.ip_network(str(item), strict=True))
        except ValueError as exc:
            raise PermanentError(f"not an address group item: {item!r} ({exc})") from exc
    return [str(n) for n in sorted(nets, key=lambda n: (n.version, n))]


def request_id(message_id: str, group: str, kind: str, index: int,
               items: Sequence[str] = ()) -> str:
    """A deterministic requestId (UUID version 5) for call ``index`` of ``kind``
    ("add", "remove", "create", "delete") on ``group`` made for the message
    ``message_id``; ``items`` (the call's items) are part of it, so that a
    recomputed diff never reuses the id of an earlier, different call."""
    digest = uuid.uuid5(REQUEST_ID_NAMESPACE, "\n".join(items)).hex if items else "-"
    return str(uuid.uuid5(REQUEST_ID_NAMESPACE, f"{message_id}|{group}|{kind}|{index}|{digest}"))


# --------------------------------------------------------------------------
# Error mapping


def _classify(text: str, rpc_status: str, http: int) -> type[ResponderError] | None:
    """The group-specific error for a message (reasons and message, lowercased)."""
    if any(m in text for m in _TIER_MARKERS):
        return TierRequired
    if any(m in text for m in _CAPACITY_MARKERS):
        return GroupFull
    if any(m in text for m in _IN_USE_MARKERS) and rpc_status in ("FAILED_PRECONDITION", "") \
            and http in (400, 409, 0):
        return GroupInUse
    if any(m in text for m in _ITEM_MARKERS):
        return ItemConflict
    return None


def map_group_error(exc: BaseException, *, mutation: bool = False) -> ResponderError:
    """Translate an exception of a network_security_v1 call into a ResponderError."""
    if isinstance(exc, ResponderError):
        return exc
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.GoogleAPICallError) and isinstance(exc.code, int) and exc.code < 500 \
            and exc.code != 429:
        reason = str(getattr(exc, "reason", "") or "")
        text = f"{reason} {exc.message}".lower()
        status = ""
        response = getattr(exc, "response", None)
        try:
            status = str(response.json()["error"].get("status", "")) if response is not None else ""
        except Exception:  # noqa: BLE001 - an unreadable body only loses the status name
            status = ""
        specific = _classify(text, status, int(exc.code))
        if specific is not None:
            return specific(exc.message)
        if isinstance(exc, gexc.NotFound):
            return GroupNotFound(exc.message)
    return map_exception(exc, mutation=mutation)


class FailedOperation(TransientError):
    """The operation ran and ended in a transient error: nothing committed,
    but its requestId is spent (the server answers that id with the same
    failed operation from then on), so a retry must send a new one."""


def _rpc_error(op: Any) -> ResponderError | None:
    """The error of a done operation (google.rpc.Status), or None on success."""
    if not op.HasField("error"):
        return None
    code = int(op.error.code)
    message = str(op.error.message)
    reasons = []
    for detail in op.error.details:
        if detail.type_url.endswith("google.rpc.ErrorInfo"):
            from google.rpc import error_details_pb2

            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reasons.append(info.reason)
    text = f"{' '.join(reasons)} {message}".lower()
    status = {3: "INVALID_ARGUMENT", 9: "FAILED_PRECONDITION"}.get(code, "")
    specific = _classify(text, status, 0)
    if specific is not None:
        return specific(message)
    if code in _TRANSIENT_RPC:
        return FailedOperation(f"operation failed ({code}): {message}")  # nothing committed
    if code == 5:
        return GroupNotFound(message)
    if code in (7, 16):
        return PermissionDenied(message)
    return PermanentError(f"operation failed ({code}): {message}")


# --------------------------------------------------------------------------

DEFAULT_BACKOFF = Backoff()
DEFAULT_POLL = Backoff(initial=0.1, maximum=2.0, multiplier=1.5)


class AddressGroups:
    """Adapter for the project's address groups in ``groups.location``.

    ``policy`` gives the project, the timeouts and, when set, the local API's
    endpoint (which serves the Network Security paths too); ``groups`` the
    ``[groups]`` settings. ``sleep``, ``backoff`` and ``poll`` as for
    :class:`responder.compute.CloudArmor`.
    """

    def __init__(self, policy: PolicySettings, groups: GroupSettings, *, credentials: Any = None,
                 retry_deadline: timedelta | None = None,
                 sleep: Callable[[float], None] = time.sleep, backoff: Backoff = DEFAULT_BACKOFF,
                 poll: Backoff = DEFAULT_POLL) -> None:
        self.policy = policy
        self.settings = groups
        self.project = policy.project
        self.location = groups.location
        self.endpoint = groups.api_endpoint or policy.api_endpoint
        self.retry_deadline = retry_deadline if retry_deadline is not None else policy.retry_deadline
        self.backoff = backoff
        self.poll = poll
        self._credentials = credentials
        self._sleep = sleep
        self._lock = threading.Lock()
        self._client: Any = None
        self._ns: Any = None
        self.call_counts: Counter[str] = Counter()

    # ---------------------------------------------------------- plumbing
    def calls(self) -> Counter[str]:
        """A copy of the count of API calls made, by kind (GROUP_CALL_KINDS)."""
        with self._lock:
            return Counter(self.call_counts)

    def reset_calls(self) -> None:
        with self._lock:
            self.call_counts.clear()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.call_counts[kind] += 1

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def path(self, name: str) -> str:
        """The full resource name of group ``name``."""
        return f"{self.parent}/addressGroups/{name}"

    def _ensure_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.cloud import network_security_v1

                credentials = self._credentials
                options: dict[str, str] = {}
                if self.endpoint:
                    options["api_endpoint"] = self.endpoint
                    if credentials is None:
                        from google.auth.credentials import AnonymousCredentials

                        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
                kw: dict[str, Any] = {"transport": "rest", "client_options": options or None}
                if credentials is not None:
                    kw["credentials"] = credentials
                try:
                    self._client = network_security_v1.AddressGroupServiceClient(**kw)
                except Exception as exc:  # e.g. DefaultCredentialsError without ADC
                    raise map_exception(exc) from exc
                self._ns = network_security_v1
            return self._client

    @property
    def _timeout(self) -> float:
        return self.policy.request_timeout.total_seconds()

    def _invoke(self, kind: str, method: str, request: dict[str, Any], *, mutation: bool) -> Any:
        client = self._ensure_client()
        self._count(kind)
        try:
            return getattr(client, method)(request=request, retry=None, timeout=self._timeout)
        except Exception as exc:
            raise map_group_error(exc, mutation=mutation) from exc

    def _retrying(self, attempt: Callable[[], T]) -> T:
        return retrying(attempt, self.retry_deadline, self.backoff, self._sleep, lambda: self._count("retry"))

    def _wait(self, future: Any) -> Any:
        """Poll the operation of ``future`` (an api_core Operation) until done;
        return its response (an AddressGroup proto, or None) or raise its error."""
        op = future.operation
        timeout = self.policy.operation_timeout.total_seconds()
        deadline = time.monotonic() + timeout
        pauses: Iterator[float] | None = None
        from google.api_core.retry import exponential_sleep_generator

        while not op.done:
            if not op.name:
                raise OutcomeUnknown("the API answered an operation without a name")
            if time.monotonic() >= deadline:
                raise OutcomeUnknown(f"operation {op.name} not done after {timeout:g}s")
            pauses = pauses or iter(exponential_sleep_generator(
                self.poll.initial, self.poll.maximum, multiplier=self.poll.multiplier))
            self._sleep(max(0.0, min(next(pauses), deadline - time.monotonic())))
            try:
                op = self._invoke("get_operation", "get_operation", {"name": op.name},
                                  mutation=False)
            except TransientError:
                self._count("retry")
            except PermanentError as exc:
                raise OutcomeUnknown(f"cannot poll operation {op.name}: {exc}") from exc
        error = _rpc_error(op)
        if error is not None:
            raise error
        if op.HasField("response") and op.response.type_url.endswith(".AddressGroup"):
            return self._ns.AddressGroup.deserialize(op.response.value)
        return None

    def _mutate(self, kind: str, method: str, request: dict[str, Any],
                guard: Callable[[], None] | None) -> Any:
        self._ensure_client()
        if guard is not None:
            guard()
        future = self._invoke(kind, method, request, mutation=True)
        return self._wait(future)

    def _domain(self, proto: Any) -> AddressGroup:
        ns = self._ns
        items = normalize_items(proto.items)
        return AddressGroup(
            name=str(proto.name).rsplit("/", 1)[-1],
            type=ns.AddressGroup.Type(proto.type_).name,
            capacity=int(proto.capacity),
            items=tuple(items),
            purpose=tuple(sorted(ns.AddressGroup.Purpose(p).name for p in proto.purpose)),
            labels={str(k): str(v) for k, v in proto.labels.items()},
            description=str(proto.description),
            location=str(proto.name).split("/")[3] if str(proto.name).count("/") >= 5
            else self.location,
        )

    # -------------------------------------------------------------- reads
    def get_group(self, name: str) -> AddressGroup | None:
        """The group ``name``, or None when it does not exist."""

        def attempt() -> AddressGroup | None:
            try:
                proto = self._invoke("get", "get_address_group", {"name": self.path(name)},
                                     mutation=False)
            except GroupNotFound:
                return None
            return self._domain(proto)

        return self._retrying(attempt)

    def list_groups(self, *, prefix: str | None = None,
                    labels: Mapping[str, str] | None = None) -> list[AddressGroup]:
        """Every group in the location whose name starts with ``prefix``
        (default ``groups.prefix``; "" for all) and that carries all ``labels``,
        sorted by name. The API has no filter: pages are read and filtered here."""
        start = self.settings.prefix if prefix is None else prefix
        wanted = dict(labels or {})

        def attempt() -> list[AddressGroup]:
            out: list[AddressGroup] = []
            token = ""
            while True:
                page = self._invoke("list", "list_address_groups",
                                    {"parent": self.parent, "page_size": 100,
                                     "page_token": token}, mutation=False)
                # One page per call (the pager would fetch further pages with the
                # client's default retry); its attributes are the page's response.
                for proto in page.address_groups:
                    group = self._domain(proto)
                    if group.name.startswith(start) and all(
                            group.labels.get(k) == v for k, v in wanted.items()):
                        out.append(group)
                token = page.next_page_token
                if not token:
                    return sorted(out, key=lambda g: g.name)

        return self._retrying(attempt)

    # ---------------------------------------------------------- mutations
    def create_group(self, name: str, type: str, capacity: int, *,
                     purpose: Sequence[str] = ("CLOUD_ARMOR",),
                     labels: Mapping[str, str] | None = None, description: str = "",
                     request_id: str | None = None,
                     guard: Callable[[], None] | None = None) -> AddressGroup:
        """Create an empty group (``type`` "IPV4" or "IPV6"; capacity fixed
        from now on) and wait. A retry after a lost answer resends the same
        requestId; a 409 after an unknown outcome means our create committed.
        TierRequired on a Standard-tier project."""
        if type not in ("IPV4", "IPV6"):
            raise PermanentError(f"address group type must be IPV4 or IPV6, not {type!r}")
        if not 1 <= capacity <= self.settings.max_capacity:
            raise GroupFull(f"capacity {capacity} is outside 1..{self.settings.max_capacity} "
                            f"(groups.max_capacity)")
        ns = self._ns_module()
        resource = ns.AddressGroup(
            type_=ns.AddressGroup.Type[type], capacity=capacity,
            purpose=[ns.AddressGroup.Purpose[p] for p in purpose],
            labels=dict(labels or {}), description=description)
        rid = request_id or str(uuid.uuid4())
        request = {"parent": self.parent, "address_group_id": name, "address_group": resource,
                   "request_id": rid}
        uncertain = False

        def attempt() -> AddressGroup:
            nonlocal uncertain
            try:
                proto = self._mutate("create", "create_address_group", request, guard)
            except OutcomeUnknown:
                uncertain = True
                raise
            except PermanentError as exc:
                if uncertain and "already exists" in str(exc).lower():
                    found = self.get_group(name)
                    if found is not None:
                        return found
                raise
            return self._domain(proto) if proto is not None else self._must_get(name)

        return self._retrying(attempt)

    def _ns_module(self) -> Any:
        self._ensure_client()
        return self._ns

    def _must_get(self, name: str) -> AddressGroup:
        group = self.get_group(name)
        if group is None:
            raise OutcomeUnknown(f"address group {name} not found after its operation")
        return group

    def add_items(self, name: str, items: Iterable[str | Network], *, message_id: str,
                  guard: Callable[[], None] | None = None) -> AddressGroup | None:
        """addItems in batches of ``groups.max_items_per_call``, each with the
        requestId ``request_id(message_id, name, "add", i, batch)``, waiting on
        each. Every item must be absent from the group (ItemConflict
        otherwise: send exact diffs); GroupFull past the capacity. Returns the
        group after the last batch (None when ``items`` is empty)."""
        return self._items("add", name, items, message_id, guard)

    def remove_items(self, name: str, items: Iterable[str | Network], *, message_id: str,
                     guard: Callable[[], None] | None = None) -> AddressGroup | None:
        """removeItems, batched and identified like :meth:`add_items`. Every
        item must be in the group (ItemConflict otherwise)."""
        return self._items("remove", name, items, message_id, guard)

    def batches(self, items: Iterable[str | Network]) -> list[list[str]]:
        """The normalised items cut into the calls :meth:`add_items` makes."""
        normal = normalize_items(items)
        size = self.settings.max_items_per_call
        return [normal[i:i + size] for i in range(0, len(normal), size)]

    def calls_for(self, count: int) -> int:
        """How many item calls ``count`` items take: ceil(count / batch)."""
        return math.ceil(count / self.settings.max_items_per_call)

    def _items(self, kind: str, name: str, items: Iterable[str | Network], message_id: str,
               guard: Callable[[], None] | None) -> AddressGroup | None:
        method = "add_address_group_items" if kind == "add" else "remove_address_group_items"
        result: AddressGroup | None = None
        batches = self.batches(items)
        for index, batch in enumerate(batches):
            rid = request_id(message_id, name, kind, index, batch)
            request = {"address_group": self.path(name), "items": batch, "request_id": rid}
            # Only the last answer is read into an AddressGroup: each answer
            # carries the whole group, and reading every one would make a
            # large first load quadratic.
            result = self._items_call(kind, method, name, batch, request, guard,
                                      read=index == len(batches) - 1)
        return result

    def _items_call(self, kind: str, method: str, name: str, batch: list[str],
                    request: dict[str, Any], guard: Callable[[], None] | None,
                    read: bool = True) -> AddressGroup | None:
        uncertain = False

        def attempt() -> AddressGroup | None:
            nonlocal uncertain
            try:
                proto = self._mutate(f"{kind}_items", method, request, guard)
            except FailedOperation:
                # The id is spent: the retry goes on with a fresh one (a
                # redelivery starts from the deterministic id, gets this
                # failure back once, then does the same). A lost answer of
                # that retry is still resolved as before: the same request is
                # resent, and a recomputed diff never re-sends landed items.
                request["request_id"] = str(uuid.uuid4())
                raise
            except OutcomeUnknown:
                uncertain = True
                raise
            except ItemConflict:
                # The lost call may have committed (a server that did not honour
                # the requestId): success if the group now reads as wanted.
                if not uncertain:
                    raise
                group = self._must_get(name)
                present = set(group.items)
                if all((i in present) == (kind == "add") for i in batch):
                    return group
                raise
            if not read:
                return None
            return self._domain(proto) if proto is not None else self._must_get(name)

        return self._retrying(attempt)

    def delete_group(self, name: str, *, request_id: str | None = None,
                     guard: Callable[[], None] | None = None) -> None:
        """Delete the group and wait. GroupInUse while a policy rule references
        it; GroupNotFound if it does not exist (unless an earlier attempt's
        outcome was unknown: then our delete committed)."""
        request = {"name": self.path(name), "request_id": request_id or str(uuid.uuid4())}
        uncertain = False

        def attempt() -> None:
            nonlocal uncertain
            try:
                self._mutate("delete", "delete_address_group", request, guard)
            except OutcomeUnknown:
                uncertain = True
                raise
            except GroupNotFound:
                if not uncertain:
                    raise

        self._retrying(attempt)
