"""Runs the benchmark suite, prints every table and writes BENCHMARKS.md.

    ./bench.sh [--only calls,planner,logsink,follow,targets,coldstart,convergence,groups] [--output FILE]

A run of every section writes the whole file. A run of some sections
(``--only``) leaves the rest of an existing file as it is: each chosen
section's budgets and tables replace its own marked block (appended the
first time), so figures of sections not run are never rewritten.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime

from bench.common import ROOT, Report

SECTIONS = ("calls", "planner", "logsink", "follow", "targets", "coldstart", "convergence", "groups")
#: How each section's budgets and table titles begin in BENCHMARKS.md, so
#: that a whole run over an older file keeps the figures of sections it lacks.
OWNS = {
    "calls": ("calls per event", "cleanup:", "API calls per event", "Rules used for real-sized feeds", "Cleanup of"),
    "planner": ("planner", "Planner CPU", "Planner profile"),
    "logsink": ("hot stream", "Log-sink", "Hot stream"),
    "targets": ("targets:", "One event on 1 and 3 targets"),
    "coldstart": ("cold start", "every path fits", "Cold start"),
    "convergence": ("four-feed first load", "1,500-range first load", "pull", "First load of the four-feed set",
                    "Pulls of a list", "A pull of a"),
}


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
    spans: dict[str, tuple[int, int, int, int, float]] = {}  # section -> budgets and tables it added, seconds
    for name in SECTIONS:
        if name not in chosen:
            continue
        print(f"\n== {name} ==", flush=True)
        t = time.perf_counter()
        first = (len(report.budgets), len(report.tables))
        if name == "calls":
            from bench import calls
            calls.run(report)
        elif name == "planner":
            from bench import planner_cpu
            planner_cpu.run(report)
        elif name == "logsink":
            from bench import logsink
            logsink.run(report)
        elif name == "follow":
            from bench import follow
            follow.run(report)
        elif name == "groups":
            from bench import groups
            groups.run(report)
        elif name == "targets":
            from bench import targets
            targets.run(report)
        elif name == "coldstart":
            from bench import coldstart
            coldstart.run(report)
        else:
            from bench import convergence
            convergence.run(report)
        spans[name] = (*first, len(report.budgets), len(report.tables), time.perf_counter() - t)
        print(f"({name}: {time.perf_counter() - t:.0f} s)", flush=True)
    took = time.perf_counter() - started
    missed = [b for b in report.budgets if not b.met]
    print(f"\n{len(report.budgets) - len(missed)} budgets met, {len(missed)} missed; {took:.0f} s", flush=True)
    for b in missed:
        print(f"  MISSED: {b.name}: {b.detail}")
    if set(chosen) != set(SECTIONS) and os.path.exists(args.output):
        splice(report, args.output, spans)
    else:
        write(report, args.output, chosen, took)
    print(f"wrote {args.output}")
    return 0


def splice(report: Report, path: str, spans: dict[str, tuple[int, int, int, int, float]]) -> None:
    """Writes the sections run into their marked blocks of an existing file."""
    with open(path) as f:
        text = f.read()
    when = datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    for name, (b0, t0, b1, t1, took) in spans.items():
        begin, end = f"<!-- bench section {name}: begin -->", f"<!-- bench section {name}: end -->"
        block = [begin, f"## Section {name} (run on its own: {when}, {took:.0f} s, Python {platform.python_version()})",
                 "", "| budget | verdict | measured |", "|---|---|---|"]
        block += [f"| {b.name} | {'met' if b.met else '**MISSED**'} | {b.detail} |" for b in report.budgets[b0:b1]]
        block.append("")
        for table in report.tables[t0:t1]:
            block += [table.markdown(), ""]
        block.append(end)
        new = "\n".join(block)
        if begin in text and end in text:
            text = text[: text.index(begin)] + new + text[text.index(end) + len(end):]
        else:
            text = text.rstrip() + "\n\n" + new + "\n"
    with open(path, "w") as f:
        f.write(text.rstrip() + "\n")


def write(report: Report, path: str, sections: list[str], took: float) -> None:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass

    out = [
        "# Benchmarks",
        "",
        "Written by `./bench.sh` (the `bench/` package); do not edit by hand. Every figure is measured in the "
        "same run as its baseline; budgets that are missed say so.",
        "",
        f"Run: {datetime.now(tz=UTC).strftime('%Y-%m-%d %H:%M UTC')}, sections {', '.join(sections)}, "
        f"{took:.0f} s; Python {platform.python_version()}, {os.cpu_count()} CPU(s) ({cpu}), "
        f"{platform.system()} {platform.release()}; load average at the end {os.getloadavg()[0]:.1f}.",
        "",
        "## Budgets",
        "",
        "| budget | verdict | measured |",
        "|---|---|---|",
    ]
    kept_rows, kept_tables, kept_notes, kept_run = _kept(path, sections)
    if kept_run:
        at = next(i for i, ln in enumerate(out) if ln.startswith("Run: "))
        out[at] += f" Other sections' figures are kept from the previous run ({kept_run})."
    out += [f"| {b.name} | {'met' if b.met else '**MISSED**'} | {b.detail} |" for b in report.budgets] + kept_rows
    out += ["", "## Tables", ""]
    for table in report.tables:
        out += [table.markdown(), ""]
    out += kept_tables
    if report.extra or kept_notes:
        out += ["## Notes", ""]
        for text in report.extra:
            out += [text, ""]
        out += kept_notes
    with open(path, "w") as f:
        f.write("\n".join(out).rstrip() + "\n")


def _owner(text: str) -> str | None:
    text = text.lstrip("|# ").strip()
    return next((name for name, heads in OWNS.items() if any(text.startswith(h) for h in heads)), None)


def _kept(path: str, sections: list[str]) -> tuple[list[str], list[str], list[str], str]:
    """The budget rows, table blocks and notes of the existing file that
    belong to sections not run now, and when that file was written."""
    if set(sections) >= set(SECTIONS):
        return [], [], [], ""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return [], [], [], ""
    run = next((ln.split(",", 1)[0].removeprefix("Run: ") for ln in lines if ln.startswith("Run: ")), "")
    part, rows, tables, notes = "", [], [], []
    block: list[str] = []
    paragraph: list[str] = []
    for line in [*lines, "### end"]:
        if line.startswith("## "):
            part = line
        if part == "## Budgets" and line.startswith("| ") and not line.startswith("| budget |"):
            owner = _owner(line)
            if owner is not None and owner not in sections:
                rows.append(line)
        elif part == "## Tables" and (line.startswith("### ") or line.startswith("## ")):
            if block and (owner := _owner(block[0])) is not None and owner not in sections:
                tables += block
            block = [line] if line.startswith("### ") else []
        elif part == "## Tables" and block:
            block.append(line)
        elif part == "## Notes" and not line.startswith("## "):
            paragraph.append(line)
    for text in "\n".join(paragraph).split("\n\n"):
        if text.strip() and (owner := _owner(text.strip())) is not None and owner not in sections:
            notes += [text.strip(), ""]
    if block and block[0] != "### end" and (owner := _owner(block[0])) is not None and owner not in sections:
        tables += block
    return rows, tables, notes, run


if __name__ == "__main__":
    sys.exit(main())
