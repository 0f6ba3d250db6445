"""Fixtures for the compute adapter tests: a fresh local Cloud Armor API per
test, a policy created through the real google-cloud-compute client
(``insert_unary`` + wait on our own operations client), and adapters with
fast retry timings pointed at it."""
from __future__ import annotations

import os
import sys
from datetime import timedelta

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from config.settings import PolicySettings  # noqa: E402
from localapi import LocalCloudArmor  # noqa: E402
from responder.compute import Backoff, CloudArmor  # noqa: E402

PROJECT = "proj"
POLICY = "armor"
REGION = "us-central1"

FAST = Backoff(initial=0.01, maximum=0.05, multiplier=2.0)


@pytest.fixture
def server():
    srv = LocalCloudArmor(op_delay=0.05, quota=200, wait_timeout=5.0, seed=1).start()
    yield srv
    srv.stop()


def create_policy(server: LocalCloudArmor, name: str = POLICY, region: str = "") -> None:
    """Create a policy with the real client, independently of the adapter."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    kw = {"credentials": AnonymousCredentials(),
          "client_options": {"api_endpoint": server.endpoint}}
    resource = compute_v1.SecurityPolicy(name=name, description="adapter tests")
    if region:
        op = compute_v1.RegionSecurityPoliciesClient(**kw).insert_unary(
            project=PROJECT, region=region, security_policy_resource=resource, timeout=10)
        done = compute_v1.RegionOperationsClient(**kw).wait(
            project=PROJECT, region=region, operation=op.name, timeout=10)
    else:
        op = compute_v1.SecurityPoliciesClient(**kw).insert_unary(
            project=PROJECT, security_policy_resource=resource, timeout=10)
        done = compute_v1.GlobalOperationsClient(**kw).wait(
            project=PROJECT, operation=op.name, timeout=10)
    assert done.status == compute_v1.Operation.Status.DONE
    assert not done.error.errors, done.error
    assert server.policy(PROJECT, name, region or None) is not None


def settings(server: LocalCloudArmor, *, name: str = POLICY, region: str = "",
             request_timeout: float = 2.0, operation_timeout: float = 5.0) -> PolicySettings:
    return PolicySettings(project=PROJECT, name=name, region=region,
                          api_endpoint=server.endpoint,
                          request_timeout=timedelta(seconds=request_timeout),
                          operation_timeout=timedelta(seconds=operation_timeout))


@pytest.fixture
def make_adapter(server):
    """make_adapter(region="", create=True, retry_deadline=5.0, **settings_kw)."""

    def make(region: str = "", *, create: bool = True, name: str = POLICY,
             retry_deadline: float = 5.0, sleep=None, **kw) -> CloudArmor:
        if create:
            create_policy(server, name, region)
        extra = {"sleep": sleep} if sleep is not None else {}
        return CloudArmor(settings(server, name=name, region=region, **kw),
                          retry_deadline=timedelta(seconds=retry_deadline),
                          backoff=FAST, poll=FAST, **extra)

    return make


@pytest.fixture(params=["global", "regional"])
def scope(request) -> str:
    """The region of the policy under test ("" for a global policy)."""
    return "" if request.param == "global" else REGION


@pytest.fixture
def armor(make_adapter, scope) -> CloudArmor:
    return make_adapter(scope)
