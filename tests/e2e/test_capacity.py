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
