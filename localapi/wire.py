"""Small helpers of the wire format that the compute and network-security
halves of the local API share (kept apart so neither imports the other)."""

from __future__ import annotations

import datetime as dt
import re


def _now_rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def camel(path: str) -> str:
    """FieldMask paths arrive camelCased from the client; accept snake_case too."""
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), path)
