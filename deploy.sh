#!/usr/bin/env bash
# Deploys the Cloud Armor responder: APIs, service accounts and their custom
# role, Pub/Sub topics, the base security policy (bootstrap only when it does
# not exist), the five Cloud Run functions (gen2), dead-lettering on their
# Eventarc subscriptions, the cleanup schedule, the log sinks and, with
# --with-monitoring, an example probe metric and alert policy; and its own
# health as code: log-based metrics, a dashboard and alert policies from the
# files in deploy/ (created, then updated on every run).
#
# Idempotent: everything is checked before it is created; a second run
# creates nothing and updates what may have changed. An existing security
# policy is never modified. --destroy removes what it created.
# See docs/DEPLOY.md for every command, permission and step.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEFAULT_CONFIG="$ROOT/config/responder.toml"
# The project's venv (./run.sh or ./test.sh make it) validates the whole
# configuration, detectors included; a bare python3 does the basic checks.
if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then
  PYTHON="$ROOT/.venv/bin/python"
fi
PYTHON=${PYTHON:-python3}
# Seconds between retries of IAM bindings (new service accounts take a
# moment to become visible to IAM).
RETRY_SLEEP=${DEPLOY_RETRY_SLEEP:-5}
DEFAULT_RULE_PRIORITY=2147483647

usage() {
  cat <<'EOF'
Usage: ./deploy.sh [options]

Deploys the Cloud Armor responder (five Pub/Sub-triggered Cloud Run functions,
gen2) and everything it needs, reading config/responder.toml.

Options (override the config file):
  --project ID        GCP project               (default: [policy].project)
  --region REGION     region of the functions, topics' triggers and the
                      scheduler job (default: [deploy].region, else
                      [policy].region); the policy's own region is
                      [policy].region ("" = global)
  --policy NAME       Cloud Armor security policy  (default: [policy].name)
  --band-start N      first priority of the band   (default: [band].start)
  --band-end N        last priority of the band    (default: [band].end)
  --config FILE       configuration file (default: config/responder.toml);
                      must lie inside this directory, which is deployed
  --with-monitoring   also create the Pub/Sub notification channel, the
                      example probe metric and its alert policy
  --with-address-groups
                      feeds stored in address groups (Cloud Armor
                      Enterprise): enable the Network Security API, add the
                      address-group permissions to the custom role, and
                      warn when the project's Cloud Armor tier is not
                      Enterprise (global policies only)
  --dry-run           print every gcloud command in order, run none
                      (assumes nothing exists yet; with --destroy, that
                      everything exists)
  --destroy           remove what deploy.sh created (functions, triggers,
                      topics, subscriptions, scheduler jobs, sinks, metrics,
                      dashboard, alert policies, channel, bindings, role and
                      service accounts); the policy and its rules stay
  --purge-band        with --destroy: also delete the band's own rules
                      (priorities in the band whose description starts with
                      the owner tag); never a rule outside the band
  -h, --help          show this help

Exit status: 0 done, 1 a command failed, 2 usage error, 3 invalid config.
EOF
}

usage_error() {
  echo "deploy.sh: $1" >&2
  echo "Try './deploy.sh --help'." >&2
  exit 2
}

die() {
  echo "deploy.sh: error: $*" >&2
  exit 1
}

warn() {
  echo "deploy.sh: WARNING: $*" >&2
}

# ---------------------------------------------------------------- arguments
OPT_PROJECT="" OPT_REGION="" OPT_POLICY="" OPT_BAND_START="" OPT_BAND_END=""
CONFIG="$DEFAULT_CONFIG" DRY_RUN=0 WITH_MONITORING=0 DESTROY=0 PURGE_BAND=0
WITH_ADDRESS_GROUPS=0

need_value() {
  # $1 = flag, $2 = number of remaining arguments (including the flag)
  [[ $2 -ge 2 ]] || usage_error "option $1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --project) need_value "$1" $#; OPT_PROJECT=$2; shift 2 ;;
    --project=*) OPT_PROJECT=${1#*=}; shift ;;
    --region) need_value "$1" $#; OPT_REGION=$2; shift 2 ;;
    --region=*) OPT_REGION=${1#*=}; shift ;;
    --policy) need_value "$1" $#; OPT_POLICY=$2; shift 2 ;;
    --policy=*) OPT_POLICY=${1#*=}; shift ;;
    --band-start) need_value "$1" $#; OPT_BAND_START=$2; shift 2 ;;
    --band-start=*) OPT_BAND_START=${1#*=}; shift ;;
    --band-end) need_value "$1" $#; OPT_BAND_END=$2; shift 2 ;;
    --band-end=*) OPT_BAND_END=${1#*=}; shift ;;
    --config) need_value "$1" $#; CONFIG=$2; shift 2 ;;
    --config=*) CONFIG=${1#*=}; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --with-monitoring) WITH_MONITORING=1; shift ;;
    --destroy) DESTROY=1; shift ;;
    --purge-band) PURGE_BAND=1; shift ;;
    --with-address-groups) WITH_ADDRESS_GROUPS=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unrecognized argument: $1" ;;
  esac
done

if [[ $PURGE_BAND -eq 1 && $DESTROY -eq 0 ]]; then
  usage_error "--purge-band goes with --destroy"
fi

for pair in "--band-start:$OPT_BAND_START" "--band-end:$OPT_BAND_END"; do
  value=${pair#*:}
  if [[ -n $value && ! $value =~ ^[0-9]+$ ]]; then
    usage_error "${pair%%:*} expects a non-negative integer, got '$value'"
  fi
done

# ------------------------------------------------------------ configuration
# A small Python reader (stdlib tomllib; Python >= 3.11): applies the flags,
# validates the whole file with config.settings when it can be imported, and
# validates the [deploy] and [bootstrap] sections, which it owns. It prints
# key=value lines; nothing is eval'ed.
read_config() {
  "$PYTHON" - "$CONFIG" "$ROOT" "$OPT_PROJECT" "$OPT_REGION" "$OPT_POLICY" \
    "$OPT_BAND_START" "$OPT_BAND_END" <<'PY'
import ipaddress
import math
import os
import re
import sys

try:
    import tomllib
except ImportError:
    sys.exit("deploy.sh: config: Python 3.11 or newer is needed (tomllib); set PYTHON=...")

cfg_path, root, o_project, o_region, o_policy, o_start, o_end = sys.argv[1:8]
MAX_PRIORITY = 2147483646


def fail(msg):
    print(f"deploy.sh: config: {msg}", file=sys.stderr)
    sys.exit(3)


try:
    with open(cfg_path, "rb") as fh:
        doc = tomllib.load(fh)
except FileNotFoundError:
    fail(f"file not found: {cfg_path}")
except tomllib.TOMLDecodeError as exc:
    fail(f"{cfg_path}: not valid TOML: {exc}")

for section in ("policy", "band", "deploy", "bootstrap"):
    if not isinstance(doc.setdefault(section, {}), dict):
        fail(f"[{section}] must be a table")
policy, band, dep, boot = doc["policy"], doc["band"], doc["deploy"], doc["bootstrap"]
if o_project:
    policy["project"] = o_project
if o_policy:
    policy["name"] = o_policy
if o_start:
    band["start"] = int(o_start)
if o_end:
    band["end"] = int(o_end)

# The product's own validation of every section it owns, when importable.
sys.path.insert(0, root)
try:
    from config import settings as product_settings
except Exception as exc:  # noqa: BLE001 - fall back to the checks below
    product_settings = None
    print(f"deploy.sh: note: config.settings not importable ({exc}); basic checks only",
          file=sys.stderr)
if product_settings is not None:
    try:
        product_settings.from_dict(doc)
    except product_settings.ConfigError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a reader of another section is broken
        print(f"deploy.sh: note: config.settings could not validate the file "
              f"({type(exc).__name__}: {exc}); basic checks only", file=sys.stderr)


def get(table, name, key, kind, default):
    value = table.get(key, default)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        fail(f"{name}.{key}: expected {kind.__name__}, got {value!r}")
    return value


project = get(policy, "policy", "project", str, "")
name = get(policy, "policy", "name", str, "")
policy_region = get(policy, "policy", "region", str, "")
if not re.fullmatch(r"[a-z][-a-z0-9]{4,28}[a-z0-9]", project):
    fail(f"policy.project: not a valid project ID: {project!r}")
if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name):
    fail(f"policy.name: not a valid resource name: {name!r}")
start = get(band, "band", "start", int, None)
end = get(band, "band", "end", int, None)
if not 0 <= start < end <= MAX_PRIORITY:
    fail(f"band: need 0 <= start < end <= {MAX_PRIORITY}, got {start}..{end}")
owner_tag = get(band, "band", "owner_tag", str, "car1")
# [[targets]]: every other policy's project gets the custom role and its
# binding; the role covers global and regional policies as the targets need.
target_projects, target_scopes = [], {"regional" if policy_region else "global"}
targets_list = doc.get("targets", [])
if not isinstance(targets_list, list):
    fail("targets: expected [[targets]] tables")
for i, tgt in enumerate(targets_list):
    if not isinstance(tgt, dict):
        fail(f"targets[{i}]: expected a table")
    tproject = get(tgt, f"targets[{i}]", "project", str, "")
    if not re.fullmatch(r"[a-z][-a-z0-9]{4,28}[a-z0-9]", tproject):
        fail(f"targets[{i}].project: not a valid project ID: {tproject!r}")
    if tproject not in target_projects:
        target_projects.append(tproject)
    target_scopes.add("regional" if get(tgt, f"targets[{i}]", "region", str, "") else "global")

DEPLOY_KEYS = {
    "region", "runtime", "memory", "cpu", "max_instances", "concurrency", "timeout",
    "cleanup_schedule", "topic_prefix", "max_delivery_attempts", "min_retry_delay",
    "max_retry_delay", "probe_path_regex", "firewall_ports", "probe_alert_threshold",
    "secrets", "alert_band_share", "alert_channels",
}
for key in dep:
    if key not in DEPLOY_KEYS:
        fail(f"deploy.{key}: unknown setting (known: {', '.join(sorted(DEPLOY_KEYS))})")
BOOT_KEYS = {"trusted_ranges", "trusted_priority", "default_action", "backend_services"}
for key in boot:
    if key not in BOOT_KEYS:
        fail(f"bootstrap.{key}: unknown setting (known: {', '.join(sorted(BOOT_KEYS))})")

fn_region = o_region or get(dep, "deploy", "region", str, "") or policy_region
if not fn_region:
    fail("no functions region: pass --region, or set [deploy].region or [policy].region")
if not re.fullmatch(r"[a-z]+-[a-z]+[0-9]+", fn_region):
    fail(f"region: not a region name: {fn_region!r}")
runtime = get(dep, "deploy", "runtime", str, "python312")
if not re.fullmatch(r"python3[0-9]+", runtime):
    fail(f"deploy.runtime: expected e.g. python312, got {runtime!r}")
memory = get(dep, "deploy", "memory", str, "512Mi")
if not re.fullmatch(r"[0-9]+(k|M|G|Ki|Mi|Gi)", memory):
    fail(f"deploy.memory: expected e.g. 512Mi or 1Gi, got {memory!r}")
max_instances = get(dep, "deploy", "max_instances", int, 10)
concurrency = get(dep, "deploy", "concurrency", int, 1)
if max_instances < 1 or concurrency < 1:
    fail("deploy.max_instances and deploy.concurrency must be at least 1")
cpu = dep.get("cpu", "")
if isinstance(cpu, bool) or not isinstance(cpu, (str, int, float)):
    fail(f"deploy.cpu: expected e.g. 1 or \"0.583\", got {cpu!r}")
cpu = str(cpu)
if concurrency > 1 and not cpu:
    cpu = "1"  # gen2 needs at least one vCPU for concurrency > 1
timeout = get(dep, "deploy", "timeout", str, "540s")
m = re.fullmatch(r"([0-9]+)s", timeout)
if not m or not 1 <= int(m.group(1)) <= 540:
    fail(f"deploy.timeout: expected 1s..540s (event-driven limit), got {timeout!r}")
schedule = get(dep, "deploy", "cleanup_schedule", str, "*/10 * * * *")
if len(schedule.split()) != 5:
    fail(f"deploy.cleanup_schedule: expected a 5-field cron expression, got {schedule!r}")
prefix = get(dep, "deploy", "topic_prefix", str, "car")
if not re.fullmatch(r"[a-z][a-z0-9-]{1,18}[a-z0-9]", prefix):
    fail(f"deploy.topic_prefix: 3 to 20 of a-z, 0-9 and '-', starting with a letter, got {prefix!r}")
attempts = get(dep, "deploy", "max_delivery_attempts", int, 5)
if not 5 <= attempts <= 100:
    fail(f"deploy.max_delivery_attempts: must be between 5 and 100, got {attempts}")
delays = []
for key, default in (("min_retry_delay", "10s"), ("max_retry_delay", "600s")):
    value = get(dep, "deploy", key, str, default)
    m = re.fullmatch(r"([0-9]+)s", value)
    if not m or int(m.group(1)) > 600:
        fail(f"deploy.{key}: expected 0s..600s, got {value!r}")
    delays.append(value)
probe_regex = get(dep, "deploy", "probe_path_regex", str,
                  "/(api/jobs|api/kernels|api/terminals|api/sessions|api/2[.]0/mlflow|"
                  "ajax-api/2[.]0/mlflow|v2/repository|pipeline/apis|api/v1/namespaces)")
if '"' in probe_regex or "\\" in probe_regex:
    fail("deploy.probe_path_regex: must not contain '\"' or '\\' (use [.] for a dot)")
ports = get(dep, "deploy", "firewall_ports", list,
            [22, 2379, 2380, 6379, 6443, 8265, 8888, 10001, 10250])
if not ports or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                        for p in ports):
    fail(f"deploy.firewall_ports: expected a non-empty list of ports, got {ports!r}")
threshold = get(dep, "deploy", "probe_alert_threshold", int, 20)
share = dep.get("alert_band_share", 0.8)
if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
    fail(f"deploy.alert_band_share: a share of band.max_rules between 0 and 1, got {share!r}")
channels = get(dep, "deploy", "alert_channels", list, [])
for i, channel in enumerate(channels):
    if not isinstance(channel, str) or not re.fullmatch(r"projects/[^/]+/notificationChannels/[0-9]+", channel):
        fail(f"deploy.alert_channels[{i}]: expected projects/PROJECT/notificationChannels/ID, got {channel!r}")
max_rules = band.get("max_rules", 0)
if isinstance(max_rules, bool) or not isinstance(max_rules, int) or max_rules < 0:
    fail(f"band.max_rules: expected a non-negative integer, got {max_rules!r}")
max_rules = max_rules or (end - start + 1)

ranges = get(boot, "bootstrap", "trusted_ranges", list, [])
for i, text in enumerate(ranges):
    try:
        ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        fail(f"bootstrap.trusted_ranges[{i}]: not an IP address or CIDR: {text!r}")
trusted_priority = get(boot, "bootstrap", "trusted_priority", int, 1000)
n_rules = math.ceil(len(ranges) / 10)
if ranges:
    last = trusted_priority + n_rules - 1
    if trusted_priority < 0 or last > MAX_PRIORITY:
        fail(f"bootstrap.trusted_priority: {trusted_priority} is out of range")
    if not (last < start or trusted_priority > end):
        fail(f"bootstrap.trusted_priority: priorities {trusted_priority}..{last} overlap the band {start}..{end}")
action = get(boot, "bootstrap", "default_action", str, "allow")
ACTIONS = {"allow": "allow", "deny(403)": "deny-403", "deny(404)": "deny-404", "deny(502)": "deny-502"}
if action not in ACTIONS:
    fail(f"bootstrap.default_action: one of {', '.join(ACTIONS)}, got {action!r}")
backends = get(boot, "bootstrap", "backend_services", list, [])
for i, svc in enumerate(backends):
    if not isinstance(svc, str) or not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", svc):
        fail(f"bootstrap.backend_services[{i}]: not a resource name: {svc!r}")

# Feed pulls: one Cloud Scheduler job per feed with a url ([feeds.NAME]),
# publishing {"action":"pull","feed":NAME} on the threat-feed topic. Header
# values come from environment variables ("env:NAME"), which [deploy.secrets]
# maps from Secret Manager (NAME = "secret-name:version").
feeds = doc.get("feeds", {})
pulls = []
needed_env = {}
for fname, ftable in (feeds.items() if isinstance(feeds, dict) else []):
    if not isinstance(ftable, dict) or not ftable.get("url"):
        continue
    if product_settings is None:
        fail(f"feeds.{fname}: a feed with a url needs config.settings importable (run ./test.sh once to make .venv)")
    cron = product_settings.schedule_of(str(ftable.get("every", "1h")), f"feeds.{fname}.every")
    pulls.append(f"{fname}={cron}")
    for header, ref in (ftable.get("headers") or {}).items():
        needed_env[str(ref).removeprefix("env:")] = f"feeds.{fname}.headers.{header}"
secrets_table = dep.get("secrets", {})
if not isinstance(secrets_table, dict):
    fail("deploy.secrets: expected a table of ENV_NAME = \"secret-name:version\"")
secret_specs = []
for var, ref in secrets_table.items():
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", var) or var.startswith(("RESPONDER_", "X_GOOGLE_")):
        fail(f"deploy.secrets.{var}: not a usable environment variable name")
    if not isinstance(ref, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,255}:(latest|[0-9]+)", ref):
        fail(f"deploy.secrets.{var}: expected \"secret-name:version\" (version: latest or a number), got {ref!r}")
    secret_specs.append(f"{var}={ref}")
for var, where in sorted(needed_env.items()):
    if var not in secrets_table:
        fail(f"{where}: env:{var} is not mapped: add [deploy.secrets] {var} = \"secret-name:latest\"")

# RESPONDER_CONFIG: a non-default file must be deployed with the source.
config_env = ""
real_cfg = os.path.realpath(cfg_path)
real_root = os.path.realpath(root)
if real_cfg != os.path.join(real_root, "config", "responder.toml"):
    if os.path.commonpath([real_cfg, real_root]) != real_root:
        fail(f"--config {cfg_path}: must lie inside {root}, which is the deployed source, "
             "so that the functions can read it")
    config_env = os.path.relpath(real_cfg, real_root)

out = {
    "project": project, "policy": name, "policy_region": policy_region,
    "band_start": start, "band_end": end, "owner_tag": owner_tag,
    "region": fn_region, "runtime": runtime, "memory": memory, "cpu": cpu,
    "max_instances": max_instances, "concurrency": concurrency, "timeout": timeout,
    "schedule": schedule, "prefix": prefix, "max_delivery_attempts": attempts,
    "min_retry_delay": delays[0], "max_retry_delay": delays[1],
    "probe_regex": probe_regex, "firewall_ports": " OR ".join(str(p) for p in ports),
    "probe_threshold": threshold,
    "trusted_ranges": " ".join(str(r) for r in ranges), "trusted_priority": trusted_priority,
    "default_action": ACTIONS[action], "backend_services": " ".join(backends),
    "config_env": config_env,
    "target_projects": " ".join(p for p in target_projects if p != (o_project or project)),
    "target_scopes": " ".join(sorted(target_scopes)),
    "pulls": " ".join(p.replace(" ", "_") for p in pulls),
    "secrets": ",".join(secret_specs),
    "max_rules": max_rules, "band_alert_rules": round(share * max_rules, 2),
    "band_alert_percent": round(share * 100), "alert_channels": ",".join(channels),
}
for key, value in out.items():
    value = str(value)
    if "\n" in value:
        fail(f"{key}: must not contain a newline")
    print(f"{key}={value}")
PY
}

cfg_out=$(read_config) || exit $?

PROJECT="" POLICY="" POLICY_REGION="" BAND_START="" BAND_END="" OWNER_TAG=""
REGION="" RUNTIME="" MEMORY="" CPU="" MAX_INSTANCES="" CONCURRENCY="" TIMEOUT=""
SCHEDULE="" PREFIX="" MAX_DELIVERY_ATTEMPTS="" MIN_RETRY_DELAY="" MAX_RETRY_DELAY=""
PROBE_REGEX="" FIREWALL_PORTS="" PROBE_THRESHOLD="" TRUSTED_RANGES="" TRUSTED_PRIORITY=""
DEFAULT_ACTION="" BACKEND_SERVICES="" CONFIG_ENV="" PULLS="" SECRETS=""
MAX_RULES="" BAND_ALERT_RULES="" BAND_ALERT_PERCENT="" ALERT_CHANNELS="" TARGET_PROJECTS="" TARGET_SCOPES=""
while IFS='=' read -r key value; do
  case $key in
    project) PROJECT=$value ;;
    policy) POLICY=$value ;;
    policy_region) POLICY_REGION=$value ;;
    band_start) BAND_START=$value ;;
    band_end) BAND_END=$value ;;
    owner_tag) OWNER_TAG=$value ;;
    region) REGION=$value ;;
    runtime) RUNTIME=$value ;;
    memory) MEMORY=$value ;;
    cpu) CPU=$value ;;
    max_instances) MAX_INSTANCES=$value ;;
    concurrency) CONCURRENCY=$value ;;
    timeout) TIMEOUT=$value ;;
    schedule) SCHEDULE=$value ;;
    prefix) PREFIX=$value ;;
    max_delivery_attempts) MAX_DELIVERY_ATTEMPTS=$value ;;
    min_retry_delay) MIN_RETRY_DELAY=$value ;;
    max_retry_delay) MAX_RETRY_DELAY=$value ;;
    probe_regex) PROBE_REGEX=$value ;;
    firewall_ports) FIREWALL_PORTS=$value ;;
    probe_threshold) PROBE_THRESHOLD=$value ;;
    trusted_ranges) TRUSTED_RANGES=$value ;;
    trusted_priority) TRUSTED_PRIORITY=$value ;;
    default_action) DEFAULT_ACTION=$value ;;
    backend_services) BACKEND_SERVICES=$value ;;
    config_env) CONFIG_ENV=$value ;;
    pulls) PULLS=$value ;;
    secrets) SECRETS=$value ;;
    max_rules) MAX_RULES=$value ;;
    band_alert_rules) BAND_ALERT_RULES=$value ;;
    band_alert_percent) BAND_ALERT_PERCENT=$value ;;
    alert_channels) ALERT_CHANNELS=$value ;;
    target_projects) TARGET_PROJECTS=$value ;;
    target_scopes) TARGET_SCOPES=$value ;;
    *) die "internal: unexpected config key '$key'" ;;
  esac
done <<<"$cfg_out"

# ------------------------------------------------------------------- names
RUNTIME_SA_ID="$PREFIX-responder"
TRIGGER_SA_ID="$PREFIX-trigger"
RUNTIME_SA="$RUNTIME_SA_ID@$PROJECT.iam.gserviceaccount.com"
TRIGGER_SA="$TRIGGER_SA_ID@$PROJECT.iam.gserviceaccount.com"
ROLE_ID="${PREFIX//-/_}_responder"
ROLE_NAME="projects/$PROJECT/roles/$ROLE_ID"
TOPIC_FEED="$PREFIX-threat-feed"
TOPIC_LOG="$PREFIX-log-sink"
TOPIC_ALERTS="$PREFIX-alerts"
TOPIC_MANUAL="$PREFIX-manual"
TOPIC_CLEANUP="$PREFIX-cleanup"
TOPIC_DEAD="$PREFIX-dead-letter"
DEAD_SUB="$PREFIX-dead-letter-hold"
SCHEDULER_JOB="$PREFIX-cleanup"
SINK_LB="$PREFIX-lb-armor"
SINK_IDS="$PREFIX-ids-threats"
SINK_FW="$PREFIX-firewall-denies"
METRIC="$PREFIX-ml-probes"
DASHBOARD_NAME="$PREFIX: Cloud Armor responder"
ALERT_FILES=(breaker band-share dead-letter function-errors)
CHANNEL_NAME="$PREFIX-alerts"
ALERT_POLICY_NAME="$PREFIX: ML control-plane probes per client"
# function name | entry point | topic
FUNCTIONS=(
  "$PREFIX-threat-feed|on_threat_feed|$TOPIC_FEED"
  "$PREFIX-log-sink|on_log_sink|$TOPIC_LOG"
  "$PREFIX-alert|on_alert|$TOPIC_ALERTS"
  "$PREFIX-manual|on_manual|$TOPIC_MANUAL"
  "$PREFIX-cleanup|on_cleanup|$TOPIC_CLEANUP"
)

REGIONAL_PERMISSIONS="compute.regionSecurityPolicies.get,compute.regionSecurityPolicies.update,compute.regionOperations.get"
GLOBAL_PERMISSIONS="compute.securityPolicies.get,compute.securityPolicies.update,compute.securityPolicies.setLabels,compute.globalOperations.get"
if [[ -n $POLICY_REGION ]]; then
  POLICY_LOC=(--region="$POLICY_REGION")
  RULE_LOC=(--region="$POLICY_REGION")
  LB_RESOURCE="http_external_regional_lb_rule"
  ROLE_PERMISSIONS="$REGIONAL_PERMISSIONS,logging.logEntries.list"
else
  POLICY_LOC=(--global)
  RULE_LOC=()
  LB_RESOURCE="http_load_balancer"
  ROLE_PERMISSIONS="$GLOBAL_PERMISSIONS,logging.logEntries.list"
fi
# [[targets]] of the other scope: the one role (per project) covers both.
if [[ " $TARGET_SCOPES " == *" regional "* && -z $POLICY_REGION ]]; then
  ROLE_PERMISSIONS="$ROLE_PERMISSIONS,$REGIONAL_PERMISSIONS"
elif [[ " $TARGET_SCOPES " == *" global "* && -n $POLICY_REGION ]]; then
  ROLE_PERMISSIONS="$ROLE_PERMISSIONS,$GLOBAL_PERMISSIONS"
fi

SERVICES=(
  iam.googleapis.com cloudfunctions.googleapis.com run.googleapis.com
  cloudbuild.googleapis.com artifactregistry.googleapis.com eventarc.googleapis.com
  pubsub.googleapis.com cloudscheduler.googleapis.com compute.googleapis.com
  logging.googleapis.com monitoring.googleapis.com
)
if [[ -n $SECRETS ]]; then
  SERVICES+=(secretmanager.googleapis.com)
fi

# --with-address-groups (README "Address groups"): feeds stored in Cloud Armor
# Enterprise address groups need the Network Security API and these
# permissions (manage the responder's groups, reference them from rules,
# poll their operations). Groups are usable only in global policies.
if [[ $WITH_ADDRESS_GROUPS -eq 1 ]]; then
  [[ -z $POLICY_REGION ]] || usage_error "--with-address-groups: address groups are usable only in global security policies ([policy].region is '$POLICY_REGION')"
  SERVICES+=(networksecurity.googleapis.com)
  ROLE_PERMISSIONS+=",networksecurity.addressGroups.create,networksecurity.addressGroups.delete"
  ROLE_PERMISSIONS+=",networksecurity.addressGroups.get,networksecurity.addressGroups.list"
  ROLE_PERMISSIONS+=",networksecurity.addressGroups.update,networksecurity.addressGroups.use"
  ROLE_PERMISSIONS+=",networksecurity.operations.get"
fi

# ------------------------------------------------------------ gcloud helpers
exec 3>&1 # the plan and progress go to fd 3 (stdout), even inside $(...)

quote_arg() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

show() {
  local out="+" arg
  for arg in "$@"; do
    out+=" $(quote_arg "$arg")"
  done
  printf '%s\n' "$out" >&3
}

step() {
  printf '\n# %s\n' "$*" >&3
}

# show_file FILE: in --dry-run, prints a generated file as comment lines.
show_file() {
  if [[ $DRY_RUN -eq 1 ]]; then
    printf '# %s:\n' "$1" >&3
    sed 's/^/#   /' "$1" >&3
  fi
}

note() {
  printf '  -> %s\n' "$*" >&3
}

# run CMD...: a command that changes something. Printed, then run (not in
# --dry-run).
run() {
  show "$@"
  if [[ $DRY_RUN -eq 0 ]]; then
    "$@"
  fi
}

# run_retry CMD...: like run, retried a few times (IAM is eventually
# consistent right after a service account or a function is created).
run_retry() {
  show "$@"
  [[ $DRY_RUN -eq 1 ]] && return 0
  local attempt
  for attempt in 1 2 3 4 5; do
    if "$@"; then
      return 0
    fi
    [[ $attempt -lt 5 ]] && warn "retrying in ${RETRY_SLEEP}s: $*" && sleep "$RETRY_SLEEP"
  done
  die "failed 5 times: $*"
}

# exists CMD...: a read-only check. 0 if the resource exists, 1 if gcloud
# reports NOT_FOUND; any other failure stops the script. In --dry-run it runs
# nothing and answers 1 (nothing exists).
exists() {
  [[ $DRY_RUN -eq 1 ]] && return 1
  local err
  if err=$("$@" 2>&1 >/dev/null); then
    return 0
  fi
  if grep -qiE 'NOT_FOUND|not found|does not exist|notFound' <<<"$err"; then
    return 1
  fi
  die "check failed: $*"$'\n'"$err"
}

# query PLACEHOLDER CMD...: a read-only command whose output is needed.
# In --dry-run it is printed and PLACEHOLDER is returned instead.
query() {
  local placeholder=$1
  shift
  if [[ $DRY_RUN -eq 1 ]]; then
    show "$@"
    printf '%s\n' "$placeholder"
    return 0
  fi
  "$@"
}

# ------------------------------------------------------------------ destroy
# run_gone CMD...: a delete that may find its target already gone (a
# re-run, or a resource removed by an earlier delete): NOT_FOUND is fine.
run_gone() {
  show "$@"
  [[ $DRY_RUN -eq 1 ]] && return 0
  local err
  if err=$("$@" 2>&1 >/dev/null); then
    return 0
  fi
  if grep -qiE 'NOT_FOUND|not found|does not exist|notFound' <<<"$err"; then
    note "already gone"
    return 0
  fi
  die "failed: $*"$'\n'"$err"
}

# lookup PLACEHOLDER CMD...: a list query in --destroy: in --dry-run it is
# shown and PLACEHOLDER answers (everything is assumed to exist).
lookup() {
  query "$@"
}

destroy() {
  printf 'Removing the Cloud Armor responder\n' >&3
  printf '  project %s, functions region %s, policy %s (%s), band %s..%s%s\n' \
    "$PROJECT" "$REGION" "$POLICY" "${POLICY_REGION:-global}" "$BAND_START" "$BAND_END" \
    "$([[ $DRY_RUN -eq 1 ]] && echo ', DRY RUN: nothing is run')" >&3

  step "1. Cloud Scheduler jobs: $SCHEDULER_JOB and the feed pulls $PREFIX-pull-*"
  local jobs job
  if [[ $DRY_RUN -eq 1 ]]; then
    show gcloud scheduler jobs list --location="$REGION" --project="$PROJECT" --format='value(name)'
    jobs="$SCHEDULER_JOB"
    for pull in $PULLS; do
      jobs+=$'\n'"$PREFIX-pull-${pull%%=*}"
    done
  else
    jobs=$(gcloud scheduler jobs list --location="$REGION" --project="$PROJECT" --format='value(name)' |
      sed 's|.*/||' | grep -E "^($SCHEDULER_JOB|$PREFIX-pull-[a-z0-9-]+)\$" || true)
  fi
  for job in $jobs; do
    run_gone gcloud scheduler jobs delete "$job" --location="$REGION" --project="$PROJECT" --quiet
  done

  step "2. Functions and their Eventarc triggers (a trigger's subscription goes with it)"
  local spec fn entry topic trigger
  for spec in "${FUNCTIONS[@]}"; do
    IFS='|' read -r fn entry topic <<<"$spec"
    if ! exists gcloud functions describe "$fn" --region="$REGION" --project="$PROJECT" --v2 && [[ $DRY_RUN -eq 0 ]]; then
      note "function $fn: already gone"
      continue
    fi
    trigger=$(query "TRIGGER_OF_$fn" gcloud functions describe "$fn" --region="$REGION" --project="$PROJECT" \
      --v2 --format='value(eventTrigger.trigger)')
    run_gone gcloud functions delete "$fn" --region="$REGION" --project="$PROJECT" --quiet
    # Deleting a gen2 function deletes its trigger; one left behind is deleted here.
    if [[ -n $trigger ]] && { [[ $DRY_RUN -eq 1 ]] || exists gcloud eventarc triggers describe "${trigger##*/}" \
        --location="$REGION" --project="$PROJECT"; }; then
      run_gone gcloud eventarc triggers delete "${trigger##*/}" --location="$REGION" --project="$PROJECT" --quiet
    fi
  done

  if [[ $PURGE_BAND -eq 1 ]]; then
    step "2b. --purge-band: the band's own rules (priorities $BAND_START..$BAND_END, description starting '$OWNER_TAG'); no other rule"
    local policy_json priorities prio
    if [[ $DRY_RUN -eq 1 ]]; then
      show gcloud compute security-policies describe "$POLICY" "${POLICY_LOC[@]}" --project="$PROJECT" --format=json
      show gcloud compute security-policies rules delete "PRIORITY_OF_EACH_BAND_RULE" --security-policy="$POLICY" \
        ${RULE_LOC[@]+"${RULE_LOC[@]}"} --project="$PROJECT" --quiet
    elif exists gcloud compute security-policies describe "$POLICY" "${POLICY_LOC[@]}" --project="$PROJECT"; then
      policy_json=$(gcloud compute security-policies describe "$POLICY" "${POLICY_LOC[@]}" --project="$PROJECT" --format=json)
      priorities=$("$PYTHON" -c '
import json, sys
start, end, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for rule in json.load(sys.stdin).get("rules", []):
    prio = int(rule.get("priority", -1))
    words = (rule.get("description") or "").split()
    if start <= prio <= end and words and words[0] == tag:
        print(prio)
' "$BAND_START" "$BAND_END" "$OWNER_TAG" <<<"$policy_json")
      [[ -n $priorities ]] || note "the band holds no rule of the responder"
      for prio in $priorities; do
        run_gone gcloud compute security-policies rules delete "$prio" --security-policy="$POLICY" \
          ${RULE_LOC[@]+"${RULE_LOC[@]}"} --project="$PROJECT" --quiet
      done
    else
      note "policy $POLICY does not exist: no band to purge"
    fi
  else
    note "the band's rules stay (they expire with their TTL only while the responder runs): --purge-band deletes them"
  fi

  step "3. Log sinks"
  local sink
  for sink in "$SINK_LB" "$SINK_IDS" "$SINK_FW"; do
    if exists gcloud logging sinks describe "$sink" --project="$PROJECT" || [[ $DRY_RUN -eq 1 ]]; then
      run_gone gcloud logging sinks delete "$sink" --project="$PROJECT" --quiet
    fi
  done

  step "4. Alert policies, dashboard, log-based metrics, notification channel"
  local display name names metric_id
  for display in "$PREFIX: flood breaker tripped" "$PREFIX: band nearly full" \
      "$PREFIX: dead-lettered messages waiting" "$PREFIX: function error rate" "$ALERT_POLICY_NAME"; do
    if [[ $DRY_RUN -eq 1 ]]; then
      names="POLICY_NAMED_${display//[^A-Za-z0-9]/_}"
      show gcloud alpha monitoring policies list --project="$PROJECT" --filter="displayName=\"$display\"" --format='value(name)'
    elif ! names=$(gcloud alpha monitoring policies list --project="$PROJECT" --filter="displayName=\"$display\"" \
        --format='value(name)' 2>/dev/null); then
      warn "cannot list alert policies (is the gcloud alpha component installed?): delete '$display' in the console"
      continue
    fi
    for name in $names; do
      run_gone gcloud alpha monitoring policies delete "$name" --project="$PROJECT" --quiet
    done
  done
  names=$(lookup "DASHBOARD_ID" gcloud monitoring dashboards list --project="$PROJECT" \
    --filter="displayName=\"$DASHBOARD_NAME\"" --format='value(name)')
  for name in $names; do
    run_gone gcloud monitoring dashboards delete "${name##*/}" --project="$PROJECT" --quiet
  done
  for metric_id in $("$PYTHON" "$ROOT/deploy/render.py" metric-ids) ml-probes; do
    if exists gcloud logging metrics describe "$PREFIX-$metric_id" --project="$PROJECT" || [[ $DRY_RUN -eq 1 ]]; then
      run_gone gcloud logging metrics delete "$PREFIX-$metric_id" --project="$PROJECT" --quiet
    fi
  done
  names=$(lookup "CHANNEL_NAME" gcloud beta monitoring channels list --project="$PROJECT" \
    --filter="displayName=\"$CHANNEL_NAME\" AND type=\"pubsub\"" --format='value(name)')
  for name in $names; do
    run_gone gcloud beta monitoring channels delete "$name" --project="$PROJECT" --quiet
  done

  step "5. Pub/Sub: the dead-letter hold subscription and the topics (their IAM bindings go with them)"
  run_gone gcloud pubsub subscriptions delete "$DEAD_SUB" --project="$PROJECT" --quiet
  for topic in "$TOPIC_FEED" "$TOPIC_LOG" "$TOPIC_ALERTS" "$TOPIC_MANUAL" "$TOPIC_CLEANUP" "$TOPIC_DEAD"; do
    run_gone gcloud pubsub topics delete "$topic" --project="$PROJECT" --quiet
  done

  step "6. Bindings, the custom role $ROLE_ID and the service accounts"
  if [[ -n $SECRETS ]]; then
    local secret_refs ref secret
    IFS=',' read -r -a secret_refs <<<"$SECRETS"
    for ref in "${secret_refs[@]}"; do
      secret=${ref#*=}
      run_gone gcloud secrets remove-iam-policy-binding "${secret%%:*}" --project="$PROJECT" \
        --member="serviceAccount:$RUNTIME_SA" --role=roles/secretmanager.secretAccessor --format=none
    done
  fi
  run_gone gcloud projects remove-iam-policy-binding "$PROJECT" \
    --member="serviceAccount:$RUNTIME_SA" --role="$ROLE_NAME" --condition=None --format=none
  run_gone gcloud projects remove-iam-policy-binding "$PROJECT" \
    --member="serviceAccount:$TRIGGER_SA" --role=roles/eventarc.eventReceiver --condition=None --format=none
  if exists gcloud iam roles describe "$ROLE_ID" --project="$PROJECT" || [[ $DRY_RUN -eq 1 ]]; then
    run_gone gcloud iam roles delete "$ROLE_ID" --project="$PROJECT" --quiet
  fi
  local sa
  for sa in "$RUNTIME_SA" "$TRIGGER_SA"; do
    run_gone gcloud iam service-accounts delete "$sa" --project="$PROJECT" --quiet
  done
  note "kept: the security policy $POLICY and every rule outside the band, backend attachments, the enabled APIs"
  printf '\n%s\n' "$([[ $DRY_RUN -eq 1 ]] && echo 'Dry run: nothing was run.' || echo 'Removed.')" >&3
}

if [[ $DESTROY -eq 1 ]]; then
  destroy
  exit 0
fi

# ----------------------------------------------------------------- the plan
printf 'Deploying the Cloud Armor responder\n' >&3
printf '  project %s, functions region %s, policy %s (%s), band %s..%s%s\n' \
  "$PROJECT" "$REGION" "$POLICY" "${POLICY_REGION:-global}" "$BAND_START" "$BAND_END" \
  "$([[ $DRY_RUN -eq 1 ]] && echo ', DRY RUN: nothing is run')" >&3

step "1. Enable the APIs"
if [[ $DRY_RUN -eq 1 ]]; then
  missing=("${SERVICES[@]}")
else
  enabled=$(gcloud services list --enabled --project="$PROJECT" --format='value(config.name)')
  missing=()
  for svc in "${SERVICES[@]}"; do
    grep -qxF "$svc" <<<"$enabled" || missing+=("$svc")
  done
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  run gcloud services enable "${missing[@]}" --project="$PROJECT"
else
  note "all APIs already enabled"
fi

if [[ $WITH_ADDRESS_GROUPS -eq 1 ]]; then
  step "1b. Cloud Armor tier (address groups need Enterprise)"
  tier=$(query "CA_STANDARD" gcloud compute project-info describe --project="$PROJECT" --format='value(cloudArmorTier)')
  if [[ $tier != CA_ENTERPRISE* ]]; then
    warn "project $PROJECT is on Cloud Armor tier '${tier:-unknown}', not Enterprise: address groups cannot be created or referenced, and feeds with store = \"address-group\" or \"auto\" fall back to band rules (one 'fallback' record)"
  else
    note "Cloud Armor tier $tier: address groups are available"
  fi
fi

step "2. Look up the project number (for the Google-managed service agents)"
PROJECT_NUMBER=$(query "PROJECT_NUMBER" gcloud projects describe "$PROJECT" --format='value(projectNumber)')
[[ -n $PROJECT_NUMBER ]] || die "could not read the project number of $PROJECT"
PUBSUB_AGENT="serviceAccount:service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
MONITORING_AGENT="serviceAccount:service-$PROJECT_NUMBER@gcp-sa-monitoring-notification.iam.gserviceaccount.com"

step "3. Service accounts: $RUNTIME_SA_ID (runs the functions), $TRIGGER_SA_ID (Eventarc push identity)"
for pair in "$RUNTIME_SA_ID|Cloud Armor responder functions" "$TRIGGER_SA_ID|Cloud Armor responder Eventarc triggers"; do
  sa_id=${pair%%|*}
  if exists gcloud iam service-accounts describe "$sa_id@$PROJECT.iam.gserviceaccount.com" --project="$PROJECT"; then
    note "service account $sa_id exists"
  else
    run gcloud iam service-accounts create "$sa_id" --project="$PROJECT" --display-name="${pair#*|}"
  fi
done

step "4. Custom role $ROLE_ID (only what the functions call) and the bindings"
# The custom role in one project: created, undeleted or updated to ROLE_PERMISSIONS.
ensure_role() {
  local project=$1 role_state="" deleted current wanted
  if [[ $DRY_RUN -eq 0 ]] && exists gcloud iam roles describe "$ROLE_ID" --project="$project"; then
    role_state=$(gcloud iam roles describe "$ROLE_ID" --project="$project" --format='value(deleted,includedPermissions)')
  fi
  if [[ -z $role_state ]]; then
    run gcloud iam roles create "$ROLE_ID" --project="$project" \
      --title="Cloud Armor responder" \
      --description="Read and update one Cloud Armor policy's rules and labels; wait on operations." \
      --permissions="$ROLE_PERMISSIONS" --stage=GA
  else
    deleted=$(cut -f1 <<<"$role_state")
    if [[ $deleted == True ]]; then
      run gcloud iam roles undelete "$ROLE_ID" --project="$project"
    fi
    current=$(cut -f2 <<<"$role_state" | tr ';,' '\n' | sed '/^$/d' | sort | paste -sd, -)
    wanted=$(tr ',' '\n' <<<"$ROLE_PERMISSIONS" | sort | paste -sd, -)
    if [[ $current != "$wanted" ]]; then
      run gcloud iam roles update "$ROLE_ID" --project="$project" --permissions="$ROLE_PERMISSIONS" --quiet
    else
      note "custom role $ROLE_ID is up to date in $project"
    fi
  fi
}
ensure_role "$PROJECT"
# add-iam-policy-binding is idempotent: adding a binding that exists changes nothing.
run_retry gcloud projects add-iam-policy-binding "$PROJECT" \
  --member="serviceAccount:$RUNTIME_SA" --role="$ROLE_NAME" --condition=None --format=none
run_retry gcloud projects add-iam-policy-binding "$PROJECT" \
  --member="serviceAccount:$TRIGGER_SA" --role=roles/eventarc.eventReceiver --condition=None --format=none
# Every other target's project: the role there, bound to the runtime account.
for target_project in $TARGET_PROJECTS; do
  ensure_role "$target_project"
  run_retry gcloud projects add-iam-policy-binding "$target_project" \
    --member="serviceAccount:$RUNTIME_SA" --role="projects/$target_project/roles/$ROLE_ID" --condition=None --format=none
done
# Pub/Sub mints the push tokens of the trigger identity (needed by projects
# whose Pub/Sub service agent predates April 2021; harmless otherwise).
run_retry gcloud iam service-accounts add-iam-policy-binding "$TRIGGER_SA" --project="$PROJECT" \
  --member="$PUBSUB_AGENT" --role=roles/iam.serviceAccountTokenCreator --format=none

step "5. Pub/Sub topics, and a subscription that holds dead letters for inspection"
for topic in "$TOPIC_FEED" "$TOPIC_LOG" "$TOPIC_ALERTS" "$TOPIC_MANUAL" "$TOPIC_CLEANUP" "$TOPIC_DEAD"; do
  if exists gcloud pubsub topics describe "$topic" --project="$PROJECT"; then
    note "topic $topic exists"
  else
    run gcloud pubsub topics create "$topic" --project="$PROJECT" --labels=app=cloud-armor-responder
  fi
done
if exists gcloud pubsub subscriptions describe "$DEAD_SUB" --project="$PROJECT"; then
  note "subscription $DEAD_SUB exists"
else
  run gcloud pubsub subscriptions create "$DEAD_SUB" --project="$PROJECT" --topic="$TOPIC_DEAD" \
    --message-retention-duration=7d --expiration-period=never --labels=app=cloud-armor-responder
fi
# Dead-lettering: the Pub/Sub service agent publishes to the dead-letter topic.
run_retry gcloud pubsub topics add-iam-policy-binding "$TOPIC_DEAD" --project="$PROJECT" \
  --member="$PUBSUB_AGENT" --role=roles/pubsub.publisher --format=none

step "6. Security policy $POLICY (${POLICY_REGION:-global}): bootstrap only if it does not exist"
if exists gcloud compute security-policies describe "$POLICY" "${POLICY_LOC[@]}" --project="$PROJECT"; then
  note "policy $POLICY exists: kept as is (its rules are never modified by deploy.sh)"
  policy_json=$(gcloud compute security-policies describe "$POLICY" "${POLICY_LOC[@]}" --project="$PROJECT" --format=json)
  foreign=$("$PYTHON" -c '
import json, sys
start, end, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for rule in json.load(sys.stdin).get("rules", []):
    prio = int(rule.get("priority", -1))
    words = (rule.get("description") or "").split()
    if start <= prio <= end and (not words or words[0] != tag):
        print(prio)
' "$BAND_START" "$BAND_END" "$OWNER_TAG" <<<"$policy_json")
  if [[ -n $foreign ]]; then
    warn "policy $POLICY holds rules in the band $BAND_START..$BAND_END that are not the responder's (description does not start with '$OWNER_TAG'): priorities $(paste -sd, - <<<"$foreign"). The responder will not touch them; move them out of the band or change the band."
  else
    note "the band $BAND_START..$BAND_END holds no foreign rules"
  fi
  for svc in $BACKEND_SERVICES; do
    attached=$(gcloud compute backend-services describe "$svc" "${POLICY_LOC[@]}" --project="$PROJECT" --format='value(securityPolicy)' || true)
    if [[ ${attached##*/} != "$POLICY" ]]; then
      warn "backend service $svc does not use $POLICY (has: ${attached:-none}); not changed. To attach: gcloud compute backend-services update $svc --security-policy=$POLICY ${POLICY_LOC[*]} --project=$PROJECT"
    fi
  done
else
  run gcloud compute security-policies create "$POLICY" "${POLICY_LOC[@]}" --project="$PROJECT" \
    --description="Edge policy of the ML cluster; priorities $BAND_START..$BAND_END belong to the Cloud Armor responder"
  run gcloud compute security-policies rules update "$DEFAULT_RULE_PRIORITY" --security-policy="$POLICY" \
    ${RULE_LOC[@]+"${RULE_LOC[@]}"} --project="$PROJECT" --action="$DEFAULT_ACTION"
  if [[ -n $TRUSTED_RANGES ]]; then
    read -r -a ranges <<<"$TRUSTED_RANGES"
    priority=$TRUSTED_PRIORITY
    for ((i = 0; i < ${#ranges[@]}; i += 10)); do
      chunk=$(IFS=,; echo "${ranges[*]:i:10}")
      run gcloud compute security-policies rules create "$priority" --security-policy="$POLICY" \
        ${RULE_LOC[@]+"${RULE_LOC[@]}"} --project="$PROJECT" --action=allow --src-ip-ranges="$chunk" \
        --description="trusted ranges (deploy.sh bootstrap)"
      priority=$((priority + 1))
    done
  fi
  for svc in $BACKEND_SERVICES; do
    run gcloud compute backend-services update "$svc" "${POLICY_LOC[@]}" --project="$PROJECT" \
      --security-policy="$POLICY"
  done
fi

step "7. Functions (gen2, $RUNTIME) with dead-lettering on their Eventarc subscriptions"
# RESPONDER_REGION is the policy's region ("" = global), as config.settings reads it.
env_vars="RESPONDER_PROJECT=$PROJECT,RESPONDER_POLICY=$POLICY,RESPONDER_REGION=$POLICY_REGION"
env_vars+=",RESPONDER_BAND_START=$BAND_START,RESPONDER_BAND_END=$BAND_END"
env_vars+=",RESPONDER_FUNCTION_TIMEOUT=$TIMEOUT"
if [[ -n $CONFIG_ENV ]]; then
  env_vars+=",RESPONDER_CONFIG=$CONFIG_ENV"
fi
cpu_flag=()
if [[ -n $CPU ]]; then
  cpu_flag=(--cpu="$CPU")
fi
for spec in "${FUNCTIONS[@]}"; do
  IFS='|' read -r fn entry topic <<<"$spec"
  # Feed pulls' request headers: environment variables from Secret Manager,
  # on the threat-feed function only.
  secret_flag=()
  if [[ $entry == on_threat_feed && -n $SECRETS ]]; then
    secret_flag=(--set-secrets="$SECRETS")
  fi
  # "functions deploy" creates or updates: it is run on every deploy.
  run gcloud functions deploy "$fn" --gen2 --region="$REGION" --project="$PROJECT" \
    --runtime="$RUNTIME" --source="$ROOT" --entry-point="$entry" --trigger-topic="$topic" \
    --trigger-service-account="$TRIGGER_SA" --service-account="$RUNTIME_SA" --retry \
    ${secret_flag[@]+"${secret_flag[@]}"} \
    --memory="$MEMORY" ${cpu_flag[@]+"${cpu_flag[@]}"} --max-instances="$MAX_INSTANCES" \
    --concurrency="$CONCURRENCY" --timeout="$TIMEOUT" --ingress-settings=internal-only \
    --no-allow-unauthenticated --set-env-vars="$env_vars" --quiet
  run_retry gcloud functions add-invoker-policy-binding "$fn" --region="$REGION" --project="$PROJECT" \
    --member="serviceAccount:$TRIGGER_SA" --format=none
  trigger=$(query "TRIGGER_OF_$fn" gcloud functions describe "$fn" --region="$REGION" --project="$PROJECT" \
    --v2 --format='value(eventTrigger.trigger)')
  subscription=$(query "SUBSCRIPTION_OF_$fn" gcloud eventarc triggers describe "${trigger##*/}" \
    --location="$REGION" --project="$PROJECT" --format='value(transport.pubsub.subscription)')
  [[ -n $subscription ]] || die "no Pub/Sub subscription found for the trigger of $fn"
  run gcloud pubsub subscriptions update "$subscription" --project="$PROJECT" \
    --dead-letter-topic="projects/$PROJECT/topics/$TOPIC_DEAD" \
    --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS" \
    --min-retry-delay="$MIN_RETRY_DELAY" --max-retry-delay="$MAX_RETRY_DELAY"
  run_retry gcloud pubsub subscriptions add-iam-policy-binding "$subscription" --project="$PROJECT" \
    --member="$PUBSUB_AGENT" --role=roles/pubsub.subscriber --format=none
done

step "8. Cloud Scheduler job $SCHEDULER_JOB ($SCHEDULE) publishing the cleanup message"
if exists gcloud scheduler jobs describe "$SCHEDULER_JOB" --location="$REGION" --project="$PROJECT"; then
  run gcloud scheduler jobs update pubsub "$SCHEDULER_JOB" --location="$REGION" --project="$PROJECT" \
    --schedule="$SCHEDULE" --topic="$TOPIC_CLEANUP" --message-body='{"action":"cleanup"}' --time-zone=Etc/UTC
else
  run gcloud scheduler jobs create pubsub "$SCHEDULER_JOB" --location="$REGION" --project="$PROJECT" \
    --schedule="$SCHEDULE" --topic="$TOPIC_CLEANUP" --message-body='{"action":"cleanup"}' --time-zone=Etc/UTC \
    --description="Cloud Armor responder: remove expired band rules"
fi

step "8b. Feed pulls: one Cloud Scheduler job per feed with a url, publishing to $TOPIC_FEED"
if [[ -z $PULLS ]]; then
  note "no feed has a url: nothing to schedule"
fi
for pull in $PULLS; do
  feed=${pull%%=*} cron=${pull#*=}
  cron=${cron//_/ }
  job="$PREFIX-pull-$feed"
  body="{\"action\":\"pull\",\"feed\":\"$feed\"}"
  if exists gcloud scheduler jobs describe "$job" --location="$REGION" --project="$PROJECT"; then
    run gcloud scheduler jobs update pubsub "$job" --location="$REGION" --project="$PROJECT" \
      --schedule="$cron" --topic="$TOPIC_FEED" --message-body="$body" --time-zone=Etc/UTC
  else
    run gcloud scheduler jobs create pubsub "$job" --location="$REGION" --project="$PROJECT" \
      --schedule="$cron" --topic="$TOPIC_FEED" --message-body="$body" --time-zone=Etc/UTC \
      --description="Cloud Armor responder: pull the feed $feed from its configured url"
  fi
done
# The runtime identity reads each mapped secret (and nothing else in Secret Manager).
if [[ -n $SECRETS ]]; then
  IFS=',' read -r -a secret_refs <<<"$SECRETS"
  for ref in "${secret_refs[@]}"; do
    secret=${ref#*=}
    run_retry gcloud secrets add-iam-policy-binding "${secret%%:*}" --project="$PROJECT" \
      --member="serviceAccount:$RUNTIME_SA" --role=roles/secretmanager.secretAccessor --format=none
  done
fi

step "9. Log sinks to $TOPIC_LOG, each writer identity allowed to publish"
band_priority="jsonPayload.enforcedSecurityPolicy.priority"
# Denies by every rule but the default one (floods when the default is deny):
# operator rules (WAF, rate-limit bans) for the detectors, and the band's own
# rules ($BAND_START-$BAND_END), which extend the bans they hit (bans that
# follow traffic, handlers/follow.py; never a detector's sighting, so no loop);
# plus 4xx answers to ML control-plane probe paths that Cloud Armor let through.
LB_FILTER="resource.type=\"$LB_RESOURCE\" AND jsonPayload.enforcedSecurityPolicy.name=\"$POLICY\" AND ((jsonPayload.enforcedSecurityPolicy.outcome=\"DENY\" AND $band_priority<$DEFAULT_RULE_PRIORITY) OR (NOT jsonPayload.enforcedSecurityPolicy.outcome=\"DENY\" AND httpRequest.status>=400 AND httpRequest.status<500 AND httpRequest.requestUrl=~\"$PROBE_REGEX\"))"
IDS_FILTER="logName:\"ids.googleapis.com%2Fthreat\" AND jsonPayload.alert_severity=(\"CRITICAL\" OR \"HIGH\" OR \"MEDIUM\")"
FW_FILTER="logName:\"compute.googleapis.com%2Ffirewall\" AND jsonPayload.disposition=\"DENIED\" AND jsonPayload.rule_details.direction=\"INGRESS\" AND jsonPayload.connection.dest_port=($FIREWALL_PORTS)"
SINK_DEST="pubsub.googleapis.com/projects/$PROJECT/topics/$TOPIC_LOG"
SINKS=("$SINK_LB" "$SINK_IDS" "$SINK_FW")
SINK_FILTERS=("$LB_FILTER" "$IDS_FILTER" "$FW_FILTER")
SINK_DESCRIPTIONS=(
  "Cloud Armor denies (the band's own extend their bans), and 4xx answers to ML probe paths"
  "Cloud IDS threats, medium severity and above"
  "VPC firewall: denied ingress to ML control-plane ports"
)
for i in 0 1 2; do
  sink=${SINKS[i]} filter=${SINK_FILTERS[i]} description=${SINK_DESCRIPTIONS[i]}
  if exists gcloud logging sinks describe "$sink" --project="$PROJECT"; then
    # Keeps the filter current; the writer identity stays the same.
    run gcloud logging sinks update "$sink" "$SINK_DEST" --project="$PROJECT" --log-filter="$filter" \
      --description="$description"
  else
    run gcloud logging sinks create "$sink" "$SINK_DEST" --project="$PROJECT" --log-filter="$filter" \
      --description="$description"
  fi
  writer=$(query "WRITER_IDENTITY_OF_$sink" gcloud logging sinks describe "$sink" --project="$PROJECT" \
    --format='value(writerIdentity)')
  [[ -n $writer ]] || die "sink $sink has no writer identity"
  run_retry gcloud pubsub topics add-iam-policy-binding "$TOPIC_LOG" --project="$PROJECT" \
    --member="$writer" --role=roles/pubsub.publisher --format=none
done

step "10. Health as code: log-based metrics, dashboard and alert policies (deploy/), created or updated"
health_dir=$(mktemp -d)
trap 'rm -rf "$health_dir"' EXIT
fn_names=()
for spec in "${FUNCTIONS[@]}"; do
  fn_names+=("${spec%%|*}")
done
render_vars=$("$PYTHON" -c '
import json, sys
prefix, max_rules, alert_rules, percent, dead_sub, channels = sys.argv[1:7]
print(json.dumps({
    "PREFIX": prefix, "FUNCTIONS": sys.argv[7:], "MAX_RULES": int(max_rules),
    "BAND_ALERT_RULES": float(alert_rules), "BAND_ALERT_PERCENT": int(percent),
    "DEAD_SUB": dead_sub, "CHANNELS": [c for c in channels.split(",") if c],
}))' "$PREFIX" "$MAX_RULES" "$BAND_ALERT_RULES" "$BAND_ALERT_PERCENT" "$DEAD_SUB" "$ALERT_CHANNELS" "${fn_names[@]}")
render() {
  "$PYTHON" "$ROOT/deploy/render.py" "$@" "$render_vars"
}
# Log-based metrics: one per audit record kind (deploy/metrics.json).
# "logging metrics update --config-from-file" replaces the definition.
while read -r metric_id; do
  metric_name="$PREFIX-$metric_id"
  render metric "$metric_id" >"$health_dir/metric-$metric_id.json"
  if exists gcloud logging metrics describe "$metric_name" --project="$PROJECT"; then
    run gcloud logging metrics update "$metric_name" --project="$PROJECT" \
      --config-from-file="$health_dir/metric-$metric_id.json"
  else
    run gcloud logging metrics create "$metric_name" --project="$PROJECT" \
      --config-from-file="$health_dir/metric-$metric_id.json"
  fi
done < <("$PYTHON" "$ROOT/deploy/render.py" metric-ids)

# The dashboard (deploy/dashboard.json), found by its display name; an
# update carries the etag just read (the API refuses a stale one).
render template "$ROOT/deploy/dashboard.json" >"$health_dir/dashboard.json"
dashboard=""
if [[ $DRY_RUN -eq 0 ]]; then
  dashboard=$(gcloud monitoring dashboards list --project="$PROJECT" \
    --filter="displayName=\"$DASHBOARD_NAME\"" --format='value(name,etag)' | head -n1)
fi
if [[ -n $dashboard ]]; then
  IFS=$'\t' read -r dashboard_name dashboard_etag <<<"$dashboard"
  "$PYTHON" -c '
import json, sys
doc = json.load(open(sys.argv[1]))
doc["etag"] = sys.argv[2]
json.dump(doc, open(sys.argv[1], "w"), indent=2)' "$health_dir/dashboard.json" "$dashboard_etag"
  run gcloud monitoring dashboards update "${dashboard_name##*/}" --project="$PROJECT" \
    --config-from-file="$health_dir/dashboard.json"
else
  run gcloud monitoring dashboards create --project="$PROJECT" --config-from-file="$health_dir/dashboard.json"
fi

# Alert policies (deploy/alerts/*.json), found by display name. The policies
# commands exist only in gcloud's alpha track: without the alpha component
# they are skipped with a warning (README, "Observability": install it and
# re-run, or create them from the files).
alpha_ok=1
for alert in "${ALERT_FILES[@]}"; do
  render template "$ROOT/deploy/alerts/$alert.json" >"$health_dir/alert-$alert.json"
  show_file "$health_dir/alert-$alert.json"
  [[ $alpha_ok -eq 1 ]] || continue
  display=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["displayName"])' "$health_dir/alert-$alert.json")
  existing=""
  if [[ $DRY_RUN -eq 0 ]]; then
    if ! existing=$(gcloud alpha monitoring policies list --project="$PROJECT" \
        --filter="displayName=\"$display\"" --format='value(name)' 2>"$health_dir/err"); then
      if grep -qiE 'command group installed|requires the installation of components|Invalid choice' "$health_dir/err"; then
        warn "the gcloud alpha component is not installed: alert policies skipped (gcloud components install alpha, then re-run; README, 'Observability')"
        alpha_ok=0
        continue
      fi
      die "alpha monitoring policies list failed: $(cat "$health_dir/err")"
    fi
    existing=$(head -n1 <<<"$existing")
  fi
  if [[ -n $existing ]]; then
    run gcloud alpha monitoring policies update "$existing" --project="$PROJECT" \
      --policy-from-file="$health_dir/alert-$alert.json" --quiet
  else
    run gcloud alpha monitoring policies create --project="$PROJECT" \
      --policy-from-file="$health_dir/alert-$alert.json"
  fi
done

if [[ $WITH_MONITORING -eq 1 ]]; then
  step "11. Monitoring: Pub/Sub notification channel, probe metric, alert policy"
  tmpdir=$health_dir
  channel=""
  if [[ $DRY_RUN -eq 0 ]]; then
    channel=$(gcloud beta monitoring channels list --project="$PROJECT" \
      --filter="displayName=\"$CHANNEL_NAME\" AND type=\"pubsub\"" --format='value(name)' | head -n1)
  fi
  if [[ -n $channel ]]; then
    note "notification channel $channel exists"
  else
    run gcloud beta monitoring channels create --project="$PROJECT" --display-name="$CHANNEL_NAME" \
      --type=pubsub --channel-labels="topic=projects/$PROJECT/topics/$TOPIC_ALERTS" \
      --description="Alerts delivered to the Cloud Armor responder"
    channel=$(query "CHANNEL_NAME" gcloud beta monitoring channels list --project="$PROJECT" \
      --filter="displayName=\"$CHANNEL_NAME\" AND type=\"pubsub\"" --format='value(name)')
    channel=$(head -n1 <<<"$channel")
  fi
  run_retry gcloud pubsub topics add-iam-policy-binding "$TOPIC_ALERTS" --project="$PROJECT" \
    --member="$MONITORING_AGENT" --role=roles/pubsub.publisher --format=none

  PROBE_FILTER="resource.type=\"$LB_RESOURCE\" AND httpRequest.requestUrl=~\"$PROBE_REGEX\" AND httpRequest.status>=400 AND httpRequest.status<500"
  "$PYTHON" -c '
import json, sys
print(json.dumps({
    "name": sys.argv[1],
    "description": "Requests to ML control-plane paths answered 4xx, per client IP",
    "filter": sys.argv[2],
    "metricDescriptor": {"metricKind": "DELTA", "valueType": "INT64", "unit": "1",
                         "labels": [{"key": "client_ip", "valueType": "STRING"}]},
    "labelExtractors": {"client_ip": "EXTRACT(httpRequest.remoteIp)"},
}, indent=2))' "$METRIC" "$PROBE_FILTER" >"$tmpdir/metric.json"
  if exists gcloud logging metrics describe "$METRIC" --project="$PROJECT"; then
    run gcloud logging metrics update "$METRIC" --project="$PROJECT" --config-from-file="$tmpdir/metric.json"
  else
    run gcloud logging metrics create "$METRIC" --project="$PROJECT" --config-from-file="$tmpdir/metric.json"
  fi

  "$PYTHON" -c '
import json, sys
name, metric, threshold, channel = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
print(json.dumps({
    "displayName": name,
    "combiner": "OR",
    "conditions": [{
        "displayName": f"more than {threshold} probes from one client in 5 min",
        "conditionThreshold": {
            "filter": f"metric.type=\"logging.googleapis.com/user/{metric}\"",
            "aggregations": [{"alignmentPeriod": "300s", "perSeriesAligner": "ALIGN_SUM",
                              "crossSeriesReducer": "REDUCE_SUM",
                              "groupByFields": ["metric.label.client_ip"]}],
            "comparison": "COMPARISON_GT",
            "thresholdValue": threshold,
            "duration": "0s",
            "trigger": {"count": 1},
        },
    }],
    "alertStrategy": {"autoClose": "1800s"},
    "notificationChannels": [channel],
    "documentation": {"mimeType": "text/markdown",
                      "content": "Published to the responder alerts topic; on_alert blocks the client IP."},
}, indent=2))' "$ALERT_POLICY_NAME" "$METRIC" "$PROBE_THRESHOLD" "$channel" >"$tmpdir/policy.json"
  show_file "$tmpdir/policy.json"
  existing_policy=""
  if [[ $DRY_RUN -eq 0 ]]; then
    existing_policy=$(gcloud alpha monitoring policies list --project="$PROJECT" \
      --filter="displayName=\"$ALERT_POLICY_NAME\"" --format='value(name)')
  fi
  if [[ -n $existing_policy ]]; then
    run gcloud alpha monitoring policies update "$(head -n1 <<<"$existing_policy")" --project="$PROJECT" \
      --policy-from-file="$tmpdir/policy.json" --quiet
  else
    run gcloud alpha monitoring policies create --project="$PROJECT" --policy-from-file="$tmpdir/policy.json"
  fi
fi

printf '\n%s\n' "$([[ $DRY_RUN -eq 1 ]] && echo 'Dry run: nothing was run.' || echo 'Done.')" >&3
