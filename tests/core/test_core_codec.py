"""The rule description codec: the band's state store, 64 characters a rule."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.codec import MAX_DESCRIPTION, RuleMeta, decode, encode, fits, parts, representable
from responder.model import Severity

TAG = "car1"
EXPIRY = datetime(2026, 11, 29, 18, 30, tzinfo=UTC)

source_names = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)
tags = st.from_regex(r"[a-z][a-z0-9]{1,7}", fullmatch=True)
minute_expiries = st.one_of(
    st.none(),
    st.integers(0, 60 * 24 * 365 * 5).map(lambda m: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=m)),
)


@pytest.mark.parametrize("severity", list(Severity))
def test_round_trip_keeps_every_severity(severity):
    meta = RuleMeta(expiry=EXPIRY, severity=severity, sources=frozenset({"spamhaus"}))

    decoded = decode(TAG, encode(TAG, meta))

    assert meta == decoded


def test_round_trip_keeps_a_permanent_expiry():
    meta = RuleMeta(expiry=None, severity=Severity.HIGH, sources=frozenset({"manual"}))

    decoded = decode(TAG, encode(TAG, meta))

    assert meta == decoded


def test_round_trip_keeps_a_timed_expiry_in_utc():
    paris = timezone(timedelta(hours=1))
    meta = RuleMeta(expiry=datetime(2026, 11, 29, 19, 30, tzinfo=paris), severity=Severity.LOW, sources=frozenset({"log"}))

    decoded = decode(TAG, encode(TAG, meta))

    assert EXPIRY == decoded.expiry


def test_encode_writes_the_documented_layout():
    meta = RuleMeta(expiry=EXPIRY, severity=Severity.HIGH, sources=frozenset({"spamhaus", "manual"}))

    description = encode(TAG, meta)

    assert "car1 x=202611291830 v=h s=manual+spamhaus" == description


def test_round_trip_keeps_several_sources():
    meta = RuleMeta(expiry=EXPIRY, severity=Severity.MEDIUM, sources=frozenset({"manual", "feed", "log", "alert"}))

    decoded = decode(TAG, encode(TAG, meta))

    assert meta == decoded


def test_sources_that_do_not_fit_are_dropped_and_marked():
    names = frozenset(f"feed-number-{i:04d}" for i in range(10))
    meta = RuleMeta(expiry=EXPIRY, severity=Severity.MEDIUM, sources=names)

    description = encode(TAG, meta)
    decoded = decode(TAG, description)

    assert len(description) <= MAX_DESCRIPTION
    assert decoded.truncated
    assert decoded.sources < names
    assert sorted(names)[: len(decoded.sources)] == sorted(decoded.sources)


def test_a_truncated_meta_encodes_to_the_same_text_again():
    names = frozenset(f"feed-number-{i:04d}" for i in range(10))
    first = encode(TAG, RuleMeta(expiry=None, severity=Severity.LOW, sources=names))

    second = encode(TAG, decode(TAG, first))

    assert first == second


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(tags, st.frozensets(source_names, min_size=1, max_size=12), minute_expiries, st.sampled_from(list(Severity)))
def test_any_meta_encodes_within_64_characters_and_decodes(tag, sources, expiry, severity):
    meta = RuleMeta(expiry=expiry, severity=severity, sources=sources)

    description = encode(tag, meta)
    decoded = decode(tag, description)

    assert len(description) <= MAX_DESCRIPTION
    assert (expiry, severity) == (decoded.expiry, decoded.severity)
    assert decoded.sources <= sources
    assert (decoded.sources != sources) == decoded.truncated
    # What is dropped did not fit: every dropped name is longer than the room left.
    room = MAX_DESCRIPTION - len(description)
    assert all(len(n) + 1 > room for n in sources - decoded.sources)
    # Any set between the kept names and all of them keeps the same names, so
    # merging a read-back rule with the claims it came from changes nothing.
    for extra in (sources - decoded.sources, frozenset(sorted(sources - decoded.sources)[::2])):
        between = decode(tag, encode(tag, RuleMeta(expiry=expiry, severity=severity, sources=decoded.sources | extra,
                                                         truncated=decoded.truncated)))
        assert between.sources == decoded.sources
    assert representable(tag, meta) == decoded


def test_truncation_keeps_manual_whatever_its_place_in_sorted_order():
    names = frozenset({"manual", *(f"feed-number-{i:04d}" for i in range(6))})

    decoded = decode(TAG, encode(TAG, RuleMeta(expiry=None, severity=Severity.HIGH, sources=names)))

    assert decoded.truncated and "manual" in decoded.sources and len(decoded.sources) < len(names)


@pytest.mark.parametrize(
    "description",
    [
        "",
        "other team's rule",
        "car2 x=202611291830 v=h s=manual",
        "car10 x=202611291830 v=h s=manual",
        "CAR1 x=202611291830 v=h s=manual",
        "car1",
        "car1 garbage",
        "car1 x=202611291830 v=h",
        "car1 x=202611291830 s=manual",
        "car1 v=h s=manual",
        "car1 x=202611291830 x=202611291830 v=h s=manual",
        "car1 x=202611291830 v=h v=h s=manual",
        "car1 x=202613291830 v=h s=manual",
        "car1 x=202611321830 v=h s=manual",
        "car1 x=202611292530 v=h s=manual",
        "car1 x=2026112918 v=h s=manual",
        "car1 x=2026-11-29T18:30 v=h s=manual",
        "car1 x=forever v=h s=manual",
        "car1 x=202611291830 v=x s=manual",
        "car1 x=202611291830 v=high s=manual",
        "car1  x=202611291830 v=h s=manual",
    ],
)
def test_a_foreign_description_decodes_to_none(description):
    assert None is decode(TAG, description)


def test_unknown_extra_fields_are_tolerated():
    decoded = decode(TAG, "car1 x=202611291830 v=c s=feed+manual r=ssh-brute q=3")

    assert RuleMeta(EXPIRY, Severity.CRITICAL, frozenset({"feed", "manual"})) == decoded


def test_field_order_does_not_matter():
    decoded = decode(TAG, "car1 s=manual v=l x=never")

    assert RuleMeta(None, Severity.LOW, frozenset({"manual"})) == decoded


# --------------------------------------------------------------------------
# The repeat-offender field (n=<strikes>-<minutes before the expiry>)

BUCKET = datetime(2026, 11, 29, 6, 30, tzinfo=UTC)


def test_round_trip_keeps_strikes_and_the_last_sighting_bucket():
    meta = RuleMeta(expiry=EXPIRY, severity=Severity.MEDIUM, sources=frozenset({"cloud-armor-waf"}),
                    strikes=2, struck=BUCKET)

    description = encode(TAG, meta)

    assert "car1 x=202611291830 v=m n=2-720 s=cloud-armor-waf" == description
    assert meta == decode(TAG, description)


def test_a_first_sighting_records_its_bucket_with_no_strike():
    meta = RuleMeta(expiry=EXPIRY, severity=Severity.MEDIUM, sources=frozenset({"log"}), struck=BUCKET)

    description = encode(TAG, meta)

    assert "car1 x=202611291830 v=m n=0-720 s=log" == description
    assert meta == decode(TAG, description)


def test_no_strike_record_writes_no_field():
    meta = RuleMeta(expiry=EXPIRY, severity=Severity.MEDIUM, sources=frozenset({"feed"}))

    assert "car1 x=202611291830 v=m s=feed" == encode(TAG, meta)


def test_an_absent_field_decodes_as_no_strike():
    decoded = decode(TAG, "car1 x=202611291830 v=m s=log")

    assert (0, None) == (decoded.strikes, decoded.struck)


def test_strikes_without_a_bucket_decode():
    decoded = decode(TAG, "car1 x=202611291830 v=m n=4 s=log")

    assert (4, None) == (decoded.strikes, decoded.struck)
    assert "car1 x=202611291830 v=m n=4 s=log" == encode(TAG, decoded)


def test_a_permanent_entry_keeps_no_strike_record():
    meta = RuleMeta(expiry=None, severity=Severity.HIGH, sources=frozenset({"manual", "log"}), strikes=3, struck=BUCKET)

    description = encode(TAG, meta)

    assert "car1 x=never v=h s=log+manual" == description
    assert (0, None) == (meta.strikes, meta.struck)
    assert (0, None) == (decode(TAG, "car1 x=never v=h n=2-30 s=manual").strikes, None)


def test_sources_that_do_not_fit_next_to_the_strike_field_are_dropped_and_marked():
    names = frozenset(f"detector-{i:04d}" for i in range(6))
    meta = RuleMeta(expiry=EXPIRY, severity=Severity.MEDIUM, sources=names, strikes=12, struck=BUCKET)

    description = encode(TAG, meta)
    decoded = decode(TAG, description)

    assert len(description) <= MAX_DESCRIPTION
    assert decoded.truncated and decoded.sources < names
    assert (12, BUCKET) == (decoded.strikes, decoded.struck)
    assert description == encode(TAG, decoded)


@pytest.mark.parametrize("field", ["n=", "n=x", "n=-3", "n=2-", "n=2-x", "n=2--30", "n=1.5", "n=2-30-1", "n=2 n=3"])
def test_a_malformed_strike_field_decodes_to_none(field):
    assert None is decode(TAG, f"car1 x=202611291830 v=m {field} s=log")


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(tags, st.frozensets(source_names, min_size=1, max_size=12), minute_expiries, st.sampled_from(list(Severity)),
       st.integers(0, 10_000), st.one_of(st.none(), st.integers(0, 60 * 24 * 400)))
def test_any_strike_record_encodes_within_64_characters_and_round_trips(tag, sources, expiry, severity, strikes, before):
    struck = None if before is None or expiry is None else expiry - timedelta(minutes=before)
    meta = RuleMeta(expiry=expiry, severity=severity, sources=sources, strikes=strikes, struck=struck)

    description = encode(tag, meta)
    decoded = decode(tag, description)

    assert len(description) <= MAX_DESCRIPTION
    assert (meta.expiry, meta.severity, meta.strikes, meta.struck) == \
        (decoded.expiry, decoded.severity, decoded.strikes, decoded.struck)
    assert decoded.sources <= sources
    assert (decoded.sources != sources) == decoded.truncated


# --------------------------------------------------------------------------
# Per-source claims


def test_each_sources_own_claim_is_written_and_read_back():
    meta = RuleMeta(expiry=EXPIRY, severity=Severity.HIGH, sources=frozenset({"fa", "fb", "waf"}),
                    claims=(("fa", EXPIRY - timedelta(hours=8), Severity.HIGH),
                            ("fb", EXPIRY, Severity.LOW),
                            ("waf", EXPIRY - timedelta(minutes=90), Severity.MEDIUM)))

    text = encode(TAG, meta)

    assert "car1 x=202611291830 v=h s=fa:480+fb:l+waf:90m" == text
    back = decode(TAG, text)
    assert meta == back
    assert (EXPIRY - timedelta(hours=8), Severity.HIGH) == back.claim("fa")
    assert (EXPIRY, Severity.LOW) == back.claim("fb")
    assert back.claim("other") is None


def test_a_permanent_record_gives_a_finite_claim_its_own_expiry():
    own = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    meta = RuleMeta(expiry=None, severity=Severity.HIGH, sources=frozenset({"manual", "fa"}),
                    claims=(("fa", own, Severity.LOW),))

    text = encode(TAG, meta)

    assert "car1 x=never v=h s=fa@202612010000l+manual" == text
    assert meta == decode(TAG, text)


def test_a_record_without_claims_reads_as_every_source_until_its_expiry():
    back = decode(TAG, "car1 x=202611291830 v=m s=fa+fb")
    assert () == back.claims
    assert (EXPIRY, Severity.MEDIUM) == back.claim("fa") == back.claim("fb")


def test_claims_are_normalized_never_later_or_heavier_than_the_record():
    meta = RuleMeta(expiry=EXPIRY, severity=Severity.LOW, sources=frozenset({"fa", "fb"}),
                    claims=(("fa", EXPIRY + timedelta(hours=1), Severity.HIGH), ("gone", EXPIRY, Severity.LOW),
                            ("fb", EXPIRY - timedelta(minutes=15), Severity.LOW)))
    assert (("fb", EXPIRY - timedelta(minutes=15), Severity.LOW),) == meta.claims


@pytest.mark.parametrize("sources", [
    "fa:15x", "fa@2026120100", "fa:1234567890", "fa@202612010000",  # @ only in a permanent record
    "fa:15+fa",  # one source twice
])
def test_a_malformed_claim_decodes_to_none(sources):
    assert decode(TAG, f"car1 x=202611291830 v=m s={sources}") is None


def test_a_minutes_claim_in_a_permanent_record_decodes_to_none():
    assert decode(TAG, "car1 x=never v=m s=fa:15+manual") is None


def test_claims_that_ended_leave_the_record_and_the_rest_decide_it():
    meta = RuleMeta(expiry=EXPIRY, severity=Severity.HIGH, sources=frozenset({"fa", "fb"}),
                    claims=(("fa", EXPIRY, Severity.LOW), ("fb", EXPIRY - timedelta(hours=8), Severity.HIGH)))

    assert meta is meta.live(EXPIRY - timedelta(hours=9))
    after = meta.live(EXPIRY - timedelta(hours=8))
    assert after == RuleMeta(expiry=EXPIRY, severity=Severity.LOW, sources=frozenset({"fa"}))
    assert meta.live(EXPIRY) is None


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(tags, st.dictionaries(source_names, st.tuples(st.integers(0, 60 * 24 * 30), st.sampled_from(list(Severity))),
                             min_size=1, max_size=6), st.booleans())
def test_any_claims_encode_within_64_characters_and_read_back_what_they_keep(tag, claims, permanent):
    top = datetime(2026, 12, 1, tzinfo=UTC)
    own = {s: (top - timedelta(minutes=m), v) for s, (m, v) in claims.items()}
    latest = max(e for e, _ in own.values())
    meta = RuleMeta(expiry=None if permanent else latest, severity=max(v for _, v in own.values()),
                    sources=frozenset(own), claims=tuple((s, e, v) for s, (e, v) in own.items()))

    text = encode(tag, meta)
    back = decode(tag, text)

    assert len(text) <= MAX_DESCRIPTION
    assert back is not None and (meta.expiry, meta.severity) == (back.expiry, back.severity)
    assert back.sources <= meta.sources and (back.sources != meta.sources) == back.truncated
    for source in back.sources:  # every claim kept is read back exactly
        assert meta.claim(source) == back.claim(source)
    assert representable(tag, meta) == back


def _merged(metas):
    from responder.planner.entry import Entry, merge
    net = __import__("ipaddress").ip_network("192.0.2.0/24")
    entry = Entry(net, metas[0])
    for m in metas[1:]:
        entry = merge(entry, Entry(net, m))
    return entry.meta


def test_a_record_too_long_for_one_description_is_split_into_records_that_merge_back():
    top = datetime(2026, 12, 1, tzinfo=UTC)
    meta = RuleMeta(expiry=top, severity=Severity.HIGH, strikes=2, struck=top - timedelta(hours=3),
                    sources=frozenset({"cloud-armor-waf", "example-intel", "monitoring", "scc"}),
                    claims=(("example-intel", top - timedelta(hours=20), Severity.MEDIUM),
                            ("monitoring", top - timedelta(hours=18), Severity.HIGH)))
    assert not fits(TAG, meta)

    records = parts(TAG, meta)

    assert 1 < len(records)
    assert all(fits(TAG, r) and not r.truncated for r in records)
    assert [r for r in records if r.struck is not None] == [records[0]]  # the strike record once, with the latest claim
    assert records[0].expiry == top
    names = [s for r in records for s in r.sources]
    assert sorted(names) == sorted(set(names)) == sorted(meta.sources)
    assert meta == _merged([decode(TAG, encode(TAG, r)) for r in records])
    assert records == parts(TAG, meta)


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(tags, st.dictionaries(source_names, st.tuples(st.integers(0, 60 * 24 * 30), st.sampled_from(list(Severity))),
                             min_size=1, max_size=8), st.booleans(), st.integers(0, 5))
def test_any_record_splits_into_records_that_fit_and_merge_back_exactly(tag, claims, permanent, strikes):
    top = datetime(2026, 12, 1, tzinfo=UTC)
    own = {s: (top - timedelta(minutes=m), v) for s, (m, v) in claims.items()}
    if permanent:
        own["manual"] = (None, Severity.LOW)
    latest = None if permanent else max(e for e, _ in own.values())
    meta = RuleMeta(expiry=latest, severity=max(v for _, v in own.values()), sources=frozenset(own),
                    strikes=strikes, struck=None if latest is None else latest - timedelta(minutes=30),
                    claims=tuple((s, e, v) for s, (e, v) in own.items()))

    records = parts(tag, meta)

    assert all(len(encode(tag, r)) <= MAX_DESCRIPTION for r in records)
    back = [decode(tag, encode(tag, r)) for r in records]
    assert back == list(records)  # each record reads back as it was planned
    assert meta == _merged(back)  # and together they are the whole record
