"""Alert notifications published to the alerts topic.

The kind is told by content: a JSON object with an ``incident`` key is a
Cloud Monitoring notification (a Pub/Sub notification channel, schema 1.1
or 1.2); one with a ``finding`` key is a Security Command Center
notification (``NotificationMessage``). Anything else is rejected.

Cloud Monitoring (source id ``monitoring``, settings ``[alerts.monitoring]``)
    Addresses are the values of ``label_keys`` found in the incident's
    metric, resource, system or user labels (so the alert policy's metric -
    typically a log-based metric - must carry the client address as a
    label). An open incident blocks each address for ``ttl`` (default
    ``sources.alert.default_ttl``) at ``severity``. A closed one does what
    ``on_close`` says: ``keep`` (nothing: the block runs out), ``lift``
    (withdraw the ``monitoring`` claim; other sources' claims on the same
    range stay), or ``shorten`` (withdraw the claim and block again until
    the close's publish time + ``close_ttl``; each source keeps its own
    claim, so a range that another source also claims stays blocked as long
    as that claim says). The console's test
    notification is recognised and changes nothing.

Security Command Center (source id ``scc``, settings ``[alerts.scc]``)
    Addresses come from the finding's indicator, connections (external side)
    and Event Threat Detection properties. An ACTIVE finding blocks them for
    ``ttl_by_severity[<finding severity>]`` (severity unspecified:
    ``sources.alert.severity``). ``categories``, when not empty, is an
    allow-list of finding categories. An INACTIVE finding lifts the ``scc``
    claim (``on_inactive = "lift"``) or changes nothing (``"keep"``). Muted
    findings are ignored unless ``muted = "apply"``.

Expiries count from the message's publish time, so a redelivered
notification changes nothing. Blocks of open incidents and active findings
escalate for repeat offenders (``sources.alert.escalate``, default 2: the TTL
doubles per later notification naming a still-blocked address, up to
``sources.alert.max_ttl``); the ``shorten`` block of a close never does. Allowlist and guards apply (IPv6 hosts widen
to ``sources.alert.widen_v6_to``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

from handlers import common
from handlers.envelope import Message
from handlers.formats import FormatError
from handlers.formats._common import load_json
from handlers.formats.alerts import parse_monitoring_incident, parse_scc_notification
from handlers.runtime import Runtime
from responder import guards
from responder.errors import BadEvent
from responder.model import Intent, ItemError, Network, ParseResult, Severity, Verb
from responder.service import Outcome

KIND = "alert"
MONITORING = "monitoring"
SCC = "scc"


def handle(message: Message, rt: Runtime) -> Outcome:
    if not message.data.strip():
        raise BadEvent("alert: the message has no data")
    try:
        with common.reading("alert"):
            doc = load_json(message.data)  # also refuses JSON nested too deeply
    except FormatError as exc:
        raise BadEvent(f"alert: {exc}") from None
    if isinstance(doc, Mapping) and "incident" in doc:
        return _monitoring(doc, message, rt)
    if isinstance(doc, Mapping) and "finding" in doc:
        return _scc(doc, message, rt)
    raise BadEvent("alert: neither a Cloud Monitoring notification ('incident') nor an SCC notification ('finding')")


def _unchanged(rt: Runtime, message: Message, source: str, why: str) -> Outcome:
    rt.audit.record("unchanged", why, message_id=message.message_id, source=source)
    return Outcome()


def _networks(result: ParseResult, what: str) -> tuple[list[tuple[Network, str]], list[ItemError]]:
    nets: list[tuple[Network, str]] = []
    errors = list(result.errors)
    for s in result.sightings:
        try:
            nets.append((guards.parse_network(s.value), s.reason))
        except ValueError as exc:
            errors.append(ItemError(s.value, str(exc)))
    if not nets and errors:
        raise BadEvent(f"{what}: no usable address ({errors[0].item}: {errors[0].error})")
    return nets, errors


def _monitoring(doc: Mapping, message: Message, rt: Runtime) -> Outcome:  # type: ignore[type-arg]
    conf = rt.settings.alerts.monitoring
    try:
        with common.reading("alert"):
            incident = parse_monitoring_incident(dict(doc), conf.label_keys)
    except FormatError as exc:
        raise BadEvent(f"alert: {exc}") from None
    if incident.is_test:
        return _unchanged(rt, message, MONITORING, "monitoring test notification ignored")
    what = f"monitoring incident {incident.incident_id or '(no id)'}"
    if incident.state not in ("open", "closed"):
        raise BadEvent(f"{what}: state {incident.state!r} is neither open nor closed")
    with common.reading(what):
        nets, errors = _networks(incident.result, what)
    if not nets:
        return _unchanged(rt, message, MONITORING,
                          f"{what}: no address in labels {', '.join(conf.label_keys)} (alerts.monitoring.label_keys)")
    source = rt.settings.source(KIND)
    severity = Severity.parse(conf.severity or source.severity)
    reason = incident.policy_name or incident.condition_name or "monitoring alert"
    intents: list[Intent] = []
    if incident.state == "open":
        expiry = common.expiry_for(message.publish_time, source, ttl=conf.ttl)
        escalation = common.escalation_for(message.publish_time, source, expiry)
        intents = [Intent(Verb.BLOCK, n, MONITORING, expiry=expiry, severity=severity, action=source.action, reason=reason,
                          escalation=escalation)
                   for n, _ in nets]
    elif conf.on_close == "keep":
        common.report_items(rt, message, KIND, errors)
        return _unchanged(rt, message, MONITORING, f"{what} closed: blocks kept until they expire (on_close = keep)")
    else:
        for n, _ in nets:
            # Withdraw the claim on the network as blocked (IPv6 widened).
            blocked = _widened(n, rt)
            intents.append(Intent(Verb.UNBLOCK, blocked, MONITORING, reason=f"{reason}: closed"))
            if conf.on_close == "shorten":
                intents.append(Intent(
                    Verb.BLOCK, n, MONITORING, expiry=common.expiry_for(message.publish_time, source, ttl=conf.close_ttl),
                    severity=severity, action=source.action, reason=f"{reason}: closed",
                ))
    common.report_items(rt, message, KIND, errors)
    return common.apply(rt, message, KIND, intents, source_id=MONITORING, reason=reason)


def _widened(net: Network, rt: Runtime) -> Network:
    widen = rt.settings.source(KIND).widen_v6_to
    if net.version == 6 and widen and net.prefixlen > widen:
        return net.supernet(new_prefix=widen)
    return net


def _scc(doc: Mapping, message: Message, rt: Runtime) -> Outcome:  # type: ignore[type-arg]
    conf = rt.settings.alerts.scc
    try:
        with common.reading("alert"):
            finding = parse_scc_notification(dict(doc))
    except FormatError as exc:
        raise BadEvent(f"alert: {exc}") from None
    what = f"scc finding {finding.category or '(no category)'}"
    if conf.categories and finding.category not in conf.categories:
        return _unchanged(rt, message, SCC, f"{what}: category not in alerts.scc.categories")
    if finding.mute == "MUTED" and conf.muted == "ignore":
        return _unchanged(rt, message, SCC, f"{what}: muted finding ignored (alerts.scc.muted)")
    state = finding.state or "ACTIVE"
    if state not in ("ACTIVE", "INACTIVE"):
        raise BadEvent(f"{what}: state {state!r} is neither ACTIVE nor INACTIVE")
    with common.reading(what):
        nets, errors = _networks(finding.result, what)
    if not nets:
        return _unchanged(rt, message, SCC, f"{what}: the finding names no address")
    source = rt.settings.source(KIND)
    severity = finding.severity or Severity.parse(source.severity)
    reason = finding.category or "scc finding"
    if state == "INACTIVE":
        if conf.on_inactive == "keep":
            common.report_items(rt, message, KIND, errors)
            return _unchanged(rt, message, SCC, f"{what} inactive: blocks kept until they expire (on_inactive = keep)")
        intents = [Intent(Verb.UNBLOCK, _widened(n, rt), SCC, reason=f"{reason}: inactive") for n, _ in nets]
    else:
        ttl: timedelta = conf.ttl_by_severity[severity.name.lower()]
        expiry = common.expiry_for(message.publish_time, source, ttl=ttl)
        escalation = common.escalation_for(message.publish_time, source, expiry)
        intents = [Intent(Verb.BLOCK, n, SCC, expiry=expiry, severity=severity, action=source.action, reason=reason,
                          escalation=escalation)
                   for n, _ in nets]
    common.report_items(rt, message, KIND, errors)
    return common.apply(rt, message, KIND, intents, source_id=SCC, reason=reason)


__all__: Sequence[str] = ("handle",)
