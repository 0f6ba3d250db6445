"""Tests of deploy.sh against a recording fake gcloud (tests/deploy/fake_gcloud).

The fake validates every flag against the real gcloud's synopsis
(gcloud_flags.json), keeps a JSON state of what exists, and logs each call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy.sh"
FAKE = Path(__file__).resolve().parent / "fake_gcloud"
REGION = "us-central1"
PROJECT = "my-ml-project"
TOPICS = ["car-threat-feed", "car-log-sink", "car-alerts", "car-manual", "car-cleanup", "car-dead-letter"]
FUNCTIONS = {
    "car-threat-feed": "on_threat_feed",
    "car-log-sink": "on_log_sink",
    "car-alert": "on_alert",
    "car-manual": "on_manual",
    "car-cleanup": "on_cleanup",
}
TRUSTED = [f"10.{i}.0.0/16" for i in range(12)]
HEALTH_METRICS = ["blocks-added", "blocks-extended", "blocks-expired", "blocks-refused", "blocks-evicted",
                  "breaker-trips", "lint-findings", "deferred", "dead-lettered", "feed-download-failures",
                  "band-rules"]
HEALTH_ALERTS = ["car: flood breaker tripped", "car: band nearly full", "car: dead-lettered messages waiting",
                 "car: function error rate"]

# Commands that a second run against the same state may issue again: each is
# idempotent by its documentation (add-iam-policy-binding adds a binding that
# is already there as a no-op; "functions deploy" is "create or update"; the
# update commands set the same values again).
REPEATABLE = (
    ("projects", "add-iam-policy-binding"),
    ("iam", "service-accounts", "add-iam-policy-binding"),
    ("pubsub", "topics", "add-iam-policy-binding"),
    ("pubsub", "subscriptions", "add-iam-policy-binding"),
    ("functions", "add-invoker-policy-binding"),
    ("functions", "deploy"),
    ("pubsub", "subscriptions", "update"),
    ("scheduler", "jobs", "update", "pubsub"),
    ("logging", "sinks", "update"),
    ("logging", "metrics", "update"),
    ("monitoring", "dashboards", "update"),
    ("alpha", "monitoring", "policies", "update"),
)
READ_ONLY_VERBS = {"describe", "list"}


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.log = tmp / "gcloud.log"
        self.state = tmp / "state.json"
        wrapper = self.bin / "gcloud"
        # The interpreter directly (faster than a pyenv shim); -S -E: the fake
        # needs the standard library only.
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S -E "{FAKE}" "$@"\n')
        wrapper.chmod(0o755)
        self.seed({"backend_services": {"ml-web": {"name": "ml-web", "securityPolicy": ""}}})

    def seed(self, state: dict) -> None:
        self.state.write_text(json.dumps(state))

    def read_state(self) -> dict:
        return json.loads(self.state.read_text())

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def clear_log(self) -> None:
        self.log.unlink(missing_ok=True)

    def start(self, *args: str, config: Path | None = None, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        env = dict(os.environ, **(extra_env or {}))
        env.update({
            "PATH": f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
            "FAKE_GCLOUD_LOG": str(self.log),
            "FAKE_GCLOUD_STATE": str(self.state),
            "DEPLOY_RETRY_SLEEP": "0",
            "PYTHON": sys.executable,
        })
        for var in [v for v in env if v.startswith("RESPONDER_")]:
            del env[var]
        argv = ["bash", str(DEPLOY), *args]
        if config is not None:
            argv += ["--config", str(config)]
        return subprocess.Popen(argv, cwd=self.tmp, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def run(self, *args: str, config: Path | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return finish(self.start(*args, config=config, extra_env=extra_env))


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def write_config(path: Path, *, ranges: list[str] | None = None, backends: list[str] | None = None,
                 extra: str = "") -> Path:
    text = (ROOT / "config" / "responder.toml").read_text()
    if ranges is not None:
        text = text.replace("trusted_ranges = []", "trusted_ranges = " + json.dumps(ranges))
    if backends is not None:
        text = text.replace("backend_services = []", "backend_services = " + json.dumps(backends))
    path.write_text(text + extra)
    return path


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def cfg_dir():
    """A directory inside the repository (so that --config is accepted)."""
    d = ROOT / "tests" / "deploy" / f".tmp-config-{os.getpid()}"
    d.mkdir(exist_ok=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def verb_of(call: list[str]) -> tuple[str, ...]:
    words = []
    for arg in call:
        if arg.startswith("-"):
            break
        words.append(arg)
    return tuple(words)


def is_mutating(call: list[str]) -> bool:
    words = [w for w in verb_of(call) if w not in ("alpha", "beta")]
    return not (set(words) & READ_ONLY_VERBS)


def index_of(calls: list[list[str]], *prefix: str, contains: str | None = None) -> int:
    for i, call in enumerate(calls):
        if tuple(call[: len(prefix)]) == prefix and (contains is None or contains in call):
            return i
    raise AssertionError(f"no call {prefix} {contains or ''} in:\n" + "\n".join(map(" ".join, calls)))


def flag(call: list[str], name: str) -> str | None:
    for arg in call:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# ------------------------------------------------------------------ first run

EXISTING_POLICY = {
    "name": "ml-cluster-edge", "region": None,
    "rules": [
        {"priority": 2147483647, "action": "deny-403", "description": "default"},
        {"priority": 500, "action": "allow", "description": "ops"},
        {"priority": 20010, "action": "deny-403", "description": "car1 exp=... feed"},
        {"priority": 20500, "action": "deny-404", "description": "someone else's rule"},
    ],
}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """The full runs (the slow part), started concurrently and shared:

    * first: a first run on an empty project, bootstrapping the policy;
    * existing: a run against an existing policy with a foreign band rule;
    * override: flags overriding the config, and a regional policy.
    """
    d = ROOT / "tests" / "deploy" / f".tmp-config-scenarios-{os.getpid()}"
    d.mkdir(exist_ok=True)
    try:
        first = Env(tmp_path_factory.mktemp("first"))
        first_cfg = write_config(d / "bootstrap.toml", ranges=TRUSTED, backends=["ml-web"])
        existing = Env(tmp_path_factory.mktemp("existing"))
        existing.seed({"policies": {"ml-cluster-edge": EXISTING_POLICY},
                       "backend_services": {"ml-web": {"name": "ml-web", "securityPolicy": ""}}})
        existing_cfg = write_config(d / "existing.toml", ranges=TRUSTED, backends=["ml-web"])
        override = Env(tmp_path_factory.mktemp("override"))
        override.seed({"project": {"projectId": "other-proj", "projectNumber": "42"}})
        regional_cfg = d / "regional.toml"
        regional_cfg.write_text(
            (ROOT / "config" / "responder.toml").read_text().replace('region = ""', 'region = "us-east1"', 1))
        procs = {
            "first": (first, first_cfg, first.start("--region", REGION, "--with-monitoring", config=first_cfg)),
            "existing": (existing, existing_cfg, existing.start("--region", REGION, config=existing_cfg)),
            "override": (override, regional_cfg, override.start(
                "--project", "other-proj", "--region", "europe-west4", "--policy", "edge2",
                "--band-start", "30000", "--band-end", "30499", config=regional_cfg)),
        }
        yield {name: (env, cfg, finish(proc)) for name, (env, cfg, proc) in procs.items()}
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def first_run(scenarios, env: Env):
    """A private copy of the state and log after the first run."""
    template, cfg, result = scenarios["first"]
    assert result.returncode == 0, result.stdout + result.stderr
    shutil.copy(template.state, env.state)
    shutil.copy(template.log, env.log)
    return env, cfg, result


def test_first_run_creates_everything_in_order(first_run) -> None:
    env, _, _ = first_run
    calls = env.calls()
    state = env.read_state()

    enable = index_of(calls, "services", "enable")
    sa = index_of(calls, "iam", "service-accounts", "create", "car-responder")
    role = index_of(calls, "iam", "roles", "create")
    topic_first = min(index_of(calls, "pubsub", "topics", "create", t) for t in TOPICS)
    topic_last = max(index_of(calls, "pubsub", "topics", "create", t) for t in TOPICS)
    policy = index_of(calls, "compute", "security-policies", "create")
    deploys = [index_of(calls, "functions", "deploy", fn) for fn in FUNCTIONS]
    sinks = [index_of(calls, "logging", "sinks", "create", s)
             for s in ("car-lb-armor", "car-ids-threats", "car-firewall-denies")]
    job = index_of(calls, "scheduler", "jobs", "create", "pubsub")

    assert enable < sa < role < min(deploys)          # APIs, then accounts, then functions
    assert topic_last < min(deploys)                  # topics before functions
    assert topic_first < min(sinks)                   # sinks after topics
    assert topic_last < job
    assert policy < min(deploys)                      # the policy exists before the functions run

    assert set(state["services"]) >= {
        "cloudfunctions.googleapis.com", "run.googleapis.com", "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com", "eventarc.googleapis.com", "pubsub.googleapis.com",
        "cloudscheduler.googleapis.com", "compute.googleapis.com", "logging.googleapis.com",
        "iam.googleapis.com", "monitoring.googleapis.com"}
    assert set(state["topics"]) == set(TOPICS)
    assert set(state["service_accounts"]) == {
        f"car-responder@{PROJECT}.iam.gserviceaccount.com", f"car-trigger@{PROJECT}.iam.gserviceaccount.com"}
    assert state["roles"]["car_responder"]["includedPermissions"] == sorted([
        "compute.securityPolicies.get", "compute.securityPolicies.update",
        "compute.securityPolicies.setLabels", "compute.globalOperations.get", "logging.logEntries.list"])
    assert set(state["sinks"]) == {"car-lb-armor", "car-ids-threats", "car-firewall-denies"}
    assert state["scheduler_jobs"]["car-cleanup"]["body"] == '{"action":"cleanup"}'
    assert state["scheduler_jobs"]["car-cleanup"]["schedule"] == "*/10 * * * *"
    assert len(state["channels"]) == 1 and len(state["alert_policies"]) == 1 + len(HEALTH_ALERTS)
    assert {"car-ml-probes", *(f"car-{m}" for m in HEALTH_METRICS)} == set(state["metrics"])
    assert ["car: Cloud Armor responder"] == [d["displayName"] for d in state["dashboards"].values()]


def test_functions_are_configured(first_run) -> None:
    env, cfg, _ = first_run
    state = env.read_state()
    assert set(state["functions"]) == set(FUNCTIONS)
    for name, entry in FUNCTIONS.items():
        fn = state["functions"][name]
        assert fn["entryPoint"] == entry
        assert fn["retry"] is True
        assert fn["serviceAccount"] == f"car-responder@{PROJECT}.iam.gserviceaccount.com"
        assert (fn["memory"], fn["maxInstances"], fn["concurrency"], fn["timeout"]) == ("512Mi", "10", "1", "540s")
        assert fn["env"] == {
            "RESPONDER_PROJECT": PROJECT, "RESPONDER_POLICY": "ml-cluster-edge", "RESPONDER_REGION": "",
            "RESPONDER_BAND_START": "20000", "RESPONDER_BAND_END": "20999", "RESPONDER_FUNCTION_TIMEOUT": "540s",
            "RESPONDER_CONFIG": str(cfg.relative_to(ROOT)),
        }
    deploy = [c for c in env.calls() if c[:2] == ["functions", "deploy"]][0]
    for needed in ("--gen2", "--retry"):
        assert needed in deploy
    assert flag(deploy, "--runtime") == "python312"
    assert flag(deploy, "--source") == str(ROOT)
    assert flag(deploy, "--region") == REGION


def test_dead_lettering_on_every_eventarc_subscription(first_run) -> None:
    env, _, _ = first_run
    state = env.read_state()
    pubsub_agent = "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"
    for name in FUNCTIONS:
        trigger = state["functions"][name]["eventTrigger"]["trigger"].rsplit("/", 1)[-1]
        sub = state["triggers"][trigger]["transport"]["pubsub"]["subscription"]
        conf = state["subscriptions"][sub]
        assert conf["dead-letter-topic"] == f"projects/{PROJECT}/topics/car-dead-letter"
        assert conf["max-delivery-attempts"] == "5"
        assert (conf["min-retry-delay"], conf["max-retry-delay"]) == ("10s", "600s")
        assert ["pubsub:" + sub, pubsub_agent, "roles/pubsub.subscriber"] in state["iam"]
        assert ["functions:" + name, f"serviceAccount:car-trigger@{PROJECT}.iam.gserviceaccount.com",
                "roles/run.invoker"] in state["iam"]
    assert ["pubsub:car-dead-letter", pubsub_agent, "roles/pubsub.publisher"] in state["iam"]
    assert state["subscriptions"]["car-dead-letter-hold"]["topic"] == "car-dead-letter"


def test_sink_writer_identities_may_publish(first_run) -> None:
    env, _, _ = first_run
    state = env.read_state()
    for sink in state["sinks"].values():
        assert ["pubsub:car-log-sink", sink["writerIdentity"], "roles/pubsub.publisher"] in state["iam"]
    lb = state["sinks"]["car-lb-armor"]["filter"]
    assert 'resource.type="http_load_balancer"' in lb
    assert 'jsonPayload.enforcedSecurityPolicy.outcome="DENY"' in lb
    # every deny but the default rule's: the band's own too (bans that follow traffic)
    assert "jsonPayload.enforcedSecurityPolicy.priority<2147483647" in lb
    assert "priority<20000" not in lb and "priority>20999" not in lb
    assert 'jsonPayload.disposition="DENIED"' in state["sinks"]["car-firewall-denies"]["filter"]
    assert 'logName:"ids.googleapis.com%2Fthreat"' in state["sinks"]["car-ids-threats"]["filter"]


def test_bootstrap_creates_default_and_trusted_rules(first_run) -> None:
    env, _, _ = first_run
    state = env.read_state()
    rules = {r["priority"]: r for r in state["policies"]["ml-cluster-edge"]["rules"]}
    assert set(rules) == {2147483647, 1000, 1001}
    assert rules[2147483647]["action"] == "allow"
    assert rules[1000]["match"]["config"]["srcIpRanges"] == TRUSTED[:10]
    assert rules[1001]["match"]["config"]["srcIpRanges"] == TRUSTED[10:]
    assert all(r["action"] == "allow" for r in rules.values())
    assert not [p for p in rules if 20000 <= p <= 20999]      # the band is left empty
    assert state["backend_services"]["ml-web"]["securityPolicy"].endswith("/ml-cluster-edge")
    calls = env.calls()
    assert index_of(calls, "compute", "security-policies", "rules", "update", "2147483647") > \
        index_of(calls, "compute", "security-policies", "create")


def test_second_run_creates_nothing(first_run) -> None:
    env, cfg, _ = first_run
    before = env.read_state()
    env.clear_log()
    result = env.run("--region", REGION, "--with-monitoring", config=cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = env.calls()
    mutating = [c for c in calls if is_mutating(c)]
    unexpected = [c for c in mutating if not any(tuple(c[: len(p)]) == p for p in REPEATABLE)]
    assert unexpected == [], "\n".join(map(" ".join, unexpected))
    assert not [c for c in calls if "create" in verb_of(c) or "enable" in verb_of(c)]
    assert not [c for c in calls if c[:3] == ["compute", "security-policies", "rules"]]
    assert "kept as is" in result.stdout
    after = env.read_state()
    assert after["policies"] == before["policies"]
    assert after["iam"] == before["iam"]


def test_dry_run_prints_the_plan_and_calls_nothing(env: Env, cfg_dir: Path) -> None:
    cfg = write_config(cfg_dir / "dry.toml", ranges=TRUSTED, backends=["ml-web"])
    result = env.run("--region", REGION, "--dry-run", "--with-monitoring", config=cfg)
    assert result.returncode == 0, result.stderr
    assert env.calls() == []
    assert "ml-cluster-edge" not in json.dumps(env.read_state().get("policies", {}))
    lines = [line for line in result.stdout.splitlines() if line.startswith("+ gcloud ")]
    text = "\n".join(lines)
    first = {key: text.index(key) for key in (
        "+ gcloud services enable", "+ gcloud iam service-accounts create car-responder",
        "+ gcloud iam roles create", "+ gcloud pubsub topics create car-threat-feed",
        "+ gcloud compute security-policies create", "+ gcloud functions deploy car-threat-feed",
        "+ gcloud scheduler jobs create pubsub", "+ gcloud logging sinks create",
        "+ gcloud logging metrics create car-blocks-added", "+ gcloud monitoring dashboards create",
        "+ gcloud alpha monitoring policies create", "+ gcloud beta monitoring channels create")}
    assert list(first.values()) == sorted(first.values()), first
    assert text.count("+ gcloud functions deploy ") == 5
    assert text.count("+ gcloud pubsub topics create ") == 6
    assert text.count("+ gcloud compute security-policies rules create ") == 2
    assert text.count("+ gcloud logging sinks create ") == 3
    assert "+ gcloud compute backend-services update ml-web" in text
    # a comment line introduces each step
    assert sum(1 for line in result.stdout.splitlines() if line.startswith("# ")) >= 10
    # every printed command is one of the commands the fake knows
    flags = json.loads((FAKE.parent / "gcloud_flags.json").read_text())
    for line in lines:
        words = line[len("+ gcloud "):].split(" ")
        cmd = " ".join(w for w in words if not w.startswith(("-", "'")))
        known = [k for k in flags["commands"] if cmd.startswith(k)]
        assert known, line


def test_existing_policy_is_never_modified(scenarios) -> None:
    env, _, result = scenarios["existing"]
    assert result.returncode == 0, result.stdout + result.stderr
    calls = env.calls()
    compute = [c for c in calls if c[0] == "compute"]
    assert compute and all("describe" in verb_of(c) for c in compute), compute
    assert env.read_state()["policies"]["ml-cluster-edge"] == EXISTING_POLICY
    assert env.read_state()["backend_services"]["ml-web"]["securityPolicy"] == ""
    assert "kept as is" in result.stdout
    assert "20500" in result.stderr and "20010" not in result.stderr   # foreign band rule warned about
    assert "ml-web does not use ml-cluster-edge" in result.stderr


def test_flags_override_config(scenarios) -> None:
    env, _, result = scenarios["override"]
    assert result.returncode == 0, result.stdout + result.stderr
    state = env.read_state()
    fn = state["functions"]["car-manual"]
    assert fn["region"] == "europe-west4"                     # --region: the functions' region
    assert fn["env"] == {"RESPONDER_PROJECT": "other-proj", "RESPONDER_POLICY": "edge2",
                         "RESPONDER_REGION": "us-east1",      # the policy's region, from the config
                         "RESPONDER_BAND_START": "30000", "RESPONDER_BAND_END": "30499", "RESPONDER_FUNCTION_TIMEOUT": "540s",
                         "RESPONDER_CONFIG": fn["env"]["RESPONDER_CONFIG"]}
    assert all(flag(c, "--project") in ("other-proj", None) for c in env.calls())
    # the band's own denies are routed too (bans that follow traffic): the filter names the policy, not the band
    assert 'jsonPayload.enforcedSecurityPolicy.name="edge2"' in state["sinks"]["car-lb-armor"]["filter"]
    assert state["scheduler_jobs"]["car-cleanup"]["name"] == "car-cleanup"
    assert [c for c in env.calls() if c[:2] == ["scheduler", "jobs"] and flag(c, "--location") != "europe-west4"] == []


def test_regional_policy_uses_regional_permissions(scenarios) -> None:
    env, _, result = scenarios["override"]
    assert result.returncode == 0, result.stdout + result.stderr
    state = env.read_state()
    assert state["policies"]["edge2"]["region"] == "us-east1"
    assert 'resource.type="http_external_regional_lb_rule"' in state["sinks"]["car-lb-armor"]["filter"]
    perms = state["roles"]["car_responder"]["includedPermissions"]
    assert "compute.regionSecurityPolicies.update" in perms and "compute.regionOperations.get" in perms
    assert not [p for p in perms if p.startswith("compute.securityPolicies")]
    assert all(flag(c, "--region") == "us-east1" for c in env.calls() if c[0] == "compute")


def test_bad_flag_is_a_usage_error(env: Env) -> None:
    result = env.run("--regoin", REGION)
    assert result.returncode == 2
    assert "unrecognized argument: --regoin" in result.stderr
    assert "--help" in result.stderr
    assert env.calls() == []
    for args in (["--band-start", "abc"], ["--project"]):
        result = env.run(*args)
        assert result.returncode == 2, args
        assert env.calls() == []


def test_help(env: Env) -> None:
    result = env.run("--help")
    assert result.returncode == 0
    for word in ("--project", "--region", "--policy", "--band-start", "--band-end", "--config",
                 "--dry-run", "--with-monitoring"):
        assert word in result.stdout


def test_invalid_config_is_refused(env: Env, cfg_dir: Path) -> None:
    cfg = write_config(cfg_dir / "bad.toml", ranges=["10.0.0.0/8", "not-an-ip"])
    result = env.run("--region", REGION, config=cfg)
    assert result.returncode == 3
    assert "bootstrap.trusted_ranges[1]" in result.stderr
    assert env.calls() == []
    overlap = write_config(cfg_dir / "overlap.toml", ranges=TRUSTED)
    overlap.write_text(overlap.read_text().replace("trusted_priority = 1000", "trusted_priority = 20000"))
    result = env.run("--region", REGION, config=overlap)
    assert result.returncode == 3 and "overlap the band" in result.stderr
    result = env.run("--region", REGION, "--band-start", "21000")      # start > end
    assert result.returncode == 3 and "band" in result.stderr


def test_config_outside_the_source_is_refused(env: Env, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "elsewhere.toml")
    result = env.run("--region", REGION, config=cfg)
    assert result.returncode == 3
    assert "must lie inside" in result.stderr
    assert env.calls() == []


def test_fake_rejects_unknown_flags(env: Env) -> None:
    """The safety net itself: a typo in a gcloud flag fails like gcloud."""
    proc = subprocess.run(
        [str(env.bin / "gcloud"), "pubsub", "topics", "create", "t", "--project=my-ml-project", "--lables=a=b"],
        env={**os.environ, "FAKE_GCLOUD_LOG": str(env.log), "FAKE_GCLOUD_STATE": str(env.state)},
        capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unrecognized arguments: --lables=a=b" in proc.stderr


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, "-x", str(DEPLOY)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------- feed pulls

PULLED = """
[feeds.drop]
format = "spamhaus"
snapshot = true
url = "https://feeds.example.com/drop.txt"
every = "6h"
headers = {Authorization = "env:FEED_TOKEN"}

[deploy.secrets]
FEED_TOKEN = "feed-token:latest"
"""


def test_each_feed_with_a_url_gets_a_pull_schedule_and_its_header_secrets(env: Env, cfg_dir: Path) -> None:
    cfg = write_config(cfg_dir / "pulled.toml", extra=PULLED)
    first = env.run("--region", REGION, config=cfg)
    assert 0 == first.returncode, first.stderr
    job = env.read_state()["scheduler_jobs"]["car-pull-drop"]
    calls = env.calls()
    create = calls[index_of(calls, "scheduler", "jobs", "create", "pubsub", contains="car-pull-drop")]
    feed_fn = calls[index_of(calls, "functions", "deploy", contains="car-threat-feed")]
    other_fn = calls[index_of(calls, "functions", "deploy", contains="car-manual")]
    grant = calls[index_of(calls, "secrets", "add-iam-policy-binding")]
    assert "0 */6 * * *" == job["schedule"]
    assert ("car-threat-feed", '{"action":"pull","feed":"drop"}') == (flag(create, "--topic"), flag(create, "--message-body"))
    assert "FEED_TOKEN=feed-token:latest" == flag(feed_fn, "--set-secrets")
    assert flag(other_fn, "--set-secrets") is None
    assert ("feed-token", "roles/secretmanager.secretAccessor") == (grant[2], flag(grant, "--role"))
    env.clear_log()
    second = env.run("--region", REGION, config=cfg)
    assert 0 == second.returncode, second.stderr
    calls = env.calls()
    index_of(calls, "scheduler", "jobs", "update", "pubsub", contains="car-pull-drop")


def test_the_dry_run_shows_the_pull_schedules(env: Env, cfg_dir: Path) -> None:
    cfg = write_config(cfg_dir / "pulled.toml", extra=PULLED)
    result = env.run("--region", REGION, "--dry-run", config=cfg)
    assert 0 == result.returncode, result.stderr
    assert "gcloud scheduler jobs create pubsub car-pull-drop" in result.stdout
    assert "'--schedule=0 */6 * * *'" in result.stdout
    assert [] == env.calls()


def test_a_header_secret_without_a_mapping_stops_the_deploy(env: Env, cfg_dir: Path) -> None:
    cfg = write_config(cfg_dir / "unmapped.toml", extra=PULLED.replace('FEED_TOKEN = "feed-token:latest"', ""))
    result = env.run("--region", REGION, config=cfg)
    assert 3 == result.returncode
    assert "feeds.drop.headers.Authorization: env:FEED_TOKEN is not mapped" in result.stderr
    assert [] == [c for c in env.calls() if is_mutating(c)]


# ------------------------------------------------------- health as code

def test_health_metrics_dashboard_and_alerts_are_created(first_run) -> None:
    env, _, _ = first_run
    state = env.read_state()
    added = state["metrics"]["car-blocks-added"]
    assert 'jsonPayload.responder.change="added"' in added["filter"]
    assert 'resource.labels.service_name=("car-threat-feed" OR "car-log-sink"' in added["filter"]
    assert {"source": "EXTRACT(jsonPayload.responder.source)"} == added["labelExtractors"]
    band = state["metrics"]["car-band-rules"]
    assert ("DISTRIBUTION", "EXTRACT(jsonPayload.responder.band_rules)") == (
        band["metricDescriptor"]["valueType"], band["valueExtractor"])
    assert 'jsonPayload.responder.change="usage"' in band["filter"]
    policies = {p["displayName"]: p for p in state["alert_policies"]}
    assert set(HEALTH_ALERTS) < set(policies)
    share = policies["car: band nearly full"]["conditions"][0]["conditionThreshold"]
    assert 120 == share["thresholdValue"]          # 0.8 (the default share) of band.max_rules 150
    assert 'metric.type="logging.googleapis.com/user/car-band-rules"' in share["filter"]
    dead = policies["car: dead-lettered messages waiting"]["conditions"][0]["conditionThreshold"]
    assert 'resource.labels.subscription_id="car-dead-letter-hold"' in dead["filter"]
    assert (0, "COMPARISON_GT") == (dead["thresholdValue"], dead["comparison"])
    errors = policies["car: function error rate"]["conditions"][0]["conditionThreshold"]
    assert 'response_code_class="5xx"' in errors["filter"] and "denominatorFilter" in errors
    assert all(p["notificationChannels"] == [] for name, p in policies.items() if name in HEALTH_ALERTS)


def test_second_run_updates_metrics_dashboard_and_alerts(first_run) -> None:
    env, cfg, _ = first_run
    before = env.read_state()
    cfg.write_text(cfg.read_text().replace("alert_band_share = 0.8", "alert_band_share = 0.5", 1))
    env.clear_log()
    result = env.run("--region", REGION, "--with-monitoring", config=cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = env.calls()
    updated = {c[3] for c in calls if c[:3] == ["logging", "metrics", "update"]}
    assert {f"car-{m}" for m in HEALTH_METRICS} | {"car-ml-probes"} == updated
    (dash_update,) = [c for c in calls if c[:3] == ["monitoring", "dashboards", "update"]]
    assert [] == [c for c in calls if c[:3] == ["monitoring", "dashboards", "create"]]
    policy_updates = [c for c in calls if c[:4] == ["alpha", "monitoring", "policies", "update"]]
    assert 1 + len(HEALTH_ALERTS) == len(policy_updates)
    after = env.read_state()
    assert len(before["alert_policies"]) == len(after["alert_policies"])
    assert [d["etag"] for d in before["dashboards"].values()] != [d["etag"] for d in after["dashboards"].values()]
    assert dash_update[3] in after["dashboards"]
    share = [p for p in after["alert_policies"] if p["displayName"] == "car: band nearly full"][0]
    assert 75 == share["conditions"][0]["conditionThreshold"]["thresholdValue"]   # 0.5 of 150, updated


def test_the_dry_run_lists_every_health_resource(env: Env) -> None:
    result = env.run("--region", REGION, "--dry-run")
    assert 0 == result.returncode, result.stderr
    out = result.stdout
    for metric in HEALTH_METRICS:
        assert f"+ gcloud logging metrics create car-{metric} --project=my-ml-project --config-from-file=" in out
    assert 1 == out.count("+ gcloud monitoring dashboards create --project=my-ml-project --config-from-file=")
    assert len(HEALTH_ALERTS) == out.count("+ gcloud alpha monitoring policies create")
    assert '"displayName": "car: band nearly full"' in out       # the rendered policies are shown
    assert [] == env.calls()


def test_without_the_alpha_component_alert_policies_are_skipped_with_a_warning(env: Env) -> None:
    result = env.run("--region", REGION, extra_env={"FAKE_GCLOUD_NO_ALPHA": "1"})
    assert 0 == result.returncode, result.stderr
    assert "gcloud alpha component is not installed" in result.stderr
    state = env.read_state()
    assert [] == state["alert_policies"]
    assert 11 == len(state["metrics"]) and 1 == len(state["dashboards"])


# ------------------------------------------------------------ ways back

OURS = [{"priority": 20001, "action": "deny-403", "description": "car1 x=202611291830 v=h s=manual"},
        {"priority": 20777, "action": "deny-403", "description": "car1 x=never v=c s=manual"}]
FOREIGN_IN_BAND = {"priority": 20500, "action": "deny-404", "description": "someone else's rule"}
OPERATOR = [{"priority": 2147483647, "action": "allow", "description": "default"},
            {"priority": 500, "action": "allow", "description": "car1 looks like ours but is outside the band"},
            {"priority": 21000, "action": "deny-403", "description": "car1 just past the band"}]


def _deployed(env: Env, cfg_dir: Path) -> Path:
    cfg = write_config(cfg_dir / "ways-back.toml", extra=PULLED)
    env.seed({"policies": {"ml-cluster-edge": {"name": "ml-cluster-edge", "region": None,
                                               "rules": OPERATOR + OURS + [FOREIGN_IN_BAND]}}})
    result = env.run("--region", REGION, "--with-monitoring", config=cfg)
    assert 0 == result.returncode, result.stderr
    return cfg


def _ours_left(state: dict) -> dict:
    return {
        "functions": state["functions"], "triggers": state["triggers"], "subscriptions": state["subscriptions"],
        "topics": state["topics"], "scheduler_jobs": state["scheduler_jobs"], "sinks": state["sinks"],
        "metrics": state["metrics"], "dashboards": state["dashboards"], "alert_policies": state["alert_policies"],
        "channels": state["channels"], "service_accounts": state["service_accounts"],
        "roles": {k: v for k, v in state["roles"].items() if not v.get("deleted")},
        "iam": [b for b in state["iam"] if "car-" in " ".join(b)],
    }


def test_destroy_after_deploy_removes_everything_and_keeps_the_band(env: Env, cfg_dir: Path) -> None:
    cfg = _deployed(env, cfg_dir)
    result = env.run("--region", REGION, "--destroy", config=cfg)
    assert 0 == result.returncode, result.stdout + result.stderr
    state = env.read_state()
    empty = {"functions": {}, "triggers": {}, "subscriptions": {}, "topics": [], "scheduler_jobs": {}, "sinks": {},
             "metrics": {}, "dashboards": {}, "alert_policies": [], "channels": [], "service_accounts": [],
             "roles": {}, "iam": []}
    assert empty == _ours_left(state)
    assert OPERATOR + OURS + [FOREIGN_IN_BAND] == state["policies"]["ml-cluster-edge"]["rules"]
    assert [] == [c for c in env.calls() if c[:3] == ["compute", "security-policies", "rules"]]
    again = env.run("--region", REGION, "--destroy", config=cfg)      # a re-run finds nothing to do
    assert 0 == again.returncode, again.stderr


def test_destroy_purge_band_deletes_only_the_responders_band_rules(env: Env, cfg_dir: Path) -> None:
    cfg = _deployed(env, cfg_dir)
    env.clear_log()
    result = env.run("--region", REGION, "--destroy", "--purge-band", config=cfg)
    assert 0 == result.returncode, result.stdout + result.stderr
    rules = env.read_state()["policies"]["ml-cluster-edge"]["rules"]
    assert OPERATOR + [FOREIGN_IN_BAND] == rules
    deleted = [c[4] for c in env.calls() if c[:4] == ["compute", "security-policies", "rules", "delete"]]
    assert ["20001", "20777"] == deleted
    calls = env.calls()
    assert index_of(calls, "functions", "delete") < index_of(calls, "compute", "security-policies", "rules", "delete")


def test_destroy_dry_run_lists_the_teardown(env: Env, cfg_dir: Path) -> None:
    cfg = write_config(cfg_dir / "pulled.toml", extra=PULLED)
    result = env.run("--region", REGION, "--destroy", "--dry-run", config=cfg)
    assert 0 == result.returncode, result.stderr
    out = result.stdout
    expected = ["+ gcloud scheduler jobs delete car-cleanup ", "+ gcloud scheduler jobs delete car-pull-drop ",
                *(f"+ gcloud functions delete {fn} " for fn in FUNCTIONS),
                "+ gcloud eventarc triggers delete ",
                *(f"+ gcloud logging sinks delete {s} " for s in ("car-lb-armor", "car-ids-threats", "car-firewall-denies")),
                "+ gcloud alpha monitoring policies delete ", "+ gcloud monitoring dashboards delete ",
                *(f"+ gcloud logging metrics delete car-{m} " for m in HEALTH_METRICS),
                "+ gcloud beta monitoring channels delete ",
                "+ gcloud pubsub subscriptions delete car-dead-letter-hold ",
                *(f"+ gcloud pubsub topics delete {t} " for t in TOPICS),
                "+ gcloud secrets remove-iam-policy-binding feed-token ",
                "+ gcloud projects remove-iam-policy-binding my-ml-project ",
                "+ gcloud iam roles delete car_responder ",
                f"+ gcloud iam service-accounts delete car-responder@{PROJECT}.iam.gserviceaccount.com "]
    assert [] == [e for e in expected if e not in out]
    assert "rules delete" not in out            # the band stays without --purge-band
    assert "--purge-band deletes them" in out
    assert [] == env.calls()
    flags = json.loads((FAKE.parent / "gcloud_flags.json").read_text())
    for line in [line for line in out.splitlines() if line.startswith("+ gcloud ")]:
        words = [w for w in line[len("+ gcloud "):].split(" ") if not w.startswith(("-", "'"))]
        assert any(" ".join(words).startswith(k) for k in flags["commands"]), line


def test_destroy_purge_band_dry_run_shows_the_band_deletes(env: Env) -> None:
    result = env.run("--region", REGION, "--destroy", "--purge-band", "--dry-run")
    assert 0 == result.returncode, result.stderr
    out = result.stdout
    assert "+ gcloud compute security-policies describe ml-cluster-edge --global" in out
    assert "+ gcloud compute security-policies rules delete PRIORITY_OF_EACH_BAND_RULE --security-policy=ml-cluster-edge" in out
    assert "priorities 20000..20999, description starting 'car1'" in out
    assert out.index("+ gcloud functions delete") < out.index("rules delete")
    assert [] == env.calls()


def test_purge_band_needs_destroy(env: Env) -> None:
    result = env.run("--region", REGION, "--purge-band")
    assert 2 == result.returncode
    assert "--purge-band goes with --destroy" in result.stderr
    assert [] == env.calls()


GROUP_PERMISSIONS = {"networksecurity.addressGroups.create", "networksecurity.addressGroups.delete",
                     "networksecurity.addressGroups.get", "networksecurity.addressGroups.list",
                     "networksecurity.addressGroups.update", "networksecurity.addressGroups.use",
                     "networksecurity.operations.get"}


def test_with_address_groups_enables_the_api_grants_the_group_permissions_and_warns_on_standard(
        env: Env, cfg_dir: Path) -> None:
    cfg = write_config(cfg_dir / "groups.toml")
    result = env.run("--region", REGION, "--with-address-groups", config=cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    state = env.read_state()
    assert "networksecurity.googleapis.com" in state["services"]
    assert GROUP_PERMISSIONS <= set(state["roles"]["car_responder"]["includedPermissions"])
    assert "not Enterprise" in result.stderr and "CA_STANDARD" in result.stderr
    tier = [c for c in env.calls() if c[:3] == ["compute", "project-info", "describe"]]
    assert len(tier) == 1


def test_with_address_groups_on_enterprise_does_not_warn(env: Env, cfg_dir: Path) -> None:
    env.seed({"backend_services": {"ml-web": {"name": "ml-web", "securityPolicy": ""}},
              "cloud_armor_tier": "CA_ENTERPRISE_PAYGO"})
    result = env.run("--region", REGION, "--with-address-groups", config=write_config(cfg_dir / "ent.toml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not Enterprise" not in result.stderr
    assert "Cloud Armor tier CA_ENTERPRISE_PAYGO" in result.stdout


def test_without_the_flag_nothing_of_address_groups_is_deployed(first_run) -> None:
    env, _ = first_run[:2]
    state = env.read_state()
    assert "networksecurity.googleapis.com" not in state["services"]
    assert not GROUP_PERMISSIONS & set(state["roles"]["car_responder"]["includedPermissions"])
    assert not [c for c in env.calls() if c[:2] == ["compute", "project-info"]]


def test_the_dry_run_shows_the_address_group_steps(env: Env, cfg_dir: Path) -> None:
    result = env.run("--region", REGION, "--dry-run", "--with-address-groups", config=write_config(cfg_dir / "d.toml"))
    assert result.returncode == 0, result.stderr
    assert env.calls() == []
    enable = next(line for line in result.stdout.splitlines() if line.startswith("+ gcloud services enable"))
    assert "networksecurity.googleapis.com" in enable
    assert "+ gcloud compute project-info describe --project=my-ml-project '--format=value(cloudArmorTier)'" in result.stdout
    role = next(line for line in result.stdout.splitlines() if line.startswith("+ gcloud iam roles create"))
    assert all(p in role for p in GROUP_PERMISSIONS)


def test_with_address_groups_refuses_a_regional_policy(env: Env, cfg_dir: Path) -> None:
    cfg = write_config(cfg_dir / "regional.toml")
    cfg.write_text(cfg.read_text().replace('region = ""', 'region = "us-east1"', 1))
    assert 'region = "us-east1"' in cfg.read_text()
    result = env.run("--region", REGION, "--with-address-groups", config=cfg)
    assert result.returncode == 2
    assert "only in global security policies" in result.stderr
    assert env.calls() == []


TARGETS_EXTRA = """
[[targets]]
name = "notebooks"
project = "nb-project"
policy = "nb-edge"
region = "us-east1"
band_start = 40000
band_end = 40999

[[targets]]
name = "registry"
project = "my-ml-project"
policy = "registry-edge"
band_start = 20000
band_end = 20999
"""


def test_every_targets_project_gets_the_role_and_its_binding(env: Env, cfg_dir: Path) -> None:
    """[[targets]]: the custom role is created in each other project and
    bound there to the runtime account; it covers global and regional policies."""
    cfg = write_config(cfg_dir / "targets.toml", extra=TARGETS_EXTRA)
    dry = env.run("--region", REGION, "--dry-run", config=cfg)
    assert dry.returncode == 0, dry.stderr
    assert env.calls() == []
    text = "\n".join(line for line in dry.stdout.splitlines() if line.startswith("+ gcloud "))
    assert "+ gcloud iam roles create car_responder --project=nb-project" in text
    assert ("+ gcloud projects add-iam-policy-binding nb-project "
            "--member=serviceAccount:car-responder@my-ml-project.iam.gserviceaccount.com "
            "--role=projects/nb-project/roles/car_responder") in text
    assert text.count("+ gcloud iam roles create ") == 2  # my-ml-project and nb-project, once each

    env.seed({"project": {"projectId": PROJECT, "projectNumber": "123456789012", "others": ["nb-project"]},
              "backend_services": {"ml-web": {"name": "ml-web", "securityPolicy": ""}}})
    result = env.run("--region", REGION, config=cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    state = env.read_state()
    main, other = state["roles"]["car_responder"], state["roles"]["nb-project/car_responder"]
    assert other["name"] == "projects/nb-project/roles/car_responder"
    for role in (main, other):
        assert "compute.securityPolicies.update" in role["includedPermissions"]
        assert "compute.regionSecurityPolicies.update" in role["includedPermissions"]
    assert ["projects:nb-project", "serviceAccount:car-responder@my-ml-project.iam.gserviceaccount.com",
            "projects/nb-project/roles/car_responder"] in state["iam"]
    # A second run finds both roles up to date.
    again = env.run("--region", REGION, config=cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("custom role car_responder is up to date") == 2
