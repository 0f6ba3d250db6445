"""Address groups (Network Security API v1) and their long-running operations.

:class:`AddressGroupMethods` is mixed into :class:`localapi.state.CloudArmorState`
so that groups and security policies share one lock, one clock and one queue
of pending operations: a rule that references a group and the group's
deletion see each other.  What is enforced, and which choices are ours where
Google documents nothing, is listed in README.md ("Address groups").

Shapes follow the Network Security API: a mutation answers a
``google.longrunning.Operation`` (``name``, ``metadata`` (OperationMetadata),
``done``, then ``response`` (the AddressGroup, or Empty for delete) or
``error`` (google.rpc.Status)); errors answered at once are
``{"error": {"code", "message", "status", "details"}}``.
"""
from __future__ import annotations

import copy
import ipaddress
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from . import rules as R
from .errors import ApiError, bad_request
from .wire import _now_rfc3339, camel

if TYPE_CHECKING:
    from .state import Operation

NS_BASE_URL = "https://networksecurity.googleapis.com/v1/"
TYPE_PREFIX = "type.googleapis.com/"
GROUP_TYPE = TYPE_PREFIX + "google.cloud.networksecurity.v1.AddressGroup"
METADATA_TYPE = TYPE_PREFIX + "google.cloud.networksecurity.v1.OperationMetadata"
EMPTY_TYPE = TYPE_PREFIX + "google.protobuf.Empty"

#: ``addressGroupId``: 1-63 characters, letters, digits, hyphens and
#: underscores, not starting with a digit (REST reference).  We require a
#: letter first (strict: a leading '-' or '_' is not documented either way).
GROUP_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}\Z")
LOCATION_RE = re.compile(r"global\Z|[a-z]+-[a-z]+[0-9]+\Z")
TYPES = {"IPV4": 4, "IPV6": 6}
TYPE_NUMBERS = {1: "IPV4", 2: "IPV6"}  # ``$alt=json;enum-encoding=int``
PURPOSES = ("DEFAULT", "CLOUD_ARMOR")
PURPOSE_NUMBERS = {1: "DEFAULT", 2: "CLOUD_ARMOR"}
#: A group without purpose CLOUD_ARMOR holds at most this many items (documented).
NON_ARMOR_MAX_CAPACITY = 1000
MUTABLE = ("description", "labels", "items")
FIXED = ("type", "capacity", "purpose")
UUID_ZERO = "00000000-0000-0000-0000-000000000000"

# ErrorInfo reasons.  Google's real reasons are not documented; these are ours.
TIER_REQUIRED = "CLOUD_ARMOR_ENTERPRISE_REQUIRED"
CAPACITY_EXCEEDED = "ADDRESS_GROUP_CAPACITY_EXCEEDED"
ITEM_EXISTS = "ADDRESS_GROUP_ITEM_ALREADY_EXISTS"
ITEM_ABSENT = "ADDRESS_GROUP_ITEM_NOT_FOUND"
WRONG_FAMILY = "ADDRESS_GROUP_ITEM_WRONG_TYPE"
IN_USE = "ADDRESS_GROUP_IN_USE"
TOO_MANY_ITEMS = "TOO_MANY_ITEMS_PER_CALL"

GroupKey = tuple[str, str, str]  # (project, location, name)


def group_path(key: GroupKey) -> str:
    return f"projects/{key[0]}/locations/{key[1]}/addressGroups/{key[2]}"


def invalid(message: str, info: str | None = None, **metadata: str) -> ApiError:
    return ApiError(400, message, "invalid", status="INVALID_ARGUMENT", info=info,
                    metadata=metadata)


def precondition(message: str, info: str, **metadata: str) -> ApiError:
    return ApiError(400, message, "failedPrecondition", status="FAILED_PRECONDITION",
                    info=info, metadata=metadata)


def ns_not_found(what: str) -> ApiError:
    return ApiError(404, f"Resource '{what}' was not found", "notFound", status="NOT_FOUND")


def tier_error(project: str, what: str) -> ApiError:
    return precondition(
        f"{what} requires a Cloud Armor Enterprise subscription; project '{project}' is on the "
        f"Cloud Armor Standard tier. Enroll the project in Cloud Armor Enterprise first.",
        TIER_REQUIRED, project=project)


def parse_item(item: Any, family: int, group: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One item: an address or a CIDR of the group's family, no host bits set
    (strict: Google does not document what it does with them)."""
    if not isinstance(item, str) or item != item.strip() or not item:
        raise invalid(f"Invalid item '{item}': an IP address or CIDR range is required.")
    try:
        net = ipaddress.ip_network(item, strict=True)
    except ValueError:
        raise invalid(f"Invalid item '{item}': not a valid IP address or CIDR range "
                      f"(host bits must be zero).") from None
    if net.version != family:
        raise invalid(f"Invalid item '{item}': address group '{group}' is of type "
                      f"IPV{family} and accepts only IPv{family} items.", WRONG_FAMILY)
    return net


def parse_request_id(value: Any) -> str | None:
    """None when absent; a valid UUID other than the zero UUID otherwise."""
    if value in (None, ""):
        return None
    try:
        parsed = uuid.UUID(str(value))
    except ValueError:
        raise invalid(f"Invalid request_id '{value}': must be a valid UUID.") from None
    if str(parsed) == UUID_ZERO:
        raise invalid("Invalid request_id: the zero UUID is not supported.")
    return str(parsed)


def _enum(value: Any, numbers: dict[int, str], names: tuple[str, ...] | dict[str, int],
          field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value in numbers:
        return numbers[value]
    if isinstance(value, str) and value in names:
        return value
    raise invalid(f"Invalid value for field '{field}': '{value}'.")


class AddressGroupMethods:
    """The Network Security methods of :class:`~localapi.state.CloudArmorState`.

    Relies on the state's ``lock``, ``tick``, ``_new_op``, ``_save``,
    ``policies`` and the settings below (set by its constructor)."""

    # set by CloudArmorState.__init__
    tier: str
    ceval_quota: int
    max_items_per_call: int
    duplicate_items: str
    absent_items: str
    max_group_capacity: int
    request_id_ttl: float
    max_policy_attributes: int | None
    quota_mode: str
    groups: dict[GroupKey, dict[str, Any]]
    operations: dict[Any, Operation]
    policies: dict[Any, dict[str, Any]]
    _pending: list[Operation]
    _pending_group_names: set[GroupKey]
    _pending_refs: Any  # Counter[(project, name)]
    _pending_ceval: Any  # Counter[project]
    _ns_request_ids: dict[tuple[str, str], tuple[Any, float]]

    if TYPE_CHECKING:
        lock: Any

        def tick(self, now: float | None = None) -> None: ...
        def _new_op(self, key: Any, method: str, **kw: Any) -> Operation: ...
        def render_op(self, op: Operation) -> dict[str, Any]: ...
        def _policy_path(self, key: Any) -> str: ...

    # ------------------------------------------------------------ dispatch
    def dispatch_ns(self, route: str, params: dict[str, Any], query: dict[str, Any], body: Any,
                    op_error: bool = False) -> tuple[dict[str, Any], Operation | None]:
        """Run one Network Security method (route name ``addressGroups.addItems``...)."""
        with self.lock:
            self.tick()
            project, location = params["projectsId"], params["locationsId"]
            if route == "operations.get":
                op = self.operations.get(("lro", project, location, params["operationsId"]))
                if op is None:
                    raise ns_not_found(f"projects/{project}/locations/{location}/operations/"
                                       f"{params['operationsId']}")
                return self.render_op(op), None
            if not LOCATION_RE.match(location):
                raise invalid(f"Invalid location '{location}'.")
            body = body if body is not None else {}
            if not isinstance(body, dict):
                raise invalid("Invalid JSON payload received: an object is required.")
            method = route.split(".", 1)[1]
            key: GroupKey = (project, location, params.get("addressGroupsId") or "")
            mutating = method in ("create", "patch", "delete", "addItems", "removeItems",
                                  "cloneItems")
            if mutating:
                request_id = parse_request_id(
                    query.get("requestId") if method in ("create", "patch", "delete")
                    else body.get("requestId"))
                replay = self._replay(project, request_id)
                if replay is not None:
                    return self.render_op(replay), replay
            result = getattr(self, "_ag_" + method)(key, query, body, op_error)
            if mutating:
                if request_id:
                    self._ns_request_ids[(project, request_id)] = (result.key, time.monotonic())
                return self.render_op(result), result
            return result, None

    def _replay(self, project: str, request_id: str | None) -> Operation | None:
        """The operation of an earlier request with this requestId (within the
        TTL): the repeated request is ignored and that operation answered."""
        if request_id is None:
            return None
        now = time.monotonic()
        for rid, (_, at) in list(self._ns_request_ids.items()):
            if now - at > self.request_id_ttl:
                del self._ns_request_ids[rid]
        seen = self._ns_request_ids.get((project, request_id))
        return self.operations[seen[0]] if seen else None

    # -------------------------------------------------------------- helpers
    def _group(self, key: GroupKey) -> dict[str, Any]:
        group = self.groups.get(key)
        if group is None:
            raise ns_not_found(group_path(key))
        return group

    @staticmethod
    def _family(group: dict[str, Any]) -> int:
        return TYPES[group["type"]]

    def _items_arg(self, body: dict[str, Any], group: dict[str, Any],
                   key: GroupKey) -> list[tuple[str, Any]]:
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise invalid("Invalid value for field 'items': at least one item is required.")
        if len(items) > self.max_items_per_call:
            raise invalid(f"Too many items in one request: {len(items)} given, at most "
                          f"{self.max_items_per_call} per call.", TOO_MANY_ITEMS,
                          limit=str(self.max_items_per_call))
        out: list[tuple[str, Any]] = []
        seen: set[Any] = set()
        for item in items:
            net = parse_item(item, self._family(group), group_path(key))
            if net in seen:
                raise invalid(f"Item '{item}' is given more than once.", ITEM_EXISTS, item=item)
            seen.add(net)
            out.append((item, net))
        return out

    @staticmethod
    def _nets(group: dict[str, Any]) -> dict[Any, str]:
        return {ipaddress.ip_network(i): i for i in group["items"]}

    def _capacity_check(self, key: GroupKey, group: dict[str, Any], count: int) -> None:
        if count > group["capacity"]:
            raise precondition(
                f"Address group '{group_path(key)}' has a capacity of {group['capacity']} items; "
                f"the request would bring it to {count} items.", CAPACITY_EXCEEDED,
                capacity=str(group["capacity"]))

    def _render_group(self, group: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(group)

    def _new_lro(self, key: GroupKey, verb: str, apply: Any, op_error: bool,
                 reservations: list[Any] | None = None) -> Operation:
        return self._new_op(("lro",) + key, verb, apply=apply, op_error=op_error,
                            reservations=reservations)

    def _touch(self, group: dict[str, Any]) -> None:
        group["updateTime"] = _now_rfc3339(time.time())

    # -------------------------------------------------------------- methods
    def _ag_create(self, key: GroupKey, q: dict[str, str], body: dict[str, Any],
                   op_error: bool) -> Operation:

        project, location, _ = key
        name = q.get("addressGroupId")
        if not isinstance(name, str) or not GROUP_NAME_RE.match(name):
            raise invalid(f"Invalid addressGroupId '{name}': it must be 1-63 characters long, "
                          "contain only letters, digits, hyphens and underscores, and not "
                          "start with a digit.")
        key = (project, location, name)
        gtype = _enum(body.get("type"), TYPE_NUMBERS, TYPES, "type")
        capacity = body.get("capacity")
        if isinstance(capacity, str) and capacity.isdigit():
            capacity = int(capacity)
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity <= 0:
            raise invalid(f"Invalid value for field 'capacity': '{capacity}'. "
                          "A positive capacity is required.")
        raw_purpose = body.get("purpose") or []
        if not isinstance(raw_purpose, list):
            raise invalid("Invalid value for field 'purpose': a list is required.")
        purpose = sorted({_enum(p, PURPOSE_NUMBERS, PURPOSES, "purpose") for p in raw_purpose})
        armor = "CLOUD_ARMOR" in purpose
        if armor and self.tier != "enterprise":
            raise tier_error(project, "An address group with purpose CLOUD_ARMOR")
        limit = self.max_group_capacity if armor else NON_ARMOR_MAX_CAPACITY
        if capacity > limit:
            raise invalid(f"Invalid value for field 'capacity': {capacity}. The maximum capacity "
                          f"of an address group {'with' if armor else 'without'} purpose "
                          f"CLOUD_ARMOR is {limit}.", CAPACITY_EXCEEDED, capacity=str(limit))
        description = body.get("description", "")
        if not isinstance(description, str) or len(description) > R.MAX_POLICY_DESCRIPTION:
            raise invalid("Invalid value for field 'description'.")
        if key in self.groups or key in self._pending_group_names:
            raise ApiError(409, f"Resource '{group_path(key)}' already exists", "alreadyExists",
                           status="ALREADY_EXISTS")
        group: dict[str, Any] = {
            "name": group_path(key), "description": description,
            "labels": R.validate_labels(body.get("labels")), "type": gtype, "items": [],
            "capacity": capacity, "purpose": purpose,
            "selfLink": NS_BASE_URL + group_path(key)}
        if body.get("items"):
            group["items"] = [i for i, _ in self._items_arg(body, group, key)]
            self._capacity_check(key, group, len(group["items"]))

        def apply() -> dict[str, Any]:
            if key in self.groups:
                raise ApiError(409, f"Resource '{group_path(key)}' already exists",
                               "alreadyExists", status="ALREADY_EXISTS")
            group["createTime"] = group["updateTime"] = _now_rfc3339(time.time())
            self.groups[key] = group
            return self._render_group(group)

        return self._new_lro(key, "create", apply, op_error, [("group", key)])

    def _ag_get(self, key: GroupKey, q: dict[str, str], body: Any, op_error: bool) -> Any:
        return self._render_group(self._group(key))

    @staticmethod
    def _page(q: dict[str, str], default: int = 50, maximum: int = 1000) -> tuple[int, int]:
        try:
            size = int(q.get("pageSize") or default)
            start = int(q.get("pageToken") or 0)
        except ValueError:
            raise invalid("Invalid pageSize or pageToken.") from None
        if size < 0 or start < 0:
            raise invalid("Invalid pageSize or pageToken.")
        return min(size or default, maximum), start

    def _ag_list(self, key: GroupKey, q: dict[str, str], body: Any, op_error: bool) -> Any:
        project, location, _ = key
        size, start = self._page(q)
        found = [self._render_group(g) for k, g in sorted(self.groups.items())
                 if k[0] == project and k[1] == location]
        out: dict[str, Any] = {"addressGroups": found[start:start + size]}
        if start + size < len(found):
            out["nextPageToken"] = str(start + size)
        return out

    def _ag_patch(self, key: GroupKey, q: dict[str, str], body: dict[str, Any],
                  op_error: bool) -> Operation:

        group = self._group(key)
        mask = R.parse_mask(q.get("updateMask"))
        fields = [camel(p) for p in mask] if mask else list(MUTABLE)
        for f in fields:
            if f in FIXED:
                raise invalid(f"Invalid update mask: field '{f}' cannot be changed after the "
                              "address group is created.")
            if f not in MUTABLE:
                raise invalid(f"Invalid update mask: unknown or read-only field '{f}'.")
        for f in FIXED:  # fixed at creation: a body may repeat them, not change them
            if f in body and f not in fields:
                given = body[f]
                if f == "type":
                    given = _enum(given, TYPE_NUMBERS, TYPES, "type")
                elif f == "purpose":
                    given = sorted({_enum(p, PURPOSE_NUMBERS, PURPOSES, "purpose")
                                    for p in given or []})
                if given != group[f]:
                    raise invalid(f"Invalid value for field '{f}': it cannot be changed after "
                                  "the address group is created.")
        changes: dict[str, Any] = {}
        if "description" in fields:
            description = body.get("description", "")
            if not isinstance(description, str) or len(description) > R.MAX_POLICY_DESCRIPTION:
                raise invalid("Invalid value for field 'description'.")
            changes["description"] = description
        if "labels" in fields:
            changes["labels"] = R.validate_labels(body.get("labels"))
        if "items" in fields:
            items = body.get("items") or []
            changes["items"] = ([i for i, _ in self._items_arg(body, group, key)]
                                if items else [])
            self._capacity_check(key, group, len(changes["items"]))

        def apply() -> dict[str, Any]:
            current = self._group(key)
            current.update(copy.deepcopy(changes))
            self._touch(current)
            return self._render_group(current)

        return self._new_lro(key, "update", apply, op_error)

    def _references(self, key: GroupKey) -> list[tuple[str, int]]:
        """(security policy path, rule priority) of every committed rule that
        references the global group ``key``."""
        project, location, name = key
        if location != "global":
            return []
        out = []
        for pkey, policy in sorted(self.policies.items(), key=lambda kv: str(kv[0])):
            if pkey[0] != project:
                continue
            for rule in policy["rules"]:
                if name in R.group_refs(rule):
                    out.append((self._policy_path(pkey), int(rule["priority"])))
        return out

    def _in_use(self, key: GroupKey) -> ApiError | None:
        refs = self._references(key)
        if refs:
            policy, priority = refs[0]
            return precondition(
                f"Address group '{group_path(key)}' is referenced by security policy "
                f"'{policy}' (rule priority {priority}) and cannot be deleted.", IN_USE,
                securityPolicy=policy, rulePriority=str(priority))
        if self._pending_refs[(key[0], key[2])] and key[1] == "global":
            return precondition(
                f"Address group '{group_path(key)}' is referenced by a security policy rule "
                f"being added and cannot be deleted.", IN_USE)
        return None

    def _ag_delete(self, key: GroupKey, q: dict[str, str], body: Any,
                   op_error: bool) -> Operation:
        self._group(key)
        error = self._in_use(key)
        if error is not None:
            raise error

        def apply() -> dict[str, Any]:
            self._group(key)
            err = self._in_use(key)
            if err is not None:
                raise err
            del self.groups[key]
            return {"@type": EMPTY_TYPE}

        return self._new_lro(key, "delete", apply, op_error)

    def _ag_addItems(self, key: GroupKey, q: dict[str, str], body: dict[str, Any],
                     op_error: bool) -> Operation:
        group = self._group(key)
        items = self._items_arg(body, group, key)

        def new_items(current: dict[str, Any]) -> list[str]:
            present = self._nets(current)
            fresh = []
            for item, net in items:
                if net in present:
                    if self.duplicate_items == "error":
                        raise invalid(f"Item '{item}' already exists in address group "
                                      f"'{group_path(key)}'.", ITEM_EXISTS, item=item)
                    continue
                fresh.append(item)
            self._capacity_check(key, current, len(current["items"]) + len(fresh))
            return fresh

        new_items(group)

        def apply() -> dict[str, Any]:
            current = self._group(key)
            current["items"].extend(new_items(current))
            self._touch(current)
            return self._render_group(current)

        return self._new_lro(key, "addItems", apply, op_error)

    def _ag_removeItems(self, key: GroupKey, q: dict[str, str], body: dict[str, Any],
                        op_error: bool) -> Operation:
        group = self._group(key)
        items = self._items_arg(body, group, key)

        def check(current: dict[str, Any]) -> set[Any]:
            present = self._nets(current)
            gone = set()
            for item, net in items:
                if net not in present:
                    if self.absent_items == "error":
                        raise invalid(f"Item '{item}' does not exist in address group "
                                      f"'{group_path(key)}'.", ITEM_ABSENT, item=item)
                    continue
                gone.add(net)
            return gone

        check(group)

        def apply() -> dict[str, Any]:
            current = self._group(key)
            gone = check(current)
            current["items"] = [i for i in current["items"]
                                if ipaddress.ip_network(i) not in gone]
            self._touch(current)
            return self._render_group(current)

        return self._new_lro(key, "removeItems", apply, op_error)

    def _ag_cloneItems(self, key: GroupKey, q: dict[str, str], body: dict[str, Any],
                       op_error: bool) -> Operation:
        group = self._group(key)
        source = body.get("sourceAddressGroup")
        m = re.fullmatch(r"projects/([^/]+)/locations/([^/]+)/addressGroups/([^/]+)",
                         str(source or ""))
        if m is None:
            raise invalid(f"Invalid sourceAddressGroup '{source}'.")
        src_key: GroupKey = (m.group(1), m.group(2), m.group(3))
        if self._group(src_key)["type"] != group["type"]:
            raise invalid("The source address group is of another type.", WRONG_FAMILY)

        def merged(current: dict[str, Any]) -> list[str]:
            present = self._nets(current)
            extra = [i for i in self._group(src_key)["items"]
                     if ipaddress.ip_network(i) not in present]
            self._capacity_check(key, current, len(current["items"]) + len(extra))
            return extra

        merged(group)

        def apply() -> dict[str, Any]:
            current = self._group(key)
            current["items"].extend(merged(current))
            self._touch(current)
            return self._render_group(current)

        return self._new_lro(key, "cloneItems", apply, op_error)

    def _ag_listReferences(self, key: GroupKey, q: dict[str, str], body: Any,
                           op_error: bool) -> Any:
        self._group(key)
        size, start = self._page(q)
        refs = [{"securityPolicy": p, "rulePriority": n} for p, n in self._references(key)]
        out: dict[str, Any] = {"addressGroupReferences": refs[start:start + size]}
        if start + size < len(refs):
            out["nextPageToken"] = str(start + size)
        return out

    # ------------------------------------------------------ rendering (LRO)
    def render_lro(self, op: Operation) -> dict[str, Any]:

        _, project, location, name = op.key
        meta: dict[str, Any] = {
            "@type": METADATA_TYPE, "createTime": _now_rfc3339(op.wall),
            "target": group_path(op.target[1:]) if op.target else "",  # type: ignore[arg-type]
            "verb": op.record["verb"], "apiVersion": "v1", "requestedCancellation": False}
        out: dict[str, Any] = {"name": f"projects/{project}/locations/{location}/operations/{name}",
                               "metadata": meta, "done": op.done}
        if op.done:
            meta["endTime"] = _now_rfc3339(op.wall + (op.done_at - op.issued))
            if op.error is not None:
                out["error"] = op.error.rpc_status()
            else:
                response = dict(op.response or {})
                response.setdefault("@type", GROUP_TYPE)
                out["response"] = response
        return out

    # -------------------------------------- security policy rules (compute)
    def check_rule_refs(self, key: Any, rule: dict[str, Any], old: dict[str, Any] | None = None
                        ) -> tuple[list[Any], ApiError | None]:
        """Validate a rule's address-group references and count it against the
        advanced-rule quota.  ``key`` is the policy's (project, region, name);
        ``old`` the rule it replaces (patchRule).  Returns the reservations for
        the pending operation and a quota error to record on it (quota_mode
        "operation"); raises ApiError for anything else."""
        project, region, _ = key
        reservations: list[Any] = []
        expr = "expr" in rule.get("match", {})
        names = R.group_refs(rule)
        if names:
            if self.tier != "enterprise":
                raise bad_request(
                    f"Invalid value for field 'resource.match.expr': evaluateAddressGroup "
                    f"requires a Cloud Armor Enterprise subscription; project '{project}' is "
                    f"on the Cloud Armor Standard tier.")
            policy = self.policies.get(key)
            if region is not None or (policy and policy.get("type", "CLOUD_ARMOR")
                                      != "CLOUD_ARMOR"):
                raise bad_request(
                    "Invalid value for field 'resource.match.expr': address groups can be "
                    "used only in global backend security policies (type CLOUD_ARMOR).")
            for name in names:
                self.check_group_usable(project, name)
                reservations.append(("ref", (project, name)))
            if self.max_policy_attributes is not None and policy is not None:
                others = [r for r in policy["rules"] if r["priority"] != rule["priority"]]
                total = self.policy_attributes(project, others + [rule])
                if total > self.max_policy_attributes:
                    raise bad_request(
                        f"Invalid value for field 'resource.match.expr': the security policy "
                        f"would count {total} attributes (address group capacities "
                        f"included); the limit is {self.max_policy_attributes}.")
        was_expr = old is not None and "expr" in old.get("match", {})
        if expr and not was_expr:
            committed = sum(1 for k, p in self.policies.items() if k[0] == project
                            for r in p["rules"] if "expr" in r.get("match", {}))
            if committed + self._pending_ceval[project] + 1 > self.ceval_quota:
                err = ApiError(403, f"Quota 'SECURITY_POLICY_CEVAL_RULES' exceeded.  Limit: "
                                    f"{float(self.ceval_quota)} globally.", "quotaExceeded",
                               "QUOTA_EXCEEDED")
                if self.quota_mode == "http":
                    raise err
                return [], err
            reservations.append(("ceval", project, 1))
        return reservations, None

    def check_group_usable(self, project: str, name: str) -> None:
        """A group a rule may reference: it exists in location global and has
        purpose CLOUD_ARMOR (400 otherwise)."""
        key = (project, "global", name)
        group = self.groups.get(key)
        if group is None:
            elsewhere = [k for k in self.groups if k[0] == project and k[2] == name]
            where = (f" (a group of that name exists in location '{elsewhere[0][1]}'; only "
                     f"global address groups can be used in Cloud Armor)") if elsewhere else ""
            raise bad_request(f"Invalid value for field 'resource.match.expr': address group "
                              f"'{group_path(key)}' was not found{where}.")
        if "CLOUD_ARMOR" not in group["purpose"]:
            raise bad_request(f"Invalid value for field 'resource.match.expr': address group "
                              f"'{group_path(key)}' does not have purpose CLOUD_ARMOR.")

    def policy_attributes(self, project: str, rules: list[dict[str, Any]]) -> int:
        """The capacity of every distinct global group the rules reference."""
        names = {n for r in rules for n in R.group_refs(r)}
        return sum(self.groups[(project, "global", n)]["capacity"] for n in names
                   if (project, "global", n) in self.groups)

    # ---------------------------------------------------------- test view
    def group(self, project: str, name: str, location: str = "global") -> dict[str, Any] | None:
        """A deep copy of the committed group, or None."""
        with self.lock:
            self.tick()
            g = self.groups.get((project, location, name))
            return copy.deepcopy(g) if g else None
