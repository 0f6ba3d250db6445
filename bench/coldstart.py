"""Cold start: wall time from process start to the first answered event and
peak RSS, per entry point, against two floors measured in the same run."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.common import POLICY, PROJECT, ROOT, Report, Table, create_policy, start_api, verdict
from bench.logsink import lb_entry

REPEATS = 3  # timed runs per scenario (median); one more run with -X importtime checks compute_v1
LIMIT_MIB = 256
FF = [sys.executable, "-m", "functions_framework", "--signature-type", "cloudevent", "--host", "127.0.0.1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += _tree(int(child))
    except OSError:
        pass
    return out


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Run:
    seconds: float
    mib: float
    status: int
    compute: bool | None = None


def start_to_answer(args: list[str], data: bytes, env: dict[str, str], *, message_id: str,
                    publish_time: datetime, attributes: dict[str, str] | None = None,
                    importtime: bool = False) -> Run:
    """Starts one functions-framework process, POSTs one binary-mode CloudEvent
    as soon as the port accepts, and measures until the answer."""
    import eventarc

    port = _free_port()
    cmd = [sys.executable, "-X", "importtime", *FF[1:]] if importtime else list(FF)
    headers, body = eventarc.binary_request(data, attributes=attributes, message_id=message_id,
                                            publish_time=publish_time)
    errfile = tempfile.TemporaryFile() if importtime else subprocess.DEVNULL  # noqa: SIM115 - -X importtime writes a lot
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--port", str(port), *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=errfile, start_new_session=True)
    status = 0
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"function process exited with {proc.returncode}: {args}") from None
                time.sleep(0.005)
                if time.perf_counter() - t0 > 60:
                    raise RuntimeError(f"function did not start: {args}") from None
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        seconds = time.perf_counter() - t0
        mib = max(_hwm_kib(p) for p in _tree(proc.pid)) / 1024
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    compute = None
    if importtime:
        errfile.seek(0)  # type: ignore[union-attr]
        compute = b"google.cloud.compute_v1" in errfile.read()  # type: ignore[union-attr]
        errfile.close()  # type: ignore[union-attr]
    return Run(seconds, mib, status, compute)


def _python_cost(code: str) -> tuple[float, float]:
    """(seconds, VmHWM MiB) of ``python -c code`` minus ``python -c pass``, medians."""
    def one(c: str) -> tuple[float, float]:
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", c + "\nimport re\nprint(re.search(r'VmHWM:\\s+(\\d+)', "
                              "open('/proc/self/status').read()).group(1))"],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        return time.perf_counter() - t, int(out.stdout.split()[-1]) / 1024
    base = [one("pass") for _ in range(REPEATS)]
    cost = [one(code) for _ in range(REPEATS)]
    return (statistics.median(c[0] for c in cost) - statistics.median(b[0] for b in base),
            statistics.median(c[1] for c in cost) - statistics.median(b[1] for b in base))


def incident(address: str, incident_id: str) -> dict[str, Any]:
    return {"version": "1.2", "incident": {
        "incident_id": incident_id, "scoping_project_id": "p", "state": "open", "started_at": 1735689600,
        "summary": "Login failures per client above threshold", "policy_name": "ml-edge brute force",
        "resource": {"type": "global", "labels": {"project_id": "p"}},
        "metric": {"type": "logging.googleapis.com/user/login_failures", "displayName": "login failures",
                   "labels": {"client_ip": address}},
        "metadata": {"system_labels": {}, "user_labels": {}},
        "condition_name": "failures > 30", "threshold_value": "30", "observed_value": "31"}}


def scenarios(rep: int) -> list[tuple[str, str, bool, bytes, dict[str, str] | None, str]]:
    """(entry point, path, changes the band, data, attributes, message id) for repetition ``rep``;
    a 'duplicate' resends the message of the 'new' scenario before it."""
    now = datetime.now(tz=UTC)
    manual = json.dumps({"action": "block", "ranges": [f"185.220.{rep}.34"], "actor": "bench@example.com",
                         "reason": "cold start bench", "ttl": "6h"}).encode()
    feed = json.dumps({"feed": "example-intel", "indicators": [
        {"range": f"193.142.{rep}.{i * 16}/28", "confidence": 90} for i in range(10)]}).encode()
    return [
        ("on_cleanup", "nothing to change", False, b'{"action": "cleanup"}', None, f"cs-cleanup-{rep}"),
        ("on_log_sink", "no detector match", False, json.dumps(lb_entry("81.2.69.160", now, waf=False)).encode(),
         None, f"cs-log-nomatch-{rep}"),
        ("on_log_sink", "malformed", False, b"not a log entry", None, f"cs-log-bad-{rep}"),
        ("on_log_sink", "WAF hit, new", True, json.dumps(lb_entry(f"45.149.{rep}.7", now, waf=True)).encode(),
         None, f"cs-log-waf-{rep}"),
        ("on_manual", "block, new", True, manual, None, f"cs-manual-{rep}"),
        ("on_manual", "block, duplicate", False, manual, None, f"cs-manual-{rep}"),
        ("on_threat_feed", "10 indicators, new", True, feed, {"feed": "example-intel", "format": "json"},
         f"cs-feed-{rep}"),
        ("on_threat_feed", "10 indicators, duplicate", False, feed, {"feed": "example-intel", "format": "json"},
         f"cs-feed-{rep}"),
        ("on_alert", "monitoring incident, new", True, json.dumps(incident(f"91.92.{rep}.43", f"0.bench{rep}")).encode(),
         None, f"cs-alert-{rep}"),
    ]


def _compact(server: Any) -> None:
    """An in-process cleanup (real service and adapter): expires and compacts
    what the previous round added."""
    from bench.calls import _armor, _responder
    from bench.common import settings
    from responder.service import EventRef

    s = settings(server.endpoint)
    _responder(s, _armor(s)).cleanup(EventRef(f"compact-{time.time_ns()}", "cleanup"))


def run(report: Report) -> None:
    server = start_api(quota=200)
    publish = datetime.now(tz=UTC)
    try:
        create_policy(server)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESPONDER_")}
        env.update({"RESPONDER_PROJECT": PROJECT, "RESPONDER_POLICY": POLICY, "RESPONDER_API_ENDPOINT": server.endpoint,
                    "RESPONDER_BAND_START": "20000", "RESPONDER_BAND_END": "20999", "RESPONDER_RETRY_DEADLINE": "20s",
                    "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "0"})
        floors: dict[str, list[Run]] = {"bare": [], "logging": []}
        results: dict[tuple[str, str], list[Run]] = {}
        checks: dict[tuple[str, str], Run] = {}
        meta: dict[tuple[str, str], bool] = {}
        for rep in range(REPEATS + 1):
            check = rep == REPEATS  # the last round: -X importtime, compute_v1 check only
            _compact(server)  # so that the cold cleanup below really has nothing to change
            for name, src in (("bare", "_floor_bare.py"), ("logging", "_floor_logging.py")):
                r = start_to_answer(["--target", "handle", "--source", str(ROOT / "bench" / src)], b"{}", env,
                                    message_id=f"floor-{name}-{rep}", publish_time=publish)
                if not check:
                    floors[name].append(r)
            for target, path, changes, data, attrs, mid in scenarios(rep):
                r = start_to_answer(["--target", target, "--source", str(ROOT / "main.py")], data, env,
                                    message_id=mid, publish_time=publish, attributes=attrs, importtime=check)
                meta[(target, path)] = changes
                if check:
                    checks[(target, path)] = r
                else:
                    results.setdefault((target, path), []).append(r)
        compute_s, compute_mib = _python_cost("import google.cloud.compute_v1")
    finally:
        server.stop()

    def med(runs: list[Run]) -> tuple[float, float]:
        return statistics.median(r.seconds for r in runs), statistics.median(r.mib for r in runs)

    bare_s, bare_mib = med(floors["bare"])
    log_s, log_mib = med(floors["logging"])
    table = report.table(Table(
        f"Cold start: process start -> first answered event (median of {REPEATS}), peak RSS",
        ["function", "path", "band change", "seconds", "peak RSS MiB", "vs floor 2 (s / RSS)",
         "compute_v1 imported", "HTTP", "budget"]))
    table.add("floor 1", "bare functions-framework function", "-", f"{bare_s:.2f}", f"{bare_mib:.0f}",
              f"{bare_s / log_s:.2f}x / {bare_mib / log_mib:.2f}x", "no", "200", "")
    table.add("floor 2", "+ google-cloud-logging StructuredLogHandler", "-", f"{log_s:.2f}", f"{log_mib:.0f}",
              "1x / 1x", "no", "200", "")
    worst_mib = 0.0
    for (target, path), runs in results.items():
        s, mib = med(runs)
        worst_mib = max(worst_mib, max(r.mib for r in runs))
        changes = meta[(target, path)]
        lim_s = 1.2 * log_s + (compute_s if changes else 0.0)
        lim_mib = 1.2 * log_mib + (compute_mib if changes else 0.0)
        imported = checks[(target, path)].compute
        ok = s <= lim_s and mib <= lim_mib and mib <= LIMIT_MIB and (changes or not imported)
        statuses = sorted({r.status for r in runs} | {checks[(target, path)].status})
        table.add(target, path, "yes" if changes else "no", f"{s:.2f}", f"{mib:.0f}",
                  f"{s / log_s:.2f}x / {mib / log_mib:.2f}x", "yes" if imported else "no",
                  ",".join(map(str, statuses)),
                  f"{verdict(ok)} (<= {lim_s:.2f} s, <= {min(lim_mib, LIMIT_MIB):.0f} MiB)")
        report.budget(f"cold start {target} {path}", ok,
                      f"{s:.2f} s (limit {lim_s:.2f}), {mib:.0f} MiB (limit {min(lim_mib, LIMIT_MIB):.0f}), "
                      f"compute_v1 {'imported' if imported else 'not imported'}")
    report.budget(f"every path fits in {LIMIT_MIB} MiB", worst_mib <= LIMIT_MIB, f"worst {worst_mib:.0f} MiB")
    table.notes += [
        "Real processes: `python -m functions_framework --signature-type cloudevent` (gunicorn: a master and "
        "one worker), one binary-mode Pub/Sub CloudEvent POSTed as soon as the port accepts. Peak RSS = the "
        "largest VmHWM of the process tree. Local API on the bench process, op_delay 0.",
        f"Importing google.cloud.compute_v1, measured in the same run (python -c, median of {REPEATS}, minus "
        f"a bare interpreter): +{compute_s:.2f} s, +{compute_mib:.0f} MiB.",
        "Budgets: paths with no band change <= 1.2 x floor 2 (time and RSS) and never import compute_v1; paths "
        "that change the band <= 1.2 x floor 2 + the compute_v1 import; every path <= 256 MiB. "
        "'compute_v1 imported' is checked in one extra run per path with `python -X importtime`.",
        "A 'duplicate' resends the message the 'new' run delivered (same id and publish time) to a fresh process: "
        "it reads the policy over the REST API (no compute_v1) and changes nothing.",
    ]
    report.show(table)
