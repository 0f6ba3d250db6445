"""Feeds in address groups vs band rules: the same generated four-feed set
(DROP-, FireHOL-level1-, ET-compromised- and Tor-exit-sized, about 8k
ranges) through both stores, and a 100k-address list through the group
store: rules used, calls for a first load, for a snapshot with 1% of its
items changed and for an unchanged one, and the diff's CPU. The real
services and adapters against the local API (Enterprise tier, op_delay 0);
calls counted by the adapters and cross-checked against the API's log."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.calls import BIG_BAND, BIG_QUOTA, _armor, _quiet_audit, _responder
from bench.common import (
    DROP_MIX,
    FIREHOL_MIX,
    PROJECT,
    Report,
    Table,
    collapse,
    create_policy,
    feed_list,
    request_counts,
    settings,
)

#: The four feeds: (name, entries, prefix mix, seed). ET compromised IPs and
#: Tor exits are single addresses.
FEEDS = (("drop", 1500, DROP_MIX, 11), ("firehol-l1", 4500, FIREHOL_MIX, 12),
         ("et-compromised", 900, {32: 1.0}, 13), ("tor-exits", 1200, {32: 1.0}, 14))
BIG = 100_000
#: Items per call of the 100k list's first load only (see the table's notes).
LOAD_BATCH = 10_000
CHANGED = 0.01
GROUP_MUTATIONS = ("create", "add_items", "remove_items", "delete")
RULE_MUTATIONS = ("add", "patch", "remove")


def _server() -> Any:
    import localapi.server
    from localapi import LocalCloudArmor

    localapi.server._Handler.disable_nagle_algorithm = True  # see bench.common.start_api
    return LocalCloudArmor(op_delay=0.0, quota=BIG_QUOTA, wait_timeout=30.0, seed=7, project=PROJECT,
                           tier="enterprise", max_items_per_call=LOAD_BATCH).start()


def _feed(name: str) -> Any:
    from config.settings import FeedSettings

    return FeedSettings(name=name, snapshot=True, store="address-group", max_drop_share=0.5)


def _changed(nets: list[Any], seed: int) -> list[Any]:
    """The list with 1% of its entries changed: half of them dropped, as many new ones added."""
    k = max(2, round(len(nets) * CHANGED))
    extra = feed_list(len(nets) + k // 2, {32: 1.0}, seed=seed + 1000, adjacent=0.0)
    have = set(nets)
    new = [n for n in extra if n not in have][: k // 2]
    return nets[k // 2:] + new


class GroupRun:
    """The group store with counting adapters on one local API."""

    def __init__(self, server: Any, batch: int | None = None) -> None:
        from dataclasses import replace

        from responder.groups import AddressGroups
        from responder.groupstore import GroupStore

        self.server = server
        self.s = settings(server.endpoint)
        if batch is not None:
            self.s = replace(self.s, groups=replace(self.s.groups, max_items_per_call=batch))
        self.armor = _armor(self.s)
        self.ns = AddressGroups(self.s.policy, self.s.groups, retry_deadline=self.s.policy.retry_deadline)
        self.now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
        self.store = GroupStore(self.s, self.armor, lambda: self.ns, _quiet_audit(), clock=lambda: self.now,
                                holder="bench")

    def sync(self, feed: str, nets: list[Any], mid: str) -> dict[str, int]:
        from responder.planner import round_up
        from responder.service import EventRef

        self.armor.reset_calls()
        self.ns.reset_calls()
        since = len(self.server.requests)
        expiry = round_up(self.now + timedelta(days=1), self.s.band.expiry_granularity)
        self.store.sync(_feed(feed), nets, expiry=expiry, action="deny(403)", preview=False,
                        event=EventRef(mid, feed))
        a, g = self.armor.calls(), self.ns.calls()
        out = {"group": sum(g[k] for k in GROUP_MUTATIONS), "rule": sum(a[k] for k in RULE_MUTATIONS),
               "lease": a["set_labels"], "reads": a["get"] + g["get"] + g["list"]}
        seen = request_counts(self.server, since)
        assert seen.get("addItems", 0) + seen.get("removeItems", 0) + seen.get("create", 0) + seen.get(
            "delete", 0) == out["group"], (seen, g)
        return out

    def group_rules(self) -> int:
        policy = self.server.policy(PROJECT, "ml-edge")
        return sum(1 for r in policy["rules"] if self.s.band.start <= r["priority"] <= self.s.band.end)


def _band_run(feeds: list[tuple[str, list[Any], list[Any]]]) -> tuple[int, int, int, int, int]:
    """Band-only: the same snapshots through the Responder (bench-only large
    band, so the whole set is written); (rules, first-load mutating,
    1%-changed mutating, unchanged mutating, aggregated ranges)."""
    from responder.model import Intent, Verb
    from responder.service import EventRef

    server = _server()
    try:
        create_policy(server)
        s = settings(server.endpoint, band=BIG_BAND, max_rules=BIG_BAND[1] - BIG_BAND[0] + 1)
        armor = _armor(s)
        now = datetime.now(tz=UTC)
        responder = _responder(s, armor, clock=lambda: now)

        def apply(nets: list[Any], before: list[Any] | None, name: str, mid: str) -> int:
            expiry = now + timedelta(days=1)
            intents = [Intent(Verb.BLOCK, n, name, expiry=expiry) for n in nets]
            if before is not None:
                keep = set(collapse(nets))
                intents += [Intent(Verb.UNBLOCK, n, name) for n in collapse(before) if n not in keep]
            armor.reset_calls()
            responder.apply(intents, EventRef(mid, "feed"))
            c = armor.calls()
            return sum(c[k] for k in RULE_MUTATIONS)

        first = sum(apply(nets, None, name, f"{name}-1") for name, nets, _ in feeds)
        policy = server.policy(PROJECT, "ml-edge")
        rules = sum(1 for r in policy["rules"] if s.band.start <= r["priority"] <= s.band.end)
        changed = sum(apply(new, nets, name, f"{name}-2") for name, nets, new in feeds)
        same = sum(apply(new, new, name, f"{name}-3") for name, _, new in feeds)
        agg = sum(len(collapse(nets)) for _, nets, _ in feeds)
        return rules, first, changed, same, agg
    finally:
        server.stop()


def compare(report: Report) -> None:
    table = report.table(Table(
        "Address groups vs band rules: four generated feeds (DROP, FireHOL level1, ET, Tor sized)",
        ["store", "entries", "after aggregation", "band rules used", "first load: mutating calls",
         "1% changed: mutating calls", "unchanged: mutating calls", "lease calls (setLabels)", "budget"]))
    feeds = []
    for name, n, mix, seed in FEEDS:
        nets = feed_list(n, mix, seed=seed, adjacent=0.15)
        feeds.append((name, nets, _changed(nets, seed)))
    entries = sum(len(nets) for _, nets, _ in feeds)
    rules, first, changed, same, agg = _band_run(feeds)
    table.add("band rules", entries, agg, rules, first, changed, same, "-", "-")

    server = _server()
    try:
        create_policy(server)
        run = GroupRun(server)
        batch = run.s.groups.max_items_per_call
        loads = [run.sync(name, nets, f"{name}-1") for name, nets, _ in feeds]
        used = run.group_rules()
        run.now += timedelta(hours=1)  # the next pull: a later expiry
        diffs = [run.sync(name, new, f"{name}-2") for name, _, new in feeds]
        sames = [run.sync(name, new, f"{name}-2") for name, _, new in feeds]
        budget = 0
        for _, nets, new in feeds:
            old, fresh = set(collapse(nets)), set(collapse(new))
            budget += math.ceil(len(old ^ fresh) / batch) + 1
        mut_changed = sum(d["group"] + d["rule"] for d in diffs)
        mut_same = sum(d["group"] + d["rule"] + d["lease"] for d in sames)
        first_g = sum(d["group"] + d["rule"] for d in loads)
        lease = sum(d["lease"] for d in loads + diffs)
        ok_rules = used <= 8
        ok_changed = mut_changed <= budget
        ok_same = mut_same == 0
        table.add("address groups", entries, agg, used, first_g, mut_changed, mut_same, lease,
                  f"rules {'met' if ok_rules else 'MISSED'} (<= 8); 1% {'met' if ok_changed else 'MISSED'} "
                  f"(<= {budget}); unchanged {'met' if ok_same else 'MISSED'} (0)")
    finally:
        server.stop()
    report.budget("groups: four feeds in at most 8 band rules", ok_rules, f"{used} rules (band-only: {rules})")
    report.budget("groups: 1% changed in ceil(k / batch) + 1 calls per feed", ok_changed,
                  f"{mut_changed} calls (limit {budget}, batch {batch})")
    report.budget("groups: unchanged snapshot writes nothing", ok_same, f"{mut_same} mutating calls")
    table.notes += [
        "Lists generated with bench.common.feed_list (seeded; DROP and FireHOL level1 in their prefix-length mix, "
        "ET and Tor as single addresses; 15% adjacent entries); 1% changed: half of that share dropped, as many "
        "new addresses added, published an hour later (a group rule's expiry is refreshed only once less than "
        "half the TTL is left, so no rule is patched here; when it is, that is the '+ 1').",
        "Mutating calls: rule adds/patches/removes plus group creates, addItems, removeItems and deletes; the lease's "
        "two setLabels per changing snapshot are counted apart. Band-only uses the bench-only large band "
        f"({BIG_BAND[0]}-{BIG_BAND[1]}) so that the whole set is written; the default band holds 150 rules.",
    ]
    report.show(table)


def big_list(report: Report) -> None:
    from responder.groupstore import items_by_version, plan_items
    from responder.planner import MAX_RANGES_PER_RULE

    table = report.table(Table(
        f"A {BIG:,}-address list in one address group",
        ["store", "items", "band rules", "first load: mutating calls", "1% changed: mutating calls",
         "unchanged: mutating calls", "diff CPU ms (median of 5)", "diff + parse CPU ms", "budget"]))
    nets = feed_list(BIG, {32: 1.0}, seed=21, adjacent=0.0)
    new = _changed(nets, 21)
    items = items_by_version(nets)[4]
    band_rules = math.ceil(len(items) / MAX_RANGES_PER_RULE)
    table.add("band rules (planned, not issued)", len(items), band_rules, band_rules, "-", 0, "-", "-", "-")

    server = _server()
    try:
        create_policy(server)
        loader = GroupRun(server, batch=LOAD_BATCH)
        t0 = time.perf_counter()
        first = loader.sync("big", nets, "big-1")
        took = time.perf_counter() - t0
        run = GroupRun(server)
        run.now = loader.now
        batch = run.s.groups.max_items_per_call
        first_at_batch = 1 + math.ceil(len(items) / batch) + 1
        run.now += timedelta(hours=1)
        diff = run.sync("big", new, "big-2")
        same = run.sync("big", new, "big-2")
        used = run.group_rules()
        group = run.ns.get_group("car-big-v4-1")
        assert group is not None and group.items == tuple(items_by_version(new)[4])
    finally:
        server.stop()
    want = items_by_version(new)[4]
    k = len(set(items) ^ set(want))
    budget = math.ceil(k / batch) + 1
    diffs, parses = [], []
    for _ in range(5):
        t = time.process_time()
        plan_items(group, want, run.s.groups.capacity_for)
        diffs.append((time.process_time() - t) * 1000)
        t = time.process_time()
        plan_items(group, items_by_version(new)[4], run.s.groups.capacity_for)
        parses.append((time.process_time() - t) * 1000)
    cpu = sorted(diffs)[2]
    cpu_all = sorted(parses)[2]
    mut_changed = diff["group"] + diff["rule"]
    mut_same = same["group"] + same["rule"] + same["lease"]
    ok = (mut_changed <= budget, mut_same == 0, cpu <= 200)
    table.add("address group", len(items), used,
              f"{first_at_batch} at batch {batch} ({first['group'] + first['rule']} measured at {LOAD_BATCH:,})",
              mut_changed, mut_same,
              f"{cpu:.0f}", f"{cpu_all:.0f}",
              f"1% {'met' if ok[0] else 'MISSED'} (<= {budget}); unchanged {'met' if ok[1] else 'MISSED'}; "
              f"CPU {'met' if ok[2] else 'MISSED'} (<= 200 ms)")
    report.budget(f"groups: {BIG:,} list, 1% changed in ceil(k / batch) + 1 calls", ok[0],
                  f"{mut_changed} calls for k = {k} (limit {budget})")
    report.budget(f"groups: {BIG:,} list, unchanged snapshot writes nothing", ok[1], f"{mut_same} mutating calls")
    report.budget(f"groups: diff of the {BIG:,} list in at most 200 ms CPU", ok[2], f"median {cpu:.0f} ms")
    table.notes += [
        f"First load: one create, ceil(items / batch) addItems and one addRule. It is issued at {LOAD_BATCH:,} "
        f"items a call ({took:.1f} s against the local API): every addItems answer carries the whole group, so at "
        f"{batch} a call the load moves about 200 x 50k items through the local API and the client (minutes here; "
        "in Google's API the same holds, which is worth knowing before loading 100k items). The 1% and unchanged "
        f"snapshots run at the default batch ({batch}). Band rules for the same list are planned by count "
        f"(10 ranges a rule), not issued: {band_rules:,} rules is far past any quota.",
        "Diff CPU: plan_items (the exact diff of the group as read against the wanted items), process time; "
        "'diff + parse' adds aggregating and normalising the 100k networks (items_by_version), which a delivery "
        "also pays (the feed's parsing and guards are not included).",
    ]
    report.show(table)


def run(report: Report) -> None:
    compare(report)
    big_list(report)
