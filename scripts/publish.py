"""Delivers one message to a running function as Eventarc would.

    python scripts/publish.py URL FILE [key=value ...]

FILE is the message data; key=value pairs become Pub/Sub attributes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eventarc  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    url, file, *pairs = argv
    attributes = dict(p.split("=", 1) for p in pairs)
    status = eventarc.post(url, Path(file).read_bytes(), attributes=attributes)
    print(f"HTTP {status}")
    return 0 if status < 300 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
