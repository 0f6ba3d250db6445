"""The functions as real functions-framework processes, over HTTP, as they
run on Cloud Functions: Eventarc's binary-mode POSTs, the structured log on
stdout, and a bad configuration stopping the process at start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import eventarc
import pytest

from localapi import LocalCloudArmor
from tests.e2e.conftest import BAND, POLICY, PROJECT, create_policy

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORK = str(Path(sys.executable).with_name("functions-framework"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(server: LocalCloudArmor, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESPONDER_")}
    env.update(
        RESPONDER_PROJECT=PROJECT, RESPONDER_POLICY=POLICY, RESPONDER_API_ENDPOINT=server.endpoint,
        RESPONDER_BAND_START=str(BAND[0]), RESPONDER_BAND_END=str(BAND[1]), PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _start(target: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    proc = subprocess.Popen(
        [FRAMEWORK, "--target", target, "--signature-type", "cloudevent", "--source", str(ROOT / "main.py"),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
        except urllib.error.HTTPError:
            break  # it answers (a GET is not a CloudEvent)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{target} did not start:\n{log.read_text()}") from None
            time.sleep(0.2)
    return proc, url


@pytest.fixture
def server() -> Iterator[LocalCloudArmor]:
    srv = LocalCloudArmor(op_delay=0.05, project=PROJECT).start()
    create_policy(srv)
    yield srv
    srv.stop()


def test_manual_block_through_a_real_function_process(server: LocalCloudArmor, tmp_path: Path) -> None:
    log = tmp_path / "on_manual.log"
    proc, url = _start("on_manual", _env(server), log)
    try:
        command = {"action": "block", "ranges": ["185.220.101.34"], "ttl": "1h", "actor": "oncall@example.com"}
        status = eventarc.post(url, json.dumps(command).encode(), message_id="p-1")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert 200 == status
    server.settle()
    policy = server.policy(PROJECT, POLICY)
    assert policy is not None
    band = [r for r in policy["rules"] if BAND[0] <= r["priority"] <= BAND[1]]
    assert [["185.220.101.34/32"]] == [r["match"]["config"]["srcIpRanges"] for r in band]
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    added = [r for r in records if r.get("responder", {}).get("change") == "added"]
    assert 1 == len(added)
    assert "p-1" == added[0]["responder"]["message_id"]


def test_invalid_configuration_stops_the_function_at_start_naming_the_field(server: LocalCloudArmor, tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    env = _env(server, RESPONDER_BAND_END="100")
    port = _port()
    proc = subprocess.run(
        [FRAMEWORK, "--target", "on_manual", "--signature-type", "cloudevent", "--source", str(ROOT / "main.py"),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, capture_output=True, timeout=60,
    )
    output = (proc.stdout + proc.stderr).decode()
    log.write_text(output)
    assert 0 != proc.returncode
    assert "band.end: must be greater than band.start (20000)" in output
