"""Operations: asynchronous commits, status progression, scoping, waiting."""
from __future__ import annotations

import time

import pytest
from google.api_core import exceptions as gexc
from localapi_testkit import PROJECT, REGION


def test_change_invisible_until_operation_done(api, server):
    api.create()
    server.state.op_delay = 0.5
    op = api.add(1000, wait=False)
    assert op.status in (op.Status.PENDING, op.Status.RUNNING)
    assert op.kind == "compute#operation" and op.operation_type == "addRule"
    assert op.target_link.endswith(f"projects/{PROJECT}/global/securityPolicies/pol")
    # Not committed: neither get nor getRule sees it.
    assert [r.priority for r in api.policies.get(project=PROJECT, security_policy="pol").rules] \
        == [2147483647]
    with pytest.raises(gexc.BadRequest):
        api.policies.get_rule(request={"project": PROJECT, "security_policy": "pol",
                                       "priority": 1000})
    done = api.wait(op)
    assert done.end_time and done.start_time and done.progress == 100
    rule = api.policies.get_rule(request={"project": PROJECT, "security_policy": "pol",
                                          "priority": 1000})
    assert rule.action == "deny(403)"
    assert server.rule(PROJECT, "pol", 1000)["match"]["config"]["srcIpRanges"] == ["10.0.0.0/8"]


def test_status_progression_via_get(api, server):
    server.state.op_delay = 0.4
    api.create()
    op = api.add(10, wait=False)
    seen = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        got = api.global_ops.get(project=PROJECT, operation=op.name)
        if not seen or seen[-1] != got.status:
            seen.append(got.status)
        if got.status == got.Status.DONE:
            break
        time.sleep(0.03)
    S = op.Status
    assert seen == [S.PENDING, S.RUNNING, S.DONE]
    assert server.rule(PROJECT, "pol", 10) is not None


def test_extended_operation_without_waiting_does_not_see_change(api, server):
    api.create()
    # The plain method returns an ExtendedOperation whose .result() would poll
    # compute.googleapis.com; a caller that does not wait locally sees nothing.
    ext = api.policies.add_rule(project=PROJECT, security_policy="pol",
                                security_policy_rule_resource=api.rule(5))
    assert ext.name.startswith("operation-")
    assert server.rule(PROJECT, "pol", 5) is None
    assert len(api.policies.get(project=PROJECT, security_policy="pol").rules) == 1


def test_operations_are_scoped(api):
    gop = api.policies.insert_unary(project=PROJECT,
                                    security_policy_resource=api.compute_v1.SecurityPolicy(name="g"))
    rop = api.region_policies.insert_unary(
        project=PROJECT, region=REGION,
        security_policy_resource=api.compute_v1.SecurityPolicy(name="r"))
    assert rop.region.endswith(f"/regions/{REGION}")
    with pytest.raises(gexc.NotFound):
        api.region_ops.get(project=PROJECT, region=REGION, operation=gop.name)
    with pytest.raises(gexc.NotFound):
        api.global_ops.get(project=PROJECT, operation=rop.name)
    with pytest.raises(gexc.NotFound):
        api.region_ops.wait(project=PROJECT, region="europe-west1", operation=rop.name)
    with pytest.raises(gexc.NotFound):
        api.global_ops.wait(project=PROJECT, operation="operation-nope")
    with pytest.raises(gexc.NotFound):
        api.global_ops.get(project="other", operation=gop.name)
    api.wait(gop)
    api.wait(rop, REGION)


def test_range_delay_finishes_out_of_order(api, server):
    api.create()
    server.state.op_delay = (0.05, 0.6)
    ops = [api.add(p, wait=False) for p in range(1, 9)]
    time.sleep(0.7)  # every operation's own delay passes; none is cut short by settle()
    server.settle()
    by_end = sorted(ops, key=lambda op: server.state.operations[(PROJECT, None, op.name)].done_at)
    assert [op.name for op in by_end] != [op.name for op in ops]
    assert [r["priority"] for r in server.policy(PROJECT, "pol")["rules"]] == \
        list(range(1, 9)) + [2147483647]


def test_wait_returns_after_wait_timeout(api, server):
    server.state.op_delay = 5.0
    server.state.wait_timeout = 0.2
    op = api.policies.insert_unary(project=PROJECT,
                                   security_policy_resource=api.compute_v1.SecurityPolicy(name="x"))
    got = api.global_ops.wait(project=PROJECT, operation=op.name, timeout=5)
    assert got.status != got.Status.DONE
    server.settle()
    assert api.global_ops.get(project=PROJECT, operation=op.name).status == got.Status.DONE


def test_settle_commits_everything(api, server):
    api.create()
    server.state.op_delay = 30
    api.add(7, wait=False)
    assert server.pending_operations() == 1
    server.settle()
    assert server.pending_operations() == 0
    assert server.rule(PROJECT, "pol", 7)["action"] == "deny(403)"


def test_concurrent_clients_one_winner_per_priority(api, server):
    from concurrent.futures import ThreadPoolExecutor

    api.create()

    def attempt(i):
        try:
            api.add(100 + i % 5, ranges=[f"10.0.{i}.0/24"], wait=False)
            return True
        except gexc.BadRequest:
            return False

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(20)))
    assert results.count(True) == 5
    server.settle()
    assert [r["priority"] for r in server.policy(PROJECT, "pol")["rules"]] == \
        [100, 101, 102, 103, 104, 2147483647]


def test_project_restriction():
    from localapi_testkit import Api

    from localapi import LocalCloudArmor

    srv = LocalCloudArmor(op_delay=0.01, project=PROJECT).start()
    try:
        api = Api(srv)
        api.create()
        with pytest.raises(gexc.NotFound):
            api.policies.get(project="someone-else", security_policy="pol")
    finally:
        srv.stop()
