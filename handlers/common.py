"""Steps every handler shares: timing, screening, applying, reporting."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from config.settings import SourceSettings
from responder import guards
from responder.model import Intent, ItemError
from responder.service import Outcome

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


def apply(
    rt: Runtime,
    message: Message,
    kind: str,
    intents: Sequence[Intent],
    *,
    force: bool = False,
    actor: str = "",
    reason: str = "",
) -> Outcome:
    """Screens the intents and applies those that pass; refusals are
    recorded. The band service (and the compute client) is only touched when
    something passes."""
    accepted, refused = guards.screen(intents, kind, rt.settings, force=force)
    if rt.settings.band.preview:
        accepted = [i if i.preview else _preview(i) for i in accepted]
    for intent, why in refused:
        rt.audit.record(
            "refused", f"refused {intent.verb.value} {intent.network}: {why}", level=logging.WARNING,
            message_id=message.message_id, source=kind, ranges=[str(intent.network)], reason=why,
        )
    if not accepted:
        outcome = Outcome(refused=len(refused))
        if not refused:
            rt.audit.record("unchanged", "nothing to apply", message_id=message.message_id, source=kind)
        return outcome
    outcome = rt.responder.apply(accepted, event_ref(message, kind, actor, reason))
    outcome.refused += len(refused)
    return outcome


def _preview(intent: Intent) -> Intent:
    from dataclasses import replace

    return replace(intent, preview=True)
