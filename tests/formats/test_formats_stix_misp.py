"""STIX 2.1 and MISP parsers."""

import json
from datetime import UTC, datetime

import pytest
from formats_testkit import NOW

from handlers.formats import FormatError, parse_feed
from handlers.formats.stix import pattern_addresses
from responder.model import ItemError, Severity, Sighting

UNTIL = datetime(2030, 1, 1, tzinfo=UTC)


def test_stix_fixture_sightings(data):
    r = parse_feed(data("stix_bundle_mixed.json"), None, NOW)
    assert r.sightings == (
        Sighting("192.0.2.40", expiry=UNTIL, confidence=85, reason="Ray scanners"),
        Sighting("2001:db8:40::/48", expiry=UNTIL, confidence=85, reason="Ray scanners"),
        Sighting("192.0.2.41", expiry=UNTIL, confidence=85, reason="Ray scanners"),
        Sighting("192.0.2.42", reason="withdrawn", revoked=True),
    )


def test_stix_fixture_skips_and_errors(data):
    r = parse_feed(data("stix_bundle_mixed.json"), "stix", NOW)
    # domain, AND-joined, !=, yara, expired
    assert r.skipped == 5
    assert [e.item for e in r.errors] == ["indicator--00000000-0000-4000-8000-000000000016"]
    assert r.errors[0].error.startswith("malformed STIX pattern")
    assert r.notes == ("format=stix", "expired=1")


@pytest.mark.parametrize("pattern, expected", [
    ("[ipv4-addr:value = '192.0.2.1']", ["192.0.2.1"]),
    ("[ ipv4-addr:value = '192.0.2.1' ]", ["192.0.2.1"]),
    ("[ipv6-addr:value ISSUBSET '2001:db8::/32']", ["2001:db8::/32"]),
    ("[ipv4-addr:value IN ('192.0.2.1', '192.0.2.2')]", ["192.0.2.1", "192.0.2.2"]),
    ("[ipv4-addr:value = '192.0.2.1' OR domain-name:value = 'x.example']", ["192.0.2.1"]),
    ("[ipv4-addr:value = '192.0.2.1'] OR [ipv4-addr:value = '192.0.2.2']", ["192.0.2.1", "192.0.2.2"]),
])
def test_stix_patterns_blocked(pattern, expected):
    assert pattern_addresses(pattern) == (expected, "")


@pytest.mark.parametrize("pattern", [
    "[ipv4-addr:value = '192.0.2.1' AND ipv4-addr:value = '192.0.2.2']",
    "[ipv4-addr:value = '192.0.2.1'] AND [domain-name:value = 'x.example']",
    "[ipv4-addr:value = '192.0.2.1'] FOLLOWEDBY [ipv4-addr:value = '192.0.2.2']",
    "[ipv4-addr:value = '192.0.2.1'] WITHIN 5 SECONDS",
    "[ipv4-addr:value != '192.0.2.1']",
    "[ipv4-addr:value NOT = '192.0.2.1']",
    "[ipv4-addr:value MATCHES '^192']",
    "[file:hashes.'SHA-256' = 'aa']",
    "[network-traffic:src_ref.value = '192.0.2.1']",
])
def test_stix_patterns_skipped(pattern):
    values, why = pattern_addresses(pattern)
    assert values is None and why


def test_stix_malformed_pattern_raises_value_error():
    with pytest.raises(ValueError, match="malformed STIX pattern"):
        pattern_addresses("[ipv4-addr:value = ")


def test_stix_single_indicator_object():
    ind = {"type": "indicator", "id": "indicator--1", "pattern_type": "stix",
           "pattern": "[ipv4-addr:value = '192.0.2.5']"}
    r = parse_feed(json.dumps(ind).encode(), None, NOW)
    assert r.sightings == (Sighting("192.0.2.5", reason="indicator--1"),)


def test_stix_non_string_literal_is_item_error():
    ind = [{"type": "indicator", "id": "indicator--1", "pattern": "[ipv4-addr:value = 5]"}]
    r = parse_feed(json.dumps(ind).encode(), "stix", NOW)
    assert r.sightings == ()
    assert r.errors == (ItemError("indicator--1: 5", "not an IP address or CIDR range"),)


def test_stix_top_level_without_type_raises():
    with pytest.raises(FormatError):
        parse_feed(b'{"objects": []}', "stix", NOW)


@pytest.mark.parametrize("name, expected", [
    ("stix21_bundle_indicator_c2_ipv4_oasis.json", (1, 0)),
    ("stix21_bundle_indicator_ipv4_spaced_pattern_campaign_oasis.json", (1, 0)),
    ("stix21_bundle_indicators_c2_with_coa_oasis.json", (1, 1)),
])
def test_stix_samples(sample, name, expected):
    r = parse_feed(sample(name), None, NOW)
    assert (len(r.sightings), r.skipped) == expected
    assert r.sightings[0].value == "10.0.0.0"
    assert r.errors == () and r.notes[0] == "format=stix"


# ---------------------------------------------------------------- MISP


def test_misp_fixture_sightings(data):
    r = parse_feed(data("misp_event_ip_port.json"), None, NOW)
    reason = "Scanning of Jupyter servers"
    assert r.sightings == (
        Sighting("192.0.2.50", severity=Severity.HIGH, reason=reason),
        Sighting("192.0.2.51", severity=Severity.HIGH, reason=reason),
        Sighting("2001:db8::50", severity=Severity.HIGH, reason=reason),
    )


def test_misp_fixture_skips_and_errors(data):
    r = parse_feed(data("misp_event_ip_port.json"), "misp", NOW)
    # not to_ids, deleted, domain, port attribute in the object
    assert r.skipped == 4
    assert r.errors == (ItemError("a6: evil.example", "not an IP address or CIDR range"),)


def test_misp_response_list():
    doc = {"response": [{"Event": {"info": "a", "Attribute": [
        {"type": "ip-src", "to_ids": "true", "value": "192.0.2.1"}]}}]}
    r = parse_feed(json.dumps(doc).encode(), None, NOW)
    assert r.sightings == (Sighting("192.0.2.1", reason="a"),)


def test_misp_wrong_shape_raises():
    with pytest.raises(FormatError):
        parse_feed(b'{"something": 1}', "misp", NOW)


def test_misp_qakbot_sample(sample):
    r = parse_feed(sample("misp_event_circl_osint_emotet_qakbot_ip_dst_pymisp.json"), None, NOW)
    assert len(r.sightings) == 43  # 19 event attributes + 24 ip-port objects
    assert r.sightings[0].value == "104.236.252.178"
    assert r.sightings[0].severity == Severity.LOW  # threat_level_id 3
    assert r.errors == () and r.skipped == 53


def test_misp_sunorcal_sample(sample):
    r = parse_feed(sample("misp_event_circl_osint_sunorcal_ip_dst_pymisp.json"), None, NOW)
    assert len(r.sightings) == 2 and r.errors == ()
    assert r.sightings[0].reason == "OSINT -  New Malware with Ties to SunOrcal Discovered"
