"""Operator command line: ``python cli.py COMMAND`` (in the venv).

Works against Google (Application Default Credentials) or, with
``--endpoint URL`` or ``RESPONDER_API_ENDPOINT``, against the local API.

  status                    the band as a table; utilisation of band and quota
  explain ADDRESS           which entry blocks ADDRESS, from which source, until when, and its audit trail
  block|unblock|extend ...  a manual command, applied directly or published to the manual topic (--publish)
  preview-all|enforce-all   the break-glass switch
  cleanup                   expire, compact, lint and report now
  validate-config           load and check the configuration file
  bootstrap-policy          create the cluster's base policy when it does not exist

Like ``main.py`` this is an entry point: it sits above ``handlers/`` and
reuses the manual handler, so a command typed here is validated and guarded
exactly as one published to the manual topic.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from config import settings as config
from responder import planner
from responder.audit import Audit, read_file
from responder.errors import PermissionDenied, PolicyNotFound, ResponderError, TransientError
from responder.policy import DEFAULT_RULE_PRIORITY, PolicyRule, PolicySnapshot

EXIT_USAGE, EXIT_FAILED, EXIT_NOT_FOUND = 2, 1, 3


# --------------------------------------------------------------------------
# presentation


def _when(expiry: datetime | None, now: datetime) -> str:
    if expiry is None:
        return "permanent"
    left = expiry - now
    text = expiry.strftime("%Y-%m-%d %H:%M")
    if left.total_seconds() <= 0:
        return f"{text} (expired)"
    hours = left.total_seconds() / 3600
    return f"{text} (in {hours:.1f} h)" if hours < 48 else f"{text} (in {hours / 24:.1f} d)"


def band_table(snap: PolicySnapshot, settings: config.Settings, now: datetime) -> str:
    """The band's rules, one line per range, and a utilisation line."""
    band = planner.read_band(snap.rules, settings.band)
    lines = [f"{'priority':>10}  {'range':<24} {'action':<10} {'preview':<7} {'expires (UTC)':<30} {'sev':<8} sources"]
    for rule in sorted(band.rules, key=lambda r: r.priority):
        for net in rule.networks:
            lines.append(
                f"{rule.priority:>10}  {str(net):<24} {rule.action:<10} {'yes' if rule.preview else 'no':<7} "
                f"{_when(rule.meta.expiry, now):<30} {rule.meta.severity.name.lower():<8} "
                f"{'+'.join(sorted(rule.meta.sources))}{'+...' if rule.meta.truncated else ''}"
            )
    for rule in band.foreign:
        lines.append(f"{rule.priority:>10}  (not the responder's: {rule.description or 'no description'})")
    if len(lines) == 1:
        lines.append(f"{'':>10}  (the band is empty)")
    ranges = sum(len(r.networks) for r in band.rules)
    cap = settings.band.max_rules or settings.band.size
    lines.append(
        f"band {settings.band.start}-{settings.band.end}: {len(band.rules)} rules holding {ranges} ranges, "
        f"{len(band.foreign)} foreign; {len(band.rules) / cap:.1%} of the {cap} rules allowed (band.max_rules); "
        f"the policy holds {len(snap.rules)} rules in all"
    )
    return "\n".join(lines)


def explain(
    snap: PolicySnapshot, settings: config.Settings, address: str, now: datetime, trail: Iterable[Mapping[str, Any]]
) -> str:
    """Which band rules cover ADDRESS (or a range), and the audit records
    that name a range overlapping it."""
    target = ipaddress.ip_network(address, strict=False)
    band = planner.read_band(snap.rules, settings.band)
    lines: list[str] = []
    for rule in sorted(band.rules, key=lambda r: r.priority):
        for net in rule.networks:
            if net.version == target.version and net.overlaps(target):  # type: ignore[arg-type]
                state = "expired, not yet cleaned up" if rule.meta.expired(now) else (
                    "in preview (logged, not enforced)" if rule.preview else "enforced")
                lines.append(
                    f"{target} is covered by {net} in rule {rule.priority}: {rule.action}, {state}, "
                    f"until {_when(rule.meta.expiry, now)}, severity {rule.meta.severity.name.lower()}, "
                    f"sources {', '.join(sorted(rule.meta.sources)) or '-'}"
                )
    if not lines:
        lines.append(f"{target} is not blocked by the responder's band")
    for rule in snap.rules:
        if not settings.band.start <= rule.priority <= settings.band.end and _overlaps_any(rule.ranges, target):
            lines.append(f"{target} also matches operator rule {rule.priority} ({rule.action}): {rule.description or 'no description'}")
    history = [r for r in trail if _overlaps_any(r.get("ranges") or [], target)]
    if history:
        lines.append("audit trail:")
        for r in history:
            lines.append(
                f"  {r.get('time', '')} {r.get('change')}: {', '.join(r.get('ranges', []))} "
                f"source={r.get('source', '-')} actor={r.get('actor', '-')} expiry={r.get('expiry', '-')} "
                f"reason={r.get('reason', '-')} message={r.get('message_id', '-')}"
            )
    return "\n".join(lines)


def _overlaps_any(texts: Iterable[str], target: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether any of the ranges (as written in a rule or a record) overlaps
    the target; ``*`` and unreadable entries never do."""
    for text in texts:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if net.version == target.version and net.overlaps(target):  # type: ignore[arg-type]
            return True
    return False


def cloud_trail(settings: config.Settings, days: int = 30) -> list[dict[str, Any]]:
    """Audit records from Cloud Logging (the functions' structured logs)."""
    from google.cloud import logging as cloud_logging

    client = cloud_logging.Client(project=settings.policy.project)
    since = (datetime.now(tz=UTC) - timedelta(days=days)).isoformat()
    query = f'jsonPayload.responder.change:* AND timestamp>="{since}"'
    out = []
    for entry in client.list_entries(filter_=query, order_by=cloud_logging.ASCENDING, page_size=1000, max_results=20000):
        payload = entry.payload if isinstance(entry.payload, dict) else {}
        record = dict(payload.get("responder", {}))
        record["time"] = entry.timestamp.isoformat() if entry.timestamp else ""
        out.append(record)
    return out


# --------------------------------------------------------------------------
# commands


def _api(settings: config.Settings) -> Any:
    from responder.compute import CloudArmor

    return CloudArmor(settings.policy, retry_deadline=settings.policy.retry_deadline)


def _runtime(settings: config.Settings) -> Any:
    from handlers.runtime import Runtime

    return Runtime(settings, Audit(file=os.environ.get("RESPONDER_AUDIT_FILE") or None))


def _manual(settings: config.Settings, doc: dict[str, Any], publish: str | None) -> int:
    from handlers import manual
    from handlers.envelope import Message

    data = json.dumps(doc).encode()
    if publish:
        return _publish(settings, publish, data)
    rt = _runtime(settings)
    message = Message(data=data, message_id=f"cli-{uuid.uuid4().hex[:12]}", publish_time=datetime.now(tz=UTC))
    from responder.errors import BadEvent

    try:
        outcome = manual.handle(message, rt)
    except BadEvent as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for record in rt.audit.records:
        print(record["message"])
    return EXIT_FAILED if outcome.refused and not (outcome.added or outcome.extended or outcome.removed or outcome.ops) else 0


def _publish(settings: config.Settings, topic: str, data: bytes) -> int:
    """Publishes to a Pub/Sub topic over its REST API with ADC."""
    import base64

    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/pubsub"])
    path = topic if topic.startswith("projects/") else f"projects/{settings.policy.project}/topics/{topic}"
    response = AuthorizedSession(credentials).post(
        f"https://pubsub.googleapis.com/v1/{path}:publish",
        json={"messages": [{"data": base64.b64encode(data).decode()}]}, timeout=30,
    )
    if response.status_code != 200:
        print(f"publishing to {path} failed: HTTP {response.status_code} {response.text[:300]}", file=sys.stderr)
        return EXIT_FAILED
    print(f"published to {path}: message {response.json()['messageIds'][0]}")
    return 0


def bootstrap_policy(settings: config.Settings, api: Any) -> list[str]:
    """Creates the base policy when it does not exist: the trusted ranges
    allowed at ``bootstrap.trusted_priority`` (10 per rule), the default rule
    as configured, the band empty. An existing policy is never rewritten."""
    boot = dict(settings.raw.get("bootstrap", {}))
    trusted = [str(ipaddress.ip_network(r, strict=False)) for r in boot.get("trusted_ranges", [])]
    first = int(boot.get("trusted_priority", 1000))
    default_action = str(boot.get("default_action", "allow"))
    if default_action not in ("allow", *config.DENY_ACTIONS):
        raise config.ConfigError(f"bootstrap.default_action: must be allow or deny(403|404|502), got {default_action!r}")
    chunks = [trusted[i : i + 10] for i in range(0, len(trusted), 10)]
    if chunks and settings.band.start <= first + len(chunks) - 1 and first <= settings.band.end:
        raise config.ConfigError(f"bootstrap.trusted_priority: {first} puts trusted rules inside the band")
    try:
        api.get_policy()
        return [f"policy {settings.policy.name} exists: kept as it is"]
    except PolicyNotFound:
        pass
    done = [f"created policy {settings.policy.name}"]
    api.create_policy("ML cluster edge policy (bootstrapped by the Cloud Armor responder)")
    for i, chunk in enumerate(chunks):
        api.add_rule(PolicyRule(first + i, "allow", tuple(chunk), description="trusted ranges (bootstrap)"))
        done.append(f"allowed {len(chunk)} trusted range(s) at priority {first + i}")
    if default_action != "allow":
        api.patch_rule(PolicyRule(DEFAULT_RULE_PRIORITY, default_action, ("*",), description="default rule"))
    done.append(f"default rule: {default_action}; band {settings.band.start}-{settings.band.end} left empty")
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cli.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="configuration file (default: RESPONDER_CONFIG or config/responder.toml)")
    parser.add_argument("--endpoint", help="API endpoint, e.g. the local API's http://127.0.0.1:PORT")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="show the band")
    p = sub.add_parser("explain", help="why an address is (not) blocked")
    p.add_argument("address")
    p.add_argument("--days", type=int, default=30, help="how far back to read the audit trail (Google)")
    for verb in ("block", "unblock", "extend"):
        p = sub.add_parser(verb, help=f"{verb} ranges")
        p.add_argument("ranges", nargs="+")
        p.add_argument("--actor", default=os.environ.get("USER", ""), help="who asks (default: $USER)")
        p.add_argument("--reason", default="")
        p.add_argument("--publish", metavar="TOPIC", help="publish to the manual topic instead of applying directly")
        if verb != "unblock":
            p.add_argument("--ttl", help="e.g. 6h, 2d")
            p.add_argument("--expiry", help="RFC 3339 time with a timezone")
        if verb == "block":
            p.add_argument("--permanent", action="store_true")
            p.add_argument("--force", action="store_true", help="accept ranges broader than the manual minimum prefix")
            p.add_argument("--preview", action="store_true")
            p.add_argument("--severity")
    for verb in ("preview-all", "enforce-all"):
        p = sub.add_parser(verb, help="break-glass: every band rule to preview" if verb == "preview-all" else "enforce the band again")
        p.add_argument("--actor", default=os.environ.get("USER", ""))
        p.add_argument("--reason", default="")
        p.add_argument("--publish", metavar="TOPIC")
    sub.add_parser("cleanup", help="expire, compact, lint and report now")
    sub.add_parser("validate-config", help="check the configuration file")
    sub.add_parser("bootstrap-policy", help="create the base policy if it does not exist")
    args = parser.parse_args(argv)

    try:
        settings = config.load(args.config)
        if args.endpoint:
            settings = settings.with_policy(api_endpoint=args.endpoint.rstrip("/"))
        return _run(args, settings)
    except config.ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PolicyNotFound:
        print(f"the policy {settings.policy.name} does not exist in project {settings.policy.project}: "
              f"run 'python cli.py bootstrap-policy' or deploy.sh, or fix policy.name", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionDenied as exc:
        print(f"permission denied: {exc} (the caller needs the roles in README, 'IAM')", file=sys.stderr)
        return EXIT_FAILED
    except TransientError as exc:
        where = settings.policy.api_endpoint or "the Compute API"
        print(f"cannot reach {where}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ResponderError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _run(args: argparse.Namespace, settings: config.Settings) -> int:
    now = datetime.now(tz=UTC)
    if args.command == "validate-config":
        print(f"configuration is valid: policy {settings.policy.name} in {settings.policy.project}"
              f"{' (' + settings.policy.region + ')' if settings.policy.region else ' (global)'}, "
              f"band {settings.band.start}-{settings.band.end}")
        return 0
    if args.command in ("block", "unblock", "extend"):
        doc: dict[str, Any] = {"action": args.command, "ranges": args.ranges, "actor": args.actor, "reason": args.reason}
        for key in ("ttl", "expiry", "severity"):
            if getattr(args, key, None):
                doc[key] = getattr(args, key)
        for key in ("permanent", "force", "preview"):
            if getattr(args, key, False):
                doc[key] = True
        return _manual(settings, doc, args.publish)
    if args.command in ("preview-all", "enforce-all"):
        return _manual(settings, {"action": args.command, "actor": args.actor, "reason": args.reason}, args.publish)
    api = _api(settings)
    if args.command == "bootstrap-policy":
        for line in bootstrap_policy(settings, api):
            print(line)
        return 0
    if args.command == "cleanup":
        from responder.service import EventRef

        rt = _runtime(settings)
        outcome = rt.responder.cleanup(EventRef(f"cli-{uuid.uuid4().hex[:12]}", "cleanup", actor=os.environ.get("USER", "")))
        for record in rt.audit.records:
            print(record["message"])
        return 0 if not outcome.lint else EXIT_FAILED
    snap = api.get_policy()
    if args.command == "status":
        print(band_table(snap, settings, now))
        return 0
    # explain
    try:
        ipaddress.ip_network(args.address, strict=False)
    except ValueError:
        print(f"not an IP address or CIDR: {args.address!r}", file=sys.stderr)
        return EXIT_USAGE
    audit_file = os.environ.get("RESPONDER_AUDIT_FILE")
    if settings.policy.api_endpoint:
        trail: list[dict[str, Any]] = list(read_file(audit_file)) if audit_file else []
    else:
        trail = cloud_trail(settings, args.days)
    print(explain(snap, settings, args.address, now, trail))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
