"""The scheduled cleanup: expire, compact, lint and report usage; expire
feeds stored in address groups (the rule, then the group) and delete our
groups no rule references.

Cloud Scheduler publishes a fixed payload to the cleanup topic; the payload
is not needed (any JSON object, or nothing, is accepted).
"""

from __future__ import annotations

from handlers.envelope import Message
from handlers.runtime import Runtime, event_ref
from responder.service import Outcome


def handle(message: Message, rt: Runtime) -> Outcome:
    ref = event_ref(message, "cleanup")
    outcome = rt.responder.cleanup(ref)
    if rt.uses_groups or outcome.group_rules:
        groups = rt.group_store.cleanup(ref, orphans=rt.uses_groups)
        outcome.expired += groups.expired
        outcome.ops += groups.ops
    return outcome

