"""Runs the benchmark suite, prints every table and writes BENCHMARKS.md.

    ./bench.sh [--only calls,planner,logsink,coldstart,groups] [--output FILE]

With --only, the tables and budgets of the other sections already in the
output file are kept (matched by title and name); the run's own replace theirs.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime

from bench.common import ROOT, Report

SECTIONS = ("calls", "planner", "logsink", "coldstart", "groups")


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
        elif name == "groups":
            from bench import groups
            groups.run(report)
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
    budgets = [f"| {b.name} | {'met' if b.met else '**MISSED**'} | {b.detail} |" for b in report.budgets]
    tables = [table.markdown() for table in report.tables]
    notes = list(report.extra)
    if set(sections) != set(SECTIONS):  # keep what the other sections measured before
        old_budgets, old_tables, old_notes = _previous(path)
        names = {b.name for b in report.budgets}
        titles = {t.title for t in report.tables}
        budgets = [b for b in old_budgets if b.split(" | ")[0][2:] not in names] + budgets
        tables = [t for t in old_tables if t.splitlines()[0][4:] not in titles] + tables
        notes = [n for n in old_notes if n not in notes] + notes
        if old_tables:
            earlier = _earlier_run(path)
            out[4] += f" Figures of other sections come from an earlier run ({earlier})." if earlier else \
                " Figures of other sections come from an earlier run."
    out += budgets
    out += ["", "## Tables", ""]
    for table in tables:
        out += [table.rstrip(), ""]
    if notes:
        out += ["## Notes", ""]
        for text in notes:
            out += [text.rstrip(), ""]
    with open(path, "w") as f:
        f.write("\n".join(out).rstrip() + "\n")


def _earlier_run(path: str) -> str:
    """The 'Run:' line of an earlier BENCHMARKS.md (its first sentence), or ""."""
    try:
        with open(path) as f:
            line = next((ln for ln in f if ln.startswith("Run: ")), "")
    except OSError:
        return ""
    return line[5:].split(" Figures of other sections")[0].strip().rstrip(".")


def _previous(path: str) -> tuple[list[str], list[str], list[str]]:
    """The budget rows, tables (each from its '### ' line) and notes of an
    earlier BENCHMARKS.md, so that a run of some sections keeps the others."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return [], [], []
    budgets: list[str] = []
    tables: list[str] = []
    notes: list[str] = []
    part = ""
    for block in text.split("\n## ")[1:]:
        head, _, body = block.partition("\n")
        part = head.strip()
        if part.startswith("Budgets"):
            budgets = [ln for ln in body.splitlines()
                       if ln.startswith("| ") and not ln.startswith("| budget |")]
        elif part == "Tables":
            tables = ["### " + t.strip() for t in body.split("### ")[1:]]
        elif part == "Notes":
            notes = [n.strip() for n in body.split("\n\n") if n.strip()]
    return budgets, tables, notes


if __name__ == "__main__":
    sys.exit(main())
