"""``cli.py capacity`` against the local API, files and the loopback feed
server. Every figure it prints is checked against one computed here on the
generated lists (bench/feeds.py) with ipaddress.collapse_addresses and
ceil(n / 10), not against the planner's own arithmetic."""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from feed_server import FeedServer

import cli
from bench.feeds import FEED_CONFIG, Feed, four_feeds
from localapi import LocalCloudArmor
from tests.e2e.conftest import BAND, OPERATOR_RULES, POLICY, PROJECT, create_policy

FEEDS = four_feeds()
MAX_RULES = 150
OUTSIDE = len(OPERATOR_RULES)  # the operator rules, the default rule among them


def aggregated(feed: Feed) -> int:
    return len(list(ipaddress.collapse_addresses(feed.networks)))


def rules(feed: Feed) -> int:
    return math.ceil(aggregated(feed) / 10)


@pytest.fixture
def env(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LocalCloudArmor:
    base = (Path(cli.__file__).resolve().parent / "config" / "responder.toml").read_text()
    config = tmp_path / "responder.toml"
    config.write_text(base + FEED_CONFIG)
    monkeypatch.setenv("RESPONDER_CONFIG", str(config))
    monkeypatch.setenv("RESPONDER_PROJECT", PROJECT)
    monkeypatch.setenv("RESPONDER_POLICY", POLICY)
    monkeypatch.setenv("RESPONDER_API_ENDPOINT", local_api.endpoint)
    monkeypatch.setenv("RESPONDER_BAND_START", str(BAND[0]))
    monkeypatch.setenv("RESPONDER_BAND_END", str(BAND[1]))
    monkeypatch.setenv("RESPONDER_RETRY_DEADLINE", "2s")
    monkeypatch.setenv("RESPONDER_AUDIT_FILE", str(tmp_path / "audit.jsonl"))
    create_policy(local_api)
    return local_api


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "lists"
    folder.mkdir()
    return {name: feed.write(folder) for name, feed in FEEDS.items()}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["capacity", "--json", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out) if out else {}


def file_args(files: dict[str, Path], *names: str) -> list[str]:
    return [f"--file={name}={files[name]}" for name in names or files]


def band_rules(server: LocalCloudArmor) -> list[dict[str, Any]]:
    server.settle()
    policy = server.policy(PROJECT, POLICY)
    assert policy is not None
    return [r for r in policy["rules"] if BAND[0] <= r["priority"] <= BAND[1]]


def test_four_real_sized_feeds_do_not_fit_and_the_figures_are_the_lists(
    env: LocalCloudArmor, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = run(capsys, *file_args(files))

    assert cli.EXIT_OVER == code
    assert ("capacity", 1) == (doc["kind"], doc["version"])
    by_name = {f["name"]: f for f in doc["feeds"]}
    assert set(FEEDS) == set(by_name)
    for name, feed in FEEDS.items():
        got = by_name[name]
        assert (len(feed.networks), aggregated(feed), rules(feed), 0) == (
            got["entries"], got["ranges"], got["rules"], got["refused"]), name
    needed = sum(rules(f) for f in FEEDS.values())  # the lists are disjoint, one expiry each
    assert needed == doc["total"]["rules"] > MAX_RULES
    assert sum(aggregated(f) for f in FEEDS.values()) == doc["total"]["ranges"]
    capacity = min(MAX_RULES, BAND[1] - BAND[0] + 1, cli.DEFAULT_QUOTA - OUTSIDE)
    assert {"max_rules": MAX_RULES, "quota": 200, "rules_outside_band": OUTSIDE, "quota_room": 200 - OUTSIDE,
            "capacity": capacity} == {k: doc["limits"][k] for k in ("max_rules", "quota", "rules_outside_band", "quota_room", "capacity")}
    assert (False, needed - capacity) == (doc["fits"], doc["over"])
    # The eviction order: soonest expiry first (Tor's 3h), DROP's 2d last; what stays fills the band.
    evicted = doc["evicted"]
    assert aggregated(FEEDS["tor-exits"]) == evicted["by_source"]["tor-exits"]
    assert "spamhaus-drop" not in evicted["by_source"]
    assert "tor-exits" == evicted["order"][0]["sources"]
    assert capacity == doc["kept"]["rules"]
    assert aggregated(FEEDS["spamhaus-drop"]) == doc["kept"]["by_feed"]["spamhaus-drop"]
    assert doc["total"]["ranges"] == doc["kept"]["ranges"] + evicted["ranges"]
    assert [] == band_rules(env), "capacity changed the band"


def test_the_text_shows_the_same_figures(env: LocalCloudArmor, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.EXIT_OVER == cli.main(["capacity", *file_args(files)])
    out = capsys.readouterr().out
    drop = FEEDS["spamhaus-drop"]
    assert any(line.split()[:7] == ["spamhaus-drop", "spamhaus", f"{len(drop.networks):,}", "0", "0",
                                    f"{aggregated(drop):,}", f"{rules(drop):,}"] for line in out.splitlines()), out
    needed = sum(rules(f) for f in FEEDS.values())
    assert f"in {needed:,} rules; the band may hold {MAX_RULES}" in out
    assert f"DOES NOT FIT: {needed - MAX_RULES:,} rules over" in out
    assert "example-intel: not checked: no url" in out


def test_one_list_that_fits_exits_zero_and_a_smaller_quota_does_not(
    env: LocalCloudArmor, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    drop = FEEDS["spamhaus-drop"]
    code, doc = run(capsys, *file_args(files, "spamhaus-drop"))
    assert (cli.EXIT_OK, True, rules(drop), 0) == (code, doc["fits"], doc["total"]["rules"], doc["evicted"]["ranges"])

    quota = 100
    code, doc = run(capsys, *file_args(files, "spamhaus-drop"), "--quota", str(quota))
    assert (cli.EXIT_OVER, quota - OUTSIDE) == (code, doc["limits"]["capacity"])
    assert quota - OUTSIDE == doc["kept"]["rules"]
    assert rules(drop) - (quota - OUTSIDE) == doc["over"]


def test_manual_blocks_count_and_are_never_evicted(
    env: LocalCloudArmor, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manual = [f"91.92.{i}.0/24" for i in range(0, 40, 2)]  # 20 ranges, none adjacent: 2 rules
    assert 0 == cli.main(["block", *manual, "--ttl", "1h", "--actor", "me"])
    capsys.readouterr()
    before = band_rules(env)

    code, doc = run(capsys, *file_args(files, "tor-exits"), "--quota", "20")

    assert cli.EXIT_OVER == code
    assert (20, 2) == (doc["others"]["ranges"], doc["others"]["rules"])
    assert 20 - OUTSIDE == doc["limits"]["quota_room"] == doc["limits"]["capacity"]  # the band's rules are not "outside"
    assert "manual" not in doc["evicted"]["by_source"]
    assert doc["limits"]["capacity"] == doc["kept"]["rules"]
    tor = FEEDS["tor-exits"]
    assert aggregated(tor) - doc["kept"]["by_feed"]["tor-exits"] == doc["evicted"]["by_source"]["tor-exits"]
    assert before == band_rules(env)


@pytest.fixture
def feed_server(tmp_path: Path) -> Iterator[FeedServer]:
    folder = tmp_path / "served"
    folder.mkdir()
    server = FeedServer(folder).start()
    yield server
    server.stop()


def test_a_configured_url_is_pulled_with_the_feed_pull_downloader(
    env: LocalCloudArmor, feed_server: FeedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    et = FEEDS["et-compromised"]
    et.write(feed_server.folder)
    config = tmp_path / "pull.toml"
    config.write_text((Path(cli.__file__).resolve().parent / "config" / "responder.toml").read_text()
                      + f'\n[feeds.et-compromised]\nformat = "plain"\nurl = "{feed_server.url("et-compromised.txt")}"\n')
    monkeypatch.setenv("RESPONDER_CONFIG", str(config))

    code, doc = run(capsys)

    assert cli.EXIT_OK == code
    assert [("et-compromised", "url", len(et.networks), aggregated(et), rules(et))] == [
        (f["name"], f["source"], f["entries"], f["ranges"], f["rules"]) for f in doc["feeds"]]
    assert [200] == [r["status"] for r in feed_server.gets("et-compromised.txt")]

    feed_server.modes["/et-compromised.txt"] = {"status": "404"}
    assert cli.EXIT_REFUSED == cli.main(["capacity"])
    assert "HTTP 404" in capsys.readouterr().err


def test_bad_arguments_are_usage_errors(env: LocalCloudArmor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.EXIT_USAGE == cli.main(["capacity", "--file", "no-equals-sign"])
    assert cli.EXIT_USAGE == cli.main(["capacity", "--file", f"drop={tmp_path / 'missing.txt'}"])
    assert "cannot read" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Feeds stored in address groups (README, "Address groups"): the figures are
# computed here from the lists (collapse_addresses, ceil(n x 1.25)), not with
# the store's own arithmetic.

HEADROOM, MIN_CAPACITY = 0.25, 50
GROUPS_CONFIG = f"""
[feeds.firehol-l1]
format = "netset"
snapshot = true
store = "address-group"
ttl = "1d"
max_entries = 1000000

[feeds.tor-exits]
format = "tor"
snapshot = true
store = "auto"
ttl = "3h"
max_entries = 1000000

[feeds.tiny]
format = "plain"
snapshot = true
store = "auto"
ttl = "1d"

[feeds.mixed]
format = "plain"
snapshot = true
store = "address-group"
ttl = "1d"

[groups]
capacity_headroom = {HEADROOM}
min_capacity = {MIN_CAPACITY}
max_items_per_call = 500
auto_rules = 20
"""
TINY = ["185.7.0.0/24", "45.9.149.0/24"]  # 1 band rule: stays in the band (auto)
MIXED = ["91.198.0.0/24", "62.1.2.0/24", "62.1.3.0/24", "2a0b:4142::/32", "2a0c:1::/48"]


def by_version(items: list[str], version: int) -> int:
    return len(list(ipaddress.collapse_addresses(
        n for n in (ipaddress.ip_network(i) for i in items) if n.version == version)))


def group_capacity(items: int) -> int:
    return max(MIN_CAPACITY, math.ceil(items * (1 + HEADROOM)))


@pytest.fixture
def ent() -> Iterator[LocalCloudArmor]:
    server = LocalCloudArmor(op_delay=0.01, wait_timeout=10.0, seed=3, project=PROJECT, tier="enterprise").start()
    yield server
    server.stop()


@pytest.fixture
def grouped_files(files: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    out = {name: files[name] for name in ("firehol-l1", "tor-exits")}
    for name, items in (("tiny", TINY), ("mixed", MIXED)):
        out[name] = tmp_path / f"{name}.txt"
        out[name].write_text("\n".join(items) + "\n")
    return out


def harness(server: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    from tests.e2e.support import configured

    return configured(server, monkeypatch, tmp_path, GROUPS_CONFIG)


def expression_rules(server: LocalCloudArmor) -> int:
    server.settle()
    policy = server.policy(PROJECT, POLICY)
    assert policy is not None
    return sum(1 for r in policy["rules"] if "expr" in r.get("match", {}))


def test_feeds_stored_in_groups_take_one_band_rule_per_group_and_the_groups_hold_the_lists(
    ent: LocalCloudArmor, grouped_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    harness(ent, monkeypatch, tmp_path)
    expressions = expression_rules(ent)  # the operator's WAF rule

    code, doc = run(capsys, *file_args(grouped_files))

    firehol, tor = aggregated(FEEDS["firehol-l1"]), aggregated(FEEDS["tor-exits"])
    v4, v6 = by_version(MIXED, 4), by_version(MIXED, 6)
    assert {"firehol-l1": "address-group", "tor-exits": "address-group", "tiny": "band", "mixed": "address-group"} == {
        f["name"]: f["stored_in"] for f in doc["feeds"]}
    assert [0, 0, 0, 0] == [f["refused"] for f in doc["feeds"]]
    assert [("firehol-l1", 4, firehol, "created", "car-firehol-l1-v4-1", group_capacity(firehol), math.ceil(firehol / 10)),
            ("tor-exits", 4, tor, "created", "car-tor-exits-v4-1", group_capacity(tor), math.ceil(tor / 10)),
            ("mixed", 4, v4, "created", "car-mixed-v4-1", MIN_CAPACITY, 1),
            ("mixed", 6, v6, "created", "car-mixed-v6-1", MIN_CAPACITY, 1)] == [
        (g["feed"], g["ip_version"], g["items"], g["action"], g["group"], g["capacity"], g["band_rules"])
        for g in doc["groups"]]
    assert [math.ceil(firehol / 500), math.ceil(tor / 500), 1, 1] == [g["item_calls"] for g in doc["groups"]]
    # The band holds the tiny list's ranges in range rules, and one rule per group.
    assert {"ranges": len(TINY), "rules": 1} == doc["total"]
    assert (4, 200 - OUTSIDE - 4) == (doc["limits"]["group_rules"], doc["limits"]["quota_room"])
    assert {"quota": 20, "other_rules": expressions, "group_rules": 4, "used": expressions + 4, "fits": True} == doc["ceval"]
    assert ("unknown", True, cli.EXIT_OK) == (doc["tier"]["tier"], doc["fits"], code)
    assert [] == band_rules(ent) and {} == dict(ent.state.groups), "capacity changed something"

    assert cli.EXIT_OK == cli.main(["capacity", *file_args(grouped_files)])
    out = capsys.readouterr().out
    assert (f"  firehol-l1 IPv4: {firehol:,} items in a new group car-firehol-l1-v4-1 of capacity "
            f"{group_capacity(firehol):,}; {firehol:,} to add, 0 to remove in {math.ceil(firehol / 500)} item call(s); "
            f"1 band rule instead of {math.ceil(firehol / 10)}") in out
    assert 'tiny: store = "auto": 1 band rules, not more than groups.auto_rules (20)' in out
    assert f"= {expressions + 4} of 20" in out and "Cloud Armor tier: not known" in out


def test_a_loaded_group_is_kept_while_the_list_fits_and_replaced_when_it_outgrows_it(
    ent: LocalCloudArmor, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    fx = harness(ent, monkeypatch, tmp_path)
    firehol = FEEDS["firehol-l1"]
    assert 200 == fx.publish("on_threat_feed", firehol.body, message_id="f1",
                             attributes={"feed": "firehol-l1", "format": "netset", "snapshot": "true"})
    ent.settle()
    held = ent.group(PROJECT, "car-firehol-l1-v4-1")
    assert held is not None and len(held["items"]) == aggregated(firehol)
    capsys.readouterr()  # what the function printed is not the CLI's answer

    code, doc = run(capsys, *file_args(files, "firehol-l1"))

    ((name, current, action, capacity, add, remove),) = [
        (g["group"], g["current"], g["action"], g["capacity"], g["add"], g["remove"]) for g in doc["groups"]]
    assert ("car-firehol-l1-v4-1", "kept", int(held["capacity"]), 0, 0) == (name, action, capacity, add, remove)
    assert {"group": name, "items": len(held["items"]), "capacity": int(held["capacity"])} == current
    assert (0, 1, cli.EXIT_OK) == (doc["limits"]["group_rules"] - 1, doc["ceval"]["group_rules"], code)

    grown = tmp_path / "grown.txt"  # firehol + tor: more items than the group's capacity
    grown.write_bytes(firehol.body + FEEDS["tor-exits"].body)
    code, doc = run(capsys, f"--file=firehol-l1={grown}")
    items = len(list(ipaddress.collapse_addresses([*firehol.networks, *FEEDS["tor-exits"].networks])))
    assert items > int(held["capacity"])
    assert [("replaced", "car-firehol-l1-v4-2", group_capacity(items), items)] == [
        (g["action"], g["group"], g["capacity"], g["items"]) for g in doc["groups"]]
    assert held == ent.group(PROJECT, "car-firehol-l1-v4-1"), "capacity changed the group"


def test_on_the_standard_tier_group_feeds_count_as_band_rules(
    local_api: LocalCloudArmor, grouped_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    fx = harness(local_api, monkeypatch, tmp_path)
    both = file_args(grouped_files, "tiny", "mixed")
    code, doc = run(capsys, *both, "--tier", "standard")
    assert (["band", "band"], [], 0) == ([f["stored_in"] for f in doc["feeds"]], doc["groups"], doc["ceval"]["group_rules"])
    ranges = len(TINY) + by_version(MIXED, 4) + by_version(MIXED, 6)
    assert (ranges, 2) == (doc["total"]["ranges"], doc["total"]["rules"])  # one range rule per feed

    # What the responder learned from the API (its tier label) is what capacity reads without --tier.
    assert 200 == fx.publish("on_threat_feed", "\n".join(MIXED).encode(), message_id="m1",
                             attributes={"feed": "mixed", "format": "plain", "snapshot": "true"})
    assert fx.policy()["labels"]["car-tier"].startswith("standard-")
    capsys.readouterr()  # what the function printed (its structured log lines) is not the CLI's answer
    code, doc = run(capsys, *both)
    assert ("standard", "policy label car-tier") == (doc["tier"]["tier"], doc["tier"]["from"])
    assert ([], 2) == (doc["groups"], doc["total"]["rules"])
    assert cli.EXIT_OK == cli.main(["capacity", *both])
    assert "Cloud Armor tier: STANDARD (policy label car-tier): address groups need Enterprise" in capsys.readouterr().out


def test_group_rules_past_the_advanced_rule_quota_do_not_fit(
    ent: LocalCloudArmor, grouped_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    harness(ent, monkeypatch, tmp_path)
    expressions = expression_rules(ent)
    code, doc = run(capsys, *file_args(grouped_files, "mixed"), "--ceval-quota", str(expressions + 1))
    assert (cli.EXIT_OVER, False, 2) == (code, doc["ceval"]["fits"], doc["ceval"]["group_rules"])
    assert cli.EXIT_OVER == cli.main(["capacity", *file_args(grouped_files, "mixed"), "--ceval-quota", str(expressions + 1)])
    assert "DOES NOT FIT: the group rules need 2 advanced rules and 1 are left" in capsys.readouterr().out
