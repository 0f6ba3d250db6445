"""Placeholder until the alert formats are wired in."""

from __future__ import annotations

from responder.errors import BadEvent
from responder.service import Outcome

from handlers.envelope import Message
from handlers.runtime import Runtime


def handle(message: Message, rt: Runtime) -> Outcome:
    raise BadEvent("unsupported format: alert messages are not handled yet")
