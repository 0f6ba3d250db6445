"""Replaying the audit trail (responder/restore.py): what the band held."""
from __future__ import annotations

from datetime import UTC, datetime

from responder.restore import intents, live, replay

T = "2026-05-01T10:00:0{}Z"
META = {"action": "deny(403)", "preview": False, "expiry": "2026-05-01T12:00:00Z", "sources": ["manual"], "severity": "high"}
NOW = datetime(2026, 5, 1, 11, tzinfo=UTC)


def ranges(records):
    return sorted(str(c.network) for c in live(replay(records), NOW))


def test_a_split_unblock_leaves_the_pieces_around_the_hole():
    records = [
        {"change": "added", "ranges": ["91.92.109.0/24"], "message_id": "a", "time": T.format(0), **META},
        {"change": "removed", "ranges": ["91.92.109.7/32"], "split": ["91.92.109.0/24"], "message_id": "b", "time": T.format(1)},
    ]
    got = ranges(records)
    assert 8 == len(got) and "91.92.109.6/32" in got and "91.92.109.7/32" not in got


def test_a_split_recorded_the_old_way_reads_the_same():
    """Before 'split': the pieces as 'extended', then the broader range 'removed'."""
    pieces = ["91.92.109.0/30", "91.92.109.4/31", "91.92.109.6/32", "91.92.109.8/29", "91.92.109.16/28",
              "91.92.109.32/27", "91.92.109.64/26", "91.92.109.128/25"]
    records = [
        {"change": "added", "ranges": ["91.92.109.0/24"], "message_id": "a", "time": T.format(0), **META},
        {"change": "extended", "ranges": pieces, "message_id": "b", "time": T.format(1), **META},
        {"change": "removed", "ranges": ["91.92.109.0/24"], "message_id": "b", "time": T.format(1)},
    ]
    assert sorted(pieces) == ranges(records)


def test_unblocked_expired_evicted_and_dry_run_entries_stay_gone():
    records = [
        {"change": "added", "ranges": ["1.1.1.1/32", "2.2.2.2/32", "3.3.3.3/32", "4.4.4.4/32"], "message_id": "a",
         "time": T.format(0), **META},
        {"change": "removed", "ranges": ["1.1.1.1/32"], "message_id": "b", "time": T.format(1)},
        {"change": "expired", "ranges": ["2.2.2.2/32"], "message_id": "c", "time": T.format(2)},
        {"change": "evicted", "ranges": ["3.3.3.3/32"], "message_id": "d", "time": T.format(3)},
        {"change": "added", "ranges": ["5.5.5.5/32"], "message_id": "e", "time": T.format(4), "outcome": "validate_only", **META},
        {"change": "wiped", "ranges": ["4.4.4.4/32"], "message_id": "f", "time": T.format(5)},
        {"change": "added", "ranges": ["6.6.6.6/32"], "message_id": "g", "time": T.format(6),
         **{**META, "expiry": "2026-05-01T10:30:00Z"}},  # expired by now
    ]
    assert ["4.4.4.4/32"] == ranges(records)


def test_a_claim_of_two_sources_becomes_one_intent_per_source_with_its_strikes():
    records = [{"change": "extended", "ranges": ["45.95.147.236/32"], "message_id": "a", "time": T.format(0),
                **{**META, "sources": ["cloud-armor-waf", "manual"]}, "strikes": 2, "struck": "2026-05-01T09:45:00Z"}]
    got = intents(live(replay(records), NOW), NOW)
    assert ["manual", "cloud-armor-waf"] == [i.source for i in got]
    assert all(i.escalation is not None and i.escalation.strikes == 2 for i in got)
