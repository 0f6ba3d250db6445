"""Scheduled feed pulls through on_threat_feed, against a real feed server
on loopback (scripts/feed_server.py) and the local Cloud Armor API.

Every bad download is checked on the band read back from the local API (it
must not change) and on the one record it leaves; the good paths on what
landed and on the calls they cost (policy reads and mutations, counted in the
local API's request log)."""

from __future__ import annotations

import gzip
import ipaddress
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from feed_server import FeedServer

from localapi import LocalCloudArmor
from tests.e2e.conftest import POLICY, Harness
from tests.e2e.support import configured, records

DROP = [f"45.{a}.{b}.0/24" for a in (61, 62, 63) for b in (0, 64, 128, 192)]  # 12 ranges, none adjacent


def drop_list(ranges: list[str]) -> bytes:
    lines = ["; Spamhaus-style DROP list (generated for the tests)", "; Last-Modified: Mon, 01 Jan 2026 00:00:00 GMT"]
    lines += [f"{r} ; SBL{600000 + i}" for i, r in enumerate(ranges)]
    return ("\n".join(lines) + "\n; EOF\n").encode()


@pytest.fixture
def feed_server(tmp_path: Path) -> Iterator[FeedServer]:
    folder = tmp_path / "feeds"
    folder.mkdir()
    server = FeedServer(folder).start()
    yield server
    server.stop()


def pull_config(server: FeedServer, name: str = "drop", path: str = "drop.txt", **extra: Any) -> str:
    lines = [f"[feeds.{name}]", 'format = "spamhaus"', 'ttl = "2d"', "snapshot = true",
             "max_drop_share = 0.5", f'url = "{server.url(path)}"', 'every = "1h"', 'timeout = "2s"',
             'connect_timeout = "2s"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def serve(server: FeedServer, path: str, body: bytes) -> None:
    (server.folder / path).write_bytes(body)


def pull(h: Harness, feed: str = "drop", later: timedelta = timedelta(minutes=1), **fields: Any) -> int:
    h.clock.advance(later)
    return h.publish("on_threat_feed", {"action": "pull", "feed": feed, **fields})


def ranges(h: Harness) -> set[str]:
    nets = [ipaddress.ip_network(n) for n in h.blocked()]
    return {str(c) for c in ipaddress.collapse_addresses(n for n in nets if n.version == 4)}


def policy_reads(h: Harness, since: int) -> int:
    return sum(1 for r in h.server.requests[since:]
               if r["method"] == "GET" and r["path"].endswith(f"/securityPolicies/{POLICY}"))


def mutations_since(h: Harness, since: int) -> int:
    return sum(1 for r in h.server.requests[since:]
               if r["method"] == "POST" and r["path"].rsplit("/", 1)[-1] in ("addRule", "patchRule", "removeRule"))


@pytest.fixture
def landed(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
           feed_server: FeedServer) -> Harness:
    """The drop feed pulled once: its 12 ranges are in the band."""
    serve(feed_server, "drop.txt", drop_list(DROP))
    h = configured(local_api, monkeypatch, tmp_path, pull_config(feed_server))
    assert 200 == pull(h)
    assert set(DROP) == ranges(h)
    return h


# ------------------------------------------------------------ good pulls


def test_a_pull_lands_the_feed_and_records_its_validators_in_a_policy_label(landed: Harness) -> None:
    label = landed.policy()["labels"]["car-feed-drop"]
    assert set(DROP) == ranges(landed)
    assert 4 == len(label.split("-")) and label.split("-")[3].startswith("h")  # the server's hex ETag fits


def test_a_304_costs_no_policy_read_and_no_mutation(landed: Harness, feed_server: FeedServer) -> None:
    before, calls = landed.blocked(), len(landed.server.requests)
    assert 200 == pull(landed)
    assert 304 == feed_server.gets("drop.txt")[-1]["status"]
    assert 0 == policy_reads(landed, calls)
    assert 0 == mutations_since(landed, calls)
    assert before == landed.blocked()


def test_an_unchanged_body_costs_no_mutation_and_at_most_one_read(
    local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, feed_server: FeedServer
) -> None:
    """A server without validators answers 200 each time: the digest of
    the body, kept in the policy label, says it is the list already applied."""
    serve(feed_server, "drop.txt", drop_list(DROP))
    h = configured(local_api, monkeypatch, tmp_path, pull_config(feed_server, path="drop.txt?validators=0"))
    assert 200 == pull(h)
    before, calls = h.blocked(), len(h.server.requests)
    assert 200 == pull(h, later=timedelta(hours=3))
    assert 200 == feed_server.gets("drop.txt")[-1]["status"]
    assert 0 == mutations_since(h, calls)
    assert 1 >= policy_reads(h, calls)
    assert before == h.blocked()


def test_an_unchanged_feed_is_applied_again_after_half_its_ttl_so_its_entries_never_lapse(landed: Harness) -> None:
    before = landed.blocked()
    assert 200 == pull(landed, later=timedelta(hours=25))  # ttl 2d: due after 1d
    after = landed.blocked()
    assert all(after[n] > before[n] for n in DROP)


def test_a_changed_list_replaces_the_snapshot_and_its_label(landed: Harness, feed_server: FeedServer) -> None:
    """The withdrawals run under the lease (the labels change meanwhile):
    the validator label is still written, after a re-read."""
    label = landed.policy()["labels"]["car-feed-drop"]
    serve(feed_server, "drop.txt", drop_list(DROP[:10] + ["185.56.80.0/22"]))
    assert 200 == pull(landed)
    assert set(DROP[:10]) | {"185.56.80.0/22"} == ranges(landed)
    assert label.split("-")[0] != landed.policy()["labels"]["car-feed-drop"].split("-")[0]
    assert "car-lease" not in landed.policy()["labels"]


def test_a_gzip_encoded_answer_and_a_gz_file_are_both_read(
    local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, feed_server: FeedServer
) -> None:
    serve(feed_server, "drop.txt", drop_list(DROP[:6]))
    serve(feed_server, "edrop.txt.gz", gzip.compress(drop_list(DROP[6:])))
    extra = pull_config(feed_server) + pull_config(feed_server, name="edrop", path="edrop.txt.gz")
    h = configured(local_api, monkeypatch, tmp_path, extra)
    assert 200 == pull(h) and 200 == pull(h, feed="edrop")
    assert "gzip" in feed_server.gets("drop.txt")[-1]["headers"].get("Accept-Encoding", "")
    assert set(DROP) == ranges(h)


def test_a_server_error_is_retried_within_the_pull(
    local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, feed_server: FeedServer
) -> None:
    serve(feed_server, "drop.txt", drop_list(DROP))
    h = configured(local_api, monkeypatch, tmp_path, pull_config(feed_server, path="drop.txt?fail=2"))
    assert 200 == pull(h)
    assert [503, 503, 200] == [r["status"] for r in feed_server.gets("drop.txt")]
    assert set(DROP) == ranges(h)


def test_header_values_come_from_the_environment(
    local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, feed_server: FeedServer
) -> None:
    serve(feed_server, "drop.txt", drop_list(DROP))
    monkeypatch.setenv("FEED_TOKEN", "Bearer s3cret")
    h = configured(local_api, monkeypatch, tmp_path,
                   pull_config(feed_server, headers='{Authorization = "env:FEED_TOKEN"}'))
    assert 200 == pull(h)
    assert "Bearer s3cret" == feed_server.gets("drop.txt")[-1]["headers"]["Authorization"]
    assert set(DROP) == ranges(h)


# ------------------------------------------------------- refused messages


@pytest.mark.parametrize("message", [
    {"action": "pull", "feed": "nosuch"},
    {"action": "pull", "feed": "example-intel"},  # configured, but without a url
    {"action": "pull", "feed": "drop", "url": "http://169.254.169.254/computeMetadata/v1/"},
    {"action": "pull", "feed": "drop", "headers": {"Metadata-Flavor": "Google"}},
    {"action": "fetch", "feed": "drop"},
])
def test_a_pull_message_never_chooses_what_is_fetched(
    landed: Harness, feed_server: FeedServer, message: dict[str, Any]
) -> None:
    before, gets = landed.blocked(), len(feed_server.requests)
    landed.clock.advance(timedelta(minutes=1))
    assert 200 == landed.publish("on_threat_feed", message, message_id="m-refused")
    assert 1 == len(records(landed, "rejected", "m-refused"))
    assert gets == len(feed_server.requests)
    assert before == landed.blocked()


def test_a_pull_message_with_attributes_is_refused(landed: Harness, feed_server: FeedServer) -> None:
    before, gets = landed.blocked(), len(feed_server.requests)
    status = landed.publish("on_threat_feed", {"action": "pull", "feed": "drop"},
                            attributes={"url": "http://127.0.0.1:1/"}, message_id="m-attr")
    assert 200 == status
    assert 1 == len(records(landed, "rejected", "m-attr"))
    assert gets == len(feed_server.requests)
    assert before == landed.blocked()


# ------------------------------------------------------------ bad downloads
# Each: the band is unchanged, one record, and acked (200) or redelivered (500).


def bad_pull(h: Harness, server: FeedServer, mode: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]]]:
    if mode is not None:
        server.modes["/drop.txt"] = mode
    before = h.blocked()
    h.clock.advance(timedelta(minutes=1))
    status = h.publish("on_threat_feed", {"action": "pull", "feed": "drop"}, message_id="m-bad")
    assert before == h.blocked(), "a bad download changed the band"
    assert set(DROP) == ranges(h)
    return status, [r for r in h.audit if r.get("message_id") == "m-bad"]


@pytest.mark.parametrize("code", ["404", "403", "401"])
def test_a_4xx_is_acknowledged(landed: Harness, feed_server: FeedServer, code: str) -> None:
    status, recs = bad_pull(landed, feed_server, {"status": code})
    assert 200 == status
    assert ["rejected"] == [r["change"] for r in recs] and f"HTTP {code}" in recs[0]["error"]


def test_a_5xx_after_the_retries_is_redelivered(landed: Harness, feed_server: FeedServer) -> None:
    gets = len(feed_server.gets("drop.txt"))
    status, recs = bad_pull(landed, feed_server, {"status": "503"})
    assert 500 == status
    assert ["failed"] == [r["change"] for r in recs] and "HTTP 503" in recs[0]["error"]
    assert 3 == len(feed_server.gets("drop.txt")) - gets


def test_a_timeout_is_redelivered(landed: Harness, feed_server: FeedServer) -> None:
    status, recs = bad_pull(landed, feed_server, {"slow": "1"})
    assert 500 == status
    assert ["failed"] == [r["change"] for r in recs] and "timeout" in recs[0]["error"]


def test_a_body_over_the_cap_is_acknowledged(landed: Harness, feed_server: FeedServer) -> None:
    status, recs = bad_pull(landed, feed_server, {"oversize": str(11 * 1024 * 1024)})
    assert 200 == status
    assert ["rejected"] == [r["change"] for r in recs] and "max_bytes" in recs[0]["error"]


def test_a_gzip_bomb_is_stopped_at_the_cap(
    local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, feed_server: FeedServer
) -> None:
    serve(feed_server, "bomb.txt.gz", gzip.compress(drop_list(DROP) + b"#" * (4 * 1024 * 1024)))
    h = configured(local_api, monkeypatch, tmp_path, pull_config(feed_server, path="bomb.txt.gz", max_bytes=1024 * 1024))
    assert 200 == pull(h)
    assert ["rejected"] == [r["change"] for r in h.audit if r.get("source") in ("drop", "feed")]
    assert {} == h.blocked()


def test_a_body_cut_mid_stream_is_redelivered(landed: Harness, feed_server: FeedServer) -> None:
    status, recs = bad_pull(landed, feed_server, {"truncate": "1", "gzip": "0"})
    assert 500 == status
    assert ["failed"] == [r["change"] for r in recs] and "cut mid-stream" in recs[0]["error"]


@pytest.mark.parametrize("html", ["1", "plain"])  # text/html, and an HTML page sent as text/plain
def test_an_html_page_is_acknowledged(landed: Harness, feed_server: FeedServer, html: str) -> None:
    status, recs = bad_pull(landed, feed_server, {"html": html})
    assert 200 == status
    assert ["rejected"] == [r["change"] for r in recs] and "HTML page" in recs[0]["error"]


def test_a_list_that_parses_to_nothing_is_acknowledged(landed: Harness, feed_server: FeedServer) -> None:
    serve(feed_server, "drop.txt", b"; nothing today\n; EOF\n")
    status, recs = bad_pull(landed, feed_server)
    assert 200 == status
    assert ["rejected"] == [r["change"] for r in recs]


def test_a_list_that_would_withdraw_more_than_max_drop_share_is_acknowledged(
    landed: Harness, feed_server: FeedServer
) -> None:
    serve(feed_server, "drop.txt", drop_list(DROP[:3]))  # withdraws 9 of 12
    status, recs = bad_pull(landed, feed_server)
    assert 200 == status
    assert ["rejected"] == [r["change"] for r in recs] and "max_drop_share" in recs[0]["error"]


def test_a_refused_list_is_downloaded_again_at_the_next_pull(landed: Harness, feed_server: FeedServer) -> None:
    """A refusal records no validators: the next pull is not a 304 on the bad list."""
    serve(feed_server, "drop.txt", drop_list(DROP[:3]))
    bad_pull(landed, feed_server)
    assert 200 == pull(landed)
    assert 200 == feed_server.gets("drop.txt")[-1]["status"]
    assert 2 == len(records(landed, "rejected"))
    assert set(DROP) == ranges(landed)
