"""The Pulumi program (iac/pulumi) under Pulumi's mocks, with no CLI and no
cloud: the policy declares no inline rule, every rule is its own resource and
none falls in the band, the default rule denies, and the responder component
creates what deploy.sh creates (checked against `deploy.sh --dry-run`)."""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pulumi")
pytest.importorskip("pulumi_gcp")

from pulumikit import PROJECT, PROJECT_NUMBER, Registered, run_program  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RULE = "gcp:compute/securityPolicyRule:SecurityPolicyRule"
POLICY = "gcp:compute/securityPolicy:SecurityPolicy"
COMPONENT = "car:responder:Responder"
RESPONDER_TOML = tomllib.loads((ROOT / "config" / "responder.toml").read_text())
BAND = (RESPONDER_TOML["band"]["start"], RESPONDER_TOML["band"]["end"])

TRUSTED = [f"203.0.113.{i * 16}/28" for i in range(12)]  # 12 ranges: two rules
OPERATOR_RULES = [
    {"name": "waf-sqli", "priority": 3000, "action": "deny(403)",
     "expression": "evaluatePreconfiguredWaf('sqli-v33-stable')", "description": "OWASP SQL injection"},
    {"priority": 19999, "action": "deny(404)", "srcIpRanges": ["192.0.2.0/24"], "preview": True},
    {"priority": 21000, "action": "allow", "srcIpRanges": ["198.51.100.0/24"]},
]


def of_type(resources: list[Registered], typ: str) -> list[Registered]:
    return [r for r in resources if r.type == typ]


def one(resources: list[Registered], typ: str, name: str) -> Registered:
    found = [r for r in resources if r.type == typ and r.name == name]
    assert 1 == len(found), f"{typ} {name}: {len(found)} registered"
    return found[0]


# ------------------------------------------------------------------ the policy

def test_policy_declares_no_inline_rules_and_ignores_them() -> None:
    resources = run_program({"trustedRanges": TRUSTED, "operatorRules": OPERATOR_RULES})

    (policy,) = of_type(resources, POLICY)
    assert "rules" not in policy.inputs
    assert ("rules",) == policy.ignore_changes
    assert {"name": "ml-cluster-edge", "project": PROJECT, "type": "CLOUD_ARMOR"} == {
        k: policy.inputs[k] for k in ("name", "project", "type")
    }


def test_default_rule_is_its_own_resource_and_denies() -> None:
    resources = run_program({"trustedRanges": TRUSTED})

    default = one(resources, RULE, "default-rule")
    assert 2147483647 == default.inputs["priority"]
    assert "deny(403)" == default.inputs["action"]
    assert {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}} == default.inputs["match"]
    assert "ml-cluster-edge" == default.inputs["securityPolicy"]
    assert POLICY == default.parent_type


def test_default_action_comes_from_configuration() -> None:
    resources = run_program({"defaultAction": "deny(502)"})

    assert "deny(502)" == one(resources, RULE, "default-rule").inputs["action"]


def test_trusted_ranges_are_allowed_ten_to_a_rule_from_priority_1000() -> None:
    resources = run_program({"trustedRanges": TRUSTED})

    first, second = one(resources, RULE, "trusted-1000"), one(resources, RULE, "trusted-1001")
    assert (1000, "allow", TRUSTED[:10]) == (
        first.inputs["priority"], first.inputs["action"], first.inputs["match"]["config"]["srcIpRanges"])
    assert (1001, "allow", TRUSTED[10:]) == (
        second.inputs["priority"], second.inputs["action"], second.inputs["match"]["config"]["srcIpRanges"])


def test_operator_rules_are_separate_resources_with_their_properties() -> None:
    resources = run_program({"operatorRules": OPERATOR_RULES})

    waf = one(resources, RULE, "waf-sqli")
    assert (3000, "deny(403)", {"expr": {"expression": "evaluatePreconfiguredWaf('sqli-v33-stable')"}}) == (
        waf.inputs["priority"], waf.inputs["action"], waf.inputs["match"])
    below = one(resources, RULE, "rule-19999")
    assert (19999, "deny(404)", True) == (below.inputs["priority"], below.inputs["action"], below.inputs["preview"])
    assert {"waf-sqli", "rule-19999", "rule-21000", "default-rule"} == {r.name for r in of_type(resources, RULE)}


def test_no_rule_resource_falls_inside_the_band() -> None:
    resources = run_program({"trustedRanges": TRUSTED, "operatorRules": OPERATOR_RULES, "deployResponder": True,
                             "region": "us-central1"})

    priorities = [r.inputs["priority"] for r in of_type(resources, RULE)]
    assert 6 == len(priorities)
    assert [] == [p for p in priorities if BAND[0] <= p <= BAND[1]]


@pytest.mark.parametrize("priority", [BAND[0], (BAND[0] + BAND[1]) // 2, BAND[1]])
def test_a_rule_inside_the_band_is_refused(priority: int) -> None:
    from car_iac.settings import ConfigError

    rules = [{"priority": priority, "action": "deny(403)", "srcIpRanges": ["192.0.2.0/24"]}]
    with pytest.raises(ConfigError, match=f"priority {priority} is inside the responder's band"):
        run_program({"operatorRules": rules})


def test_trusted_rules_that_would_reach_the_band_are_refused() -> None:
    from car_iac.settings import ConfigError

    with pytest.raises(ConfigError, match="inside the responder's band"):
        run_program({"trustedRanges": TRUSTED, "trustedPriority": BAND[0] - 1})


def test_the_band_can_be_set_in_the_pulumi_configuration() -> None:
    from car_iac.settings import ConfigError

    rules = [{"priority": 5000, "action": "deny(403)", "srcIpRanges": ["192.0.2.0/24"]}]
    assert 5000 == one(run_program({"operatorRules": rules}), RULE, "rule-5000").inputs["priority"]
    with pytest.raises(ConfigError, match="inside the responder's band 4000..5999"):
        run_program({"operatorRules": rules, "bandStart": 4000, "bandEnd": 5999})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"defaultAction": "deny(451)"}, "defaultAction: one of"),
        ({"operatorRules": [{"priority": 2147483647, "action": "allow", "srcIpRanges": ["*"]}]}, "outside 0..2147483646"),
        ({"operatorRules": [{"priority": 1000, "action": "allow", "srcIpRanges": ["192.0.2.0/24"]}],
          "trustedRanges": ["203.0.113.0/24"]}, "priority 1000 is taken by trusted-1000"),
        ({"operatorRules": [{"priority": 7, "action": "deny(403)", "srcIpRange": ["192.0.2.1"]}]}, "srcIpRange: unknown field"),
        ({"trustedRanges": ["not-an-address"]}, r"trustedRanges\[0\]: not an IP address"),
    ],
)
def test_invalid_configuration_names_the_setting(values: dict[str, Any], message: str) -> None:
    from car_iac.settings import ConfigError

    with pytest.raises(ConfigError, match=message):
        run_program(values)


def test_only_the_policy_when_the_responder_is_not_deployed() -> None:
    resources = run_program({"trustedRanges": TRUSTED})

    assert {POLICY, RULE} == {r.type for r in resources}


# ------------------------------------------------------ the responder component

def _dry_run(*options: str) -> list[list[str]]:
    """deploy.sh's plan, one gcloud argv per planned command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESPONDER_")}
    env["PYTHON"] = sys.executable
    out = subprocess.run(
        ["bash", str(ROOT / "deploy.sh"), "--region", "us-central1", "--dry-run", *options],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ gcloud ")]


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)


def _commands(plan: list[list[str]], *words: str) -> list[list[str]]:
    n = len(words)
    return [argv for argv in plan if tuple(argv[1 : 1 + n]) == words]


@pytest.fixture(scope="module")
def plan() -> list[list[str]]:
    return _dry_run()


@pytest.fixture(scope="module")
def responder() -> list[Registered]:
    return run_program({"deployResponder": True, "region": "us-central1"})


@pytest.fixture(scope="module")
def group_plan() -> list[list[str]]:
    return _dry_run("--with-address-groups")


@pytest.fixture(scope="module")
def group_responder() -> list[Registered]:
    return run_program({"deployResponder": True, "region": "us-central1", "addressGroups": True})


#: Both variants: deploy.sh without and with --with-address-groups, the
#: component without and with addressGroups: true.
BOTH = pytest.mark.parametrize("groups", [False, True], ids=["band-only", "with-address-groups"])


def _variant(request: pytest.FixtureRequest, groups: bool) -> tuple[list[list[str]], list[Registered]]:
    """(deploy.sh's plan, the component's resources) of one variant."""
    if groups:
        return request.getfixturevalue("group_plan"), request.getfixturevalue("group_responder")
    return request.getfixturevalue("plan"), request.getfixturevalue("responder")


def test_every_responder_resource_is_a_child_of_the_component(responder: list[Registered]) -> None:
    (component,) = of_type(responder, COMPONENT)
    others = [r for r in responder if r.type not in (POLICY, RULE, COMPONENT)]
    assert 40 < len(others)
    assert [] == [r.name for r in others if r.parent_type != COMPONENT]


@BOTH
def test_custom_role_matches_deploy_sh(request: pytest.FixtureRequest, groups: bool) -> None:
    plan, responder = _variant(request, groups)
    (create,) = _commands(plan, "iam", "roles", "create")
    flags = _flags(create)
    (role,) = of_type(responder, "gcp:projects/iAMCustomRole:IAMCustomRole")

    assert create[4] == role.inputs["roleId"]
    assert flags["permissions"].split(",") == role.inputs["permissions"]
    assert (flags["title"], flags["description"], flags["stage"]) == (
        role.inputs["title"], role.inputs["description"], role.inputs["stage"])
    granted = [p for p in role.inputs["permissions"] if p.startswith("networksecurity.")]
    assert groups == ("networksecurity.addressGroups.use" in granted)
    assert groups == bool(granted)


def test_role_permissions_match_deploy_sh_for_global_and_regional_policies() -> None:
    from car_iac.names import role_permissions

    text = (ROOT / "deploy.sh").read_text()
    (regional,) = re.findall(r'REGIONAL_PERMISSIONS="([^"]+)"', text)
    (global_,) = re.findall(r'GLOBAL_PERMISSIONS="([^"]+)"', text)
    (extra,) = set(re.findall(r'ROLE_PERMISSIONS="\$(?:REGIONAL|GLOBAL)_PERMISSIONS,([^"]+)"', text))
    assert [*global_.split(","), *extra.split(",")] == list(role_permissions(""))
    assert [*regional.split(","), *extra.split(",")] == list(role_permissions("us-central1"))
    # --with-address-groups appends its permissions to the global role (deploy.sh refuses it for a regional policy).
    block = text.split("if [[ $WITH_ADDRESS_GROUPS -eq 1 ]]; then", 1)[1].split("\nfi\n", 1)[0]
    groups = ",".join(re.findall(r'ROLE_PERMISSIONS\+=",([^"]+)"', block)).split(",")
    assert [*global_.split(","), *extra.split(","), *groups] == list(role_permissions("", address_groups=True))


def test_role_and_trigger_bindings_match_deploy_sh(plan: list[list[str]], responder: list[Registered]) -> None:
    bindings = {(_flags(a)["member"], _flags(a)["role"]) for a in _commands(plan, "projects", "add-iam-policy-binding")}
    members = {(r.inputs["member"], r.inputs["role"]) for r in of_type(responder, "gcp:projects/iAMMember:IAMMember")}
    assert bindings == members

    (token,) = of_type(responder, "gcp:serviceaccount/iAMMember:IAMMember")
    (sa_binding,) = _commands(plan, "iam", "service-accounts", "add-iam-policy-binding")
    pubsub_agent = f"serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
    assert (pubsub_agent, _flags(sa_binding)["role"]) == (token.inputs["member"], token.inputs["role"])
    assert _flags(sa_binding)["member"] == pubsub_agent.replace(PROJECT_NUMBER, "PROJECT_NUMBER")


def test_service_accounts_match_deploy_sh(plan: list[list[str]], responder: list[Registered]) -> None:
    created = {a[4]: _flags(a)["display-name"] for a in _commands(plan, "iam", "service-accounts", "create")}
    accounts = {r.inputs["accountId"]: r.inputs["displayName"] for r in of_type(responder, "gcp:serviceaccount/account:Account")}
    assert created == accounts


def test_topics_and_dead_letter_hold_match_deploy_sh(plan: list[list[str]], responder: list[Registered]) -> None:
    created = {a[4] for a in _commands(plan, "pubsub", "topics", "create")}
    topics = of_type(responder, "gcp:pubsub/topic:Topic")
    assert created == {t.inputs["name"] for t in topics}
    assert all({"app": "cloud-armor-responder"} == t.inputs["labels"] for t in topics)

    (sub_cmd,) = _commands(plan, "pubsub", "subscriptions", "create")
    (sub,) = of_type(responder, "gcp:pubsub/subscription:Subscription")
    assert (sub_cmd[4], _flags(sub_cmd)["topic"], "7d", "never") == (
        sub.inputs["name"], sub.inputs["topic"], _flags(sub_cmd)["message-retention-duration"],
        _flags(sub_cmd)["expiration-period"])
    assert ("604800s", {"ttl": ""}) == (sub.inputs["messageRetentionDuration"], sub.inputs["expirationPolicy"])
    dead_publishers = [r for r in of_type(responder, "gcp:pubsub/topicIAMMember:TopicIAMMember")
                       if r.inputs["topic"] == sub.inputs["topic"]]
    assert ["roles/pubsub.publisher"] == [r.inputs["role"] for r in dead_publishers]


def test_functions_match_deploy_sh(plan: list[list[str]], responder: list[Registered]) -> None:
    functions = {r.inputs["name"]: r.inputs for r in of_type(responder, "gcp:cloudfunctionsv2/function:Function")}
    deploys = _commands(plan, "functions", "deploy")
    assert {a[3] for a in deploys} == set(functions)
    for argv in deploys:
        flags, fn = _flags(argv), functions[argv[3]]
        build, service, trigger = fn["buildConfig"], fn["serviceConfig"], fn["eventTrigger"]
        env = dict(pair.split("=", 1) for pair in flags["set-env-vars"].split(","))
        assert (flags["runtime"], flags["entry-point"]) == (build["runtime"], build["entryPoint"])
        assert f"projects/{PROJECT}/topics/{flags['trigger-topic']}" == trigger["pubsubTopic"]
        assert (flags["trigger-service-account"], flags["service-account"]) == (
            trigger["serviceAccountEmail"], service["serviceAccountEmail"])
        assert "--retry" in argv and "RETRY_POLICY_RETRY" == trigger["retryPolicy"]
        assert (flags["region"], flags["region"]) == (fn["location"], trigger["triggerRegion"])
        assert (flags["memory"], int(flags["max-instances"]), int(flags["concurrency"]), flags["timeout"]) == (
            service["availableMemory"], service["maxInstanceCount"], service["maxInstanceRequestConcurrency"],
            f"{int(service['timeoutSeconds'])}s")
        assert "internal-only" == flags["ingress-settings"] and "ALLOW_INTERNAL_ONLY" == service["ingressSettings"]
        assert env == service["environmentVariables"]


def test_invokers_match_deploy_sh(plan: list[list[str]], responder: list[Registered]) -> None:
    granted = {(a[3], _flags(a)["member"]) for a in _commands(plan, "functions", "add-invoker-policy-binding")}
    invokers = {(r.inputs["name"], r.inputs["member"]) for r in
                of_type(responder, "gcp:cloudrunv2/serviceIamMember:ServiceIamMember")}
    assert granted == invokers
    assert {"roles/run.invoker"} == {r.inputs["role"] for r in
                                     of_type(responder, "gcp:cloudrunv2/serviceIamMember:ServiceIamMember")}


def test_cleanup_schedule_matches_deploy_sh(plan: list[list[str]], responder: list[Registered]) -> None:
    (create,) = _commands(plan, "scheduler", "jobs", "create", "pubsub")
    flags = _flags(create)
    (job,) = of_type(responder, "gcp:cloudscheduler/job:Job")
    target = job.inputs["pubsubTarget"]
    assert (create[5], flags["schedule"], flags["time-zone"], flags["location"]) == (
        job.inputs["name"], job.inputs["schedule"], job.inputs["timeZone"], job.inputs["region"])
    assert f"projects/{PROJECT}/topics/{flags['topic']}" == target["topicName"]
    assert flags["message-body"] == base64.b64decode(target["data"]).decode()


def test_log_sinks_match_deploy_sh(plan: list[list[str]], responder: list[Registered]) -> None:
    created = {a[4]: (a[5], _flags(a)["log-filter"], _flags(a)["description"])
               for a in _commands(plan, "logging", "sinks", "create")}
    sinks = {r.inputs["name"]: (r.inputs["destination"], r.inputs["filter"], r.inputs["description"])
             for r in of_type(responder, "gcp:logging/projectSink:ProjectSink")}
    assert created == sinks
    publishers = {r.inputs["member"] for r in of_type(responder, "gcp:pubsub/topicIAMMember:TopicIAMMember")
                  if r.inputs["topic"] == "car-log-sink"}
    assert {f"serviceAccount:sink-{name}@logging.example" for name in sinks} == publishers


@BOTH
def test_apis_match_deploy_sh(request: pytest.FixtureRequest, groups: bool) -> None:
    plan, responder = _variant(request, groups)
    (enable,) = _commands(plan, "services", "enable")
    apis = [a for a in enable[3:] if not a.startswith("--")]
    assert set(apis) == {r.inputs["service"] for r in of_type(responder, "gcp:projects/service:Service")}
    assert groups == ("networksecurity.googleapis.com" in apis)


def test_address_groups_need_the_responder_deployed() -> None:
    from car_iac.settings import ConfigError

    with pytest.raises(ConfigError, match="addressGroups: .*deployResponder"):
        run_program({"addressGroups": True})


def test_function_source_carries_the_runtime_files_and_the_chosen_configuration(tmp_path: Path) -> None:
    from car_iac.responder import source_archive

    config = tmp_path / "other.toml"
    config.write_text("# another configuration\n")
    archive = source_archive(ROOT, config)

    assets = archive.assets
    assert {"main.py", "requirements.txt", "handlers/manual.py", "responder/planner/plans.py",
            "config/settings.py", "config/detectors.toml"} <= set(assets)
    assert str(config) == assets["config/responder.toml"].path
    assert [] == [name for name in assets if name.startswith(("tests/", ".venv/")) or "__pycache__" in name]

