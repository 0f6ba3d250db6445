"""on_log_sink end to end: every shipped detector, thresholds, guards, the
real load-balancer samples, and the promise that entries which change
nothing never build the compute client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.settings import ConfigError
from handlers import log_sink, runtime
from localapi import LocalCloudArmor
from responder.codec import decode
from tests.e2e.conftest import Harness, expiry_word
from tests.e2e.support import (
    ROOT,
    api_built,
    configured,
    firewall_entry,
    ids_entry,
    lb_entry,
    records,
    sample,
)

ATTACKER = "185.220.101.34"
NET = f"{ATTACKER}/32"

DETECTORS_ON = """
[detectors]
enable = ["cloud-armor-waf-preview", "vpc-firewall-denied"]
"""


@pytest.fixture
def logs(local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Harness:
    """Entry points with every shipped detector enabled (preview and VPC
    firewall are off in the default configuration)."""
    return configured(local_api, monkeypatch, tmp_path, DETECTORS_ON)


def sources_of(h: Harness) -> dict[str, str]:
    out = {}
    for rule in h.band_rules():
        word = next(w for w in rule["description"].split() if w.startswith("s="))[2:]
        for net in rule["match"]["config"]["srcIpRanges"]:
            out[net] = word
    return out


def test_waf_deny_blocks_the_client_for_the_detectors_ttl(functions: Harness) -> None:
    start = functions.clock()
    entry = lb_entry(f"{ATTACKER}:51234", outcome="DENY", exprs=["owasp-crs-v030301-id942100-sqli"], status=403)
    assert 200 == functions.publish("on_log_sink", entry)
    assert {NET: expiry_word(start + timedelta(hours=6))} == functions.blocked()  # detector ttl = 6h
    assert {NET: "cloud-armor-waf"} == sources_of(functions)
    rule = functions.band_rules()[0]
    assert "deny(403)" == rule["action"]
    added = records(functions, "added")
    assert added and "cloud-armor-waf" in json.dumps(added)


def test_redelivered_log_entry_computes_the_same_expiry_and_changes_nothing(functions: Harness) -> None:
    entry = lb_entry(ATTACKER, outcome="DENY", exprs=["xss"], status=403)
    published = functions.clock()
    assert 200 == functions.publish("on_log_sink", entry, message_id="log-1")
    band = functions.band_rules()
    writes = len(functions.mutations())
    functions.clock.advance(timedelta(minutes=20))
    assert 200 == functions.publish("on_log_sink", entry, message_id="log-1", publish_time=published)
    assert band == functions.band_rules()
    assert writes == len(functions.mutations())


def test_plain_address_rule_denial_does_not_retrigger(functions: Harness) -> None:
    # A denial by an address rule (e.g. the band's own) has no preconfiguredExprIds.
    assert 200 == functions.publish("on_log_sink", lb_entry(ATTACKER, outcome="DENY", status=403))
    assert [] == functions.band_rules()
    assert 1 == len(records(functions, "unchanged"))


def test_waf_preview_match_blocks_only_when_enabled(functions: Harness, local_api: LocalCloudArmor,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    entry = lb_entry(ATTACKER, outcome="ACCEPT", preview_outcome="DENY", preview_exprs=["sqli-v33-stable"])
    assert 200 == functions.publish("on_log_sink", entry)
    assert [] == functions.band_rules()  # off in the default configuration
    assert not api_built()


def test_waf_preview_match_with_the_detector_enabled(logs: Harness) -> None:
    start = logs.clock()
    entry = lb_entry(ATTACKER, outcome="ACCEPT", preview_outcome="DENY", preview_exprs=["sqli-v33-stable"])
    assert 200 == logs.publish("on_log_sink", entry)
    assert {NET: expiry_word(start + timedelta(hours=1))} == logs.blocked()
    assert {NET: "waf-preview"} == sources_of(logs)  # mapped in [source_ids]


@pytest.mark.parametrize("url", [
    "http://34.90.1.2:8265/api/jobs/",                       # Ray Jobs API
    "http://34.90.1.2:8265/api/cluster_status",               # Ray dashboard
    "http://34.90.1.2:8265/nodes?view=summary",               # Ray dashboard
    "https://ml.example.com/api/kernels",                     # Jupyter
    "https://ml.example.com/api/contents/secret.ipynb",       # Jupyter
    "https://ml.example.com/api/2.0/mlflow/experiments/list", # MLflow
    "https://ml.example.com/ajax-api/2.0/mlflow/runs/search",  # MLflow UI API
    "https://ml.example.com/data/plugin/scalars/tags",       # TensorBoard
    "http://34.90.1.2:8081/models?url=https://evil.example/x.mar",  # TorchServe management
    "http://34.90.1.2:8000/v2/repository/models/resnet/load",       # Triton model repository
    "https://ml.example.com/pipeline/apis/v2beta1/runs",      # Kubeflow Pipelines
    "https://ml.example.com/%61pi/kernels",                   # percent-encoded
])
def test_ml_control_plane_probe_blocks_the_prober(functions: Harness, url: str) -> None:
    start = functions.clock()
    assert 200 == functions.publish("on_log_sink", lb_entry(ATTACKER, url=url, status=404))
    assert {NET: expiry_word(start + timedelta(hours=24))} == functions.blocked()
    assert {NET: "ml-probe"} == sources_of(functions)


def test_ordinary_inference_request_changes_nothing_and_builds_no_client(functions: Harness) -> None:
    functions.server.requests.clear()
    assert 200 == functions.publish("on_log_sink", lb_entry(ATTACKER, url="https://ml.example.com/v1/models/m:predict"),
                                    message_id="quiet-1")
    assert [] == functions.band_rules()
    assert ["quiet-1"] == [r["message_id"] for r in records(functions, "unchanged")]
    assert not api_built()
    assert [] == functions.server.requests


def test_probe_already_denied_by_cloud_armor_is_left_to_the_waf_detector(functions: Harness) -> None:
    assert 200 == functions.publish("on_log_sink", lb_entry(ATTACKER, url="https://x/api/kernels", outcome="DENY", status=403))
    assert [] == functions.band_rules()


@pytest.mark.parametrize("severity, blocks", [("CRITICAL", True), ("HIGH", True), ("MEDIUM", True),
                                              ("LOW", False), ("INFORMATIONAL", False)])
def test_cloud_ids_threat_at_or_above_medium_blocks_the_external_side(functions: Harness, severity: str, blocks: bool) -> None:
    start = functions.clock()
    # client-to-server: the client (source) attacked the cluster's server.
    assert 200 == functions.publish("on_log_sink", ids_entry(ATTACKER, "10.0.0.7", severity=severity))
    expected = {NET: expiry_word(start + timedelta(hours=12))} if blocks else {}
    assert expected == functions.blocked()
    if not blocks:
        assert not api_built()


def test_cloud_ids_server_to_client_blocks_the_remote_server(functions: Harness) -> None:
    # server-to-client: a cluster node (client) fetched a threat from the remote server.
    assert 200 == functions.publish("on_log_sink", ids_entry("10.0.0.7", "91.92.109.43", direction="server-to-client"))
    assert ["91.92.109.43/32"] == list(functions.blocked())
    assert {"91.92.109.43/32": "cloud-ids-threat"} == sources_of(functions)


def test_cloud_ids_with_an_unknown_direction_is_rejected(functions: Harness) -> None:
    assert 200 == functions.publish("on_log_sink", ids_entry(ATTACKER, "10.0.0.7", direction="sideways"), message_id="ids-x")
    assert [] == functions.band_rules()
    rejected = records(functions, "rejected")
    assert ["ids-x"] == [r["message_id"] for r in rejected]
    assert "no address" in rejected[0]["error"]


def test_vpc_firewall_denied_is_off_by_default(functions: Harness) -> None:
    for i in range(25):
        assert 200 == functions.publish("on_log_sink", firewall_entry(ATTACKER, when=functions.clock() + timedelta(seconds=i)))
    assert [] == functions.band_rules()
    assert not api_built()


def test_vpc_firewall_denied_blocks_after_its_threshold(logs: Harness) -> None:
    start = logs.clock()
    for i in range(19):  # threshold = {hits = 20, window = "10m"}
        assert 200 == logs.publish("on_log_sink", firewall_entry(ATTACKER, when=start + timedelta(seconds=10 * i)))
    assert [] == logs.band_rules()
    assert not api_built()
    assert 19 == len([r for r in records(logs, "unchanged") if r.get("reason") == "threshold"])
    assert 200 == logs.publish("on_log_sink", firewall_entry(ATTACKER, when=start + timedelta(seconds=190)))
    assert {NET: expiry_word(start + timedelta(hours=1))} == logs.blocked()
    assert {NET: "vpc-fw-denied"} == sources_of(logs)


def test_threshold_hits_outside_the_window_do_not_count(logs: Harness) -> None:
    start = logs.clock()
    # 19 hits, then 11 minutes later one more: the window is 10 minutes.
    for i in range(19):
        logs.publish("on_log_sink", firewall_entry(ATTACKER, when=start + timedelta(seconds=i)))
    assert 200 == logs.publish("on_log_sink", firewall_entry(ATTACKER, when=start + timedelta(minutes=11)))
    assert [] == logs.band_rules()
    # 19 more within the window of the last one: 20 in the window.
    for i in range(19):
        logs.publish("on_log_sink", firewall_entry(ATTACKER, when=start + timedelta(minutes=11, seconds=i + 1)))
    assert [NET] == list(logs.blocked())


def test_threshold_counts_addresses_apart_and_redelivery_once(logs: Harness) -> None:
    start = logs.clock()
    for i in range(18):
        logs.publish("on_log_sink", firewall_entry(ATTACKER, when=start + timedelta(seconds=i)))
        logs.publish("on_log_sink", firewall_entry("91.92.109.43", when=start + timedelta(seconds=i)))
    # ATTACKER's 19th hit, delivered three times: counted once.
    for _ in range(3):
        logs.publish("on_log_sink", firewall_entry(ATTACKER, when=start + timedelta(seconds=30)), message_id="same-id")
    assert [] == logs.band_rules()
    for i in (19, 20):
        logs.publish("on_log_sink", firewall_entry("91.92.109.43", when=start + timedelta(seconds=30 + i)))
    assert ["91.92.109.43/32"] == list(logs.blocked())


def test_hit_counter_is_bounded_least_recently_used_first() -> None:
    counter = log_sink.HitCounter(max_keys=1000)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(5000):
        counter.hit(("d", i), t0, 3, timedelta(minutes=5), f"m{i}")
    assert 1000 == len(counter)
    # the oldest keys went first: key 0 starts again from one hit
    assert 1 == counter.hit(("d", 0), t0, 3, timedelta(minutes=5), "again")
    assert 2 == counter.hit(("d", 4999), t0, 3, timedelta(minutes=5), "again")
    # per key, at most `hits` hits are kept
    for i in range(100):
        assert min(i + 1, 3) == counter.hit(("d", "busy"), t0 + timedelta(seconds=i), 3, timedelta(minutes=5), f"b{i}")


def test_hit_counter_window_slides() -> None:
    counter = log_sink.HitCounter()
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    w = timedelta(minutes=5)
    assert 1 == counter.hit("k", t0, 3, w, "a")
    assert 2 == counter.hit("k", t0 + timedelta(minutes=4), 3, w, "b")
    assert 2 == counter.hit("k", t0 + timedelta(minutes=6), 3, w, "c")  # "a" left the window
    assert 2 == counter.hit("k", t0 + timedelta(minutes=6), 3, w, "c")  # redelivery: not counted
    assert 3 == counter.hit("k", t0 + timedelta(minutes=7), 3, w, "d")


@pytest.mark.parametrize("remote, widened", [
    ("2a0e:1c80:7:1::5", "2a0e:1c80:7:1::/64"),
    ("[2a0e:1c80:7:1::5]:443", "2a0e:1c80:7:1::/64"),
    ("2a0e:1c80:7:1:aaaa:bbbb:cccc:dddd", "2a0e:1c80:7:1::/64"),
])
def test_ipv6_client_is_widened_to_its_64(functions: Harness, remote: str, widened: str) -> None:
    assert 200 == functions.publish("on_log_sink", lb_entry(remote, outcome="DENY", exprs=["sqli"], status=403))
    assert [widened] == list(functions.blocked())


def test_ipv4_mapped_client_is_blocked_as_ipv4(functions: Harness) -> None:
    assert 200 == functions.publish("on_log_sink", lb_entry(f"::ffff:{ATTACKER}", outcome="DENY", exprs=["sqli"], status=403))
    assert [NET] == list(functions.blocked())


@pytest.mark.parametrize("remote", ["130.211.0.5", "35.191.8.1", "10.1.2.3", "192.168.0.9:80", "fc00::1", "127.0.0.1"])
def test_allowlisted_and_private_clients_are_never_blocked(functions: Harness, remote: str) -> None:
    assert 200 == functions.publish("on_log_sink", lb_entry(remote, outcome="DENY", exprs=["sqli"], status=403), message_id="g-1")
    assert [] == functions.band_rules()
    refused = records(functions, "refused", "g-1")
    assert 1 == len(refused)
    assert not api_built()


@pytest.mark.parametrize("data, complaint", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps({"logName": "projects/p/logs/requests"}).encode(), "resource.type"),
    (json.dumps({"resource": {"type": "http_load_balancer"}}).encode(), "logName"),
    (b"", "log entry"),
])
def test_malformed_log_entry_is_rejected_once(functions: Harness, data: bytes, complaint: str) -> None:
    assert 200 == functions.publish("on_log_sink", data, message_id="bad-log")
    rejected = records(functions, "rejected")
    assert ["bad-log"] == [r["message_id"] for r in rejected]
    assert complaint in rejected[0]["error"]
    assert [] == functions.band_rules()
    assert not api_built()


@pytest.mark.parametrize("name", [
    "lb_request_log_cloud_armor_allow_accept_sekoia.json",
    "lb_request_log_cloud_armor_deny_sekoia.json",  # address-rule denial: no WAF expression ids
    "lb_request_log_cloud_armor_throttle_accept_ip_port_sekoia.json",
    "vpc_flow_log_flow_logs_gke_sekoia.json",
    "etd_threat_detection_log_bad_ip_properties_ip_sra_2019.json",
])
def test_real_log_samples_match_no_detector_and_change_nothing(functions: Harness, name: str) -> None:
    assert 200 == functions.publish("on_log_sink", sample(name), message_id="s-1")
    assert [] == functions.band_rules()
    assert ["s-1"] == [r["message_id"] for r in records(functions, "unchanged")]
    assert not api_built()


def test_real_waf_denial_sample_made_a_waf_hit_blocks_its_client(functions: Harness) -> None:
    # The published denial, as it reads when a preconfigured WAF rule denied it.
    entry = json.loads(sample("lb_request_log_cloud_armor_deny_sekoia.json"))
    entry["jsonPayload"]["enforcedSecurityPolicy"]["preconfiguredExprIds"] = ["owasp-crs-v030001-id942110-sqli"]
    assert 200 == functions.publish("on_log_sink", entry)
    assert ["1.2.3.4/32"] == list(functions.blocked())


def test_real_throttle_sample_on_a_probe_path_blocks_the_address_without_its_port(functions: Harness) -> None:
    entry = json.loads(sample("lb_request_log_cloud_armor_throttle_accept_ip_port_sekoia.json"))
    entry["httpRequest"]["requestUrl"] = "http://5.6.7.8:80/api/jobs/"
    assert 200 == functions.publish("on_log_sink", entry)
    assert ["1.2.3.4/32"] == list(functions.blocked())


def test_bad_detector_file_stops_the_functions_at_start_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "detectors.toml"
    bad.write_text('[[detector]]\nname = "x"\naddress_field = "httpRequest.remoteIp"\nttl = "soon"\n')
    config = tmp_path / "responder.toml"
    config.write_text((ROOT / "tests/data/e2e/responder-e2e.toml").read_text() + f'\n[detectors]\nfile = "{bad}"\n')
    with pytest.raises(ConfigError, match=r"detectors.file \(detectors.toml\): detector 'x': ttl"):
        runtime.configure({"RESPONDER_CONFIG": str(config)})
    long_name = tmp_path / "long.toml"
    long_name.write_text('[[detector]]\nname = "a-very-long-detector-name"\naddress_field = "httpRequest.remoteIp"\n')
    config.write_text((ROOT / "tests/data/e2e/responder-e2e.toml").read_text() + f'\n[detectors]\nfile = "{long_name}"\n')
    with pytest.raises(ConfigError, match="a-very-long-detector-name'.*source_ids"):
        runtime.configure({"RESPONDER_CONFIG": str(config)})
    config.write_text((ROOT / "tests/data/e2e/responder-e2e.toml").read_text() + '\n[detectors]\nenable = ["nope"]\n')
    with pytest.raises(ConfigError, match="detectors.enable: no detector named 'nope'"):
        runtime.configure({"RESPONDER_CONFIG": str(config)})


def test_unmatched_entry_never_imports_the_compute_client(local_api: LocalCloudArmor, tmp_path: Path) -> None:
    """In a fresh process: main.py loaded, an unmatched entry, a malformed
    one and a below-threshold one delivered; google.cloud.compute_v1 is
    never imported."""
    script = textwrap.dedent(f"""
        import json, sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'scripts')!r}]
        import eventarc, functions_framework
        client = functions_framework.create_app("on_log_sink", {str(ROOT / 'main.py')!r}, "cloudevent").test_client()
        from tests.e2e.support import lb_entry, firewall_entry
        for data in (lb_entry("185.220.101.34"), b"{{not json", firewall_entry("185.220.101.34")):
            payload = data if isinstance(data, bytes) else json.dumps(data).encode()
            headers, body = eventarc.binary_request(payload)
            assert client.post("/", headers=headers, data=body).status_code == 200
        print("compute_v1" if "google.cloud.compute_v1" in sys.modules else "clean")
    """)
    config = tmp_path / "responder.toml"
    config.write_text((ROOT / "tests/data/e2e/responder-e2e.toml").read_text() + DETECTORS_ON)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESPONDER_")}
    env.update(RESPONDER_CONFIG=str(config), RESPONDER_API_ENDPOINT=local_api.endpoint)
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert 0 == out.returncode, out.stderr[-2000:]
    assert "clean" == out.stdout.strip().splitlines()[-1]


def test_a_repeat_offender_is_blocked_twice_as_long_and_a_redelivery_changes_nothing(functions: Harness) -> None:
    entry = lb_entry(f"{ATTACKER}:40001", outcome="DENY", exprs=["owasp-crs-v030301-id942100-sqli"], status=403)
    first = functions.clock()
    assert 200 == functions.publish("on_log_sink", entry, message_id="waf-1")
    assert {NET: expiry_word(first + timedelta(hours=6))} == functions.blocked()  # detector ttl = 6h

    functions.clock.advance(timedelta(hours=1))
    second = functions.clock()
    assert 200 == functions.publish("on_log_sink", entry, message_id="waf-2")

    # the second sighting, in a later publish-time bucket, is a strike: 6h doubled
    assert {NET: expiry_word(second + timedelta(hours=12))} == functions.blocked()
    metas = sorted((decode("car1", r["description"]) for r in functions.band_rules()), key=lambda m: m.expiry)
    assert [0, 1] == [m.strikes for m in metas]  # the first rule stays until the compactor drops it
    bucket = datetime.fromtimestamp(second.timestamp() // 900 * 900, tz=UTC)
    assert bucket == metas[-1].struck
    assert " n=1-" in max(functions.band_rules(), key=lambda r: r["description"])["description"]

    band, writes = functions.band_rules(), len(functions.mutations())
    functions.clock.advance(timedelta(minutes=20))
    assert 200 == functions.publish("on_log_sink", entry, message_id="waf-2", publish_time=second)
    assert band == functions.band_rules()
    assert writes == len(functions.mutations())
    assert {NET: expiry_word(second + timedelta(hours=12))} == functions.blocked()


def test_cleanup_keeps_the_strike_record_when_it_compacts(functions: Harness) -> None:
    entry = lb_entry(ATTACKER, outcome="DENY", exprs=["xss"], status=403)
    assert 200 == functions.publish("on_log_sink", entry, message_id="waf-1")
    functions.clock.advance(timedelta(hours=1))
    second = functions.clock()
    assert 200 == functions.publish("on_log_sink", entry, message_id="waf-2")

    assert 200 == functions.publish("on_cleanup", {})

    rules = functions.band_rules()
    assert 1 == len(rules)
    meta = decode("car1", rules[0]["description"])
    assert (1, expiry_word(second + timedelta(hours=12))) == (meta.strikes, meta.expiry.strftime("%Y%m%d%H%M"))
