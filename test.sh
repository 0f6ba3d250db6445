#!/usr/bin/env bash
# Runs the test suite in its own venv (created from requirements*.txt).
# Extra arguments go to pytest, e.g. ./test.sh tests/core -k codec
set -euo pipefail
cd "$(dirname "$0")"
py=$(scripts/venv.sh)
exec "$py" -m pytest "$@"
