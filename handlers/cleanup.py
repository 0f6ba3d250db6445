"""The scheduled cleanup: expire, compact, lint and report usage; expire
feeds stored in address groups (the rule, then the group) and delete our
groups no rule references.

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
    transient failure on one raises after the others were cleaned). Feeds
    stored in address groups belong to the default target's policy: its
    cleanup also expires their groups."""
    ref = event_ref(message, "cleanup")
    default = rt.settings.default_target

    def one(name: str, responder: Responder) -> Outcome:
        outcome = responder.cleanup(ref)
        if name == default and (rt.uses_groups or outcome.group_rules):
            groups = rt.group_store.cleanup(ref, orphans=rt.uses_groups)
            outcome.expired += groups.expired
            outcome.ops += groups.ops
        return outcome

    return common.each_target(rt, message, "cleanup", rt.targets, one)
