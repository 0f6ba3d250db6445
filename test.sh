#!/usr/bin/env bash
# Runs the test suite in its own venv (created from requirements*.txt).
# Extra arguments go to pytest, e.g. ./test.sh tests/core -k codec
#   ./test.sh -m property --hypothesis-seed=N   the property tests, explored from seed N
#   ./test.sh --hunt [MINUTES]                  hunt for falsifying examples (scripts/hunt.py)
set -euo pipefail
cd "$(dirname "$0")"
py=$(scripts/venv.sh)
if [ "${1:-}" = "--hunt" ]; then
  shift
  exec "$py" scripts/hunt.py "$@"
fi
exec "$py" -m pytest "$@"
