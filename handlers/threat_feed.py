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

from config.settings import FeedSettings
from handlers import common, feed_pull
from handlers.envelope import Message
from handlers.formats import FormatError, parse_feed
from handlers.runtime import Runtime
from responder import guards
from responder.errors import BadEvent
from responder.model import Intent, ItemError, Network, Severity, Verb
from responder.planner import Entry
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
    try:
        with common.reading("threat feed"):
            parsed = parse_feed(message.data, fmt, message.publish_time)
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
    derive = _withdrawals(name, feed, accepted) if snapshot else None
    return common.apply_screened(rt, message, KIND, accepted, refused, source_id=name, reason=f"feed {name}", derive=derive)


def _intents(
    sightings: Sequence, feed: FeedSettings, message: Message, rt: Runtime
) -> tuple[list[Intent], list[ItemError], int]:
    source = rt.settings.source(KIND)
    severity = Severity.parse(feed.severity or source.severity)
    action = feed.action or source.action
    intents: list[Intent] = []
    errors: list[ItemError] = []
    skipped = 0
    for s in sightings:
        if s.confidence is not None and s.confidence < feed.min_confidence:
            skipped += 1
            continue
        try:
            network = guards.parse_network(s.value)
        except ValueError as exc:
            errors.append(ItemError(s.value, str(exc)))
            continue
        if s.revoked:
            intents.append(Intent(Verb.UNBLOCK, network, feed.name, reason=s.reason))
            continue
        if len(intents) >= feed.max_entries:
            errors.append(ItemError(s.value, f"over the feed's max_entries ({feed.max_entries})"))
            continue
        expiry = common.expiry_for(message.publish_time, source, ttl=s.ttl or feed.ttl, expiry=s.expiry)
        intents.append(Intent(
            Verb.BLOCK, network, feed.name, expiry=expiry,
            severity=s.severity or severity, action=action, reason=s.reason,
            escalation=common.escalation_for(message.publish_time, source, expiry),
        ))
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
