"""Snapshot feeds stored in address groups (responder/groupstore.py), end
to end: the real functions through functions-framework, the real compute
and network-security clients, the local API on the Enterprise tier. Each
test asserts on the groups and the policy the server holds afterwards."""

from __future__ import annotations

import ipaddress
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from localapi import FaultConfig, LocalCloudArmor
from tests.e2e.conftest import BAND, PROJECT, Harness, expiry_word
from tests.e2e.support import configured

FEED = "blocklist"
CONFIG = f"""
[feeds.{FEED}]
format = "plain"
ttl = "1d"
snapshot = true
store = "address-group"
max_drop_share = 0.9

[groups]
min_capacity = 10
capacity_headroom = 0.25
max_items_per_call = 4
"""
V4_1 = f"car-{FEED}-v4-1"
V4_2 = f"car-{FEED}-v4-2"
V6_1 = f"car-{FEED}-v6-1"


def addresses(n: int, start: int = 0) -> list[str]:
    """n addresses of 203.0.0.0/16 (none special-purpose, none allowlisted)."""
    base = int(ipaddress.IPv4Address("203.0.0.0"))
    return [str(ipaddress.IPv4Address(base + 256 * (start + i) + 7)) for i in range(n)]


@pytest.fixture
def ent() -> Any:
    server = LocalCloudArmor(op_delay=0.01, wait_timeout=10.0, seed=12, project=PROJECT, tier="enterprise").start()
    yield server
    server.stop()


@pytest.fixture
def fx(ent: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Harness:
    return configured(ent, monkeypatch, tmp_path, CONFIG)


def send(fx: Harness, items: list[str], message_id: str) -> int:
    return fx.publish("on_threat_feed", ("\n".join(items) + "\n").encode(), message_id=message_id,
                      attributes={"feed": FEED, "format": "plain", "snapshot": "true"})


def groups_of(server: LocalCloudArmor) -> dict[str, tuple[int, list[str]]]:
    """Every group the server holds: name -> (capacity, sorted items)."""
    server.settle()
    out = {}
    for key in list(server.state.groups):
        found = server.group(PROJECT, key[2])
        if found is not None:
            out[key[2]] = (int(found["capacity"]), sorted(found.get("items", [])))
    return out


def group_rules(fx: Harness) -> dict[int, tuple[str, str]]:
    """Band rules matching an address group: priority -> (expression, description)."""
    return {r["priority"]: (r["match"]["expr"]["expression"], r["description"])
            for r in fx.band_rules() if "expr" in r.get("match", {})}


def range_rules(fx: Harness) -> list[dict[str, Any]]:
    return [r for r in fx.band_rules() if "config" in r.get("match", {})]


def ns_mutations(server: LocalCloudArmor) -> list[tuple[str, str]]:
    """(route, group or priority) of every successful mutation, in order."""
    out = []
    for r in server.requests:
        route = r.get("route") or ""
        if r.get("status") != 200 or route.split(".")[-1] not in (
                "create", "delete", "addItems", "removeItems", "addRule", "patchRule", "removeRule"):
            continue
        if route.startswith("addressGroups"):
            name = r["query"].get("addressGroupId") or r["path"].rsplit("/", 1)[-1].split(":")[0]
            out.append((route, name))
        else:
            body = r.get("body") or {}
            expr = (body.get("match") or {}).get("expr", {}).get("expression", "")
            out.append((route, expr or str(r["query"].get("priority", body.get("priority", "")))))
    return out


def norm(items: list[str]) -> list[str]:
    return sorted(str(ipaddress.ip_network(i)) for i in items)


def test_a_snapshot_goes_into_one_group_per_ip_version_and_one_rule_each(fx: Harness, ent: LocalCloudArmor) -> None:
    v4 = addresses(30)
    assert 200 == send(fx, [*v4, "2a0b:4142:1234::/48"], "m1")

    groups = groups_of(ent)
    assert groups == {V4_1: (38, norm(v4)), V6_1: (10, ["2a0b:4142:1234::/48"])}
    rules = group_rules(fx)
    assert sorted(e for e, _ in rules.values()) == [
        f"evaluateAddressGroup('{V4_1}', origin.ip)", f"evaluateAddressGroup('{V6_1}', origin.ip)"]
    word = expiry_word(fx.clock() + timedelta(days=1))
    assert sorted(d for _, d in rules.values()) == [f"car1 g={FEED}:4 x={word}", f"car1 g={FEED}:6 x={word}"]
    assert max(rules) == BAND[1]  # group rules sit at the end of the band
    assert range_rules(fx) == []  # no range rule for the feed
    created = [r for r in fx.audit if r["change"] == "group"]
    assert {(r["op"], r["group"], r["size"]) for r in created} == {("created", V4_1, 30), ("created", V6_1, 1)}


def test_a_changed_snapshot_is_an_exact_diff_and_an_unchanged_one_writes_nothing(fx: Harness, ent: LocalCloudArmor) -> None:
    first = addresses(30)
    assert 200 == send(fx, first, "m1")
    second = first[2:] + addresses(3, start=100)
    before = len(ent.requests)

    assert 200 == send(fx, second, "m2")

    assert groups_of(ent) == {V4_1: (38, norm(second))}
    sent = [r for r in ent.requests[before:] if (r.get("route") or "").startswith("addressGroups.")
            and r["route"].endswith(("Items",)) and r["status"] == 200]
    # 3 and 2 items, batch 4; the adds first (the group holds them on top: 33 <= 38)
    assert [r["route"] for r in sent] == ["addressGroups.addItems", "addressGroups.removeItems"]
    assert sorted(sent[0]["body"]["items"]) == norm(addresses(3, start=100))
    assert sorted(sent[1]["body"]["items"]) == norm(first[:2])
    assert len(group_rules(fx)) == 1

    quiet = len(ent.requests)
    assert 200 == send(fx, second, "m3")
    writes = [r for r in ent.requests[quiet:] if (r.get("route") or "").split(".")[-1] in (
        "create", "delete", "addItems", "removeItems", "addRule", "patchRule", "removeRule", "setLabels")]
    assert writes == []
    assert groups_of(ent) == {V4_1: (38, norm(second))}
    assert fx.audit[-1]["change"] == "unchanged"


def test_growth_past_the_capacity_replaces_the_group_with_no_unprotected_moment(fx: Harness, ent: LocalCloudArmor) -> None:
    first = addresses(30)
    assert 200 == send(fx, first, "m1")
    start = len(ns_mutations(ent))
    grown = first + addresses(20, start=200)

    assert 200 == send(fx, grown, "m2")

    assert groups_of(ent) == {V4_2: (63, norm(grown))}
    assert [e for e, _ in group_rules(fx).values()] == [f"evaluateAddressGroup('{V4_2}', origin.ip)"]
    ops = ns_mutations(ent)[start:]
    order = [route.split(".")[-1] + ":" + (name if "'" not in name else name.split("'")[1]) for route, name in ops]
    # The new group is created and filled, its rule added; only then the old rule and group go.
    assert order[0] == f"create:{V4_2}"
    assert {o.split(":")[0] for o in order[1:-3]} == {"addItems"}
    assert order[-3:] == [f"addRule:{V4_2}", "removeRule:" + order[-2].split(":")[1], f"delete:{V4_1}"]
    # Replay: after every step, some rule references a group holding every address of the first list.
    held: dict[str, set[str]] = {V4_1: set(norm(first))}
    referenced = {V4_1}
    for route, name in ops:
        kind = route.split(".")[-1]
        target = name.split("'")[1] if "'" in name else name
        if kind == "create":
            held[target] = set()
        elif kind == "addItems":
            held[target] = set(norm(grown))  # batches: the group only grows here
        elif kind == "addRule":
            referenced.add(target)
        elif kind == "removeRule":
            referenced.discard(V4_1)
        elif kind == "delete":
            held.pop(target)
        assert any(set(norm(first)) <= held.get(g, set()) for g in referenced), (kind, target)


def test_cleanup_removes_the_rule_then_the_group_once_the_feed_expired(fx: Harness, ent: LocalCloudArmor) -> None:
    assert 200 == send(fx, addresses(12), "m1")
    assert 200 == fx.publish("on_manual", {"action": "block", "ranges": ["185.220.101.0/24"],
                                          "actor": "t", "ttl": "2h"}, message_id="b1")
    assert 200 == fx.publish("on_cleanup", {}, message_id="c1")  # the range band's cleanup leaves the group rule
    assert list(groups_of(ent)) == [V4_1] and len(group_rules(fx)) == 1

    fx.clock.advance(timedelta(days=1, minutes=16))
    start = len(ns_mutations(ent))
    assert 200 == fx.publish("on_cleanup", {}, message_id="c2")

    assert groups_of(ent) == {}
    assert group_rules(fx) == {}
    kinds = [route.split(".")[-1] for route, _ in ns_mutations(ent)[start:]]
    assert kinds.index("removeRule") < kinds.index("delete")
    deleted = [r for r in fx.audit if r["change"] == "group" and r["op"] == "deleted"]
    assert [(r["group"], r["reason"]) for r in deleted] == [(V4_1, "expired")]


def test_standard_tier_falls_back_to_band_rules_and_says_why_once(
        local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fx = configured(local_api, monkeypatch, tmp_path, CONFIG)
    items = addresses(30)

    assert 200 == send(fx, items, "m1")
    assert 200 == send(fx, items[1:], "m2")

    assert groups_of(local_api) == {}
    assert group_rules(fx) == {}
    assert sorted(fx.blocked()) == norm(items[1:])  # the feed is in band rules
    fallback = [r for r in fx.audit if r["change"] == "fallback"]
    assert len(fallback) == 1 and fallback[0]["source"] == FEED and "Enterprise" in fallback[0]["message"]
    assert fx.policy()["labels"]["car-tier"].startswith("standard-")
    creates = [r for r in local_api.requests if r.get("route") == "addressGroups.create"]
    assert len(creates) == 1  # the second snapshot went straight to the band


def test_a_retry_after_a_lost_answer_repeats_nothing(fx: Harness, ent: LocalCloudArmor) -> None:
    first = addresses(8)
    assert 200 == send(fx, first, "m1")
    ent.faults = FaultConfig(commit_then_timeout=1.0, commit_then_timeout_mode="reset",
                             methods=("addressGroups.addItems",))
    stop = threading.Event()

    def heal() -> None:  # the retry gets its answer
        while not stop.is_set():
            if ent.fault_counts.get("commit_then_timeout"):
                ent.faults = FaultConfig()
                return
            time.sleep(0.01)

    healer = threading.Thread(target=heal)
    healer.start()
    try:
        assert 200 == send(fx, first + addresses(2, start=50), "m2")
    finally:
        stop.set()
        healer.join()

    sent = [r for r in ent.requests if r.get("route") == "addressGroups.addItems" and
            sorted(r["body"]["items"]) == norm(addresses(2, start=50))]
    assert len(sent) == 2 and sent[0]["body"]["requestId"] == sent[1]["body"]["requestId"]
    assert groups_of(ent) == {V4_1: (10, norm(first + addresses(2, start=50)))}


def test_a_group_a_rule_references_cannot_be_deleted(fx: Harness, ent: LocalCloudArmor) -> None:
    from config.settings import load
    from responder.errors import GroupInUse
    from responder.groups import AddressGroups

    assert 200 == send(fx, addresses(5), "m1")
    settings = load()
    groups = AddressGroups(settings.policy, settings.groups, retry_deadline=timedelta(seconds=1))

    with pytest.raises(GroupInUse):
        groups.delete_group(V4_1)

    assert groups_of(ent) == {V4_1: (10, norm(addresses(5)))}
    assert len(group_rules(fx)) == 1


def test_guards_screen_every_item_and_refusals_are_recorded(fx: Harness, ent: LocalCloudArmor) -> None:
    items = addresses(5)
    assert 200 == send(fx, [*items, "10.1.2.3", "34.120.10.5"], "m1")  # private; allowlisted

    assert groups_of(ent) == {V4_1: (10, norm(items))}
    refused = [r for r in fx.audit if r["change"] == "refused"]
    assert {r["ranges"][0] for r in refused} == {"10.1.2.3/32", "34.120.10.5/32"}


def test_a_group_store_needs_a_snapshot_feed(tmp_path: Path) -> None:
    from config.settings import ConfigError, load

    path = tmp_path / "r.toml"
    path.write_text('[policy]\nproject = "p"\nname = "x"\n[band]\nstart = 1\nend = 100\n'
                    '[feeds.f]\nstore = "address-group"\n')
    with pytest.raises(ConfigError, match="snapshot"):
        load(path, environ={})


def test_status_lists_groups_and_explain_names_the_group_and_rule(
        fx: Harness, ent: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import cli

    items = addresses(12)
    assert 200 == send(fx, items, "m1")
    priority = next(iter(group_rules(fx)))
    capsys.readouterr()

    assert 0 == cli.main(["status", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert [(g["feed"], g["group"], g["items"], g["capacity"], g["priority"], g["state"]) for g in doc["groups"]] == [
        (FEED, V4_1, 12, 15, priority, "enforced")]
    assert doc["foreign"] == [] and doc["rules"] == []
    assert 0 == cli.main(["status"])
    text = capsys.readouterr().out
    assert f"group {V4_1}" in text and "12 / 15 items" in text

    assert 0 == cli.main(["explain", items[3], "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["blocked"] is True
    assert [(c["group"], c["priority"], c["range"]) for c in doc["covered_by"]] == [(V4_1, priority, items[3] + "/32")]
    assert 0 == cli.main(["explain", items[3]])
    assert f"in address group {V4_1} (feed {FEED}), matched by rule {priority}" in capsys.readouterr().out


def test_a_re_pulled_list_refreshes_the_rule_expiry_only_past_half_the_ttl(fx: Harness, ent: LocalCloudArmor) -> None:
    items = addresses(6)
    assert 200 == send(fx, items, "m1")
    (first,) = [d for _, d in group_rules(fx).values()]

    fx.clock.advance(timedelta(hours=1))
    quiet = len(ent.requests)
    assert 200 == send(fx, items, "m2")  # 23 h of 24 left: nothing written
    assert [d for _, d in group_rules(fx).values()] == [first]
    assert not [r for r in ent.requests[quiet:] if r.get("route") == "securityPolicies.patchRule"]

    fx.clock.advance(timedelta(hours=12))
    assert 200 == send(fx, items, "m3")  # 11 h left: the expiry moves to this snapshot + 1 d
    (moved,) = [d for _, d in group_rules(fx).values()]
    assert first == f"car1 g={FEED}:4 x={expiry_word(fx.clock() - timedelta(hours=13) + timedelta(days=1))}"
    assert moved == f"car1 g={FEED}:4 x={expiry_word(fx.clock() + timedelta(days=1))}"
    assert groups_of(ent) == {V4_1: (10, norm(items))}


def test_concurrent_snapshots_of_one_feed_take_turns_under_the_lease(fx: Harness, ent: LocalCloudArmor) -> None:
    """Two instances sync different lists of the same feed at once: each
    diff is made and written under the lease, so neither fails on the
    other's items and the group ends as exactly one of the two lists."""
    from config.settings import load
    from responder.audit import Audit
    from responder.compute import CloudArmor
    from responder.groups import AddressGroups
    from responder.groupstore import GroupStore
    from responder.service import EventRef

    assert 200 == send(fx, addresses(20), "m0")
    settings = load()
    lists = {"a": addresses(20)[2:] + addresses(3, start=300), "b": addresses(20)[4:] + addresses(4, start=400)}
    errors: list[BaseException] = []

    def instance(name: str) -> None:
        armor = CloudArmor(settings.policy, retry_deadline=timedelta(seconds=5))
        groups = AddressGroups(settings.policy, settings.groups, retry_deadline=timedelta(seconds=5))
        store = GroupStore(settings, armor, lambda: groups, Audit(file=None), clock=fx.clock, holder=name)
        nets = [ipaddress.ip_network(a) for a in lists[name]]
        try:
            store.sync(settings.feed(FEED), nets, expiry=fx.clock() + timedelta(days=1), action="deny(403)",
                       preview=False, event=EventRef(f"m-{name}", FEED))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    ent.state.op_delay = 0.05  # interleave the two instances
    threads = [threading.Thread(target=instance, args=(n,)) for n in lists]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    (final,) = groups_of(ent).values()
    assert final[1] in (norm(lists["a"]), norm(lists["b"]))
    assert len(group_rules(fx)) == 1
    leased = [r for r in ent.requests if r.get("route") == "securityPolicies.setLabels" and r["status"] == 200]
    assert len(leased) >= 4  # each instance took and released the lease


def test_group_writes_stop_when_the_delivery_budget_runs_short_and_the_redelivery_finishes(
        fx: Harness, ent: LocalCloudArmor) -> None:
    from handlers import runtime
    from responder.errors import OutOfTime

    calls = []

    def short(self: Any) -> None:
        calls.append(1)
        if len(calls) == 3:  # the third group/rule call finds no time left
            raise OutOfTime("the delivery's time budget would run out")

    items = addresses(12)  # create + 3 addItems (batch 4) + addRule
    import responder.service as service

    original = service.Budget.require
    service.Budget.require = short  # type: ignore[method-assign]
    try:
        assert 500 == send(fx, items, "m1")
    finally:
        service.Budget.require = original  # type: ignore[method-assign]
    assert group_rules(fx) == {}  # not referenced yet: the feed is not half-enforced by a rule
    assert [r["change"] for r in runtime.current().audit.records][-1] == "deferred"

    assert 200 == send(fx, items, "m1")  # the redelivery
    assert groups_of(ent) == {V4_1: (15, norm(items))}
    assert len(group_rules(fx)) == 1


def test_an_item_call_whose_operation_failed_succeeds_on_redelivery(fx: Harness, ent: LocalCloudArmor) -> None:
    assert 200 == send(fx, addresses(5), "m1")
    ent.faults = FaultConfig(op_error=1.0, methods=("addressGroups.addItems",), scope="all")
    second = addresses(5) + addresses(2, start=50)
    assert send(fx, second, "m2") >= 500  # the addItems operation ends in INTERNAL_ERROR: redeliver
    ent.faults = FaultConfig()  # the fault is gone
    # Found by the fault campaign (--group-feed --faults): the server answers a
    # spent requestId with its failed operation, so the retry takes the next id.
    assert send(fx, second, "m2") == 200
    assert groups_of(ent)[V4_1][1] == norm(second)


# A manual unblock lifts the address from the feeds' groups too (README, "Address groups").
LISTED = "45.9.148.0/24"
AROUND_7 = ["45.9.148.0/30", "45.9.148.4/31", "45.9.148.6/32", "45.9.148.8/29", "45.9.148.16/28",
            "45.9.148.32/27", "45.9.148.64/26", "45.9.148.128/25"]  # the /24 minus 45.9.148.7


def trail() -> list[dict[str, Any]]:
    """The audit file every process of the test writes (RESPONDER_AUDIT_FILE)."""
    import os

    from responder.audit import read_file

    return list(read_file(os.environ["RESPONDER_AUDIT_FILE"]))


def unblock(capsys: pytest.CaptureFixture[str], *ranges: str) -> int:
    import cli

    code = cli.main(["unblock", *ranges, "--actor", "ops", "--reason", "false positive"])
    capsys.readouterr()
    return code


def test_a_manual_unblock_splits_a_group_item_around_the_address_and_the_rule_stays(
        fx: Harness, ent: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import cli

    other = addresses(1)
    assert 200 == send(fx, [LISTED, *other], "m1")
    rules = group_rules(fx)
    assert groups_of(ent) == {V4_1: (10, norm([LISTED, *other]))}

    assert 0 == unblock(capsys, "45.9.148.7")

    assert groups_of(ent) == {V4_1: (10, norm([*AROUND_7, *other]))}
    assert group_rules(fx) == rules  # the band rule still references the group
    assert 0 == cli.main(["explain", "45.9.148.7", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert (False, []) == (doc["blocked"], doc["covered_by"])
    assert 0 == cli.main(["explain", "45.9.148.6", "--json"])  # its neighbour stays blocked by the group
    assert [(c["group"], c["range"]) for c in json.loads(capsys.readouterr().out)["covered_by"]] == [
        (V4_1, "45.9.148.6/32")]
    lifted = [r for r in trail() if r["change"] == "group" and r.get("op") == "lifted"]
    assert [(r["group"], r["ranges"], r["removed"], sorted(r["added"]), r["actor"])
            for r in lifted] == [(V4_1, ["45.9.148.7/32"], [LISTED], norm(AROUND_7), "ops")]
    # Writes: the parts are added (two batches of 4) before the /24 goes.
    sent = [(r["route"], sorted(r["body"]["items"])) for r in ent.requests
            if r.get("route") in ("addressGroups.addItems", "addressGroups.removeItems") and r["status"] == 200][1:]
    assert [route for route, _ in sent] == ["addressGroups.addItems"] * 2 + ["addressGroups.removeItems"]
    assert (norm(AROUND_7), [LISTED]) == (sorted(i for _, items in sent[:2] for i in items), sent[2][1])


def test_a_later_snapshot_that_lists_the_address_blocks_it_again(
        fx: Harness, ent: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    listed = [LISTED, *addresses(1)]
    assert 200 == send(fx, listed, "m1")
    assert 0 == unblock(capsys, "45.9.148.7")

    assert 200 == send(fx, listed, "m2")

    assert groups_of(ent) == {V4_1: (10, norm(listed))}


def test_an_unblock_message_through_the_manual_function_removes_exact_items(fx: Harness, ent: LocalCloudArmor) -> None:
    items = addresses(4)
    assert 200 == send(fx, [LISTED, *items], "m1")
    rules = group_rules(fx)
    before = len(ent.requests)

    assert 200 == fx.publish("on_manual", {"action": "unblock", "ranges": [items[2], LISTED], "actor": "ops"},
                             message_id="u1")

    assert groups_of(ent) == {V4_1: (10, norm([*items[:2], items[3]]))}
    assert group_rules(fx) == rules
    (lifted,) = [r for r in fx.audit if r["change"] == "group" and r.get("op") == "lifted"]
    assert (sorted(lifted["ranges"]), sorted(lifted["removed"]), lifted["added"]) == (
        norm([LISTED, items[2]]), norm([LISTED, items[2]]), [])
    writes = [r["route"] for r in ent.requests[before:] if r["status"] == 200 and r.get("route") in (
        "securityPolicies.setLabels", "addressGroups.removeItems")]
    assert writes == ["securityPolicies.setLabels", "addressGroups.removeItems", "securityPolicies.setLabels"]


def test_an_unblock_whose_parts_do_not_fit_the_group_changes_nothing_and_says_why(
        fx: Harness, ent: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    import cli

    items = [LISTED, *addresses(3)]  # 4 items, capacity 10: splitting the /24 around a /32 needs 12
    assert 200 == send(fx, items, "m1")
    before = len(ent.requests)

    assert cli.EXIT_REFUSED == unblock(capsys, "45.9.148.7")

    assert groups_of(ent) == {V4_1: (10, norm(items))}
    assert not [r for r in ent.requests[before:] if (r.get("route") or "").endswith("Items")]
    (refused,) = [r for r in trail() if r["change"] == "refused" and r.get("group")]
    assert (V4_1, ["45.9.148.7/32"], 10, 12) == (refused["group"], refused["ranges"], refused["capacity"],
                                                   refused["needed"])
