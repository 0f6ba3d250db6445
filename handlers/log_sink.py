"""Cloud Logging entries routed by a log sink to the log-sink topic.

Each message carries one ``LogEntry`` as JSON (a log sink publishes one
entry per message). The entry runs through the detectors of
``[detectors]`` (``config/detectors.toml``, read once per process and
validated at start); each match becomes a block from source kind ``log``
whose source id is the detector's (its name, or its ``[source_ids]`` entry),
with the detector's TTL (else ``sources.log.default_ttl``), severity and
action. Allowlist and guards apply (IPv6 hosts widen to ``widen_v6_to``).

Repeat offenders: with ``sources.log.escalate`` (default 2) a client sighted
again in a later message while its block is live gets a longer block (the
TTL times the factor per strike, at most ``sources.log.max_ttl``).

Timing: the expiry is computed from the message's **publish time**, like
every other handler, so that a redelivered message computes the same
expiry and changes nothing; the entry's own ``timestamp`` (its event time,
else the publish time) only places the hit in a threshold window.

Band denies: an entry recording that one of our own band rules denied a
request (our policy, a priority in our band, outcome DENY) is not run
through the detectors; it extends the entry covering the client, when the
entry's sources follow denies (``handlers/follow.py``).

Entries that match no detector, and hits below a threshold, change nothing:
one "unchanged" record, and the band (and the compute client) is never
touched. A message that is not a LogEntry, or whose only matches carry no
usable address, is rejected (one record, acknowledged).

Thresholds (``threshold = {hits = N, window = "5m"}``): the detector blocks
an address only once it has matched N entries from it within the window.
The counts live **in this process**: a sliding-window counter per
(detector, address) - IPv6 addresses counted per widened prefix - bounded
to ``detectors.max_tracked`` keys (least recently hit dropped first) and to
N hits per key. This is best-effort: Cloud Functions scales out to several
instances that each count their share, and a restart loses the counts, so
a threshold may fire later than N hits or not at all. A redelivered message
(same message id) is not counted twice. Where exact counting matters, use a
Cloud Monitoring log-based metric (labelled with the client address) and an
alert policy whose notification channel publishes to the alerts topic: the
incident arrives through ``on_alert``.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Hashable, Mapping
from datetime import datetime, timedelta
from typing import Any

from handlers import common, follow
from handlers import detectors as detector_config
from handlers.envelope import Message
from handlers.formats import FormatError
from handlers.formats._common import parse_time
from handlers.formats.logs import Detector, check_entry, evaluate_detailed
from handlers.runtime import Runtime
from responder import guards
from responder.errors import BadEvent
from responder.model import Intent, ItemError, Network, Verb
from responder.service import Outcome

KIND = "log"


class HitCounter:
    """Sliding-window hit counts per key, bounded to ``max_keys`` keys
    (least recently used dropped first) and to the last ``hits`` hits per
    key. Not shared between instances; see the module docstring."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._keys: OrderedDict[Hashable, deque[tuple[datetime, str]]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def hit(self, key: Hashable, when: datetime, hits: int, window: timedelta, message_id: str) -> int:
        """Records one hit; returns how many hits of ``key`` lie within
        ``window`` of the latest one (at most ``hits``)."""
        with self._lock:
            seen = self._keys.pop(key, None) or deque(maxlen=hits)
            self._keys[key] = seen
            if all(mid != message_id for _, mid in seen):
                seen.append((when, message_id))
                if len(seen) > 1 and seen[-2][0] > when:  # out of order: keep them sorted
                    ordered = sorted(seen)
                    seen.clear()
                    seen.extend(ordered)
            latest = seen[-1][0]
            while seen and seen[0][0] <= latest - window:
                seen.popleft()
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
            return len(seen)


_counters: weakref.WeakKeyDictionary[Runtime, HitCounter] = weakref.WeakKeyDictionary()
_counters_lock = threading.Lock()


def counter(rt: Runtime) -> HitCounter:
    """This process's threshold counter (one per runtime)."""
    with _counters_lock:
        found = _counters.get(rt)
        if found is None:
            found = _counters[rt] = HitCounter(rt.settings.detectors.max_tracked)
        return found


def _event_time(entry: Mapping[str, Any], message: Message) -> datetime:
    try:
        return parse_time(entry.get("timestamp"))
    except (ValueError, IndexError):
        return message.publish_time


def handle(message: Message, rt: Runtime) -> Outcome:
    loaded = detector_config.load(rt.settings.detectors)
    try:
        with common.reading("log entry"):
            entry = check_entry(message.data)
            deny = follow.recognise(entry, rt.settings, message.publish_time)
            evaluation = None if deny is not None else evaluate_detailed(entry, loaded.enabled)
    except FormatError as exc:
        raise BadEvent(f"log entry: {exc}") from None
    if deny is not None:
        # One of our own band rules denied it: the ban follows the traffic
        # (handlers/follow.py); never a detector's sighting.
        return follow.follow(deny, message, rt)
    assert evaluation is not None
    if not evaluation.matches:
        if evaluation.errors:
            e = evaluation.errors[0]
            raise BadEvent(f"log entry: detector {e.item} {e.error}")
        rt.audit.record("unchanged", "log entry matched no detector", message_id=message.message_id, source=KIND)
        return Outcome()
    by_name = {d.name: d for d in loaded.detectors}
    source = rt.settings.source(KIND)
    intents: list[Intent] = []
    errors: list[ItemError] = list(evaluation.errors)
    waiting: list[str] = []
    for name, sighting in evaluation.matches:
        det = by_name[name]
        try:
            network = guards.parse_network(sighting.value)
        except ValueError as exc:
            errors.append(ItemError(sighting.value, str(exc)))
            continue
        if det.threshold is not None:
            key_net = network
            if network.version == 6 and source.widen_v6_to and network.prefixlen > source.widen_v6_to:
                key_net = network.supernet(new_prefix=source.widen_v6_to)
            count = counter(rt).hit((name, key_net), _event_time(entry, message), det.threshold.hits,
                                    det.threshold.window, message.message_id)
            if count < det.threshold.hits:
                waiting.append(f"{name}: {key_net} {count}/{det.threshold.hits} in {det.threshold.window}")
                continue
        intents.append(_intent(det, loaded.source_ids[name], network, sighting.reason, message, rt))
    if not intents:
        if errors and not waiting:
            raise BadEvent(f"log entry: {errors[0].item}: {errors[0].error}")
        common.report_items(rt, message, KIND, errors)
        rt.audit.record("unchanged", f"below threshold: {'; '.join(waiting)}", message_id=message.message_id,
                        source=KIND, reason="threshold")
        return Outcome()
    common.report_items(rt, message, KIND, errors)
    return common.apply(rt, message, KIND, intents, source_id=intents[0].source, reason=intents[0].reason)


def _intent(det: Detector, source_id: str, network: Network, reason: str, message: Message, rt: Runtime) -> Intent:
    source = rt.settings.source(KIND)
    expiry = common.expiry_for(message.publish_time, source, ttl=det.ttl)
    return Intent(
        Verb.BLOCK, network, source_id,
        expiry=expiry,
        severity=det.severity,
        action=det.action,
        reason=reason,
        escalation=common.escalation_for(message.publish_time, source, expiry),
    )

