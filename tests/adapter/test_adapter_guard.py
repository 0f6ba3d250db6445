"""The guard a lease holder (or a delivery's time budget) passes with each
mutation: the adapter calls it right before every attempt it sends, retries
included, so a holder whose lease ran out while it backed off stops before
sending, instead of landing a change planned under the lease it lost."""

from __future__ import annotations

import pytest

from localapi import FaultConfig
from responder.errors import OutOfTime
from responder.policy import PolicyRule

PROJECT, POLICY = "proj", "armor"  # as tests/adapter/conftest.py creates it


def _deny(priority: int, *ranges: str) -> PolicyRule:
    return PolicyRule(priority=priority, action="deny(403)", ranges=ranges, description="car1 x=never v=h s=manual")


def _sent(server, verb: str) -> int:
    return sum(1 for r in server.requests if r["path"].endswith("/" + verb))


@pytest.mark.parametrize("verb", ["patchRule", "removeRule", "addRule"])
def test_a_retry_after_the_lease_ran_out_is_never_sent(server, make_adapter, verb: str) -> None:
    state = {"lease": True, "checks": 0}

    def stall(_: float) -> None:  # the backoff pause outlives the lease
        state["lease"] = False

    def guard() -> None:
        state["checks"] += 1
        if not state["lease"]:
            raise OutOfTime("the band lease would run out before another operation could finish")

    armor = make_adapter(sleep=stall)
    armor.add_rule(_deny(20500, "45.9.148.0/24"))
    before = server.rule(PROJECT, POLICY, 20500)
    sent_before = _sent(server, verb)
    server.faults = FaultConfig(http_503=1.0, methods=(f"securityPolicies.{verb}",), seed=3)
    with pytest.raises(OutOfTime):
        if verb == "patchRule":
            armor.patch_rule(_deny(20500, "45.9.148.0/25"), guard=guard)
        elif verb == "removeRule":
            armor.remove_rule(20500, guard=guard)
        else:
            armor.add_rule(_deny(20501, "45.9.148.0/25"), guard=guard)
    server.faults = FaultConfig()
    assert _sent(server, verb) - sent_before == 1  # the first attempt only; its 503 changed nothing
    assert state["checks"] == 2  # checked before the first attempt and before the retry
    server.settle()
    assert server.rule(PROJECT, POLICY, 20500) == before
    assert server.rule(PROJECT, POLICY, 20501) is None


def test_the_guard_runs_before_the_first_send(server, make_adapter) -> None:
    armor = make_adapter()

    def guard() -> None:
        raise OutOfTime("no time left")

    with pytest.raises(OutOfTime):
        armor.add_rule(_deny(20600, "192.0.2.0/24"), guard=guard)
    assert _sent(server, "addRule") == 0
    assert server.rule(PROJECT, POLICY, 20600) is None
