"""The scheduled cleanup: expire, compact, lint and report usage.

Cloud Scheduler publishes a fixed payload to the cleanup topic; the payload
is not needed (any JSON object, or nothing, is accepted).
"""

from __future__ import annotations

from handlers.envelope import Message
from handlers.runtime import Runtime, event_ref
from responder.service import Outcome


def handle(message: Message, rt: Runtime) -> Outcome:
    return rt.responder.cleanup(event_ref(message, "cleanup"))
