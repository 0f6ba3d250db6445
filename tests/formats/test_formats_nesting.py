"""Input nested or chained deeply enough to exhaust Python's recursion
limit: every parser turns it into an item error or a FormatError, never a
RecursionError (which would fail the delivery again and again)."""

import json

import pytest
from formats_testkit import NOW

from handlers.formats import FormatError, parse_feed
from handlers.formats.alerts import parse_monitoring_incident, parse_scc_notification
from handlers.formats.logs import builtin_detectors, check_entry, evaluate_detailed
from handlers.formats.stix import parse_stix, pattern_addresses
from responder.model import Sighting

VALID = {"type": "indicator", "id": "indicator--valid", "pattern": "[ipv4-addr:value = '193.142.146.7']"}


def or_chain(terms: int) -> str:
    return " OR ".join(f"[ipv4-addr:value = '91.92.{i // 256}.{i % 256}']" for i in range(terms))


def nested(depth: int) -> str:
    """JSON text of ``depth`` lists, one inside the other."""
    return "[" * depth + "]" * depth


def near_the_limit(template: str) -> list[bytes]:
    """``template`` (with ``NESTED`` for a nested value) at every depth from
    the deepest that json.loads reads here (in its first line) down by 40:
    whatever the stack depth of the parser that loads it, one of them sits
    at the limit."""
    low, high = 1, 100_000
    while low < high:  # the deepest nesting json.loads accepts from here
        mid = (low + high + 1) // 2
        try:
            json.loads(template.replace("NESTED", nested(mid)).splitlines()[0])
        except RecursionError:
            high = mid - 1
        else:
            low = mid
    return [template.replace("NESTED", nested(d)).encode() for d in range(low, max(low - 40, 1), -1)]


def test_a_long_stix_or_chain_is_a_malformed_pattern():
    with pytest.raises(ValueError, match="malformed STIX pattern"):
        pattern_addresses(or_chain(1000))


def test_a_long_stix_or_chain_rejects_its_indicator_and_keeps_the_others():
    bundle = {"type": "bundle", "objects": [
        {"type": "indicator", "id": "indicator--long", "pattern": or_chain(1000)}, VALID]}

    result = parse_stix(bundle, NOW)

    assert (Sighting("193.142.146.7", reason="indicator--valid"),) == result.sightings
    assert ["indicator--long"] == [e.item for e in result.errors]


@pytest.mark.parametrize("fmt, template", [
    ("json", '{"feed": "x", "indicators": [{"range": NESTED}, {"range": "193.142.146.7"}]}'),
    ("json", '{"feed": "x", "indicators": [{"range": "193.142.146.7", "reason": NESTED}]}'),
    ("json", '[NESTED, {"range": "193.142.146.7"}]'),
    ("stix", '{"type": "bundle", "objects": [{"type": "indicator", "pattern": NESTED}]}'),
    ("stix", '{"type": "bundle", "objects": [{"type": "indicator", "id": NESTED, "pattern": "[ipv4-addr:value = 1]"}]}'),
    ("misp", '{"Event": {"info": "x", "Attribute": [NESTED, {"type": "ip-src", "to_ids": true, "value": NESTED}]}}'),
    ("misp", '{"Event": {"Object": [{"Attribute": [{"type": "ip-dst", "to_ids": true, "value": "1.2.3.4", "uuid": NESTED}]}]}}'),
    ("misp", '{"response": [NESTED]}'),
    ("spamhaus", '{"cidr": NESTED, "sblid": "SBL1"}\n{"cidr": "193.142.146.0/24", "sblid": "SBL2"}'),
])
def test_feed_nested_to_the_limit_is_an_error_not_a_recursion_error(fmt, template):
    for payload in near_the_limit(template):
        try:
            parse_feed(payload, fmt, NOW)
        except FormatError:
            pass


@pytest.mark.parametrize("template", [
    '{"incident": {"state": "open", "metric": {"labels": {"client_ip": NESTED}}}}',
    '{"incident": {"state": "open", "policy_name": NESTED, "resource": {"labels": NESTED}}}',
    '{"incident": NESTED}',
])
def test_monitoring_incident_nested_to_the_limit_is_an_error_not_a_recursion_error(template):
    for payload in near_the_limit(template):
        try:
            parse_monitoring_incident(payload, ("client_ip",))
        except FormatError:
            pass


@pytest.mark.parametrize("template", [
    '{"finding": {"state": "ACTIVE", "indicator": {"ipAddresses": [NESTED, "193.142.146.7"]}}}',
    '{"finding": {"connections": [{"destinationIp": NESTED, "sourceIp": NESTED}]}}',
    '{"finding": {"category": NESTED, "severity": NESTED}}',
])
def test_scc_finding_nested_to_the_limit_is_an_error_not_a_recursion_error(template):
    for payload in near_the_limit(template):
        try:
            parse_scc_notification(payload)
        except FormatError:
            pass


@pytest.mark.parametrize("template", [
    '{"httpRequest": {"remoteIp": NESTED, "requestUrl": NESTED, "userAgent": NESTED}, "jsonPayload": NESTED}',
    '{"httpRequest": {"remoteIp": "193.142.146.7", "requestUrl": "/x"}, "jsonPayload": {"enforcedSecurityPolicy": NESTED}}',
    '{"logName": NESTED, "jsonPayload": {"connection": NESTED}}',
])
def test_log_entry_nested_to_the_limit_is_an_error_not_a_recursion_error(template):
    detectors = builtin_detectors()
    for payload in near_the_limit(template):
        try:
            evaluate_detailed(check_entry(payload), detectors)
        except FormatError:
            pass
