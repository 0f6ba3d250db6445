"""Every Network Security route the local API serves (address groups and
their operations) exists in the networksecurity v1 discovery document, with
the same HTTP method, path template and query parameters."""
from __future__ import annotations

import json
import os
import re

import pytest

from localapi.routes import NS_ROUTES


@pytest.fixture(scope="module")
def discovery():
    try:
        import googleapiclient
    except ImportError:
        pytest.skip("google-api-python-client not installed")
    path = os.path.join(os.path.dirname(googleapiclient.__file__), "discovery_cache",
                        "documents", "networksecurity.v1.json")
    if not os.path.exists(path):
        pytest.skip("networksecurity.v1.json not shipped")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def test_service_root(discovery):
    assert discovery["rootUrl"] + discovery["servicePath"] == "https://networksecurity.googleapis.com/"


@pytest.mark.parametrize("route", NS_ROUTES, ids=lambda r: r.name)
def test_route_matches_discovery(discovery, route):
    locations = discovery["resources"]["projects"]["resources"]["locations"]["resources"]
    method = locations[route.resource]["methods"].get(route.method)
    assert method is not None, f"{route.name} is not in the discovery document"
    assert method["httpMethod"] == route.http_method
    assert route.path == method["flatPath"]
    query = {k for k, v in method["parameters"].items() if v["location"] == "query"}
    assert set(route.query) == query, set(route.query) ^ query
    assert set(route.regex.groupindex) == set(re.findall(r"\{(\w+)\}", method["flatPath"]))
    returns = method.get("response", {}).get("$ref")
    assert (returns == "Operation") == (route.mutating or route.resource == "operations")


def test_every_documented_group_method_but_iam_is_served(discovery):
    locations = discovery["resources"]["projects"]["resources"]["locations"]["resources"]
    documented = set(locations["addressGroups"]["methods"])
    served = {r.method for r in NS_ROUTES if r.resource == "addressGroups"}
    assert documented - served == {"getIamPolicy", "setIamPolicy", "testIamPermissions"}
