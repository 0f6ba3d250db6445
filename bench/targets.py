"""Many targets: the calls and wall time of one event on 1 and on 3 targets
(issue 15, first benchmark). The real manual handler, runtime and compute
adapters against the local API, each policy read slowed to ``READ_S`` (the
API's fault injector: latency on reads only), so that the reads dominate as
they do against Google; the targets' reads run at once."""

from __future__ import annotations

import json
import logging
import statistics
import time
import tomllib
from datetime import UTC, datetime
from typing import Any

from bench.common import OPERATOR_RULES, POLICY, PROJECT, ROOT, Report, Table, http, request_counts, start_api

READ_S = 0.2  # seconds per policy read (GET of the policy)
EVENTS = 5  # events per configuration; the median is reported
REGION = "europe-west4"
# name, policy, region, band
OTHERS = (("notebooks", "nb-edge", REGION, (40000, 40999)), ("registry", "reg-edge", "", (50000, 50999)))


def _policy(server: Any, name: str, region: str) -> None:
    scope = f"regions/{region}" if region else "global"
    base = f"{server.endpoint}/compute/v1/projects/{PROJECT}/{scope}"
    op = http("POST", f"{base}/securityPolicies", {"name": name, "rules": OPERATOR_RULES})
    http("POST", f"{base}/operations/{op['name']}/wait")


def _settings(endpoint: str, targets: int) -> Any:
    from config import settings as config

    with open(ROOT / "config" / "responder.toml", "rb") as fh:
        doc = tomllib.load(fh)
    doc["policy"].update(project=PROJECT, name=POLICY, api_endpoint=endpoint, read_cache="0", retry_deadline="10s")
    doc["band"].update(start=20000, end=20999)
    if targets > 1:
        doc["targets"] = [{"name": n, "project": PROJECT, "policy": p, "region": r, "band_start": b[0], "band_end": b[1]}
                          for n, p, r, b in OTHERS[: targets - 1]]
    return config.from_dict(doc)


def _runtime(settings: Any) -> Any:
    from handlers.runtime import Runtime
    from responder.audit import Audit

    logger = logging.getLogger("bench.targets")
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return Runtime(settings, Audit(logger=logger))


def _event(rt: Any, server: Any, n: int) -> tuple[float, dict[str, int]]:
    from handlers import manual
    from handlers.envelope import Message

    doc = {"action": "block", "ranges": [f"185.220.{100 + n}.7"], "actor": "bench", "ttl": "6h"}
    message = Message(json.dumps(doc).encode(), f"bench-{n}", datetime.now(tz=UTC))
    since = len(server.requests)
    t0 = time.perf_counter()
    manual.handle(message, rt)
    return time.perf_counter() - t0, request_counts(server, since)


def run(report: Report) -> None:
    from localapi import FaultConfig

    server = start_api(quota=200)
    try:
        _policy(server, POLICY, "")
        for _, name, region, _ in OTHERS:
            _policy(server, name, region)
        server.faults = FaultConfig(latency=1.0, latency_range=(READ_S, READ_S), scope="reads",
                                    methods=("securityPolicies.get", "regionSecurityPolicies.get"))
        table = report.table(Table(
            "One event on 1 and 3 targets (manual block of one address)",
            ["targets", "reads", "mutations", "waits", "wall (median)", "vs 1 target"],
            notes=[f"each policy read takes {READ_S:.1f} s (the local API's latency on GET of a policy); "
                   f"median of {EVENTS} events, each a new address (read_cache 0: every event reads); the "
                   "first event of each configuration (adapters built, first reads linted) is not counted",
                   "3 targets: the global default policy, a regional one and another global one; the runtime "
                   "runs the targets at once (handlers/common.each_target)"]))
        walls: dict[int, float] = {}
        for count in (1, 3):
            rt = _runtime(_settings(server.endpoint, count))
            _event(rt, server, 100 + count)  # warm: adapters built, first read linted
            runs = [_event(rt, server, 10 * count + i) for i in range(EVENTS)]
            wall = statistics.median(w for w, _ in runs)
            calls = runs[-1][1]
            reads = calls.get("get", 0) + calls.get("getRule", 0)
            mutations = sum(calls.get(k, 0) for k in ("addRule", "patchRule", "removeRule", "setLabels"))
            walls[count] = wall
            table.add(count, reads, mutations, calls.get("wait", 0) + calls.get("get_operation", 0),
                      f"{wall * 1000:.0f} ms", f"{wall / walls[1]:.2f}x")
        report.show(table)
        ratio = walls[3] / walls[1]
        report.budget("targets: one event on 3 targets <= 1.5x the wall of 1 target", ratio <= 1.5,
                      f"{walls[3] * 1000:.0f} ms vs {walls[1] * 1000:.0f} ms ({ratio:.2f}x)")
    finally:
        server.stop()
