"""Bans that follow traffic: a stream of band-denied requests through the
real on_log_sink function against the local API (issue 15, second
benchmark)."""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import POLICY, PROJECT, ROOT, Report, Table, create_policy, request_counts, start_api
from bench.logsink import attacker, lb_entry

BANNED = 50
DENIES = 10_000
BAND = (20000, 20999)
WAF = ["owasp-crs-v030301-id942100-sqli"]


def _entry(remote: str, when: datetime, *, priority: int | None) -> dict[str, Any]:
    """A request log entry of the bench policy: a WAF hit (priority None,
    the operators' rule 3000) or a deny by band rule ``priority``."""
    entry = lb_entry(remote, when, waf=True)
    entry["resource"]["labels"]["project_id"] = PROJECT
    entry["logName"] = f"projects/{PROJECT}/logs/requests"
    if priority is not None:
        enforced = entry["jsonPayload"]["enforcedSecurityPolicy"]
        del enforced["preconfiguredExprIds"]
        enforced["priority"] = priority
    return entry


def stream(report: Report) -> None:
    import eventarc
    import functions_framework

    from handlers import follow
    from responder import audit

    audit.setup_logging(stream=open(os.devnull, "w"))  # noqa: SIM115 - 10,000 audit records: not on the console
    server = start_api(quota=200)
    try:
        create_policy(server)
        env = {"RESPONDER_PROJECT": PROJECT, "RESPONDER_POLICY": POLICY, "RESPONDER_API_ENDPOINT": server.endpoint,
               "RESPONDER_BAND_START": str(BAND[0]), "RESPONDER_BAND_END": str(BAND[1]),
               "RESPONDER_RETRY_DEADLINE": "10s", "RESPONDER_CONFIG": str(ROOT / "config" / "responder.toml")}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            client = functions_framework.create_app("on_log_sink", str(ROOT / "main.py"), "cloudevent").test_client()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        follow._followed.clear()

        def publish(entry: dict[str, Any], mid: str, when: datetime) -> int:
            headers, body = eventarc.binary_request(json.dumps(entry).encode(), message_id=mid, publish_time=when)
            return int(client.post("/", headers=headers, data=body).status_code)

        now = datetime.now(tz=UTC)
        bucket = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
        # The bans: one WAF hit per address two hours ago (6h TTL: 4h left), one rule each as writers add them.
        banned_at = bucket - timedelta(hours=2)
        for i in range(BANNED):
            assert 200 == publish(_entry(attacker(i), banned_at, priority=None), f"ban-{i}", banned_at)
        band = [r for r in server.policy(PROJECT, POLICY)["rules"] if BAND[0] <= r["priority"] <= BAND[1]]
        rule_of = {r["match"]["config"]["srcIpRanges"][0].split("/")[0]: r["priority"] for r in band}
        affected = len({rule_of[attacker(i)] for i in range(BANNED)})
        expiry_before = {r["priority"]: r["description"].split()[1] for r in band}

        # The stream: 10,000 denies by those rules, random order, all within one expiry bucket.
        rng = random.Random(15)
        start = min(bucket + timedelta(seconds=30), now)
        since = len(server.requests)
        statuses: dict[int, int] = {}
        t = time.perf_counter()
        for i in range(DENIES):
            address = attacker(rng.randrange(BANNED))
            when = start + timedelta(milliseconds=3 * i)
            status = publish(_entry(address, when, priority=rule_of[address]), f"deny-{i}", when)
            statuses[status] = statuses.get(status, 0) + 1
        took = time.perf_counter() - t
        counts = request_counts(server, since)
        after = [r for r in server.policy(PROJECT, POLICY)["rules"] if BAND[0] <= r["priority"] <= BAND[1]]
        covered = {r["match"]["config"]["srcIpRanges"][0].split("/")[0]: r["description"].split()[1]
                   for r in after if r["priority"] not in expiry_before}
    finally:
        server.stop()
    writes = counts.get("addRule", 0) + counts.get("patchRule", 0) + counts.get("removeRule", 0)
    reads = counts.get("get", 0) + counts.get("getRule", 0)
    extended = sum(1 for i in range(BANNED) if attacker(i) in covered)
    ok_writes, ok_reads = writes <= affected, reads <= 2
    table = report.table(Table(
        "Bans that follow traffic: 10,000 band-denied requests from 50 banned addresses within one expiry bucket "
        "through on_log_sink (functions-framework test client, local API, one instance)",
        ["denies", "HTTP 200", "banned addresses", "rules holding them", "entries extended", "band writes",
         "policy reads", "seconds", "msg/s", "budget (writes <= 1 per affected rule, reads <= 2 per instance)"]))
    table.add(DENIES, statuses.get(200, 0), BANNED, affected, extended, writes, reads, f"{took:.1f}",
              f"{DENIES / took:,.0f}",
              f"{'met' if ok_writes and ok_reads else 'MISSED'} (<= {affected}, <= 2)")
    report.budget("follow: at most 1 write per affected rule", ok_writes, f"{writes} writes, {affected} rules")
    report.budget("follow: at most 2 reads per instance", ok_reads, f"{reads} reads")
    table.notes += [
        "Set-up: each of the 50 addresses banned by its own WAF hit published 2 h earlier (6 h TTL), so each sits "
        "in its own rule, as event writers add them. Stream: each message one request log entry whose "
        "enforcedSecurityPolicy names the bench policy, the address's band rule and DENY; addresses drawn at "
        "random (seeded); timestamps 3 ms apart inside one 15-minute bucket. Reads and writes counted from the "
        "local API's request log from the first deny on; the instance's read cache (policy.read_cache 5 s, with "
        "its own adds) may still hold the read of the ban phase, so the stream can make 0 reads.",
        "Why it is bounded: a deny asks for the expiry (request time rounded down to the bucket) + TTL, the same "
        "for every deny of a bucket, so the first extends and the rest plan nothing; each instance remembers the "
        "(address, bucket) it followed, so repeats are answered without a read. A naive follower (read + write "
        "per deny) would make 10,000 reads and up to 10,000 writes.",
        "Entries packed together (e.g. 10 addresses of one feed in one rule) are extended one write per hit "
        "entry, since each deny is its own message: the bound is one write per hit entry per bucket.",
    ]
    report.show(table)


def run(report: Report) -> None:
    stream(report)
