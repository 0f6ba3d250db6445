"""The policy label that keeps a pulled feed's validators: it round-trips,
stays within Google's label rules, and drops an ETag that does not fit."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from handlers.feed_pull import Validators, decode, encode

LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
WHEN = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
MODIFIED = datetime(2026, 2, 28, 23, 59, 58, tzinfo=UTC)


@pytest.mark.parametrize("etag", [
    '"65f1a2b3-1c4e5"', '"d41d8cd98f00b204e9800998ecf8427e"', 'W/"5e7a"', '"ABCdef"', "",
])
def test_the_label_round_trips_and_is_a_valid_label_value(etag: str) -> None:
    v = Validators("0123456789ab", WHEN, MODIFIED, etag)
    text = encode(v)
    assert LABEL_VALUE.match(text)
    assert v == decode(text)


def test_an_etag_that_does_not_fit_is_left_out_and_the_rest_kept() -> None:
    v = Validators("0123456789ab", WHEN, MODIFIED, 'W/"' + "a1" * 32 + '"')
    text = encode(v)
    assert LABEL_VALUE.match(text)
    assert Validators("0123456789ab", WHEN, MODIFIED, "") == decode(text)


@pytest.mark.parametrize("text", ["", "garbage", "a-b-c", "x-zz!-1-h00"])
def test_an_unreadable_label_reads_as_nothing(text: str) -> None:
    assert decode(text) is None
