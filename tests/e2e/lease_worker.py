"""One band writer in a process of its own, for the lease tests
(tests/e2e/test_lease.py): the real service and compute adapter against the
local API, unblocking one address under the lease.

    python tests/e2e/lease_worker.py CONFIG ADDRESS MESSAGE_ID [STALL_SECONDS MARKER_FILE]

With a stall, the first mutation the service asks for waits STALL_SECONDS
(after the service's own lease check, before the adapter sends it) and
MARKER_FILE is written when the stall begins: a process paused by the
scheduler, a long GC or a slow retry. Exits 0 when the unblock was applied,
75 on a transient failure (the message would be redelivered), printing the
error on stderr.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config import settings as config  # noqa: E402
from responder.audit import Audit  # noqa: E402
from responder.compute import CloudArmor  # noqa: E402
from responder.errors import TransientError  # noqa: E402
from responder.model import Intent, Verb  # noqa: E402
from responder.service import EventRef, Responder  # noqa: E402


class Stalling:
    """The adapter, with a pause before the first mutation it is asked for."""

    def __init__(self, api: CloudArmor, stall: float, marker: Path | None) -> None:
        self.api, self.stall, self.marker = api, stall, marker

    def _pause(self) -> None:
        if self.stall > 0:
            if self.marker is not None:
                self.marker.write_text("stalled")
            time.sleep(self.stall)
            self.stall = 0

    def add_rule(self, *args: Any, **kw: Any) -> None:
        self._pause()
        self.api.add_rule(*args, **kw)

    def patch_rule(self, *args: Any, **kw: Any) -> None:
        self._pause()
        self.api.patch_rule(*args, **kw)

    def remove_rule(self, *args: Any, **kw: Any) -> None:
        self._pause()
        self.api.remove_rule(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)


def main(argv: list[str]) -> int:
    path, address, message_id = argv[:3]
    stall = float(argv[3]) if len(argv) > 3 else 0.0
    marker = Path(argv[4]) if len(argv) > 4 else None
    settings = config.load(path)
    api = Stalling(CloudArmor(settings.policy, retry_deadline=settings.policy.retry_deadline), stall, marker)
    api.api._ensure_clients()  # a warm instance: compute_v1 imported (~3 s), so the short test lease is all work
    responder = Responder(settings, api, Audit())  # type: ignore[arg-type]
    intent = Intent(Verb.UNBLOCK, ipaddress.ip_network(address), "manual")
    try:
        responder.apply([intent], EventRef(message_id, "manual", actor="test@example.com"))
    except TransientError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 75
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
