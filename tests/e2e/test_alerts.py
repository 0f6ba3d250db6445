"""on_alert end to end (Cloud Monitoring incidents, SCC notifications), and
the TTL rules that hold across every kind of source."""

from __future__ import annotations

import json
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path

import pytest

from localapi import LocalCloudArmor
from responder.codec import decode
from responder.planner.entry import Entry, merge
from tests.e2e.conftest import Harness, expiry_word
from tests.e2e.support import api_built, configured, incident, lb_entry, records, sample, scc_notification

ATTACKER = "185.220.101.34"
NET = f"{ATTACKER}/32"


def alerts(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **monitoring: str) -> Harness:
    lines = "\n".join(f'{k} = "{v}"' for k, v in monitoring.items())
    return configured(local_api, monkeypatch, tmp_path, f"[alerts.monitoring]\nttl = \"4h\"\n{lines}\n")


def sources(h: Harness) -> dict[str, str]:
    return {net: next(w for w in r["description"].split() if w.startswith("s="))[2:]
            for r in h.band_rules() for net in r["match"]["config"]["srcIpRanges"]}


# ---------------------------------------------------------------- monitoring


@pytest.mark.parametrize("key, place", [("client_ip", "metric"), ("remote_ip", "resource"), ("source_ip", "user")])
def test_open_incident_blocks_the_labelled_address(functions: Harness, key: str, place: str) -> None:
    start = functions.clock()
    assert 200 == functions.publish("on_alert", incident(ATTACKER, key=key, place=place))
    assert {NET: expiry_word(start + timedelta(hours=6))} == functions.blocked()  # [alerts.monitoring] ttl = 6h
    assert {NET: "monitoring"} == sources(functions)
    assert " v=h " in functions.band_rules()[0]["description"]


def test_open_incident_ipv6_label_is_widened(functions: Harness) -> None:
    assert 200 == functions.publish("on_alert", incident("2a0e:1c80:7:1::5"))
    assert ["2a0e:1c80:7:1::/64"] == list(functions.blocked())


def test_test_notification_is_ignored_without_the_compute_client(functions: Harness) -> None:
    note = incident(None, policy="Test policy")
    note["incident"]["summary"] = "Test incident: this is a test notification"
    assert 200 == functions.publish("on_alert", note, message_id="t-1")
    assert ["t-1"] == [r["message_id"] for r in records(functions, "unchanged")]
    assert [] == records(functions, "rejected")
    assert not api_built()


def test_incident_without_an_address_label_changes_nothing(functions: Harness) -> None:
    assert 200 == functions.publish("on_alert", incident(None), message_id="n-1")
    unchanged = records(functions, "unchanged")
    assert ["n-1"] == [r["message_id"] for r in unchanged]
    assert "label_keys" in unchanged[0]["message"]
    assert not api_built()


@pytest.mark.parametrize("name", [
    "monitoring_alert_v1_2_open_cloudforet.json",
    "monitoring_alert_v1_2_closed_cloudforet.json",
    "monitoring_alert_v1_2_pubsub_data_decoded_gcp_forwarding.json",
])
def test_real_monitoring_notifications_without_address_labels_change_nothing(functions: Harness, name: str) -> None:
    assert 200 == functions.publish("on_alert", sample(name), message_id="r-1")
    assert [] == functions.band_rules()
    assert ["r-1"] == [r["message_id"] for r in records(functions, "unchanged")]


def test_closed_incident_keeps_the_block_by_default(functions: Harness) -> None:
    start = functions.clock()
    functions.publish("on_alert", incident(ATTACKER))
    functions.clock.advance(timedelta(minutes=30))
    assert 200 == functions.publish("on_alert", incident(ATTACKER, state="closed"))
    assert {NET: expiry_word(start + timedelta(hours=6))} == functions.blocked()


def test_closed_incident_lifts_only_the_monitoring_claim(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    h = alerts(local_api, monkeypatch, tmp_path, on_close="lift")
    assert 200 == h.publish("on_alert", incident(ATTACKER))
    assert 200 == h.publish("on_alert", incident("91.92.109.43"))
    assert 200 == h.publish("on_threat_feed", {"feed": "intel", "indicators": [{"range": "91.92.109.43", "ttl": "2h"}]})
    assert 200 == h.publish("on_alert", incident(ATTACKER, state="closed"))
    assert 200 == h.publish("on_alert", incident("91.92.109.43", state="closed"))
    assert ["91.92.109.43/32"] == list(h.blocked())
    assert 200 == h.publish("on_cleanup", {})
    assert {"91.92.109.43/32": "intel"} == sources(h)


def test_closed_incident_shortens_a_block_monitoring_alone_holds(local_api: LocalCloudArmor,
                                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    h = alerts(local_api, monkeypatch, tmp_path, on_close="shorten", close_ttl="30m")
    start = h.clock()
    assert 200 == h.publish("on_alert", incident(ATTACKER))
    assert {NET: expiry_word(start + timedelta(hours=4))} == h.blocked()
    h.clock.advance(timedelta(minutes=10))
    closed = incident(ATTACKER, state="closed")
    assert 200 == h.publish("on_alert", closed, message_id="close-1")
    assert {NET: expiry_word(start + timedelta(minutes=40))} == h.blocked()
    band, writes = h.band_rules(), len(h.mutations())
    h.clock.advance(timedelta(minutes=5))
    assert 200 == h.publish("on_alert", closed, message_id="close-1", publish_time=start + timedelta(minutes=10))
    assert band == h.band_rules() and writes == len(h.mutations())  # redelivery changes nothing


def test_shorten_never_shortens_what_another_source_claims(local_api: LocalCloudArmor,
                                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    h = alerts(local_api, monkeypatch, tmp_path, on_close="shorten", close_ttl="30m")
    start = h.clock()
    assert 200 == h.publish("on_manual", {"action": "block", "ranges": [ATTACKER], "actor": "a", "permanent": True})
    assert 200 == h.publish("on_alert", incident(ATTACKER))
    assert 200 == h.publish("on_alert", incident(ATTACKER, state="closed"))
    assert {NET: "never"} == h.blocked()
    h.clock.advance(timedelta(days=30))
    assert 200 == h.publish("on_cleanup", {})
    assert {NET: "never"} == h.blocked()
    assert start < h.clock()


@pytest.mark.parametrize("doc, complaint", [
    ({"incident": "x"}, "incident"),
    ({"incident": {"incident_id": "1", "state": "acknowledged", "metric": {"labels": {"client_ip": ATTACKER}}}}, "neither open nor closed"),
    ({"incident": {"incident_id": "1", "state": "open", "metric": {"labels": {"client_ip": "evil.example"}}}}, "no usable address"),
    ({"alert": {}}, "neither"),
    ([1, 2], "neither"),
])
def test_malformed_alerts_are_rejected_once(functions: Harness, doc: object, complaint: str) -> None:
    assert 200 == functions.publish("on_alert", doc, message_id="bad-a")  # type: ignore[arg-type]
    rejected = records(functions, "rejected")
    assert ["bad-a"] == [r["message_id"] for r in rejected]
    assert complaint in rejected[0]["error"]
    assert [] == functions.band_rules()


# ----------------------------------------------------------------------- scc


@pytest.mark.parametrize("severity, hours", [("LOW", 1), ("MEDIUM", 6), ("HIGH", 24), ("CRITICAL", 72)])
def test_scc_finding_blocks_for_its_severitys_ttl(functions: Harness, severity: str, hours: int) -> None:
    start = functions.clock()
    assert 200 == functions.publish("on_alert", scc_notification([ATTACKER], severity=severity))
    assert {NET: expiry_word(start + timedelta(hours=hours))} == functions.blocked()
    assert {NET: "scc"} == sources(functions)


def test_scc_inactive_finding_lifts_the_scc_claim(functions: Harness) -> None:
    assert 200 == functions.publish("on_alert", scc_notification([ATTACKER, "91.92.109.43"]))
    assert 200 == functions.publish("on_manual", {"action": "block", "ranges": ["91.92.109.43"], "actor": "a", "ttl": "1h"})
    assert 200 == functions.publish("on_alert", scc_notification([ATTACKER, "91.92.109.43"], state="INACTIVE"))
    assert ["91.92.109.43/32"] == list(functions.blocked())


def test_scc_inactive_finding_kept_when_configured(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    h = configured(local_api, monkeypatch, tmp_path, '[alerts.scc]\non_inactive = "keep"\nmuted = "apply"\n')
    assert 200 == h.publish("on_alert", scc_notification([ATTACKER], mute="MUTED"))
    assert 200 == h.publish("on_alert", scc_notification([ATTACKER], state="INACTIVE"))
    assert [NET] == list(h.blocked())


def test_scc_muted_finding_is_ignored_by_default(functions: Harness) -> None:
    assert 200 == functions.publish("on_alert", scc_notification([ATTACKER], mute="MUTED"), message_id="m-1")
    assert [] == functions.band_rules()
    assert ["m-1"] == [r["message_id"] for r in records(functions, "unchanged")]
    assert not api_built()


def test_scc_categories_allow_list(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    h = configured(local_api, monkeypatch, tmp_path, '[alerts.scc]\ncategories = ["Brute Force: SSH"]\n'
                   'ttl_by_severity = { high = "2h" }\n')
    start = h.clock()
    assert 200 == h.publish("on_alert", scc_notification([ATTACKER], category="Malware: Bad IP"))
    assert [] == h.band_rules()
    assert 200 == h.publish("on_alert", scc_notification([ATTACKER], category="Brute Force: SSH"))
    assert {NET: expiry_word(start + timedelta(hours=2))} == h.blocked()


def test_real_scc_brute_force_sample_is_refused_for_its_documentation_address(functions: Harness) -> None:
    # The published sample's attacker is 192.0.2.100 (TEST-NET-1): the guards refuse it.
    assert 200 == functions.publish("on_alert", sample("scc_notification_ssh_brute_force_sourceip_sra.json"), message_id="b-1")
    assert [] == functions.band_rules()
    assert 1 == len(records(functions, "refused", "b-1"))


def test_real_scc_brute_force_sample_with_a_global_address_blocks_it(functions: Harness) -> None:
    doc = json.loads(sample("scc_notification_ssh_brute_force_sourceip_sra.json").decode().replace("192.0.2.100", ATTACKER))
    assert 200 == functions.publish("on_alert", doc)
    assert [NET] == list(functions.blocked())


def test_real_scc_sample_without_an_address_changes_nothing(functions: Harness) -> None:
    assert 200 == functions.publish("on_alert", sample("scc_notification_c2_bad_ip_sra.json"), message_id="c-1")
    assert ["c-1"] == [r["message_id"] for r in records(functions, "unchanged")]


# ----------------------------------------------------- TTLs across sources


def test_resighting_from_any_source_extends_and_never_shortens(functions: Harness) -> None:
    start = functions.clock()
    functions.publish("on_alert", scc_notification([ATTACKER], severity="HIGH"))  # 24h
    functions.clock.advance(timedelta(hours=1))
    functions.publish("on_log_sink", lb_entry(ATTACKER, outcome="DENY", exprs=["sqli"], status=403))  # 6h from now
    functions.publish("on_alert", incident(ATTACKER))  # 6h from now
    assert {NET: expiry_word(start + timedelta(hours=24))} == functions.blocked()
    functions.clock.advance(timedelta(hours=22))
    functions.publish("on_log_sink", lb_entry(ATTACKER, outcome="DENY", exprs=["sqli"], status=403))
    # Escalation (sources.log/alert.escalate = 2): the log sighting an hour in
    # was the first strike (6h x 2 = 12h, within the 24h it had), this one
    # the second: 6h x 4 = 24h from now, past the 24h.
    assert {NET: expiry_word(start + timedelta(hours=23 + 24))} == functions.blocked()


def test_manual_permanent_block_is_never_shortened_by_automation(functions: Harness) -> None:
    assert 200 == functions.publish("on_manual", {"action": "block", "ranges": [ATTACKER], "actor": "a", "permanent": True})
    functions.publish("on_log_sink", lb_entry(ATTACKER, outcome="DENY", exprs=["sqli"], status=403))
    functions.publish("on_alert", scc_notification([ATTACKER], severity="LOW"))
    functions.publish("on_alert", scc_notification([ATTACKER], state="INACTIVE"))
    functions.publish("on_threat_feed", {"feed": "intel", "indicators": [{"range": ATTACKER, "ttl": "1h", "revoked": True}]})
    functions.clock.advance(timedelta(days=30))
    functions.publish("on_cleanup", {})
    assert {NET: "never"} == functions.blocked()
    assert "manual" in sources(functions)[NET]


def test_same_range_from_log_alert_and_feed_is_one_entry_keeping_each_sources_claim(functions: Harness) -> None:
    functions.publish("on_log_sink", lb_entry(ATTACKER, url="https://x/api/kernels", status=404))
    functions.publish("on_alert", incident(ATTACKER))
    functions.publish("on_alert", scc_notification([ATTACKER]))
    fed = functions.clock()
    functions.publish("on_threat_feed", {"feed": "intel", "indicators": [{"range": ATTACKER, "ttl": "2h"}]})
    assert 200 == functions.publish("on_cleanup", {})
    rules = functions.band_rules()
    # Four claims with their own expiries and a strike record do not fit
    # one 64-character description: the entry is written as records that
    # each fit, with no source in two of them, and reads back whole.
    metas = [decode("car1", r["description"]) for r in rules]
    assert all(m is not None and not m.truncated for m in metas) and 1 < len(rules)
    assert all([NET] == r["match"]["config"]["srcIpRanges"] for r in rules)
    names = [s for m in metas for s in m.sources]  # type: ignore[union-attr]
    assert sorted(names) == sorted(set(names))
    entry = Entry(ip_network(NET), metas[0])  # type: ignore[arg-type]
    for m in metas[1:]:
        entry = merge(entry, Entry(entry.network, m))  # type: ignore[arg-type]
    meta = entry.meta
    assert {"intel", "ml-probe", "monitoring", "scc"} == meta.sources and not meta.truncated
    intel = meta.claim("intel")
    assert intel is not None and intel[0] is not None
    assert expiry_word(fed + timedelta(hours=2)) == intel[0].strftime("%Y%m%d%H%M")  # the feed's own 2 h
    assert meta.expiry is not None and intel[0] < meta.expiry
