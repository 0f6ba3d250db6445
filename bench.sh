#!/usr/bin/env bash
# Runs the benchmark suite in the project's venv (created from requirements*.txt
# on first use), prints every table and writes BENCHMARKS.md.
# Arguments go to the suite, e.g. ./bench.sh --only calls,planner
set -euo pipefail
cd "$(dirname "$0")"
py=$(scripts/venv.sh)
exec "$py" -m bench "$@"
