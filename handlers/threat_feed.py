"""Threat feeds: indicator lists published to the threat-feed topic.

Message attributes (all optional):

* ``feed``: the feed's name (its source id in the band); required unless the
  JSON format names it. Settings per feed live in ``[feeds.<name>]``.
* ``format``: json, spamhaus, netset, plain, tor, stix, misp; detected from
  the content when absent (or taken from the feed's settings).
* ``snapshot``: ``true`` when the message carries the feed's whole current
  list: entries of this feed that are missing from it are withdrawn. A
  snapshot that is empty, or that would withdraw more than the feed's
  ``max_drop_share`` of its entries, is refused whole: a failed download must
  never look like "no threats".

Each indicator becomes a block until its own expiry, else its TTL from the
publish time, else the feed's TTL; indicators below the feed's
``min_confidence`` are skipped; past ``max_entries`` the rest are refused.
Revoked indicators (STIX ``revoked``) withdraw this feed's claim.
Escalation for repeat offenders is off for feeds unless
``sources.feed.escalate`` is set (a feed republishing its list would count
a strike each time).

A small JSON object with an ``action`` (and no ``indicators``) is a command:
``{"action": "pull", "feed": NAME}`` downloads the feed from its configured
url (``handlers/feed_pull.py``) and ingests the list here, like a published
one; a pulled list that yields no indicator is refused whole.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from config.settings import FeedSettings, Settings
from handlers import common, feed_pull
from handlers.envelope import Message
from handlers.formats import FormatError, parse_feed
from handlers.runtime import Runtime, event_ref
from responder import guards
from responder.errors import BadEvent
from responder.model import Intent, ItemError, Network, Severity, Verb
from responder.planner import Entry, round_up
from responder.service import Outcome

KIND = "feed"
_NAME = re.compile(r"[a-z][a-z0-9-]{0,15}")  # always fullmatch: "$" also matches before a final newline


def _notes(notes: Sequence[str]) -> dict[str, str]:
    return dict(n.split("=", 1) for n in notes if "=" in n)


def handle(message: Message, rt: Runtime) -> Outcome:
    if feed_pull.is_pull(message.data):
        return feed_pull.handle(message, rt, _ingest_pulled)
    return ingest(message, rt)


def _ingest_pulled(message: Message, rt: Runtime) -> Outcome:
    return ingest(message, rt, pulled=True)


def ingest(message: Message, rt: Runtime, *, pulled: bool = False) -> Outcome:
    """One feed list (published, or downloaded by a pull) to the band."""
    attrs = message.attributes
    declared = attrs.get("feed", "")
    feed_settings = rt.settings.feeds.get(declared) if declared else None
    fmt = attrs.get("format") or (feed_settings.format if feed_settings and feed_settings.format != "auto" else None)
    limit_feed = rt.settings.feed(declared) if declared else None
    # No event applies more than the feed's max_entries nor the guards' cap
    # per event; a list far longer is read only to twice that (the rest is
    # counted and refused), so memory stays bounded whatever its size.
    limit = (2 * min(limit_feed.max_entries, rt.settings.guards.max_ranges_per_event) + 1000
             if limit_feed is not None else None)
    try:
        with common.reading("threat feed"):
            parsed = parse_feed(message.data, fmt, message.publish_time, limit=limit)
    except FormatError as exc:
        raise BadEvent(f"threat feed: {exc}") from None
    notes = _notes(parsed.notes)
    name = declared or notes.get("feed", "")
    if not _NAME.fullmatch(name):
        raise BadEvent(f"threat feed: the feed name {name!r} is missing or invalid (attribute 'feed': 1-16 of a-z, 0-9, '-')")
    if name == "manual":
        raise BadEvent("threat feed: 'manual' is reserved for operators' commands")
    feed = rt.settings.feed(name)
    snapshot = (attrs.get("snapshot", notes.get("snapshot", "")).lower() == "true") or feed.snapshot
    with common.reading(f"threat feed {name}"):
        intents, errors, skipped = _intents(parsed.sightings, feed, message, rt)
    if int(notes.get("over-limit", "0")):
        errors.append(ItemError(f"{notes['over-limit']} more item(s) not read",
                                f"over the feed's max_entries ({feed.max_entries})"))
    intents_errors = list(parsed.errors) + errors
    if not intents and pulled:
        why = f" ({intents_errors[0].error})" if intents_errors else ""
        raise BadEvent(f"threat feed {name}: the downloaded list holds no valid indicator{why}; nothing changed")
    if not intents and not snapshot:
        if parsed.errors or errors:
            raise BadEvent(f"threat feed {name}: no valid indicator ({intents_errors[0].error})")
        rt.audit.record("unchanged", f"threat feed {name}: no indicator to apply", message_id=message.message_id, source=name)
        return Outcome()
    if snapshot and not intents:
        raise BadEvent(f"threat feed {name}: snapshot with no valid indicator refused (would withdraw the whole feed)")
    common.report_items(rt, message, KIND, intents_errors, parsed.skipped + skipped)
    accepted, refused = common.screen(rt, message, KIND, intents)
    if snapshot and not any(i.verb is Verb.BLOCK for i in accepted):
        raise BadEvent(f"threat feed {name}: snapshot with no valid indicator refused (would withdraw the whole feed)")
    if snapshot and feed.store != "band":
        grouped = _to_groups(rt, message, feed, accepted, refused)
        if grouped is not None:
            return grouped
    derive = _withdrawals(name, feed, accepted) if snapshot else None
    return common.apply_screened(rt, message, KIND, accepted, refused, source_id=name, reason=f"feed {name}", derive=derive)


def _to_groups(rt: Runtime, message: Message, feed: FeedSettings, accepted: Sequence[Intent],
               refused: int) -> Outcome | None:
    """A snapshot of a feed stored in address groups (``store``): the
    groups are made to hold exactly the screened list, and the feed's claims
    still in band rules (from before it moved) are withdrawn. None when the
    feed stays in the band (``auto`` below the threshold, or the Standard
    tier: the caller falls back to band rules)."""
    blocks = [i for i in accepted if i.verb is Verb.BLOCK]
    networks = [i.network for i in blocks]
    store = rt.group_store
    if not store.wanted(feed, networks):
        return None
    source = rt.settings.source(KIND)
    expiry = round_up(common.expiry_for(message.publish_time, source, ttl=feed.ttl), rt.settings.band.expiry_granularity)
    ref = event_ref(message, feed.name, reason=f"feed {feed.name}")
    outcome = store.sync(feed, networks, expiry=expiry, action=feed.action or source.action,
                         preview=any(i.preview for i in blocks), event=ref)
    if outcome is None:
        return None
    outcome.refused += refused
    if outcome.band_claims:
        name = feed.name

        def withdraw(entries: Mapping[Network, Entry]) -> list[Intent]:
            return [Intent(Verb.UNBLOCK, n, name, reason="the feed moved to an address group")
                    for n, e in entries.items() if name in e.meta.sources]

        rt.responder.apply([], ref, derive=withdraw)
    return outcome


def _intents(
    sightings: Sequence, feed: FeedSettings, message: Message, rt: Runtime
) -> tuple[list[Intent], list[ItemError], int]:
    return feed_intents(sightings, feed, rt.settings, message.publish_time)


#: Items past a feed's max_entries named one by one in its refusal record;
#: the rest are counted in one more item.
OVER_LISTED = 50


def feed_intents(
    sightings: Sequence, feed: FeedSettings, settings: Settings, published: datetime
) -> tuple[list[Intent], list[ItemError], int]:
    """A parsed list's sightings as the feed's intents (before the guards),
    its bad items, and how many were skipped below ``min_confidence``.
    ``cli.py capacity`` reads lists through this too."""
    source = settings.source(KIND)
    severity = Severity.parse(feed.severity or source.severity)
    action = feed.action or source.action
    intents: list[Intent] = []
    errors: list[ItemError] = []
    skipped = 0
    over: list[str] = []  # past max_entries: counted, not parsed (a huge list stays cheap)
    for s in sightings:
        if s.confidence is not None and s.confidence < feed.min_confidence:
            skipped += 1
            continue
        if len(intents) >= feed.max_entries and not s.revoked:
            over.append(s.value)
            continue
        try:
            network = guards.parse_network(s.value)
        except ValueError as exc:
            errors.append(ItemError(s.value, str(exc)))
            continue
        if s.revoked:
            intents.append(Intent(Verb.UNBLOCK, network, feed.name, reason=s.reason))
            continue
        expiry = common.expiry_for(published, source, ttl=s.ttl or feed.ttl, expiry=s.expiry)
        intents.append(Intent(
            Verb.BLOCK, network, feed.name, expiry=expiry,
            severity=s.severity or severity, action=action, reason=s.reason,
            escalation=common.escalation_for(published, source, expiry),
        ))
    if over:
        why = f"over the feed's max_entries ({feed.max_entries})"
        errors.extend(ItemError(v, why) for v in over[:OVER_LISTED])
        if len(over) > OVER_LISTED:
            errors.append(ItemError(f"{len(over) - OVER_LISTED} more item(s)", why))
    return intents, errors, skipped


def _withdrawals(name: str, feed: FeedSettings, accepted: Sequence[Intent]):  # type: ignore[no-untyped-def]
    """For a snapshot: the feed's entries that the new list no longer
    covers, as withdrawals of this feed's claim, refused whole when they
    are more than the feed's max_drop_share."""
    blocks = [i.network for i in accepted if i.verb is Verb.BLOCK]
    listed: set[Network] = set(ipaddress.collapse_addresses([n for n in blocks if n.version == 4]))  # type: ignore[misc]
    listed.update(ipaddress.collapse_addresses([n for n in blocks if n.version == 6]))  # type: ignore[misc]

    def covered(net: Network) -> bool:
        return any(net.supernet(new_prefix=p) in listed for p in range(net.prefixlen, -1, -1))

    def derive(entries: Mapping[Network, Entry]) -> list[Intent]:
        ours = [n for n, e in entries.items() if name in e.meta.sources]
        gone = [n for n in ours if not covered(n)]
        if ours and len(gone) > feed.max_drop_share * len(ours):
            raise BadEvent(
                f"threat feed {name}: snapshot refused: it would withdraw {len(gone)} of the feed's "
                f"{len(ours)} entries, more than max_drop_share={feed.max_drop_share}"
            )
        # Broadest first: a withdrawn supernet goes whole, so no narrower
        # withdrawal splits it first and merges its pieces (this feed's
        # expiry and severity) into other sources' entries of the same
        # ranges. Otherwise the outcome would depend on the band's rule order.
        gone.sort(key=lambda n: (n.version, n.prefixlen, n.network_address))
        return [Intent(Verb.UNBLOCK, n, name, reason="no longer in the feed's snapshot") for n in gone]

    return derive
