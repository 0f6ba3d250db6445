"""Hunts for falsifying examples: runs the tests marked ``property`` (the
property tests and the stateful band test) again and again for a given time,
each round from a fresh random seed and with more examples per test
(HYPOTHESIS_SCALE), and prints every distinct failure once (by test,
exception type and first line of the message) with the seed that finds it.

    ./test.sh --hunt [MINUTES] [--scale K] [pytest arguments...]
    python scripts/hunt.py 20 --scale 5 tests/model

Exit code 1 when anything failed. A failure reproduces with
``./test.sh -m property --hypothesis-seed=SEED`` (the same scale:
``HYPOTHESIS_SCALE=K``) or with the ``@reproduce_failure`` blob it prints.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_EXAMPLES = re.compile(r"(\d+) passing, (\d+) failing")


def one_round(seed: int, scale: float, extra: list[str], budget: float) -> tuple[list[tuple[str, str, str]], int, str]:
    """(failures as (test, type, message), examples tried, output)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "property", f"--hypothesis-seed={seed}",
               "--hypothesis-show-statistics", f"--junitxml={report}", "-q", "-p", "no:logging", *extra]
        env = {**os.environ, "HYPOTHESIS_SCALE": str(scale)}
        try:
            run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(budget, 60))
            output = run.stdout + run.stderr
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return [], sum(int(p) + int(f) for p, f in _EXAMPLES.findall(out)), out
        failures = []
        tried = sum(int(p) + int(f) for p, f in _EXAMPLES.findall(output))
        if report.exists():
            for case in ET.parse(report).iter("testcase"):
                for prop in case.iter("property"):  # the state machine's own count (tests/model)
                    if prop.get("name") == "examples":
                        tried += int(prop.get("value") or 0)
                for bad in [*case.iter("failure"), *case.iter("error")]:
                    text = (bad.get("message") or bad.text or "").strip()
                    first = text.splitlines()[0] if text else ""
                    kind = first.split(":", 1)[0] if ":" in first else bad.tag
                    failures.append((f"{case.get('classname')}::{case.get('name')}", kind, first[:300]))
        return failures, tried, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("minutes", nargs="?", type=float, default=20.0)
    parser.add_argument("--scale", type=float, default=5.0, help="examples per test, times the usual (default 5)")
    args, extra = parser.parse_known_args(argv)
    deadline = time.monotonic() + args.minutes * 60
    seen: dict[tuple[str, str, str], int] = {}
    rounds = examples = 0
    print(f"hunting for {args.minutes:g} minutes, {args.scale:g}x examples per round", flush=True)
    while time.monotonic() < deadline:
        seed = secrets.randbits(32)
        left = deadline - time.monotonic()
        failures, tried, output = one_round(seed, args.scale, extra, left + 120)
        rounds += 1
        examples += tried
        print(f"round {rounds}: seed {seed}, {tried} examples, {len(failures)} failure(s)", flush=True)
        for failure in failures:
            if failure not in seen:
                seen[failure] = seed
                test, kind, message = failure
                print(f"NEW FAILURE {test}\n  {kind}: {message}\n  reproduce: HYPOTHESIS_SCALE={args.scale:g} "
                      f"./test.sh -m property --hypothesis-seed={seed}", flush=True)
                blob = re.findall(r"@reproduce_failure\([^)]*\)", output)
                if blob:
                    print(f"  or: {blob[0]}", flush=True)
    print(f"done: {rounds} round(s), {examples} examples tried, {len(seen)} distinct failure(s)")
    for (test, kind, message), seed in seen.items():
        print(f"  {test}: {kind}: {message} (seed {seed})")
    return 1 if seen else 0


if __name__ == "__main__":
    sys.exit(main())
