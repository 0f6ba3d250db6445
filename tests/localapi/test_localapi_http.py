"""Raw HTTP behaviour, persistence and the command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from localapi_testkit import PROJECT

from localapi import LocalCloudArmor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BASE = f"/compute/v1/projects/{PROJECT}/global/securityPolicies"


def call(server, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.endpoint + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw.startswith(b"{") else raw.decode())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_healthz(server):
    assert call(server, "GET", "/healthz") == (200, "ok")


def test_error_shape_unknown_path_and_method(server):
    status, body = call(server, "GET", "/compute/v1/projects/p/global/firewalls")
    assert status == 404 and body["error"]["errors"][0]["reason"] == "notFound"
    status, body = call(server, "DELETE", BASE + "/pol/addRule")
    assert status == 405 and body["error"]["code"] == 405
    status, body = call(server, "GET", BASE + "/nope")
    err = body["error"]
    assert status == 404 and err["status"] == "NOT_FOUND"
    assert err["errors"] == [{"message": err["message"], "domain": "global", "reason": "notFound"}]


def test_unknown_query_param_and_bad_values(server):
    assert call(server, "POST", BASE, {"name": "pol"})[0] == 200
    server.settle()
    status, body = call(server, "GET", BASE + "/pol/getRule?priority=1&bogus=1")
    assert status == 400 and "bogus" in body["error"]["message"]
    assert call(server, "GET", BASE + "/pol/getRule?priority=abc")[0] == 400
    assert call(server, "GET", BASE + "/pol/getRule?priority=2147483648")[0] == 400
    assert call(server, "GET", BASE + "/pol/getRule?priority=2147483647&$alt=json;enum-encoding=int"
                                      "&prettyPrint=false")[0] == 200
    rule = {"priority": 5, "action": "allow",
            "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["1.1.1.1"]}}}
    assert call(server, "POST", BASE + "/pol/addRule?validateOnly=maybe", rule)[0] == 400
    status, op = call(server, "POST", BASE + "/pol/addRule?validateOnly=True", rule)
    assert status == 200 and op["status"] == "DONE"
    req = urllib.request.Request(server.endpoint + BASE + "/pol/addRule", data=b"{nope",
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400


def test_request_log(server):
    call(server, "POST", BASE + "?requestId=abc", {"name": "pol"})
    entry = server.requests[-1]
    assert entry["method"] == "POST" and entry["path"] == BASE
    assert entry["query"] == {"requestId": "abc"} and entry["body"] == {"name": "pol"}
    assert entry["status"] == 200 and entry["route"] == "securityPolicies.insert"
    assert isinstance(entry["time"], float)


def test_state_file_persists_atomically(tmp_path):
    path = tmp_path / "state.json"
    srv = LocalCloudArmor(op_delay=0.01, state_file=str(path)).start()
    try:
        call(srv, "POST", BASE, {"name": "pol"})
        srv.settle()
        rule = {"priority": 5, "action": "deny(404)",
                "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["1.1.1.1"]}}}
        call(srv, "POST", BASE + "/pol/addRule", rule)
        srv.settle()
    finally:
        srv.stop()
    saved = json.loads(path.read_text())
    assert sorted(r["priority"] for r in saved["policies"][0]["policy"]["rules"]) == [5, 2147483647]
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp files left
    again = LocalCloudArmor(state_file=str(path)).start()
    try:
        assert again.rule(PROJECT, "pol", 5)["action"] == "deny(404)"
    finally:
        again.stop()


def test_command_line(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "localapi", "--port", "0", "--op-delay", "0.01,0.02",
         "--state", str(tmp_path / "s.json"), "--faults", '{"http_503": 0.0}'],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("localapi listening on http://127.0.0.1:")
        endpoint = line.rsplit(" ", 1)[1]
        with urllib.request.urlopen(endpoint + "/healthz", timeout=5) as resp:
            assert resp.read() == b"ok"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        proc.stdout.close()
