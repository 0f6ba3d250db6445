"""The scheduled cleanup: expire, compact, lint and report usage.

Cloud Scheduler publishes a fixed payload to the cleanup topic; the payload
is not needed (any JSON object, or nothing, is accepted).
"""

from __future__ import annotations

from handlers import common
from handlers.envelope import Message
from handlers.runtime import Runtime, event_ref
from responder.service import Outcome, Responder


def handle(message: Message, rt: Runtime) -> Outcome:
    """Cleans every target's band, each under its own lease (at once; a
    transient failure on one raises after the others were cleaned)."""
    ref = event_ref(message, "cleanup")

    def one(name: str, responder: Responder) -> Outcome:
        return responder.cleanup(ref)

    return common.each_target(rt, message, "cleanup", rt.targets, one)
