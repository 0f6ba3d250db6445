"""Operator command line: ``python -m responder.cli COMMAND``.

Commands (each works against Google or, with ``--endpoint`` or
``RESPONDER_API_ENDPOINT``, against the local API):

* ``status``: the band as a table and its utilisation.
* ``validate-config``: load and check a configuration file.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from config import settings as config
from responder import planner
from responder.policy import PolicySnapshot


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
                f"{'+'.join(sorted(rule.meta.sources))}{'+…' if rule.meta.truncated else ''}"
            )
    for rule in band.foreign:
        lines.append(f"{rule.priority:>10}  {'(not ours: ' + (rule.description or 'no description') + ')':<24}")
    if len(lines) == 1:
        lines.append(f"{'':>10}  (the band is empty)")
    ranges = sum(len(r.networks) for r in band.rules)
    lines.append(
        f"band {settings.band.start}-{settings.band.end}: {len(band.rules)} rules, {ranges} ranges, "
        f"{len(band.foreign)} foreign; {len(band.rules) / settings.band.size:.1%} of the band; "
        f"policy holds {len(snap.rules)} rules"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m responder.cli", description="Operate the Cloud Armor responder.")
    parser.add_argument("--config", help="configuration file (default: RESPONDER_CONFIG or config/responder.toml)")
    parser.add_argument("--endpoint", help="API endpoint, e.g. the local API's http://127.0.0.1:PORT")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="show the band")
    sub.add_parser("validate-config", help="check the configuration file")
    args = parser.parse_args(argv)
    try:
        settings = config.load(args.config)
    except config.ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.endpoint:
        settings = settings.with_policy(api_endpoint=args.endpoint.rstrip("/"))
    if args.command == "validate-config":
        print(f"configuration is valid: policy {settings.policy.name} in {settings.policy.project}, "
              f"band {settings.band.start}-{settings.band.end}")
        return 0
    from responder.compute import CloudArmor

    api = CloudArmor(settings.policy)
    print(band_table(api.get_policy(), settings, datetime.now(tz=timezone.utc)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
