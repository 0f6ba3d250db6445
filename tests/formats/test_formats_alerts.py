"""Cloud Monitoring incidents and Security Command Center notifications."""

import json
from datetime import UTC, datetime

import pytest

from handlers.formats import FormatError
from handlers.formats.alerts import parse_monitoring_incident, parse_scc_notification
from responder.model import ItemError, Severity, Sighting

KEYS = ["client_ip", "attacker"]


def test_monitoring_incident_with_address_labels(data):
    inc = parse_monitoring_incident(data("monitoring_incident_ip_label.json"), KEYS)
    assert (inc.state, inc.incident_id, inc.policy_name, inc.is_test) == (
        "open", "0.fixture1", "ray-dashboard-abuse", False)
    assert inc.started_at == datetime(2025, 1, 1, tzinfo=UTC) and inc.ended_at is None
    assert inc.result.sightings == (Sighting("192.0.2.110", reason="ray-dashboard-abuse"),)
    assert inc.result.errors == (ItemError("metadata.user_labels.attacker: not-an-address",
                                           "not an IP address or CIDR range"),)
    assert inc.result.notes == ("address=client_ip@metric.labels", "address=client_ip@resource.labels",
                                "address=attacker@metadata.user_labels")


def test_monitoring_test_notification(data):
    inc = parse_monitoring_incident(data("monitoring_test_notification.json"), KEYS)
    assert inc.is_test and inc.result.sightings == ()
    assert inc.result.notes == ("test-notification",)


def test_monitoring_test_summary_only():
    inc = parse_monitoring_incident({"incident": {"summary": "Test notification", "state": "open"}}, KEYS)
    assert inc.is_test


def test_monitoring_policy_named_test_is_not_a_test_notification(sample):
    inc = parse_monitoring_incident(json.loads(sample("monitoring_alert_v1_2_open_cloudforet.json")), KEYS)
    assert not inc.is_test
    assert (inc.state, inc.incident_id, inc.policy_name) == (
        "open", "0.mtdi83m6w8ao", "choonho-server-cpu-alert-policy-test")
    assert inc.result.sightings == () and inc.result.notes == ("no-address",)


def test_monitoring_closed_sample(sample):
    inc = parse_monitoring_incident(sample("monitoring_alert_v1_2_closed_cloudforet.json"), KEYS)
    assert (inc.state, inc.incident_id, inc.version) == ("closed", "0.mteuirnn0v0k", "1.2")
    assert inc.ended_at == datetime.fromtimestamp(1675398434, UTC)


def test_monitoring_pubsub_sample(sample):
    inc = parse_monitoring_incident(sample("monitoring_alert_v1_2_pubsub_data_decoded_gcp_forwarding.json"), KEYS)
    assert (inc.state, inc.incident_id, inc.is_test) == ("closed", "", False)


@pytest.mark.parametrize("bad", [b"[]", b"{}", b"not json", {"incident": 3}])
def test_monitoring_malformed_raises(bad):
    with pytest.raises(FormatError):
        parse_monitoring_incident(bad, KEYS)


# ---------------------------------------------------------------- SCC


def test_scc_fixture(data):
    f = parse_scc_notification(data("scc_indicator_connections.json"))
    assert (f.category, f.severity, f.state, f.mute, f.finding_class) == (
        "Execution: Cryptocurrency Mining Combined Detection", Severity.CRITICAL, "ACTIVE", "UNMUTED", "THREAT")
    assert f.event_time == datetime(2025, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
    assert f.notification_config == "organizations/1/notificationConfigs/ml-responder"
    reason = f.category
    assert f.result.sightings == (
        Sighting("192.0.2.120", severity=Severity.CRITICAL, reason=reason),
        Sighting("192.0.2.121", severity=Severity.CRITICAL, reason=reason),
        Sighting("192.0.2.122", severity=Severity.CRITICAL, reason=reason),  # INGRESS -> source
        Sighting("8.8.8.8", severity=Severity.CRITICAL, reason=reason),  # no direction, one global side
    )
    assert [e.item for e in f.result.errors] == ["connections[3]"]
    assert f.result.notes == ("address@indicator.ipAddresses", "address@connections")


def test_scc_brute_force_sample(sample):
    f = parse_scc_notification(sample("scc_notification_ssh_brute_force_sourceip_sra.json"))
    assert (f.category, f.severity, f.state, f.mute) == ("Brute Force: SSH", Severity.HIGH, "ACTIVE", "UNDEFINED")
    assert f.event_time == datetime(1970, 1, 1, tzinfo=UTC)
    assert f.result.sightings == (Sighting("192.0.2.100", severity=Severity.HIGH, reason="Brute Force: SSH"),)
    assert f.result.notes == ("address@sourceProperties.properties.attempts",)


def test_scc_c2_sample_without_address(sample):
    f = parse_scc_notification(sample("scc_notification_c2_bad_ip_sra.json"))
    assert (f.category, f.severity, f.state) == ("C2: Bad IP", None, "ACTIVE")
    assert f.result.sightings == () and f.result.notes == ("no-address",)


def test_scc_placeholder_ips_sample(sample):
    f = parse_scc_notification(sample("scc_finding_malware_bad_ip_ipconnection_placeholder_ips_sra_filter_test.json.txt"))
    assert (f.category, f.severity) == ("Malware: Bad IP", Severity.HIGH)  # from detectionPriority
    assert f.result.sightings == ()
    assert [e.item for e in f.result.errors] == ["sourceProperties.properties.ipConnection"]


def test_scc_bare_finding_with_legacy_ip_list():
    f = parse_scc_notification({"category": "Malware: Bad IP", "sourceProperties": {
        "properties": {"ip": ["52.8.47.33"]}}})
    assert [s.value for s in f.result.sightings] == ["52.8.47.33"]


def test_scc_etd_log_is_not_a_finding(sample):
    with pytest.raises(FormatError):
        parse_scc_notification(sample("etd_threat_detection_log_bad_ip_properties_ip_sra_2019.json"))
