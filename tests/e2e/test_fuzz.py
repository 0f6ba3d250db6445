"""Fuzzing the five entry points with malformed and adversarial messages.

Messages come from hypothesis strategies (derandomized: a fixed seed, no
example database), delivered through the functions-framework test client
as binary CloudEvents, some with a broken Pub/Sub envelope. For every one:
the response is 200 (acknowledged; no cloud failure is injected, so never
500), and exactly one error record ("rejected" or "refused") is written for
it. After all of them the policy is unchanged.

``FUZZ_EXAMPLES`` sets the messages per entry point (default 10,000, about
35 s per entry point here; a smaller number for a quick run).
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import eventarc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import PROJECT, Harness
from tests.e2e.support import ids_entry, incident, lb_entry, scc_notification

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10000"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck))
ERRORS = ("rejected", "refused")

# Never blockable, whatever the source: special-purpose, too broad, or not an address.
ADVERSARIAL = [
    "0.0.0.0/0", "::/0", "0.0.0.0", "10.0.0.0/8", "10.1.2.3", "172.16.5.4", "192.168.1.1:8080", "127.0.0.1",
    "169.254.169.254", "100.64.0.1", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fe80::1%eth0",
    "fc00::1", "ff02::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "[fe80::1]:443", "2001:db8::1", "192.0.2.1",
    "198.51.100.7:443", "203.0.113.0/24", "35.191.0.1", "130.211.0.0/22", "1.0.0.0/1", "8000::/1",
    "999.1.1.1", "1.2.3", "1.2.3.4.5", "::ffff:0:0/96", "", " ", "localhost", "0x7f.0.0.1", "-1.0.0.0",
    "1.2.3.4/33", "2a0e::/129", "10.0.0.0/8\n1.2.3.4", "\u0661.\u0662.\u0663.\u0664",
]
adversarial = st.one_of(st.sampled_from(ADVERSARIAL), st.text(max_size=50).filter(lambda s: not _blockable(s)))


def _blockable(text: str) -> bool:
    """True for text that could name a blockable address: kept out of the
    random strings (this fuzz must not change the band)."""
    import ipaddress

    from responder.guards import SPECIAL_RANGES, parse_network

    try:
        net = parse_network(text.split("%")[0].strip("[]").split("]:")[0])
    except ValueError:
        return any(c.isdigit() for c in text) and (":" in text or "." in text) and len(text) < 60
    return not any(net.version == s.version and net.overlaps(s) for s in SPECIAL_RANGES) or net.prefixlen == 0 or \
        isinstance(net, ipaddress.IPv4Network) and net.prefixlen < 8


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)
wrong = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=3),
                  st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def _deep(depth: int, kind: str) -> bytes:
    return (("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)).encode()


@st.composite
def junk(draw: Any) -> bytes:
    """Payloads no handler can read."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.binary(max_size=300))
    if choice == 1:
        return json.dumps(draw(json_values)).encode()
    if choice == 2:
        return b'{"x": "' + b"A" * draw(st.integers(100_000, 1_500_000)) + b'"}'
    if choice == 3:
        return _deep(draw(st.integers(900, 100_000)), draw(st.sampled_from(["list", "dict"])))
    if choice == 4:
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    return b"\xff\xfe" + draw(st.binary(max_size=50))


@st.composite
def broken_envelope(draw: Any) -> dict[str, Any]:
    """A Pub/Sub envelope with one broken part."""
    good = base64.b64encode(b'{"action": "cleanup"}').decode()
    part = draw(st.integers(0, 6))
    message: Any = {"data": good, "attributes": {}, "messageId": "m", "publishTime": "2025-01-01T00:00:00Z"}
    if part == 0:
        return draw(st.sampled_from([{}, {"subscription": "s"}, {"message": None}, {"msg": message}]))
    if part == 1:
        return {"message": draw(wrong.filter(lambda v: not isinstance(v, dict)))}
    if part == 2:
        message["data"] = draw(wrong.filter(lambda v: v not in (None, 0, False, [], {})))
    elif part == 3:
        message["data"] = draw(st.sampled_from(["!!!!", "abc", "a===", "YWJj\n", "@@@@", "ab cd", "=" * 8]))
    elif part == 4:
        message["attributes"] = draw(st.one_of(st.lists(st.text(), min_size=1, max_size=2),
                                               st.dictionaries(st.text(max_size=5), wrong.filter(lambda v: v is not None),
                                                               min_size=1, max_size=2)))
    elif part == 5:
        message["publishTime"] = draw(st.sampled_from(["yesterday", "2025-13-01T00:00:00Z", "2025-01-01T00:00:00", "1"]))
    else:
        message["messageId"] = draw(st.sampled_from([5, ["x"], {"a": 1}]))
    return {"message": message, "subscription": "projects/p/subscriptions/s"}


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    cur = doc
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[k]
    cur[keys[-1]] = value
    return doc


@st.composite
def manual_messages(draw: Any) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(junk()), {}
    command: dict[str, Any] = {"action": "block", "ranges": [draw(adversarial)], "actor": "fuzz@example.com",
                               "ttl": "1h", "force": draw(st.booleans())}
    if kind == 2:  # a field of the wrong type
        key = draw(st.sampled_from(["action", "ranges", "actor", "reason", "ttl", "expiry", "permanent", "severity",
                                    "force", "preview"]))
        value = draw(wrong)
        if key in ("expiry", "permanent"):
            command.pop("ttl")
        command[key] = value
    return json.dumps(command).encode(), {}


@st.composite
def feed_messages(draw: Any) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(junk()), draw(st.sampled_from([{}, {"format": "json"}, {"format": "stix"}, {"format": "misp"},
                                                   {"feed": "BAD NAME"}, {"feed": "manual"}]))
    if kind == 1:
        fmt = draw(st.sampled_from(["json", "plain", "netset", "spamhaus", "tor"]))
        address = draw(adversarial.filter(lambda s: "\n" not in s and "#" not in s and ";" not in s and s.strip()))
        if fmt == "json":
            return json.dumps({"feed": "fuzz", "indicators": [{"range": address}]}).encode(), {}
        line = f"{address} ; SBL1\n; EOF" if fmt == "spamhaus" else address
        return line.encode(), {"feed": "fuzz", "format": fmt}
    doc = {"feed": "fuzz", "indicators": draw(wrong.filter(lambda v: not isinstance(v, list) or v))}
    return json.dumps(doc).encode(), {}


@st.composite
def log_messages(draw: Any) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(junk()), {}
    address = draw(adversarial)
    entry = draw(st.sampled_from([
        lb_entry(address, outcome="DENY", exprs=["sqli"], status=403),
        lb_entry(address, url="https://x/api/kernels"),
        ids_entry(address, "10.0.0.1"),
        # a deny by one of our band rules (bans that follow traffic)
        lb_entry(address, outcome="DENY", status=403, priority=draw(st.integers(20000, 20999)), project=PROJECT),
    ]))
    if kind == 2:
        path = draw(st.sampled_from(["resource", "resource.type", "logName", "httpRequest.remoteIp",
                                     "jsonPayload.enforcedSecurityPolicy.priority", "timestamp"]))
        if path.startswith("jsonPayload.enforced") and "enforcedSecurityPolicy" not in entry.get("jsonPayload", {}):
            path = "timestamp"
        if path == "httpRequest.remoteIp" and "httpRequest" not in entry:
            path = "jsonPayload.source_ip_address"
        if path.endswith(".priority"):  # any integer names some rule: only a non-integer is malformed
            _set(entry, path, draw(wrong.filter(lambda v: isinstance(v, bool) or not isinstance(v, (int, str, list)))))
        else:
            _set(entry, path, draw(wrong.filter(lambda v: not isinstance(v, (str, list)))))
    return json.dumps(entry).encode(), {}


@st.composite
def alert_messages(draw: Any) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(junk()), {}
    address = draw(adversarial)
    if draw(st.booleans()):
        key = draw(st.sampled_from(["client_ip", "remote_ip", "source_ip"]))
        doc = incident(address, key=key)
        if kind == 2:
            path = draw(st.sampled_from(["incident", "incident.state", f"incident.metric.labels.{key}"]))
            doc = _set(doc, path, draw(wrong.filter(lambda v: not isinstance(v, (str, dict)) and v is not None)))
    else:
        doc = scc_notification([address])
        if kind == 2:
            doc = _set(doc, "finding", draw(wrong.filter(lambda v: not isinstance(v, dict))))
    return json.dumps(doc).encode(), {}


def _deliver(h: Harness, target: str, payload: bytes | None, attributes: dict[str, str], envelope: Any, n: int) -> None:
    message_id = f"fuzz-{target}-{n}"
    if envelope is None:
        headers, body = eventarc.binary_request(payload or b"", attributes=attributes, message_id=message_id,
                                                publish_time=h.clock())
    else:
        headers, body = eventarc.binary_request(b"", message_id=message_id, publish_time=h.clock())
        body = json.dumps(envelope).encode()
    before = len(h.audit)
    status = h.clients[target].post("/", headers=headers, data=body).status_code
    got = h.audit[before:]
    assert 200 == status, (target, payload[:200] if payload else envelope)
    assert 1 == len(got) and got[0]["change"] in ERRORS, (target, (payload or b"")[:300], envelope, got)


def _run(h: Harness, target: str, strategy: Any, broken_share: int = 10) -> None:
    before = h.policy()["rules"]
    counter = iter(range(10**9))
    began = time.monotonic()

    @FUZZ
    @given(st.one_of(strategy.map(lambda m: (m, None)), broken_envelope().map(lambda e: (None, e))) if broken_share else
           broken_envelope().map(lambda e: (None, e)))
    def check(case: tuple[Any, Any]) -> None:
        message, envelope = case
        payload, attributes = message if message is not None else (None, {})
        _deliver(h, target, payload, attributes, envelope, next(counter))

    check()
    took = time.monotonic() - began
    print(f"\nfuzz {target}: {next(counter)} messages in {took:.1f}s")
    assert before == h.policy()["rules"]
    assert [] == h.mutations()


def test_fuzz_on_manual(functions: Harness) -> None:
    _run(functions, "on_manual", manual_messages())


def test_fuzz_on_threat_feed(functions: Harness) -> None:
    _run(functions, "on_threat_feed", feed_messages())


def test_fuzz_on_log_sink(functions: Harness) -> None:
    _run(functions, "on_log_sink", log_messages())


def test_fuzz_on_alert(functions: Harness) -> None:
    _run(functions, "on_alert", alert_messages())


def test_fuzz_on_cleanup(functions: Harness) -> None:
    # Cleanup accepts any payload by design (handlers/cleanup.py): only a
    # broken envelope is an error for it.
    _run(functions, "on_cleanup", None, broken_share=0)


@pytest.mark.parametrize("depth", [5000, 200_000])
def test_deeply_nested_json_is_rejected_not_crashed(functions: Harness, depth: int) -> None:
    for target in ("on_log_sink", "on_alert"):  # on_manual, on_threat_feed: see their fuzz tests
        before = len(functions.audit)
        assert 200 == functions.publish(target, _deep(depth, "list"), attributes={"feed": "fuzz"} if "feed" in target else None)
        assert ["rejected"] == [r["change"] for r in functions.audit[before:]], target
