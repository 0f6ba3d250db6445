"""The route table of the local Cloud Armor API.

Every route mirrors one method of the compute v1 discovery document: the
resource and method names, the HTTP verb, the ``flatPath`` template relative
to ``https://compute.googleapis.com/compute/v1/`` and the query parameters the
method declares.  The server accepts exactly those query parameters plus the
standard system parameters in :data:`SYSTEM_PARAMS`; anything else is a 400,
like Google's front end.  ``tests/localapi/test_discovery.py`` reads
:data:`ROUTES` and checks it against the discovery document.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

PREFIX = "/compute/v1/"

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
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path))
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


def match(http_method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """Find the route for ``path`` (already stripped of :data:`PREFIX`).

    Returns ``(route, path_params, path_known)``; ``path_known`` is True when
    some route matched the path with another verb (a 405 rather than a 404).
    """
    known = False
    for route in ROUTES:
        m = route.regex.match(path)
        if m is None:
            continue
        if route.http_method == http_method:
            return route, m.groupdict(), True
        known = True
    return None, {}, known
