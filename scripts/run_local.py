"""Runs the responder locally: the local Cloud Armor API, the five functions
as functions-framework processes, and example events delivered as Eventarc
delivers them (binary-mode CloudEvents over HTTP).

Prints the band before and after, then stops everything, unless ``--keep``
is given: then the stack stays up (Ctrl-C stops it) and prints how to
publish by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import eventarc  # noqa: E402
from feed_server import FeedServer  # noqa: E402

from config import settings as config  # noqa: E402

ENTRY_POINTS = {
    "on_threat_feed": "feed",
    "on_log_sink": "log",
    "on_alert": "alert",
    "on_manual": "manual",
    "on_cleanup": "cleanup",
}

# (entry point, example file, attributes, what it shows)
SCRIPT: list[tuple[str, str, dict[str, str], str]] = [
    ("on_manual", "manual-block.json", {}, "an operator blocks two addresses for 6 hours"),
    ("on_threat_feed", "feed-intel.json", {"feed": "example-intel"}, "a JSON threat feed with four indicators"),
    ("on_threat_feed", "spamhaus-drop.txt", {"feed": "spamhaus-drop", "format": "spamhaus"}, "a Spamhaus DROP excerpt"),
    ("on_threat_feed", "feed-intel.json", {"feed": "example-intel"}, "the same feed again: nothing changes"),
    ("on_manual", "manual-block-notebooks.json", {"targets": "notebooks"},
     "an operator blocks one address on the notebooks target only (attribute targets=notebooks)"),
    ("on_manual", "manual-extend.json", {}, "the operator extends one block to 2 days"),
    ("on_manual", "manual-unblock.json", {}, "the operator unblocks one address"),
    ("on_manual", "manual-bad.json", {}, "a malformed command: logged and acknowledged"),
    ("on_cleanup", "cleanup.json", {}, "the scheduled cleanup: expire, compact, report"),
]


# The scheduled pull: the feed the run's configuration adds (its url is the
# local feed server's), and the message Cloud Scheduler publishes for it.
PULLED_FEED = "example-block"
PULL_MESSAGE = "feed-pull.json"
# A second target (README, "Many targets"): a regional policy of the notebooks' load balancer.
SECOND_TARGET = ("notebooks", "notebooks-edge", "europe-west4")


def run_config(feed_url: str, var: Path) -> Path:
    """The bundled configuration plus one pulled feed served on loopback."""
    path = var / "run-responder.toml"
    text = Path(config.DEFAULT_PATH).read_text()
    text += (
        f"\n# Added by scripts/run_local.py: a feed pulled from the local feed server.\n"
        f"[feeds.{PULLED_FEED}]\nformat = \"netset\"\nttl = \"1d\"\nsnapshot = true\n"
        f"url = \"{feed_url}\"\nevery = \"1h\"\ntimeout = \"10s\"\n"
        f"\n# Added by scripts/run_local.py: a second target, a regional policy.\n"
        f"[[targets]]\nname = \"{SECOND_TARGET[0]}\"\nproject = \"{config.load().policy.project}\"\n"
        f"policy = \"{SECOND_TARGET[1]}\"\nregion = \"{SECOND_TARGET[2]}\"\nband_start = 20000\nband_end = 20999\nmax_rules = 150\n"
    )
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up in {timeout:.0f} s") from None
            time.sleep(0.2)


def start_local_api(state: Path, project: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "localapi", "--port", "0", "--state", str(state), "--project", project, "--op-delay", "0.5"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"the local API did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[-1].strip()


def ensure_policy(endpoint: str, settings: config.Settings) -> None:
    """Creates the example cluster policy (operator rules outside the band)
    when the local API does not have it yet."""
    scope = f"regions/{settings.policy.region}" if settings.policy.region else "global"
    base = f"{endpoint}/compute/v1/projects/{settings.policy.project}/{scope}/securityPolicies"
    try:
        urllib.request.urlopen(f"{base}/{settings.policy.name}", timeout=5)
        return
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    policy = {
        "name": settings.policy.name,
        "description": "ML cluster edge policy (local example)",
        "rules": [
            {"priority": 1000, "action": "allow", "description": "trusted: CI runners and NAT egress",
             "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["34.120.10.0/28", "35.244.1.7/32"]}}},
            {"priority": 3000, "action": "deny(403)", "description": "WAF: SQL injection",
             "match": {"expr": {"expression": "evaluatePreconfiguredWaf('sqli-v33-stable')"}}},
            {"priority": 2147483647, "action": "allow", "description": "default rule",
             "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}}},
        ],
    }
    req = urllib.request.Request(base, data=json.dumps(policy).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        op = json.load(resp)
    ops = f"{endpoint}/compute/v1/projects/{settings.policy.project}/{scope}/operations/{op['name']}/wait"
    urllib.request.urlopen(urllib.request.Request(ops, data=b"", method="POST"), timeout=30)


def start_function(target: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("functions-framework")), "--target", target,
         "--signature-type", "cloudevent", "--source", str(ROOT / "main.py"), "--port", str(port),
         "--host", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
    )


def print_band(endpoint: str, settings: config.Settings, title: str, *, every_target: bool = True) -> None:
    """The band of every target (or of the first only) as a table."""
    from cli import band_table
    from responder.compute import CloudArmor

    for name in settings.target_names if every_target else settings.target_names[:1]:
        one = settings.for_target(name)
        api = CloudArmor(one.with_policy(api_endpoint=endpoint).policy)
        where = f"{one.policy.name}, {one.policy.region or 'global'}"
        print(f"\n== {title}: target {name} ({where})")
        print(band_table(api.get_policy(), one, datetime.now(tz=UTC)))


def write_report(endpoint: str, settings: config.Settings, audit_file: Path, path: Path) -> Path:
    """The band page (``cli.py report``) from the local API and the run's audit file."""
    import report
    from cli import trail_from_file
    from responder.compute import CloudArmor

    api = CloudArmor(settings.with_policy(api_endpoint=endpoint).policy)
    data = report.page_data(api.get_policy(), settings, trail_from_file(audit_file), datetime.now(tz=UTC))
    return report.write(path, data)


def scheduled_pull(url: str, feeds: FeedServer, endpoint: str, settings: config.Settings) -> None:
    """Publishes the pull message as Cloud Scheduler would, twice: the first
    downloads the list and lands it, the next finds it unchanged (304)."""
    feed = settings.feeds[PULLED_FEED]
    print(f"\n== scheduled pull of {PULLED_FEED} (every: '{feed.every}') from {feed.url}")
    print_band(endpoint, settings, "band before the pull", every_target=False)
    data = (ROOT / "examples" / PULL_MESSAGE).read_bytes()
    for what in ("Cloud Scheduler publishes the pull", "the next scheduled pull"):
        seen = len(feeds.requests)
        status = eventarc.post(url, data)
        answers = ", ".join(f"GET {r['path']} -> {r['status']}" for r in feeds.requests[seen:]) or "no request"
        print(f"-> on_threat_feed  {PULL_MESSAGE:22} HTTP {status}  {what}: feed server {answers}")
        if what.startswith("Cloud"):
            print_band(endpoint, settings, "band after the pull", every_target=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the stack up for publishing by hand")
    parser.add_argument("--fresh", action="store_true", help="start from an empty local API state")
    args = parser.parse_args(argv)

    var = ROOT / "var"
    var.mkdir(exist_ok=True)
    state = var / "local-api-state.json"
    if args.fresh and state.exists():
        state.unlink()
    feeds = FeedServer(ROOT / "examples" / "feeds").start()
    config_path = run_config(feeds.url(f"{PULLED_FEED}.netset"), var)
    settings = config.load(config_path)
    procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    try:
        api_proc, endpoint = start_local_api(state, settings.policy.project)
        procs.append(api_proc)
        print(f"local Cloud Armor API: {endpoint} (state in var/local-api-state.json)")
        for name in settings.target_names:
            ensure_policy(endpoint, settings.for_target(name))
        print(f"local feed server:     {feeds.endpoint} (serves examples/feeds/)")
        env = {**os.environ, "RESPONDER_API_ENDPOINT": endpoint, "RESPONDER_AUDIT_FILE": str(var / "audit.jsonl"),
               "RESPONDER_CONFIG": str(config_path), "PYTHONUNBUFFERED": "1"}
        urls: dict[str, str] = {}
        for target in ENTRY_POINTS:
            port = free_port()
            procs.append(start_function(target, port, env, var / f"{target}.log"))
            urls[target] = f"http://127.0.0.1:{port}/"
        for target, url in urls.items():
            wait_http(url)
            print(f"{target:15} {url}  (log: var/{target}.log)")
        print_band(endpoint, settings, "band before")
        for target, example, attributes, what in SCRIPT:
            data = (ROOT / "examples" / example).read_bytes()
            status = eventarc.post(urls[target], data, attributes=attributes)
            print(f"-> {target:15} {example:22} HTTP {status}  {what}")
        scheduled_pull(urls["on_threat_feed"], feeds, endpoint, settings)
        print_band(endpoint, settings, "band after")
        page = write_report(endpoint, settings, var / "audit.jsonl", var / "band-report.html")
        print(f"\nband page: {page.relative_to(ROOT)} (open it in a browser; 'python cli.py report --html FILE' writes one)")
        print("audit records: var/audit.jsonl; function logs: var/*.log")
        if args.keep:
            print("\nThe stack stays up. Publish by hand, e.g.:")
            print(f"  .venv/bin/python scripts/publish.py {urls['on_manual']} examples/manual-block.json")
            print(f"  .venv/bin/python scripts/publish.py {urls['on_threat_feed']} examples/{PULL_MESSAGE}   # a scheduled pull")
            print("Ctrl-C stops everything.")
            signal.pause()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        feeds.stop()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
