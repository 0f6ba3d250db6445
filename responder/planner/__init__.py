"""The band planner: current band + intents + now -> rule operations.

Pure: no I/O, no clock, no environment, no logging. Everything it needs is
an argument, so the property tests can drive it with any state.

The model
---------
The band's state is a set of *entries*, one per blocked network, each with
its metadata (expiry, severity, sources) and the rule fields it needs
(action, preview). Entries with identical metadata form a *group*; a group's
networks are aggregated (``ipaddress.collapse_addresses``) and packed at most
10 to a rule, and the group's metadata is encoded in each of those rules'
descriptions (``responder.codec``). Expiries are rounded up to
``band.expiry_granularity`` so that sightings close in time share a group.

Repeat offenders
----------------
A block from a source kind with ``escalate`` on carries an ``Escalation``
(its sighting time, base TTL, factor, cap). The planner counts *strikes*
against the entry the band already holds for the network (its own entry,
else what its supernets' entries record): a sighting whose publish-time
bucket (``seen`` rounded down to ``expiry_granularity``) is later than the
entry's recorded bucket is one more strike, and its block lasts
``ttl * factor ** strikes`` from ``seen``, at most ``cap`` (never shorter
than the entry has). A sighting that finds no recorded bucket (a new
network, another source's block, a rule older than escalation) records its
own with 0 strikes; one in the same or an earlier bucket (the same message
redelivered) adds no strike and asks only for its base expiry, so replaying
intents changes nothing, and sightings within one bucket give the same band
in any order. Permanent entries never strike. Strikes and bucket merge by maximum, like
the expiry, and are stored in the description's ``n=`` field.

Two ways to plan
----------------
``plan_append`` is what event writers use: it only ever *adds* rules at free
priorities. A network whose entry changes (new, extended, another source) is
written again into a new rule carrying the merged metadata; the older rule
keeps blocking until the compactor drops its now-redundant copy. Adding
needs no lock: addRule at a taken priority fails, so concurrent writers
cannot overwrite each other (see README, "Concurrency").

``plan_reconcile`` is what the lease holder uses (cleanup, unblocks, a full
band): it computes the whole desired band, drops expired entries, evicts by
the capacity policy if needed, repacks, and diffs against the current rules
for the fewest adds, patches and removes, ordered so that coverage is added
before it is taken away.

The package
-----------
Each module keeps one invariant, stated at its top; imports point down this
list, none back up:

- ``nogc``: the garbage collector paused while a plan is made (it makes no cycles).
- ``keys``: networks as ``(version, first address, prefix length)`` tuples;
- ``entry``: an entry and how two records of one network merge;
- ``index``: ``EntryIndex``, the one owner of entries by key and of the
  look-up of supernets, and its read-only view by network;
- ``intents``: what block, extend and unblock do to the entries (strikes,
  expiries rounded);
- ``packing``: groups aggregated and packed 10 ranges to a rule, eviction;
- ``priorities``: free band priorities handed out;
- ``band``: the band read from a policy, and the plan types;
- ``plans``: ``plan_append`` and ``plan_reconcile``.
"""

from responder.planner.band import Add, Band, BandRule, Op, Patch, Plan, Remove, read_band
from responder.planner.entry import MANUAL, Entry, Group
from responder.planner.index import EntryIndex, EntryView, covering, covers_of
from responder.planner.intents import apply_intents, escalated_ttl, round_down, round_up
from responder.planner.keys import Key
from responder.planner.packing import MAX_RANGES_PER_RULE, make_rule, pack
from responder.planner.plans import NEEDS_REMOVAL, plan_append, plan_reconcile, within_quota

__all__ = [
    "MANUAL",
    "MAX_RANGES_PER_RULE",
    "NEEDS_REMOVAL",
    "Add",
    "Band",
    "BandRule",
    "Entry",
    "EntryIndex",
    "EntryView",
    "Group",
    "Key",
    "Op",
    "Patch",
    "Plan",
    "Remove",
    "apply_intents",
    "covering",
    "covers_of",
    "escalated_ttl",
    "make_rule",
    "pack",
    "plan_append",
    "plan_reconcile",
    "within_quota",
    "read_band",
    "round_down",
    "round_up",
]
