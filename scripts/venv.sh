#!/usr/bin/env bash
# Creates or refreshes .venv from requirements*.txt; prints the venv's python path.
# Re-installs only when the requirement files change (a stamp holds their hash;
# requirements-test.txt includes the Pulumi program's pins, so they count too).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
py=${PYTHON:-python3}
stamp="$venv/.requirements.sha256"
want=$(cat "$root"/requirements.txt "$root"/requirements-test.txt "$root"/iac/pulumi/requirements.txt | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv" >&2
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements-test.txt" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
