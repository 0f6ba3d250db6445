"""Log detector engine and the built-in detectors."""

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from handlers.formats import FormatError
from handlers.formats.logs import (
    Detector,
    DetectorError,
    Threshold,
    builtin_detectors,
    evaluate,
    evaluate_detailed,
    load_detectors,
)
from responder.model import ItemError, Severity, Sighting

BUILTIN = builtin_detectors()
ALL = [replace(d, enabled=True) for d in BUILTIN]


def entry(raw: bytes) -> dict:
    return json.loads(raw)


def lb(url="https://x.example/", remote="192.0.2.1", outcome=None, exprs=None, preview=None):
    payload = {}
    if outcome:
        payload["enforcedSecurityPolicy"] = {"outcome": outcome, "name": "p"}
        if exprs:
            payload["enforcedSecurityPolicy"]["preconfiguredExprIds"] = exprs
    if preview:
        payload["previewSecurityPolicy"] = {"outcome": preview, "preconfiguredExprIds": ["x"]}
    return {"resource": {"type": "http_load_balancer"}, "logName": "projects/p/logs/requests",
            "httpRequest": {"requestUrl": url, "remoteIp": remote, "status": 200},
            "jsonPayload": payload}


def test_builtin_names_and_defaults():
    assert [(d.name, d.enabled) for d in BUILTIN] == [
        ("cloud-armor-waf", True), ("cloud-armor-waf-preview", False),
        ("ml-control-plane-probe", True), ("cloud-ids-threat", True),
        ("vpc-firewall-denied", False)]


def test_waf_deny_ipv6_with_port(data):
    assert evaluate(entry(data("lb_waf_deny_ipv6.json")), BUILTIN) == [(
        "cloud-armor-waf",
        Sighting("2001:db8::60", ttl=timedelta(hours=6), severity=Severity.HIGH,
                 reason="waf owasp-crs-v030301-id942100-sqli"))]


def test_waf_ipv4_with_port():
    got = evaluate(lb(remote="192.0.2.1:5678", outcome="DENY", exprs=["sqli"]), BUILTIN)
    assert [(n, s.value) for n, s in got] == [("cloud-armor-waf", "192.0.2.1")]


def test_plain_deny_without_waf_expression_matches_nothing():
    assert evaluate(lb(outcome="DENY"), BUILTIN) == []


def test_preview_detector_disabled_by_default():
    e = lb(preview="DENY")
    assert evaluate(e, BUILTIN) == []
    assert [n for n, _ in evaluate(e, ALL)] == ["cloud-armor-waf-preview"]


def test_ml_probe_fixture(data):
    assert evaluate(entry(data("lb_ml_probe_ray_jobs.json")), BUILTIN) == [(
        "ml-control-plane-probe",
        Sighting("192.0.2.70", ttl=timedelta(hours=24), severity=Severity.HIGH,
                 reason="ml probe /api/jobs/"))]


@pytest.mark.parametrize("url", [
    "https://x/api/kernels", "https://x/api/contents/work", "https://x/ajax-api/2.0/mlflow/runs/search",
    "https://x/data/plugin/scalars/tags", "https://x/nodes?view=summary", "https://x/v2/repository/index",
    "https://x/pipeline/apis/v1beta1/runs", "https://x/models?url=http://evil/m.mar",
    "https://x/api/%6Bernels", "/logical/actors",
])
def test_ml_probe_paths_match(url):
    assert [n for n, _ in evaluate(lb(url=url), BUILTIN)] == ["ml-control-plane-probe"]


@pytest.mark.parametrize("url", ["https://x/", "https://x/models", "https://x/predictions/m",
                                 "https://x/v2/models/m/infer", "https://x/nodes"])
def test_ml_probe_ordinary_paths_do_not_match(url):
    assert evaluate(lb(url=url), BUILTIN) == []


def test_ml_probe_already_denied_is_not_reported():
    assert evaluate(lb(url="https://x/api/kernels", outcome="DENY"), BUILTIN) == []


def test_ids_server_to_client_takes_destination(data):
    assert evaluate(entry(data("ids_threat_server_to_client.json")), BUILTIN) == [(
        "cloud-ids-threat",
        Sighting("192.0.2.90", ttl=timedelta(hours=12), severity=Severity.HIGH,
                 reason="ids Suspicious download"))]


def test_ids_client_to_server_takes_source(data):
    e = entry(data("ids_threat_server_to_client.json"))
    e["jsonPayload"].update(direction="client-to-server", source_ip_address="192.0.2.91")
    assert [s.value for _, s in evaluate(e, BUILTIN)] == ["192.0.2.91"]


def test_ids_below_threshold_severity_ignored(data):
    e = entry(data("ids_threat_server_to_client.json"))
    e["jsonPayload"]["alert_severity"] = "LOW"
    assert evaluate(e, BUILTIN) == []


def test_ids_unknown_direction_is_error(data):
    e = entry(data("ids_threat_server_to_client.json"))
    e["jsonPayload"]["direction"] = "sideways"
    assert evaluate_detailed(e, BUILTIN) == ((), (ItemError(
        "cloud-ids-threat", "matched but no address at jsonPayload.direction='sideways'"),))


def test_firewall_denied_ingress(data):
    e = entry(data("firewall_denied_ingress.json"))
    assert evaluate(e, BUILTIN) == []  # disabled by default
    assert evaluate(e, ALL) == [("vpc-firewall-denied", Sighting(
        "192.0.2.100", ttl=timedelta(hours=1), severity=Severity.LOW,
        reason="firewall deny network:ml/firewall:deny-ssh"))]


def test_firewall_threshold_parsed():
    fw = next(d for d in BUILTIN if d.name == "vpc-firewall-denied")
    assert fw.threshold == Threshold(20, timedelta(minutes=10))


@pytest.mark.parametrize("name", [
    "lb_request_log_cloud_armor_allow_accept_sekoia.json",
    "lb_request_log_cloud_armor_deny_sekoia.json",
    "lb_request_log_cloud_armor_throttle_accept_ip_port_sekoia.json",
    "vpc_flow_log_flow_logs_gke_sekoia.json",
    "vpc_flow_log_flow_logs_gke2_sekoia.json",
    "etd_threat_detection_log_bad_ip_properties_ip_sra_2019.json",
])
def test_samples_match_no_detector(sample, name):
    assert evaluate_detailed(sample(name), ALL) == ((), ())


def test_deny_sample_matches_a_custom_deny_detector(sample):
    det = Detector.from_dict({"name": "any-deny", "address_field": "httpRequest.remoteIp",
                              "match": {"status": 403, "fields": [
                                  {"path": "jsonPayload.enforcedSecurityPolicy.outcome", "equals": "DENY"}]}})
    got = evaluate(sample("lb_request_log_cloud_armor_deny_sekoia.json"), [det])
    assert [(n, s.value) for n, s in got] == [("any-deny", "1.2.3.4")]


def test_throttle_sample_port_stripped_by_custom_detector(sample):
    det = Detector.from_dict({"name": "cgi", "address_field": "httpRequest.remoteIp",
                              "match": {"resource_type": "http_external_regional_lb_rule",
                                        "log_name_suffix": "%2Fexternal_regional_requests",
                                        "url_paths": ["/cgi-bin/"]}})
    got = evaluate(sample("lb_request_log_cloud_armor_throttle_accept_ip_port_sekoia.json"), [det])
    assert [s.value for _, s in got] == ["1.2.3.4"]


def test_legacy_etd_sample_without_resource_is_malformed(sample):
    with pytest.raises(FormatError, match="resource.type"):
        evaluate(sample("etd_log_bad_ip_legacy_sra.json"), BUILTIN)


@pytest.mark.parametrize("bad", [b"[]", b"3", b"{", {"logName": "x"}, {"resource": {"type": "x"}}])
def test_malformed_entries_raise(bad):
    with pytest.raises(FormatError):
        evaluate(bad, BUILTIN)


def test_address_list_gives_one_sighting_each():
    det = Detector.from_dict({"name": "etd", "address_field": "jsonPayload.properties.ip",
                              "match": {"log_name_regex": "threatdetection"}})
    e = {"resource": {"type": "threat_detector"}, "logName": "projects/p/logs/threatdetection.googleapis.com%2Fdetection",
         "jsonPayload": {"properties": {"ip": ["192.0.2.1", "nope", "192.0.2.2"]}}}
    d = evaluate_detailed(e, [det])
    assert [s.value for _, s in d.matches] == ["192.0.2.1", "192.0.2.2"]
    assert d.errors == (ItemError("etd", "jsonPayload.properties.ip: nope: not an IP address or CIDR range"),)


def test_gte_with_log_severity_names():
    det = Detector.from_dict({"name": "sev", "address_field": "a",
                              "match": {"fields": [{"path": "severity", "gte": "WARNING"}]}})
    base = {"resource": {"type": "t"}, "logName": "l", "a": "192.0.2.1"}
    assert det.matches({**base, "severity": "ERROR"})
    assert not det.matches({**base, "severity": "INFO"})


# ---------------------------------------------------------------- from_dict validation


@pytest.mark.parametrize("d, message", [
    ({"name": "Bad Name", "address_field": "a"}, "detector name"),
    ({"name": "x"}, "address_field: is required"),
    ({"name": "x", "address_field": "a", "colour": 1}, "colour: unknown key"),
    ({"name": "x", "address_field": "a", "ttl": "5w"}, "ttl: bad duration"),
    ({"name": "x", "address_field": "a", "severity": "urgent"}, "severity: unknown severity"),
    ({"name": "x", "address_field": "a", "threshold": {"hits": 0, "window": "5m"}}, "threshold.hits"),
    ({"name": "x", "address_field": "a", "threshold": {"hits": 2, "window": "soon"}}, "threshold.window"),
    ({"name": "x", "address_field": "a", "match": {"fields": [{"path": "p"}]}}, "match.fields[0]: needs exactly one"),
    ({"name": "x", "address_field": "a", "match": {"fields": [{"path": "p", "regex": "("}]}}, "match.fields[0].regex"),
    ({"name": "x", "address_field": "a", "match": {"url_paths": ["api"]}}, "match.url_paths[0]"),
    ({"name": "x", "address_field": "a", "match": {"url_paths": ["@nolist"]}}, "no signature list named 'nolist'"),
    ({"name": "x", "address_field": "a", "match": {"status": [999]}}, "match.status"),
    ({"name": "x", "address_field": "a", "match": {"logname": "x"}}, "match.logname: unknown key"),
    ({"name": "x", "address_field": {"by": "d"}}, "address_field"),
    ({"name": "x", "address_field": "a", "action": "block please"}, "action"),
])
def test_from_dict_errors_name_the_field(d, message):
    with pytest.raises(DetectorError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        Detector.from_dict(d)


def test_load_detectors_rejects_duplicates():
    text = '[[detector]]\nname = "a"\naddress_field = "x"\n[[detector]]\nname = "a"\naddress_field = "y"\n'
    with pytest.raises(DetectorError, match="duplicate name 'a'"):
        load_detectors(text)
