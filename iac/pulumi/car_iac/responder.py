"""The responder's own resources as one component: what deploy.sh creates.

Names, permissions and log filters come from car_iac.names, which derives
them from the same configuration file deploy.sh reads; tests/iac checks the
component against `deploy.sh --dry-run`.

Not covered (deploy.sh does these): the dead-letter policy on the Pub/Sub
subscriptions that Eventarc creates for each function's trigger (the
provider's function resource does not expose that subscription; deploy.sh's
step 7 sets it), the monitoring extras of
`--with-monitoring`, and attaching the policy to backend services.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_gcp as gcp

from car_iac import names as n
from car_iac.settings import DeploySettings

# What the functions need at run time (deploy.sh deploys the repository;
# this is the part of it that runs).
SOURCE_FILES = ("main.py", "requirements.txt")
SOURCE_DIRS = ("handlers", "responder", "config")


def source_archive(root: Path, responder_config: Path) -> pulumi.AssetArchive:
    """The functions' source: the runtime files of the repository, with the
    chosen configuration file as config/responder.toml."""
    assets: dict[str, pulumi.Asset | pulumi.Archive] = {}
    for name in SOURCE_FILES:
        assets[name] = pulumi.FileAsset(str(root / name))
    for folder in SOURCE_DIRS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                assets[path.relative_to(root).as_posix()] = pulumi.FileAsset(str(path))
    assets["config/responder.toml"] = pulumi.FileAsset(str(responder_config))
    return pulumi.AssetArchive(assets)


@dataclass(frozen=True)
class ResponderArgs:
    project: str
    policy_name: str
    policy_region: str
    band_start: int
    band_end: int
    deploy: DeploySettings
    source: pulumi.Archive
    address_groups: bool = False  # deploy.sh --with-address-groups


class Responder(pulumi.ComponentResource):
    """Topics, dead-letter topic and hold subscription, service accounts,
    custom role and bindings, the five functions, the cleanup schedule and
    the log sinks of the Cloud Armor responder; with ``address_groups``
    also the Network Security API and the role's address-group permissions."""

    def __init__(self, name: str, args: ResponderArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("car:responder:Responder", name, None, opts)
        names = n.Names(args.deploy.topic_prefix)
        project, region = args.project, args.deploy.region
        self.names = names
        child = pulumi.ResourceOptions(parent=self)

        services = [
            gcp.projects.Service(f"api-{api.split('.')[0]}", project=project, service=api, disable_on_destroy=False, opts=child)
            for api in n.services(args.address_groups)
        ]
        after_apis = pulumi.ResourceOptions(parent=self, depends_on=services)
        number = gcp.organizations.get_project_output(project_id=project, opts=pulumi.InvokeOutputOptions(parent=self)).number
        pubsub_agent = number.apply(lambda num: f"serviceAccount:service-{num}@gcp-sa-pubsub.iam.gserviceaccount.com")

        # Identities, the custom role and its bindings.
        self.runtime_sa = gcp.serviceaccount.Account(
            "runtime-sa", project=project, account_id=names.runtime_sa_id,
            display_name="Cloud Armor responder functions", opts=after_apis,
        )
        self.trigger_sa = gcp.serviceaccount.Account(
            "trigger-sa", project=project, account_id=names.trigger_sa_id,
            display_name="Cloud Armor responder Eventarc triggers", opts=after_apis,
        )
        self.role = gcp.projects.IAMCustomRole(
            "role", project=project, role_id=names.role_id, title=n.ROLE_TITLE,
            description=n.ROLE_DESCRIPTION, permissions=list(n.role_permissions(args.policy_region, args.address_groups)),
            stage="GA", opts=after_apis,
        )
        runtime_member = self.runtime_sa.email.apply(lambda e: f"serviceAccount:{e}")
        trigger_member = self.trigger_sa.email.apply(lambda e: f"serviceAccount:{e}")
        gcp.projects.IAMMember("runtime-role", project=project, role=self.role.name, member=runtime_member, opts=child)
        gcp.projects.IAMMember(
            "trigger-event-receiver", project=project, role="roles/eventarc.eventReceiver",
            member=trigger_member, opts=child,
        )
        gcp.serviceaccount.IAMMember(
            "trigger-token-creator", service_account_id=self.trigger_sa.name,
            role="roles/iam.serviceAccountTokenCreator", member=pubsub_agent, opts=child,
        )

        # Topics, and a subscription that holds dead letters.
        self.topics = {
            topic: gcp.pubsub.Topic(topic, project=project, name=topic, labels=dict(n.LABELS), opts=after_apis)
            for topic in names.topics
        }
        dead = self.topics[names.topic_dead]
        gcp.pubsub.Subscription(
            names.dead_letter_subscription, project=project, name=names.dead_letter_subscription,
            topic=dead.name, message_retention_duration="604800s", expiration_policy={"ttl": ""},
            labels=dict(n.LABELS), opts=child,
        )
        gcp.pubsub.TopicIAMMember(
            "dead-letter-publisher", project=project, topic=dead.name, role="roles/pubsub.publisher",
            member=pubsub_agent, opts=child,
        )

        # The five functions.
        bucket = gcp.storage.Bucket(
            "source-bucket", project=project, name=f"{project}-{names.prefix}-source", location=region.upper(),
            uniform_bucket_level_access=True, opts=after_apis,
        )
        source = gcp.storage.BucketObject("source", bucket=bucket.name, name="responder-source.zip", source=args.source, opts=child)
        env = {
            "RESPONDER_PROJECT": project,
            "RESPONDER_POLICY": args.policy_name,
            "RESPONDER_REGION": args.policy_region,
            "RESPONDER_BAND_START": str(args.band_start),
            "RESPONDER_BAND_END": str(args.band_end),
            "RESPONDER_FUNCTION_TIMEOUT": f"{args.deploy.timeout_seconds}s",
        }
        service_config: dict[str, object] = {
            "available_memory": args.deploy.memory,
            "max_instance_count": args.deploy.max_instances,
            "max_instance_request_concurrency": args.deploy.concurrency,
            "timeout_seconds": args.deploy.timeout_seconds,
            "ingress_settings": "ALLOW_INTERNAL_ONLY",
            "service_account_email": self.runtime_sa.email,
            "environment_variables": env,
        }
        if args.deploy.cpu:
            service_config["available_cpu"] = args.deploy.cpu
        self.functions: dict[str, gcp.cloudfunctionsv2.Function] = {}
        for fn in names.functions:
            function = gcp.cloudfunctionsv2.Function(
                fn.name, project=project, name=fn.name, location=region,
                build_config={
                    "runtime": args.deploy.runtime,
                    "entry_point": fn.entry_point,
                    "source": {"storage_source": {"bucket": bucket.name, "object": source.name}},
                },
                service_config=service_config,
                event_trigger={
                    "trigger_region": region,
                    "event_type": "google.cloud.pubsub.topic.v1.messagePublished",
                    "pubsub_topic": self.topics[fn.topic].id,
                    "retry_policy": "RETRY_POLICY_RETRY",
                    "service_account_email": self.trigger_sa.email,
                },
                opts=child,
            )
            gcp.cloudrunv2.ServiceIamMember(
                f"{fn.name}-invoker", project=project, location=region, name=function.name,
                role="roles/run.invoker", member=trigger_member, opts=child,
            )
            self.functions[fn.name] = function

        # The cleanup schedule.
        self.scheduler = gcp.cloudscheduler.Job(
            names.scheduler_job, project=project, region=region, name=names.scheduler_job,
            schedule=args.deploy.cleanup_schedule, time_zone="Etc/UTC",
            description="Cloud Armor responder: remove expired band rules",
            pubsub_target={
                "topic_name": self.topics[names.topic_cleanup].id,
                "data": base64.b64encode(n.CLEANUP_MESSAGE.encode()).decode(),
            },
            opts=after_apis,
        )

        # Log sinks to the log-sink topic, each writer allowed to publish.
        log_topic = self.topics[names.topic_log]
        filters = {
            names.sink_lb: (n.lb_filter(args.policy_name, args.policy_region,
                                        args.deploy.probe_path_regex), n.SINK_DESCRIPTIONS["lb"]),
            names.sink_ids: (n.IDS_FILTER, n.SINK_DESCRIPTIONS["ids"]),
            names.sink_fw: (n.fw_filter(args.deploy.firewall_ports), n.SINK_DESCRIPTIONS["fw"]),
        }
        self.sinks: dict[str, gcp.logging.ProjectSink] = {}
        for sink_name, (log_filter, description) in filters.items():
            sink = gcp.logging.ProjectSink(
                sink_name, project=project, name=sink_name,
                destination=f"pubsub.googleapis.com/projects/{project}/topics/{names.topic_log}",
                filter=log_filter, description=description, unique_writer_identity=True,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*services, log_topic]),
            )
            gcp.pubsub.TopicIAMMember(
                f"{sink_name}-publisher", project=project, topic=log_topic.name, role="roles/pubsub.publisher",
                member=sink.writer_identity, opts=child,
            )
            self.sinks[sink_name] = sink

        self.register_outputs({
            "runtime_service_account": self.runtime_sa.email,
            "topics": {name: topic.id for name, topic in self.topics.items()},
            "functions": {name: fn.name for name, fn in self.functions.items()},
        })
