"""The route table of the local Cloud Armor API.

Every route mirrors one method of a discovery document: the resource and
method names, the HTTP verb, the ``flatPath`` template and the query
parameters the method declares.  Compute routes (:data:`ROUTES`, ``api
"compute"``) are relative to ``https://compute.googleapis.com/compute/v1/``;
Network Security routes (:data:`NS_ROUTES`, address groups and their
long-running operations) are relative to
``https://networksecurity.googleapis.com/`` and start with ``v1/``.  The server accepts exactly those query parameters plus the
standard system parameters in :data:`SYSTEM_PARAMS`; anything else is a 400,
like Google's front end.  ``tests/localapi/test_localapi_discovery.py`` and
``tests/localapi/test_localapi_ns_discovery.py`` check both tables against
the discovery documents (``compute.v1.json``, ``networksecurity.v1.json``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

PREFIX = "/compute/v1/"
NS_PREFIX = "/"  # Network Security paths keep their "v1/" (as in flatPath)

#: System parameters accepted on every route.  All but ``$alt`` are top-level
#: parameters of the discovery document; ``$alt=json;enum-encoding=int`` is
#: what the GAPIC REST transports add when numeric enums are requested.
SYSTEM_PARAMS = frozenset(
    {"$alt", "alt", "$.xgafv", "fields", "prettyPrint", "quotaUser", "key",
     "userIp", "access_token", "oauth_token", "callback"}
)


@dataclass(frozen=True)
class Route:
    """One served method: ``resource.method`` of the discovery document."""

    resource: str
    method: str
    http_method: str
    path: str
    query: tuple[str, ...] = ()
    mutating: bool = False
    api: str = "compute"  # or "networksecurity"
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/:]+)", re.escape(self.path))
        object.__setattr__(self, "regex", re.compile(pattern + r"\Z"))

    @property
    def name(self) -> str:
        return f"{self.resource}.{self.method}"

    @property
    def regional(self) -> bool:
        return "{region}" in self.path


def _policy_routes(resource: str, base: str, setlabels_query: tuple[str, ...]) -> list[Route]:
    pol = base + "/{securityPolicy}"
    return [
        Route(resource, "insert", "POST", base, ("requestId", "validateOnly"), True),
        Route(resource, "list", "GET", base, ("filter", "maxResults", "orderBy", "pageToken")),
        Route(resource, "get", "GET", pol),
        Route(resource, "patch", "PATCH", pol, ("requestId", "updateMask"), True),
        Route(resource, "delete", "DELETE", pol, ("requestId",), True),
        Route(resource, "getRule", "GET", pol + "/getRule", ("priority",)),
        Route(resource, "addRule", "POST", pol + "/addRule", ("validateOnly",), True),
        Route(resource, "patchRule", "POST", pol + "/patchRule",
              ("priority", "updateMask", "validateOnly"), True),
        Route(resource, "removeRule", "POST", pol + "/removeRule", ("priority",), True),
        Route(resource, "setLabels", "POST", base + "/{resource}/setLabels", setlabels_query, True),
    ]


ROUTES: tuple[Route, ...] = tuple(
    _policy_routes("securityPolicies", "projects/{project}/global/securityPolicies", ())
    + _policy_routes("regionSecurityPolicies",
                     "projects/{project}/regions/{region}/securityPolicies", ("requestId",))
    + [
        Route("globalOperations", "get", "GET", "projects/{project}/global/operations/{operation}"),
        Route("globalOperations", "wait", "POST",
              "projects/{project}/global/operations/{operation}/wait"),
        Route("regionOperations", "get", "GET",
              "projects/{project}/regions/{region}/operations/{operation}"),
        Route("regionOperations", "wait", "POST",
              "projects/{project}/regions/{region}/operations/{operation}/wait"),
    ]
)


_NS_BASE = "v1/projects/{projectsId}/locations/{locationsId}"
_NS_GROUP = _NS_BASE + "/addressGroups/{addressGroupsId}"

#: The Network Security v1 methods served: address groups and the
#: operations their mutations return (what the client's REST transport polls).
NS_ROUTES: tuple[Route, ...] = tuple(
    Route("addressGroups", m, verb, path, query, mutating, "networksecurity")
    for m, verb, path, query, mutating in (
        ("create", "POST", _NS_BASE + "/addressGroups", ("addressGroupId", "requestId"), True),
        ("list", "GET", _NS_BASE + "/addressGroups",
         ("pageSize", "pageToken", "returnPartialSuccess"), False),
        ("get", "GET", _NS_GROUP, (), False),
        ("patch", "PATCH", _NS_GROUP, ("requestId", "updateMask"), True),
        ("delete", "DELETE", _NS_GROUP, ("requestId",), True),
        ("addItems", "POST", _NS_GROUP + ":addItems", (), True),
        ("removeItems", "POST", _NS_GROUP + ":removeItems", (), True),
        ("cloneItems", "POST", _NS_GROUP + ":cloneItems", (), True),
        ("listReferences", "GET", _NS_GROUP + ":listReferences", ("pageSize", "pageToken"),
         False),
    )
) + (Route("operations", "get", "GET", _NS_BASE + "/operations/{operationsId}", (), False,
           "networksecurity"),)


def match(http_method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """Find the compute route for ``path`` (already stripped of :data:`PREFIX`).

    Returns ``(route, path_params, path_known)``; ``path_known`` is True when
    some route matched the path with another verb (a 405 rather than a 404).
    """
    return _match(ROUTES, http_method, path)


def match_ns(http_method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """Find the Network Security route for ``path`` (stripped of :data:`NS_PREFIX`)."""
    return _match(NS_ROUTES, http_method, path)


def _match(table: tuple[Route, ...], http_method: str,
           path: str) -> tuple[Route | None, dict[str, str], bool]:
    known = False
    for route in table:
        m = route.regex.match(path)
        if m is None:
            continue
        if route.http_method == http_method:
            return route, m.groupdict(), True
        known = True
    return None, {}, known
