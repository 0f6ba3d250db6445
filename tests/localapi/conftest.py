"""Fixtures: a fresh LocalCloudArmor per test (``server``) and the real
google-cloud-compute clients pointed at it (``api``; anonymous credentials,
explicit http:// endpoint)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from localapi_testkit import Api

from localapi import LocalCloudArmor


@pytest.fixture
def server():
    srv = LocalCloudArmor(op_delay=0.05, wait_timeout=5.0, seed=7).start()
    yield srv
    srv.stop()


@pytest.fixture
def api(server):
    return Api(server)
