"""Runs the benchmark suite, prints every table and writes BENCHMARKS.md.

    ./bench.sh [--only calls,planner,logsink,coldstart] [--output FILE]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime

from bench.common import ROOT, Report

SECTIONS = ("calls", "planner", "logsink", "coldstart")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    report = Report()
    started = time.perf_counter()
    for name in SECTIONS:
        if name not in chosen:
            continue
        print(f"\n== {name} ==", flush=True)
        t = time.perf_counter()
        if name == "calls":
            from bench import calls
            calls.run(report)
        elif name == "planner":
            from bench import planner_cpu
            planner_cpu.run(report)
        elif name == "logsink":
            from bench import logsink
            logsink.run(report)
        else:
            from bench import coldstart
            coldstart.run(report)
        print(f"({name}: {time.perf_counter() - t:.0f} s)", flush=True)
    took = time.perf_counter() - started
    missed = [b for b in report.budgets if not b.met]
    print(f"\n{len(report.budgets) - len(missed)} budgets met, {len(missed)} missed; {took:.0f} s", flush=True)
    for b in missed:
        print(f"  MISSED: {b.name}: {b.detail}")
    write(report, args.output, chosen, took)
    print(f"wrote {args.output}")
    return 0


def write(report: Report, path: str, sections: list[str], took: float) -> None:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    import os

    out = [
        "# Benchmarks",
        "",
        "Written by `./bench.sh` (the `bench/` package); do not edit by hand. Every figure is measured in the "
        "same run as its baseline; budgets that are missed say so.",
        "",
        f"Run: {datetime.now(tz=UTC).strftime('%Y-%m-%d %H:%M UTC')}, sections {', '.join(sections)}, "
        f"{took:.0f} s; Python {platform.python_version()}, {os.cpu_count()} CPU(s) ({cpu}), "
        f"{platform.system()} {platform.release()}.",
        "",
        "## Budgets",
        "",
        "| budget | verdict | measured |",
        "|---|---|---|",
    ]
    out += [f"| {b.name} | {'met' if b.met else '**MISSED**'} | {b.detail} |" for b in report.budgets]
    out += ["", "## Tables", ""]
    for table in report.tables:
        out += [table.markdown(), ""]
    if report.extra:
        out += ["## Notes", ""]
        for text in report.extra:
            out += [text, ""]
    with open(path, "w") as f:
        f.write("\n".join(out).rstrip() + "\n")


if __name__ == "__main__":
    sys.exit(main())
