#!/usr/bin/env bash
# Runs the test suite in its own venv (created from requirements*.txt).
# Extra arguments go to pytest, e.g. ./test.sh tests/core -k codec
#   ./test.sh -m property --hypothesis-seed=N   the property tests, explored from seed N
#   ./test.sh --hunt [MINUTES]                  hunt for falsifying examples (scripts/hunt.py)
# Tests run on TEST_WORKERS pytest-xdist workers (default 4: many tests wait on
# sleeps, subprocesses and local servers, so more workers than cores pays),
# spread one by one (--dist loadgroup; tests/conftest.py keeps a module that
# shares a module-scoped fixture on one worker). TEST_WORKERS=0, or an -n,
# --dist, --pdb, --trace or -p no:xdist of your own, runs as you say instead.
set -euo pipefail
cd "$(dirname "$0")"
py=$(scripts/venv.sh)
if [ "${1:-}" = "--hunt" ]; then
  shift
  exec "$py" scripts/hunt.py "$@"
fi
workers=${TEST_WORKERS:-4}
parallel=(-n "$workers" --dist loadgroup)
if [ "$workers" = 0 ]; then parallel=(); fi
for arg in "$@"; do
  case "$arg" in
    -n|-n[0-9]*|-nauto|-nlogical|--numprocesses*|--dist*|--pdb|--trace|no:xdist|-pno:xdist) parallel=() ;;
  esac
done
exec "$py" -m pytest ${parallel[@]+"${parallel[@]}"} "$@"
