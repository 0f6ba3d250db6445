"""Domain types shared by the handlers and the band core.

Everything here is a frozen dataclass with no I/O. Times are timezone-aware
UTC datetimes; durations are ``timedelta``.

Vocabulary:

* a **sighting** is what a parser found in an event: an address or range
  that some source reports, with the timing and metadata the source gave.
  Parsers (``handlers/formats``) produce sightings and know nothing of the
  configuration.
* an **intent** is a decision: block, unblock or extend one network, from
  one source, until an expiry. Handlers turn sightings into intents using
  the configuration; the guards may refuse intents.
* an **entry** is one blocked network as the band records it: the planner
  decodes entries from band rules and encodes them back.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Severity(enum.IntEnum):
    """How bad a source says a sighting is; orders eviction (low goes first)."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def code(self) -> str:
        """One letter, as written in a rule description."""
        return self.name[0].lower()

    @classmethod
    def from_code(cls, code: str) -> Severity:
        for member in cls:
            if member.code == code:
                return member
        raise ValueError(f"unknown severity code {code!r}")

    @classmethod
    def parse(cls, text: str) -> Severity:
        """Accepts a name in any case (``high``, ``HIGH``)."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(m.name.lower() for m in cls)
            raise ValueError(f"unknown severity {text!r} (one of {names})") from None


class Verb(enum.Enum):
    BLOCK = "block"
    UNBLOCK = "unblock"
    EXTEND = "extend"


@dataclass(frozen=True)
class Sighting:
    """One address or range reported by an event, before any configuration.

    ``value`` is the raw text as the source gave it (an address, a CIDR, an
    address with a port); the handler normalises and validates it.
    ``expiry``/``ttl`` are what the source asked for, if anything.
    ``revoked`` means the source withdraws an earlier report.
    """

    value: str
    ttl: timedelta | None = None
    expiry: datetime | None = None
    confidence: int | None = None
    severity: Severity | None = None
    reason: str = ""
    revoked: bool = False


@dataclass(frozen=True)
class ItemError:
    """One bad item inside an otherwise readable event."""

    item: str
    error: str


@dataclass(frozen=True)
class ParseResult:
    """What a parser read from one event: good sightings, bad items, and how
    many well-formed items it skipped on purpose (not an IP indicator, not
    marked for detection, ...)."""

    sightings: tuple[Sighting, ...] = ()
    errors: tuple[ItemError, ...] = ()
    skipped: int = 0
    # Free-form facts about the event worth auditing (format detected, ...).
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Escalation:
    """How a block from an escalating source grows for repeat offenders.

    ``seen`` is the sighting's time (the Pub/Sub publish time), ``ttl`` the
    TTL its block asks for before escalation, ``factor`` (> 1) what each
    strike multiplies it by, and ``cap`` the longest TTL it may reach (the
    kind's ``max_ttl``). The planner counts the strikes, from the band.

    ``strikes``, when set, replays a record instead (a restore from the
    audit trail): the entry gets that many strikes and ``seen``'s bucket,
    no strike is counted and the expiry is not escalated."""

    seen: datetime
    ttl: timedelta
    factor: float
    cap: timedelta
    strikes: int | None = None


@dataclass(frozen=True)
class Intent:
    """A decision about one network.

    ``expiry`` None with ``permanent`` True means no expiry (manual only).
    For UNBLOCK, expiry/severity/action are ignored. ``source`` is a short
    source id (``manual``, a feed name, a detector name). ``escalation``, on
    blocks from a source kind with ``escalate`` on, lets the planner lengthen
    the block of a repeat offender (see ``responder.planner``).
    """

    verb: Verb
    network: Network
    source: str
    expiry: datetime | None = None
    permanent: bool = False
    severity: Severity = Severity.MEDIUM
    action: str = "deny(403)"
    preview: bool = False
    reason: str = ""
    escalation: Escalation | None = None


def minus(net: Network, parts: Iterable[Network]) -> list[Network]:
    """``net`` without the addresses of ``parts`` (subnets of it)."""
    rest: list[Network] = [net]
    for part in parts:
        kept: list[Network] = []
        for r in rest:
            if r == part:
                continue
            if part.version == r.version and part.subnet_of(r):  # type: ignore[arg-type]
                kept.extend(r.address_exclude(part))  # type: ignore[arg-type]
            else:
                kept.append(r)
        rest = kept
    return rest
