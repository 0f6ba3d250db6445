"""Steps every handler shares: timing, screening, applying, reporting."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta

from config.settings import SourceSettings
from handlers.envelope import Message
from handlers.runtime import Runtime, event_ref
from responder import guards
from responder.errors import BadEvent, PermanentError
from responder.model import Escalation, Intent, ItemError
from responder.service import Derive, Flood, Outcome, Responder


@contextmanager
def reading(what: str) -> Iterator[None]:
    """Reading a message: a RecursionError raised meanwhile (input nested or
    chained deeper than Python's recursion limit allows; the parsers turn it
    into an item error where they can) becomes a BadEvent, so the message is
    rejected once with a record, not failed on every delivery until it is
    dead-lettered. Only the reading is guarded: a RecursionError while
    applying would be a bug, and still fails the delivery."""
    try:
        yield
    except RecursionError:
        raise BadEvent(f"{what}: nested too deeply to read") from None


def expiry_for(
    base: datetime,
    source: SourceSettings,
    *,
    ttl: timedelta | None = None,
    expiry: datetime | None = None,
) -> datetime:
    """The expiry an item asks for (an absolute time, else a TTL from the
    message's publish time, else the source's default TTL), never later
    than the source's maximum TTL allows."""
    if expiry is not None:
        return min(expiry, base + source.max_ttl)
    return base + min(ttl or source.default_ttl, source.max_ttl)


def escalation_for(base: datetime, source: SourceSettings, expiry: datetime) -> Escalation | None:
    """The repeat-offender escalation of a block until ``expiry`` sighted at
    ``base`` (the publish time), when the source kind has ``escalate`` on:
    the planner multiplies the block's TTL by ``escalate`` per strike, up to
    the kind's ``max_ttl`` (see ``responder.planner``)."""
    ttl = expiry - base
    if source.escalate <= 1 or ttl <= timedelta(0):
        return None
    return Escalation(seen=base, ttl=ttl, factor=source.escalate, cap=source.max_ttl)


def report_items(rt: Runtime, message: Message, kind: str, errors: Sequence[ItemError], skipped: int = 0) -> None:
    """One record for the bad items of an otherwise readable message."""
    if errors:
        rt.audit.record(
            "refused",
            f"{kind} message {message.message_id}: {len(errors)} bad item(s), e.g. {errors[0].item!r}: {errors[0].error}",
            level=logging.WARNING, message_id=message.message_id, source=kind,
            errors=[{"item": e.item[:200], "error": e.error} for e in errors[:50]],
            error_count=len(errors), skipped=skipped or None,
        )


def screen(
    rt: Runtime, message: Message, kind: str, intents: Sequence[Intent], *, force: bool = False
) -> tuple[list[Intent], int]:
    """The intents that may go ahead, and how many were refused.

    Applies the guards (recording each refusal), and preview when the band
    or the kind is in preview. (The flood breaker counts only ranges the band
    does not hold yet, so the band service applies it: see ``flood``.)"""
    source = rt.settings.source(kind)
    accepted, refused = guards.screen(intents, kind, rt.settings, force=force)
    record_refusals(rt, message, kind, refused)
    if rt.settings.band.preview or source.preview:
        accepted = [replace(i, preview=True) for i in accepted]
    return accepted, len(refused)


#: Refusals of one event recorded one by one; past it, one record per reason
#: names the first ``REFUSALS_LISTED`` ranges and the count, so a huge list
#: (a feed past the per-event cap) costs a few records, not one per range.
REFUSALS_ONE_BY_ONE = 100
REFUSALS_LISTED = 100


def record_refusals(rt: Runtime, message: Message, kind: str, refused: Sequence[tuple[Intent, str]]) -> None:
    for intent, why in refused[:REFUSALS_ONE_BY_ONE]:
        rt.audit.record(
            "refused", f"refused {intent.verb.value} {intent.network}: {why}", level=logging.WARNING,
            message_id=message.message_id, source=kind, ranges=[str(intent.network)], reason=why,
        )
    rest: dict[str, list[Intent]] = {}
    for intent, why in refused[REFUSALS_ONE_BY_ONE:]:
        rest.setdefault(why if not why.startswith(str(intent.network)) else why[len(str(intent.network)):].strip(),
                        []).append(intent)
    for why, group in rest.items():
        rt.audit.record(
            "refused", f"refused {len(group)} more range(s) of message {message.message_id}: {why}",
            level=logging.WARNING, message_id=message.message_id, source=kind,
            ranges=[str(i.network) for i in group[:REFUSALS_LISTED]], count=len(group), reason=why,
        )


def apply(
    rt: Runtime,
    message: Message,
    kind: str,
    intents: Sequence[Intent],
    *,
    force: bool = False,
    source_id: str | None = None,
    actor: str = "",
    reason: str = "",
    derive: Derive | None = None,
    targets: Sequence[str] | None = None,
) -> Outcome:
    """Screens the intents and applies those that pass. The band service
    (and so the compute client) is only touched when something passes."""
    accepted, refused = screen(rt, message, kind, intents, force=force)
    return apply_screened(rt, message, kind, accepted, refused, source_id=source_id, actor=actor, reason=reason,
                          derive=derive, targets=targets)


def apply_screened(
    rt: Runtime,
    message: Message,
    kind: str,
    accepted: Sequence[Intent],
    refused: int = 0,
    *,
    source_id: str | None = None,
    actor: str = "",
    reason: str = "",
    derive: Derive | None = None,
    targets: Sequence[str] | None = None,
) -> Outcome:
    """Applies screened intents to every selected target (``targets``, else
    those of the kind and feed: ``targets_for``); see ``each_target``."""
    if not accepted and derive is None:
        if not refused:
            rt.audit.record("unchanged", "nothing to apply", message_id=message.message_id, source=source_id or kind)
        return Outcome(refused=refused)
    names = tuple(targets) if targets is not None else targets_for(rt, kind, source_id)
    if not names:
        rt.audit.record("unchanged", f"no target takes {kind} events from {source_id or kind}",
                        message_id=message.message_id, source=source_id or kind)
        return Outcome(refused=refused)
    validate_only = rt.settings.band.validate_only or rt.settings.source(kind).validate_only
    ref = event_ref(message, source_id or kind, actor, reason)

    def one(name: str, responder: Responder) -> Outcome:
        return responder.apply(accepted, ref, derive=derive, validate_only=validate_only, flood=flood(rt, kind, name))

    outcome = each_target(rt, message, source_id or kind, names, one)
    outcome.refused += refused
    return outcome


def targets_for(rt: Runtime, kind: str, source_id: str | None = None) -> tuple[str, ...]:
    """The targets an event of ``kind`` applies to: those its kind lists
    (``[sources.KIND] targets``, default all), narrowed for a feed by its
    ``[feeds.NAME] targets``; in configuration order."""
    s = rt.settings
    wanted = set(s.source(kind).targets or s.target_names)
    if kind == "feed" and source_id and source_id in s.feeds and s.feeds[source_id].targets:
        wanted &= set(s.feeds[source_id].targets)
    return tuple(n for n in s.target_names if n in wanted)


def each_target(
    rt: Runtime, message: Message, source: str, names: Sequence[str], work: Callable[[str, Responder], Outcome]
) -> Outcome:
    """Runs ``work`` on every named target's band service, at once (the
    runtime's small pool; this thread takes the first), and sums what they
    did. With one target configured it is just ``work`` on it, as ever.

    Every target is tried whatever the others do. Then: a transient failure
    (or a bug) on any target is raised, so Pub/Sub redelivers, and the
    redelivery reads each band first, so targets already done do nothing
    again; a BadEvent (a snapshot refused) is raised as well. A permanent
    failure on one target (its policy gone, a permission denied) is
    recorded (``target-failed``, naming it) and does not fail the others:
    the message is acknowledged unless another target needs a redelivery."""
    if len(rt.targets) == 1:
        return work(names[0], rt.responder_for(names[0]))

    def run(name: str) -> Outcome:
        return work(name, rt.responder_for(name))

    futures = [(name, rt.pool.submit(contextvars.copy_context().run, run, name)) for name in names[1:]]
    results: list[tuple[str, Outcome | BaseException]] = []
    try:
        results.append((names[0], run(names[0])))
    except Exception as exc:
        results.append((names[0], exc))
    for name, future in futures:
        try:
            results.append((name, future.result()))
        except Exception as exc:
            results.append((name, exc))
    total = Outcome()
    redeliver: BaseException | None = None
    rejected: BaseException | None = None
    for name, result in results:
        if isinstance(result, Outcome):
            _add(total, result, first=name == names[0])
        elif isinstance(result, BadEvent):
            rejected = rejected or result
        elif isinstance(result, PermanentError):
            rt.audit.record(
                "target-failed", f"target {name}: {type(result).__name__}: {result}; the other targets went ahead",
                level=logging.ERROR, message_id=message.message_id, source=source, target=name,
                error=f"{type(result).__name__}: {result}",
            )
        else:
            if redeliver is None:
                redeliver = result
            rt.audit.record(
                "failed", f"target {name}: {type(result).__name__}: {result}; raised for redelivery",
                level=logging.WARNING, message_id=message.message_id, source=source, target=name,
                error=f"{type(result).__name__}: {result}",
            )
    if redeliver is not None:
        raise redeliver
    if rejected is not None:
        raise rejected
    return total


def _add(total: Outcome, one: Outcome, *, first: bool) -> None:
    for name in ("added", "extended", "removed", "expired", "evicted", "refused", "satisfied", "ops"):
        setattr(total, name, getattr(total, name) + getattr(one, name))
    total.leased = total.leased or one.leased
    total.lint.extend(one.lint)
    if first:
        total.layout = one.layout


def flood(rt: Runtime, kind: str, target: str | None = None) -> Flood | None:
    """The kind's flood breaker, as the band service asks it: with the
    number of ranges an event would newly block, None to go ahead, else
    what to do with them (``on_flood``: preview or refuse). Each target
    counts apart (its own band and capacity)."""
    source = rt.settings.source(kind)
    if source.flood_limit <= 0:
        return None
    key = kind if target in (None, rt.settings.default_target) else f"{kind}@{target}"

    def check(new_ranges: int) -> str | None:
        ok = rt.breaker.admit(key, new_ranges, rt.clock(), source.flood_limit, source.flood_window)
        return None if ok else source.on_flood

    return check
