"""Bans that follow traffic: our band's own denies extend the entry they hit.

A load-balancer request log entry (``http_load_balancer``, global, or
``http_external_regional_lb_rule``, regional) whose
``jsonPayload.enforcedSecurityPolicy`` names a policy we own (its short
``name``, in the entry's project and region), with a ``priority`` inside
that policy's band and ``outcome`` DENY, says that a rule of ours is still
stopping that client. ``recognise`` reads such an entry; ``follow`` turns
it into at most one EXTEND intent:

* the band is read through the band service (its cached read), and the
  entry covering ``httpRequest.remoteIp`` is the live entry of that address,
  else of its most specific supernet (``planner.covering``). Exactly that
  entry's network is extended: never a range built from the request (a
  header such as X-Forwarded-For is never read), and never a new block
  (an address no entry covers changes nothing).
* "its source": among the entry's sources whose kind has
  ``follow_denies`` on (``[sources.log]`` and ``[sources.alert]`` by default;
  feeds off; manual never), the longest TTL, each capped by its kind's
  ``max_ttl``. An entry held only by feeds or operators is not extended; a
  permanent one is never touched.
* the expiry counts from the request's time (``timestamp``, never later than
  the message's publish time: a future timestamp is not trusted) rounded
  down to ``band.expiry_granularity``, so every deny within one bucket asks
  for the same expiry: the first one's extension satisfies the others, and
  the append planner plans no mutation for them. The planner never shortens
  an expiry.

Writes stay bounded: at most one extension per entry per bucket. Reads too:
each instance remembers the (policy, address, bucket) it has followed
(``Followed``, bounded like the threshold counter), so a stream of denies
from one client costs one cached read per bucket, not one per request.

Targets: ``owned_targets`` lists every policy whose band we own (the
``[policy]`` + ``[band]`` target and each ``[[targets]]`` entry); a deny
extends an entry of the target whose policy it names, and of no other.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from config.settings import BandSettings, Settings
from handlers import common
from handlers import detectors as detector_config
from handlers.envelope import Message
from handlers.formats import FormatError
from handlers.formats._common import address_or_error, get_path, parse_time
from handlers.runtime import Runtime
from responder import guards, planner
from responder.model import Intent, Network, Severity, Verb
from responder.service import Outcome

KIND = "log"
LB_RESOURCES = {"http_load_balancer": False, "http_external_regional_lb_rule": True}  # type -> regional
MANUAL = "manual"
ALERT_SOURCES = ("monitoring", "scc")


@dataclass(frozen=True)
class Target:
    """A policy whose band we own."""

    name: str  # the target's name ([[targets]] name; "default" for [policy])
    project: str
    policy: str  # the short name, as request logs give it
    region: str  # "" for a global policy
    band: BandSettings


def owned_targets(settings: Settings) -> tuple[Target, ...]:
    """Every (policy, scope, band) this deployment owns, the default first."""
    out = []
    for name in settings.target_names:
        t = settings.for_target(name)
        out.append(Target(name, t.policy.project, t.policy.name, t.policy.region, t.band))
    return tuple(out)


def our_target_for(settings: Settings, policy_name: str, region: str, project: str | None = None) -> Target | None:
    """The target a request log's policy names, if we own it; ``project``
    (the log's ``resource.labels.project_id``) is checked when given."""
    for target in owned_targets(settings):
        if target.policy == policy_name and target.region == region and project in (None, target.project):
            return target
    return None


def our_band_for(settings: Settings, policy_name: str, region: str, project: str | None = None) -> BandSettings | None:
    """The band we own in that policy, or None."""
    target = our_target_for(settings, policy_name, region, project)
    return None if target is None else target.band


@dataclass(frozen=True)
class BandDeny:
    """A request one of our band rules denied."""

    target: Target
    priority: int
    address: Network  # the single address of httpRequest.remoteIp
    when: datetime  # the request's time, never after the publish time


def recognise(entry: Mapping[str, Any], settings: Settings, publish_time: datetime) -> BandDeny | None:
    """The band deny ``entry`` records, or None when it is not one (another
    policy, a priority outside our band, an outcome other than DENY).
    Raises FormatError for a band deny without a usable client address."""
    resource = entry.get("resource")
    kind = resource.get("type") if isinstance(resource, Mapping) else None
    if kind not in LB_RESOURCES:
        return None
    enforced = get_path(entry, "jsonPayload.enforcedSecurityPolicy")
    if not isinstance(enforced, Mapping) or enforced.get("outcome") != "DENY":
        return None
    name, priority = enforced.get("name"), _priority(enforced.get("priority"))
    if not isinstance(name, str):
        return None
    labels = resource.get("labels") if isinstance(resource, Mapping) else None
    labels = labels if isinstance(labels, Mapping) else {}
    region = labels.get("region", "") if LB_RESOURCES[kind] else ""
    project = labels.get("project_id")
    if not isinstance(region, str) or not region and LB_RESOURCES[kind]:
        return None
    target = our_target_for(settings, name, region, project if isinstance(project, str) else None)
    if target is None:
        return None
    if priority is None:  # our policy's deny, by a rule it cannot name
        raise FormatError("a deny by our policy: jsonPayload.enforcedSecurityPolicy.priority is not an integer")
    if not target.band.start <= priority <= target.band.end:
        return None
    value, error = address_or_error(get_path(entry, "httpRequest.remoteIp"))
    try:
        address = guards.parse_network(value or "")
    except ValueError as exc:
        raise FormatError(f"band deny at priority {priority}: httpRequest.remoteIp: {error or exc}") from None
    if address.num_addresses != 1:
        raise FormatError(f"band deny at priority {priority}: httpRequest.remoteIp: {address} is a range, not a client")
    try:
        when = min(parse_time(entry.get("timestamp")), publish_time)
    except (ValueError, IndexError):
        when = publish_time
    return BandDeny(target, priority, address, when)


def _priority(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


class Followed:
    """The (target, address, bucket) keys this instance has followed, least
    recently used dropped first past ``max_keys``."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._keys: OrderedDict[tuple[str, str, str, datetime], None] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, key: tuple[str, str, str, datetime]) -> bool:
        with self._lock:
            if key in self._keys:
                self._keys.move_to_end(key)
                return True
            return False

    def add(self, key: tuple[str, str, str, datetime]) -> None:
        with self._lock:
            self._keys[key] = None
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)


_followed: weakref.WeakKeyDictionary[Runtime, Followed] = weakref.WeakKeyDictionary()
_followed_lock = threading.Lock()


def followed(rt: Runtime) -> Followed:
    """This process's memory of followed denies (one per runtime)."""
    with _followed_lock:
        found = _followed.get(rt)
        if found is None:
            found = _followed[rt] = Followed(rt.settings.detectors.max_tracked)
        return found


def source_kind(settings: Settings, log_ids: frozenset[str], source_id: str) -> str:
    """The kind of source a band entry's source id belongs to: manual, a
    log detector's id, an alert source, else a feed (a feed may be
    published without a ``[feeds.NAME]`` section)."""
    if source_id == MANUAL:
        return "manual"
    if source_id in log_ids:
        return "log"
    if source_id in ALERT_SOURCES:
        return "alert"
    return "feed"


def follow_ttl(settings: Settings, source_id: str, kind: str, severity: Severity, log_ttls: Mapping[str, timedelta]) -> timedelta:
    """The base TTL a block from ``source_id`` gets (before escalation)."""
    source = settings.source(kind)
    ttl: timedelta | None = None
    if kind == "log":
        ttl = log_ttls.get(source_id)
    elif source_id == "monitoring":
        ttl = settings.alerts.monitoring.ttl
    elif source_id == "scc":
        ttl = settings.alerts.scc.ttl_by_severity.get(severity.name.lower())
    elif kind == "feed":
        ttl = settings.feed(source_id).ttl
    return min(ttl or source.default_ttl, source.max_ttl)


def extension(
    entry: planner.Entry, settings: Settings, base: datetime, log_ids: frozenset[str], log_ttls: Mapping[str, timedelta]
) -> tuple[str, datetime] | None:
    """(source id, expiry) a deny at ``base`` asks of ``entry``: the longest
    TTL among its sources whose kind follows denies; None when none does,
    or when the entry is permanent."""
    if entry.meta.expiry is None:
        return None
    best: tuple[timedelta, str] | None = None
    for sid in sorted(entry.meta.sources):
        kind = source_kind(settings, log_ids, sid)
        if kind == "manual" or not settings.source(kind).follow_denies:
            continue
        ttl = follow_ttl(settings, sid, kind, entry.meta.severity, log_ttls)
        if best is None or ttl > best[0]:
            best = (ttl, sid)
    if best is None:
        return None
    return best[1], base + best[0]


def follow(deny: BandDeny, message: Message, rt: Runtime) -> Outcome:
    """Extends the entry covering the denied address (see the module docstring)."""
    settings = rt.settings
    band = deny.target.band
    bucket = planner.round_down(deny.when, band.expiry_granularity)
    key = (deny.target.project, deny.target.policy, str(deny.address.network_address), bucket)
    # The guards still hold: an address allowlisted (or special-purpose) since its ban is never followed.
    _, refused = common.screen(rt, message, KIND, [Intent(Verb.EXTEND, deny.address, KIND, expiry=deny.when)])
    if refused:
        return Outcome(refused=refused)
    memory = followed(rt)
    if memory.seen(key):
        rt.audit.record(
            "unchanged", f"band deny of {deny.address.network_address} at priority {deny.priority}: already followed "
            f"in this bucket", message_id=message.message_id, source=KIND, reason="follow",
        )
        return Outcome()
    loaded = detector_config.load(settings.detectors)
    log_ids = frozenset(loaded.source_ids.get(d.name, d.name) for d in loaded.detectors)
    log_ttls = {loaded.source_ids.get(d.name, d.name): d.ttl for d in loaded.detectors if d.ttl is not None}

    def derive(entries: Mapping[Network, planner.Entry]) -> Sequence[Intent]:
        hit = entries.get(deny.address) or planner.covering(entries, deny.address)
        if hit is None:
            return []  # nothing of ours covers it (expired or lifted meanwhile): never a new block
        asked = extension(hit, settings, bucket, log_ids, log_ttls)
        if asked is None:
            return []
        source_id, expiry = asked
        own = hit.meta.claim(source_id)
        if own is not None and own[0] is not None and planner.round_up(expiry, band.expiry_granularity) <= own[0]:
            return []  # its claim is already as long: an extension in this bucket happened
        return [Intent(Verb.EXTEND, hit.network, source_id, expiry=expiry, severity=hit.meta.severity,
                       action=hit.action, reason=f"follows traffic: {deny.address.network_address} denied at "
                       f"priority {deny.priority}")]

    reason = (f"follows traffic: {deny.address.network_address} denied by band rule {deny.priority} of "
              f"{deny.target.policy} at {deny.when.isoformat().replace('+00:00', 'Z')}")
    outcome = common.apply_screened(rt, message, KIND, [], source_id=KIND, reason=reason, derive=derive,
                                    targets=(deny.target.name,))
    memory.add(key)
    return outcome
