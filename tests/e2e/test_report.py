"""The band page (``cli.py report --html FILE``) on a band of 1,500-odd
ranges, read from the local API, with an audit trail written by the real CLI
(plus usage records of past cleanups), opened in headless Chromium.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it); the
browser tests skip when no binary is found. Each run leaves a screenshot in
``var/test-artifacts/band-report.png`` (git-ignored) besides pytest's tmp dir.
"""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import cli
from localapi import LocalCloudArmor
from responder.codec import RuleMeta, encode
from responder.model import Severity
from tests.e2e.conftest import BAND, POLICY, PROJECT, _http, create_policy

ROOT = Path(cli.__file__).resolve().parent
ARTIFACTS = ROOT / "var" / "test-artifacts"
GENERATED_RULES = 150  # of 10 ranges each: 1,500 ranges
XSS_REASON = "<script>alert(1)</script> <img src=x onerror=alert(2)>"
XSS_ACTOR = "mallory\"><b onmouseover=alert(3)>"
USAGE_POINTS = 48


@dataclass
class Page:
    path: Path
    html: str
    band_ranges: set[str]


def _generated_rules(now: datetime) -> Iterator[dict[str, object]]:
    sources = ["spamhaus-drop", "example-intel", "cloud-armor-waf", "firehol-l1", "tor-exits"]
    for i in range(GENERATED_RULES):
        meta = RuleMeta(
            expiry=(now + timedelta(minutes=45 + 97 * i)).replace(second=0, microsecond=0),
            severity=Severity(1 + i % 4), sources=frozenset({sources[i % 5], sources[(i * 3 + 1) % 5]}),
        )
        yield {"priority": BAND[0] + 100 + i, "action": "deny(403)", "description": encode("car1", meta),
               "match": {"versionedExpr": "SRC_IPS_V1",
                         "config": {"srcIpRanges": [f"45.{i // 10}.{(i % 10) * 10 + j}.0/24" for j in range(10)]}}}


def _usage_lines(now: datetime) -> str:
    """Usage records of 48 past hourly cleanups, as the cleanup writes them
    (the local audit file stamps each line with its time)."""
    lines = []
    for h in range(USAGE_POINTS):
        rules = 2 + round(150 * (h / USAGE_POINTS) ** 1.5)
        when = (now - timedelta(hours=USAGE_POINTS - h)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(json.dumps({
            "time": when, "message": f"band holds {rules} rules", "change": "usage", "message_id": f"cleanup-{h}",
            "band_rules": rules, "band_size": 1000, "max_rules": 400, "foreign_rules": 0, "ranges": rules * 9, "policy_rules": rules + 4,
        }))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    tmp = tmp_path_factory.mktemp("report")
    server = LocalCloudArmor(op_delay=0.0, wait_timeout=10.0, seed=5, project=PROJECT).start()
    config = tmp / "responder.toml"
    config.write_text((ROOT / "config" / "responder.toml").read_text().replace("max_rules = 150", "max_rules = 400"))
    audit = tmp / "audit.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"RESPONDER_PROJECT": PROJECT, "RESPONDER_POLICY": POLICY, "RESPONDER_API_ENDPOINT": server.endpoint,
                           "RESPONDER_BAND_START": str(BAND[0]), "RESPONDER_BAND_END": str(BAND[1]),
                           "RESPONDER_RETRY_DEADLINE": "2s", "RESPONDER_AUDIT_FILE": str(audit),
                           "RESPONDER_CONFIG": str(config)}.items():
            mp.setenv(key, value)
        try:
            create_policy(server)
            now = datetime.now(tz=UTC)
            base = f"{server.endpoint}/compute/v1/projects/{PROJECT}/global/securityPolicies/{POLICY}"
            for rule in _generated_rules(now):
                _http("POST", f"{base}/addRule", rule)
            server.settle()
            audit.write_text(_usage_lines(now))
            assert 0 == cli.main(["block", "185.220.101.34", "91.92.109.0/24", "--ttl", "5h", "--severity", "high",
                                  "--actor", "alice", "--reason", XSS_REASON])
            assert 0 == cli.main(["extend", "185.220.101.34", "--ttl", "2d", "--actor", "bob", "--reason", "still scanning"])
            assert 0 == cli.main(["block", "45.0.3.0/24", "--ttl", "30d", "--actor", XSS_ACTOR, "--reason", "seen on /v1/predict"])
            # Refused: two special-purpose ranges (one reason, grouped) and a too-broad one.
            assert cli.EXIT_REFUSED == cli.main(["block", "10.1.2.3", "10.9.0.0/16", "--ttl", "1h", "--actor", "alice"])
            assert cli.EXIT_REFUSED == cli.main(["block", "20.0.0.0/6", "--ttl", "1h", "--actor", "alice"])
            out = tmp / "band-report.html"
            assert 0 == cli.main(["report", "--html", str(out)])
            server.settle()
            policy = server.policy(PROJECT, POLICY)
            assert policy is not None
            ranges = {n for r in policy["rules"] if BAND[0] <= r["priority"] <= BAND[1]
                      for n in r["match"]["config"]["srcIpRanges"]}
            yield Page(out, out.read_text(encoding="utf-8"), ranges)
        finally:
            server.stop()


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


# --------------------------------------------------------------------------
# the file itself


def test_the_page_has_one_row_per_range_of_the_band(page: Page) -> None:
    assert len(page.band_ranges) >= 1500
    rows = re.findall(r'<tr data-x="\d+" data-s="\d"><td class="net">([^<]+)</td>', page.html)
    assert page.band_ranges == set(rows)
    assert len(page.band_ranges) == len(rows)


def test_the_page_fetches_nothing(page: Page) -> None:
    """No element loads anything: no src or href, no link, one inline
    script and one inline style, and a CSP that allows only those."""
    tags = _tags(page.html)
    assert [] == [(t, a) for t, a in tags if {"src", "href", "srcset", "action", "data"} & set(a)]
    assert {"link", "iframe", "img", "object", "embed", "base", "form"}.isdisjoint({t for t, _ in tags})
    assert 1 == sum(t == "script" for t, _ in tags) and 1 == sum(t == "style" for t, _ in tags)
    csp = next(a["content"] for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert csp is not None and csp.startswith("default-src 'none';") and "unsafe-inline" not in csp


def test_text_from_the_trail_is_escaped(page: Page) -> None:
    """Reasons and actors come from whoever publishes a command: they are
    text, never markup."""
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=alert(2)&gt;" in page.html
    assert "mallory&quot;&gt;&lt;b onmouseover=alert(3)&gt;" in page.html
    tags = _tags(page.html)
    assert not [t for t, a in tags if t in ("img", "b") and ("onerror" in a or "onmouseover" in a)]
    assert not [a for _, a in tags if any(k.startswith("on") for k in a)]


def test_who_and_why_come_from_the_latest_add_or_extend(page: Page) -> None:
    row = re.search(r'<td class="net">185\.220\.101\.34/32</td>(.*?)</tr>', page.html)
    assert row is not None
    assert "bob" in row.group(1) and "still scanning" in row.group(1) and "alice" not in row.group(1)
    row = re.search(r'<td class="net">91\.92\.109\.0/24</td>(.*?)</tr>', page.html)
    assert row is not None
    assert "alice" in row.group(1) and "in 5 h" in row.group(1) and "sev-high" in row.group(1)


def test_refusals_are_grouped_by_reason(page: Page) -> None:
    table = page.html.split('id="refusals"', 1)[1].split("</table>", 1)[0]
    groups = dict(re.findall(r"<tr><td>([^<]+)</td><td class=\"num\">(\d+)</td>", table))
    assert "2" == groups["overlaps the special-purpose range 10.0.0.0/8"]
    assert "1" == groups["is broader than /16, the minimum prefix for manual sources"]


# --------------------------------------------------------------------------
# in the browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary (Debian: apt-get install chromium; .ci/run installs it)")


def _browse(page_path: Path, tmp: Path, *extra: str, fragment: str = "") -> tuple[str, list[str]]:
    """Chromium's DOM after the page's script ran, and the page's console
    messages (Chromium logs each with an INFO:CONSOLE tag; the page writes
    none, so any is an error or a CSP violation)."""
    profile = tmp / "profile"
    result = subprocess.run(
        [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
         *extra, page_path.as_uri() + fragment],
        capture_output=True, text=True, timeout=180,
    )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert 0 == result.returncode, result.stderr[-2000:]
    return result.stdout, console


def _visible_rows(dom: str) -> list[str]:
    return re.findall(r'<tr data-x="\d+" data-s="\d">(?:<td class="net">([^<]+))', dom)


def test_chromium_renders_the_rows_and_the_chart_without_console_errors(page: Page, tmp_path: Path) -> None:
    dom, console = _browse(page.path, tmp_path, "--dump-dom")

    assert [] == console
    rows = _visible_rows(dom)  # hidden rows would carry hidden=""
    assert page.band_ranges == set(rows)
    assert f'data-shown="{len(page.band_ranges)}"' in dom
    svg = _tags(dom.split('<svg id="usage"', 1)[1].split("</svg>", 1)[0].join(["<svg>", "</svg>"]))
    lines = [a for t, a in svg if t == "polyline"]
    assert {"used", "cap"} == {a["class"] for a in lines}
    assert USAGE_POINTS == len((next(a for a in lines if a["class"] == "used")["points"] or "").split())
    assert USAGE_POINTS == sum(t == "circle" for t, _ in svg)
    assert "<img" not in dom and "&lt;img src=x onerror=alert(2)&gt;" in dom


def test_the_filter_in_the_address_narrows_the_table(page: Page, tmp_path: Path) -> None:
    """'#q=alice' keeps the rows whose latest add/extend alice made: her
    other range was extended by bob since. Filtering 1,500 rows stays far
    from a frame's budget."""
    dom, console = _browse(page.path, tmp_path, "--dump-dom", fragment="#q=alice")

    assert [] == console
    assert ["91.92.109.0/24"] == _visible_rows(dom)
    assert len(page.band_ranges) - 1 == len(re.findall(r'<tr data-x="\d+" data-s="\d" hidden="">', dom))
    assert 'data-shown="1"' in dom
    spent = re.search(r'data-filter-ms="([0-9.]+)"', dom)
    assert spent is not None and float(spent.group(1)) < 100.0


def test_screenshot_is_saved_as_an_artefact(page: Page, tmp_path: Path) -> None:
    shot = tmp_path / "band-report.png"
    _, console = _browse(page.path, tmp_path, f"--screenshot={shot}", "--window-size=1400,2400", "--hide-scrollbars")

    assert [] == console
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "band-report.png")
    shutil.copy(page.path, ARTIFACTS / "band-report.html")


def test_the_table_sorts_by_expiry_from_the_address(page: Page, tmp_path: Path) -> None:
    dom, console = _browse(page.path, tmp_path, "--dump-dom", fragment="#sort=expiry")

    assert [] == console
    expiries = [int(x) for x in re.findall(r'<tr data-x="(\d+)" data-s="\d">', dom)]
    assert len(page.band_ranges) == len(expiries)
    assert sorted(expiries) == expiries and expiries[0] < expiries[-1]
