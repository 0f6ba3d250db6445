"""End-to-end fixtures: the local Cloud Armor API, a cluster policy with
operator rules, and the real entry points served by functions-framework.

Messages are delivered as Eventarc delivers them (binary-mode CloudEvents,
``scripts/eventarc.py``). Time is a fake clock the test moves, and it is
also the default publish time, so TTLs are exact.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import eventarc
import functions_framework
import pytest

from handlers import runtime
from localapi import LocalCloudArmor

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "test-project"
POLICY = "ml-edge"
REGION = "europe-west4"
BAND = (20000, 20999)
ENTRY_POINTS = ("on_threat_feed", "on_log_sink", "on_alert", "on_manual", "on_cleanup")
MUTATIONS = ("addRule", "patchRule", "removeRule")

# Operator rules around the band; the responder must never change them.
OPERATOR_RULES = [
    {"priority": 1000, "action": "allow", "description": "trusted: CI runners",
     "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["34.120.10.0/28"]}}},
    {"priority": 3000, "action": "deny(403)", "description": "WAF: SQL injection",
     "match": {"expr": {"expression": "evaluatePreconfiguredWaf('sqli-v33-stable')"}}},
    {"priority": 30000, "action": "deny(404)", "description": "operator block after the band",
     "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["45.9.148.0/24"]}}},
    {"priority": 2147483647, "action": "allow", "description": "default rule",
     "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}}},
]


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(tz=UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def _http(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def create_policy(server: LocalCloudArmor, region: str | None = None, rules: list[dict[str, Any]] | None = None) -> None:
    """Creates the cluster policy over plain HTTP (set-up, not under test)."""
    scope = f"regions/{region}" if region else "global"
    base = f"{server.endpoint}/compute/v1/projects/{PROJECT}/{scope}"
    op = _http("POST", f"{base}/securityPolicies", {"name": POLICY, "rules": copy.deepcopy(rules or OPERATOR_RULES)})
    done = _http("POST", f"{base}/operations/{op['name']}/wait")
    assert done["status"] == "DONE" and "error" not in done, done


@dataclass
class Harness:
    server: LocalCloudArmor
    clock: FakeClock
    clients: Mapping[str, Any]
    region: str | None = None
    sent: list[str] = field(default_factory=list)

    def publish(
        self,
        target: str,
        data: bytes | dict[str, Any] | list[Any],
        *,
        attributes: Mapping[str, str] | None = None,
        message_id: str | None = None,
        publish_time: datetime | None = None,
        delivery_attempt: int | None = None,
    ) -> int:
        """Delivers one message; returns the HTTP status (200 = acked)."""
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        headers, body = eventarc.binary_request(
            payload, attributes=attributes, message_id=message_id, publish_time=publish_time or self.clock(),
            delivery_attempt=delivery_attempt,
        )
        response = self.clients[target].post("/", headers=headers, data=body)
        return int(response.status_code)

    def policy(self) -> dict[str, Any]:
        self.server.settle()
        found = self.server.policy(PROJECT, POLICY, self.region)
        assert found is not None
        return found

    def band_rules(self) -> list[dict[str, Any]]:
        return [r for r in self.policy()["rules"] if BAND[0] <= r["priority"] <= BAND[1]]

    def other_rules(self) -> list[dict[str, Any]]:
        return [r for r in self.policy()["rules"] if not BAND[0] <= r["priority"] <= BAND[1]]

    def blocked(self) -> dict[str, str]:
        """Every range in the band -> the expiry word of its rule (x=...)."""
        out: dict[str, str] = {}
        for rule in self.band_rules():
            expiry = next(w for w in rule["description"].split() if w.startswith("x="))[2:]
            for net in rule["match"]["config"]["srcIpRanges"]:
                out[net] = max(out.get(net, ""), expiry)
        return out

    def mutations(self) -> list[dict[str, Any]]:
        return [r for r in self.server.requests if any(r["path"].endswith("/" + m) for m in MUTATIONS)]

    @property
    def audit(self) -> list[dict[str, Any]]:
        return runtime.current().audit.records


GRANULARITY = timedelta(minutes=15)  # band.expiry_granularity of the default config


def expiry_word(moment: datetime) -> str:
    """How a rule description writes an expiry: UTC, to the minute, rounded
    up to the next multiple of the granularity."""
    step = GRANULARITY.total_seconds()
    seconds = -(-moment.timestamp() // step) * step
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y%m%d%H%M")


@pytest.fixture
def local_api() -> Iterator[LocalCloudArmor]:
    server = LocalCloudArmor(op_delay=0.02, wait_timeout=10.0, seed=11, project=PROJECT).start()
    yield server
    server.stop()


def _harness(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, region: str | None) -> Harness:
    create_policy(local_api, region)
    monkeypatch.setenv("RESPONDER_PROJECT", PROJECT)
    monkeypatch.setenv("RESPONDER_POLICY", POLICY)
    monkeypatch.setenv("RESPONDER_REGION", region or "")
    monkeypatch.setenv("RESPONDER_API_ENDPOINT", local_api.endpoint)
    monkeypatch.setenv("RESPONDER_BAND_START", str(BAND[0]))
    monkeypatch.setenv("RESPONDER_BAND_END", str(BAND[1]))
    monkeypatch.setenv("RESPONDER_AUDIT_FILE", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("RESPONDER_RETRY_DEADLINE", "2s")
    clients = {
        target: functions_framework.create_app(target, str(ROOT / "main.py"), "cloudevent").test_client()
        for target in ENTRY_POINTS
    }
    clock = FakeClock()
    rt = runtime.current()
    rt.clock = clock
    return Harness(local_api, clock, clients, region)


@pytest.fixture
def functions(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Harness:
    """The five entry points against a global policy."""
    return _harness(local_api, monkeypatch, tmp_path, None)


@pytest.fixture
def regional_functions(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Harness:
    """The five entry points against a regional policy."""
    return _harness(local_api, monkeypatch, tmp_path, REGION)
