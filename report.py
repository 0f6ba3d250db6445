"""The band page: one self-contained HTML file about the band (``python cli.py
report --html FILE``; ``./run.sh`` writes one to ``var/band-report.html``).

It shows the band now (each range, its expiry, sources, severity, and who
asked for it and why, from the audit trail), the band's utilisation over time
from the cleanup's ``usage`` records, the latest changes as a timeline, and
the refusals grouped by reason.

The page fetches nothing: the CSS and the one small script are inline, the
chart is inline SVG, and a Content-Security-Policy allows only those two
(by hash), so no injected markup could load or run anything. Every text that
comes from the policy or the trail (descriptions, reasons, actors, sources)
is HTML-escaped: some of it is chosen by whoever publishes to a topic.

It stays usable with thousands of ranges: the rows are plain HTML written
here, and the script filters them over text it reads once; nothing runs per
row on load beyond that.

Two steps, so that the data can be checked apart from its markup:
``page_data`` (band, trail and time in, a plain document out) and ``render``
(the document in, the HTML out). Like ``cli.py`` it sits above the core and
reads the band as the planner does.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config import settings as config
from responder import planner
from responder.model import Network
from responder.policy import PolicySnapshot

#: Records that put a range in the band: the latest one names who and why.
_CLAIMS = ("added", "extended")
#: Records the timeline leaves out: they change nothing (usage has its chart,
#: refusals their own table).
_NOT_CHANGES = ("usage", "unchanged", "refused")
TIMELINE_LIMIT = 60
_SEVERITIES = ("low", "medium", "high", "critical")


# --------------------------------------------------------------------------
# the data


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def relative(expiry: datetime | None, now: datetime) -> str:
    """An expiry as an operator reads it: 'in 40 min', 'in 5 h', 'in 3 d'."""
    if expiry is None:
        return "permanent"
    seconds = (expiry - now).total_seconds()
    if seconds <= 0:
        return "expired"
    if seconds < 3600:
        return f"in {max(1, round(seconds / 60))} min"
    if seconds < 48 * 3600:
        return f"in {round(seconds / 3600)} h"
    return f"in {round(seconds / 86400)} d"


def _nets(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def _claims(trail: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Range (as written) -> the latest record that added or extended it.
    Dry runs (``validate_only``) changed nothing and do not count."""
    latest: dict[str, Mapping[str, Any]] = {}
    for record in trail:
        if record.get("change") in _CLAIMS and record.get("outcome") != "validate_only":
            for net in _nets(record.get("ranges")):
                latest[net] = record
    return latest


def _claim_for(network: Network, claims: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record for ``network``: its own, else that of the nearest range
    around it (a range split by an unblock keeps its first request). One
    lookup per prefix length, so the page costs the same with any trail."""
    for prefix in range(network.prefixlen, -1, -1):
        found = claims.get(str(network.supernet(new_prefix=prefix)))
        if found is not None:
            return found
    return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _band_rows(snap: PolicySnapshot, settings: config.Settings, now: datetime,
               claims: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    band = planner.read_band(snap.rules, settings.band)
    holders: dict[Network, list[int]] = {}
    for rule in band.rules:
        if not rule.meta.expired(now):
            for net in rule.networks:
                holders.setdefault(net, []).append(rule.priority)
    rows = []
    for entry in sorted(band.entries(now).values(), key=lambda e: (e.network.version, e.network)):
        claim = _claim_for(entry.network, claims)
        rows.append({
            "range": str(entry.network),
            "action": entry.action,
            "state": "preview" if entry.preview else "enforced",
            "expiry": _iso(entry.meta.expiry),
            "expires": relative(entry.meta.expiry, now),
            "severity": entry.meta.severity.name.lower(),
            "sources": sorted(entry.meta.sources),
            "truncated": entry.meta.truncated,
            "strikes": entry.meta.strikes,
            "priorities": sorted(holders.get(entry.network, [])),
            "actor": _text(claim.get("actor")) if claim else "",
            "reason": _text(claim.get("reason")) if claim else "",
            "claimed": _text(claim.get("time")) if claim else "",
            "claimed_by": _text(claim.get("source")) if claim else "",
        })
    return rows


def _usage(trail: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    points = []
    for record in trail:
        if record.get("change") != "usage":
            continue
        moment = _parse_time(record.get("time"))
        rules, cap = record.get("band_rules"), record.get("max_rules")
        if moment is None or not isinstance(rules, (int, float)) or not isinstance(cap, (int, float)):
            continue
        ranges = record.get("ranges")
        points.append({"time": _iso(moment), "band_rules": int(rules), "max_rules": int(cap),
                       "ranges": int(ranges) if isinstance(ranges, (int, float)) else None})
    return sorted(points, key=lambda p: p["time"])


def _refusal_key(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(reason, what was refused) pairs of one ``refused`` record. A guard's
    reason starts with the range it refused ('10.1.0.0/16 overlaps the
    special-purpose range 10.0.0.0/8'); that range is taken out so that the
    same reason groups whatever range it was given for."""
    reason = record.get("reason")
    if isinstance(reason, str) and reason:
        ranges = _nets(record.get("ranges")) or [""]
        out = []
        for net in ranges:
            key = reason
            if net and key.startswith(net + " "):
                key = key[len(net) + 1:]
            out.append((key, net))
        return out
    errors = record.get("errors")
    if isinstance(errors, list) and errors:
        pairs = [(f"bad item: {_text(e.get('error'))}", _text(e.get("item")))
                 for e in errors if isinstance(e, Mapping)]
        total = record.get("error_count")
        if isinstance(total, (int, float)) and total > len(pairs):
            pairs += [("bad item (not itemised in the record)", "")] * (int(total) - len(pairs))
        return pairs
    return [(_text(record.get("message")) or "refused", "")]


def _refusals(trail: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for record in trail:
        if record.get("change") != "refused":
            continue
        for reason, what in _refusal_key(record):
            group = groups.setdefault(reason, {"reason": reason, "count": 0, "sources": set(), "last": "", "examples": []})
            group["count"] += 1
            if record.get("source"):
                group["sources"].add(_text(record.get("source")))
            group["last"] = max(group["last"], _text(record.get("time")))
            if what and what not in group["examples"] and len(group["examples"]) < 5:
                group["examples"].append(what)
    out = [{**g, "sources": sorted(g["sources"])} for g in groups.values()]
    return sorted(out, key=lambda g: (-g["count"], g["reason"]))


def _timeline(trail: Sequence[Mapping[str, Any]], limit: int) -> list[dict[str, Any]]:
    changes = [r for r in trail if r.get("change") not in _NOT_CHANGES and r.get("outcome") != "validate_only"]
    out = []
    for record in reversed(changes[-limit:]):
        nets = _nets(record.get("ranges"))
        out.append({
            "time": _text(record.get("time")), "change": _text(record.get("change")),
            "message": _text(record.get("message")), "ranges": nets[:8], "more": max(0, len(nets) - 8),
            "source": _text(record.get("source")), "actor": _text(record.get("actor")),
            "reason": _text(record.get("reason")),
        })
    return out


def page_data(
    snap: PolicySnapshot,
    settings: config.Settings,
    trail: Iterable[Mapping[str, Any]],
    now: datetime,
    *,
    trail_source: str = "file",
    trail_error: str | None = None,
    timeline: int = TIMELINE_LIMIT,
) -> dict[str, Any]:
    """Everything the page shows, as plain data (the trail as ``cli.py
    explain`` reads it, oldest first)."""
    records = [r for r in trail if isinstance(r, Mapping)]
    band = planner.read_band(snap.rules, settings.band)
    cap = settings.band.max_rules or settings.band.size
    rows = _band_rows(snap, settings, now, _claims(records))
    return {
        "generated": _iso(now),
        "policy": {"project": settings.policy.project, "name": settings.policy.name,
                   "region": settings.policy.region or None},
        "band": {"start": settings.band.start, "end": settings.band.end, "max_rules": cap,
                 "rules": len(band.rules), "foreign": len(band.foreign), "ranges": len(rows),
                 "preview": sum(r["state"] == "preview" for r in rows),
                 "expired_rules": sum(r.meta.expired(now) for r in band.rules)},
        "trail": {"source": trail_source, "error": trail_error, "records": len(records)},
        "rows": rows,
        "usage": _usage(records),
        "timeline": _timeline(records, timeline),
        "refusals": _refusals(records),
    }


# --------------------------------------------------------------------------
# the markup


def _e(value: Any) -> str:
    return html.escape(_text(value), quote=True)


def _short(value: Any, limit: int = 90) -> str:
    """Escaped text, cut to ``limit`` characters (the whole in its title)."""
    text = _text(value)
    if len(text) <= limit:
        return _e(text)
    return f'<span title="{_e(text)}">{_e(text[: limit - 1])}&hellip;</span>'


def _when(text: str) -> str:
    """A record's time as 'YYYY-MM-DD HH:MM:SS' (UTC)."""
    moment = _parse_time(text)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


_CSS = """
:root{--fg:#1c2430;--muted:#5d6b7e;--line:#dde3ea;--bg:#f4f6f9;--card:#fff;--accent:#2563eb;--warn:#b45309;--bad:#b91c1c}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#14213d;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:20px;font-weight:600}
header p{margin:0;color:#c7d2e3}
main{max-width:1320px;margin:0 auto;padding:20px 28px 40px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin-bottom:18px}
h2{font-size:16px;margin:0 0 10px;font-weight:600}
.note{color:var(--muted);font-size:13px;margin:0 0 10px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px;margin-bottom:18px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px}
.card b{display:block;font-size:22px;font-weight:600}
.card span{color:var(--muted);font-size:12px}
.card.warn b{color:var(--warn)}
.card.bad b{color:var(--bad)}
.tools{display:flex;gap:12px;align-items:center;margin-bottom:10px}
#filter{flex:0 1 420px;padding:7px 10px;border:1px solid #b8c3d1;border-radius:6px;font:inherit}
#filter:focus{outline:2px solid var(--accent);border-color:var(--accent)}
#shown{color:var(--muted)}
.scroll{max-height:600px;overflow:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid var(--line);vertical-align:top}
thead th{position:sticky;top:0;background:#eef2f7;font-weight:600;font-size:12px;color:#334155;white-space:nowrap;z-index:1}
thead th[data-sort]{cursor:pointer}
thead th[data-sort]:hover{color:var(--accent)}
tbody tr:nth-child(even){background:#fafbfd}
tbody tr:hover{background:#eef4ff}
td.net{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:nowrap}
td.x{white-space:nowrap}
td.x small,td small{display:block;color:var(--muted);font-size:12px}
.sev{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.sev-low{background:#e5e7eb;color:#374151}
.sev-medium{background:#fef3c7;color:#92400e}
.sev-high{background:#fed7aa;color:#9a3412}
.sev-critical{background:#fecaca;color:#991b1b}
.tag{display:inline-block;white-space:nowrap;padding:0 6px;margin:1px 2px 1px 0;border-radius:4px;background:#e8eef8;color:#1e3a8a;font-size:12px}
.pv{background:#f3e8ff;color:#6b21a8}
.empty{color:var(--muted);font-style:italic}
.grid2{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:18px}
@media (max-width:1000px){.grid2{grid-template-columns:1fr}}
.grid2 section{margin-bottom:0}
svg{display:block;width:100%;height:auto}
.legend{display:flex;gap:18px;font-size:13px;color:var(--muted);margin-bottom:6px}
.legend i{display:inline-block;width:18px;height:3px;vertical-align:middle;margin-right:6px;background:var(--accent)}
.legend i.cap{background:repeating-linear-gradient(90deg,var(--bad) 0 5px,transparent 5px 8px)}
ol.tl{list-style:none;margin:0;padding:0 0 0 4px;max-height:640px;overflow:auto}
ol.tl li{position:relative;margin-left:6px;padding:0 0 12px 16px;border-left:2px solid var(--line)}
ol.tl li::before{content:"";position:absolute;left:-8px;top:4px;width:10px;height:10px;border-radius:50%;background:#94a3b8;border:2px solid #fff}
ol.tl li.k-added::before{background:#dc2626}
ol.tl li.k-extended::before{background:#f59e0b}
ol.tl li.k-removed::before,ol.tl li.k-expired::before{background:#16a34a}
ol.tl li.k-evicted::before,ol.tl li.k-breaker::before,ol.tl li.k-dead-lettered::before{background:#7c3aed}
.tl time{color:var(--muted);font-size:12px;margin-right:6px}
.kind{font-weight:600;margin-right:6px}
.tl .nets{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;color:#334155;word-break:break-all}
.tl .who{color:var(--muted);font-size:12px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.eg{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all;min-width:120px}
#refusals td:first-child{min-width:180px}
""".strip()

# Filters the band table (every word must appear in the row), prefilled from
# '#q=...' or '?q=...'; sorts by a column on a click (or '#sort=expiry',
# '#sort=severity'). The row texts are read
# once; the filter runs at most once per frame.
_JS = """
(function () {
  "use strict";
  var input = document.getElementById("filter");
  var body = document.getElementById("rows");
  var shown = document.getElementById("shown");
  if (!input || !body) { return; }
  var rows = Array.prototype.slice.call(body.rows);
  var texts = rows.map(function (r) { return r.textContent.toLowerCase(); });
  var order = rows.slice();
  function apply() {
    var t0 = performance.now();
    var terms = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var n = 0;
    for (var i = 0; i < rows.length; i++) {
      var ok = true;
      for (var j = 0; j < terms.length; j++) {
        if (texts[i].indexOf(terms[j]) < 0) { ok = false; break; }
      }
      if (rows[i].hidden === ok) { rows[i].hidden = !ok; }
      if (ok) { n++; }
    }
    shown.textContent = terms.length ? n + " of " + rows.length + " ranges match" : rows.length + " ranges";
    body.setAttribute("data-shown", String(n));
    body.setAttribute("data-filter-ms", (performance.now() - t0).toFixed(1));
  }
  var pending = 0;
  input.addEventListener("input", function () {
    if (!pending) { pending = requestAnimationFrame(function () { pending = 0; apply(); }); }
  });
  var m = /[#&]q=([^&]*)/.exec(location.hash) || /[?&]q=([^&]*)/.exec(location.search);
  if (m) {
    try { input.value = decodeURIComponent(m[1].replace(/\\+/g, " ")); } catch (err) { input.value = m[1]; }
  }
  var keys = {expiry: function (r) { return Number(r.getAttribute("data-x")); },
              severity: function (r) { return -Number(r.getAttribute("data-s")); }};
  var current = "range";
  Array.prototype.forEach.call(document.querySelectorAll("th[data-sort]"), function (th) {
    th.addEventListener("click", function () {
      var name = th.getAttribute("data-sort");
      var key = keys[name];
      var idx = new Map(order.map(function (r, i) { return [r, i]; }));
      var values = new Map(rows.map(function (r) { return [r, name === "range" ? idx.get(r) : key(r)]; }));
      var sorted = rows.slice().sort(function (a, b) { return (values.get(a) - values.get(b)) || (idx.get(a) - idx.get(b)); });
      if (current === name) { sorted.reverse(); current = ""; } else { current = name; }
      var frag = document.createDocumentFragment();
      sorted.forEach(function (r) { frag.appendChild(r); });
      body.appendChild(frag);
    });
  });
  var by = /[#&]sort=(\\w+)/.exec(location.hash);
  if (by && keys.hasOwnProperty(by[1])) { document.querySelector('th[data-sort="' + by[1] + '"]').click(); }
  apply();
})();
""".strip()


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _header(data: Mapping[str, Any]) -> str:
    policy, band = data["policy"], data["band"]
    where = f"region {policy['region']}" if policy["region"] else "global"
    return (
        "<header><h1>Cloud Armor responder: the band</h1>"
        f"<p>policy <b>{_e(policy['name'])}</b> in project {_e(policy['project'])} ({_e(where)}) &middot; "
        f"band {band['start']}&ndash;{band['end']} &middot; "
        f"generated {_e(_when(data['generated']))} UTC (relative times count from then)</p></header>"
    )


def _cards(data: Mapping[str, Any]) -> str:
    band, trail = data["band"], data["trail"]
    share = band["rules"] / band["max_rules"] if band["max_rules"] else 0.0
    level = "bad" if share >= 0.9 else ("warn" if share >= 0.75 else "")
    cards = [
        (f"{band['ranges']:,}", "ranges blocked", ""),
        (f"{band['rules']} / {band['max_rules']}", "band rules of band.max_rules", level),
        (f"{share:.0%}", "utilisation", level),
        (str(band["preview"]), "ranges in preview", "warn" if band["preview"] else ""),
        (str(band["foreign"]), "foreign rules in the band", "bad" if band["foreign"] else ""),
        (f"{trail['records']:,}", f"audit records ({trail['source']})", "bad" if trail["error"] else ""),
    ]
    out = "".join(f'<div class="card {c}"><b>{_e(v)}</b><span>{_e(label)}</span></div>' for v, label, c in cards)
    note = ""
    if trail["error"]:
        note = f'<p class="note">The audit trail could not be read: {_e(trail["error"])}</p>'
    elif trail["source"] == "none":
        note = '<p class="note">No audit trail was read (set RESPONDER_AUDIT_FILE for a local one): who and why are unknown.</p>'
    return f'<div class="cards">{out}</div>{note}'


def _nice_step(rough: float) -> float:
    """A round axis step (1, 2 or 5 times a power of ten, at least 1) near ``rough``."""
    if rough <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(rough))
    return next(m * power for m in (1, 2, 5, 10) if rough <= m * power)


def _chart(points: Sequence[Mapping[str, Any]], width: int = 960, height: int = 250) -> str:
    if not points:
        return '<p class="empty">No usage records yet: the scheduled cleanup writes one each run.</p>'
    left, right, top, bottom = 52, 18, 14, 34
    times = [_parse_time(p["time"]) for p in points]
    stamps = [t.timestamp() if t else 0.0 for t in times]
    t0, t1 = min(stamps), max(stamps)
    span = (t1 - t0) or 1.0
    highest = float(max(max(p["max_rules"] for p in points), max(p["band_rules"] for p in points), 1))
    step = _nice_step(highest / 4)
    ymax = step * math.ceil(highest / step)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(stamp: float) -> float:
        return left + (plot_w / 2 if t1 == t0 else (stamp - t0) / span * plot_w)

    def y(value: float) -> float:
        return top + plot_h - value / ymax * plot_h

    grid = []
    for i in range(round(ymax / step) + 1):
        value = step * i
        gy = y(value)
        grid.append(f'<line x1="{left}" x2="{width - right}" y1="{gy:.1f}" y2="{gy:.1f}" stroke="#e5e9f0"/>'
                    f'<text x="{left - 8}" y="{gy + 4:.1f}" text-anchor="end">{value:.0f}</text>')
    ticks = 1 if t1 == t0 else 5
    for i in range(ticks):
        stamp = t0 + span * i / max(1, ticks - 1) if ticks > 1 else t0
        label = datetime.fromtimestamp(stamp, tz=UTC).strftime("%H:%M:%S" if 0 < span < 900 else "%m-%d %H:%M")
        anchor = "start" if ticks > 1 and i == 0 else ("end" if ticks > 1 and i == ticks - 1 else "middle")
        grid.append(f'<text x="{x(stamp):.1f}" y="{height - 10}" text-anchor="{anchor}">{label}</text>')
    used = " ".join(f"{x(s):.1f},{y(p['band_rules']):.1f}" for s, p in zip(stamps, points, strict=True))
    cap = " ".join(f"{x(s):.1f},{y(p['max_rules']):.1f}" for s, p in zip(stamps, points, strict=True))
    if t1 == t0:  # one moment: draw its values across, so they read as levels
        used = f"{left},{y(points[-1]['band_rules']):.1f} {width - right},{y(points[-1]['band_rules']):.1f}"
        cap = f"{left},{y(points[-1]['max_rules']):.1f} {width - right},{y(points[-1]['max_rules']):.1f}"
    first_x, last_x = used.split(" ")[0].split(",")[0], used.split(" ")[-1].split(",")[0]
    area = f"M{first_x},{top + plot_h} L{used.replace(' ', ' L')} L{last_x},{top + plot_h} Z"
    dots = ""
    if len(points) <= 120:
        dots = "".join(
            f'<circle cx="{x(s):.1f}" cy="{y(p["band_rules"]):.1f}" r="3" fill="#2563eb">'
            f'<title>{_e(_when(p["time"]))} UTC: {p["band_rules"]} rules'
            f'{"" if p["ranges"] is None else ", " + str(p["ranges"]) + " ranges"} (max {p["max_rules"]})</title></circle>'
            for s, p in zip(stamps, points, strict=True)
        )
    return (
        '<div class="legend"><span><i></i>band rules</span><span><i class="cap"></i>band.max_rules</span>'
        f'<span>{len(points)} usage record(s)</span></div>'
        f'<svg id="usage" viewBox="0 0 {width} {height}" role="img" aria-label="band rules over time" '
        f'font-size="11" fill="#5d6b7e">{"".join(grid)}'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#c4ccd8"/>'
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#c4ccd8"/>'
        f'<path class="area" d="{area}" fill="#2563eb" fill-opacity="0.10" stroke="none"/>'
        f'<polyline class="cap" points="{cap}" fill="none" stroke="#b91c1c" stroke-width="1.5" stroke-dasharray="6 4"/>'
        f'<polyline class="used" points="{used}" fill="none" stroke="#2563eb" stroke-width="2" stroke-linejoin="round"/>'
        f"{dots}</svg>"
    )


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    rank = {s: i + 1 for i, s in enumerate(_SEVERITIES)}
    body = []
    for r in rows:
        moment = _parse_time(r["expiry"])
        sources = "".join(f'<span class="tag">{_e(s)}</span>' for s in r["sources"]) + ("&hellip;" if r["truncated"] else "")
        state = '<span class="tag pv">preview</span>' if r["state"] == "preview" else ""
        who = _short(r["actor"], 40) if r["actor"] else (f"<small>{_e(r['claimed_by'])}</small>" if r["claimed_by"] else "&ndash;")
        when = f"<small>{_e(_when(r['claimed']))}</small>" if r["claimed"] else ""
        body.append(
            f'<tr data-x="{int(moment.timestamp()) if moment else 9_999_999_999}" data-s="{rank.get(r["severity"], 0)}">'
            f'<td class="net">{_e(r["range"])}</td>'
            f'<td class="x">{_e(r["expires"])}<small>{_e(_when(r["expiry"])) + " UTC" if moment else "no expiry"}</small></td>'
            f'<td><span class="sev sev-{_e(r["severity"])}">{_e(r["severity"])}</span></td>'
            f"<td>{sources}</td>"
            f"<td>{_e(r['action'])} {state}</td>"
            f"<td>{who}{when}</td>"
            f"<td>{_short(r['reason']) if r['reason'] else '&ndash;'}</td>"
            f'<td class="num">{_e(", ".join(map(str, r["priorities"])))}</td></tr>'
        )
    if not rows:
        body.append('<tr><td colspan="8" class="empty">The band blocks nothing.</td></tr>')
    return (
        '<div class="tools"><input id="filter" type="search" placeholder="Filter: range, source, actor, reason, severity&hellip;" '
        'aria-label="filter the ranges" autocomplete="off"><span id="shown"></span></div>'
        '<div class="scroll"><table><thead><tr>'
        '<th data-sort="range" title="sort">range</th><th data-sort="expiry" title="sort">expires</th>'
        '<th data-sort="severity" title="sort">severity</th><th>sources</th><th>action</th>'
        "<th>who (latest add/extend)</th><th>why</th><th>rule</th></tr></thead>"
        f'<tbody id="rows">{"".join(body)}</tbody></table></div>'
    )


def _timeline_html(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return '<p class="empty">No changes in the audit trail.</p>'
    out = []
    for it in items:
        nets = ""
        if it["ranges"]:
            more = f" &hellip; (+{it['more']})" if it["more"] else ""
            nets = f'<div class="nets">{_e(", ".join(it["ranges"]))}{more}</div>'
        who = " &middot; ".join(
            f"{label} {_short(it[key], 60)}" for key, label in (("source", "source"), ("actor", "by"), ("reason", "why")) if it[key]
        )
        who = f'<div class="who">{who}</div>' if who else ""
        out.append(
            f'<li class="k-{_e(it["change"])}"><time>{_e(_when(it["time"]))}</time><span class="kind">{_e(it["change"])}</span>'
            f"{_short(it['message'], 140)}{nets}{who}</li>"
        )
    return f'<ol class="tl">{"".join(out)}</ol>'


def _refusals_html(groups: Sequence[Mapping[str, Any]]) -> str:
    if not groups:
        return '<p class="empty">Nothing was refused.</p>'
    rows = "".join(
        f'<tr><td>{_short(g["reason"], 120)}</td><td class="num">{g["count"]:,}</td>'
        f'<td>{"".join(f"<span class=tag>{_e(s)}</span>" for s in g["sources"]) or "&ndash;"}</td>'
        f'<td class="x">{_e(_when(g["last"]))}</td>'
        f'<td class="eg">{_short(", ".join(g["examples"]), 80) or "&ndash;"}</td></tr>'
        for g in groups
    )
    return ('<div class="scroll"><table id="refusals"><thead><tr><th>reason</th><th>count</th><th>sources</th>'
            f"<th>last (UTC)</th><th>e.g.</th></tr></thead><tbody>{rows}</tbody></table></div>")


def render(data: Mapping[str, Any]) -> str:
    """The page for a ``page_data`` document."""
    band = data["band"]
    expired = f" {band['expired_rules']} expired rule(s) wait for the cleanup." if band["expired_rules"] else ""
    csp = (f"default-src 'none'; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    title = f"Band {band['start']}-{band['end']} of {data['policy']['name']}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"{_header(data)}<main>{_cards(data)}"
        '<section><h2>Utilisation over time</h2>'
        '<p class="note">Band rules at each scheduled cleanup (its <code>usage</code> record), against band.max_rules; times in UTC.</p>'
        f"{_chart(data['usage'])}</section>"
        f'<section><h2>The band now: {band["ranges"]:,} range(s)</h2>'
        f'<p class="note">One row per blocked range, as the responder reads the band (a range in several rules: '
        f"latest expiry, union of sources). Who and why come from the latest audit record that added or extended it.{expired}</p>"
        f"{_table(data['rows'])}</section>"
        '<div class="grid2">'
        f'<section><h2>Latest changes</h2><p class="note">The last {len(data["timeline"])} change(s), newest first.</p>'
        f"{_timeline_html(data['timeline'])}</section>"
        f'<section><h2>Refusals by reason</h2><p class="note">What the guards and the planner would not apply, '
        f"over the trail read.</p>{_refusals_html(data['refusals'])}</section>"
        "</div></main>"
        f"<script>{_JS}</script></body></html>\n"
    )


def write(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Writes the page for ``data`` to ``path`` (its folder created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(data), encoding="utf-8")
    return target
