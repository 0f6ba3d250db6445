"""The order of a group's item calls (responder/groupstore.py): after every
call, each address that both the list before and the list after block
stays blocked. Replayed from the local API's request log, through the real
functions and the real compute and network-security clients."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from localapi import LocalCloudArmor
from tests.e2e.conftest import PROJECT, Harness
from tests.e2e.support import configured
from tests.e2e.test_groups import (
    AROUND_7,
    CONFIG,
    LISTED,
    V4_1,
    V4_2,
    addresses,
    group_rules,
    groups_of,
    norm,
    send,
    trail,
    unblock,
)


@pytest.fixture
def ent() -> Iterator[LocalCloudArmor]:
    server = LocalCloudArmor(op_delay=0.01, wait_timeout=10.0, seed=12, project=PROJECT, tier="enterprise").start()
    yield server
    server.stop()


@pytest.fixture
def fx(ent: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Harness:
    return configured(ent, monkeypatch, tmp_path, CONFIG)

Span = tuple[int, int]
MUTATIONS = ("create", "delete", "addItems", "removeItems", "addRule", "patchRule", "removeRule")


def spans(items: Iterable[str]) -> list[Span]:
    """The merged [first, last] address spans of the items (IPv6 above IPv4)."""
    out: list[list[int]] = []
    for net in sorted(ipaddress.ip_network(i) for i in items):
        shift = 2**130 if net.version == 6 else 0
        first, last = int(net.network_address) + shift, int(net.broadcast_address) + shift
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return [(a, b) for a, b in out]


def both(a: list[Span], b: list[Span]) -> list[Span]:
    """The addresses in both span lists."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def uncovered(need: list[Span], have: list[Span]) -> list[Span]:
    return [s for s in need if not any(h[0] <= s[0] and s[1] <= h[1] for h in have)]


def replay(fx: Harness, ent: LocalCloudArmor, start: int, old: list[str], new: list[str]) -> list[str]:
    """Replays the mutations from request ``start`` on the groups and rules as
    they were, asserting after each that every address both ``old`` and
    ``new`` block is held by a group some rule references, and that no group
    exceeds its capacity. Returns the calls, e.g. "removeItems:car-x-v4-1:2"."""
    need = both(spans(old), spans(new))
    held: dict[str, set[str]] = {}
    capacity: dict[str, int] = {}
    for name, (cap, items) in GROUPS_AT[start].items():
        held[name], capacity[name] = set(items), cap
    rules = {p: e.split("'")[1] for p, (e, _) in RULES_AT[start].items()}
    calls = []
    for r in ent.requests[start:]:
        route = r.get("route") or ""
        kind = route.split(".")[-1]
        if r.get("status") != 200 or kind not in MUTATIONS:
            continue
        body = r.get("body") or {}
        if route.startswith("addressGroups."):
            name = r["query"].get("addressGroupId") or r["path"].rsplit("/", 1)[-1].split(":")[0]
            items = norm(body.get("items", []))
            if kind == "create":
                held[name], capacity[name] = set(), int(body["capacity"])
            elif kind == "addItems":
                held[name] |= set(items)
            elif kind == "removeItems":
                held[name] -= set(items)
            elif kind == "delete":
                held.pop(name)
            calls.append(f"{kind}:{name}:{len(items)}" if items else f"{kind}:{name}")
        else:
            expr = ((body.get("match") or {}).get("expr") or {}).get("expression", "")
            priority = int(r["query"].get("priority", body.get("priority", 0)))
            if kind in ("addRule", "patchRule") and expr:
                rules[priority] = expr.split("'")[1]
            elif kind == "removeRule":
                rules.pop(priority, None)
            calls.append(f"{kind}:{rules.get(priority, priority)}")
        blocked = spans(i for g in set(rules.values()) for i in held.get(g, ()))
        assert uncovered(need, blocked) == [], f"unblocked after {calls[-1]} (calls so far: {calls})"
        assert all(len(held[g]) <= capacity[g] for g in held), calls
    return calls


GROUPS_AT: dict[int, dict[str, tuple[int, list[str]]]] = {}
RULES_AT: dict[int, dict[int, tuple[str, str]]] = {}


def mark(fx: Harness, ent: LocalCloudArmor) -> int:
    """The request index from which to replay, with the state there."""
    start = len(ent.requests)
    GROUPS_AT[start], RULES_AT[start] = groups_of(ent), group_rules(fx)
    return start


def items_calls(calls: list[str]) -> list[str]:
    return [c for c in calls if c.split(":")[0].endswith("Items")]


def test_a_snapshot_that_lists_a_split_item_again_adds_it_before_its_parts_go(
        fx: Harness, ent: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    listed = [LISTED, *addresses(1)]
    assert 200 == send(fx, listed, "m1")
    assert 0 == unblock(capsys, "45.9.148.7")  # the /24 is split into 8 parts
    old = [*AROUND_7, *addresses(1)]
    start = mark(fx, ent)

    assert 200 == send(fx, listed, "m2")

    calls = replay(fx, ent, start, old, listed)
    assert items_calls(calls) == [f"addItems:{V4_1}:1", f"removeItems:{V4_1}:4", f"removeItems:{V4_1}:4"]
    assert groups_of(ent) == {V4_1: (10, norm(listed))}


def test_a_snapshot_that_splits_an_item_adds_the_parts_before_the_item_goes(
        fx: Harness, ent: LocalCloudArmor) -> None:
    old = [LISTED, *addresses(1)]
    assert 200 == send(fx, old, "m1")
    new = [*AROUND_7, *addresses(1)]
    start = mark(fx, ent)

    assert 200 == send(fx, new, "m2")

    calls = replay(fx, ent, start, old, new)
    assert items_calls(calls) == [f"addItems:{V4_1}:4", f"addItems:{V4_1}:4", f"removeItems:{V4_1}:1"]
    assert groups_of(ent) == {V4_1: (10, norm(new))}


def test_a_full_group_withdraws_first_only_what_the_new_list_leaves_out(fx: Harness, ent: LocalCloudArmor) -> None:
    """8 of 10 items held: adding the 8 parts first would need 16. The 6
    addresses the new list drops go first, then the parts, then the /24."""
    old = [LISTED, *addresses(7)]
    assert 200 == send(fx, old, "m1")
    new = [*AROUND_7, *addresses(1)]
    start = mark(fx, ent)

    assert 200 == send(fx, new, "m2")

    calls = replay(fx, ent, start, old, new)
    assert items_calls(calls) == [f"removeItems:{V4_1}:4", f"removeItems:{V4_1}:2", f"addItems:{V4_1}:4",
                                  f"addItems:{V4_1}:4", f"removeItems:{V4_1}:1"]
    assert groups_of(ent) == {V4_1: (10, norm(new))}
    assert [e for e, _ in group_rules(fx).values()] == [f"evaluateAddressGroup('{V4_1}', origin.ip)"]


def test_a_change_no_order_fits_in_place_replaces_the_group(fx: Harness, ent: LocalCloudArmor) -> None:
    """3 of 10 items held, 10 wanted: the 8 parts cannot join before the /24
    goes (11 > 10) and nothing is withdrawn, so a new group takes over."""
    old = [LISTED, *addresses(2)]
    assert 200 == send(fx, old, "m1")
    new = [*AROUND_7, *addresses(2)]
    start = mark(fx, ent)

    assert 200 == send(fx, new, "m2")

    calls = replay(fx, ent, start, old, new)
    assert f"removeItems:{V4_1}" not in " ".join(calls)  # the old group is never thinned
    assert calls[0] == f"create:{V4_2}" and calls[-1] == f"delete:{V4_1}"
    assert groups_of(ent) == {V4_2: (13, norm(new))}
    assert [e for e, _ in group_rules(fx).values()] == [f"evaluateAddressGroup('{V4_2}', origin.ip)"]
    (replaced,) = [r for r in fx.audit if r["change"] == "group" and r.get("op") == "replaced"]
    assert (replaced["group"], replaced["replaces"], replaced["size"], replaced["capacity"]) == (V4_2, V4_1, 10, 13)


def test_a_change_neither_order_nor_replacement_can_make_safe_changes_nothing_and_says_why(
        fx: Harness, ent: LocalCloudArmor) -> None:
    old = [LISTED, *addresses(2)]
    assert 200 == send(fx, old, "m1")
    rules = group_rules(fx)
    ent.state.max_policy_attributes = 20  # a second rule (10 + 13 attributes) is refused
    new = [*AROUND_7, *addresses(2)]
    start = mark(fx, ent)

    assert 200 == send(fx, new, "m2")  # acknowledged: a redelivery would meet the same limit

    replay(fx, ent, start, old, new)
    assert groups_of(ent) == {V4_1: (10, norm(old))}  # the old list stays enforced, whole
    assert group_rules(fx) == rules
    (refused,) = [r for r in trail() if r["change"] == "refused" and r.get("group")]
    assert (refused["group"], refused["capacity"], refused["needed"]) == (V4_1, 10, 11)
    assert "unblock" in refused["message"] and "capacity" in refused["message"]
