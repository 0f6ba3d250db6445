"""Every route the local API serves exists in the compute v1 discovery document,
with the same HTTP method, path template and query parameters."""
from __future__ import annotations

import json
import os

import pytest

from localapi import ROUTES, SYSTEM_PARAMS


@pytest.fixture(scope="module")
def discovery():
    try:
        import googleapiclient
    except ImportError:
        pytest.skip("google-api-python-client not installed")
    path = os.path.join(os.path.dirname(googleapiclient.__file__), "discovery_cache",
                        "documents", "compute.v1.json")
    if not os.path.exists(path):
        pytest.skip("compute.v1.json not shipped")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def test_service_root(discovery):
    assert discovery["rootUrl"] + discovery["servicePath"] == "https://compute.googleapis.com/compute/v1/"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_route_matches_discovery(discovery, route):
    assert route.resource in ("securityPolicies", "regionSecurityPolicies",
                              "globalOperations", "regionOperations")
    method = discovery["resources"][route.resource]["methods"].get(route.method)
    assert method is not None, f"{route.name} is not in the discovery document"
    assert method["httpMethod"] == route.http_method
    assert route.path in (method.get("flatPath"), method["path"])
    query = {k for k, v in method["parameters"].items() if v["location"] == "query"}
    assert set(route.query) <= query, set(route.query) - query
    path_params = {k for k, v in method["parameters"].items() if v["location"] == "path"}
    assert set(route.regex.groupindex) == path_params
    returns = method.get("response", {}).get("$ref")
    assert (returns == "Operation") == (route.mutating or route.method == "wait" or
                                        route.resource.endswith("Operations"))


def test_system_params_are_standard(discovery):
    # "$alt" is the GAPIC REST transports' numeric-enum switch, not in the document.
    assert SYSTEM_PARAMS - {"$alt"} <= set(discovery["parameters"])


def test_all_security_policy_mutations_covered(discovery):
    served = {r.name for r in ROUTES}
    for resource in ("securityPolicies", "regionSecurityPolicies"):
        for name in ("insert", "get", "list", "getRule", "addRule", "patchRule",
                     "removeRule", "patch", "setLabels", "delete"):
            assert f"{resource}.{name}" in served
