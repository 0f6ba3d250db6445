"""Fault injection: each kind gives the client-visible failure it models."""
from __future__ import annotations

import time

import pytest
import requests
from google.api_core import exceptions as gexc
from localapi_testkit import PROJECT

from localapi import FaultConfig
from localapi.faults import FaultInjector


def _add(api, priority=10, **kw):
    return api.policies.add_rule_unary(project=PROJECT, security_policy="pol",
                                       security_policy_rule_resource=api.rule(priority), **kw)


@pytest.mark.parametrize("kind, exc", [("http_429", gexc.TooManyRequests),
                                       ("http_500", gexc.InternalServerError),
                                       ("http_503", gexc.ServiceUnavailable)])
def test_http_faults_do_nothing(api, server, kind, exc):
    api.create()
    server.faults = FaultConfig(**{kind: 1.0})
    with pytest.raises(exc):
        _add(api)
    server.settle()
    assert server.rule(PROJECT, "pol", 10) is None
    assert server.fault_counts == {kind: 1}
    # Reads are not selected by default.
    assert api.policies.get(project=PROJECT, security_policy="pol").name == "pol"


def test_reset_does_nothing(api, server):
    api.create()
    server.faults = FaultConfig(reset=1.0)
    with pytest.raises(requests.exceptions.ConnectionError):
        _add(api)
    server.settle()
    assert server.rule(PROJECT, "pol", 10) is None
    assert server.fault_counts == {"reset": 1}
    assert server.requests[-1]["status"] is None and server.requests[-1]["fault"] == "reset"


def test_op_error_commits_nothing(api, server):
    api.create()
    server.faults = FaultConfig(op_error=1.0)
    op = _add(api)
    done = api.wait(op)
    assert done.error.errors[0].code == "INTERNAL_ERROR"
    assert done.http_error_status_code == 500
    assert server.rule(PROJECT, "pol", 10) is None
    # Validation still comes first: an invalid request is a plain 400, no fault counted.
    with pytest.raises(gexc.BadRequest):
        api.policies.add_rule_unary(project=PROJECT, security_policy="pol",
                                    security_policy_rule_resource=api.rule(11, action="nope"))
    assert server.fault_counts == {"op_error": 1}


def test_commit_then_timeout_delay_really_commits(api, server):
    api.create()
    server.faults = FaultConfig(commit_then_timeout=1.0, commit_then_timeout_delay=0.6)
    with pytest.raises(requests.exceptions.ReadTimeout):
        _add(api, timeout=0.2)
    server.faults = FaultConfig()
    time.sleep(0.1)
    assert server.rule(PROJECT, "pol", 10)["action"] == "deny(403)"
    assert server.fault_counts == {"commit_then_timeout": 1}
    # The retried addRule now hits the duplicate-priority error.
    with pytest.raises(gexc.BadRequest, match="already contains a rule at priority 10"):
        _add(api)


def test_commit_then_timeout_reset_really_commits(api, server):
    api.create()
    server.faults = FaultConfig(commit_then_timeout=1.0, commit_then_timeout_mode="reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        _add(api)
    server.settle()
    assert server.rule(PROJECT, "pol", 10) is not None


def test_latency(api, server):
    api.create()
    server.faults = FaultConfig(latency=1.0, latency_range=(0.3, 0.3))
    start = time.monotonic()
    api.wait(_add(api))
    assert time.monotonic() - start >= 0.3
    assert server.fault_counts == {"latency": 1}
    assert server.rule(PROJECT, "pol", 10) is not None


def test_read_scope_and_method_selection(api, server):
    api.create()
    server.faults = FaultConfig(http_500=1.0, scope="reads")
    with pytest.raises(gexc.InternalServerError):
        api.policies.get(project=PROJECT, security_policy="pol")
    op = _add(api)  # mutations untouched
    server.faults = FaultConfig(http_429=1.0, scope="all", methods=("securityPolicies.getRule",))
    api.global_ops.wait(project=PROJECT, operation=op.name)
    with pytest.raises(gexc.TooManyRequests):
        api.policies.get_rule(request={"project": PROJECT, "security_policy": "pol", "priority": 10})
    assert server.fault_counts == {"http_500": 1, "http_429": 1}


def test_mutation_only_faults_ignored_on_reads(server, api):
    api.create()
    server.faults = FaultConfig(op_error=0.5, commit_then_timeout=0.5, scope="all")
    for _ in range(5):
        api.policies.get(project=PROJECT, security_policy="pol")
    assert server.fault_counts == {}


def test_seed_reproducible_and_mixed_rates():
    cfg = {"http_429": 0.2, "http_503": 0.2, "reset": 0.1, "op_error": 0.1, "latency": 0.3, "seed": 42}
    runs = []
    for _ in range(2):
        inj = FaultInjector(FaultConfig(**cfg))
        runs.append([inj.draw("securityPolicies.addRule", True) for _ in range(200)])
    assert runs[0] == runs[1]
    kinds = [d.kind for d in runs[0]]
    assert 20 < kinds.count("http_429") < 60 and kinds.count(None) > 50
    with pytest.raises(ValueError):
        FaultConfig(http_429=0.7, http_500=0.7)


def test_fault_config_from_json(tmp_path):
    path = tmp_path / "faults.json"
    path.write_text('{"http_503": 0.5, "latency_range": [0.1, 0.2], "seed": 3}')
    cfg = FaultConfig.from_json(str(path))
    assert cfg.http_503 == 0.5 and cfg.latency_range == (0.1, 0.2)
    assert FaultConfig.from_json('{"reset": 1}').reset == 1
    with pytest.raises(ValueError):
        FaultConfig.from_json('{"bogus": 1}')
