#!/usr/bin/env bash
# Runs the responder locally on the bundled local Cloud Armor API, drives the
# example events through the real functions, and prints the band before and
# after. Pass --keep to leave the stack up, --fresh to start from an empty API,
# --enterprise to load a FireHOL-level1-sized feed into an address group.
set -euo pipefail
cd "$(dirname "$0")"
py=$(scripts/venv.sh)
exec "$py" scripts/run_local.py "$@"
