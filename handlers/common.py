"""Steps every handler shares: timing, screening, applying, reporting."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from config.settings import SourceSettings
from responder import guards
from responder.model import Intent, ItemError, Verb
from responder.service import Derive, Outcome

from handlers.envelope import Message
from handlers.runtime import Runtime, event_ref


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
    wanted = expiry if expiry is not None else base + (ttl or source.default_ttl)
    return min(wanted, base + source.max_ttl)


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

    Applies the guards (recording each refusal), the flood breaker of the
    kind (recording when it trips), and preview when the band or the kind
    is in preview."""
    source = rt.settings.source(kind)
    accepted, refused = guards.screen(intents, kind, rt.settings, force=force)
    for intent, why in refused:
        rt.audit.record(
            "refused", f"refused {intent.verb.value} {intent.network}: {why}", level=logging.WARNING,
            message_id=message.message_id, source=kind, ranges=[str(intent.network)], reason=why,
        )
    blocks = sum(1 for i in accepted if i.verb is Verb.BLOCK)
    if not rt.breaker.admit(kind, blocks, rt.clock(), source.flood_limit, source.flood_window):
        rt.audit.record(
            "breaker",
            f"{kind} sources flooded: more than {source.flood_limit} new ranges in {source.flood_window}; "
            f"{blocks} new range(s) of message {message.message_id} "
            f"{'refused' if source.on_flood == 'refuse' else 'go to preview'}",
            level=logging.ERROR, message_id=message.message_id, source=kind, count=blocks, on_flood=source.on_flood,
        )
        if source.on_flood == "refuse":
            refused_now = [i for i in accepted if i.verb is Verb.BLOCK]
            accepted = [i for i in accepted if i.verb is not Verb.BLOCK]
            return accepted, len(refused) + len(refused_now)
        accepted = [replace(i, preview=True) if i.verb is Verb.BLOCK else i for i in accepted]
    if rt.settings.band.preview or source.preview:
        accepted = [replace(i, preview=True) for i in accepted]
    return accepted, len(refused)


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
) -> Outcome:
    """Screens the intents and applies those that pass. The band service
    (and so the compute client) is only touched when something passes."""
    accepted, refused = screen(rt, message, kind, intents, force=force)
    return apply_screened(rt, message, kind, accepted, refused, source_id=source_id, actor=actor, reason=reason, derive=derive)


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
) -> Outcome:
    if not accepted and derive is None:
        if not refused:
            rt.audit.record("unchanged", "nothing to apply", message_id=message.message_id, source=source_id or kind)
        return Outcome(refused=refused)
    validate_only = rt.settings.band.validate_only or rt.settings.source(kind).validate_only
    ref = event_ref(message, source_id or kind, actor, reason)
    outcome = rt.responder.apply(accepted, ref, derive=derive, validate_only=validate_only)
    outcome.refused += refused
    return outcome
