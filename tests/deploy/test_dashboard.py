"""The dashboard and alert policies kept in deploy/, rendered as deploy.sh
renders them, checked against the fields of Google's Monitoring REST
reference that they use (projects.dashboards: Dashboard, MosaicLayout,
Tile, Widget, XyChart, DataSet, TimeSeriesQuery, TimeSeriesFilter,
Aggregation, Threshold, Axis, Text; projects.alertPolicies: AlertPolicy,
Condition, MetricThreshold). Unknown fields, wrong types, bad enum values,
tiles outside the grid or overlapping, and metrics deploy.sh does not create
fail here instead of at `gcloud monitoring dashboards create`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RENDER = ROOT / "deploy" / "render.py"
VARS = {"PREFIX": "car", "FUNCTIONS": ["car-threat-feed", "car-log-sink", "car-alert", "car-manual", "car-cleanup"],
        "MAX_RULES": 150, "BAND_ALERT_RULES": 120.0, "BAND_ALERT_PERCENT": 80, "DEAD_SUB": "car-dead-letter-hold",
        "CHANNELS": ["projects/p/notificationChannels/1"]}
ALIGNERS = {"ALIGN_NONE", "ALIGN_DELTA", "ALIGN_RATE", "ALIGN_INTERPOLATE", "ALIGN_NEXT_OLDER", "ALIGN_MIN",
            "ALIGN_MAX", "ALIGN_MEAN", "ALIGN_COUNT", "ALIGN_SUM", "ALIGN_STDDEV", "ALIGN_COUNT_TRUE",
            "ALIGN_COUNT_FALSE", "ALIGN_FRACTION_TRUE", "ALIGN_PERCENTILE_99", "ALIGN_PERCENTILE_95",
            "ALIGN_PERCENTILE_50", "ALIGN_PERCENTILE_05", "ALIGN_PERCENT_CHANGE"}
REDUCERS = {"REDUCE_NONE", "REDUCE_MEAN", "REDUCE_MIN", "REDUCE_MAX", "REDUCE_SUM", "REDUCE_STDDEV", "REDUCE_COUNT",
            "REDUCE_COUNT_TRUE", "REDUCE_COUNT_FALSE", "REDUCE_FRACTION_TRUE", "REDUCE_PERCENTILE_99",
            "REDUCE_PERCENTILE_95", "REDUCE_PERCENTILE_50", "REDUCE_PERCENTILE_05"}
BUILT_IN = {"pubsub.googleapis.com/subscription/num_undelivered_messages", "run.googleapis.com/request_count"}


def render(*args: str) -> Any:
    out = subprocess.run([sys.executable, str(RENDER), *args, json.dumps(VARS)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def fields(obj: Any, where: str, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
    assert isinstance(obj, dict), f"{where}: expected an object"
    assert set(obj) <= allowed, f"{where}: unknown fields {sorted(set(obj) - allowed)}"
    assert required <= set(obj), f"{where}: missing {sorted(required - set(obj))}"
    return obj


def duration(value: Any, where: str) -> None:
    assert isinstance(value, str) and re.fullmatch(r"[0-9]+s", value), f"{where}: a duration like '300s'"


def aggregation(agg: Any, where: str) -> None:
    fields(agg, where, {"alignmentPeriod", "perSeriesAligner", "crossSeriesReducer", "groupByFields"})
    if "alignmentPeriod" in agg:
        duration(agg["alignmentPeriod"], where)
    assert agg.get("perSeriesAligner", "ALIGN_NONE") in ALIGNERS, where
    assert agg.get("crossSeriesReducer", "REDUCE_NONE") in REDUCERS, where
    assert all(isinstance(g, str) for g in agg.get("groupByFields", [])), where


def metric_filter(text: Any, where: str) -> str:
    assert isinstance(text, str), where
    (metric_type,) = re.findall(r'metric\.type="([^"]+)"', text)
    created = {f"logging.googleapis.com/user/car-{m}" for m in
               subprocess.run([sys.executable, str(RENDER), "metric-ids"], capture_output=True, text=True,
                              check=True).stdout.split()}
    assert metric_type in created | BUILT_IN, f"{where}: {metric_type} is neither created by deploy.sh nor built in"
    assert "{{" not in text, f"{where}: unrendered template"
    return metric_type


def widget(w: Any, where: str) -> None:
    kinds = {"xyChart", "scorecard", "text", "blank", "alertChart", "timeSeriesTable", "collapsibleGroup",
             "logsPanel", "incidentList", "pieChart", "errorReportingPanel", "sectionHeader", "singleViewGroup"}
    fields(w, where, {"title", "id"} | kinds)
    (kind,) = set(w) & kinds
    if kind == "text":
        fields(w["text"], where + ".text", {"content", "format", "style"}, {"content"})
        assert w["text"].get("format", "MARKDOWN") in {"MARKDOWN", "RAW"}
        return
    assert kind == "xyChart", f"{where}: this check knows xyChart and text widgets only"
    chart = fields(w["xyChart"], where + ".xyChart",
                   {"dataSets", "timeshiftDuration", "thresholds", "xAxis", "yAxis", "y2Axis", "chartOptions"},
                   {"dataSets"})
    assert chart["dataSets"], where
    for i, ds in enumerate(chart["dataSets"]):
        at = f"{where}.dataSets[{i}]"
        fields(ds, at, {"timeSeriesQuery", "plotType", "legendTemplate", "minAlignmentPeriod", "targetAxis",
                        "breakdowns", "dimensions", "measures", "sort"}, {"timeSeriesQuery"})
        assert ds.get("plotType", "LINE") in {"LINE", "STACKED_AREA", "STACKED_BAR", "HEATMAP"}, at
        query = fields(ds["timeSeriesQuery"], at + ".timeSeriesQuery",
                       {"timeSeriesFilter", "timeSeriesFilterRatio", "timeSeriesQueryLanguage", "prometheusQuery",
                        "unitOverride", "outputFullDuration"})
        tsf = fields(query["timeSeriesFilter"], at + ".timeSeriesFilter",
                     {"filter", "aggregation", "secondaryAggregation", "pickTimeSeriesFilter",
                      "statisticalTimeSeriesFilter"}, {"filter"})
        metric_filter(tsf["filter"], at)
        aggregation(tsf.get("aggregation", {}), at + ".aggregation")
    for i, th in enumerate(chart.get("thresholds", [])):
        at = f"{where}.thresholds[{i}]"
        fields(th, at, {"label", "value", "color", "direction", "targetAxis"}, {"value"})
        assert isinstance(th["value"], (int, float)) and not isinstance(th["value"], bool), at
        assert th.get("color", "COLOR_UNSPECIFIED") in {"COLOR_UNSPECIFIED", "GREY", "BLUE", "GREEN", "YELLOW",
                                                         "ORANGE", "RED"}, at
        assert th.get("direction", "DIRECTION_UNSPECIFIED") in {"DIRECTION_UNSPECIFIED", "ABOVE", "BELOW"}, at
    for axis in ("xAxis", "yAxis", "y2Axis"):
        if axis in chart:
            fields(chart[axis], f"{where}.{axis}", {"label", "scale"})
            assert chart[axis].get("scale", "LINEAR") in {"LINEAR", "LOG10"}


def test_dashboard_uses_only_fields_of_the_dashboard_reference() -> None:
    doc = render("template", str(ROOT / "deploy" / "dashboard.json"))
    fields(doc, "dashboard", {"name", "displayName", "etag", "mosaicLayout", "gridLayout", "rowLayout",
                              "columnLayout", "dashboardFilters", "labels", "annotations"}, {"displayName"})
    assert 1 == len({"mosaicLayout", "gridLayout", "rowLayout", "columnLayout"} & set(doc))
    layout = fields(doc["mosaicLayout"], "mosaicLayout", {"columns", "tiles"}, {"columns", "tiles"})
    columns = layout["columns"]
    assert isinstance(columns, int) and 1 <= columns <= 48
    cells: set[tuple[int, int]] = set()
    for i, tile in enumerate(layout["tiles"]):
        at = f"tiles[{i}]"
        fields(tile, at, {"xPos", "yPos", "width", "height", "widget"}, {"width", "height", "widget"})
        x, y, w, h = (tile.get("xPos", 0), tile.get("yPos", 0), tile["width"], tile["height"])
        assert all(isinstance(v, int) for v in (x, y, w, h)) and x >= 0 and y >= 0 and w >= 1 and h >= 1, at
        assert x + w <= columns, f"{at}: wider than the grid"
        mine = {(cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)}
        assert not mine & cells, f"{at}: overlaps another tile"
        cells |= mine
        widget(tile["widget"], at + ".widget")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in doc.get("labels", {}).items())


@pytest.mark.parametrize("name", ["breaker", "band-share", "dead-letter", "function-errors"])
def test_alert_policies_use_only_fields_of_the_alert_policy_reference(name: str) -> None:
    doc = render("template", str(ROOT / "deploy" / "alerts" / f"{name}.json"))
    fields(doc, name, {"name", "displayName", "documentation", "userLabels", "conditions", "combiner", "enabled",
                       "validity", "notificationChannels", "creationRecord", "mutationRecord", "alertStrategy",
                       "severity"}, {"displayName", "conditions", "combiner"})
    assert doc["combiner"] in {"AND", "OR", "AND_WITH_MATCHING_RESOURCE"}
    assert VARS["CHANNELS"] == doc["notificationChannels"]
    fields(doc["documentation"], "documentation", {"content", "mimeType", "subject", "links"})
    assert "{{" not in json.dumps(doc), "unrendered template"
    for i, cond in enumerate(doc["conditions"]):
        at = f"{name}.conditions[{i}]"
        fields(cond, at, {"name", "displayName", "conditionThreshold"}, {"displayName", "conditionThreshold"})
        th = fields(cond["conditionThreshold"], at, {
            "filter", "aggregations", "denominatorFilter", "denominatorAggregations", "forecastOptions",
            "comparison", "thresholdValue", "duration", "trigger", "evaluationMissingData"},
            {"filter", "comparison", "duration"})
        metric_filter(th["filter"], at)
        if "denominatorFilter" in th:
            metric_filter(th["denominatorFilter"], at + ".denominator")
        for agg in th.get("aggregations", []) + th.get("denominatorAggregations", []):
            aggregation(agg, at)
        assert th["comparison"] in {"COMPARISON_GT", "COMPARISON_GE", "COMPARISON_LT", "COMPARISON_LE",
                                    "COMPARISON_EQ", "COMPARISON_NE"}
        assert isinstance(th["thresholdValue"], (int, float)) and not isinstance(th["thresholdValue"], bool)
        duration(th["duration"], at)
        fields(th.get("trigger", {}), at + ".trigger", {"count", "percent"})
    if "alertStrategy" in doc:
        fields(doc["alertStrategy"], "alertStrategy", {"notificationRateLimit", "autoClose", "notificationChannelStrategy"})
        duration(doc["alertStrategy"]["autoClose"], "autoClose")


def test_a_field_outside_the_reference_is_caught(tmp_path: Path) -> None:
    """The check itself: a misspelt field fails it."""
    doc = json.loads((ROOT / "deploy" / "dashboard.json").read_text())
    doc["mosaicLayout"]["tiles"][1]["widget"]["xyChart"]["dataSet"] = []
    with pytest.raises(AssertionError, match="unknown fields"):
        widget(doc["mosaicLayout"]["tiles"][1]["widget"], "tile")
