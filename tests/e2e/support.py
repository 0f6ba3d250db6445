"""Helpers for the log-sink, alert, feed-format and fuzz end-to-end tests:
a harness on a test configuration, and LogEntry / notification builders
written from Google's documented schemas."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from localapi import LocalCloudArmor
from tests.e2e.conftest import Harness, _harness

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "e2e"
BASE_CONFIG = DATA / "responder-e2e.toml"
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"


def sample(name: str) -> bytes:
    """A real published sample from the shared samples folder beside the repository (skip when absent)."""
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"shared samples not available ({path})")
    return path.read_bytes()


def configured(
    local_api: LocalCloudArmor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, extra: str = "", region: str | None = None
) -> Harness:
    """The harness on tests/data/e2e/responder-e2e.toml plus ``extra`` TOML."""
    config = tmp_path / "responder.toml"
    config.write_text(BASE_CONFIG.read_text() + "\n" + extra)
    monkeypatch.setenv("RESPONDER_CONFIG", str(config))
    return _harness(local_api, monkeypatch, tmp_path, region)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def lb_entry(
    remote: str,
    *,
    url: str = "https://api.example.com/v1/predict",
    status: int = 200,
    outcome: str | None = None,
    exprs: list[str] | None = None,
    preview_outcome: str | None = None,
    preview_exprs: list[str] | None = None,
    when: datetime | None = None,
    regional: bool = False,
    policy: str = "ml-edge",
    priority: int = 3000,
    project: str = "p",
    region: str | None = None,
) -> dict[str, Any]:
    """An external Application Load Balancer request log entry
    (https://cloud.google.com/load-balancing/docs/https/https-logging-monitoring);
    ``policy``/``priority`` name the rule that decided ``outcome``, ``region``
    is the regional load balancer's ``resource.labels.region``."""
    payload: dict[str, Any] = {
        "@type": "type.googleapis.com/google.cloud.loadbalancing.type.LoadBalancerLogEntry",
        "statusDetails": "response_sent_by_backend",
    }
    if outcome is not None:
        enforced: dict[str, Any] = {"name": policy, "priority": priority, "configuredAction": outcome, "outcome": outcome}
        if exprs:
            enforced["preconfiguredExprIds"] = exprs
        payload["enforcedSecurityPolicy"] = enforced
        if outcome == "DENY":
            payload["statusDetails"] = "denied_by_security_policy"
    if preview_outcome is not None:
        payload["previewSecurityPolicy"] = {"name": "ml-edge", "priority": 3100, "configuredAction": preview_outcome,
                                            "outcome": preview_outcome, "preconfiguredExprIds": preview_exprs or []}
    log_name = (f"projects/{project}/logs/loadbalancing.googleapis.com%2Fexternal_regional_requests" if regional
                else f"projects/{project}/logs/requests")
    labels = {"project_id": project, "forwarding_rule_name": "fr", "url_map_name": "um"}
    if region is not None:
        labels["region"] = region
    return {
        "insertId": "1x2y3z",
        "jsonPayload": payload,
        "httpRequest": {"requestMethod": "GET", "requestUrl": url, "status": status, "remoteIp": remote,
                        "userAgent": "curl/8.4.0", "latency": "0.002s"},
        "resource": {"type": "http_external_regional_lb_rule" if regional else "http_load_balancer",
                     "labels": labels},
        "timestamp": stamp(when or datetime.now(tz=UTC)),
        "severity": "WARNING" if outcome == "DENY" else "INFO",
        "logName": log_name,
        "receiveTimestamp": stamp(when or datetime.now(tz=UTC)),
    }


def ids_entry(client: str, server: str, *, direction: str = "client-to-server", severity: str = "HIGH",
              when: datetime | None = None) -> dict[str, Any]:
    """A Cloud IDS threat log entry (https://cloud.google.com/intrusion-detection-system/docs/logging)."""
    return {
        "insertId": "ids1",
        "jsonPayload": {
            "name": "Apache Log4j Remote Code Execution Vulnerability", "threat_id": "91991",
            "alert_severity": severity, "type": "vulnerability", "category": "code-execution",
            "direction": direction, "source_ip_address": client, "destination_ip_address": server,
            "source_port": "51234", "destination_port": "8265", "ip_protocol": "tcp", "action": "alert",
            "alert_time": stamp(when or datetime.now(tz=UTC)), "repeat_count": "1",
        },
        "resource": {"type": "ids.googleapis.com/Endpoint",
                     "labels": {"resource_container": "projects/1", "location": "europe-west4-a", "id": "ids-1"}},
        "timestamp": stamp(when or datetime.now(tz=UTC)),
        "logName": "projects/p/logs/ids.googleapis.com%2Fthreat",
    }


def firewall_entry(src: str, *, when: datetime | None = None, disposition: str = "DENIED") -> dict[str, Any]:
    """A VPC firewall rules log entry (https://cloud.google.com/firewall/docs/firewall-rules-logging)."""
    return {
        "insertId": "fw1",
        "jsonPayload": {
            "connection": {"src_ip": src, "src_port": 40000, "dest_ip": "10.0.0.5", "dest_port": 22, "protocol": 6},
            "disposition": disposition,
            "rule_details": {"reference": "network:ml/firewall:deny-ssh", "direction": "INGRESS", "action": "DENY",
                             "priority": 1000},
            "instance": {"project_id": "p", "vm_name": "gpu-node-1", "zone": "europe-west4-a"},
        },
        "resource": {"type": "gce_subnetwork", "labels": {"project_id": "p", "subnetwork_name": "ml"}},
        "timestamp": stamp(when or datetime.now(tz=UTC)),
        "logName": "projects/p/logs/compute.googleapis.com%2Ffirewall",
    }


def incident(address: str | None, *, state: str = "open", key: str = "client_ip", place: str = "metric",
             incident_id: str = "0.abc123", policy: str = "ml-edge brute force") -> dict[str, Any]:
    """A Cloud Monitoring notification, schema 1.2
    (https://cloud.google.com/monitoring/support/notification-options#schema-pubsub)."""
    labels = {} if address is None else {key: address}
    inc: dict[str, Any] = {
        "incident_id": incident_id, "scoping_project_id": "p", "scoping_project_number": 12345,
        "url": "https://console.cloud.google.com/monitoring/alerting/incidents/0.abc123",
        "started_at": 1735689600, "ended_at": 1735690200 if state == "closed" else None, "state": state,
        "summary": "Login failures per client above threshold", "apigee_url": "", "observed_value": "31",
        "resource": {"type": "global", "labels": labels if place == "resource" else {"project_id": "p"}},
        "resource_type_display_name": "Global", "resource_id": "", "resource_display_name": "Global",
        "resource_name": "p Global",
        "metric": {"type": "logging.googleapis.com/user/login_failures", "displayName": "login failures",
                   "labels": labels if place == "metric" else {}},
        "metadata": {"system_labels": {}, "user_labels": labels if place == "user" else {}},
        "policy_name": policy, "policy_user_labels": {}, "documentation": {"content": "", "mime_type": "text/markdown"},
        "condition": {"name": "projects/p/alertPolicies/1/conditions/2", "displayName": "failures > 30"},
        "condition_name": "failures > 30", "threshold_value": "30",
    }
    return {"incident": inc, "version": "1.2"}


def scc_notification(ips: list[str], *, severity: str = "HIGH", state: str = "ACTIVE", category: str = "Malware: Bad IP",
                     mute: str | None = None) -> dict[str, Any]:
    """An SCC NotificationMessage with a Finding naming ``ips`` in
    ``indicator.ipAddresses`` (https://cloud.google.com/security-command-center/docs/reference/rest/v1/organizations.sources.findings)."""
    finding: dict[str, Any] = {
        "name": "organizations/1/sources/2/findings/abc", "parent": "organizations/1/sources/2",
        "resourceName": "//compute.googleapis.com/projects/p/zones/z/instances/gpu-node-1",
        "state": state, "category": category, "severity": severity, "findingClass": "THREAT",
        "indicator": {"ipAddresses": ips}, "eventTime": "2025-01-01T00:00:00Z", "createTime": "2025-01-01T00:00:01Z",
    }
    if mute is not None:
        finding["mute"] = mute
    return {"notificationConfigName": "organizations/1/notificationConfigs/car", "finding": finding,
            "resource": {"name": finding["resourceName"]}}


def records(h: Harness, change: str, message_id: str | None = None) -> list[dict[str, Any]]:
    return [r for r in h.audit if r["change"] == change and (message_id is None or r.get("message_id") == message_id)]


def api_built() -> bool:
    """Whether this process's runtime has built its compute client."""
    from handlers import runtime

    return runtime.current()._api is not None
