"""The responder's own exception types.

One base class; the two branches decide what a function does with a failure:
``TransientError`` propagates so that Pub/Sub redelivers the message, while a
``PermanentError`` is logged once and the message acknowledged. Only the
compute adapter translates ``google.api_core`` exceptions into these.
"""

from __future__ import annotations


class ResponderError(Exception):
    """Base of every error the responder raises on purpose."""


class TransientError(ResponderError):
    """May succeed if tried again later: 429, 5xx, timeouts, a held lease."""


class PermanentError(ResponderError):
    """Will fail again the same way: a bad request, a missing policy."""


class BadEvent(PermanentError):
    """The event itself is malformed or unsupported; acknowledge it."""


class PolicyNotFound(PermanentError):
    """The configured security policy does not exist."""


class PermissionDenied(PermanentError):
    """The caller lacks a permission on the policy."""


class PriorityTaken(PermanentError):
    """addRule at a priority that another rule holds (or has reserved)."""


class RuleNotFound(PermanentError):
    """patchRule/removeRule/getRule at a priority that holds no rule."""


class QuotaExceeded(PermanentError):
    """The project's security policy rule quota is used up."""


class FingerprintMismatch(TransientError):
    """A compare-and-set (patch or setLabels) lost against another writer."""


class OutcomeUnknown(TransientError):
    """A mutation may or may not have been committed (timeout, reset, 5xx)."""


class OutOfTime(TransientError):
    """No time is left to start an operation: the band lease or the
    delivery's time budget would end before the operation could. Never
    retried in place: the caller records what remains and raises, so that
    Pub/Sub redelivers the message and the redelivery continues."""


class Unresolvable(TransientError):
    """The API endpoint's host name does not resolve (a wrong endpoint, or
    DNS down). Transient, so Pub/Sub redelivers, but not retried in process:
    waiting out the retry deadline would only delay a clear answer."""


class TierRequired(PermanentError):
    """The project is on the Cloud Armor Standard tier: address groups (and
    rules that reference them) need Cloud Armor Enterprise."""


class GroupNotFound(PermanentError):
    """The address group does not exist."""


class GroupFull(PermanentError):
    """The items would exceed the address group's capacity (fixed at creation):
    create a larger group instead."""


class GroupInUse(PermanentError):
    """The address group is referenced by a security-policy rule, so it cannot
    be deleted: remove the rule first."""


class ItemConflict(PermanentError):
    """addItems of an item already in the group, or removeItems of one that is
    not: the caller's diff was not exact (the local API refuses both; Google
    does not document what it does)."""
