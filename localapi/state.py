"""The in-memory Cloud Armor model: policies, rules, operations, quota.

Semantics modelled (see README.md for the choices where Google is silent):

* **Operations.**  Every mutation answers with a ``compute#operation``.  It is
  PENDING for the first half of its delay (``op_delay``, a number or a
  ``(min, max)`` range drawn per operation), RUNNING for the second half, then
  DONE.  The change is *committed* - visible to get/getRule/list - only when
  the operation becomes DONE.  Time is evaluated lazily: before any request is
  handled, :meth:`CloudArmorState.tick` commits, under the one lock, every
  operation whose time has come, in the order of their end times (so with a
  range delay operations may finish out of issue order).
* **Request-time reservations.**  Validation happens when the request arrives.
  A pending addRule reserves its priority (a second addRule at that priority
  fails as a duplicate), a pending insert reserves its name (409), and pending
  adds/inserts count against the project rule quota.
* **Commit-time checks.**  At commit the change is re-applied to the then
  current policy; if it no longer applies (rule removed meanwhile, policy
  deleted, fingerprint changed for patch/setLabels) the operation ends DONE
  with an error and nothing changes.  patchRule re-applies its patch to the
  rule as it is at commit time: concurrent patchRules on one rule lose
  updates silently, like the real API (no fingerprint on rule methods).
* **Serialized operations** (``serialize_operations=True``; off by default).
  A mutation of a policy (patch, delete, setLabels, addRule, patchRule,
  removeRule) while an operation on that policy is not yet DONE is refused
  with 400 ``resourceNotReady`` ("The resource '...' is not ready"), or, with
  ``not_ready_mode="operation"``, answered with an operation that is DONE at
  once with error ``RESOURCE_NOT_READY``.  Nothing is committed either way.
  Google answers so for backend services; whether it does for security
  policies is not documented, so this is an option.
* **Operation latency** (``op_latency``, whole seconds; None by default).
  When set, every mutation's operation takes exactly that long (it overrides
  ``op_delay``); ``operations.wait`` still returns after ``wait_timeout``
  with the operation not yet DONE, as Google's wait does after its deadline.
* **Fingerprints.**  ``fingerprint`` changes on every committed change of the
  policy (rules, labels, fields); ``labelFingerprint`` changes on every
  committed setLabels.  Both are 8 random-looking bytes, urlsafe base64.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import os
import random
import re
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import rules as R
from .errors import ApiError, bad_request, not_found
from .groups import AddressGroupMethods
from .wire import _now_rfc3339, camel

BASE_URL = "https://www.googleapis.com/compute/v1/"

#: ``operationType`` per method.  Google does not document these values for
#: security policies; these are plausible guesses (the method names).
OPERATION_TYPES = {
    "insert": "insert", "patch": "patch", "delete": "delete", "setLabels": "setLabels",
    "addRule": "addRule", "patchRule": "patchRule", "removeRule": "removeRule",
}

Key = tuple[Any, ...]  # (project, region | None, name)

#: Methods refused while their policy has an operation in flight
#: (``serialize_operations``).
SERIALIZED_METHODS = frozenset({"patch", "delete", "setLabels", "addRule", "patchRule",
                                "removeRule"})

POLICY_READ_ONLY = frozenset({"kind", "id", "creationTimestamp", "selfLink", "region",
                              "fingerprint", "labelFingerprint", "name"})


def parse_bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise bad_request(f"Invalid value for field '{name}': '{value}'. Must be a boolean.")


@dataclass
class Operation:
    """A pending or finished operation.  ``apply`` commits the change and
    may raise ApiError, which then becomes the operation's error."""

    key: Key  # (project, region | None, operation name)
    record: dict[str, Any]
    issued: float  # monotonic
    wall: float  # wall-clock time at issue
    done_at: float  # monotonic
    apply: Callable[[], None] | None = None
    error: ApiError | None = None
    reservations: list[Any] = field(default_factory=list)
    done: bool = False
    target: Key | None = None  # the policy (or ("lro",) + group key) the operation changes
    api: str = "compute"  # "lro": a Network Security long-running operation
    response: dict[str, Any] | None = None  # what ``apply`` returned (LRO response)


class CloudArmorState(AddressGroupMethods):
    """All state of the local API, guarded by one lock (``self.lock``).

    Address-group settings (see localapi/groups.py and README.md): ``tier``
    ("standard" or "enterprise"), ``ceval_quota`` (advanced rules per
    project), ``max_items_per_call``, ``duplicate_items`` / ``absent_items``
    ("error" or "ignore"), ``max_group_capacity`` (purpose CLOUD_ARMOR),
    ``request_id_ttl`` (seconds a requestId is remembered) and
    ``max_policy_attributes`` (None: not enforced)."""

    def __init__(self, *, op_delay: float | tuple[float, float] = 0.2, quota: int = 200,
                 quota_mode: str = "operation", duplicate_mode: str = "http",
                 wait_timeout: float = 30.0, state_file: str | None = None,
                 seed: int | None = None, op_latency: int | None = None,
                 serialize_operations: bool = False, not_ready_mode: str = "http",
                 tier: str = "standard", ceval_quota: int = 20, max_items_per_call: int = 1000,
                 duplicate_items: str = "error", absent_items: str = "error",
                 max_group_capacity: int = 150_000, request_id_ttl: float = 3600.0,
                 max_policy_attributes: int | None = None) -> None:
        if tier not in ("standard", "enterprise"):
            raise ValueError("tier must be 'standard' or 'enterprise'")
        if duplicate_items not in ("error", "ignore") or absent_items not in ("error", "ignore"):
            raise ValueError("duplicate_items and absent_items must be 'error' or 'ignore'")
        self.tier = tier
        self.ceval_quota = ceval_quota
        self.max_items_per_call = max_items_per_call
        self.duplicate_items = duplicate_items
        self.absent_items = absent_items
        self.max_group_capacity = max_group_capacity
        self.request_id_ttl = request_id_ttl
        self.max_policy_attributes = max_policy_attributes
        self.groups: dict[Any, dict[str, Any]] = {}
        self._pending_group_names: set[Any] = set()
        self._pending_refs: Counter[Any] = Counter()
        self._pending_ceval: Counter[str] = Counter()
        self._ns_request_ids: dict[tuple[str, str], tuple[Any, float]] = {}
        if quota_mode not in ("operation", "http"):
            raise ValueError("quota_mode must be 'operation' or 'http'")
        if duplicate_mode not in ("operation", "http"):
            raise ValueError("duplicate_mode must be 'operation' or 'http'")
        if not_ready_mode not in ("operation", "http"):
            raise ValueError("not_ready_mode must be 'operation' or 'http'")
        self.lock = threading.Condition(threading.RLock())
        self.op_delay = op_delay
        self.op_latency = op_latency
        self.serialize_operations = serialize_operations
        self.not_ready_mode = not_ready_mode
        self.quota = quota
        self.quota_mode = quota_mode
        self.duplicate_mode = duplicate_mode
        self.wait_timeout = wait_timeout
        self.state_file = state_file
        self.policies: dict[Key, dict[str, Any]] = {}
        self.operations: dict[Key, Operation] = {}
        self._pending: list[Operation] = []
        self._reserved: dict[Key, set[int]] = {}
        self._pending_names: set[Key] = set()
        self._pending_rules: Counter[str] = Counter()
        self._request_ids: dict[tuple[str, str], Key] = {}
        self._rng = random.Random(seed)
        self._counter = itertools.count(1)
        self._salt = uuid.uuid4().hex
        if state_file and os.path.exists(state_file):
            self._load()

    # ----------------------------------------------------------- helpers
    def _fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self._salt}:{next(self._counter)}".encode()).digest()
        return base64.urlsafe_b64encode(digest[:8]).decode()

    def _new_id(self) -> str:
        return str(self._rng.randrange(10**18, 9 * 10**18))

    @property
    def op_latency(self) -> int | None:
        """Whole seconds every mutation's operation takes (None: ``op_delay`` applies)."""
        return self._op_latency

    @op_latency.setter
    def op_latency(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise ValueError(f"op_latency must be a whole number of seconds >= 0, not {value!r}")
        self._op_latency = value

    def _delay(self) -> float:
        if self._op_latency is not None:
            return float(self._op_latency)
        d = self.op_delay
        if isinstance(d, (tuple, list)):
            return self._rng.uniform(float(d[0]), float(d[1]))
        return float(d)

    @staticmethod
    def _scope_path(project: str, region: str | None) -> str:
        return f"projects/{project}/regions/{region}" if region else f"projects/{project}/global"

    def _policy_path(self, key: Key) -> str:
        return f"{self._scope_path(key[0], key[1])}/securityPolicies/{key[2]}"

    def _policy(self, key: Key) -> dict[str, Any]:
        policy = self.policies.get(key)
        if policy is None:
            raise not_found(self._policy_path(key))
        return policy

    def _project_rules(self, project: str) -> int:
        committed = sum(len(p["rules"]) for k, p in self.policies.items() if k[0] == project)
        return committed + self._pending_rules[project]

    def _quota_check(self, project: str, adding: int) -> ApiError | None:
        """None if ``adding`` rules fit; else the quota error (raised in http mode)."""
        if self._project_rules(project) + adding <= self.quota:
            return None
        err = ApiError(403, f"Quota 'SECURITY_POLICY_RULES' exceeded.  Limit: "
                            f"{float(self.quota)} globally.", "quotaExceeded", "QUOTA_EXCEEDED")
        if self.quota_mode == "http":
            raise err
        return err

    def _bump(self, policy: dict[str, Any], labels: bool = False) -> None:
        policy["fingerprint"] = self._fingerprint()
        if labels:
            policy["labelFingerprint"] = self._fingerprint()

    @staticmethod
    def _rule_at(policy: dict[str, Any], priority: int) -> dict[str, Any] | None:
        found: dict[str, Any]
        for found in policy["rules"]:
            if found["priority"] == priority:
                return found
        return None

    @staticmethod
    def _no_rule(priority: int) -> ApiError:
        return bad_request(f"Invalid value for field 'priority': '{priority}'. "
                           f"The security policy does not contain a rule at priority {priority}.")

    @staticmethod
    def _duplicate(priority: int) -> ApiError:
        return bad_request(f"The security policy already contains a rule at priority {priority}.")

    # ------------------------------------------------------- operations
    def _new_op(self, key: Key, method: str, *, apply: Callable[[], None] | None = None,
                error: ApiError | None = None, reservations: list[Any] | None = None,
                immediate: bool = False, op_error: bool = False) -> Operation:
        if op_error:  # injected fault: validated, then fails inside the backend
            apply, reservations = None, []
            error = ApiError(500, "Internal error. Please try again or contact Google Support.",
                             "backendError", "INTERNAL_ERROR")
        mono, wall = time.monotonic(), time.time()
        name = f"operation-{int(wall * 1000)}-{uuid.uuid4().hex[:13]}"
        if key[0] == "lro":  # a Network Security long-running operation
            lro = Operation(("lro", key[1], key[2], name), {"verb": method}, mono, wall,
                            mono if immediate else mono + self._delay(), apply, error,
                            list(reservations or []), target=key, api="lro")
            return self._register(lro, immediate)
        project, region, _ = key
        scope = self._scope_path(project, region)
        policy = self.policies.get(key)
        record = {
            "kind": "compute#operation",
            "id": self._new_id(),
            "name": name,
            "operationType": OPERATION_TYPES[method],
            "targetLink": BASE_URL + self._policy_path(key),
            "targetId": policy["id"] if policy else self._new_id(),
            "user": "localapi@example.com",
            "insertTime": _now_rfc3339(wall),
            "selfLink": f"{BASE_URL}{scope}/operations/{name}",
        }
        if region:
            record["region"] = f"{BASE_URL}projects/{project}/regions/{region}"
        op = Operation((project, region, name), record, mono, wall,
                       mono if immediate else mono + self._delay(),
                       apply, error, list(reservations or []), target=key)
        return self._register(op, immediate)

    def _register(self, op: Operation, immediate: bool) -> Operation:
        for kind, *what in op.reservations:
            if kind == "priority":
                self._reserved.setdefault(what[0], set()).add(what[1])
            elif kind == "name":
                self._pending_names.add(what[0])
            elif kind == "quota":
                self._pending_rules[what[0]] += what[1]
            elif kind == "group":
                self._pending_group_names.add(what[0])
            elif kind == "ref":
                self._pending_refs[what[0]] += 1
            elif kind == "ceval":
                self._pending_ceval[what[0]] += what[1]
        self.operations[op.key] = op
        self._pending.append(op)
        if immediate:
            self.tick()
        return op

    def _release(self, op: Operation) -> None:
        for kind, *what in op.reservations:
            if kind == "priority":
                self._reserved.get(what[0], set()).discard(what[1])
            elif kind == "name":
                self._pending_names.discard(what[0])
            elif kind == "quota":
                self._pending_rules[what[0]] -= what[1]
            elif kind == "group":
                self._pending_group_names.discard(what[0])
            elif kind == "ref":
                self._pending_refs[what[0]] -= 1
            elif kind == "ceval":
                self._pending_ceval[what[0]] -= what[1]

    def tick(self, now: float | None = None) -> None:
        """Commit every pending operation whose end time has come, in end-time order."""
        with self.lock:
            now = time.monotonic() if now is None else now
            due = sorted((op for op in self._pending if op.done_at <= now),
                         key=lambda op: op.done_at)
            if not due:
                return
            changed = False
            for op in due:
                self._pending.remove(op)
                self._release(op)
                op.done = True
                if op.error is None and op.apply is not None:
                    try:
                        result = op.apply()
                        if isinstance(result, dict):
                            op.response = result
                        changed = True
                    except ApiError as err:
                        op.error = err
            if changed:
                self._save()
            self.lock.notify_all()

    def settle(self) -> None:
        """Commit all pending operations now."""
        with self.lock:
            now = time.monotonic()
            for op in self._pending:
                op.done_at = min(op.done_at, now)
            self.tick(now)

    def render_op(self, op: Operation) -> dict[str, Any]:
        if op.api == "lro":
            return self.render_lro(op)
        rec = dict(op.record)
        half = op.issued + (op.done_at - op.issued) / 2

        def wall(mono: float) -> str:
            return _now_rfc3339(op.wall + (mono - op.issued))

        if op.done:
            rec.update(status="DONE", progress=100, startTime=wall(half), endTime=wall(op.done_at))
            if op.error is not None:
                rec.update(op.error.operation_fields())
        elif time.monotonic() < half:
            rec.update(status="PENDING", progress=0)
        else:
            rec.update(status="RUNNING", progress=50, startTime=wall(half))
        return rec

    def _not_ready(self, key: Key, method: str, query: dict[str, Any]) -> Operation | None:
        """With ``serialize_operations``, refuse a mutation of a policy that has an
        operation not yet DONE: raise 400 resourceNotReady ("http" mode) or return
        an operation already DONE with RESOURCE_NOT_READY ("operation" mode).
        None when the mutation may proceed.  A replayed ``requestId`` proceeds:
        it only returns the first operation again."""
        if not self.serialize_operations or method not in SERIALIZED_METHODS:
            return None
        request_id = query.get("requestId")
        if request_id and (key[0], request_id) in self._request_ids:
            return None
        if not any(op.target == key for op in self._pending):
            return None
        err = ApiError(400, f"The resource '{self._policy_path(key)}' is not ready",
                       "resourceNotReady", "RESOURCE_NOT_READY")
        if self.not_ready_mode == "http":
            raise err
        return self._new_op(key, method, error=err, immediate=True)

    def _op_lookup(self, project: str, region: str | None, name: str) -> Operation:
        op = self.operations.get((project, region, name))
        if op is None:
            raise not_found(f"{self._scope_path(project, region)}/operations/{name}")
        return op

    # ------------------------------------------------------ persistence
    def _save(self) -> None:
        if not self.state_file:
            return
        data = {"policies": [{"project": k[0], "region": k[1], "policy": p}
                             for k, p in sorted(self.policies.items(), key=lambda kv: str(kv[0]))],
                "addressGroups": [{"project": k[0], "location": k[1], "group": g}
                                  for k, g in sorted(self.groups.items())]}
        directory = os.path.dirname(os.path.abspath(self.state_file))
        fd, tmp = tempfile.mkstemp(prefix=".localapi-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.state_file)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _load(self) -> None:
        with open(self.state_file, encoding="utf-8") as fh:  # type: ignore[arg-type]
            data = json.load(fh)
        for item in data.get("policies", []):
            policy = item["policy"]
            self.policies[(item["project"], item.get("region"), policy["name"])] = policy
        for item in data.get("addressGroups", []):
            group = item["group"]
            self.groups[(item["project"], item["location"],
                         group["name"].rsplit("/", 1)[-1])] = group

    # ------------------------------------------------------- public view
    def policy(self, project: str, name: str, region: str | None = None) -> dict[str, Any] | None:
        """A deep copy of the committed policy (rules sorted by priority), or None."""
        with self.lock:
            self.tick()
            p = self.policies.get((project, region, name))
            return self._render_policy(p) if p else None

    @staticmethod
    def _render_policy(policy: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(policy)
        out["rules"].sort(key=lambda r: r["priority"])
        return out

    # -------------------------------------------------------- dispatch
    def dispatch(self, method: str, params: dict[str, Any], query: dict[str, Any], body: Any,
                 op_error: bool = False) -> tuple[dict[str, Any], Operation | None]:
        """Run one API method; returns (response payload, operation created or None)."""
        with self.lock:
            self.tick()
            project, region = params["project"], params.get("region")
            if method in ("get_op", "wait_op"):
                op = self._op_lookup(project, region, params["operation"])
                if method == "wait_op":
                    deadline = time.monotonic() + self.wait_timeout
                    while not op.done and time.monotonic() < deadline:
                        self.lock.wait(max(0.0, min(op.done_at, deadline) - time.monotonic()))
                        self.tick()
                return self.render_op(op), None
            name = params.get("securityPolicy") or params.get("resource")
            key = (project, region, name)
            refused = self._not_ready(key, method, query)
            if refused is not None:
                return self.render_op(refused), refused
            handler = getattr(self, "_m_" + method)
            result = handler(key, query, body if body is not None else {}, op_error)
            if isinstance(result, Operation):
                return self.render_op(result), result
            return result, None

    # -------------------------------------------------------- policies
    def _m_insert(self, key: Key, q: dict[str, str], body: Any, op_error: bool) -> Any:
        project, region, _ = key
        request_id = q.get("requestId")
        if request_id and (project, request_id) in self._request_ids:
            return self.operations[self._request_ids[(project, request_id)]]
        if not isinstance(body, dict):
            raise bad_request("Invalid value for field 'resource': a policy object is required.")
        name = R.validate_name(body.get("name"))
        key = (project, region, name)
        if key in self.policies or key in self._pending_names:
            raise ApiError(409, f"The resource '{self._policy_path(key)}' already exists",
                           "alreadyExists")
        rules: list[dict[str, Any]] = []
        ref_reservations: list[Any] = []
        ref_error: ApiError | None = None
        for rule in body.get("rules") or []:
            rule = R.validate_rule(rule)
            if self._rule_at({"rules": rules}, rule["priority"]):
                raise self._duplicate(rule["priority"])
            if "expr" in rule["match"]:
                held, err = self.check_rule_refs(key, rule)
                ref_reservations += held
                ref_error = ref_error or err
            rules.append(rule)
        if not self._rule_at({"rules": rules}, R.DEFAULT_PRIORITY):
            rules.append(R.default_rule())
        ptype = body.get("type", "CLOUD_ARMOR")
        if ptype not in ("CLOUD_ARMOR", "CLOUD_ARMOR_EDGE", "CLOUD_ARMOR_NETWORK"):
            raise bad_request(f"Invalid value for field 'resource.type': '{ptype}'.")
        description = body.get("description", "")
        if not isinstance(description, str) or len(description) > R.MAX_POLICY_DESCRIPTION:
            raise bad_request("Invalid value for field 'resource.description': at most "
                              f"{R.MAX_POLICY_DESCRIPTION} characters.")
        policy = {k: copy.deepcopy(v) for k, v in body.items() if k not in POLICY_READ_ONLY}
        policy.update(
            kind="compute#securityPolicy", id=self._new_id(), name=name,
            creationTimestamp=_now_rfc3339(time.time()), selfLink=BASE_URL + self._policy_path(key),
            description=description, rules=rules, type=ptype,
            labels=R.validate_labels(body.get("labels")),
            fingerprint=self._fingerprint(), labelFingerprint=self._fingerprint())
        if region:
            policy["region"] = f"{BASE_URL}projects/{project}/regions/{region}"
        quota_error = self._quota_check(project, len(rules)) or ref_error
        if parse_bool(q.get("validateOnly"), "validateOnly"):
            return self._new_op(key, "insert", error=quota_error, immediate=True)

        def apply() -> None:
            if key in self.policies:
                raise ApiError(409, f"The resource '{self._policy_path(key)}' already exists",
                               "alreadyExists")
            policy["creationTimestamp"] = _now_rfc3339(time.time())
            self.policies[key] = policy

        op = self._new_op(key, "insert", apply=apply, error=quota_error, op_error=op_error,
                          reservations=[] if quota_error else
                          [("name", key), ("quota", project, len(rules))] + ref_reservations)
        if request_id:
            self._request_ids[(project, request_id)] = op.key
        return op

    def _m_get(self, key: Key, q: dict[str, str], body: Any, op_error: bool) -> Any:
        return self._render_policy(self._policy(key))

    def _m_list(self, key: Key, q: dict[str, str], body: Any, op_error: bool) -> Any:
        project, region, _ = key
        items = [self._render_policy(p) for k, p in sorted(self.policies.items())
                 if k[0] == project and k[1] == region]
        flt = (q.get("filter") or "").strip()
        if flt:
            m = re.fullmatch(r'\(?\s*(\w+)\s*(=|!=|eq|ne)\s*"?([^"]*?)"?\s*\)?', flt)
            if not m:
                raise bad_request(f"Invalid list filter expression '{flt}'.")
            fld, op, value = m.groups()
            tests: dict[str, Callable[[str], bool]] = {
                "=": lambda v: v == value, "!=": lambda v: v != value,
                "eq": lambda v: re.fullmatch(value, v) is not None,
                "ne": lambda v: re.fullmatch(value, v) is None}
            test = tests[op]
            items = [p for p in items if test(str(p.get(fld, "")))]
        try:
            size = int(q.get("maxResults", 500))
            start = int(q.get("pageToken") or 0)
        except ValueError:
            raise bad_request("Invalid value for field 'maxResults' or 'pageToken'.") from None
        if not 0 <= size <= 500 or start < 0:
            raise bad_request("Invalid value for field 'maxResults' (0..500) or 'pageToken'.")
        size = size or 500
        scope = self._scope_path(project, region)
        out = {"kind": "compute#securityPolicyList", "id": f"{scope}/securityPolicies",
               "items": items[start:start + size], "selfLink": f"{BASE_URL}{scope}/securityPolicies"}
        if start + size < len(items):
            out["nextPageToken"] = str(start + size)
        return out

    def _m_patch(self, key: Key, q: dict[str, str], body: Any, op_error: bool) -> Any:
        project = key[0]
        request_id = q.get("requestId")
        if request_id and (project, request_id) in self._request_ids:
            return self.operations[self._request_ids[(project, request_id)]]
        policy = self._policy(key)
        if body.get("rules"):
            raise bad_request("Rules cannot be updated with patch, please use addRule, "
                              "removeRule, or patchRule instead.")
        expected = body.get("fingerprint")
        if expected is not None and expected != policy["fingerprint"]:
            raise self._stale()
        if body.get("name", key[2]) != key[2]:
            raise bad_request("Invalid value for field 'resource.name': the name cannot change.")
        if "type" in body and body["type"] != policy["type"]:
            raise bad_request("Invalid value for field 'resource.type': the type can be set only "
                              "at resource creation time.")
        if "labels" in body and body["labels"] != policy.get("labels", {}):
            raise bad_request("Labels cannot be updated with patch, please use setLabels instead.")
        mask = R.parse_mask(q.get("updateMask"))
        ignored = POLICY_READ_ONLY | {"rules", "labels", "type"}
        if mask is not None:
            mask = [camel(p) for p in mask]
            bad = [p for p in mask if p.split(".")[0] in ignored]
            if bad:
                raise bad_request(f"Invalid value for field 'updateMask': {bad} cannot be patched.")
        description = body.get("description", "")
        if not isinstance(description, str) or len(description) > R.MAX_POLICY_DESCRIPTION:
            raise bad_request("Invalid value for field 'resource.description': at most "
                              f"{R.MAX_POLICY_DESCRIPTION} characters.")
        checked = policy["fingerprint"]

        def apply() -> None:
            current = self._policy(key)
            if expected is not None and current["fingerprint"] != checked:
                raise self._stale()
            if mask is not None:
                updated = R.apply_mask(current, body, mask)
            else:
                updated = copy.deepcopy(current)
                updated.update({k: copy.deepcopy(v) for k, v in body.items() if k not in ignored})
            current.clear()
            current.update(updated)
            self._bump(current)

        op = self._new_op(key, "patch", apply=apply, op_error=op_error)
        if request_id:
            self._request_ids[(project, request_id)] = op.key
        return op

    @staticmethod
    def _stale() -> ApiError:
        return ApiError(412, "Supplied fingerprint does not match current resource fingerprint.",
                        "conditionNotMet")

    def _m_delete(self, key: Key, q: dict[str, str], body: Any, op_error: bool) -> Any:
        self._policy(key)

        def apply() -> None:
            self._policy(key)
            del self.policies[key]

        return self._new_op(key, "delete", apply=apply, op_error=op_error)

    def _m_setLabels(self, key: Key, q: dict[str, str], body: Any, op_error: bool) -> Any:
        policy = self._policy(key)
        if "labelFingerprint" not in body:
            raise bad_request("Required field 'labelFingerprint' not specified.")
        expected = body["labelFingerprint"]
        if expected != policy["labelFingerprint"]:
            raise ApiError(412, "Labels fingerprint either invalid or resource labels have changed",
                           "conditionNotMet")
        labels = R.validate_labels(body.get("labels"))

        def apply() -> None:
            current = self._policy(key)
            if current["labelFingerprint"] != expected:
                raise ApiError(412, "Labels fingerprint either invalid or resource labels have "
                                    "changed", "conditionNotMet")
            current["labels"] = labels
            self._bump(current, labels=True)

        return self._new_op(key, "setLabels", apply=apply, op_error=op_error)

    # ----------------------------------------------------------- rules
    def _m_getRule(self, key: Key, q: dict[str, str], body: Any, op_error: bool) -> Any:
        priority = R.parse_priority(q.get("priority", 0))
        rule = self._rule_at(self._policy(key), priority)
        if rule is None:
            raise self._no_rule(priority)
        return copy.deepcopy(rule)

    def _m_addRule(self, key: Key, q: dict[str, str], body: Any, op_error: bool) -> Any:
        policy = self._policy(key)
        rule = R.validate_rule(body)
        priority = rule["priority"]
        error = None
        if self._rule_at(policy, priority) or priority in self._reserved.get(key, ()):
            if self.duplicate_mode == "http":
                raise self._duplicate(priority)
            error = self._duplicate(priority)
        error = error or self._quota_check(key[0], 1)
        held, ceval_error = self.check_rule_refs(key, rule)
        error = error or ceval_error
        if parse_bool(q.get("validateOnly"), "validateOnly"):
            return self._new_op(key, "addRule", error=error, immediate=True)

        def apply() -> None:
            current = self._policy(key)
            if self._rule_at(current, priority):
                raise self._duplicate(priority)
            current["rules"].append(rule)
            self._bump(current)

        reservations = [] if error else [("priority", key, priority), ("quota", key[0], 1)] + held
        return self._new_op(key, "addRule", apply=apply, error=error, op_error=op_error,
                            reservations=reservations)

    def _m_patchRule(self, key: Key, q: dict[str, str], body: Any, op_error: bool) -> Any:
        priority = R.parse_priority(q.get("priority", 0))
        policy = self._policy(key)
        if not isinstance(body, dict):
            raise bad_request("Invalid value for field 'resource': a rule object is required.")
        if "priority" in body and R.parse_priority(body["priority"], "resource.priority") != priority:
            raise bad_request("Invalid value for field 'resource.priority': patchRule cannot "
                              "change a rule's priority; remove the rule and add it again.")
        mask = R.parse_mask(q.get("updateMask"))
        mask = None if mask is None else [camel(p) for p in mask]

        def patched(old: dict[str, Any]) -> dict[str, Any]:
            if mask is not None:
                new = R.apply_mask(old, body, mask)
            else:
                new = copy.deepcopy(old)
                new.update({k: copy.deepcopy(v) for k, v in body.items() if k != "kind"})
            new["priority"] = priority
            if (old.get("action") in R.RATE_LIMITED) != (new.get("action") in R.RATE_LIMITED):
                raise bad_request(
                    f"Invalid value for field 'resource.rateLimitOptions': the action of the rule "
                    f"at priority {priority} cannot change from '{old.get('action')}' to "
                    f"'{new.get('action')}' with patchRule; rateLimitOptions can only be set with "
                    f"throttle or rate_based_ban. Remove the rule and add it again.")
            return R.validate_rule(new)

        old = self._rule_at(policy, priority)
        if old is None:
            raise self._no_rule(priority)
        held, ceval_error = self.check_rule_refs(key, patched(old), old)
        if parse_bool(q.get("validateOnly"), "validateOnly"):
            return self._new_op(key, "patchRule", error=ceval_error, immediate=True)
        if ceval_error is not None:
            return self._new_op(key, "patchRule", error=ceval_error, op_error=op_error)

        def apply() -> None:
            current = self._policy(key)
            rule = self._rule_at(current, priority)
            if rule is None:
                raise self._no_rule(priority)
            new = patched(rule)
            rule.clear()
            rule.update(new)
            self._bump(current)

        return self._new_op(key, "patchRule", apply=apply, op_error=op_error, reservations=held)

    def _m_removeRule(self, key: Key, q: dict[str, str], body: Any, op_error: bool) -> Any:
        priority = R.parse_priority(q.get("priority", 0))
        policy = self._policy(key)
        if priority == R.DEFAULT_PRIORITY:
            raise bad_request(f"Invalid value for field 'priority': '{priority}'. "
                              "The default rule cannot be removed.")
        if self._rule_at(policy, priority) is None:
            raise self._no_rule(priority)

        def apply() -> None:
            current = self._policy(key)
            rule = self._rule_at(current, priority)
            if rule is None:
                raise self._no_rule(priority)
            current["rules"].remove(rule)
            self._bump(current)

        return self._new_op(key, "removeRule", apply=apply, op_error=op_error)
