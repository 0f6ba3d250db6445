"""Threat feed parsers: json, spamhaus, netset, plain, tor, detection."""

from datetime import UTC, datetime, timedelta

import pytest
from formats_testkit import NOW

from handlers.formats import FormatError, detect_feed_format, parse_feed
from responder.model import ItemError, Sighting


def values(result):
    return [s.value for s in result.sightings]


# ---------------------------------------------------------------- json


def test_json_feed_sightings(data):
    r = parse_feed(data("feed_own.json"), "json", NOW)
    assert r.sightings == (
        Sighting("203.0.113.0/24", ttl=timedelta(hours=6), confidence=90, reason="scanner"),
        Sighting("198.51.100.7", ttl=timedelta(seconds=3600)),
        Sighting("2001:db8::/32", expiry=datetime(2029, 12, 31, 22, tzinfo=UTC)),
        Sighting("192.0.2.4", revoked=True),
    )


def test_json_feed_item_errors_keep_good_items(data):
    r = parse_feed(data("feed_own.json"), "json", NOW)
    assert r.errors == (
        ItemError("192.0.2.1", "timestamp '2030-01-01T00:00:00' has no timezone"),
        ItemError("not-an-ip", "not an IP address or CIDR range"),
        ItemError("192.0.2.2", "bad duration '1w' (want '<int>[smhd]')"),
    )


def test_json_feed_past_expiry_is_skipped(data):
    r = parse_feed(data("feed_own.json"), "json", NOW)
    assert r.skipped == 1
    assert "expired=1" in r.notes


def test_json_feed_notes_feed_and_snapshot(data):
    r = parse_feed(data("feed_own.json"), "json", NOW)
    assert r.notes[:3] == ("format=json", "feed=ml-honeypots", "snapshot=true")


def test_json_feed_bare_list():
    r = parse_feed(b'[{"range": "192.0.2.9", "ttl": "30m"}]', "json", NOW)
    assert r.sightings == (Sighting("192.0.2.9", ttl=timedelta(minutes=30)),)
    assert r.notes == ("format=json",)


@pytest.mark.parametrize("payload", [b'{"feed": "x"}', b'"text"', b"{not json", b'{"indicators": 3}'])
def test_json_feed_wrong_shape_raises(payload):
    with pytest.raises(FormatError):
        parse_feed(payload, "json", NOW)


@pytest.mark.parametrize("conf", ["101", "-1", '"high"', "true"])
def test_json_feed_bad_confidence_is_item_error(conf):
    r = parse_feed(f'[{{"range": "192.0.2.9", "confidence": {conf}}}]'.encode(), "json", NOW)
    assert r.sightings == ()
    assert r.errors == (ItemError("192.0.2.9", "confidence must be an integer 0-100"),)


def test_json_feed_non_object_indicator_is_item_error():
    r = parse_feed(b'[5, {"range": "192.0.2.9"}]', "json", NOW)
    assert values(r) == ["192.0.2.9"]
    assert r.errors == (ItemError("indicators[0]", "indicator is not an object"),)


# ---------------------------------------------------------------- spamhaus


def test_spamhaus_text_fixture(data):
    r = parse_feed(data("spamhaus_drop.txt"), "spamhaus", NOW)
    assert r.sightings == (Sighting("192.0.2.0/24", reason="SBL000001"),
                           Sighting("198.51.100.0/24", reason="SBL000002"))
    assert r.errors == (ItemError("line 7: bogus ; SBL000003", "not an IP address or CIDR range"),)
    assert r.notes == ("format=spamhaus",
                       "list=Spamhaus DROP List 2025/01/17 - (c) 2025 The Spamhaus Project SLU",
                       "expires=2025-01-17T18:07:54+00:00")


def test_spamhaus_without_eof_is_truncated():
    r = parse_feed(b"192.0.2.0/24 ; SBL1\n", "spamhaus", NOW)
    assert values(r) == ["192.0.2.0/24"]
    assert "truncated" in r.notes


def test_spamhaus_jsonl_fixture(data):
    r = parse_feed(data("spamhaus_drop_v4.jsonl"), None, NOW)
    assert r.sightings == (Sighting("192.0.2.0/24", reason="SBL000001"),
                           Sighting("198.51.100.0/24", reason="SBL000002"))
    assert r.notes == ("format=spamhaus", "format-detected", "records=2")


def test_spamhaus_jsonl_without_metadata_is_truncated():
    r = parse_feed(b'{"cidr":"192.0.2.0/24","sblid":"SBL1","rir":"arin"}\nnot json\n', "spamhaus", NOW)
    assert values(r) == ["192.0.2.0/24"]
    assert r.errors == (ItemError("line 2: not json", "not a JSON object"),)
    assert "truncated" in r.notes


def test_spamhaus_drop_sample(sample):
    r = parse_feed(sample("spamhaus_drop_excerpt_first40_wsock_trace.txt"), None, NOW)
    assert len(r.sightings) == 36 and r.errors == ()
    assert r.sightings[0] == Sighting("1.10.16.0/20", reason="SBL256894")
    assert r.sightings[-1] == Sighting("31.210.20.0/24", reason="SBL545365")
    assert "truncated" in r.notes  # an excerpt: no "; EOF"


def test_spamhaus_eof_sample(sample):
    r = parse_feed(sample("spamhaus_drop_excerpt_last5_eof_wsock_trace.txt"), "spamhaus", NOW)
    assert values(r) == ["223.155.16.0/24", "223.169.0.0/16", "223.173.0.0/16", "223.254.0.0/16"]
    assert "truncated" not in r.notes


def test_spamhaus_dropv6_sample(sample):
    r = parse_feed(sample("spamhaus_dropv6_excerpt_first30_wsock_trace.txt"), None, NOW)
    assert len(r.sightings) == 26 and r.errors == ()
    assert r.sightings[0] == Sighting("2001:678:6c4::/48", reason="SBL626637")


def test_spamhaus_edrop_sample(sample):
    r = parse_feed(sample("spamhaus_edrop_excerpt_first40_wsock_trace.txt"), None, NOW)
    assert len(r.sightings) == 36 and r.errors == ()
    assert r.sightings[0] == Sighting("2.56.247.0/24", reason="SBL620754")


def test_spamhaus_merged_notice_sample_is_empty_and_complete(sample):
    r = parse_feed(sample("spamhaus_edrop_merged_notice_2024_wsock_trace.txt"), None, NOW)
    assert r.sightings == () and r.errors == ()
    assert "truncated" not in r.notes


# ---------------------------------------------------------------- netset / plain / tor


def test_netset_fixture(data):
    r = parse_feed(data("firehol_level1.netset"), None, NOW)
    assert values(r) == ["0.0.0.0/8", "192.0.2.0/24", "203.0.113.9"]
    assert r.notes == ("format=netset", "format-detected")


def test_plain_fixture(data):
    r = parse_feed(data("et_compromised_ips.txt"), None, NOW)
    assert values(r) == ["192.0.2.10", "192.0.2.11", "198.51.100.12"]
    assert r.notes == ("format=plain", "format-detected")


def test_plain_strips_ports_and_trailing_comments():
    r = parse_feed(b"192.0.2.1:443\n[2001:db8::1]:443 # web\n2001:db8::2\n", "plain", NOW)
    assert values(r) == ["192.0.2.1", "2001:db8::1", "2001:db8::2"]


def test_plain_rejects_non_addresses_keeping_good_lines():
    r = parse_feed(b"192.0.2.1\nexample.com\nx.x.x.x\n192.0.2.2\n", "plain", NOW)
    assert values(r) == ["192.0.2.1", "192.0.2.2"]
    assert [e.item for e in r.errors] == ["line 2: example.com", "line 3: x.x.x.x"]


def test_tor_exit_addresses_fixture(data):
    r = parse_feed(data("tor_exit_addresses.txt"), None, NOW)
    assert r.sightings == (Sighting("192.0.2.20", reason="tor exit"),
                           Sighting("192.0.2.21", reason="tor exit"),
                           Sighting("2001:db8::21", reason="tor exit"))
    assert r.errors == () and r.notes == ("format=tor", "format-detected")


def test_tor_bulk_list_fixture(data):
    r = parse_feed(data("tor_bulk_exit_list.txt"), "tor", NOW)
    assert values(r) == ["192.0.2.30", "192.0.2.31", "2001:db8::31"]


def test_tor_unknown_record_is_item_error():
    r = parse_feed(b"ExitAddress 192.0.2.1 2024-01-01 00:00:00\nBogus line here\n", "tor", NOW)
    assert values(r) == ["192.0.2.1"]
    assert r.errors == (ItemError("line 2: Bogus line here", "not a TorDNSEL record or an address"),)


# ---------------------------------------------------------------- detection and dispatch


@pytest.mark.parametrize("payload, expected", [
    (b'{"type": "bundle", "objects": []}', "stix"),
    (b'[{"type": "indicator", "pattern": "[x:y = 1]"}]', "stix"),
    (b'{"Event": {}}', "misp"),
    (b'{"response": []}', "misp"),
    (b'{"feed": "x", "indicators": []}', "json"),
    (b'[{"range": "192.0.2.1"}]', "json"),
    (b'{"cidr":"192.0.2.0/24","sblid":"SBL1"}\n{"type":"metadata"}\n', "spamhaus"),
    (b"; Spamhaus DROP List\n192.0.2.0/24 ; SBL1\n", "spamhaus"),
    (b"ExitNode ABC\nExitAddress 192.0.2.1 2024-01-01 00:00:00\n", "tor"),
    (b"# firehol_level1\n# ipv4 hash:net ipset\n192.0.2.0/24\n", "netset"),
    (b"# my list\n192.0.2.1\n", "plain"),
    (b"[2001:db8::1]:443\n", "plain"),
    (b"", "plain"),
])
def test_detect_feed_format(payload, expected):
    assert detect_feed_format(payload) == expected


@pytest.mark.parametrize("payload", [b"\xff\xfe\x00bad", b"{broken json"])
def test_detect_unreadable_raises(payload):
    with pytest.raises(FormatError):
        detect_feed_format(payload)


def test_unknown_format_name_raises():
    with pytest.raises(FormatError, match="unknown feed format 'csv'"):
        parse_feed(b"192.0.2.1\n", "csv", NOW)


def test_format_attribute_overrides_detection():
    r = parse_feed(b"192.0.2.1 ; SBL1\n", "plain", NOW)
    assert values(r) == ["192.0.2.1"] and r.notes == ("format=plain",)


def test_ten_megabyte_feed_parses():
    line = b"203.0.113.%03d ; SBL123456\n"
    count = 10 * 1024 * 1024 // len(line % 100) + 1
    payload = b"".join(line % (i % 256) for i in range(count)) + b"; EOF\n"
    assert len(payload) > 10 * 1024 * 1024
    r = parse_feed(payload, None, NOW)
    assert len(r.sightings) == count and r.errors == ()
