"""Operator command line: ``python cli.py COMMAND [OPTIONS]`` (in the venv).

Works against Google (Application Default Credentials) or, with
``--endpoint URL`` or ``RESPONDER_API_ENDPOINT``, against the local API.

  status                    the band as a table; utilisation of band and quota
  list                      the band's entries, one per range
  explain ADDRESS           which entry blocks ADDRESS, from which source, until when, and its audit trail
  block|unblock|extend ...  a manual command, applied directly or published to the manual topic (--publish)
  preview-all|enforce-all   the break-glass switch
  cleanup                   expire, compact, lint and report now
  report --html FILE        the band page: band, utilisation, changes and refusals in one HTML file
  restore                   rebuild the band from the audit trail after a wipe (--since, --yes)
  validate-config           load and check the configuration file
  bootstrap-policy          create the cluster's base policy when it does not exist
  capacity                  the configured feeds' rules against band.max_rules and the rule quota, and their address groups

Global options (before or after the command): --config FILE, --endpoint URL,
--json (read commands: a stable JSON document, see README "The command
line"), --dry-run (changing commands: print what would change, from a plan
the API validated with validateOnly, and change nothing), --debug.

Exit codes: 0 done; 1 unexpected error; 2 usage (bad arguments or command);
3 invalid configuration; 4 policy not found, permission denied or no
credentials; 5 unreachable or transient (try again); 6 nothing done because
every range was refused, cleanup found problems in the policy, or capacity
could not read a feed; 7 capacity: the feeds do not fit. Errors are one line
on stderr.

Like ``main.py`` this is an entry point: it sits above ``handlers/`` and
reuses the manual handler, so a command typed here is validated and guarded
exactly as one published to the manual topic.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import math
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import settings as config
from handlers.runtime import load_settings
from responder import planner
from responder.audit import LOGGER_NAME, Audit
from responder.errors import (
    BadEvent,
    PermissionDenied,
    PolicyNotFound,
    ResponderError,
    TransientError,
    Unresolvable,
)
from responder.policy import DEFAULT_RULE_PRIORITY, PolicyRule, PolicySnapshot

if TYPE_CHECKING:
    from responder.groupstore import GroupStore

EXIT_OK = 0
EXIT_ERROR = 1  # unexpected: a bug, or an API answer the command cannot classify
EXIT_USAGE = 2  # bad arguments, or a manual command the handler rejects
EXIT_CONFIG = 3  # the configuration file or an override is invalid
EXIT_ACCESS = 4  # the policy (or topic) does not exist, permission denied, no credentials
EXIT_TRANSIENT = 5  # unreachable, timed out, the lease held: try again
EXIT_REFUSED = 6  # nothing done: every range refused; cleanup found lint problems; capacity could not read a feed
EXIT_OVER = 7  # capacity: the configured feeds (with the band's other entries) do not fit

#: Version of the ``--json`` documents; bumped only on an incompatible change.
JSON_VERSION = 1


class Failure(Exception):
    """An expected failure: one line for stderr and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------
# presentation


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _when(expiry: datetime | None, now: datetime) -> str:
    if expiry is None:
        return "permanent"
    left = expiry - now
    text = expiry.strftime("%Y-%m-%d %H:%M")
    if left.total_seconds() <= 0:
        return f"{text} (expired)"
    hours = left.total_seconds() / 3600
    return f"{text} (in {hours:.1f} h)" if hours < 48 else f"{text} (in {hours / 24:.1f} d)"


def _policy_doc(settings: config.Settings) -> dict[str, Any]:
    return {"project": settings.policy.project, "name": settings.policy.name, "region": settings.policy.region or None}


def _state(rule: planner.BandRule, now: datetime) -> str:
    return "expired" if rule.meta.expired(now) else ("preview" if rule.preview else "enforced")


def _rule_doc(rule: planner.BandRule, now: datetime) -> dict[str, Any]:
    return {
        "priority": rule.priority, "action": rule.action, "preview": rule.preview, "state": _state(rule, now),
        "expiry": _iso(rule.meta.expiry), "severity": rule.meta.severity.name.lower(),
        "sources": sorted(rule.meta.sources), "truncated": rule.meta.truncated,
        "ranges": [str(n) for n in rule.networks],
    }


def group_docs(snap: PolicySnapshot, settings: config.Settings, now: datetime, *, items: bool = False,
               api: Any = None) -> list[dict[str, Any]]:
    """The band's group rules (feeds stored in address groups) and their
    groups' sizes; the Network Security API is called only when the band
    holds such a rule. With ``items``, each doc carries the group's items."""
    if not planner.read_band(snap.rules, settings.band).groups:
        return []
    from responder.groups import AddressGroups
    from responder.groupstore import GroupStore

    def groups() -> AddressGroups:
        return AddressGroups(settings.policy, settings.groups, retry_deadline=settings.policy.retry_deadline)

    store = GroupStore(settings, api, groups, Audit(file=None))
    return [
        {"feed": g.feed, "ip_version": g.version, "group": g.group, "priority": g.priority, "action": g.action,
         "preview": g.preview, "state": "expired" if g.expiry <= now else ("preview" if g.preview else "enforced"),
         "expiry": _iso(g.expiry), "items": g.size, "capacity": g.capacity,
         **({"members": list(g.items)} if items else {})}
        for g in store.status(snap, items=items)
    ]


def status_data(snap: PolicySnapshot, settings: config.Settings, now: datetime,
                groups: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``status`` document (see README for its shape)."""
    band = planner.read_band(snap.rules, settings.band)
    cap = settings.band.max_rules or settings.band.size
    rules = [_rule_doc(r, now) for r in sorted(band.rules, key=lambda r: r.priority)]
    return {
        "policy": _policy_doc(settings),
        "band": {
            "start": settings.band.start, "end": settings.band.end, "max_rules": cap,
            "rules": len(band.rules), "ranges": sum(len(r["ranges"]) for r in rules),
            "foreign": len(band.foreign), "utilisation": round(len(band.rules) / cap, 4),
        },
        "policy_rules": len(snap.rules),
        "rules": rules,
        "groups": [dict(g) for g in groups],
        "foreign": [{"priority": r.priority, "action": r.action, "description": r.description} for r in band.foreign],
    }


def status_text(data: Mapping[str, Any], now: datetime) -> str:
    lines = [f"{'priority':>10}  {'range':<24} {'action':<10} {'preview':<7} {'expires (UTC)':<30} {'sev':<8} sources"]
    for rule in data["rules"]:
        expiry = _when(_parse_time(rule["expiry"]), now)
        for net in rule["ranges"]:
            lines.append(
                f"{rule['priority']:>10}  {net:<24} {rule['action']:<10} {'yes' if rule['preview'] else 'no':<7} "
                f"{expiry:<30} {rule['severity']:<8} {'+'.join(rule['sources'])}{'+...' if rule['truncated'] else ''}"
            )
    for g in data.get("groups", ()):
        size = "?" if g["items"] is None else f"{g['items']} / {g['capacity']} items"
        lines.append(
            f"{g['priority']:>10}  {'group ' + g['group']:<24} {g['action']:<10} {'yes' if g['preview'] else 'no':<7} "
            f"{_when(_parse_time(g['expiry']), now):<30} {'':<8} {g['feed']} (IPv{g['ip_version']}): {size}"
        )
    for rule in data["foreign"]:
        lines.append(f"{rule['priority']:>10}  (not the responder's: {rule['description'] or 'no description'})")
    if len(lines) == 1:
        lines.append(f"{'':>10}  (the band is empty)")
    band = data["band"]
    lines.append(
        f"band {band['start']}-{band['end']}: {band['rules']} rules holding {band['ranges']} ranges, "
        f"{band['foreign']} foreign; {band['utilisation']:.1%} of the {band['max_rules']} rules allowed (band.max_rules); "
        f"the policy holds {data['policy_rules']} rules in all"
    )
    if data.get("groups"):
        held = sum(g["items"] or 0 for g in data["groups"])
        lines.append(f"address groups: {len(data['groups'])} group rule(s) holding {held} items")
    return "\n".join(lines)


def band_table(snap: PolicySnapshot, settings: config.Settings, now: datetime,
               groups: Sequence[Mapping[str, Any]] = ()) -> str:
    """The band's rules, one line per range (one per address group), and a utilisation line."""
    return status_text(status_data(snap, settings, now, groups), now)


def list_data(snap: PolicySnapshot, settings: config.Settings, now: datetime) -> dict[str, Any]:
    """The ``list`` document: the band's live entries, one per range (a range
    held by several rules is merged as the responder reads it: latest
    expiry, union of sources)."""
    band = planner.read_band(snap.rules, settings.band)
    holders: dict[str, list[int]] = {}
    for rule in band.rules:
        if not rule.meta.expired(now):
            for net in rule.networks:
                holders.setdefault(str(net), []).append(rule.priority)
    entries = sorted(band.entries(now).values(), key=lambda e: (e.network.version, e.network))
    return {
        "policy": _policy_doc(settings),
        "entries": [
            {
                "range": str(e.network), "action": e.action, "preview": e.preview, "expiry": _iso(e.meta.expiry),
                "severity": e.meta.severity.name.lower(), "sources": sorted(e.meta.sources),
                "truncated": e.meta.truncated, "strikes": e.meta.strikes,
                "priorities": sorted(holders.get(str(e.network), [])),
            }
            for e in entries
        ],
    }


def list_text(data: Mapping[str, Any], now: datetime) -> str:
    lines = [f"{'range':<24} {'action':<10} {'preview':<7} {'expires (UTC)':<30} {'sev':<8} {'sources':<24} rules"]
    for e in data["entries"]:
        lines.append(
            f"{e['range']:<24} {e['action']:<10} {'yes' if e['preview'] else 'no':<7} "
            f"{_when(_parse_time(e['expiry']), now):<30} {e['severity']:<8} "
            f"{'+'.join(e['sources']) + ('+...' if e['truncated'] else ''):<24} {','.join(map(str, e['priorities']))}"
        )
    lines.append(f"{len(data['entries'])} range(s) blocked" if data["entries"] else "the band blocks nothing")
    return "\n".join(lines)


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------
# the audit trail and explain


def _networks(value: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks a record's ``ranges`` names. Records differ: most hold a
    list of CIDRs, ``usage`` holds a count, some have none; anything that is
    not a list of readable ranges names no network."""
    if not isinstance(value, (list, tuple)):
        return []
    out = []
    for text in value:
        if isinstance(text, str):
            try:
                out.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                continue
    return out


def _overlaps(nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
              target: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return any(n.version == target.version and n.overlaps(target) for n in nets)


def _plain(value: Any) -> Any:
    """JSON-safe, with integral floats back to ints (Cloud Logging's gRPC
    transport returns every jsonPayload number as a float)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _record(raw: Mapping[str, Any], time: str | None = None) -> dict[str, Any] | None:
    """An audit record as explain shows it: every field as written, plus
    ``time`` (None when the source has none) and ``message``. None for
    anything that is not an audit record."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("change"), str):
        return None
    record = _plain(raw)
    record.setdefault("message", "")
    record["time"] = time if time is not None else (record.get("time") if isinstance(record.get("time"), str) else None)
    return record  # type: ignore[no-any-return]


def trail_from_file(path: str | Path) -> list[dict[str, Any]]:
    """The records of a local audit file (``RESPONDER_AUDIT_FILE``), oldest
    first; unreadable lines (a write cut short) are skipped."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = _record(json.loads(line)) if line.strip() else None
                except ValueError:
                    continue
                if record is not None:
                    out.append(record)
    except FileNotFoundError:
        pass
    return out


def trail_from_entries(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """Audit records from Cloud Logging entries as google-cloud-logging's
    ``list_entries`` yields them: a ``StructuredEntry`` whose ``payload`` is
    the jsonPayload (``responder`` holds the record, ``message`` the text)
    and whose ``timestamp`` is an aware datetime. Other entries are skipped."""
    out = []
    for entry in entries:
        payload = getattr(entry, "payload", None)
        if not isinstance(payload, Mapping) or not isinstance(payload.get("responder"), Mapping):
            continue
        stamp = getattr(entry, "timestamp", None)
        record = _record(
            {"message": payload.get("message", ""), **payload["responder"]},
            _iso(stamp) if isinstance(stamp, datetime) else None,
        )
        if record is not None:
            out.append(record)
    return out


def cloud_trail(settings: config.Settings, days: int = 30) -> list[dict[str, Any]]:
    """Audit records from Cloud Logging (the functions' structured logs)."""
    from google.cloud import logging as cloud_logging

    client = cloud_logging.Client(project=settings.policy.project)  # type: ignore[no-untyped-call]
    since = (datetime.now(tz=UTC) - timedelta(days=days)).isoformat()
    query = f'jsonPayload.responder.change:* AND timestamp>="{since}"'
    entries = client.list_entries(  # type: ignore[no-untyped-call]
        filter_=query, order_by=cloud_logging.ASCENDING, page_size=1000, max_results=20000
    )
    return trail_from_entries(entries)


#: Records that concern every band rule, shown with any covered address.
_BAND_WIDE = ("mode",)


def explain_data(
    snap: PolicySnapshot, settings: config.Settings, address: str, now: datetime, trail: Iterable[Mapping[str, Any]],
    groups: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The ``explain`` document: the band rules that cover ADDRESS (or a
    range), operator rules that match it, and the audit records that name a
    range overlapping it (plus band-wide ones, such as break-glass, once the
    address is or was blocked)."""
    target = ipaddress.ip_network(address, strict=False)
    band = planner.read_band(snap.rules, settings.band)
    covered = []
    for rule in sorted(band.rules, key=lambda r: r.priority):
        for net in rule.networks:
            if _overlaps([net], target):
                doc = _rule_doc(rule, now)
                del doc["ranges"]
                covered.append({"range": str(net), **doc})
    for g in groups:  # feeds stored in address groups (group_docs with items)
        for item in g.get("members", ()):
            if _overlaps(_networks([item]), target):
                covered.append({"range": item, "priority": g["priority"], "action": g["action"],
                                "preview": g["preview"], "state": g["state"], "expiry": g["expiry"],
                                "severity": "-", "sources": [g["feed"]], "truncated": False, "group": g["group"]})
    operator = [
        {"priority": r.priority, "action": r.action, "description": r.description}
        for r in snap.rules
        if not settings.band.start <= r.priority <= settings.band.end
        and _overlaps(_networks(list(r.ranges)), target)
    ]
    records = [r for r in map(_record, trail) if r is not None]
    history = [r for r in records if _overlaps(_networks(r.get("ranges")), target)]
    if covered or history:
        history = [r for r in records if r in history or r["change"] in _BAND_WIDE]
    return {
        "address": str(target),
        "blocked": any(c["state"] == "enforced" for c in covered),
        "covered_by": covered,
        "operator_rules": operator,
        "trail": history,
    }


_STATE_TEXT = {"enforced": "enforced", "preview": "in preview (logged, not enforced)", "expired": "expired, not yet cleaned up"}


def _ranges_text(value: Any, limit: int = 10) -> str:
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
        more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more
    return "-" if value is None else str(value)


def explain_text(data: Mapping[str, Any], now: datetime) -> str:
    target = data["address"]
    lines = []
    for c in data["covered_by"]:
        if c.get("group"):
            lines.append(
                f"{target} is covered by {c['range']} in address group {c['group']} (feed {c['sources'][0]}), "
                f"matched by rule {c['priority']}: {c['action']}, {_STATE_TEXT[c['state']]}, "
                f"until {_when(_parse_time(c['expiry']), now)}")
            continue
        lines.append(
            f"{target} is covered by {c['range']} in rule {c['priority']}: {c['action']}, {_STATE_TEXT[c['state']]}, "
            f"until {_when(_parse_time(c['expiry']), now)}, severity {c['severity']}, "
            f"sources {', '.join(c['sources']) or '-'}"
        )
    if not lines:
        lines.append(f"{target} is not blocked by the responder's band")
    for r in data["operator_rules"]:
        lines.append(f"{target} also matches operator rule {r['priority']} ({r['action']}): {r['description'] or 'no description'}")
    if data["trail"]:
        lines.append("audit trail:")
        for r in data["trail"]:
            lines.append("  " + trail_line(r))
    return "\n".join(lines)


def trail_line(r: Mapping[str, Any]) -> str:
    """One audit record on one line; any record shape."""
    head = f"{r.get('time') or '-'} {r.get('change')}{' (validate only)' if r.get('outcome') == 'validate_only' else ''}"
    if "ranges" in r and isinstance(r["ranges"], (list, tuple)):
        body = (f": {_ranges_text(r['ranges'])} source={r.get('source', '-')} actor={r.get('actor', '-')} "
                f"expiry={r.get('expiry', '-')} reason={r.get('reason', '-')} message={r.get('message_id', '-')}")
    else:
        body = f": {r.get('message') or '-'} source={r.get('source', '-')} actor={r.get('actor', '-')} message={r.get('message_id', '-')}"
    return head + body


# --------------------------------------------------------------------------
# what a changing command did (or would do)

_DONE = {"added": ("added", "would add"), "extended": ("extended", "would extend"), "removed": ("removed", "would remove"),
         "expired": ("expired", "would expire"), "evicted": ("evicted", "would evict")}


def _count(ranges: Sequence[Any]) -> str:
    return f"{len(ranges)} range(s): {_ranges_text(list(ranges))}"


def change_line(r: Mapping[str, Any]) -> str:
    """A record written by a changing command, as the operator reads it;
    validate-only records say what *would* happen."""
    change = str(r.get("change"))
    dry = r.get("outcome") == "validate_only"
    if change in _DONE:
        verb = _DONE[change][dry]
        ranges = r["ranges"] if isinstance(r.get("ranges"), list) else []
        line = f"{verb} {_count(ranges)}"
        if change == "added":
            line += (f" ({r.get('action')}{', preview' if r.get('preview') else ''}, until {r.get('expiry')}, "
                     f"severity {r.get('severity')}, priority {r.get('priority')})")
        elif change == "extended":
            line += f" (until {r.get('expiry')}, sources {'+'.join(map(str, r.get('sources') or []))}, priority {r.get('priority')})"
        elif change == "evicted" and r.get("capacity"):
            line += f" ({r['capacity']})"
        return line
    if change == "lint":
        return f"problem in the policy: {r.get('message')}"
    return str(r.get("message") or change)


def _within(net: ipaddress.IPv4Network | ipaddress.IPv6Network,
            nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    return any(net.version == n.version and net.subnet_of(n) for n in nets)  # type: ignore[arg-type]


def report_changes(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The lines to print for the records of one command. A ``removed``
    record that names the broader ranges it split (``split``: an unblock
    inside a broader block) is told as such: the hole is unblocked, the
    pieces around it stay blocked as before."""
    lines = []
    for r in records:
        if r.get("change") == "removed" and r.get("split"):
            dry = r.get("outcome") == "validate_only"
            holes = _networks(r.get("ranges"))
            broad = _networks(r.get("split"))
            for cover in broad:
                inside = [h for h in holes if _within(h, [cover])]
                pieces = [cover]
                for hole in inside:
                    kept: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
                    for q in pieces:
                        if q != hole:
                            kept.extend(q.address_exclude(hole) if _within(hole, [q]) else [q])  # type: ignore[arg-type]
                    pieces = kept
                lines.append(
                    f"{'would unblock' if dry else 'unblocked'} {', '.join(map(str, inside))} by splitting {cover}: "
                    f"{len(pieces)} range(s) around it {'would stay' if dry else 'stay'} blocked as before"
                )
            rest = [str(h) for h in holes if not _within(h, broad)]
            if not rest:
                continue
            r = {**r, "ranges": rest}
        lines.append(change_line(r))
    return lines


# --------------------------------------------------------------------------
# commands


def _api(settings: config.Settings) -> Any:
    from responder.compute import CloudArmor

    return CloudArmor(settings.policy, retry_deadline=settings.policy.retry_deadline)


def _runtime(settings: config.Settings) -> Any:
    from handlers.runtime import Runtime

    return Runtime(settings, Audit(file=os.environ.get("RESPONDER_AUDIT_FILE") or None))


def _dry_settings(settings: config.Settings, dry: bool) -> config.Settings:
    return replace(settings, band=replace(settings.band, validate_only=True)) if dry else settings


def _dry_note(dry_flag: bool, validated: bool = True) -> str:
    why = "--dry-run" if dry_flag else "band.validate_only is on"
    return f"dry run ({why}): {'the API validated this plan; ' if validated else ''}nothing was changed"


def _print_outcome(lines: Sequence[str], records: Sequence[Mapping[str, Any]], dry_flag: bool) -> None:
    for line in lines:
        print(line)
    if any(r.get("outcome") == "validate_only" for r in records) or dry_flag:
        print(_dry_note(dry_flag))


def _manual(args: argparse.Namespace, settings: config.Settings, doc: dict[str, Any]) -> int:
    from handlers import manual
    from handlers.envelope import Message

    if not str(doc.get("actor") or "").strip():
        raise Failure(EXIT_USAGE, f"{args.command}: who asks? give --actor NAME (it defaults to $USER, which is not set here)")
    data = json.dumps(doc).encode()
    if args.publish:
        return _publish(settings, args.publish, data, args.dry_run)
    rt = _runtime(_dry_settings(settings, args.dry_run))
    message = Message(data=data, message_id=f"cli-{uuid.uuid4().hex[:12]}", publish_time=datetime.now(tz=UTC))
    try:
        if args.dry_run and args.command in ("preview-all", "enforce-all"):
            return _dry_mode(rt, args.command == "preview-all")
        outcome = manual.handle(message, rt)
    except BadEvent as exc:
        raise Failure(EXIT_USAGE, f"{args.command}: {str(exc).removeprefix('manual command: ')}") from None
    records = rt.audit.records
    _print_outcome(report_changes(records), records, args.dry_run)
    if outcome.refused and not (outcome.added or outcome.extended or outcome.removed or outcome.ops):
        raise Failure(EXIT_REFUSED, f"{args.command}: nothing changed: every range was refused")
    return EXIT_OK


def _dry_mode(rt: Any, preview: bool) -> int:
    """The break-glass switch as a dry run: each band rule it would patch,
    validated by the API with validateOnly."""
    settings = rt.settings
    snap = rt.api.get_policy()
    band = planner.read_band(snap.rules, settings.band)
    todo = [r for r in sorted(band.rules, key=lambda r: r.priority) if r.preview != preview]
    for rule in todo:
        rt.api.patch_rule(replace(rule.rule, preview=preview), validate_only=True)
        print(f"would {'put' if preview else 'enforce'} rule {rule.priority} ({len(rule.networks)} range(s))"
              f"{' in preview' if preview else ' again'}")
    label = settings.lease.mode_label
    print(f"would set the policy label {label}=preview (new band rules go to preview while it is set)" if preview
          else f"would remove the policy label {label}")
    print(f"{len(todo)} band rule(s) would change")
    print(_dry_note(True))
    return EXIT_OK


def _publish(settings: config.Settings, topic: str, data: bytes, dry: bool) -> int:
    """Publishes to a Pub/Sub topic over its REST API with ADC."""
    import base64

    path = topic if topic.startswith("projects/") else f"projects/{settings.policy.project}/topics/{topic}"
    if dry:
        print(f"would publish to {path}: {data.decode()}")
        print(_dry_note(True, validated=False))
        return EXIT_OK
    import google.auth
    import google.auth.exceptions
    import requests
    from google.auth.transport.requests import AuthorizedSession

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/pubsub"])
        response = AuthorizedSession(credentials).post(  # type: ignore[no-untyped-call]
            f"https://pubsub.googleapis.com/v1/{path}:publish",
            json={"messages": [{"data": base64.b64encode(data).decode()}]}, timeout=settings.policy.request_timeout.total_seconds(),
        )
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise Failure(EXIT_ACCESS, f"no Google credentials to publish with: run 'gcloud auth application-default login' "
                      f"or set GOOGLE_APPLICATION_CREDENTIALS ({exc})") from None
    except google.auth.exceptions.RefreshError as exc:
        raise Failure(EXIT_ACCESS, f"the Google credentials were refused: {exc}") from None
    except (requests.RequestException, google.auth.exceptions.TransportError) as exc:
        raise Failure(EXIT_TRANSIENT, f"cannot reach Pub/Sub to publish to {path}: {exc}") from None
    if response.status_code != 200:
        code = EXIT_ACCESS if response.status_code in (401, 403, 404) else (
            EXIT_TRANSIENT if response.status_code == 429 or response.status_code >= 500 else EXIT_ERROR)
        raise Failure(code, f"publishing to {path} failed: HTTP {response.status_code} {response.text[:300]}")
    print(f"published to {path}: message {response.json()['messageIds'][0]}")
    return EXIT_OK


def bootstrap_policy(settings: config.Settings, api: Any, *, dry_run: bool = False) -> list[str]:
    """Creates the base policy when it does not exist: the trusted ranges
    allowed at ``bootstrap.trusted_priority`` (10 per rule), the default rule
    as configured, the band empty. An existing policy is never rewritten.
    ``dry_run``: the insert is validated by the API (validateOnly) and the
    lines say what would be done."""
    boot = dict(settings.raw.get("bootstrap", {}))
    try:
        trusted = [str(ipaddress.ip_network(r, strict=False)) for r in boot.get("trusted_ranges", [])]
    except ValueError as exc:
        raise config.ConfigError(f"bootstrap.trusted_ranges: {exc}") from None
    first = int(boot.get("trusted_priority", 1000))
    default_action = str(boot.get("default_action", "allow"))
    if default_action not in ("allow", *config.DENY_ACTIONS):
        raise config.ConfigError(f"bootstrap.default_action: must be allow or deny(403|404|502), got {default_action!r}")
    chunks = [trusted[i : i + 10] for i in range(0, len(trusted), 10)]
    if chunks and settings.band.start <= first + len(chunks) - 1 and first <= settings.band.end:
        raise config.ConfigError(f"bootstrap.trusted_priority: {first} puts trusted rules inside the band")
    try:
        api.get_policy()
        kept = f"policy {settings.policy.name} exists: {'would be kept' if dry_run else 'kept'} as it is"
        return [kept, _dry_note(True, validated=False)] if dry_run else [kept]
    except PolicyNotFound:
        pass
    description = "ML cluster edge policy (bootstrapped by the Cloud Armor responder)"
    done = [f"would create policy {settings.policy.name}" if dry_run else f"created policy {settings.policy.name}"]
    if dry_run:
        api.create_policy(description, validate_only=True)
        done[0] += " (insert validated by the API)"
    else:
        api.create_policy(description)
    for i, chunk in enumerate(chunks):
        if not dry_run:
            api.add_rule(PolicyRule(first + i, "allow", tuple(chunk), description="trusted ranges (bootstrap)"))
        done.append(f"{'would allow' if dry_run else 'allowed'} {len(chunk)} trusted range(s) at priority {first + i}")
    if default_action != "allow" and not dry_run:
        api.patch_rule(PolicyRule(DEFAULT_RULE_PRIORITY, default_action, ("*",), description="default rule"))
    done.append(f"{'would set the ' if dry_run else ''}default rule: {default_action}; band {settings.band.start}-{settings.band.end} left empty")
    if dry_run:
        done.append(_dry_note(True))
    return done


def cmd_status(args: argparse.Namespace, settings: config.Settings) -> int:
    now = datetime.now(tz=UTC)
    if len(settings.target_names) > 1:  # several targets, no --target: each one's band
        docs = {}
        for name in settings.target_names:
            one = settings.for_target(name)
            api = _api(one)
            snap = api.get_policy()
            groups = group_docs(snap, one, now, api=api) if name == settings.default_target else []
            docs[name] = status_data(snap, one, now, groups)
        emit(args, "status", {"targets": docs}, lambda d: "\n\n".join(
            f"target {name}: {_target_line(doc)}\n{status_text(doc, now)}" for name, doc in d["targets"].items()))
        return EXIT_OK
    api = _api(settings)
    snap = api.get_policy()
    groups = group_docs(snap, settings, now, api=api)
    emit(args, "status", status_data(snap, settings, now, groups), lambda d: status_text(d, now))
    return EXIT_OK


def _target_line(doc: Mapping[str, Any]) -> str:
    p, b = doc["policy"], doc["band"]
    return (f"{p['name']} in {p['project']} ({p['region'] or 'global'}), band {b['start']}-{b['end']}, "
            f"{b['rules']} rule(s), {b['ranges']} range(s)")


def cmd_list(args: argparse.Namespace, settings: config.Settings) -> int:
    now = datetime.now(tz=UTC)
    emit(args, "list", list_data(_api(settings).get_policy(), settings, now), lambda d: list_text(d, now))
    return EXIT_OK


def cmd_explain(args: argparse.Namespace, settings: config.Settings) -> int:
    try:
        ipaddress.ip_network(args.address, strict=False)
    except ValueError:
        raise Failure(EXIT_USAGE, f"explain: not an IP address or CIDR: {args.address!r}") from None
    now = datetime.now(tz=UTC)
    api = _api(settings)
    snap = api.get_policy()
    groups = group_docs(snap, settings, now, items=True, api=api)
    trail, trail_source, trail_error = read_trail(settings, args.days, "explain")
    data = {**explain_data(snap, settings, args.address, now, trail, groups), "trail_source": trail_source,
            "trail_error": trail_error}
    emit(args, "explain", data, lambda d: explain_text(d, now))
    return EXIT_OK


def read_trail(settings: config.Settings, days: int, command: str) -> tuple[list[dict[str, Any]], str, str | None]:
    """The audit trail, where it is (oldest first), with where it came from
    ('file', 'cloud-logging' or 'none') and why it could not be read. The
    local file (``RESPONDER_AUDIT_FILE``) wins; against a local endpoint
    without one there is no trail. A Cloud Logging failure is said on stderr
    and returned: the band part of a command still answers."""
    audit_file = os.environ.get("RESPONDER_AUDIT_FILE")
    if audit_file:
        return trail_from_file(audit_file), "file", None
    if settings.policy.api_endpoint:
        return [], "none", None
    try:
        return cloud_trail(settings, days), "cloud-logging", None
    except Exception as exc:
        error = _one_line(f"{type(exc).__name__}: {exc}")
        print(f"{command}: the audit trail could not be read from Cloud Logging: {error}", file=sys.stderr)
        return [], "cloud-logging", error


def cmd_report(args: argparse.Namespace, settings: config.Settings) -> int:
    import report

    now = datetime.now(tz=UTC)
    snap = _api(settings).get_policy()
    trail, trail_source, trail_error = read_trail(settings, args.days, "report")
    data = report.page_data(snap, settings, trail, now, trail_source=trail_source, trail_error=trail_error)
    try:
        path = report.write(args.html, data)
    except OSError as exc:
        raise Failure(EXIT_ERROR, f"report: cannot write {args.html}: {exc.strerror or exc}") from None
    print(f"wrote {path}: {data['band']['ranges']} range(s) in {data['band']['rules']} rule(s), "
          f"{data['trail']['records']} audit record(s) ({trail_source})")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, settings: config.Settings) -> int:
    """Rebuilds the band from the audit trail: every entry the trail says the
    band held, unexpired and never unblocked, withdrawn, expired or evicted,
    is blocked again through the band service (guards, capacity and
    idempotency as for any block). Prints the plan; changes the band only
    with --yes (--dry-run: the API validates it, nothing is changed)."""
    from responder import guards, restore
    from responder.model import Intent
    from responder.service import EventRef

    now = datetime.now(tz=UTC)
    since = _since(args.since, now) if args.since else None
    audit_file = os.environ.get("RESPONDER_AUDIT_FILE")
    if audit_file:
        trail, where = trail_from_file(audit_file), f"the audit file {audit_file}"
    elif settings.policy.api_endpoint:
        raise Failure(EXIT_USAGE, "restore: no audit trail: set RESPONDER_AUDIT_FILE (against a local API the trail "
                      "is that file; Cloud Logging is read against Google)")
    else:
        days = max(1, -(-(now - since).total_seconds() // 86400)) if since else args.days
        try:
            trail, where = cloud_trail(settings, int(days)), f"Cloud Logging (the last {int(days)} day(s))"
        except Exception as exc:
            raise Failure(EXIT_ACCESS, f"restore: the audit trail could not be read from Cloud Logging: "
                          f"{type(exc).__name__}: {exc} (the caller needs roles/logging.viewer)") from None
    claims = restore.live(restore.replay(trail, since), now)
    rt = _runtime(_dry_settings(settings, args.dry_run))
    snap = rt.api.get_policy()
    band = planner.read_band(snap.rules, settings.band)
    before = band.entries(now)
    todo: list[Intent] = restore.intents(claims, now)
    accepted, refused = guards.screen(todo, "manual", settings, force=True)  # the guards of today hold
    plan = planner.plan_append(band, accepted, now, settings.band, seed=0)
    missing = [c for c in claims if plan.entries.get(c.network) != before.get(c.network)]
    print(f"the trail ({where}{', since ' + _iso(since) if since else ''}) holds {len(claims)} live entr"
          f"{'y' if len(claims) == 1 else 'ies'}; the band lacks {len(missing)}:")
    for c in missing:
        print(f"  restore {c.network} {c.action}{' preview' if c.preview else ''} until {_when(c.expiry, now)}, "
              f"severity {c.severity.name.lower()}, sources {'+'.join(c.sources)}"
              f"{f', strikes {c.strikes}' if c.strikes else ''} (recorded {c.time or '-'})")
    for intent, why in refused:
        print(f"  refused {intent.network} ({intent.source}): {why}")
    if not missing:
        print("nothing to restore: the band holds every live entry of the trail")
        return EXIT_OK
    if not args.yes and not args.dry_run:
        raise Failure(EXIT_REFUSED, f"restore: nothing changed: run again with --yes to restore {len(missing)} "
                      f"entr{'y' if len(missing) == 1 else 'ies'} (or --dry-run to have the API validate the plan)")
    ref = EventRef(f"restore-{uuid.uuid4().hex[:12]}", "restore", actor=args.actor, reason=args.reason or "restore after a wipe")
    for intent, why in refused:
        rt.audit.record("refused", f"refused restore of {intent.network}: {why}", level=logging.WARNING,
                        message_id=ref.message_id, source=intent.source, ranges=[str(intent.network)], reason=why)
    wanted = {c.network for c in missing}
    rt.responder.apply([i for i in accepted if i.network in wanted], ref, validate_only=args.dry_run)
    records = rt.audit.records
    _print_outcome(report_changes(records), records, args.dry_run)
    return EXIT_OK


def _since(text: str, now: datetime) -> datetime:
    """--since: an RFC 3339 time, or a duration back from now (6h, 2d)."""
    moment = _parse_time(text)
    if moment is not None:
        return moment
    try:
        return now - config.parse_duration(text, "--since")
    except config.ConfigError:
        raise Failure(EXIT_USAGE, f"restore: --since takes an RFC 3339 time or a duration (6h, 2d), got {text!r}") from None


def cmd_manual(args: argparse.Namespace, settings: config.Settings) -> int:
    doc: dict[str, Any] = {"action": args.command, "ranges": args.ranges, "actor": args.actor, "reason": args.reason}
    for key in ("ttl", "expiry", "severity"):
        if getattr(args, key, None):
            doc[key] = getattr(args, key)
    for key in ("permanent", "force", "preview"):
        if getattr(args, key, False):
            doc[key] = True
    return _manual(args, settings, doc)


def cmd_mode(args: argparse.Namespace, settings: config.Settings) -> int:
    return _manual(args, settings, {"action": args.command, "actor": args.actor, "reason": args.reason})


def cmd_cleanup(args: argparse.Namespace, settings: config.Settings) -> int:
    from responder.service import EventRef

    rt = _runtime(settings)
    dry = args.dry_run or settings.band.validate_only
    outcome = rt.responder.cleanup(
        EventRef(f"cli-{uuid.uuid4().hex[:12]}", "cleanup", actor=os.environ.get("USER", "")), validate_only=dry
    )
    records = rt.audit.records
    lines = report_changes(records)
    if dry and not any(r.get("change") in _DONE for r in records):
        lines.append("nothing would change")
    _print_outcome(lines, records, args.dry_run)
    if outcome.lint:
        raise Failure(EXIT_REFUSED, f"cleanup: {len(outcome.lint)} problem(s) in the policy (above)")
    return EXIT_OK


def cmd_validate_config(args: argparse.Namespace, settings: config.Settings) -> int:
    print(f"configuration is valid: policy {settings.policy.name} in {settings.policy.project}"
          f"{' (' + settings.policy.region + ')' if settings.policy.region else ' (global)'}, "
          f"band {settings.band.start}-{settings.band.end}")
    return EXIT_OK


def cmd_bootstrap(args: argparse.Namespace, settings: config.Settings) -> int:
    for line in bootstrap_policy(settings, _api(settings), dry_run=args.dry_run):
        print(line)
    return EXIT_OK


# --------------------------------------------------------------------------
# capacity

#: SECURITY_POLICY_RULES as commonly seen; not confirmed (README, "Capacity").
DEFAULT_QUOTA = 200
#: SECURITY_POLICY_CEVAL_RULES (rules with an expression, a group rule among
#: them) as seen as a default; not confirmed (README, "Address groups").
DEFAULT_CEVAL_QUOTA = 20
#: Priorities for planning without a band limit ("rules needed").
_UNBOUNDED = 10_000_000


@dataclass(frozen=True)
class FeedList:
    """One feed's list as ``capacity`` read it."""

    name: str
    source: str  # "url" or "file"
    location: str
    body: bytes


def _feed_files(values: Sequence[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise Failure(EXIT_USAGE, f"capacity: --file takes NAME=PATH, got {value!r}")
        files[name] = Path(path)
    return files


def read_feeds(settings: config.Settings, files: Mapping[str, Path]) -> tuple[list[FeedList], list[dict[str, str]]]:
    """The lists to check: each file given, and each configured feed with a
    url (downloaded as a pull does: handlers/feed_pull.py), plus the
    configured feeds that could not be checked and why."""
    from handlers import feed_pull

    lists: list[FeedList] = []
    for name, path in files.items():
        try:
            lists.append(FeedList(name, "file", str(path), path.read_bytes()))
        except OSError as exc:
            raise Failure(EXIT_USAGE, f"capacity: cannot read {path} for feed {name}: {exc.strerror or exc}") from None
    unchecked = []
    for name, feed in sorted(settings.feeds.items()):
        if name in files:
            continue
        if not feed.url:
            unchecked.append({"name": name, "why": "no url (a published feed): give --file NAME=PATH"})
            continue
        try:
            got = feed_pull.download(feed, os.environ, None)
            body = feed_pull.unpack(feed, got)
        except feed_pull.PullRefused as exc:
            raise Failure(EXIT_REFUSED, f"capacity: {exc}") from None
        except feed_pull.PullFailed as exc:
            raise Failure(EXIT_TRANSIENT, f"capacity: {exc} (try again)") from None
        lists.append(FeedList(name, "url", feed.url, body))
    return lists, unchecked


def _rules_for(entries: Iterable[planner.Entry]) -> tuple[int, int]:
    """(ranges, rules) of entries as the planner packs them: grouped by
    metadata, aggregated, at most 10 ranges to a rule."""
    groups = planner.pack(entries)
    return (sum(len(nets) for nets in groups.values()),
            sum(math.ceil(len(nets) / planner.MAX_RANGES_PER_RULE) for nets in groups.values()))


def capacity_data(snap: PolicySnapshot, settings: config.Settings, lists: Sequence[FeedList], quota: int,
                  now: datetime, unchecked: Sequence[Mapping[str, str]] = (), *,
                  store: GroupStore, ceval_quota: int = DEFAULT_CEVAL_QUOTA,
                  tier: str | None = None) -> dict[str, Any]:
    """The ``capacity`` document: per feed its entries, ranges after
    aggregation and rules; the band as it would be with every list loaded
    (the band's other entries kept, each checked feed's old claims replaced
    by its list) against band.max_rules, the free band priorities and the
    rule quota; and what the planner's capacity policy would evict.

    A feed the responder would keep in address groups (``store``, decided by
    ``GroupStore.wanted`` as a snapshot decides it) takes one band rule per
    IP version instead of its range rules; each such group's items, the
    capacity the responder would give it, and the advanced-rule quota those
    rules use are reported under ``groups`` and ``ceval``. On the Standard
    tier (``tier``, else the policy's tier label) these feeds are counted
    as band rules, as the responder falls back to them."""
    from handlers.formats import FormatError, parse_feed
    from handlers.threat_feed import feed_intents
    from responder import guards
    from responder.model import Intent, Verb

    band_settings = settings.band
    band = planner.read_band(snap.rules, band_settings)
    tier_doc = _tier(snap, settings, store, tier)
    feeds: list[dict[str, Any]] = []
    blocks: list[Intent] = []
    grouped: list[dict[str, Any]] = []
    for item in lists:
        feed = settings.feed(item.name)
        fmt = feed.format if feed.format != "auto" else None
        try:
            parsed = parse_feed(item.body, fmt, now)
        except FormatError as exc:
            raise Failure(EXIT_REFUSED, f"capacity: feed {item.name} ({item.location}): {exc}") from None
        intents, errors, skipped = feed_intents(parsed.sightings, feed, settings, now)
        wanted = [i for i in intents if i.verb is Verb.BLOCK]
        accepted, refused = guards.screen(wanted, "feed", settings)
        if not accepted:
            raise Failure(EXIT_REFUSED, f"capacity: feed {item.name} ({item.location}) holds no valid indicator "
                          f"({len(parsed.errors) + len(errors)} bad item(s), {len(refused)} refused by the guards)")
        own, _, _ = planner.apply_intents({}, accepted, now, band_settings.expiry_granularity)
        ranges, rules = _rules_for(own.values())
        expiries = sorted({e.meta.expiry for e in own.values() if e.meta.expiry is not None})
        networks = [i.network for i in accepted if i.verb is Verb.BLOCK]
        stored, why = _store_of(feed, networks, snap, settings, store, tier_doc)
        feeds.append({
            "name": item.name, "format": parsed.notes[0].split("=", 1)[1], "source": item.source,
            "location": item.location, "entries": len(wanted), "bad_items": len(parsed.errors) + len(errors) + skipped,
            "refused": len(refused), "ranges": ranges, "rules": rules,
            "expiry": _iso(expiries[0]) if len(expiries) == 1 else None,
            "store": feed.store, "stored_in": stored, "store_why": why,
        })
        if stored == "address-group":
            grouped += _group_plans(store, band, feed, networks)
        else:
            blocks += accepted
    checked = {f["name"] for f in feeds}
    live = band.entries(now)
    # Each checked feed's list replaces its claims in the band.
    withdraw = [Intent(Verb.UNBLOCK, net, name) for net, e in live.items() for name in sorted(e.meta.sources & checked)]
    unbounded = replace(band_settings, end=band_settings.start + _UNBOUNDED - 1)
    others = planner.plan_reconcile(band, withdraw, now, unbounded)
    other_ranges, other_rules = _rules_for(others.entries.values())
    whole = planner.plan_reconcile(band, [*withdraw, *blocks], now, unbounded)
    total_ranges, needed = _rules_for(whole.entries.values())
    # Operator rules, the default rule, foreign rules in the band (group rules are counted apart).
    outside = len(snap.rules) - len(band.rules) - len(band.groups)
    group_feeds = {g["feed"] for g in grouped}
    other_group_rules = [r for r in band.groups if _group_feed(r, settings) not in group_feeds]
    group_rules = sum(1 for g in grouped if g["rule"]) + len(other_group_rules)
    max_rules = band_settings.max_rules or band_settings.size
    free = band_settings.size - len(band.foreign) - group_rules
    room = quota - outside - group_rules
    limit = max(0, min(max_rules, free, room))
    mine = {r.rule.priority for r in _feed_group_rules(band, settings, group_feeds)}
    ceval_others = sum(1 for r in snap.rules if r.expression and r.priority not in mine)
    ceval_groups = sum(1 for g in grouped if g["rule"])
    capped = planner.plan_reconcile(band, [*withdraw, *blocks], now, band_settings, capacity=limit)
    evicted: dict[str, int] = {}
    for entry in capped.evicted:
        for source in entry.meta.sources:
            evicted[source] = evicted.get(source, 0) + 1
    kept: dict[str, int] = {}
    for entry in capped.entries.values():
        for source in entry.meta.sources & checked:
            kept[source] = kept.get(source, 0) + 1
    kept_ranges, kept_rules = _rules_for(capped.entries.values())
    groups: dict[tuple[str, str, str | None], int] = {}
    for entry in capped.evicted:
        key = ("+".join(sorted(entry.meta.sources)), entry.meta.severity.name.lower(), _iso(entry.meta.expiry))
        groups[key] = groups.get(key, 0) + 1
    ceval_fits = ceval_groups <= ceval_quota - ceval_others
    return {
        "policy": _policy_doc(settings),
        "feeds": feeds,
        "unchecked": list(unchecked),
        "others": {"ranges": other_ranges, "rules": other_rules, "group_rules": len(other_group_rules)},
        "total": {"ranges": total_ranges, "rules": needed},
        "limits": {
            "max_rules": max_rules, "band_free": free, "quota": quota, "rules_outside_band": outside,
            "group_rules": group_rules, "quota_room": room, "capacity": limit,
        },
        "tier": tier_doc,
        "groups": grouped,
        "ceval": {"quota": ceval_quota, "other_rules": ceval_others, "group_rules": ceval_groups,
                  "used": ceval_others + ceval_groups, "fits": ceval_fits},
        "fits": needed <= limit and not capped.evicted and ceval_fits and not any(g["refused"] for g in grouped),
        "over": max(0, needed - limit),
        "evicted": {
            "ranges": len(capped.evicted), "by_source": dict(sorted(evicted.items())),
            "order": [{"sources": s, "severity": v, "expiry": x, "ranges": n} for (s, v, x), n in groups.items()],
        },
        "kept": {"ranges": kept_ranges, "rules": kept_rules,
                 "by_feed": {f["name"]: kept.get(f["name"], 0) for f in feeds}},
    }


def _tier(snap: PolicySnapshot, settings: config.Settings, store: GroupStore, given: str | None) -> dict[str, Any]:
    """The Cloud Armor tier as capacity knows it: ``--tier``, else the
    policy's tier label (set by the responder when the API said Standard,
    trusted for a day as the responder trusts it), else unknown."""
    label = store.tier_label
    if given:
        return {"tier": given, "from": "--tier", "label": None}
    value = snap.labels.get(label)
    if store.standard_tier(snap):
        return {"tier": "standard", "from": f"policy label {label}", "label": value}
    return {"tier": "unknown", "from": "none", "label": value}


def _store_of(feed: config.FeedSettings, networks: Sequence[Any], snap: PolicySnapshot, settings: config.Settings,
              store: GroupStore, tier: Mapping[str, Any]) -> tuple[str, str]:
    """Where a snapshot of the feed would go ("band" or "address-group"),
    as ``GroupStore.wanted`` decides, and why."""
    from responder.groupstore import band_rules_needed

    if feed.store == "band":
        return "band", 'store = "band"'
    if not feed.snapshot:  # refused by the configuration; kept for a --file of an unconfigured name
        return "band", f'store = "{feed.store}" without snapshot = true'
    if tier["tier"] == "standard":
        return "band", f'store = "{feed.store}", but the project is on the Standard tier: falls back to band rules'
    needed = band_rules_needed(networks)
    auto = settings.groups.auto_rules
    if not store.wanted(feed, networks, snap):
        return "band", f'store = "auto": {needed:,} band rules, not more than groups.auto_rules ({auto})'
    if feed.store == "address-group":
        return "address-group", 'store = "address-group"'
    if needed > auto:
        return "address-group", f'store = "auto": {needed:,} band rules, more than groups.auto_rules ({auto})'
    return "address-group", f'store = "auto": {needed:,} band rules, but the feed already has a group rule'


def _feed_group_rules(band: planner.Band, settings: config.Settings, feeds: Iterable[str]) -> list[Any]:
    from responder.groupstore import group_rules

    wanted = set(feeds)
    return [r for r in group_rules(band, settings.band.owner_tag) if r.meta.feed in wanted]


def _group_feed(rule: PolicyRule, settings: config.Settings) -> str | None:
    from responder.codec import decode_group

    meta = decode_group(settings.band.owner_tag, rule.description)
    return meta.feed if meta is not None else None


def _group_plans(store: GroupStore, band: planner.Band, feed: config.FeedSettings,
                 networks: Sequence[Any]) -> list[dict[str, Any]]:
    """Per IP version, what the feed's group would hold after this list: its
    items (aggregated as the store aggregates them), the group (the one in
    place when the items fit its capacity, else a new one of
    ``groups.capacity_for(items)``) and the item calls of the diff."""
    from responder.groupstore import generation_of, group_name, items_by_version, plan_items

    gs = store.settings.groups
    want = items_by_version(networks)
    mine = _feed_group_rules(band, store.settings, [feed.name])
    out = []
    for version in (4, 6):
        items = want[version]
        current = store.current(feed.name, version, mine)
        rule, group = current if current is not None else (None, None)
        if not items and rule is None:
            continue
        doc: dict[str, Any] = {
            "feed": feed.name, "ip_version": version, "items": len(items),
            "band_rules": math.ceil(len(items) / planner.MAX_RANGES_PER_RULE),
            "current": None if rule is None else {
                "group": rule.group, "items": group.size if group else None,
                "capacity": group.capacity if group else None},
            "group": None, "capacity": None, "add": 0, "remove": 0, "item_calls": 0,
            "rule": True, "refused": False,
        }
        if not items:
            doc.update(action="removed", rule=False)  # the rule, then the group, go
        elif len(items) > gs.max_capacity:
            doc.update(action="refused", refused=True, rule=rule is not None,
                       group=rule.group if rule else None, capacity=group.capacity if group else None)
        else:
            diff = plan_items(group, items, gs.capacity_for)
            if diff.replace:
                taken = generation_of(gs.prefix, feed.name, version, rule.group) if rule else 0
                doc.update(action="replaced" if rule else "created", capacity=diff.capacity,
                           group=group_name(gs.prefix, feed.name, version, (taken or 0) + 1))
            else:
                assert group is not None
                doc.update(action="kept", group=group.name, capacity=group.capacity)
            doc.update(add=len(diff.add), remove=len(diff.remove),
                       item_calls=math.ceil(len(diff.add) / gs.max_items_per_call)
                       + math.ceil(len(diff.remove) / gs.max_items_per_call))
        out.append(doc)
    return out


def capacity_text(data: Mapping[str, Any]) -> str:
    lim = data["limits"]
    rows = [("feed", "format", "entries", "bad", "refused", "ranges", "rules", "from")]
    for f in data["feeds"]:
        rows.append((f["name"], f["format"], f"{f['entries']:,}", f"{f['bad_items']:,}", f"{f['refused']:,}",
                     f"{f['ranges']:,}", f"{f['rules']:,}", f"{f['source']} {f['location']}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r[:-1], widths, strict=True))]
        lines.append("  ".join(cells) + "  " + r[-1])
    for u in data["unchecked"]:
        lines.append(f"{u['name']}: not checked: {u['why']}")
    o, t = data["others"], data["total"]
    lines.append("ranges: after aggregation (collapse_addresses per expiry and severity); rules: at most 10 ranges each")
    lines += _groups_text(data)
    grouped = {g["feed"] for g in data["groups"]}
    in_groups = f" (feeds in address groups: {', '.join(sorted(grouped))})" if grouped else ""
    group_rules = (f" - {lim['group_rules']:,} group rules" if lim["group_rules"] else "")
    lines += [
        f"the band's other entries (sources not checked here): {o['ranges']:,} ranges, {o['rules']:,} rules"
        + (f", and {o['group_rules']:,} group rules" if o["group_rules"] else ""),
        f"total: {t['ranges']:,} ranges in {t['rules']:,} rules{in_groups}; the band may hold {lim['capacity']:,} "
        f"(band.max_rules {lim['max_rules']:,}; free band priorities {lim['band_free']:,}"
        + (f" after {lim['group_rules']:,} group rules" if lim["group_rules"] else "")
        + f"; rule quota {lim['quota']:,} - {lim['rules_outside_band']:,} rules outside the band{group_rules}"
        f" = {lim['quota_room']:,})",
    ]
    if data["fits"]:
        lines.append(f"fits: {lim['capacity'] - t['rules']:,} rules to spare")
        return "\n".join(lines)
    if not data["ceval"]["fits"]:
        c = data["ceval"]
        lines.append(f"DOES NOT FIT: the group rules need {c['group_rules']:,} advanced rules and "
                     f"{c['quota'] - c['other_rules']:,} are left of SECURITY_POLICY_CEVAL_RULES ({c['quota']:,}): "
                     "the rules past it would be refused (--ceval-quota N if yours is larger)")
    for g in data["groups"]:
        if g["refused"]:
            lines.append(f"DOES NOT FIT: {g['feed']}'s {g['items']:,} IPv{g['ip_version']} items exceed "
                         "groups.max_capacity: the responder refuses the whole list (nothing changes)")
    if data["over"] or data["evicted"]["ranges"]:
        ev = data["evicted"]
        lines.append(f"DOES NOT FIT: {data['over']:,} rules over. The capacity policy (lowest severity first, then "
                     f"soonest expiry; never manual) would evict {ev['ranges']:,} ranges:")
        for g in ev["order"]:
            lines.append(f"  {g['ranges']:>7,}  {g['sources']} ({g['severity']}, until {g['expiry'] or 'permanent'})")
        kept = data["kept"]
        lines.append(f"what stays: {kept['ranges']:,} ranges in {kept['rules']:,} rules; per feed: " +
                     ", ".join(f"{name} {n:,} of {next(f['ranges'] for f in data['feeds'] if f['name'] == name):,}"
                               for name, n in kept["by_feed"].items() if name not in grouped))
    return "\n".join(lines)


def _groups_text(data: Mapping[str, Any]) -> list[str]:
    """The address-group lines of ``capacity``: the tier, where each feed
    with a group store would go, each group's items against its capacity,
    and the advanced-rule quota."""
    asked = [f for f in data["feeds"] if f["store"] != "band"]
    if not asked and not data["groups"]:
        return []
    tier = data["tier"]
    lines = []
    if tier["tier"] == "standard":
        lines.append(f"Cloud Armor tier: STANDARD ({tier['from']}): address groups need Enterprise; the feeds below "
                     "fall back to band rules and are counted as band rules")
    elif tier["tier"] == "unknown":
        lines.append("Cloud Armor tier: not known (no Standard label on the policy; --tier standard|enterprise to "
                     "say): counted as Enterprise, as the responder tries address groups first")
    for f in asked:
        lines.append(f"{f['name']}: {f['store_why']}" + (": address groups" if f["stored_in"] != "band" else ""))
    for g in data["groups"]:
        head = f"  {g['feed']} IPv{g['ip_version']}: {g['items']:,} items"
        cur = g["current"]
        now = (f" (now {cur['group']}: {cur['items'] if cur['items'] is not None else '?'} / "
               f"{cur['capacity'] if cur['capacity'] is not None else '?'})") if cur else ""
        if g["action"] == "removed":
            lines.append(f"{head}{now}: the rule, then the group, are removed")
            continue
        if g["action"] == "refused":
            lines.append(f"{head}{now}: more than groups.max_capacity: refused")
            continue
        what = {"kept": "in", "created": "in a new group", "replaced": "in a larger group replacing it:"}[g["action"]]
        lines.append(f"{head}{now} {what} {g['group']} of capacity {g['capacity']:,}; "
                     f"{g['add']:,} to add, {g['remove']:,} to remove in {g['item_calls']:,} item call(s); "
                     f"1 band rule instead of {g['band_rules']:,}")
    c = data["ceval"]
    if data["groups"]:
        lines.append(f"advanced rules (SECURITY_POLICY_CEVAL_RULES, --ceval-quota {c['quota']:,}): "
                     f"{c['group_rules']:,} group rules + {c['other_rules']:,} other rules with an expression "
                     f"= {c['used']:,} of {c['quota']:,} (other policies of the project count too, not read)")
    return lines


def cmd_capacity(args: argparse.Namespace, settings: config.Settings) -> int:
    if args.quota < 1:
        raise Failure(EXIT_USAGE, f"capacity: --quota must be positive, got {args.quota}")
    files = _feed_files(args.file or [])
    lists, unchecked = read_feeds(settings, files)
    if not lists:
        raise Failure(EXIT_USAGE, "capacity: no feed to check: configure [feeds.NAME] with a url, or give --file NAME=PATH")
    if args.ceval_quota < 0:
        raise Failure(EXIT_USAGE, f"capacity: --ceval-quota must not be negative, got {args.ceval_quota}")
    from responder.groups import AddressGroups
    from responder.groupstore import GroupStore

    api = _api(settings)
    snap = api.get_policy()

    def groups() -> AddressGroups:
        return AddressGroups(settings.policy, settings.groups, retry_deadline=settings.policy.retry_deadline)

    store = GroupStore(settings, api, groups, Audit(file=None))
    data = capacity_data(snap, settings, lists, args.quota, datetime.now(tz=UTC), unchecked, store=store,
                         ceval_quota=args.ceval_quota, tier=args.tier)
    emit(args, "capacity", data, capacity_text)
    if not data["fits"]:
        return EXIT_OVER
    return EXIT_OK


# --------------------------------------------------------------------------
# dead letters


DEAD_LETTER_ATTRIBUTE_PREFIX = "CloudPubSubDeadLetter"  # what Pub/Sub adds when it dead-letters a message


def _dead_letter_subscription(settings: config.Settings, config_path: str | None) -> str:
    """The hold subscription deploy.sh creates: ``<[deploy].topic_prefix>-dead-letter-hold``."""
    import tomllib

    path = config_path or os.environ.get("RESPONDER_CONFIG") or str(Path(__file__).resolve().parent / "config" / "responder.toml")
    with open(path, "rb") as fh:
        deploy = tomllib.load(fh).get("deploy") or {}
    prefix = deploy.get("topic_prefix", "car") if isinstance(deploy, dict) else "car"
    return f"projects/{settings.policy.project}/subscriptions/{prefix}-dead-letter-hold"


def _pubsub_session(endpoint: str) -> Any:
    """A requests session for Pub/Sub: with Google credentials, or plain for
    a loopback endpoint (the emulator, or the test's fake of the REST API)."""
    import requests

    host = endpoint.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if host in ("127.0.0.1", "localhost", "[::1]"):
        return requests.Session()
    import google.auth
    import google.auth.exceptions
    from google.auth.transport.requests import AuthorizedSession

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/pubsub"])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise Failure(EXIT_ACCESS, f"no Google credentials for Pub/Sub: run 'gcloud auth application-default login' ({exc})") from None
    return AuthorizedSession(credentials)  # type: ignore[no-untyped-call]


def cmd_replay_dead_letters(args: argparse.Namespace, settings: config.Settings) -> int:
    """Pulls dead-lettered messages and republishes each, with its own
    attributes (not the ones Pub/Sub added when it dead-lettered it), to the
    topic of the subscription it was dead-lettered from; acks each after its
    publish succeeded. --dry-run lists them and hands them back (nack)."""
    import requests

    if args.limit is not None and args.limit < 1:
        raise Failure(EXIT_USAGE, f"replay-dead-letters: --limit must be at least 1, got {args.limit}")
    endpoint = (args.pubsub_endpoint or os.environ.get("RESPONDER_PUBSUB_ENDPOINT") or "https://pubsub.googleapis.com").rstrip("/")
    subscription = args.subscription or _dead_letter_subscription(settings, args.config)
    if "/" not in subscription:
        subscription = f"projects/{settings.policy.project}/subscriptions/{subscription}"
    session = _pubsub_session(endpoint)
    timeout = settings.policy.request_timeout.total_seconds()
    dry = args.dry_run

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = session.request(method, f"{endpoint}/v1/{path}", json=body, timeout=timeout)
        except requests.RequestException as exc:
            raise Failure(EXIT_TRANSIENT, f"cannot reach Pub/Sub at {endpoint}: {exc}") from None
        if response.status_code != 200:
            code = EXIT_ACCESS if response.status_code in (401, 403, 404) else (
                EXIT_TRANSIENT if response.status_code == 429 or response.status_code >= 500 else EXIT_ERROR)
            raise Failure(code, f"Pub/Sub {method} {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json() if response.content else {}

    topics: dict[str, str] = {}
    done = held = 0
    limit = args.limit
    while limit is None or done + held < limit:
        batch = 100 if limit is None else min(100, limit - done - held)
        received = call("POST", f"{subscription}:pull", {"maxMessages": batch}).get("receivedMessages", [])
        if not received:
            break
        for item in received:
            message, ack_id = item["message"], item["ackId"]
            attributes = dict(message.get("attributes") or {})
            source = attributes.get("CloudPubSubDeadLetterSourceSubscription", "")
            project = attributes.get("CloudPubSubDeadLetterSourceSubscriptionProject", settings.policy.project)
            original = {k: v for k, v in attributes.items() if not k.startswith(DEAD_LETTER_ATTRIBUTE_PREFIX)}
            topic = ""
            if source:
                path = source if "/" in source else f"projects/{project}/subscriptions/{source}"
                if path not in topics:
                    topics[path] = call("GET", path).get("topic", "")
                topic = topics[path]
            line = (f"message {message.get('messageId')} (published {message.get('publishTime')}, "
                    f"{attributes.get('CloudPubSubDeadLetterSourceDeliveryCount', '?')} deliveries) "
                    f"from {source or 'an unknown subscription'}")
            if not topic:
                print(f"kept {line}: its original topic is unknown (no CloudPubSubDeadLetterSourceSubscription)")
                call("POST", f"{subscription}:modifyAckDeadline", {"ackIds": [ack_id], "ackDeadlineSeconds": 0})
                held += 1
                continue
            if dry:
                print(f"would republish {line} to {topic}, attributes {json.dumps(original, sort_keys=True)}")
                call("POST", f"{subscription}:modifyAckDeadline", {"ackIds": [ack_id], "ackDeadlineSeconds": 0})
                held += 1
                continue
            published = {"data": message.get("data", "")}
            if original:
                published["attributes"] = original
            ids = call("POST", f"{topic}:publish", {"messages": [published]}).get("messageIds", [])
            call("POST", f"{subscription}:acknowledge", {"ackIds": [ack_id]})
            print(f"republished {line} to {topic} as {ids[0] if ids else '?'}")
            done += 1
        if dry:
            break  # handed back: a second pull would return the same messages
    if dry:
        print(f"dry run (--dry-run): {held} message(s) listed and handed back; nothing was republished")
    else:
        print(f"{done} message(s) republished and acknowledged" + (f", {held} kept" if held else ""))
    return EXIT_OK


def _replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N messages")
    p.add_argument("--subscription", help="default: <[deploy].topic_prefix>-dead-letter-hold in policy.project")
    p.add_argument("--pubsub-endpoint", metavar="URL",
                   help="Pub/Sub REST endpoint (default RESPONDER_PUBSUB_ENDPOINT, else Google's)")


def emit(args: argparse.Namespace, kind: str, data: Mapping[str, Any], text: Callable[[Mapping[str, Any]], str]) -> None:
    """Prints a read command's answer: with ``--json`` the document itself
    (``kind`` and ``version`` first), else the text made from it, so that
    both always say the same."""
    if getattr(args, "json", False):
        print(json.dumps({"kind": kind, "version": JSON_VERSION, **data}, indent=2))
    else:
        print(text(data))


# --------------------------------------------------------------------------
# the command table and the parser


@dataclass(frozen=True)
class Command:
    """A subcommand: ``json`` if it answers ``--json`` (through ``emit``),
    ``changes`` if it changes something (and so takes ``--dry-run``)."""

    name: str
    help: str
    run: Callable[[argparse.Namespace, config.Settings], int]
    json: bool = False
    changes: bool = False
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


def _explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", help="an address or CIDR")
    p.add_argument("--days", type=int, default=30, help="how far back to read the audit trail (Cloud Logging)")


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--html", required=True, metavar="FILE", help="where to write the page")
    p.add_argument("--days", type=int, default=30, help="how far back to read the audit trail (Cloud Logging)")
def _restore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="TIME", help="replay the trail from TIME (RFC 3339, or a duration back: 7d)")
    p.add_argument("--days", type=int, default=30, help="without --since: how far back to read Cloud Logging")
    p.add_argument("--yes", action="store_true", help="apply the plan (without it, only print it)")
    p.add_argument("--actor", default=os.environ.get("USER", "") or "restore", help="recorded in the audit trail")
    p.add_argument("--reason", default="", help="recorded in the audit trail")


def _requester(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actor", default=os.environ.get("USER", ""), help="who asks (required; default: $USER)")
    p.add_argument("--reason", default="", help="recorded in the audit trail")
    p.add_argument("--publish", metavar="TOPIC", help="publish to the manual topic instead of applying directly")


def _manual_args(verb: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("ranges", nargs="+", metavar="RANGE")
        _requester(p)
        if verb != "unblock":
            p.add_argument("--ttl", help="e.g. 6h, 2d")
            p.add_argument("--expiry", help="RFC 3339 time with a timezone")
        if verb == "block":
            p.add_argument("--permanent", action="store_true")
            p.add_argument("--force", action="store_true", help="accept ranges broader than the manual minimum prefix")
            p.add_argument("--preview", action="store_true")
            p.add_argument("--severity")
    return add


def _capacity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", action="append", metavar="NAME=PATH",
                   help="read feed NAME's list from PATH instead of its url (repeatable; NAME need not be configured)")
    p.add_argument("--quota", type=int, default=DEFAULT_QUOTA,
                   help=f"the project's SECURITY_POLICY_RULES quota (default {DEFAULT_QUOTA}, as commonly seen; check yours)")
    p.add_argument("--ceval-quota", type=int, default=DEFAULT_CEVAL_QUOTA,
                   help=f"the project's SECURITY_POLICY_CEVAL_RULES quota, which each address-group rule uses "
                        f"(default {DEFAULT_CEVAL_QUOTA}, as seen; check yours)")
    p.add_argument("--tier", choices=("standard", "enterprise"),
                   help="the project's Cloud Armor tier (default: the policy's tier label, else not known)")


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("status", "show the band and its utilisation", cmd_status, json=True),
    Command("list", "the band's entries, one per range", cmd_list, json=True),
    Command("explain", "why an address is (not) blocked", cmd_explain, json=True, arguments=_explain_args),
    Command("block", "block ranges", cmd_manual, changes=True, arguments=_manual_args("block")),
    Command("unblock", "unblock ranges", cmd_manual, changes=True, arguments=_manual_args("unblock")),
    Command("extend", "extend blocks", cmd_manual, changes=True, arguments=_manual_args("extend")),
    Command("preview-all", "break-glass: every band rule to preview", cmd_mode, changes=True, arguments=_requester),
    Command("enforce-all", "enforce the band again", cmd_mode, changes=True, arguments=_requester),
    Command("cleanup", "expire, compact, lint and report now", cmd_cleanup, changes=True),
    Command("report", "write the band page: one self-contained HTML file", cmd_report, arguments=_report_args),
    Command("restore", "rebuild the band from the audit trail (after a wipe)", cmd_restore, changes=True,
            arguments=_restore_args),
    Command("validate-config", "check the configuration file", cmd_validate_config),
    Command("bootstrap-policy", "create the base policy if it does not exist", cmd_bootstrap, changes=True),
    Command("capacity", "the feeds' rules against band.max_rules and the quota", cmd_capacity, json=True,
            arguments=_capacity_args),
    Command("replay-dead-letters", "republish dead-lettered messages to their original topics", cmd_replay_dead_letters,
            changes=True, arguments=_replay_args),
)}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, not the usage block."""

    def error(self, message: str) -> Any:
        raise Failure(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')")


def _global_options(p: argparse.ArgumentParser, *, sub: bool, command: Command | None = None) -> None:
    """The options every command takes, before or after its name. On a
    subcommand they default to nothing (SUPPRESS), so a value given before
    the command is kept unless repeated after it; --json and --dry-run are
    left out of the help of commands that refuse them."""
    unset: Any = argparse.SUPPRESS if sub else None
    json_help = "read commands: print a JSON document (README: 'The command line')"
    dry_help = "changing commands: say what would change (validated by the API), change nothing"
    if command is not None:
        json_help = json_help.split(": ", 1)[1] if command.json else argparse.SUPPRESS
        dry_help = dry_help.split(": ", 1)[1] if command.changes else argparse.SUPPRESS
    p.add_argument("--config", default=unset, metavar="FILE", help="configuration file (default: RESPONDER_CONFIG or config/responder.toml)")
    p.add_argument("--endpoint", default=unset, metavar="URL", help="API endpoint, e.g. the local API's http://127.0.0.1:PORT")
    p.add_argument("--target", default=unset, metavar="NAME",
                   help="the target ([[targets]] name) to act on (default: the first; status: all)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS if sub else False, help=json_help)
    p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS if sub else False, help=dry_help)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS if sub else False,
                   help="show the traceback of an unexpected error")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="cli.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(top, sub=False)
    subs = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS.values():
        p = subs.add_parser(command.name, help=command.help, description=command.help)
        _global_options(p, sub=True, command=command)
        if command.arguments:
            command.arguments(p)
    return top


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    command = COMMANDS[args.command]
    if args.json and not command.json:
        raise Failure(EXIT_USAGE, f"cli.py {args.command}: --json is for {', '.join(c.name for c in COMMANDS.values() if c.json)}")
    if args.dry_run and not command.changes:
        raise Failure(EXIT_USAGE, f"cli.py {args.command}: --dry-run is for the commands that change something "
                      f"({', '.join(c.name for c in COMMANDS.values() if c.changes)})")
    return args


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _audit_not_echoed() -> Iterator[None]:
    """The command prints what its audit records say; without a logging
    handler, Python would echo warning records (refusals) to stderr again."""
    logger = logging.getLogger(LOGGER_NAME)
    null = logging.NullHandler()
    before = logger.propagate
    logger.addHandler(null)
    logger.propagate = False
    try:
        yield
    finally:
        logger.propagate = before
        logger.removeHandler(null)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except Failure as exc:
        print(_one_line(exc.message), file=sys.stderr)
        return exc.code
    settings: config.Settings | None = None
    where = "the Compute API"
    try:
        with _audit_not_echoed():
            settings = load_settings(args.config)
            if args.endpoint:
                settings = settings.with_policy(api_endpoint=args.endpoint.rstrip("/"))
            where = settings.policy.api_endpoint or where
            if args.target:
                if args.target not in settings.target_names:
                    raise Failure(EXIT_USAGE, f"--target: no target named {args.target!r} "
                                  f"(targets: {', '.join(settings.target_names)})")
            if args.target or args.command != "status":  # status alone shows every target
                settings = settings.only(args.target or settings.default_target)
            return COMMANDS[args.command].run(args, settings)
    except Failure as exc:
        code, line = exc.code, exc.message
    except config.ConfigError as exc:
        code, line = EXIT_CONFIG, f"invalid configuration: {exc}"
    except PolicyNotFound:
        assert settings is not None
        code, line = EXIT_ACCESS, (
            f"the policy {settings.policy.name} does not exist in project {settings.policy.project}"
            f"{' region ' + settings.policy.region if settings.policy.region else ''}: "
            f"run 'python cli.py bootstrap-policy' or deploy.sh, or fix policy.name")
    except PermissionDenied as exc:
        code, line = EXIT_ACCESS, f"permission denied: {exc} (the caller needs the roles in README, 'IAM')"
    except Unresolvable:
        code, line = EXIT_TRANSIENT, f"cannot reach {where}: its host name does not resolve (check --endpoint or policy.api_endpoint, and DNS)"
    except TransientError as exc:
        code, line = EXIT_TRANSIENT, f"cannot reach {where} or it is busy (try again): {exc}"
    except ResponderError as exc:
        code, line = EXIT_ERROR, f"failed: {type(exc).__name__}: {exc}"
    except KeyboardInterrupt:
        code, line = 130, "interrupted"
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        code, line = EXIT_ERROR, f"unexpected error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)"
    print(_one_line(line), file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
