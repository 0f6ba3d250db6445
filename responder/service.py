"""Get, plan, apply: the one place where decisions meet the cloud.

``Responder.apply`` is what every event goes through: read the policy once,
plan (``responder.planner``), apply the operations through the adapter, and
write one audit record per change. ``Responder.cleanup`` is the scheduled
reconcile: expire, compact, report usage and lint the policy.

Concurrency (README, "Concurrency", tells the whole story):

* Event writers only ever **add** rules, at seeded-random free priorities.
  addRule fails when the priority is taken, so two writers can never
  overwrite each other; on such a collision the writer re-reads and re-plans.
* Anything that **patches or removes** a band rule (cleanup, unblocks,
  withdrawn claims, a full band or quota) runs under a **lease**: a policy
  label set with ``setLabels`` and its ``labelFingerprint`` (the API's
  compare-and-set), so at most one such writer runs at a time and it alone
  touches existing rules. Writers that only add need no lease.
"""

from __future__ import annotations

import contextvars
import hashlib
import ipaddress
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from config.settings import Settings
from responder import planner
from responder.audit import Audit
from responder.codec import RuleMeta, representable
from responder.errors import (
    FingerprintMismatch,
    OutOfTime,
    PolicyNotFound,
    PriorityTaken,
    QuotaExceeded,
    TransientError,
)
from responder.model import Intent, Network, Verb, minus
from responder.planner import Add, Band, Patch, Plan, Remove
from responder.policy import DEFAULT_RULE_PRIORITY, PolicyRule, PolicySnapshot

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Guard = Callable[[], None]
Derive = Callable[[Mapping[Network, "planner.Entry"]], Sequence[Intent]]
# Asked with the number of ranges an event would newly block: None to go
# ahead, "preview" or "refuse" when the source's flood breaker is open.
Flood = Callable[[int], str | None]
# The audit records written since a time, oldest first (a local file or
# Cloud Logging; see handlers/runtime.py): what the cleanup reads to tell a
# wipe from its own removals.
Trail = Callable[[datetime], Iterable[Mapping[str, Any]]]
ADD_ATTEMPTS = 5
PREVIEW_MODE = "preview"
LIFTS = ("removed", "expired", "evicted")  # records of ranges that left the band by our hand


@dataclass(frozen=True)
class BandMark:
    """What the band held when the cleanup last recorded it: the policy label
    ``lease.band_label``, ``r<rules>-n<ranges>-t<epoch seconds>-<digest>``.
    Written by the cleanup only when the band changed (at most one
    ``setLabels`` per cleanup, with the ``labelFingerprint`` it read). The
    digest covers our rules' ranges and descriptions (expiry, sources)."""

    rules: int
    ranges: int
    seen: datetime
    digest: str

    _FORMAT = re.compile(r"r(\d+)-n(\d+)-t(\d+)-([0-9a-f]{10})")

    @classmethod
    def of(cls, rules: Iterable[PolicyRule], seen: datetime) -> BandMark:
        rules = list(rules)
        text = "\n".join(sorted(f"{','.join(sorted(r.ranges))} {r.description} {r.action} {r.preview}" for r in rules))
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        return cls(len(rules), sum(len(r.ranges) for r in rules), seen.replace(microsecond=0), digest)

    @classmethod
    def parse(cls, value: str) -> BandMark | None:
        m = cls._FORMAT.fullmatch(value or "")
        if m is None:
            return None
        return cls(int(m[1]), int(m[2]), datetime.fromtimestamp(int(m[3]), tz=UTC), m[4])

    @property
    def value(self) -> str:
        return f"r{self.rules}-n{self.ranges}-t{int(self.seen.timestamp())}-{self.digest}"

    def same_band(self, other: BandMark) -> bool:
        return (self.rules, self.ranges, self.digest) == (other.rules, other.ranges, other.digest)


def utcnow() -> datetime:
    return datetime.now(tz=UTC)


class PolicyApi(Protocol):
    """What the service needs of the adapter (``responder.compute.CloudArmor``)."""

    def get_policy(self) -> PolicySnapshot: ...
    # ``guard``, when given, is called right before each attempt is sent
    # (retries included) and raises OutOfTime to stop before sending.
    def add_rule(self, rule: PolicyRule, *, validate_only: bool = False, guard: Guard | None = None) -> None: ...
    def patch_rule(self, rule: PolicyRule, *, validate_only: bool = False, guard: Guard | None = None) -> None: ...
    def remove_rule(self, priority: int, *, guard: Guard | None = None) -> None: ...
    def set_labels(self, labels: Mapping[str, str], label_fingerprint: str) -> None: ...


@dataclass(frozen=True)
class EventRef:
    """Where a change came from, for the audit trail and the planner seed."""

    message_id: str
    source: str  # kind of source: manual, feed, log, alert, cleanup
    actor: str = ""
    reason: str = ""


@dataclass
class Outcome:
    """What one event did to the band (counts, for callers and benchmarks)."""

    added: int = 0
    extended: int = 0
    removed: int = 0
    expired: int = 0
    evicted: int = 0
    refused: int = 0
    satisfied: int = 0
    ops: int = 0
    leased: bool = False
    lint: list[str] = field(default_factory=list)
    layout: dict[int, PolicyRule] = field(default_factory=dict)  # our band rules after the last plan
    group_rules: int = 0  # cleanup: group rules seen in the band (responder.groupstore owns them)
    band_claims: int = 0  # a group sync: band rules that still carry the feed's claims


class Lease:
    """Mutual exclusion for band writers that patch or remove rules.

    The lease is the policy label ``settings.lease.label`` whose value is
    ``<holder>-<expiry epoch seconds>``. Taking it is a ``setLabels`` with
    the ``labelFingerprint`` just read: if anyone changed the labels in
    between, the API answers 412 and we read again. Every acquisition has
    its own holder id, so two requests of one instance (gen2 concurrency
    above 1) never both hold it, and one's release never drops the other's.

    The API cannot fence a stale holder (per-rule calls carry no
    fingerprint), so the lease rests on a timing bound (README,
    "Concurrency"): one mutation attempt takes at most ``need`` =
    ``policy.request_timeout + policy.operation_timeout + lease.margin``
    from the check before its send to its commit. So:

    * ``require()`` runs before every mutation attempt, retries included
      (the adapter calls it right before each send), and refuses to start
      one with less than ``need`` left;
    * ``keep()`` renews the lease (compare-and-set again) before it runs
      that low, so a long reconcile goes on while the delivery has time;
    * a holder that takes over an *expired* lease (its holder died or
      stalled, it was not released) waits until ``need`` past that expiry
      before it reads the band (Chubby's lock-delay), so that a stalled
      holder's last operation has landed before the new plan is made.
    """

    def __init__(self, api: PolicyApi, settings: Settings, owner: str, clock: Clock, sleep: Callable[[float], None]) -> None:
        self.api = api
        self.label = settings.lease.label
        self.duration = settings.lease.duration
        self.wait = settings.lease.wait
        self.need = settings.policy.mutation_bound + settings.lease.margin
        self.holder = f"{owner}{secrets.token_hex(3)}"  # one id per acquisition
        self.clock = clock
        self.sleep = sleep
        self.expiry: datetime | None = None
        self.snapshot: PolicySnapshot | None = None

    def _value(self, expiry: datetime) -> str:
        return f"{self.holder}-{int(expiry.timestamp())}"

    def value(self) -> str:
        """The label value of the lease as held now."""
        assert self.expiry is not None
        return self._value(self.expiry)

    @staticmethod
    def _parse(value: str) -> tuple[str, datetime] | None:
        holder, _, stamp = value.rpartition("-")
        if not holder or not stamp.isdigit():
            return None
        return holder, datetime.fromtimestamp(int(stamp), tz=UTC)

    def _expiry_for(self, now: datetime) -> datetime:
        # Whole seconds, as the label holds them: never later than the label says.
        return datetime.fromtimestamp(int((now + self.duration).timestamp()), tz=UTC)

    def acquire(self) -> PolicySnapshot:
        """Takes the lease; returns the policy as read after taking it
        (after the lock-delay, when an expired lease was taken over)."""
        give_up = self.clock() + self.wait
        delay = 0.2
        while True:
            snap = self.api.get_policy()
            now = self.clock()
            held = self._parse(snap.labels.get(self.label, ""))
            if held and held[1] > now:
                if now >= give_up:
                    raise TransientError(f"the band lease is held by {held[0]} until {held[1].isoformat()}")
                self.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            # Lock-delay: a lease taken over (not released) is used only from
            # ``need`` past its expiry; ours is longer by as much.
            pause = max(timedelta(0), held[1] + self.need - now) if held else timedelta(0)
            expiry = self._expiry_for(now + pause)
            labels = {**snap.labels, self.label: self._value(expiry)}
            try:
                self.api.set_labels(labels, snap.label_fingerprint)
            except FingerprintMismatch:
                continue
            self.expiry = expiry
            if held:
                if pause:
                    log.warning("took over the expired band lease of %s: waiting %.0f s for its last operation "
                                "to land", held[0], pause.total_seconds())
                    self.sleep(pause.total_seconds())
                snap = self.api.get_policy()
            self.snapshot = snap
            return snap

    def left(self) -> timedelta:
        return (self.expiry - self.clock()) if self.expiry is not None else timedelta(0)

    def require(self) -> None:
        """Raises OutOfTime unless one more operation can finish within
        the lease: better to stop and be redelivered than to act on rules
        another holder may own by then."""
        if self.expiry is None or self.left() < self.need:
            raise OutOfTime("the band lease would run out before another operation could finish")

    def keep(self) -> None:
        """Renews the lease once less than half of it is left (a read and a
        compare-and-set); raises OutOfTime when it was lost meanwhile. Safe
        even past the expiry: the label still ours at the read, and the
        fingerprint unchanged at the write, mean nobody took it between."""
        if self.expiry is not None and self.left() >= self.duration / 2:
            return
        snap = self.api.get_policy()
        if snap.labels.get(self.label) != self.value():
            raise OutOfTime("the band lease was lost")
        expiry = self._expiry_for(self.clock())
        try:
            self.api.set_labels({**snap.labels, self.label: self._value(expiry)}, snap.label_fingerprint)
        except FingerprintMismatch:
            raise OutOfTime("the band lease changed while being renewed") from None
        self.expiry = expiry

    def release(self) -> None:
        for _ in range(3):
            snap = self.api.get_policy()
            held = self._parse(snap.labels.get(self.label, ""))
            if not held or held[0] != self.holder:
                return
            labels = {k: v for k, v in snap.labels.items() if k != self.label}
            try:
                self.api.set_labels(labels, snap.label_fingerprint)
                return
            except FingerprintMismatch:
                continue
        log.warning("could not release the band lease; it expires by itself at %s", self.expiry)


class Budget:
    """The time one delivery has left (``deploy.timeout`` from its start,
    on the monotonic clock). No operation starts with less than ``need``
    left; see ``Lease`` for the bound. Set per delivery by the handlers'
    dispatch (``delivery``); absent (CLI, tests), time is unlimited."""

    def __init__(self, timeout: timedelta, need: timedelta, started: float | None = None) -> None:
        self.deadline = (time.monotonic() if started is None else started) + timeout.total_seconds()
        self.need = need

    def left(self) -> timedelta:
        return timedelta(seconds=self.deadline - time.monotonic())

    def require(self) -> None:
        if self.left() < self.need:
            raise OutOfTime(f"the delivery's time budget would run out before another operation could finish "
                            f"({self.left().total_seconds():.0f} s left)")


# The current delivery's budget: a context variable, so that the requests an
# instance serves at once (gen2 concurrency) each have their own.
delivery: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("delivery", default=None)


def guard_for(lease: Lease | None) -> Guard:
    """What must hold before each operation attempt is sent (band rules and
    address groups alike): time left in this delivery's budget and, for the
    lease holder, in its lease."""
    budget = delivery.get()

    def check() -> None:
        if budget is not None:
            budget.require()
        if lease is not None:
            lease.require()

    return check


class Responder:
    """Applies intents to the band of one policy."""

    def __init__(
        self,
        settings: Settings,
        api: PolicyApi,
        audit: Audit,
        *,
        clock: Clock = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        holder: str | None = None,
        trail: Trail | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.audit = audit
        self.trail = trail
        self.clock = clock
        self.sleep = sleep
        self.holder = holder or "w" + secrets.token_hex(5)
        self._started = False
        self._last_lint: list[str] = []
        # The views below are shared by the requests one instance serves at
        # once (gen2 concurrency > 1, one thread each). Each is one tuple,
        # replaced whole and read once into a local, so that a thread never
        # pairs one view's key with another's value; ``_views`` orders the
        # read cache's updates (a read-modify-write) against invalidations.
        self._views = threading.Lock()
        self._generation = 0  # bumped by every fresh read and invalidation
        # (taken at, the read, the read plus the rules this instance added since)
        self._cache: tuple[float, PolicySnapshot, PolicySnapshot] | None = None
        self._parsed: tuple[PolicySnapshot, Band] | None = None
        self._live: tuple[Band, datetime, Mapping[Network, planner.Entry]] | None = None

    @property
    def _max_rules(self) -> int:
        return self.settings.band.max_rules or self.settings.band.size

    def _cached_read(self) -> tuple[PolicySnapshot, PolicySnapshot]:
        """The policy as an event writer may see it: a read at most
        ``policy.read_cache`` old, plus the rules this process added since.
        Returns (the read, the view); ``_remember`` takes the read back.

        Safe under the concurrency design: writers only add, so a stale view
        can at worst add a rule another instance already added (harmless) or
        pick a priority that was taken meanwhile (addRule fails, we read
        again). Everything that patches or removes reads afresh. A read
        that another request of this instance invalidated while it was in
        flight (its reconcile finished meanwhile) is used, not cached."""
        ttl = self.settings.policy.read_cache.total_seconds()
        cached = self._cache
        if cached is not None and time.monotonic() - cached[0] < ttl:
            return cached[1], cached[2]
        generation, snap = self._fresh_read()
        if ttl > 0:
            with self._views:
                if self._generation == generation:
                    self._cache = (time.monotonic(), snap, snap)
        return snap, snap

    def _band_of(self, snap: PolicySnapshot) -> Band:
        """``read_band`` of a snapshot, parsed once while the read cache
        serves the same snapshot (a hot stream decides on it many times)."""
        parsed = self._parsed
        if parsed is None or parsed[0] is not snap:
            parsed = self._parsed = (snap, planner.read_band(snap.rules, self.settings.band))
        return parsed[1]

    def _entries_of(self, band: Band, now: datetime) -> Mapping[Network, planner.Entry]:
        """``band.entries(now)``, kept while no rule of the band expires, and
        no claim in it ends, in between (read only: callers share it)."""
        live = self._live
        if live is not None and live[0] is band and live[1] <= now:
            since = live[1]
            if not any((r.meta.expiry is not None and since < r.meta.expiry <= now)
                       or any(e is not None and since < e <= now for _, e, _ in r.meta.claims) for r in band.rules):
                return live[2]
        entries = band.entries(now)
        self._live = (band, now, entries)
        return entries

    def _remember(self, read: PolicySnapshot, plan: Plan) -> None:
        """Adds the rules this instance just added to the cached view, if
        it still rests on ``read``: requests served at once each add theirs."""
        added = tuple(op.rule for op in plan.ops if isinstance(op, Add))
        if not added:
            return
        with self._views:
            cached = self._cache
            if cached is not None and cached[1] is read:
                view = cached[2]
                self._cache = (cached[0], read, replace(view, rules=view.rules + added))

    def _invalidate(self) -> int:
        """Drops the cached view (the band changed under the lease, or a
        fresh read is due); returns the new generation."""
        with self._views:
            self._generation += 1
            self._cache = None
            return self._generation

    def _read(self, lint: bool = False) -> PolicySnapshot:
        return self._fresh_read(lint)[1]

    def _fresh_read(self, lint: bool = False) -> tuple[int, PolicySnapshot]:
        """Reads the policy; the first read of a process is also linted, so
        a misconfigured policy is reported as soon as the responder starts."""
        generation = self._invalidate()
        try:
            snap = self.api.get_policy()
        except PolicyNotFound:
            self.audit.record(
                "lint", f"the security policy {self.settings.policy.name} does not exist in project "
                f"{self.settings.policy.project}{' region ' + self.settings.policy.region if self.settings.policy.region else ''}: "
                f"create it with deploy.sh or 'python cli.py bootstrap-policy', or fix policy.name",
                level=logging.ERROR, policy=self.settings.policy.name,
            )
            raise
        with self._views:  # the first read of an instance lints, once however many requests start it
            first, self._started = not self._started, True
        if lint or first:
            self._last_lint = self.lint(snap)
        return generation, snap

    # -- public -----------------------------------------------------------

    def apply(
        self,
        intents: Sequence[Intent],
        event: EventRef,
        derive: Derive | None = None,
        *,
        validate_only: bool = False,
        flood: Flood | None = None,
    ) -> Outcome:
        """Brings the band in line with the intents (already screened).

        ``derive``, if given, is called with the band's live entries and
        returns more intents to apply first (a snapshot feed's withdrawals);
        it may raise BadEvent to refuse the whole event. With
        ``validate_only`` (or ``band.validate_only``) the plan is validated
        by the API and recorded, and nothing is committed."""
        outcome = Outcome()
        if not intents and derive is None:
            return outcome
        validate_only = validate_only or self.settings.band.validate_only
        now = self.clock()
        read, snap = self._cached_read()
        for attempt in range(ADD_ATTEMPTS):
            band = self._band_of(snap)
            todo = [*derive(self._entries_of(band, now)), *intents] if derive else list(intents)
            if snap.labels.get(self.settings.lease.mode_label) == PREVIEW_MODE:
                todo = [replace(i, preview=True) for i in todo]
            plan = planner.plan_append(band, todo, now, self.settings.band, seed=_seed(event, attempt))
            if flood is not None:  # asked once per event, before anything is written
                adjusted = self._breaker(flood, band, plan, todo, now, event)
                flood = None
                if adjusted is not todo:
                    todo = adjusted
                    plan = planner.plan_append(band, todo, now, self.settings.band, seed=_seed(event, attempt))
            if not plan.needs_lease and len(band.rules) + len(plan.ops) > self._max_rules:
                plan = replace(plan, needs_lease=f"more than band.max_rules ({self._max_rules}) rules")
            if plan.needs_lease:
                # Room is made by compacting; a removal alone changes only what it must.
                compact = plan.needs_lease != planner.NEEDS_REMOVAL
                if validate_only:
                    return self._dry_reconcile(band, todo, event, now, outcome, compact=compact)
                return self._reconcile(todo, event, now, outcome, compact=compact)
            try:
                self._execute(plan, band, event, outcome, lease=None, validate_only=validate_only)
                if not validate_only:
                    self._remember(read, plan)
                return outcome
            except PriorityTaken:
                read = snap = self._read()  # another writer got there first
            except QuotaExceeded:
                return self._reconcile(todo, event, now, outcome, compact=True, quota_full=True)
            except Exception:
                # Some adds may have landed (a delivery out of time, a transient
                # failure): the cached view lacks them, so the redelivery reads afresh.
                self._cache = None
                raise
        raise TransientError(f"no free band priority after {ADD_ATTEMPTS} attempts")

    def _breaker(
        self, flood: Flood, band: Band, plan: Plan, todo: list[Intent], now: datetime, event: EventRef
    ) -> list[Intent]:
        """Counts the ranges the event would newly block; when the source's
        breaker is open, those blocks go to preview or are dropped, loudly."""
        before = self._entries_of(band, now)
        new = {n for n in plan.entries if n not in before and planner.covering(before, n) is None}
        verdict = flood(len(new))
        if verdict is None or not new:
            return todo
        fresh = [i for i in todo if i.verb is Verb.BLOCK and i.network not in before and planner.covering(before, i.network) is None]
        self.audit.record(
            "breaker",
            f"{event.source} flooded: {len(fresh)} new range(s) of message {event.message_id} "
            f"{'refused' if verdict == 'refuse' else 'go to preview'} (flood_limit reached)",
            level=logging.ERROR, message_id=event.message_id, source=event.source, count=len(fresh), on_flood=verdict,
        )
        ids = {id(i) for i in fresh}
        if verdict == "refuse":
            return [i for i in todo if id(i) not in ids]
        return [replace(i, preview=True) if id(i) in ids else i for i in todo]

    def set_mode(self, preview: bool, event: EventRef) -> Outcome:
        """The break-glass switch: every band rule to preview (and every new
        one while the mode label says so), or every band rule back to
        enforced. Runs under the lease."""
        outcome = Outcome(leased=True)
        lease = Lease(self.api, self.settings, self.holder, self.clock, self.sleep)
        snap = lease.acquire()
        try:
            labels = {k: v for k, v in snap.labels.items() if k != self.settings.lease.mode_label}
            if preview:
                labels[self.settings.lease.mode_label] = PREVIEW_MODE
            labels[self.settings.lease.label] = lease.value()
            current = self.api.get_policy()
            self.api.set_labels(labels, current.label_fingerprint)
            band = planner.read_band(current.rules, self.settings.band)
            changed = []
            for rule in band.rules:
                if rule.preview != preview:
                    lease.keep()
                    self.api.patch_rule(replace(rule.rule, preview=preview), guard=self._guard(lease))
                    changed.append(rule.priority)
            outcome.ops = len(changed)
            self.audit.record(
                "mode", f"break-glass: {'every band rule is in preview' if preview else 'band rules are enforced again'} "
                f"({len(changed)} rule(s) changed)", level=logging.WARNING, message_id=event.message_id,
                source=event.source, actor=event.actor or None, reason=event.reason or None,
                mode=PREVIEW_MODE if preview else "enforce", priorities=changed,
            )
            return outcome
        finally:
            self._invalidate()
            lease.release()

    def cleanup(self, event: EventRef, *, validate_only: bool = False) -> Outcome:
        """Expires, compacts and reports; takes the lease only when there is
        something to change. ``validate_only``: the plan is validated by the
        API and recorded (``outcome: validate_only``), nothing is committed,
        and no usage is reported."""
        outcome = Outcome()
        now = self.clock()
        snap = self._read(lint=True)
        band = planner.read_band(snap.rules, self.settings.band)
        outcome.lint = self._last_lint
        outcome.group_rules = len(band.groups)
        plan = planner.plan_reconcile(
            band, [], now, self.settings.band, capacity=self._max_rules, seed=_seed(event, 0)
        )
        layout = {r.priority: r.rule for r in band.rules}
        if validate_only:
            return self._dry_reconcile(band, [], event, now, outcome, compact=True) if plan.ops else outcome
        mark = BandMark.parse(snap.labels.get(self.settings.lease.band_label, ""))
        if mark is not None and (len(band.rules) < mark.rules or sum(len(r.networks) for r in band.rules) < mark.ranges):
            self._check_wipe(mark, band, event)
        if plan.ops:
            self._reconcile([], event, now, outcome, compact=True)
            layout = outcome.layout  # the band as the reconcile left it: no second read
        self.report_usage(layout, len(band.foreign), len(snap.rules) - len(band.rules) + len(layout), event,
                          band=sorted({n for r in layout.values() for n in r.ranges}, key=lambda t: _order(ipaddress.ip_network(t))))
        self._mark(BandMark.of(layout.values(), now), mark, None if plan.ops else snap)
        return outcome

    def _check_wipe(self, mark: BandMark, band: Band, event: EventRef) -> None:
        """The band holds fewer rules or ranges than the last cleanup recorded
        (``mark``): find, from the audit trail, the ranges the last cleanup
        saw that are gone with no removed/expired/evicted record of ours
        since, and write one ``wiped`` record naming them."""
        held = band.entries()  # every range a rule of ours still holds, expired or not
        gone_rules = max(0, mark.rules - len(band.rules))
        last_seen, missing, why = mark.seen, None, ""
        if self.trail is None:
            why = "no audit trail to read"
        else:
            try:
                records = [r for r in self.trail(mark.seen - timedelta(minutes=5))
                           if r.get("change") in ("usage", *LIFTS) and r.get("outcome") != "validate_only"]
            except Exception as exc:  # the warning still goes out, with counts only
                records, why = [], f"the audit trail could not be read: {type(exc).__name__}: {exc}"
            at = max((i for i, r in enumerate(records) if r.get("change") == "usage" and isinstance(r.get("band"), list)),
                     default=None)
            if at is None:
                why = why or "no usage record with the band's ranges in the audit trail"
            else:
                usage = records[at]
                last_seen = _parse_when(usage.get("time")) or last_seen
                lifted = [n for r in records[at + 1:] for key in ("ranges", "split") for n in _nets(r.get(key))]
                missing = [
                    n for n in _nets(usage["band"])
                    if n not in held and planner.covering(held, n) is None
                    and not any(n.version == x.version and n.overlaps(x) for x in lifted)
                ]
                if not missing:
                    return  # every range that left the band, left it by our hand
        where = f"band {self.settings.band.start}-{self.settings.band.end}"
        if missing is None:
            text = (f"{where}: {gone_rules} rule(s) disappeared since {_when(mark.seen)} "
                    f"({mark.rules} recorded, {len(band.rules)} now); which ranges is unknown ({why}), and some may "
                    f"be our own removals. Check the trail, then 'python cli.py restore'")
        else:
            shown = ", ".join(str(n) for n in missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
            text = (f"{where} was wiped: {len(missing)} range(s) in {gone_rules} rule(s), last seen "
                    f"{_when(last_seen)}, disappeared without a record of ours: {shown}. "
                    f"Restore with 'python cli.py restore'")
        self.audit.record(
            "wiped", text, level=logging.ERROR, message_id=event.message_id, source=event.source,
            count=None if missing is None else len(missing), rules=gone_rules,
            ranges=None if missing is None else [str(n) for n in missing],
            last_seen=_when(last_seen), recorded_rules=mark.rules, recorded_ranges=mark.ranges, error=why or None,
        )

    def _mark(self, new: BandMark, old: BandMark | None, snap: PolicySnapshot | None) -> None:
        """Records what the band holds now in its policy label when it
        changed: one compare-and-set ``setLabels`` (on the read the cleanup
        made, or a fresh one after a reconcile). Losing the race to another
        label writer skips it: the next cleanup writes it."""
        if old is not None and new.same_band(old):
            return
        label = self.settings.lease.band_label
        try:
            current = snap if snap is not None else self.api.get_policy()
            self.api.set_labels({**current.labels, label: new.value}, current.label_fingerprint)
        except (FingerprintMismatch, TransientError) as exc:
            log.warning("could not record the band in the label %s (%s); the next cleanup does", label, exc)

    def lint(self, snap: PolicySnapshot) -> list[str]:
        """Problems in the policy that make the band useless or unsafe."""
        band = self.settings.band
        problems = [
            f"rule {r.priority} ({r.description or 'no description'}) is inside the band "
            f"{band.start}-{band.end} but not the responder's: move it out of the band"
            for r in planner.read_band(snap.rules, band).foreign
        ]
        for rule in snap.rules:
            if rule.priority < band.start and rule.action == "allow" and (
                "*" in rule.ranges or any(r in ("0.0.0.0/0", "::/0") for r in rule.ranges)
            ) and not rule.preview:
                problems.append(
                    f"rule {rule.priority} allows every address before the band ({band.start}-{band.end}) "
                    f"is evaluated, so no block takes effect: narrow it or give the band lower numbers"
                )
        for problem in problems:
            self.audit.record("lint", problem, level=logging.ERROR, policy=snap.name)
        return problems

    def report_usage(
        self, ours: Mapping[int, PolicyRule], foreign: int, policy_rules: int, event: EventRef,
        band: Sequence[str] | None = None,
    ) -> dict[str, int]:
        """One ``usage`` record; ``band``: the ranges the band holds, kept in
        the record so that a later cleanup can name what a wipe took."""
        usage = {
            "band_rules": len(ours),
            "band_size": self.settings.band.size,
            "max_rules": self._max_rules,
            "foreign_rules": foreign,
            "ranges": sum(len(r.ranges) for r in ours.values()),
            "policy_rules": policy_rules,
        }
        self.audit.record(
            "usage",
            f"band holds {usage['band_rules']} rules ({usage['ranges']} ranges) of {usage['band_size']} priorities",
            message_id=event.message_id, band=band,
            **usage,
        )
        return usage

    # -- internals --------------------------------------------------------

    def _reconcile(
        self,
        intents: Sequence[Intent],
        event: EventRef,
        now: datetime,
        outcome: Outcome,
        *,
        compact: bool,
        quota_full: bool = False,
    ) -> Outcome:
        lease = Lease(self.api, self.settings, self.holder, self.clock, self.sleep)
        snap = lease.acquire()
        now = self.clock()
        outcome.leased = True
        try:
            capacity = self._max_rules
            capped = quota_hit = False
            for attempt in range(ADD_ATTEMPTS):
                band = planner.read_band(snap.rules, self.settings.band)
                if snap.labels.get(self.settings.lease.mode_label) == PREVIEW_MODE:
                    intents = [replace(i, preview=True) for i in intents]
                if quota_hit and not capped:
                    # The quota refused an add under this lease: the band cannot
                    # grow past what it holds now, so the plan evicts to fit.
                    # (Not on the writer's own quota error: by the time it holds
                    # the lease, another holder may have compacted the band.)
                    capacity, capped = min(capacity, len(band.rules)), True
                plan = planner.plan_reconcile(
                    band, intents, now, self.settings.band, capacity=capacity, compact=compact, seed=_seed(event, attempt)
                )
                if quota_full:
                    # A plan adds before it removes, so with the quota full its first add
                    # fails: make room first with the plan's removals that uncover nothing,
                    # then let each add take over a rule the plan removes, where that
                    # uncovers nothing either.
                    plan, gone = self._remove_early(plan, band, lease, outcome)
                    plan = planner.within_quota(plan, band, gone)
                    if capped:
                        plan = self._squeeze(plan, band, gone, intents, now, capacity, compact, _seed(event, attempt))
                try:
                    why = f"quota full: {capacity} band rules fit" if capped else f"the band may hold {capacity} rules"
                    self._execute(plan, band, event, outcome, lease=lease, capacity=why)
                    return outcome
                except PriorityTaken:
                    pass
                except QuotaExceeded:
                    quota_full = quota_hit = True
                snap = self.api.get_policy()
            raise TransientError(f"could not reconcile the band after {ADD_ATTEMPTS} attempts")
        finally:
            self._invalidate()
            lease.release()

    def _squeeze(
        self, plan: Plan, band: Band, gone: set[int], intents: Sequence[Intent], now: datetime, capacity: int,
        compact: bool, seed: int,
    ) -> Plan:
        """With the quota full, adds that could take over no rule would fail:
        plan again for as many rules fewer (evicting, whose removals may go
        first), a few times at most, and take the first plan left with no add."""
        if gone:
            band = planner.read_band([r.rule for r in band.rules if r.priority not in gone], self.settings.band)
        for _ in range(3):
            adds = sum(isinstance(op, Add) for op in plan.ops)
            if not adds or capacity - adds < 1:
                break
            capacity -= adds
            plan = planner.within_quota(
                planner.plan_reconcile(band, intents, now, self.settings.band, capacity=capacity, compact=compact, seed=seed),
                band)
        return plan

    def _remove_early(self, plan: Plan, band: Band, lease: Lease, outcome: Outcome) -> tuple[Plan, set[int]]:
        """Does now the plan's removals of rules that no live entry needs:
        expired rules, and copies whose every range other rules give the
        same entry (as the band reads back). Nothing is uncovered, so this
        is safe with writers appending meanwhile. Returns the rest of the
        plan and the priorities removed."""
        now = self.clock()
        tag = self.settings.band.owner_tag
        want = band.entries(now)
        holders: dict[Network, list[planner.BandRule]] = {}
        for rule in band.rules:
            if not rule.meta.expired(now):
                for net in rule.networks:
                    holders.setdefault(net, []).append(rule)
        by_priority = {r.priority: r for r in band.rules}
        gone: set[int] = set()
        for op in plan.ops:
            if not isinstance(op, Remove) or op.before.priority not in by_priority:
                continue
            rule = by_priority[op.before.priority]
            if rule.meta.expired(now) or all(
                _readback(tag, _merged(net, [r for r in holders[net] if r.priority != rule.priority and r.priority not in gone], now))
                == _readback(tag, want[net])
                for net in rule.networks
            ):
                lease.keep()
                self.api.remove_rule(rule.priority, guard=self._guard(lease))
                gone.add(rule.priority)
                outcome.ops += 1
        if not gone:
            return plan, gone
        log.info("quota full: removed %d band rule(s) no entry needs before reconciling", len(gone))
        rest = tuple(op for op in plan.ops if not (isinstance(op, Remove) and op.before.priority in gone))
        return replace(plan, ops=rest), gone

    def _dry_reconcile(
        self, band: Band, intents: Sequence[Intent], event: EventRef, now: datetime, outcome: Outcome, *, compact: bool
    ) -> Outcome:
        """A reconcile plan validated and recorded, without the lease."""
        plan = planner.plan_reconcile(
            band, intents, now, self.settings.band, capacity=self._max_rules, compact=compact, seed=_seed(event, 0)
        )
        self._execute(plan, band, event, outcome, lease=None, validate_only=True)
        return outcome

    @staticmethod
    def _guard(lease: Lease | None) -> Guard:
        return guard_for(lease)

    def _defer(self, plan: Plan, done: int, event: EventRef, why: str) -> None:
        """One record of work stopped for lack of time: the redelivery reads
        the band afresh and continues; nothing finished is repeated."""
        left = plan.ops[done:]
        kinds = {k: sum(isinstance(op, t) for op in left) for k, t in (("add", Add), ("patch", Patch), ("remove", Remove))}
        self.audit.record(
            "deferred", f"stopped after {done} of {len(plan.ops)} operation(s), {len(left)} remain: {why}; "
            f"the redelivery of message {event.message_id} continues",
            level=logging.WARNING, message_id=event.message_id, source=event.source, done=done,
            remaining=len(left), **{f"remaining_{k}": v for k, v in kinds.items() if v},
        )

    def _execute(
        self, plan: Plan, band: Band, event: EventRef, outcome: Outcome, lease: Lease | None, validate_only: bool = False,
        capacity: str = "",
    ) -> None:
        before = self._entries_of(band, self.clock())
        for intent, why in plan.refused:
            outcome.refused += 1
            self.audit.record(
                "refused", f"refused {intent.verb.value} {intent.network}: {why}",
                level=logging.WARNING, message_id=event.message_id, source=intent.source,
                ranges=[str(intent.network)], reason=why,
            )
        outcome.satisfied += plan.satisfied
        guard = self._guard(lease)
        for done, op in enumerate(plan.ops):
            try:
                if lease is not None:
                    lease.keep()
                if isinstance(op, Add):
                    self.api.add_rule(op.rule, validate_only=validate_only, guard=guard)
                elif isinstance(op, Patch):
                    self.api.patch_rule(op.rule, validate_only=validate_only, guard=guard)
                elif not validate_only:
                    self.api.remove_rule(op.before.priority, guard=guard)
            except OutOfTime as exc:
                finished = replace(plan, ops=plan.ops[:done], expired=(), evicted=(), refused=())
                self._audit_changes(finished, before, event, outcome, validate_only, capacity, partial=True)
                self._defer(plan, done, event, str(exc))
                raise
            outcome.ops += 1
        layout = {r.priority: r.rule for r in band.rules}
        for op in plan.ops:
            if isinstance(op, Remove):
                layout.pop(op.before.priority, None)
            else:
                layout[op.rule.priority] = op.rule
        outcome.layout = layout
        self._audit_changes(plan, before, event, outcome, validate_only, capacity)

    def _audit_changes(
        self, plan: Plan, before: Mapping[Network, planner.Entry], event: EventRef, outcome: Outcome, validate_only: bool,
        capacity: str = "", *, partial: bool = False,
    ) -> None:
        """One record per changed rule (its new and extended ranges), one for
        ranges removed, expired or evicted."""
        mode = "validate_only" if validate_only else "applied"
        after = plan.entries
        common: dict[str, Any] = {"message_id": event.message_id, "source": event.source, "actor": event.actor or None,
                  "reason": event.reason or None, "outcome": mode}
        # A range split around a hole (an unblock inside a broader block):
        # its pieces keep their metadata, so they are no change; the record
        # is "removed <the hole>" with ``split`` naming the broader range.
        split = {} if partial else _splits(plan.ops, before, after)
        pieces = {p for parts in split.values() for p in parts}
        recorded: set[Network] = set()  # an entry written as several records is recorded once
        for op in plan.ops:
            if isinstance(op, Remove):
                continue
            nets = [n for n in map(ipaddress.ip_network, op.rule.ranges) if n not in recorded]
            new = [n for n in nets if n not in before and planner.covering(before, n) is None]
            grown = [n for n in nets if n not in new and n not in pieces and n not in split and before.get(n) != after.get(n)]
            rule_meta = planner.read_band([op.rule], self.settings.band).rules[0].meta
            by_meta: dict[tuple[str, RuleMeta], list[Network]] = {}
            for change, ranges in (("added", new), ("extended", grown)):
                for n in ranges:
                    # the entry's whole metadata (all its records'), so that a restore gets it back
                    entry = after.get(n)
                    by_meta.setdefault((change, rule_meta if entry is None else entry.meta), []).append(n)
                    recorded.add(n)
            for (change, meta), ranges in by_meta.items():
                setattr(outcome, change, getattr(outcome, change) + len(ranges))
                self.audit.record(
                    change, f"{change} {len(ranges)} range(s) until {_when(meta.expiry)} at priority {op.rule.priority}",
                    ranges=[str(n) for n in ranges], action=op.rule.action, preview=op.rule.preview,
                    expiry=_when(meta.expiry), sources=sorted(meta.sources),
                    severity=meta.severity.name.lower(), priority=op.rule.priority,
                    # the repeat-offender record (n=...), so that a restore keeps it
                    strikes=meta.strikes if meta.struck is not None else None,
                    struck=_when(meta.struck) if meta.struck is not None else None,
                    # each source's own claim where it is not the entry's, so that a restore keeps it
                    claims={s: {"expiry": _when(e), "severity": v.name.lower()} for s, e, v in meta.claims} or None,
                    **common,
                )
        if partial:  # what was added so far; removals wait for the redelivery's plan
            return
        evicted = {e.network for e in plan.evicted}
        gone = [n for n in before if n not in after and n not in evicted and planner.covering(after, n) is None
                and n not in split]
        holes = sorted({h for broad, parts in split.items() for h in minus(broad, parts)} - set(gone), key=_order)
        for change, ranges in (
            ("removed", gone + holes),
            ("expired", [e.network for e in plan.expired]),
            ("evicted", sorted(evicted, key=str)),
        ):
            if ranges:
                setattr(outcome, change, getattr(outcome, change) + len(ranges))
                extra: dict[str, Any] = {}
                if change == "evicted":  # what capacity pressure dropped, for the runbook
                    extra["sources"] = sorted({s for e in plan.evicted for s in e.meta.sources})
                    extra["severity"] = sorted({e.meta.severity.name.lower() for e in plan.evicted})
                    extra["capacity"] = capacity or None
                if change == "removed" and split:
                    extra["split"] = [str(n) for n in sorted(split, key=_order)]
                self.audit.record(
                    change, f"{change} {len(ranges)} range(s)"
                    + (f" (splitting {', '.join(extra['split'])} around them)" if extra.get("split") else ""),
                    level=logging.WARNING if change == "evicted" else logging.INFO,
                    ranges=[str(n) for n in ranges], **common, **extra,
                )
        if not plan.ops and not plan.refused:
            self.audit.record("unchanged", "no change needed", **common)


def _splits(
    ops: Sequence[planner.Op], before: Mapping[Network, planner.Entry], after: Mapping[Network, planner.Entry]
) -> dict[Network, list[Network]]:
    """The ranges of ``before`` that were split around a hole, each with its
    pieces: new ranges inside it with exactly its metadata (``address_exclude``
    pieces, as the planner's unblock leaves them), the range itself gone."""
    out: dict[Network, list[Network]] = {}
    for op in ops:
        if isinstance(op, Remove):
            continue
        for text in op.rule.ranges:
            net = ipaddress.ip_network(text)
            if net in before or (cover := planner.covering(before, net)) is None:
                continue
            if cover.network in after or planner.covering(after, cover.network) is not None:
                continue
            if after.get(net) == cover._replace(network=net) and net not in out.get(cover.network, []):
                out.setdefault(cover.network, []).append(net)
    return out


def _nets(value: Any) -> list[Network]:
    out: list[Network] = []
    for text in value if isinstance(value, list) else []:
        try:
            out.append(ipaddress.ip_network(str(text), strict=False))
        except ValueError:
            continue
    return out


def _parse_when(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _order(net: Network) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


def _readback(tag: str, entry: planner.Entry | None) -> planner.Entry | None:
    """``entry`` as the plan wants it: a truncated record (written before
    per-source claims) as it reads back; any other exactly."""
    if entry is None or not entry.meta.truncated:
        return entry
    return entry._replace(meta=representable(tag, entry.meta))


def _merged(net: Network, rules: Sequence[planner.BandRule], now: datetime) -> planner.Entry | None:
    """The entry of ``net`` that ``rules`` alone give (as ``Band.entries``)."""
    return planner.Band(tuple(rules), (), frozenset()).entries(now).get(net) if rules else None


def _when(expiry: datetime | None) -> str:
    return "permanent" if expiry is None else expiry.isoformat().replace("+00:00", "Z")


def _seed(event: EventRef, attempt: int) -> int:
    digest = hashlib.sha256(f"{event.message_id}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


__all__ = ["DEFAULT_RULE_PRIORITY", "EventRef", "Lease", "Outcome", "PolicyApi", "Responder", "guard_for"]
