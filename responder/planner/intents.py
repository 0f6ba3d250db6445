"""What each intent does to the entries: block (with escalation strikes),
extend, unblock; expiries rounded to the band's granularity.

Invariant: the entries after some intents are what the intents mean, and
applying the same intents again changes nothing. A block adds its source's
claim to the entries of its network, or is satisfied by an entry (its own
or a supernet's) that already holds as much; only a manual block may be
permanent, and automation never changes a manual block's rule fields. A
source has one claim on an address: a block merges its claim into the
source's claims on narrower entries too, so nested claims of one source
never cross (one holds the other) and the live claims covering an address
answer the same whether or not the band aggregated. An extend moves the
extender's claim on every address it names later (as heavy as it was; a
new claim at the lowest severity), never earlier. An
unblock withdraws its source's claim (a manual one, every claim) from every
address it names, splitting a broader entry around the network, and an
entry with no claim left goes. A sighting strikes only from a publish-time
bucket later than the one its entry records. Expired entries are dropped
first. The planner's own record of the escalation rules is in the package
docstring (``responder.planner``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from responder.codec import RuleMeta, with_claims
from responder.model import Escalation, Intent, Network, Severity, Verb
from responder.planner.entry import MANUAL, Entry, later, latest, merge
from responder.planner.index import EntryIndex
from responder.planner.keys import BITS, Key, key_of

Claim = tuple[datetime | None, Severity]


def round_up(moment: datetime, granularity: timedelta) -> datetime:
    """The next multiple of ``granularity`` since the epoch, at or after
    ``moment`` (so expiries land on whole minutes and sightings share)."""
    step = int(granularity.total_seconds())
    seconds = math.ceil(moment.timestamp() / step) * step
    return datetime.fromtimestamp(seconds, tz=UTC)


def round_down(moment: datetime, granularity: timedelta) -> datetime:
    """The multiple of ``granularity`` since the epoch at or before ``moment``:
    the publish-time bucket of a sighting."""
    step = int(granularity.total_seconds())
    return datetime.fromtimestamp(math.floor(moment.timestamp() / step) * step, tz=UTC)


def escalated_ttl(escalation: Escalation, strikes: int) -> timedelta:
    """``ttl * factor ** strikes``, at most ``cap`` (never less than ``ttl``)."""
    base = escalation.ttl.total_seconds()
    cap = max(escalation.cap.total_seconds(), base)
    try:
        scaled = base * escalation.factor ** strikes
    except OverflowError:
        scaled = math.inf
    return timedelta(seconds=min(max(scaled, base), cap))


def apply_intents(
    current: Mapping[Network, Entry],
    intents: Sequence[Intent],
    now: datetime,
    granularity: timedelta,
) -> tuple[dict[Network, Entry], list[tuple[Intent, str]], int]:
    """The live entries after the intents, in order (a new dict, the
    caller's own); plus the intents refused (with why) and the number
    already in effect."""
    entries, refused, satisfied = apply(current, intents, now, granularity)
    return dict(entries.view().items()), refused, satisfied


_MetaKey = tuple[datetime | None, Severity, str, int, datetime | None]


def apply(
    current: Mapping[Network, Entry] | EntryIndex,
    intents: Sequence[Intent],
    now: datetime,
    granularity: timedelta,
) -> tuple[EntryIndex, list[tuple[Intent, str]], int]:
    """``apply_intents``, into a new index (``current`` is left as it is)."""
    entries = EntryIndex.live_copy(current, now)
    # Most intents of an event share an expiry (None: in the past once rounded) and metadata.
    rounded: dict[datetime, datetime | None] = {}
    metas: dict[_MetaKey, RuleMeta] = {}
    refused: list[tuple[Intent, str]] = []
    satisfied = 0
    unblock, block = Verb.UNBLOCK, Verb.BLOCK
    get, held, covering, put, put_address, host_bits = (
        entries.get, entries.holds, entries.covering, entries.put, entries.put_address, BITS)
    last: tuple[Any, Any, Any, Any] = (object(), None, None, None)  # expiry, severity, source, meta
    # Each source's severities in the entries, made when a block of a network
    # first needs it: only a source that claims at more than one severity can
    # hold a claim inside the network that the block's claim crosses.
    severities: dict[str, set[Severity]] | None = None
    for intent in intents:
        verb, k = intent.verb, key_of(intent.network)
        if verb is unblock:
            before = len(entries), get(k)
            _unblock(entries, k, intent)
            satisfied += before == (len(entries), get(k))
            continue
        expiry: datetime | None
        if intent.permanent:
            if intent.source != MANUAL:
                refused.append((intent, "only manual blocks can be permanent"))
                continue
            expiry = None
        elif intent.expiry is None:
            refused.append((intent, "no expiry"))
            continue
        else:
            expiry = rounded.get(intent.expiry, now)  # now: not seen yet (a rounded expiry is never now)
            if expiry is now:
                up = round_up(intent.expiry, granularity)
                expiry = rounded[intent.expiry] = up if up > now else None
            if expiry is None:
                refused.append((intent, "expiry is in the past"))
                continue
        if verb is block:
            if intent.escalation is None and not held(k) and not covering(k):
                # The usual block, in line: a network nothing blocks yet. Its
                # metadata is most often the previous intent's.
                if expiry is not last[0] or intent.severity is not last[1] or intent.source != last[2]:
                    last = (expiry, intent.severity, intent.source, _meta(metas, expiry, intent))
                    if severities is not None:
                        severities.setdefault(intent.source, set()).add(intent.severity)
                entry = Entry(intent.network, last[3], intent.action, intent.preview)
                if k[2] == host_bits[k[0]]:
                    put_address(k, entry)  # a single address is no one's supernet
                    continue
                put(k, entry)
            elif not _block(entries, k, intent, expiry, granularity, metas):
                satisfied += 1
                continue
            if k[2] == host_bits[k[0]]:
                continue
            if severities is None:
                severities = _severities(entries)
            mine = severities.setdefault(intent.source, set())
            if len(mine) > 1 or (mine and intent.severity not in mine):
                _raise_inside(entries, k, intent.source)
            mine.add(intent.severity)
        else:
            why = _extend(entries, k, intent, expiry)
            severities = None  # an extend may add a claim at another severity
            if why:
                refused.append((intent, why))
    return entries, refused, satisfied


def _severities(entries: EntryIndex) -> dict[str, set[Severity]]:
    out: dict[str, set[Severity]] = {}
    seen: set[int] = set()  # the entries of one rule share their metadata
    for e in entries.by_key.values():
        if id(e.meta) not in seen:
            seen.add(id(e.meta))
            for source, (_, severity) in e.meta.claim_map().items():
                out.setdefault(source, set()).add(severity)
    return out


def _stronger(a: Claim, b: Claim) -> Claim:
    """One source's two claims as one: the later expiry, the higher severity."""
    return later(a[0], b[0]), max(a[1], b[1])


def _raise_inside(entries: EntryIndex, k: Key, source: str) -> None:
    """After a block of ``source`` on ``k``: each narrower entry holding a
    claim of the source takes the block's claim into its own (the later
    expiry, the higher severity), so that nested claims of one source never
    cross (see the package docstring: a source has one claim on an
    address, whatever the band aggregated)."""
    held = entries.by_key[k].meta.claim(source)
    assert held is not None
    for t in entries.inside(k):
        if t == k:
            continue
        entry = entries.by_key[t]
        own = entry.meta.claim(source)
        if own is None or (new := _stronger(own, held)) == own:
            continue
        claims = entry.meta.claim_map()
        claims[source] = new
        meta = with_claims(entry.meta, claims)
        assert meta is not None
        entries.put(t, entry._replace(meta=meta))


# --------------------------------------------------------------------------
# Block


def _block(
    entries: EntryIndex,
    k: Key,
    intent: Intent,
    expiry: datetime | None,
    granularity: timedelta,
    metas: dict[_MetaKey, RuleMeta],
) -> bool:
    """Applies a block (to ``k``, ``intent.network``'s); returns False
    when it was already in effect."""
    net = intent.network
    existing = entries.get(k)
    covers = entries.covering(k) if existing is None else []
    strikes: int = 0
    struck: datetime | None = None
    if intent.escalation is not None and expiry is not None:
        base = existing
        for cover in reversed(covers):  # what the supernets record, folded
            base = cover._replace(network=intent.network) if base is None else merge(base, cover)
        strikes, struck, expiry = _strike(base, intent.escalation, expiry, granularity)
    wanted = Entry(net, _meta(metas, expiry, intent, strikes, struck), intent.action, intent.preview)
    if existing is None:
        # any supernet may satisfy it, not only the nearest
        if covers and any(_satisfies(cover, _as_claim_on(cover, wanted)) for cover in covers):
            return False
        # The new entry also records the claims its supernets already make on
        # it, so that replaying the same intents finds them satisfied.
        for cover in covers:
            folded = merge(cover._replace(network=net), wanted)
            if cover.manual and intent.source != MANUAL:
                folded = folded._replace(action=cover.action, preview=cover.preview)
            wanted = folded
        entries.put(k, wanted)
        if covers:
            entries.derived.add(k)
        return True
    merged = merge(existing, wanted)
    if existing.manual and intent.source != MANUAL:
        # Automation adds its claim but never changes a manual block's rule fields.
        merged = merged._replace(action=existing.action, preview=existing.preview)
    if merged == existing or _hidden_sources_only(existing, merged):
        return False
    if existing.meta.truncated and _satisfies(existing, _as_claim_on(existing, wanted)):
        return False  # the record may hold it already, hidden (see _holds_claims)
    # A supernet that already says all of it satisfies it here too: whether
    # the band holds an entry of exactly this network (an aggregate a
    # compaction made, say) must not change the answer.
    if any(_satisfies(cover, _as_claim_on(cover, wanted)) for cover in entries.covering(k)):
        return False
    entries.put(k, merged)
    return True


def _strike(
    base: Entry | None, escalation: Escalation, expiry: datetime, granularity: timedelta
) -> tuple[int, datetime, datetime]:
    """(strikes, bucket, expiry) a sighting asks for, given the entry the
    band holds for its network (``base``; None: not blocked) and the
    sighting's own rounded expiry."""
    bucket = round_down(escalation.seen, granularity)
    if escalation.strikes is not None:  # a recorded entry replayed: no new strike
        return escalation.strikes, bucket, expiry
    if base is None or base.meta.expiry is None or base.meta.struck is None:
        # The first sighting an escalating source records (the entry may
        # hold other sources' claims, or predate escalation); permanent
        # entries never strike.
        return 0, bucket, expiry
    if bucket <= base.meta.struck:
        return 0, bucket, expiry  # the same message again, or an older one: no strike
    strikes = base.meta.strikes + 1
    longer = round_up(escalation.seen + escalated_ttl(escalation, strikes), granularity)
    return strikes, bucket, max(longer, expiry)


def _meta(
    metas: dict[_MetaKey, RuleMeta], expiry: datetime | None, intent: Intent, strikes: int = 0, struck: datetime | None = None
) -> RuleMeta:
    """The metadata a block asks for; ``metas`` caches them (immutable):
    most intents of an event ask for the same."""
    asked = (expiry, intent.severity, intent.source, strikes, struck)
    meta = metas.get(asked)
    if meta is None:
        meta = metas[asked] = RuleMeta(expiry, intent.severity, frozenset({intent.source}), strikes=strikes, struck=struck)
    return meta


def _may_hold(meta: RuleMeta, sources: frozenset[str]) -> bool:
    """True when a rule with ``meta`` holds, or may hold, every one of
    ``sources``: a truncated record cannot show more, and the codec never
    drops manual, so only a missing manual claim is certain."""
    return sources <= meta.sources or (meta.truncated and MANUAL not in sources - meta.sources)


def _hidden_sources_only(before: Entry, after: Entry) -> bool:
    """True when ``after`` differs from ``before`` only by the claims of
    sources that ``before`` may hold already (hidden by truncation)."""
    new = after.meta.sources - before.meta.sources
    return bool(new) and _may_hold(before.meta, after.meta.sources) and after == before._replace(
        meta=replace(before.meta, sources=after.meta.sources,
                     claims=before.meta.claims + tuple(c for c in after.meta.claims if c[0] in new))
    )


def said_by_a_supernet(entries: EntryIndex, k: Key, entry: Entry) -> bool:
    """True when one supernet's entry already says all that ``entry`` (of
    ``k``) says: a copy of its claims that a block made and an unblock in
    the same intents emptied of its own. Written, it would be a rule that
    changes no address's meaning (and a redelivery would write it again).
    One supernet, not several folded: their claims may cross (a band
    written before a source had one claim per address)."""
    return any(_satisfies(cover, _as_claim_on(cover, entry)) for cover in entries.covering(k))


def _as_claim_on(have: Entry, want: Entry) -> Entry:
    """``want`` as it would merge into ``have``: automation adds its claim to
    a manual block but never changes its rule fields (see ``_block``)."""
    if have.manual and MANUAL not in want.meta.sources:
        return want._replace(action=have.action, preview=have.preview)
    return want


def _satisfies(have: Entry, want: Entry) -> bool:
    return (
        _holds_claims(have.meta, want.meta)
        # a permanent entry keeps no repeat-offender record (see RuleMeta)
        and (have.meta.expiry is None or (
            want.meta.strikes <= have.meta.strikes
            and latest(have.meta.struck, want.meta.struck) == have.meta.struck))
        # no action check: as in merge, the entry that lasts at
        # least as long keeps its action
        and (want.preview or not have.preview)
    )


def _holds_claims(have: RuleMeta, want: RuleMeta) -> bool:
    """True when ``have`` holds every claim of ``want`` at least as long and
    as heavy: a source's own claim, or, for a source a truncated record may
    hide (never manual), the record's bounds."""
    if not _may_hold(have, want.sources):
        return False
    for source, (expiry, severity) in want.claim_map().items():
        # A truncated record may hide a longer claim of any source but manual
        # (another rule's copy of the source reads back merged with it).
        own = (have.expiry, have.severity) if have.truncated and source != MANUAL else have.claim(source)
        if own is None:
            own = (have.expiry, have.severity)
        if later(own[0], expiry) != own[0] or own[1] < severity:
            return False
    return True


# --------------------------------------------------------------------------
# Extend


def _extend(entries: EntryIndex, k: Key, intent: Intent, expiry: datetime | None) -> str | None:
    """Moves the expiry of every address ``intent.network`` (``k``) blocks
    later; never earlier. Returns why it could not, or None.

    The blocked addresses are those of the entries inside the network, and
    all of it when a supernet's entry covers it: then the network gets an
    entry of its own (the claims its supernets make on it, extended), and
    the rest of each supernet keeps its expiry."""
    targets = entries.inside(k)
    if not entries.holds(k):
        covers = entries.covering(k)
        if not covers and not targets:
            return "not blocked"
        # in effect through a supernet already: no entry of its own
        if covers and not any(
            (held := c.meta.claim(intent.source)) is not None and later(held[0], expiry) == held[0] for c in covers
        ):
            folded = covers[0]._replace(network=intent.network)
            for cover in covers[1:]:
                folded = merge(folded, cover)
            entries.put(k, folded)
            targets.append(k)
    source = intent.source
    above: dict[Key, Claim] = {}  # what the entries above each target claim for the source (before any change)
    for t in targets:
        for cover in entries.covering(t):
            if (c := cover.meta.claim(source)) is not None:
                was = above.get(t)
                above[t] = c if was is None else _stronger(was, c)
    for t in targets:
        entry = entries.by_key[t]
        if entry.meta.truncated and source != MANUAL and later(entry.meta.expiry, expiry) == entry.meta.expiry:
            # A record written truncated may hide a claim of the source as
            # long as its expiry (never a manual one): satisfied, as a block
            # is (``_holds_claims``); written again, it would hide it again.
            continue
        claims = entry.meta.claim_map()
        own = claims.get(source)
        # The extender's claim on each address: until the later of what it
        # claims there and the new expiry, as heavy as it was; where it
        # claims nothing, a new claim at the lowest severity (an extend says
        # how long, not how bad).
        was = own if own is not None else above.get(t)  # where it has no own claim, the broader entries' is the address's
        if was is None:
            claims[source] = (expiry, Severity.LOW)
        elif own is None and later(was[0], expiry) == was[0]:
            continue  # a broader entry already holds it as long
        else:
            claims[source] = (later(was[0], expiry), was[1])
        if claims[source] != own:
            meta = with_claims(entry.meta, claims)
            assert meta is not None
            extended = entry._replace(meta=meta)
            if not _hidden_sources_only(entry, extended):
                entries.put(t, extended)
    return None


# --------------------------------------------------------------------------
# Unblock


def _withdraw(entry: Entry, source: str) -> Entry | None:
    """``entry`` without ``source``'s claim (a manual unblock withdraws every
    claim); None when no claim is left."""
    if source == MANUAL:
        return None
    if source not in entry.meta.sources:
        return entry
    claims = entry.meta.claim_map()
    del claims[source]
    meta = with_claims(entry.meta, claims)
    return None if meta is None else entry._replace(meta=meta)


def _unblock(entries: EntryIndex, k: Key, intent: Intent) -> None:
    """Withdraws a claim on a network: a manual unblock lifts every block on
    it, another source only its own claim. Entries inside the network lose
    the claim; a broader entry holding the claim is split around the network
    (``address_exclude``), so the outcome is the same whether or not the band
    had aggregated the network with its neighbours. An entry goes when no
    claim is left."""
    net, source = intent.network, intent.source
    for sub in entries.inside(k):
        kept = _withdraw(entries.by_key[sub], source)
        if kept is None:
            entries.drop(sub)
        else:
            entries.put(sub, kept)
    for cover in entries.covering(k):
        cover_key = key_of(cover.network)
        if entries.get(cover_key) is not cover:
            continue  # already split
        kept = _withdraw(cover, source)
        if kept is cover:
            continue
        entries.drop(cover_key)
        parts = [cover._replace(network=p) for p in cover.network.address_exclude(net)]  # type: ignore[arg-type]
        if kept is not None:
            parts.append(kept._replace(network=net))
        for part in parts:
            part_key = key_of(part.network)
            seen = entries.get(part_key)  # a piece of a narrower cover split before
            entries.put(part_key, part if seen is None else merge(seen, part))
