"""Planner CPU: plan_append and plan_reconcile for 1k, 10k and 100k
indicators, on an empty band and on a populated one (pure functions, no I/O).

Each timed run does what the service does with the planner for an event:
``read_band`` on the policy's rules, then the plan (which applies the
intents). The intents and the rules are built before the clock starts, and
garbage left by the previous run is collected before it starts.

The section runs in a child interpreter that first imports what a function
instance holds once it has written a rule (``main`` and
``google.cloud.compute_v1``), so the timings see a function's heap and not
what the benchmark's earlier sections left behind (the local API's thousands
of rules made the same plans about 10% slower)."""

from __future__ import annotations

import cProfile
import gc
import io
import json
import pstats
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import EVENT_MIX, ROOT, Report, Table, feed_list, verdict

SIZES = (1_000, 10_000, 100_000)
BUDGET_MS = 50.0  # 10k indicators
POPULATED = 1_500  # ranges already in the band (150 full rules: band.max_rules)


def _setup(n: int) -> tuple[Any, Any, Any, Any, datetime]:
    from config.settings import BandSettings
    from responder import planner
    from responder.model import Intent, Verb

    # room for every rule the biggest event needs (bench-only band size)
    bs = BandSettings(start=100_000, end=100_000 + 20_000 - 1)
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    nets = feed_list(n + POPULATED, EVENT_MIX, seed=300 + n, adjacent=0.25)
    intents = [Intent(Verb.BLOCK, x, "bench-feed", expiry=now + timedelta(hours=24)) for x in nets[POPULATED:]]
    empty = planner.read_band([], bs)
    seed = [Intent(Verb.BLOCK, x, "other-feed", expiry=now + timedelta(hours=6)) for x in nets[:POPULATED]]
    populated = [op.rule for op in planner.plan_append(empty, seed, now, bs).ops]
    return bs, intents, [], populated, now


def _time(fn: Any, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs) * 1000


def run(report: Report) -> None:
    """The figures, measured in a child interpreter (see the module's doc)."""
    out = subprocess.run([sys.executable, "-m", "bench.planner_cpu"], cwd=ROOT, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    _report(report, measured)


def measure() -> dict[str, Any]:
    """Times every case in this process; returns what ``_report`` shows."""
    import google.cloud.compute_v1  # noqa: F401 - a written-once function instance holds it

    import main  # noqa: F401 - and the function's own modules
    from responder import planner

    rows: dict[int, list[float]] = {}
    ranges: list[tuple[str, ...]] = []
    profile = ""
    for n in SIZES:
        bs, intents, empty, populated, now = _setup(n)
        repeat = 7 if n <= 10_000 else 2
        ms = [_time(lambda r=r, i=intents, t=now, s=bs: planner.plan_append(planner.read_band(r, s), i, t, s, seed=1),
                    repeat) for r in (empty, populated)]
        ms += [_time(lambda r=r, i=intents, t=now, s=bs: planner.plan_reconcile(planner.read_band(r, s), i, t, s, seed=1),
                     repeat) for r in (empty, populated)]
        rows[n] = ms
        if n == 10_000:
            ranges = [r.ranges for r in populated]
            if max(ms) > BUDGET_MS:
                profile = _profile(planner, bs, intents, populated, now)
    return {"rows": {str(n): ms for n, ms in rows.items()}, "ranges": sum(map(len, ranges)), "rules": len(ranges),
            "profile": profile}


def _profile(planner: Any, bs: Any, intents: Any, populated: Any, now: datetime) -> str:
    prof = cProfile.Profile()
    prof.enable()
    planner.plan_reconcile(planner.read_band(populated, bs), intents, now, bs, seed=1)
    planner.plan_append(planner.read_band(populated, bs), intents, now, bs, seed=1)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.strip_dirs()  # file names only: the report names no paths of this machine
    stats.sort_stats("tottime").print_stats(12)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls"))
    return "\n".join(lines[start:start + 13])


def _report(report: Report, measured: dict[str, Any]) -> None:
    table = report.table(Table(
        "Planner CPU (median wall ms, one core)",
        ["indicators", "plan_append empty", "plan_append populated", "plan_reconcile empty",
         "plan_reconcile populated", "us/indicator (append, empty)", "budget (10k <= 50 ms)"]))
    per: dict[int, float] = {}
    worst10k = 0.0
    for n in SIZES:
        ms = measured["rows"][str(n)]
        per[n] = ms[0] * 1000 / n
        budget = ""
        if n == 10_000:
            worst10k = max(ms)
            budget = f"{verdict(worst10k <= BUDGET_MS)} (worst {worst10k:.0f} ms)"
        table.add(n, *(f"{m:.1f}" for m in ms), f"{per[n]:.1f}", budget)
    growth = per[100_000] / per[1_000]
    linear = growth <= 2.0
    report.budget("planner: 10k indicators in at most 50 ms", worst10k <= BUDGET_MS, f"worst case {worst10k:.0f} ms")
    report.budget("planner: linear growth", linear, f"per-indicator cost x{growth:.2f} from 1k to 100k")
    table.notes += [
        f"Indicators: seeded public IPv4 (80% /32, 20% /24, a quarter adjacent), one source and one expiry. "
        f"Each run times read_band of the band's rules and the plan (garbage collected before it), in a child "
        f"interpreter that has imported main and google.cloud.compute_v1, as a function instance that has "
        f"written once has. "
        f"Populated band: {POPULATED:,} indicators of another source, aggregated to {measured['ranges']:,} "
        f"ranges in {measured['rules']} rules (10k case). Bench-only band "
        f"size 20,000 so no plan stops at a full band. Growth of the per-indicator cost 1k -> 100k: "
        f"x{growth:.2f} ({'linear' if linear else 'NOT linear'}).",
    ]
    if measured["profile"]:
        report.note("Planner profile, 10k indicators on the populated band (read_band + plan_reconcile, "
                    "read_band + plan_append), by own time:\n\n```\n" + measured["profile"] + "\n```")
    report.show(table)


if __name__ == "__main__":
    print(json.dumps(measure()))
