#!/usr/bin/env python3
"""Renders the monitoring files kept in deploy/ for one deployment (standard
library only; deploy.sh and tests/deploy call it).

    render.py template FILE VARS_JSON   a dashboard or alert policy template
    render.py metric ID VARS_JSON       the LogMetric config of one metric of metrics.json
    render.py metric-ids                the ids in metrics.json, one a line

Templates are plain JSON. ``{{NAME}}`` inside a string is replaced by the
variable's text; a string that is exactly ``{{NAME}}`` becomes the variable's
JSON value (a number, a list), so a template stays valid JSON. An unknown
name is an error. VARS_JSON holds PREFIX, FUNCTIONS (the function names),
MAX_RULES, BAND_ALERT_RULES, BAND_ALERT_PERCENT, DEAD_SUB and CHANNELS; the
renderer adds FUNCTION_LIST (the names quoted and joined by OR, for filters).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOKEN = re.compile(r"\{\{([A-Z_]+)\}\}")


def with_derived(variables: dict[str, Any]) -> dict[str, Any]:
    out = dict(variables)
    out["FUNCTION_LIST"] = " OR ".join(f'"{name}"' for name in variables["FUNCTIONS"])
    return out


def fill(node: Any, variables: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        return {key: fill(value, variables) for key, value in node.items()}
    if isinstance(node, list):
        return [fill(value, variables) for value in node]
    if not isinstance(node, str):
        return node
    whole = TOKEN.fullmatch(node)
    if whole:
        return variables[whole.group(1)]

    def text(match: re.Match[str]) -> str:
        value = variables[match.group(1)]
        return value if isinstance(value, str) else json.dumps(value)

    return TOKEN.sub(text, node)


def template(path: str, variables: dict[str, Any]) -> Any:
    return fill(json.loads(Path(path).read_text()), with_derived(variables))


def metrics() -> list[dict[str, Any]]:
    return json.loads((HERE / "metrics.json").read_text())["metrics"]


def metric(metric_id: str, variables: dict[str, Any]) -> dict[str, Any]:
    (spec,) = [m for m in metrics() if m["id"] == metric_id]
    prefix = variables["PREFIX"]
    services = " OR ".join(f'"{name}"' for name in variables["FUNCTIONS"])
    config: dict[str, Any] = {
        "name": f"{prefix}-{spec['id']}",
        "description": f"Cloud Armor responder ({prefix}): {spec['description']}",
        "filter": (f'resource.type="cloud_run_revision" AND resource.labels.service_name=({services}) '
                   f'AND jsonPayload.responder.change="{spec["change"]}"'),
        "metricDescriptor": {"metricKind": "DELTA", "valueType": "INT64", "unit": "1",
                             "labels": [{"key": key, "valueType": "STRING"} for key in spec["labels"]]},
        "labelExtractors": {key: f"EXTRACT(jsonPayload.responder.{key})" for key in spec["labels"]},
    }
    if "value" in spec:
        # A distribution of the record's value: one bucket per rule up to
        # about 100 buckets, so percentiles read back close to the count.
        max_rules = int(variables["MAX_RULES"])
        width = max(1, math.ceil(max_rules / 100))
        config["valueExtractor"] = f"EXTRACT(jsonPayload.responder.{spec['value']})"
        config["metricDescriptor"]["valueType"] = "DISTRIBUTION"
        config["bucketOptions"] = {"linearBuckets": {"numFiniteBuckets": math.ceil(max_rules / width) + 1,
                                                     "width": width, "offset": 0}}
    if not spec["labels"]:
        del config["metricDescriptor"]["labels"], config["labelExtractors"]
    return config


def main(argv: list[str]) -> int:
    if argv[:1] == ["template"] and len(argv) == 3:
        result: Any = template(argv[1], json.loads(argv[2]))
    elif argv[:1] == ["metric"] and len(argv) == 3:
        result = metric(argv[1], json.loads(argv[2]))
    elif argv == ["metric-ids"]:
        print("\n".join(m["id"] for m in metrics()))
        return 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
