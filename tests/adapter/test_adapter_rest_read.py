"""The adapter's read path: get_policy / get_rule over the REST JSON API
(no compute_v1), its error mapping, and messages that change nothing being
handled without importing google.cloud.compute_v1."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest

from config.settings import PolicySettings
from localapi import FaultConfig
from responder.compute import Backoff, CloudArmor
from responder.errors import (
    OutcomeUnknown,
    PermanentError,
    PermissionDenied,
    PolicyNotFound,
    QuotaExceeded,
    TransientError,
)
from responder.policy import PolicyRule

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FAST = Backoff(initial=0.01, maximum=0.05, multiplier=2.0)


class _Canned(BaseHTTPRequestHandler):
    """Answers every GET with the next (status, body) of ``server.answers``."""

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        srv.seen.append(self.path)
        status, body = srv.answers[min(len(srv.seen), len(srv.answers)) - 1]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def canned():
    """canned(*answers) -> (adapter, server): a server answering GETs in order."""
    servers = []

    def make(*answers, region: str = "", retry_deadline: float = 0.3):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
        srv.answers, srv.seen = list(answers), []
        Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        settings = PolicySettings(project="proj", name="armor", region=region,
                                  api_endpoint=f"http://127.0.0.1:{srv.server_address[1]}",
                                  request_timeout=timedelta(seconds=2), operation_timeout=timedelta(seconds=2))
        return CloudArmor(settings, retry_deadline=timedelta(seconds=retry_deadline), backoff=FAST, poll=FAST), srv

    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _error(code: int, message: str, reason: str = "") -> dict:
    errors = [{"message": message, "domain": "global", "reason": reason}] if reason else []
    return {"error": {"code": code, "message": message, "errors": errors}}


POLICY_JSON = {
    "kind": "compute#securityPolicy", "name": "armor", "fingerprint": "fp1=", "labelFingerprint": "lfp=",
    "labels": {"car-lease": "w1-123"},
    "rules": [
        {"priority": 20000, "action": "deny(403)", "description": "car1 x", "preview": True,
         "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["192.0.2.0/24"]}}, "kind": "x"},
        {"priority": 3000, "action": "deny(403)",
         "match": {"expr": {"expression": "evaluatePreconfiguredWaf('sqli-v33-stable')"}}},
        {"priority": 2147483647, "action": "allow", "description": "default rule",
         "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}}},
    ],
}


@pytest.mark.parametrize("region", ["", "us-central1"])
def test_get_policy_maps_json(canned, region):
    armor, srv = canned((200, POLICY_JSON), region=region)
    snap = armor.get_policy()
    scope = f"regions/{region}" if region else "global"
    assert srv.seen == [f"/compute/v1/projects/proj/{scope}/securityPolicies/armor"]
    assert (snap.name, snap.fingerprint, snap.label_fingerprint) == ("armor", "fp1=", "lfp=")
    assert snap.labels == {"car-lease": "w1-123"}
    rule = snap.rule_at(20000)
    assert rule == PolicyRule(priority=20000, action="deny(403)", ranges=("192.0.2.0/24",),
                              description="car1 x", preview=True)
    assert rule.raw == POLICY_JSON["rules"][0]  # the rule JSON as read
    waf = snap.rule_at(3000)
    assert waf.expression == "evaluatePreconfiguredWaf('sqli-v33-stable')" and waf.ranges == ()
    assert waf.description == "" and waf.preview is False
    assert armor.calls()["get"] == 1


def test_get_rule_sends_priority_and_maps_missing_rule(canned):
    missing = _error(400, "Invalid value for field 'priority': '7'. The security policy does not contain a "
                          "rule at priority 7.", "invalid")
    armor, srv = canned((200, POLICY_JSON["rules"][0]), (400, missing))
    assert armor.get_rule(20000).ranges == ("192.0.2.0/24",)
    assert armor.get_rule(7) is None
    assert srv.seen == ["/compute/v1/projects/proj/global/securityPolicies/armor/getRule?priority=20000",
                        "/compute/v1/projects/proj/global/securityPolicies/armor/getRule?priority=7"]
    assert armor.calls()["get_rule"] == 2 and armor.calls()["retry"] == 0


@pytest.mark.parametrize("status,body,expected", [
    (404, _error(404, "The resource 'projects/proj/global/securityPolicies/armor' was not found", "notFound"),
     PolicyNotFound),
    (403, _error(403, "Required 'compute.securityPolicies.get' permission", "forbidden"), PermissionDenied),
    (401, _error(401, "Request had invalid authentication credentials."), PermissionDenied),
    (403, _error(403, "Quota exceeded for quota metric 'Read requests'", "quotaExceeded"), QuotaExceeded),
    (400, _error(400, "Invalid value for field 'securityPolicy'", "invalid"), PermanentError),
])
def test_permanent_errors_are_mapped_and_not_retried(canned, status, body, expected):
    armor, srv = canned((status, body))
    with pytest.raises(expected) as info:
        armor.get_policy()
    assert type(info.value) is expected
    assert len(srv.seen) == 1 and armor.calls()["retry"] == 0


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_errors_are_retried_then_succeed(canned, status):
    armor, srv = canned((status, _error(status, "try again", "rateLimitExceeded" if status == 429 else "backendError")),
                        (200, POLICY_JSON), retry_deadline=5.0)
    assert armor.get_policy().fingerprint == "fp1="
    assert len(srv.seen) == 2
    assert armor.calls()["get"] == 2 and armor.calls()["retry"] == 1


@pytest.mark.parametrize("status", [429, 503])
def test_transient_errors_give_up_at_the_deadline(canned, status):
    armor, _ = canned((status, _error(status, "busy")), retry_deadline=0.2)
    with pytest.raises(TransientError) as info:
        armor.get_policy()
    assert type(info.value) is TransientError  # a read's lost answer is never OutcomeUnknown
    assert armor.calls()["retry"] >= 1


def test_unreadable_answer_is_transient(canned):
    armor, _ = canned((200, b"<html>proxy error</html>"), (200, POLICY_JSON), retry_deadline=5.0)
    assert armor.get_policy().name == "armor"
    assert armor.calls()["retry"] == 1


def test_connection_refused_is_transient():
    settings = PolicySettings(project="proj", name="armor", api_endpoint="http://127.0.0.1:9",
                              request_timeout=timedelta(seconds=1))
    armor = CloudArmor(settings, retry_deadline=timedelta(seconds=0.2), backoff=FAST)
    with pytest.raises(TransientError) as info:
        armor.get_rule(5)
    assert not isinstance(info.value, OutcomeUnknown)
    assert armor.calls()["retry"] >= 1


def test_read_timeout_is_transient(make_adapter, server):
    armor = make_adapter(request_timeout=0.2, retry_deadline=0.5)
    server.faults = FaultConfig(latency=1.0, latency_range=(0.6, 0.6), scope="reads", seed=1)
    with pytest.raises(TransientError) as info:
        armor.get_policy()
    assert type(info.value) is TransientError


def test_reads_do_not_import_compute_v1():
    code = textwrap.dedent("""
        import sys
        from datetime import timedelta
        from localapi import LocalCloudArmor
        from config.settings import PolicySettings
        from responder.compute import CloudArmor
        import json, urllib.request
        srv = LocalCloudArmor(op_delay=0.0).start()
        base = srv.endpoint + "/compute/v1/projects/p/global"
        req = urllib.request.Request(base + "/securityPolicies", data=json.dumps({"name": "armor"}).encode(),
                                     method="POST", headers={"content-type": "application/json"})
        urllib.request.urlopen(req).read()
        srv.settle()
        armor = CloudArmor(PolicySettings(project="p", name="armor", api_endpoint=srv.endpoint))
        assert armor.get_policy().rule_at(2147483647) is not None
        assert armor.get_rule(5) is None
        assert "google.cloud.compute_v1" not in sys.modules, "compute_v1 imported by a read"
        srv.stop()
    """)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_messages_that_change_nothing_do_not_import_compute_v1(tmp_path):
    """A duplicate manual block (already applied) and a log entry that matches
    no detector are handled by the real entry points without compute_v1: the
    duplicate's policy read goes over REST. The first delivery (a change) does
    import it - in another process."""
    script = textwrap.dedent("""
        import json, os, sys
        sys.path.insert(0, "scripts")
        from datetime import datetime, timezone
        import eventarc
        from localapi import LocalCloudArmor
        import urllib.request

        mode, endpoint = sys.argv[1], sys.argv[2]
        os.environ.update({"RESPONDER_PROJECT": "p", "RESPONDER_POLICY": "armor",
                           "RESPONDER_API_ENDPOINT": endpoint, "RESPONDER_AUDIT_FILE": sys.argv[3]})
        import functions_framework
        manual = functions_framework.create_app("on_manual", "main.py", "cloudevent").test_client()
        logs = functions_framework.create_app("on_log_sink", "main.py", "cloudevent").test_client()
        block = json.dumps({"action": "block", "ranges": ["185.220.101.34"], "actor": "t@example.com",
                            "ttl": "6h"}).encode()
        when = datetime.now(tz=timezone.utc).replace(microsecond=0)
        headers, body = eventarc.binary_request(block, message_id="m-1", publish_time=when)
        assert manual.post("/", headers=headers, data=body).status_code == 200
        if mode == "duplicate":
            entry = {"insertId": "1", "logName": "projects/p/logs/requests", "timestamp": when.isoformat(),
                     "resource": {"type": "http_load_balancer", "labels": {}},
                     "httpRequest": {"requestUrl": "https://api.example.com/v1/predict", "remoteIp": "81.2.69.160",
                                     "status": 200}, "jsonPayload": {}}
            h2, b2 = eventarc.binary_request(json.dumps(entry).encode(), message_id="l-1", publish_time=when)
            assert logs.post("/", headers=h2, data=b2).status_code == 200
        print(json.dumps({"compute_v1": "google.cloud.compute_v1" in sys.modules}))
    """)
    path = tmp_path / "deliver.py"
    path.write_text(script)
    from localapi import LocalCloudArmor

    srv = LocalCloudArmor(op_delay=0.0).start()
    try:
        import urllib.request

        req = urllib.request.Request(srv.endpoint + "/compute/v1/projects/p/global/securityPolicies",
                                     data=json.dumps({"name": "armor"}).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req).read()
        srv.settle()

        def deliver(mode: str) -> bool:
            out = subprocess.run([sys.executable, str(path), mode, srv.endpoint, str(tmp_path / f"{mode}.jsonl")],
                                 cwd=ROOT, capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "PYTHONPATH": ROOT})
            assert out.returncode == 0, out.stderr[-3000:]
            return json.loads(out.stdout.strip().splitlines()[-1])["compute_v1"]

        assert deliver("first") is True  # the block is applied: compute_v1 for the addRule
        assert deliver("duplicate") is False  # same message again + a no-match log entry: no compute_v1
        records = [json.loads(line) for line in (tmp_path / "duplicate.jsonl").read_text().splitlines()]
        changes = [r.get("change") or r.get("responder", {}).get("change") for r in records]
        assert "added" not in changes and changes.count("unchanged") >= 2, changes
        adds = [r for r in srv.requests if r["route"] == "securityPolicies.addRule"]
        assert len(adds) == 1
    finally:
        srv.stop()
