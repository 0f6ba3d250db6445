"""The operator command line against the local API."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import cli
from localapi import LocalCloudArmor
from tests.e2e.conftest import BAND, POLICY, PROJECT, create_policy


@pytest.fixture
def env(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LocalCloudArmor:
    monkeypatch.setenv("RESPONDER_PROJECT", PROJECT)
    monkeypatch.setenv("RESPONDER_POLICY", POLICY)
    monkeypatch.setenv("RESPONDER_API_ENDPOINT", local_api.endpoint)
    monkeypatch.setenv("RESPONDER_BAND_START", str(BAND[0]))
    monkeypatch.setenv("RESPONDER_BAND_END", str(BAND[1]))
    monkeypatch.setenv("RESPONDER_RETRY_DEADLINE", "2s")
    monkeypatch.setenv("RESPONDER_AUDIT_FILE", str(tmp_path / "audit.jsonl"))
    return local_api


def band(server: LocalCloudArmor) -> dict[str, str]:
    server.settle()
    policy = server.policy(PROJECT, POLICY)
    assert policy is not None
    return {
        net: rule["description"]
        for rule in policy["rules"] if BAND[0] <= rule["priority"] <= BAND[1]
        for net in rule["match"]["config"]["srcIpRanges"]
    }


def test_block_extend_unblock_change_the_band(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    create_policy(env)
    assert 0 == cli.main(["block", "185.220.101.34", "91.92.109.0/24", "--ttl", "2h", "--actor", "me", "--reason", "test"])
    assert {"185.220.101.34/32", "91.92.109.0/24"} == set(band(env))
    assert 0 == cli.main(["extend", "185.220.101.34", "--ttl", "3d", "--actor", "me"])
    assert 0 == cli.main(["unblock", "91.92.109.0/24", "--actor", "me"])
    assert ["185.220.101.34/32"] == list(band(env))
    assert "extended 1 range(s)" in capsys.readouterr().out


def test_status_lists_every_range_and_the_utilisation(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    create_policy(env)
    cli.main(["block", "185.220.101.34", "--ttl", "2h", "--actor", "me"])
    capsys.readouterr()
    assert 0 == cli.main(["status"])
    out = capsys.readouterr().out
    assert "185.220.101.34/32" in out and "deny(403)" in out and "manual" in out
    assert f"band {BAND[0]}-{BAND[1]}: 1 rules holding 1 ranges, 0 foreign" in out


def test_explain_names_the_aggregated_range_its_rule_and_the_trail(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    create_policy(env)
    # Two adjacent /25s from one command aggregate to a /24 in the band.
    cli.main(["block", "91.92.109.0/25", "91.92.109.128/25", "--ttl", "2h", "--actor", "alice", "--reason", "scanner"])
    assert ["91.92.109.0/24"] == list(band(env))
    capsys.readouterr()

    assert 0 == cli.main(["explain", "91.92.109.200"])

    out = capsys.readouterr().out
    assert "91.92.109.200/32 is covered by 91.92.109.0/24 in rule 2" in out
    assert "deny(403), enforced" in out and "sources manual" in out
    assert "added: 91.92.109.0/24 source=manual actor=alice" in out


def test_explain_an_address_that_is_not_blocked(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    create_policy(env)
    assert 0 == cli.main(["explain", "34.120.10.3"])
    out = capsys.readouterr().out
    assert "34.120.10.3/32 is not blocked by the responder's band" in out
    assert "34.120.10.3/32 also matches operator rule 1000 (allow): trusted: CI runners" in out


def test_cleanup_command_removes_expired_entries(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    import tests.e2e.conftest as c

    create_policy(env)
    expired = {"priority": 20100, "action": "deny(403)", "description": "car1 x=202001010000 v=m s=intel",
               "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["91.92.109.0/24"]}}}
    c._http("POST", f"{env.endpoint}/compute/v1/projects/{PROJECT}/global/securityPolicies/{POLICY}/addRule", expired)
    assert ["91.92.109.0/24"] == list(band(env))

    assert 0 == cli.main(["cleanup"])

    assert {} == band(env)
    out = capsys.readouterr().out
    assert "expired 1 range(s)" in out and "band holds 0 rules" in out


def test_block_with_a_past_expiry_is_refused(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    create_policy(env)
    assert 1 == cli.main(["block", "185.220.101.34", "--expiry", "2020-01-01T00:00:00Z", "--actor", "me"])
    assert {} == band(env)
    assert "expiry is in the past" in capsys.readouterr().out


def test_bootstrap_creates_the_policy_once_and_never_rewrites_it(env: LocalCloudArmor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    base = (Path(cli.__file__).resolve().parent / "config" / "responder.toml").read_text()
    file = tmp_path / "responder.toml"
    trusted = ", ".join(f'"34.120.{i}.0/24"' for i in range(12))
    file.write_text(base.replace("trusted_ranges = []", f"trusted_ranges = [{trusted}]")
                    .replace('default_action = "allow"', 'default_action = "deny(403)"'))
    monkeypatch.setenv("RESPONDER_CONFIG", str(file))

    assert 0 == cli.main(["bootstrap-policy"])
    env.settle()
    policy = env.policy(PROJECT, POLICY)
    assert policy is not None
    rules = {r["priority"]: r for r in policy["rules"]}
    assert [1000, 1001, 2147483647] == sorted(rules)
    assert 10 == len(rules[1000]["match"]["config"]["srcIpRanges"])
    assert 2 == len(rules[1001]["match"]["config"]["srcIpRanges"])
    assert "deny(403)" == rules[2147483647]["action"]

    assert 0 == cli.main(["bootstrap-policy"])
    assert "exists: kept as it is" in capsys.readouterr().out
    env.settle()
    assert policy["rules"] == env.policy(PROJECT, POLICY)["rules"]  # type: ignore[index]


def test_missing_policy_is_a_clear_error(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    assert 3 == cli.main(["status"])
    assert f"the policy {POLICY} does not exist in project {PROJECT}" in capsys.readouterr().err


def test_unreachable_api_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RESPONDER_RETRY_DEADLINE", "1s")
    assert 1 == cli.main(["--endpoint", f"http://127.0.0.1:{port}", "status"])
    assert f"cannot reach http://127.0.0.1:{port}" in capsys.readouterr().err


def test_validate_config_names_the_bad_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == cli.main(["validate-config"])
    bad = tmp_path / "bad.toml"
    bad.write_text((Path(cli.__file__).resolve().parent / "config" / "responder.toml").read_text().replace("end = 20999", "end = 10"))
    assert 2 == cli.main(["--config", str(bad), "validate-config"])
    assert "band.end: must be greater than band.start" in capsys.readouterr().err
