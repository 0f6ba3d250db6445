"""Property tests: random input never raises anything but FormatError."""

import json

import pytest
from formats_testkit import NOW
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.formats import FEED_FORMATS, FormatError, detect_feed_format, parse_feed
from handlers.formats.alerts import parse_monitoring_incident, parse_scc_notification
from handlers.formats.logs import builtin_detectors, evaluate_detailed
from responder.model import ParseResult

pytestmark = pytest.mark.property  # rerun with a seed from the commit on CI; ./test.sh --hunt

DETECTORS = builtin_detectors()
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "objects", "pattern", "Event", "Attribute", "response", "indicators",
                         "range", "ttl", "expiry", "value", "to_ids", "incident", "finding", "resource",
                         "logName", "httpRequest", "jsonPayload", "cidr", "spec_version"]) | st.text(max_size=8),
        inner, max_size=5),
    max_leaves=20)
FORMATS = st.none() | st.sampled_from(FEED_FORMATS)


def _try(fn, *args):
    try:
        return fn(*args)
    except FormatError:
        return None


@FAST
@given(st.binary(max_size=300), FORMATS)
def test_random_bytes_feed(payload, fmt):
    result = _try(parse_feed, payload, fmt, NOW)
    assert result is None or isinstance(result, ParseResult)
    _try(detect_feed_format, payload)


@FAST
@given(json_values, FORMATS)
def test_random_json_feed(doc, fmt):
    result = _try(parse_feed, json.dumps(doc).encode(), fmt, NOW)
    assert result is None or isinstance(result, ParseResult)


@FAST
@given(st.lists(st.text(alphabet="[]':=ORANDipv46-addr.value 0123456789/ISUBET", max_size=40), max_size=3))
def test_random_stix_patterns(patterns):
    doc = [{"type": "indicator", "id": f"indicator--{i}", "pattern": p} for i, p in enumerate(patterns)]
    result = parse_feed(json.dumps(doc).encode(), "stix", NOW)
    assert len(result.sightings) + len(result.errors) + result.skipped >= len(patterns)


@FAST
@given(json_values)
def test_random_json_logs_and_alerts(doc):
    _try(evaluate_detailed, doc, DETECTORS)
    _try(parse_monitoring_incident, doc, ["client_ip"])
    _try(parse_scc_notification, doc)


@FAST
@given(st.binary(max_size=200))
def test_random_bytes_logs_and_alerts(payload):
    _try(evaluate_detailed, payload, DETECTORS)
    _try(parse_monitoring_incident, payload, ["client_ip"])
    _try(parse_scc_notification, payload)


def test_deeply_nested_json_does_not_crash():
    deep = b"[" * 100000 + b"]" * 100000
    result = _try(parse_feed, deep, None, NOW)
    assert result is None or isinstance(result, ParseResult)
    assert _try(evaluate_detailed, deep, DETECTORS) is None
    assert _try(parse_feed, deep, "json", NOW) is None
