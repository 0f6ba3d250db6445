"""Names, permissions and log filters of the responder's resources.

deploy.sh derives every name from `[deploy].topic_prefix` and the policy
settings of config/responder.toml; this module derives them the same way
from the same file, so the Pulumi component and deploy.sh create the same
resources. tests/iac checks both against `deploy.sh --dry-run`, so a rename
on one side fails the tests until the other side follows.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RULE_PRIORITY = 2147483647
MAX_RULE_PRIORITY = 2147483646  # the highest priority an ordinary rule may take

# The custom role of the functions' identity (docs/DEPLOY.md, "Permissions").
GLOBAL_ROLE_PERMISSIONS = (
    "compute.securityPolicies.get",
    "compute.securityPolicies.update",
    "compute.securityPolicies.setLabels",
    "compute.globalOperations.get",
    "logging.logEntries.list",  # the cleanup reads its own trail to name the ranges of a wipe
)
# Regional policies: Google's permissions reference lists no
# compute.regionSecurityPolicies.setLabels (iam roles create would refuse it);
# regionSecurityPolicies.setLabels is authorised by ...update. No
# logging.logEntries.create: the functions log to stdout, which Cloud Run
# ingests without any permission of theirs.
REGIONAL_ROLE_PERMISSIONS = (
    "compute.regionSecurityPolicies.get",
    "compute.regionSecurityPolicies.update",
    "compute.regionOperations.get",
    "logging.logEntries.list",
)
# `addressGroups: true` (deploy.sh --with-address-groups; README "Address
# groups"): manage the responder's groups, reference them from rules
# (...use), poll their operations. Global policies only.
ADDRESS_GROUP_PERMISSIONS = (
    "networksecurity.addressGroups.create",
    "networksecurity.addressGroups.delete",
    "networksecurity.addressGroups.get",
    "networksecurity.addressGroups.list",
    "networksecurity.addressGroups.update",
    "networksecurity.addressGroups.use",
    "networksecurity.operations.get",
)
ROLE_TITLE = "Cloud Armor responder"
ROLE_DESCRIPTION = "Read and update one Cloud Armor policy's rules and labels; wait on operations."

# The APIs deploy.sh enables. Monitoring is enabled for deploy.sh's health
# metrics, dashboard and alert policies, which the component does not
# create (README, "Observability"); enabling it costs nothing.
SERVICES = (
    "iam.googleapis.com",
    "cloudfunctions.googleapis.com",
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
    "eventarc.googleapis.com",
    "pubsub.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
)

# The API address groups need (deploy.sh --with-address-groups enables it).
ADDRESS_GROUP_SERVICES = ("networksecurity.googleapis.com",)

LABELS = {"app": "cloud-armor-responder"}
CLEANUP_MESSAGE = '{"action":"cleanup"}'


def role_permissions(policy_region: str, address_groups: bool = False) -> tuple[str, ...]:
    """The custom role's permissions for a global ("") or regional policy,
    with the address-group permissions when ``address_groups``."""
    base = REGIONAL_ROLE_PERMISSIONS if policy_region else GLOBAL_ROLE_PERMISSIONS
    return base + ADDRESS_GROUP_PERMISSIONS if address_groups else base


def services(address_groups: bool = False) -> tuple[str, ...]:
    """The APIs to enable, with the Network Security API when ``address_groups``."""
    return SERVICES + ADDRESS_GROUP_SERVICES if address_groups else SERVICES


@dataclass(frozen=True)
class Function:
    name: str
    entry_point: str
    topic: str


@dataclass(frozen=True)
class Names:
    """Every name deploy.sh gives a resource, for one topic prefix."""

    prefix: str

    @property
    def runtime_sa_id(self) -> str:
        return f"{self.prefix}-responder"

    @property
    def trigger_sa_id(self) -> str:
        return f"{self.prefix}-trigger"

    @property
    def role_id(self) -> str:
        return f"{self.prefix.replace('-', '_')}_responder"

    @property
    def topic_feed(self) -> str:
        return f"{self.prefix}-threat-feed"

    @property
    def topic_log(self) -> str:
        return f"{self.prefix}-log-sink"

    @property
    def topic_alerts(self) -> str:
        return f"{self.prefix}-alerts"

    @property
    def topic_manual(self) -> str:
        return f"{self.prefix}-manual"

    @property
    def topic_cleanup(self) -> str:
        return f"{self.prefix}-cleanup"

    @property
    def topic_dead(self) -> str:
        return f"{self.prefix}-dead-letter"

    @property
    def topics(self) -> tuple[str, ...]:
        return (
            self.topic_feed,
            self.topic_log,
            self.topic_alerts,
            self.topic_manual,
            self.topic_cleanup,
            self.topic_dead,
        )

    @property
    def dead_letter_subscription(self) -> str:
        return f"{self.prefix}-dead-letter-hold"

    @property
    def scheduler_job(self) -> str:
        return f"{self.prefix}-cleanup"

    @property
    def sink_lb(self) -> str:
        return f"{self.prefix}-lb-armor"

    @property
    def sink_ids(self) -> str:
        return f"{self.prefix}-ids-threats"

    @property
    def sink_fw(self) -> str:
        return f"{self.prefix}-firewall-denies"

    @property
    def functions(self) -> tuple[Function, ...]:
        return (
            Function(f"{self.prefix}-threat-feed", "on_threat_feed", self.topic_feed),
            Function(f"{self.prefix}-log-sink", "on_log_sink", self.topic_log),
            Function(f"{self.prefix}-alert", "on_alert", self.topic_alerts),
            Function(f"{self.prefix}-manual", "on_manual", self.topic_manual),
            Function(f"{self.prefix}-cleanup", "on_cleanup", self.topic_cleanup),
        )

    def service_account_email(self, account_id: str, project: str) -> str:
        return f"{account_id}@{project}.iam.gserviceaccount.com"


def lb_filter(policy: str, policy_region: str, probe_regex: str) -> str:
    """Cloud Armor denies by every rule but the default one (which floods
    when it denies): operator rules for the detectors, and the band's own,
    which extend the bans they hit (bans that follow traffic); plus 4xx
    answers to ML control-plane probe paths that Cloud Armor let through."""
    resource = "http_external_regional_lb_rule" if policy_region else "http_load_balancer"
    prio = "jsonPayload.enforcedSecurityPolicy.priority"
    return (
        f'resource.type="{resource}" AND jsonPayload.enforcedSecurityPolicy.name="{policy}" AND '
        f'((jsonPayload.enforcedSecurityPolicy.outcome="DENY" AND {prio}<{DEFAULT_RULE_PRIORITY}) OR '
        f'(NOT jsonPayload.enforcedSecurityPolicy.outcome="DENY" AND httpRequest.status>=400 AND '
        f'httpRequest.status<500 AND httpRequest.requestUrl=~"{probe_regex}"))'
    )


IDS_FILTER = 'logName:"ids.googleapis.com%2Fthreat" AND jsonPayload.alert_severity=("CRITICAL" OR "HIGH" OR "MEDIUM")'


def fw_filter(ports: tuple[int, ...]) -> str:
    joined = " OR ".join(str(port) for port in ports)
    return (
        'logName:"compute.googleapis.com%2Ffirewall" AND jsonPayload.disposition="DENIED" AND '
        f'jsonPayload.rule_details.direction="INGRESS" AND jsonPayload.connection.dest_port=({joined})'
    )


SINK_DESCRIPTIONS = {
    "lb": "Cloud Armor denies (the band's own extend their bans), and 4xx answers to ML probe paths",
    "ids": "Cloud IDS threats, medium severity and above",
    "fw": "VPC firewall: denied ingress to ML control-plane ports",
}
