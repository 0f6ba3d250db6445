"""Safety features end to end: dry runs, preview, the break-glass switch,
the flood breaker, the band's rule cap and eviction, and lint."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from handlers import runtime
from localapi import LocalCloudArmor
from tests.e2e.conftest import POLICY, PROJECT, Harness, _harness

ACTOR = "oncall@example.com"


def block(ranges: list[str], **extra: object) -> dict[str, object]:
    return {"action": "block", "ranges": ranges, "actor": ACTOR, **extra}


def hosts(prefix: str, count: int) -> list[str]:
    """Addresses that do not aggregate with each other."""
    return [f"{prefix}.{i}.7" for i in range(count)]


@pytest.fixture
def configured(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Entry points with extra TOML appended to the bundled configuration."""

    def make(extra: str) -> Harness:
        base = (Path(__file__).resolve().parents[2] / "config" / "responder.toml").read_text()
        file = tmp_path / "responder.toml"
        file.write_text(_merge(base, extra))
        monkeypatch.setenv("RESPONDER_CONFIG", str(file))
        return _harness(local_api, monkeypatch, tmp_path, None)

    return make


def _merge(base: str, extra: str) -> str:
    """Replaces keys of existing tables by the extra TOML's (line based: the
    bundled file has one key per line)."""
    lines = base.splitlines()
    table = ""
    for line in extra.strip().splitlines():
        line = line.strip()
        if line.startswith("["):
            table = line
            if table not in lines:
                lines.append(table)
            continue
        key = line.split("=")[0].strip()
        start = lines.index(table) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
        for i in range(start, end):
            if lines[i].split("=")[0].strip() == key:
                lines[i] = line
                break
        else:
            lines.insert(end, line)
    return "\n".join(lines) + "\n"


def test_global_validate_only_commits_nothing_and_records_the_plan(configured) -> None:  # type: ignore[no-untyped-def]
    functions = configured("[band]\nvalidate_only = true")
    assert 200 == functions.publish("on_manual", block(["185.220.101.34"], ttl="1h"))
    assert [] == functions.band_rules()
    added = [r for r in functions.audit if r["change"] == "added"]
    assert ["validate_only"] == [r["outcome"] for r in added]
    validated = [r for r in functions.mutations() if r["query"].get("validateOnly") in ("true", "True", ["true"], ["True"])]
    assert 1 == len(validated)


def test_validate_only_for_one_source_kind_leaves_the_others_live(configured) -> None:  # type: ignore[no-untyped-def]
    functions = configured("[sources.feed]\nvalidate_only = true")
    assert 200 == functions.publish("on_threat_feed", {"feed": "intel", "indicators": [{"range": "91.92.109.43"}]})
    assert 200 == functions.publish("on_manual", block(["185.220.101.34"], ttl="1h"))
    assert ["185.220.101.34/32"] == list(functions.blocked())


def test_preview_for_one_source_kind_commits_preview_rules(configured) -> None:  # type: ignore[no-untyped-def]
    functions = configured("[sources.feed]\npreview = true")
    assert 200 == functions.publish("on_threat_feed", {"feed": "intel", "indicators": [{"range": "91.92.109.43"}]})
    assert 200 == functions.publish("on_manual", block(["185.220.101.34"], ttl="1h"))
    previews = {r["match"]["config"]["srcIpRanges"][0]: r.get("preview", False) for r in functions.band_rules()}
    assert {"91.92.109.43/32": True, "185.220.101.34/32": False} == previews


def test_break_glass_puts_every_band_rule_in_preview_and_back(functions: Harness) -> None:
    assert 200 == functions.publish("on_manual", block(["185.220.101.34", "91.92.109.0/24"], ttl="1h"))
    assert 200 == functions.publish("on_manual", {"action": "preview-all", "actor": ACTOR, "reason": "customer outage"})
    assert {True} == {r.get("preview", False) for r in functions.band_rules()}
    assert "preview" == functions.policy()["labels"].get("car-mode")

    # While the switch is on, new rules are committed in preview too.
    assert 200 == functions.publish("on_manual", block(["193.142.146.0/24"], ttl="1h"))
    assert {True} == {r.get("preview", False) for r in functions.band_rules()}

    assert 200 == functions.publish("on_manual", {"action": "enforce-all", "actor": ACTOR})
    assert {False} == {r.get("preview", False) for r in functions.band_rules()}
    assert "car-mode" not in functions.policy().get("labels", {})
    assert "car-lease" not in functions.policy().get("labels", {})


def test_flood_breaker_sends_a_flooding_source_to_preview_and_says_so(configured) -> None:  # type: ignore[no-untyped-def]
    functions = configured("[sources.feed]\nflood_limit = 5\nflood_window = \"10m\"")
    first = {"feed": "intel", "indicators": [{"range": r} for r in hosts("91.92", 4)]}
    second = {"feed": "intel", "indicators": [{"range": r} for r in hosts("77.88", 4)]}
    assert 200 == functions.publish("on_threat_feed", first)
    assert 200 == functions.publish("on_threat_feed", second)
    previews = {n: r.get("preview", False) for r in functions.band_rules() for n in r["match"]["config"]["srcIpRanges"]}
    assert {f"{h}/32": False for h in hosts("91.92", 4)} | {f"{h}/32": True for h in hosts("77.88", 4)} == previews
    assert 1 == len([r for r in functions.audit if r["change"] == "breaker"])


def test_flood_breaker_can_refuse_instead(configured) -> None:  # type: ignore[no-untyped-def]
    functions = configured("[sources.feed]\nflood_limit = 3\non_flood = \"refuse\"")
    assert 200 == functions.publish("on_threat_feed", {"feed": "intel", "indicators": [{"range": r} for r in hosts("91.92", 5)]})
    assert [] == functions.band_rules()


def test_band_rule_cap_evicts_lowest_severity_first_and_never_manual(configured) -> None:  # type: ignore[no-untyped-def]
    functions = configured("[band]\nmax_rules = 3")
    # Three rules: one manual (high), one feed group (medium, 10 ranges), one low-severity feed group.
    assert 200 == functions.publish("on_manual", block(["185.220.101.34"], ttl="1h"))
    assert 200 == functions.publish("on_threat_feed", {"feed": "intel", "indicators": [{"range": r} for r in hosts("91.92", 10)]})
    functions.clock.advance(timedelta(minutes=20))
    assert 200 == functions.publish("on_threat_feed", {"feed": "weak", "indicators": [{"range": "77.88.0.1", "ttl": "1h"}]})
    assert 3 == len(functions.band_rules())
    # A fourth group needs room: the soonest-expiring medium entry goes, manual stays.
    functions.clock.advance(timedelta(minutes=20))
    assert 200 == functions.publish("on_manual", block(["193.142.146.0/24"], ttl="1h"))
    blocked = functions.blocked()
    assert {"185.220.101.34/32", "193.142.146.0/24"} <= set(blocked)
    assert len(functions.band_rules()) <= 3
    evicted = [r for r in functions.audit if r["change"] == "evicted"]
    assert evicted and "77.88.0.1/32" in evicted[0]["ranges"]
    assert "manual" not in evicted[0]["sources"] and evicted[0]["sources"]


def test_rule_quota_exhaustion_compacts_instead_of_failing(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local_api.state.quota = 12  # 4 operator rules + 8 for the band
    functions = _harness(local_api, monkeypatch, tmp_path, None)
    for i in range(12):
        assert 200 == functions.publish("on_manual", block([f"77.{i + 10}.3.9"], ttl="3h"))
    assert sorted(f"77.{i + 10}.3.9/32" for i in range(12)) == sorted(functions.blocked())
    assert len(functions.policy()["rules"]) <= 12


def _band_rule(priority: int, ranges: list[str], description: str) -> dict[str, object]:
    return {"priority": priority, "action": "deny(403)", "description": description,
            "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ranges}}}


def _put(server: LocalCloudArmor, rule: dict[str, object]) -> None:
    import tests.e2e.conftest as c

    c._http("POST", f"{server.endpoint}/compute/v1/projects/{PROJECT}/global/securityPolicies/{POLICY}/addRule", rule)
    server.settle()


def _truncated_band(functions: Harness, *, copies: bool = True) -> str:
    """45.9.148.18 held by the rule that merges two claims whose sources do
    not fit one description (truncated, as written), and by those two."""
    x = (functions.clock() + timedelta(hours=6)).strftime("%Y%m%d%H00")
    merged = f"car1 x={x} v=m s=feed-alpha-long+feed-bravo-long+*"
    if copies:
        _put(functions.server, _band_rule(20100, ["45.9.148.18/32"], f"car1 x={x} v=m s=feed-alpha-long+feed-bravo-long"))
        _put(functions.server, _band_rule(20150, ["45.9.148.18/32"], f"car1 x={x} v=m s=feed-charlie-lng+feed-delta-long"))
    _put(functions.server, _band_rule(20200, ["45.9.148.18/32"], merged))
    return merged


def test_a_truncated_entry_compacts_with_the_quota_full_without_rewriting_itself(
    local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    functions = _harness(local_api, monkeypatch, tmp_path, None)
    merged = _truncated_band(functions)
    local_api.state.quota = len(functions.policy()["rules"])  # full: the next add fails
    assert 200 == functions.publish("on_manual", block(["77.10.3.9"], ttl="1h"))
    rules = {r["priority"]: r for r in functions.band_rules()}
    # The two old copies went to make room; the merged rule stayed as it was.
    assert {20100, 20150} & set(rules) == set()
    assert merged == rules[20200]["description"] and ["45.9.148.18/32"] == rules[20200]["match"]["config"]["srcIpRanges"]
    assert {"45.9.148.18/32", "77.10.3.9/32"} == set(functions.blocked())
    assert 2 == len(rules)


def test_a_claim_a_truncated_entry_may_hold_writes_nothing(
    local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    functions = _harness(local_api, monkeypatch, tmp_path, None)
    _truncated_band(functions, copies=False)
    before = functions.band_rules()
    feed = {"feed": "feed-echo", "indicators": [{"range": "45.9.148.18", "ttl": "1h"}]}
    assert 200 == functions.publish("on_threat_feed", feed, attributes={"feed": "feed-echo", "format": "json"})
    assert before == functions.band_rules()
    # A manual block is never taken as held: it is written, and keeps its name.
    assert 200 == functions.publish("on_manual", block(["45.9.148.18"], ttl="1h"))
    assert any("manual" in r["description"] for r in functions.band_rules())


def test_lint_reports_an_allow_all_rule_that_shadows_the_band(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    functions = _harness(local_api, monkeypatch, tmp_path, None)
    import tests.e2e.conftest as c

    shadow = {"priority": 500, "action": "allow", "description": "allow everyone (debugging)",
              "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["0.0.0.0/0"]}}}
    c._http("POST", f"{local_api.endpoint}/compute/v1/projects/{PROJECT}/global/securityPolicies/{POLICY}/addRule", shadow)
    local_api.settle()
    assert 200 == functions.publish("on_manual", block(["185.220.101.34"], ttl="1h"))
    lint = [r["message"] for r in functions.audit if r["change"] == "lint"]
    assert 1 == len(lint)
    assert lint[0].startswith("rule 500 allows every address before the band")


def test_missing_policy_is_reported_with_the_fix_and_raised(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    functions = _harness(local_api, monkeypatch, tmp_path, None)
    monkeypatch.setenv("RESPONDER_POLICY", "no-such-policy")
    functions.clients = {**functions.clients}
    rt = runtime.configure()
    rt.clock = functions.clock
    status = functions.publish("on_manual", block(["185.220.101.34"], ttl="1h"))
    assert 500 == status  # raised: Pub/Sub keeps the message until the policy exists
    lint = [r["message"] for r in rt.audit.records if r["change"] == "lint"]
    assert 1 == len(lint)
    assert "does not exist" in lint[0] and "bootstrap-policy" in lint[0]
