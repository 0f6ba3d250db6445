"""The operator command line against the local API."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
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
    assert cli.EXIT_REFUSED == cli.main(["block", "185.220.101.34", "--expiry", "2020-01-01T00:00:00Z", "--actor", "me"])
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
    assert cli.EXIT_ACCESS == cli.main(["status"])
    assert f"the policy {POLICY} does not exist in project {PROJECT}" in capsys.readouterr().err


def test_unreachable_api_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RESPONDER_RETRY_DEADLINE", "1s")
    assert cli.EXIT_TRANSIENT == cli.main(["--endpoint", f"http://127.0.0.1:{port}", "status"])
    assert f"cannot reach http://127.0.0.1:{port}" in capsys.readouterr().err


def test_validate_config_names_the_bad_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == cli.main(["validate-config"])
    bad = tmp_path / "bad.toml"
    bad.write_text((Path(cli.__file__).resolve().parent / "config" / "responder.toml").read_text().replace("end = 20999", "end = 10"))
    assert cli.EXIT_CONFIG == cli.main(["--config", str(bad), "validate-config"])
    assert "band.end: must be greater than band.start" in capsys.readouterr().err


# --------------------------------------------------------------------------
# issue 14: the defects an operator met, each with its test

ROOT = Path(cli.__file__).resolve().parent
TARGET = "91.92.109.9"

# One record of each change kind, with the fields its call site writes
# (responder/service.py, handlers/common.py, handlers/runtime.py, the
# handlers' "unchanged" records). Those that name ranges name one overlapping
# TARGET; ``usage`` holds a count in ``ranges``.
_COMMON = {"message_id": "m-1", "source": "manual", "actor": "alice", "reason": "scanner", "outcome": "applied"}
_RULE = {"action": "deny(403)", "preview": False, "expiry": "2030-01-01T00:00:00Z", "sources": ["manual"],
         "severity": "high", "priority": 20010}
RECORDS: list[tuple[str, str, dict[str, object]]] = [
    ("added", "added 1 range(s)", {"ranges": ["91.92.109.0/24"], **_RULE, **_COMMON}),
    ("extended", "extended 1 range(s)", {"ranges": ["91.92.109.0/24"], **_RULE, **_COMMON}),
    ("removed", "removed 1 range(s)", {"ranges": ["91.92.109.0/24"], **_COMMON}),
    ("expired", "expired 1 range(s)", {"ranges": ["91.92.109.0/25"], **_COMMON, "source": "cleanup"}),
    ("evicted", "evicted 1 range(s)", {"ranges": ["91.92.109.0/24"], **_COMMON, "sources": ["feed-a", "log"],
                                        "severity": ["low", "medium"], "capacity": "the band may hold 150 rules"}),
    ("refused", "refused block 91.92.109.9/32: overlaps the allowlist", {"message_id": "m-2", "source": "manual",
                                                                          "ranges": ["91.92.109.9/32"], "reason": "allowlisted"}),
    ("refused", "manual message m-3: 1 bad item(s)", {"message_id": "m-3", "source": "manual",
                                                      "errors": [{"item": "999.1.1.1", "error": "not an address"}],
                                                      "error_count": 1, "skipped": 2}),
    ("unchanged", "nothing to apply", {"message_id": "m-4", "source": "feed-a"}),
    ("rejected", "manual message m-5 rejected: unknown field", {"message_id": "m-5", "source": "manual", "error": "unknown field 'x'"}),
    ("lint", "rule 20500 is inside the band but not the responder's", {"policy": POLICY}),
    ("usage", "band holds 1 rules (8 ranges) of 1000 priorities",
     {"message_id": "m-6", "band_rules": 1, "band_size": 1000, "max_rules": 150, "foreign_rules": 0, "ranges": 8, "policy_rules": 5,
      "band": ["91.92.109.0/29", "91.92.109.8/29"]}),
    ("breaker", "feed-a flooded", {"message_id": "m-7", "source": "feed-a", "count": 900, "on_flood": "preview"}),
    ("mode", "break-glass: every band rule is in preview (1 rule(s) changed)",
     {"message_id": "m-8", "source": "manual", "actor": "bob", "reason": "incident", "mode": "preview", "priorities": [20010]}),
    ("deferred", "stopped after 4 of 30 operation(s), 26 remain: the delivery's time budget would run out",
     {"message_id": "m-9", "source": "feed-a", "done": 4, "remaining": 26, "remaining_add": 26}),
    ("failed", "threat feed spamhaus-drop: the download failed (HTTP 503 after 3 tries); Pub/Sub redelivers",
     {"message_id": "m-11", "source": "spamhaus-drop", "error": "HTTP 503"}),
    ("dead-lettered", "feed message m-10 failed on delivery 5 (deploy.max_delivery_attempts = 5)",
     {"message_id": "m-10", "source": "feed", "delivery_attempt": 5, "error": "TransientError: 503"}),
    ("wiped", "band 20000-20999 was wiped: 1 range(s) in 1 rule(s), last seen 2030-01-01T00:00:00Z, disappeared without a record of ours",
     {"message_id": "m-12", "source": "cleanup", "count": 1, "rules": 1, "ranges": ["91.92.109.0/24"],
      "last_seen": "2030-01-01T00:00:00Z", "recorded_rules": 1, "recorded_ranges": 1}),
    ("group", "address group car-firehol-v4-1 created for feed firehol: 4500 / 5625 items",
     {"message_id": "m-14", "source": "firehol", "op": "created", "group": "car-firehol-v4-1", "ip_version": 4,
      "expiry": "2026-12-05T16:30:00Z", "added": 4500, "removed": 0, "size": 4500, "capacity": 5625,
      "priority": 20999}),
    ("fallback", "feed firehol falls back to band rules: address groups need Cloud Armor Enterprise",
     {"message_id": "m-15", "source": "firehol", "reason": "Standard tier", "label": "car-tier"}),
    ("target-failed", "target notebooks: PolicyNotFound: no policy nb-edge; the other targets went ahead",
     {"message_id": "m-16", "source": "manual", "target": "notebooks", "error": "PolicyNotFound: no policy nb-edge"}),
]
# What explain shows for TARGET: the records naming an overlapping range,
# and break-glass (band-wide) once the address has a history.
SHOWN = ["added", "extended", "removed", "expired", "evicted", "refused", "mode", "wiped"]


def test_the_record_catalogue_covers_every_change_kind_the_code_writes() -> None:
    """A new kind of audit record must be added to RECORDS (and so to the
    explain tests) before it ships."""
    import re

    from responder.audit import CHANGES

    written = set()
    for path in ROOT.rglob("*.py"):
        if {"tests", ".venv", "localapi"} & set(path.relative_to(ROOT).parts):
            continue
        written |= set(re.findall(r"audit\.record\(\s*\"([a-z_]+)\"", path.read_text()))
    # Audit.record refuses a kind outside CHANGES, so CHANGES is the whole
    # list; the scan checks it against the literal kinds of the call sites.
    assert {"refused", "unchanged", "rejected", "lint", "usage", "breaker", "mode"} <= written <= set(CHANGES)
    assert set(CHANGES) == {change for change, _, _ in RECORDS}


def _write_records(audit: object) -> None:
    for change, message, fields in RECORDS:
        audit.record(change, message, **fields)  # type: ignore[attr-defined]


def test_explain_reads_every_record_shape_from_the_audit_file(env: LocalCloudArmor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: TypeError: 'int' object is not iterable on the usage record."""
    import json
    import logging

    from responder.audit import Audit

    create_policy(env)
    _write_records(Audit(logger=logging.getLogger("test.cli.audit"), file=tmp_path / "audit.jsonl"))

    assert 0 == cli.main(["explain", TARGET, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert SHOWN == [r["change"] for r in doc["trail"]]
    assert all(r["time"] for r in doc["trail"])  # the local file stamps each line
    assert 0 == cli.main(["explain", TARGET])
    text = capsys.readouterr().out
    assert "evicted: 91.92.109.0/24 source=manual actor=alice" in text
    assert "mode: break-glass: every band rule is in preview" in text


def _cloud_logging_entries(records_stdout: str, *, grpc: bool) -> list[object]:
    """What google-cloud-logging's list_entries yields for the lines the
    functions wrote on stdout: Cloud Logging lifts severity and the
    logging.googleapis.com/* fields and keeps the rest as jsonPayload; the
    client turns each resource into a StructuredEntry (over gRPC, from a
    LogEntry protobuf, where every number comes back as a float)."""
    import json

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import logging as cloud_logging
    from google.cloud.logging_v2 import _gapic, _helpers
    from google.cloud.logging_v2.types import LogEntry
    from google.protobuf import json_format

    client = cloud_logging.Client(project=PROJECT, credentials=AnonymousCredentials(), _use_grpc=False)
    entries = []
    for i, line in enumerate(records_stdout.splitlines()):
        payload = json.loads(line)
        severity = payload.pop("severity", "DEFAULT")
        payload = {k: v for k, v in payload.items() if not k.startswith("logging.googleapis.com/") and k != "httpRequest"}
        resource = {
            "logName": f"projects/{PROJECT}/logs/run.googleapis.com%2Fstdout", "insertId": f"id{i}",
            "timestamp": f"2026-05-01T10:00:{i:02d}.123456Z", "severity": severity,
            "resource": {"type": "cloud_run_revision", "labels": {"service_name": "on-manual"}},
            "jsonPayload": payload,
        }
        if grpc:
            resource = _gapic._parse_log_entry(json_format.ParseDict(resource, LogEntry.pb(LogEntry())))
        entries.append(_helpers.entry_from_resource(resource, client, {}))
    return entries


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_explain_reads_every_record_shape_through_the_cloud_logging_reader(env: LocalCloudArmor, grpc: bool) -> None:
    import io
    import logging
    from datetime import UTC, datetime

    from google.cloud.logging_v2.handlers import StructuredLogHandler

    from config import settings as config
    from responder.audit import Audit
    from responder.compute import CloudArmor

    create_policy(env)
    out = io.StringIO()
    logger = logging.getLogger(f"test.cli.cloud.{grpc}")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(StructuredLogHandler(stream=out))  # type: ignore[no-untyped-call]
    _write_records(Audit(logger=logger))
    entries = _cloud_logging_entries(out.getvalue(), grpc=grpc)

    trail = cli.trail_from_entries(entries)

    assert [c for c, _, _ in RECORDS] == [r["change"] for r in trail]
    usage = next(r for r in trail if r["change"] == "usage")
    assert 8 == usage["ranges"] and isinstance(usage["ranges"], int)
    assert "2026-05-01T10:00:00.123456Z" <= trail[0]["time"]
    settings = config.load()
    snap = CloudArmor(settings.policy).get_policy()
    now = datetime.now(tz=UTC)
    data = cli.explain_data(snap, settings, TARGET, now, trail)
    assert SHOWN == [r["change"] for r in data["trail"]]
    assert "evicted: 91.92.109.0/24 source=manual actor=alice" in cli.explain_text(data, now)


def test_explain_after_a_cleanup_wrote_its_usage_record(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    """The runbook's first step, as the issue met it."""
    create_policy(env)
    cli.main(["block", "91.92.109.0/24", "--ttl", "2h", "--actor", "me"])
    assert 0 == cli.main(["cleanup"])
    capsys.readouterr()

    assert 0 == cli.main(["explain", TARGET])

    assert "is covered by 91.92.109.0/24" in capsys.readouterr().out


def test_global_options_are_accepted_after_the_command(env: LocalCloudArmor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "config" / "responder.toml").read_text().replace("end = 20999", "end = 10"))
    monkeypatch.delenv("RESPONDER_BAND_END")
    monkeypatch.setenv("RESPONDER_API_ENDPOINT", "http://127.0.0.1:9")  # --endpoint below must win

    assert 0 == cli.main(["validate-config", "--config", str(ROOT / "config" / "responder.toml")])
    assert cli.EXIT_CONFIG == cli.main(["validate-config", "--config", str(bad)])
    assert "band.end: must be greater than band.start" in capsys.readouterr().err
    create_policy(env)
    assert 0 == cli.main(["status", "--endpoint", env.endpoint, "--json"])
    assert 0 == cli.main(["--json", "list", "--endpoint", env.endpoint])


def _policy_now(server: LocalCloudArmor) -> dict[str, object]:
    server.settle()
    policy = server.policy(PROJECT, POLICY)
    assert policy is not None
    return {"rules": policy["rules"], "labels": policy.get("labels", {})}


def test_dry_run_of_every_changing_command_says_would_and_changes_nothing(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    import tests.e2e.conftest as c

    create_policy(env)
    cli.main(["block", "91.92.109.0/24", "185.220.101.34", "--ttl", "2h", "--actor", "me"])
    expired = {"priority": 20100, "action": "deny(403)", "description": "car1 x=202001010000 v=m s=intel",
               "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["45.9.0.0/24"]}}}
    c._http("POST", f"{env.endpoint}/compute/v1/projects/{PROJECT}/global/securityPolicies/{POLICY}/addRule", expired)
    before = _policy_now(env)
    capsys.readouterr()

    expect = {
        ("block", "44.4.4.4", "--actor", "me"): "would add 1 range(s): 44.4.4.4/32",
        ("extend", "185.220.101.34", "--ttl", "3d", "--actor", "me"): "would extend 1 range(s): 185.220.101.34/32",
        ("unblock", "185.220.101.34", "--actor", "me"): "would remove 1 range(s): 185.220.101.34/32",
        ("unblock", "91.92.109.7", "--actor", "me"): "would unblock 91.92.109.7/32 by splitting 91.92.109.0/24",
        ("preview-all", "--actor", "me"): "would put rule",
        ("enforce-all", "--actor", "me"): "would remove the policy label car-mode",
        ("cleanup",): "would expire 1 range(s): 45.9.0.0/24",
        ("bootstrap-policy",): "exists: would be kept as it is",
        ("block", "44.4.4.4", "--actor", "me", "--publish", "car-manual"): "would publish to projects/test-project/topics/car-manual",
    }
    for argv, line in expect.items():
        assert 0 == cli.main([*argv, "--dry-run"]), argv
        out = capsys.readouterr().out
        assert line in out, (argv, out)
        assert "nothing was changed" in out
        assert before == _policy_now(env), argv


def test_bootstrap_dry_run_validates_the_insert_and_creates_nothing(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == cli.main(["--dry-run", "bootstrap-policy"])
    assert "would create policy ml-edge (insert validated by the API)" in capsys.readouterr().out
    env.settle()
    assert env.policy(PROJECT, POLICY) is None


def test_validate_only_says_would_add_not_added(env: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    create_policy(env)
    monkeypatch.setenv("RESPONDER_VALIDATE_ONLY", "true")

    assert 0 == cli.main(["block", "44.4.4.4", "--actor", "me"])

    out = capsys.readouterr().out
    assert "would add 1 range(s): 44.4.4.4/32" in out and "added" not in out
    assert "dry run (band.validate_only is on)" in out
    assert {} == band(env)


def test_json_documents_of_status_list_and_explain(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    create_policy(env)
    cli.main(["block", "91.92.109.0/24", "--ttl", "2h", "--actor", "me", "--severity", "critical"])
    capsys.readouterr()

    assert 0 == cli.main(["status", "--json"])
    status = json.loads(capsys.readouterr().out)
    assert cli.main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert cli.main(["explain", TARGET, "--json"]) == 0
    explain = json.loads(capsys.readouterr().out)

    assert ("status", 1) == (status["kind"], status["version"])
    assert {"start": BAND[0], "end": BAND[1], "max_rules": 150, "rules": 1, "ranges": 1, "foreign": 0} == {
        k: v for k, v in status["band"].items() if k != "utilisation"}
    rule = status["rules"][0]
    assert (["91.92.109.0/24"], "critical", ["manual"], "enforced") == (rule["ranges"], rule["severity"], rule["sources"], rule["state"])
    entry = listing["entries"][0]
    assert ("list", "91.92.109.0/24", [rule["priority"]], rule["expiry"]) == (listing["kind"], entry["range"], entry["priorities"], entry["expiry"])
    assert ("explain", "91.92.109.9/32", True) == (explain["kind"], explain["address"], explain["blocked"])
    assert ["91.92.109.0/24"] == [c["range"] for c in explain["covered_by"]]
    assert ["added"] == [r["change"] for r in explain["trail"]]


def test_json_on_a_command_without_it_is_a_usage_error(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.EXIT_USAGE == cli.main(["cleanup", "--json"])
    assert cli.EXIT_USAGE == cli.main(["status", "--dry-run"])
    err = capsys.readouterr().err.splitlines()
    assert 2 == len(err) and "--json is for status, list, explain" in err[0]


def test_missing_actor_names_the_option(env: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    create_policy(env)
    monkeypatch.delenv("USER", raising=False)

    assert cli.EXIT_USAGE == cli.main(["block", "44.4.4.4", "--actor", ""])

    assert "--actor" in capsys.readouterr().err
    assert {} == band(env)


def test_an_unblock_that_splits_a_range_does_not_say_extended(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    create_policy(env)
    cli.main(["block", "91.92.109.0/24", "--ttl", "2h", "--actor", "me"])
    capsys.readouterr()

    assert 0 == cli.main(["unblock", "91.92.109.7", "--actor", "me"])

    out = capsys.readouterr().out
    assert "extended" not in out
    assert "unblocked 91.92.109.7/32 by splitting 91.92.109.0/24: 8 range(s) around it stay blocked" in out
    blocked = [ipaddress.ip_network(n) for n in band(env)]
    assert 8 == len(blocked) and not any(ipaddress.ip_address("91.92.109.7") in n for n in blocked)


def test_an_unblock_that_splits_a_range_records_only_the_hole_as_removed(env: LocalCloudArmor, tmp_path: Path) -> None:
    """Was: 'extended' for the eight pieces kept around the hole and
    'removed 91.92.109.0/24', as if the whole /24 had been unblocked."""
    from responder.audit import read_file

    create_policy(env)
    cli.main(["block", "91.92.109.0/24", "--ttl", "2h", "--actor", "me"])
    written = len(list(read_file(tmp_path / "audit.jsonl")))

    assert 0 == cli.main(["unblock", "91.92.109.7", "--actor", "me"])

    records = list(read_file(tmp_path / "audit.jsonl"))[written:]
    assert [("removed", ["91.92.109.7/32"], ["91.92.109.0/24"])] == [
        (r["change"], r["ranges"], r.get("split")) for r in records]
    assert 8 == len(band(env))


def _cli(env_vars: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv], capture_output=True, text=True,
                          env={**os.environ, **env_vars}, cwd=ROOT, timeout=120)


def test_a_refusal_is_printed_once(env: LocalCloudArmor) -> None:
    import os

    create_policy(env)
    result = _cli({k: os.environ[k] for k in os.environ if k.startswith("RESPONDER_")}, "block", "10.0.0.1", "--actor", "me")

    assert 1 == (result.stdout + result.stderr).count("refused block 10.0.0.1/32")
    assert cli.EXIT_REFUSED == result.returncode
    assert {} == band(env)


def test_publish_without_credentials_is_one_plain_line(tmp_path: Path) -> None:
    result = _cli({"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json")},
                  "block", "44.4.4.4", "--actor", "me", "--publish", "car-manual")

    assert "Traceback" not in result.stderr and 1 == len(result.stderr.splitlines())
    assert "no Google credentials to publish with" in result.stderr
    assert cli.EXIT_ACCESS == result.returncode


def test_usage_errors_are_one_line(env: LocalCloudArmor, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.EXIT_USAGE == cli.main(["frobnicate"])
    assert cli.EXIT_USAGE == cli.main(["explain", "not-an-address"])
    err = capsys.readouterr().err.splitlines()
    assert 2 == len(err) and "invalid choice: 'frobnicate'" in err[0] and "not an IP address" in err[1]


def test_an_unresolvable_endpoint_fails_within_the_request_timeout(env: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    monkeypatch.setenv("RESPONDER_RETRY_DEADLINE", "60s")  # the default: was retried for all of it
    started = time.monotonic()

    code = cli.main(["--endpoint", "http://responder-test.invalid:8080", "status"])

    assert time.monotonic() - started < 30  # policy.request_timeout
    assert cli.EXIT_TRANSIENT == code
    err = capsys.readouterr().err
    assert 1 == len(err.splitlines()) and "its host name does not resolve" in err
