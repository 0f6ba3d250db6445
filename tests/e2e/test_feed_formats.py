"""Every threat-feed format through on_threat_feed, asserting the band:
real published samples where they exist (the shared samples folder beside the repository), own
fixtures (tests/data/e2e) otherwise; snapshots; per-feed settings; and one
large feed message."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from localapi import LocalCloudArmor
from tests.e2e.conftest import Harness, expiry_word
from tests.e2e.support import DATA, configured, records, sample


@pytest.fixture
def feeds(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Harness:
    """Entry points on tests/data/e2e/responder-e2e.toml (its [feeds.*])."""
    return configured(local_api, monkeypatch, tmp_path)


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def listed(text: bytes) -> list[str]:
    """The CIDRs of a Spamhaus DROP text, normalised as the band writes them."""
    import ipaddress

    out = []
    for line in text.decode().splitlines():
        if line.strip() and not line.startswith(";"):
            out.append(str(ipaddress.ip_network(line.split(";")[0].strip())))
    return out


def covers(blocked: object) -> set[str]:
    """Every range as the set of its collapsed CIDRs (the band aggregates
    adjacent ranges: 45.10.0.0/16 + 45.11.0.0/16 -> 45.10.0.0/15)."""
    import ipaddress

    nets = [ipaddress.ip_network(n) for n in blocked]  # type: ignore[attr-defined]
    out: set[str] = set()
    for v in (4, 6):
        out |= {str(c) for c in ipaddress.collapse_addresses([n for n in nets if n.version == v])}
    return out


def publish_feed(h: Harness, payload: bytes, feed: str, fmt: str | None = None, **attrs: str) -> int:
    attributes = {"feed": feed, **({"format": fmt} if fmt else {}), **attrs}
    return h.publish("on_threat_feed", payload, attributes=attributes)


# ------------------------------------------------------------ each format


def test_spamhaus_drop_excerpt(feeds: Harness) -> None:
    text = sample("spamhaus_drop_excerpt_first40_wsock_trace.txt")
    start = feeds.clock()
    assert 200 == publish_feed(feeds, text, "spamhaus-drop", "spamhaus")
    blocked = feeds.blocked()
    assert covers(listed(text)) == covers(blocked)
    assert 36 == len(listed(text))
    assert {expiry_word(start + timedelta(days=2))} == set(blocked.values())  # feeds.spamhaus-drop.ttl


def test_spamhaus_edrop_excerpt_detected_without_a_format(feeds: Harness) -> None:
    text = sample("spamhaus_edrop_excerpt_first40_wsock_trace.txt")
    assert 200 == publish_feed(feeds, text, "edrop")
    assert covers(listed(text)) == covers(feeds.blocked())


def test_spamhaus_dropv6_excerpt(feeds: Harness) -> None:
    text = sample("spamhaus_dropv6_excerpt_first30_wsock_trace.txt")
    assert 200 == publish_feed(feeds, text, "dropv6", "spamhaus")
    assert covers(listed(text)) == covers(feeds.blocked())
    assert all(":" in n for n in feeds.blocked())


def test_spamhaus_edrop_merged_notice_is_an_empty_list(feeds: Harness) -> None:
    # Incremental: nothing to apply. As a snapshot: refused (band unchanged).
    text = sample("spamhaus_edrop_merged_notice_2024_wsock_trace.txt")
    assert 200 == publish_feed(feeds, text, "edrop", "spamhaus")
    assert 1 == len(records(feeds, "unchanged"))
    assert 200 == publish_feed(feeds, text, "edrop", "spamhaus", snapshot="true")
    assert [] == feeds.band_rules()


def test_netset(feeds: Harness) -> None:
    assert 200 == publish_feed(feeds, data("feed_firehol.netset"), "firehol", "netset")
    assert covers(["1.10.16.0/20", "45.155.205.233/32", "5.134.128.0/19", "91.92.109.0/24"]) == covers(feeds.blocked())


def test_plain_emerging_threats_list(feeds: Harness) -> None:
    assert 200 == publish_feed(feeds, data("feed_et_compromised.txt"), "et-compromised", "plain")
    assert ["193.142.146.7/32", "45.155.205.233/32", "91.92.109.43/32"] == sorted(feeds.blocked())


def test_tor_bulk_exit_list(feeds: Harness) -> None:
    assert 200 == publish_feed(feeds, data("feed_tor_bulk.txt"), "tor-exits", "tor")
    assert covers(["185.220.101.34/32", "185.220.101.35/32", "2a0b:f4c2:2::1/128"]) == covers(feeds.blocked())


def test_tor_dnsel_exit_addresses(feeds: Harness) -> None:
    assert 200 == publish_feed(feeds, data("feed_tor_exits.txt"), "tor-exits", "tor")
    assert covers(["185.220.101.34/32", "185.220.101.35/32"]) == covers(feeds.blocked())


def test_stix_valid_until_revoked_and_non_ip_indicators(feeds: Harness) -> None:
    start = feeds.clock()
    until = start + timedelta(hours=5)
    bundle = data("feed_stix_bundle.json").replace(b"VALID_UNTIL", until.strftime("%Y-%m-%dT%H:%M:%SZ").encode())
    # 193.142.146.7 is blocked by this feed before; the bundle revokes it.
    assert 200 == publish_feed(feeds, b"193.142.146.7\n", "stix-intel", "plain")
    assert 200 == publish_feed(feeds, bundle, "stix-intel", "stix")
    assert {
        "45.155.205.233/32": expiry_word(until),                     # its own valid_until
        "2a0e:1c80:40::/48": expiry_word(until),
        "91.92.109.43/32": expiry_word(start + timedelta(hours=24)),  # no valid_until: the feed TTL
    } == feeds.blocked()
    refused = [r for r in records(feeds, "refused") if r.get("error_count")]
    assert [] == refused  # domain, file hash and expired indicators are skipped, not errors


def test_stix_indicator_with_a_long_or_chain_is_refused_and_the_valid_one_applied(feeds: Harness) -> None:
    """A pattern of 1,000 OR-joined comparisons (34 KB) is too deep to walk:
    that indicator is refused with a record, not redelivered forever."""
    chain = " OR ".join(f"[ipv4-addr:value = '91.92.{i // 256}.{i % 256}']" for i in range(1000))
    bundle = {"type": "bundle", "id": "bundle--chain", "objects": [
        {"type": "indicator", "id": "indicator--long-chain", "pattern_type": "stix", "pattern": chain},
        {"type": "indicator", "id": "indicator--valid", "pattern_type": "stix",
         "pattern": "[ipv4-addr:value = '193.142.146.7']"},
    ]}

    assert 200 == publish_feed(feeds, json.dumps(bundle).encode(), "stix-intel", "stix")

    assert ["193.142.146.7/32"] == list(feeds.blocked())
    refused = [r for r in records(feeds, "refused") if r.get("error_count")]
    assert [["indicator--long-chain"]] == [[e["item"] for e in r["errors"]] for r in refused]


@pytest.mark.parametrize("name", ["manual\n", "spamhaus\n", "stix-intel\n"])
def test_feed_name_with_a_trailing_newline_is_rejected_and_changes_nothing(feeds: Harness, name: str) -> None:
    assert 200 == publish_feed(feeds, b"193.142.146.7\n", name, "plain")

    assert {} == feeds.blocked()
    assert 1 == len(records(feeds, "rejected"))


def test_feed_name_with_a_trailing_newline_in_a_json_feed_is_rejected(feeds: Harness) -> None:
    doc = {"feed": "intel\n", "indicators": [{"range": "193.142.146.7"}]}

    assert 200 == feeds.publish("on_threat_feed", doc)

    assert {} == feeds.blocked()
    assert 1 == len(records(feeds, "rejected"))


def test_real_stix_samples_name_a_private_address_that_is_refused(feeds: Harness) -> None:
    for name in ("stix21_bundle_indicator_c2_ipv4_oasis.json", "stix21_bundle_indicator_ipv4_spaced_pattern_campaign_oasis.json",
                 "stix21_bundle_indicators_c2_with_coa_oasis.json"):
        assert 200 == publish_feed(feeds, sample(name), "oasis", "stix")
    assert [] == feeds.band_rules()
    assert 3 == len([r for r in records(feeds, "refused") if r.get("ranges") == ["10.0.0.0/32"]])


def test_misp_to_ids_and_deleted(feeds: Harness) -> None:
    assert 200 == publish_feed(feeds, data("feed_misp_event.json"), "misp-intel", "misp")
    assert ["45.155.205.233/32", "91.92.109.43/32"] == sorted(feeds.blocked())


def test_real_misp_event(feeds: Harness) -> None:
    doc = json.loads(sample("misp_event_circl_osint_emotet_qakbot_ip_dst_pymisp.json"))
    event = doc.get("Event", doc)
    wanted = sorted(f"{a['value']}/32" for a in event["Attribute"] if a["type"] == "ip-dst" and a["to_ids"])
    assert 200 == publish_feed(feeds, sample("misp_event_circl_osint_emotet_qakbot_ip_dst_pymisp.json"), "circl", "misp")
    assert 19 == len(wanted)
    blocked = covers(feeds.blocked())
    assert set(wanted) <= _hosts(blocked)  # every to_ids ip-dst (plus the event's other IP attributes)
    text = sample("misp_event_circl_osint_emotet_qakbot_ip_dst_pymisp.json").decode()
    assert all(h.split("/")[0] in text for h in _hosts(blocked))  # nothing but the event's addresses


def _hosts(blocked: set[str]) -> set[str]:
    import ipaddress

    return {f"{a}/32" for n in blocked for a in ipaddress.ip_network(n)}


# ----------------------------------------------------------------- snapshots


def drop(lines: list[str]) -> bytes:
    body = "".join(f"{c} ; SBL{100000 + i}\n" for i, c in enumerate(lines))
    return f"; Spamhaus DROP List 2025/01/17\n{body}; EOF\n".encode()


SNAP = [f"45.{i}.0.0/16" for i in range(10, 30, 2)]  # not adjacent: the band cannot aggregate them


def test_snapshot_replaces_the_feeds_entries_and_leaves_others(feeds: Harness) -> None:
    assert 200 == publish_feed(feeds, b"45.10.0.0/16\n", "other-feed", "plain")
    assert 200 == publish_feed(feeds, drop(SNAP), "spamhaus-drop")  # configured snapshot = true
    assert covers(SNAP) == covers(feeds.blocked())
    newer = SNAP[:8] + ["46.1.0.0/16"]  # two withdrawn, one new: 2 of 10 dropped
    assert 200 == publish_feed(feeds, drop(newer), "spamhaus-drop")
    assert covers(newer) == covers(feeds.blocked())
    assert 200 == publish_feed(feeds, drop(SNAP[1:8]), "spamhaus-drop")
    # 45.10 left the snapshot but other-feed still claims it
    assert covers(SNAP[:8]) == covers(feeds.blocked())


def test_empty_snapshot_is_refused_and_changes_nothing(feeds: Harness) -> None:
    assert 200 == publish_feed(feeds, drop(SNAP), "spamhaus-drop")
    band = feeds.band_rules()
    feeds.server.requests.clear()
    assert 200 == feeds.publish("on_threat_feed", b"; Spamhaus DROP List\n; EOF\n",
                                attributes={"feed": "spamhaus-drop"}, message_id="empty-snap")
    assert band == feeds.band_rules()
    assert [] == feeds.mutations()
    errors = [r for r in feeds.audit if r.get("message_id") == "empty-snap" and r["change"] in ("rejected", "refused")]
    assert 1 == len(errors)


def test_snapshot_dropping_more_than_max_drop_share_is_refused(feeds: Harness) -> None:
    assert 200 == publish_feed(feeds, drop(SNAP), "spamhaus-drop")
    band = feeds.band_rules()
    assert 200 == feeds.publish("on_threat_feed", drop(SNAP[:4]), attributes={"feed": "spamhaus-drop"}, message_id="shrunk")
    assert band == feeds.band_rules()
    errors = [r for r in feeds.audit if r.get("message_id") == "shrunk" and r["change"] in ("rejected", "refused")]
    assert 1 == len(errors) and "max_drop_share" in errors[0]["error"]
    assert 200 == publish_feed(feeds, drop(SNAP[:5]), "spamhaus-drop")  # exactly half: allowed
    assert covers(SNAP[:5]) == covers(feeds.blocked())


def test_incremental_feed_never_withdraws(feeds: Harness) -> None:
    assert 200 == publish_feed(feeds, drop(SNAP), "incremental", "spamhaus")
    assert 200 == publish_feed(feeds, drop(SNAP[:2]), "incremental", "spamhaus")
    assert covers(SNAP) == covers(feeds.blocked())


# ---------------------------------------------------------- per-feed settings


def test_per_feed_ttl_action_severity_and_max_entries(feeds: Harness) -> None:
    start = feeds.clock()
    lines = b"45.155.205.233\n91.92.109.43\n193.142.146.7\n5.188.11.9\n77.90.3.9\n"
    assert 200 == publish_feed(feeds, lines, "slow-intel", "plain", )
    blocked = feeds.blocked()
    assert 3 == len(blocked)  # max_entries = 3, the rest refused
    assert {expiry_word(start + timedelta(hours=3))} == set(blocked.values())
    rules = feeds.band_rules()
    assert {"deny(404)"} == {r["action"] for r in rules}
    assert all(" v=l " in r["description"] for r in rules)
    refused = [r for r in records(feeds, "refused") if r.get("error_count")]
    assert 2 == refused[0]["error_count"] and "max_entries" in json.dumps(refused[0]["errors"])


def test_per_feed_min_confidence(feeds: Harness) -> None:
    doc = {"feed": "picky", "indicators": [
        {"range": "45.155.205.233", "confidence": 90}, {"range": "91.92.109.43", "confidence": 69},
        {"range": "193.142.146.7"}]}
    assert 200 == feeds.publish("on_threat_feed", doc)
    assert ["193.142.146.7/32", "45.155.205.233/32"] == sorted(feeds.blocked())


# -------------------------------------------------------------- a large feed


def test_large_netset_message_is_applied(feeds: Harness) -> None:
    """A large netset in one message (100,000 addresses by default, about
    1.4 MB; LARGE_FEED_LINES=700000 gives a Pub/Sub-sized ~10 MB one, and
    LARGE_FEED_V6=N makes N of them IPv6 written out in full): parsed,
    guarded, aggregated and committed. The addresses are consecutive, so the
    band receives them aggregated into a few CIDRs (its rules could not hold
    that many scattered hosts). How long it takes is printed, not asserted:
    the benchmarks measure speed."""
    import ipaddress

    n = int(os.environ.get("LARGE_FEED_LINES", "100000"))
    half = n - int(os.environ.get("LARGE_FEED_V6", "0"))
    v4 = int(ipaddress.ip_address("46.0.0.0"))
    v6 = int(ipaddress.ip_address("2a0e:1c80::"))
    lines = [str(ipaddress.ip_address(v4 + i)) for i in range(half)]
    lines += [ipaddress.ip_address(v6 + i).exploded for i in range(n - half)]  # 39 characters each
    payload = ("#\n# e2e large netset\n#\n" + "\n".join(lines) + "\n").encode()
    began = time.monotonic()
    assert 200 == publish_feed(feeds, payload, "firehol", "netset")
    took = time.monotonic() - began
    covered = [ipaddress.ip_network(c) for c in feeds.blocked()]
    assert half == sum(c.num_addresses for c in covered if c.version == 4)
    assert n - half == sum(c.num_addresses for c in covered if c.version == 6)
    assert all(c.subnet_of(ipaddress.ip_network("46.0.0.0/8")) for c in covered if c.version == 4)
    assert [] == [r for r in feeds.audit if r["change"] in ("rejected", "refused")]
    print(f"\nlarge netset: {n} lines, {len(payload) / 1e6:.1f} MB, applied in {took:.1f} s")
