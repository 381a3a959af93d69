"""The report as deterministic JSON and as one self-contained HTML page (inline CSS, inline SVG, no scripts).

Both are printed from the same dict (`TrailAggregator.report`), so the
figures a regulator reads in the page are exactly those a machine reads in
the JSON. The JSON has sorted keys and no generation timestamp: the same
files give the same bytes.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any, Final

from evidence import __version__
from evidence.trail.svg import Point, Series, time_chart

_CSS: Final = """
:root { --fg:#1b1f24; --muted:#57606a; --line:#d0d7de; --ok:#1a7f37; --bad:#cf222e; --warn:#9a6700; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 0;
       background: #f6f8fa; }
main { max-width: 1040px; margin: 0 auto; padding: 24px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid
var(--line); padding-bottom: 4px; } h3 { font-size: 14px; margin: 16px 0 6px; }
.muted { color: var(--muted); }
.banner { padding: 12px 16px; border-radius: 6px; margin: 16px 0; font-weight: 600; }
.banner.ok { background: #dafbe1; color: var(--ok); } .banner.bad { background: #ffebe9; color: var(--bad); }
.banner.none { background: #fff8c5; color: var(--warn); }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 10px; }
.figure { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.figure .value { font-size: 22px; font-weight: 700; } .figure .label { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 12px; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font: 12px ui-monospace, monospace; word-break: break-all; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
svg.chart { width: 100%; height: auto; display: block; margin: 8px 0 16px; }
svg .title { font-size: 14px; font-weight: 600; fill: var(--fg); } svg .tick, svg .legend { font-size: 11px;
fill: var(--muted); } svg .grid { stroke: #eaeef2; } svg .axis { stroke: var(--muted); }
svg .incident { fill: #ffebe9; } svg .empty { fill: var(--muted); }
.incident-card { border: 1px solid #ffcecb; border-left: 4px solid var(--bad); border-radius: 6px;
                 padding: 8px 14px; margin: 10px 0; }
footer { margin-top: 32px; font-size: 12px; color: var(--muted); }
"""

DECISION_SERIES: Final = (
    Series("allowed", "allowed", "#2da44e"),
    Series("denied", "denied", "#cf222e"),
    Series("no_policy", "no policy", "#8c959f"),
)
LATENCY_SERIES: Final = (
    Series("p50", "p50", "#0969da"),
    Series("p90", "p90", "#bf8700"),
    Series("p99", "p99", "#cf222e"),
)


def render_json(report: dict[str, Any]) -> bytes:
    return json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False).encode() + b"\n"


def _n(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value else "0"
    return escape(str(value))


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f'<th class="n">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(headers))  # fmt: skip
    if not rows:
        return f'<table><tr>{head}</tr><tr><td colspan="{len(headers)}" class="muted">none</td></tr></table>'
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _top_table(title: str, top: dict[str, Any], key_label: str) -> str:
    rows = [[f"<code>{escape(row['key'])}</code>", _n(row["count"])] for row in top["rows"]]
    if top["other"]:
        rows.append([f'<span class="muted">other ({_n(top["distinct_kept"] - len(top["rows"]))}+ keys)</span>',
                     _n(top["other"])])  # fmt: skip
    note = "" if top["exact"] else ' <span class="muted">(estimated: Misra-Gries, counts are lower bounds)</span>'
    return f"<h3>{escape(title)}{note}</h3>" + _table([key_label, "count"], rows, {1})


def _shares_table(title: str, rows: list[dict[str, Any]], key_label: str) -> str:
    body = [[escape(row["key"]), _n(row["count"]), _pct(row["share"])] for row in rows]
    return f"<h3>{escape(title)}</h3>" + _table([key_label, "count", "share"], body, {1, 2})


def _figure(value: str, label: str) -> str:
    return f'<div class="figure"><div class="value">{value}</div><div class="label">{escape(label)}</div></div>'


def _chain_banner(audit: dict[str, Any]) -> str:
    chains = audit["chains"]
    if not chains:
        return '<div class="banner none">Audit hash chain: not checked (no audit files given)</div>'
    parts = []
    for chain in chains:
        if chain["ok"]:
            parts.append(f'<div class="banner ok" id="chain">Audit hash chain intact: {escape(chain["summary"])[4:]}'
                         "</div>")  # fmt: skip
        else:
            broken = chain["broken"]
            parts.append(
                '<div class="banner bad" id="chain">Audit hash chain BROKEN. First broken link: '
                f"<code>{escape(broken['file'])}:{broken['line']}</code>"
                + (f" (seq {broken['seq']})" if broken["seq"] else "")
                + f": {escape(broken['problem'])}. {_n(chain['records'])} records verified before it.</div>"
            )
    return "".join(parts)


def _incident(incident: dict[str, Any]) -> str:
    dora = incident["dora"]
    clients = dora["clients_financial_counterparts_and_transactions"]
    duration = dora["duration_and_service_downtime"]
    geo = dora["geographical_spread"]
    services = dora["critical_services_affected"]

    def names(items: list[str]) -> str:
        return ", ".join(f"<code>{escape(item)}</code>" for item in items) or '<span class="muted">none</span>'

    approx = "" if clients["clients_affected_exact"] else " (estimated)"
    rows = [
        ["Clients, financial counterparts and transactions (Art. 1)",
         f"{_n(clients['clients_affected'])} client addresses affected{approx} of {_n(clients['clients_in_report'])}"
         f" ({_pct(clients['clients_affected_share'])}); {_n(clients['transactions_affected'])} failed requests of"
         f" {_n(clients['transactions_in_incident'])} ({_pct(clients['transactions_affected_share'])});"
         " financial counterparts: <em>to assess</em>"],
        ["Duration and service downtime (Art. 3)",
         f"{_n(duration['duration_seconds'])} s, first failure {escape(str(duration['first_failure']))}, last"
         f" {escape(str(duration['last_failure']))}; service downtime: <em>to assess</em>"],
        ["Geographical spread (Art. 4)",
         (f"client countries: {names(geo['client_countries'])}" if geo["known"]
          else "client countries not known from the spans")
         + f"; edge locations: {names(geo['edge_locations'])}"],
        ["Critical services affected (Art. 6)",
         f"routes {names(services['routes'])}; hosts {names(services['hosts'])}; upstreams"
         f" {names(services['upstreams'])}; critical or important functions: <em>to assess</em>"],
        ["Reputational impact (Art. 2), data losses (Art. 5), economic impact (Art. 7)", "<em>to assess</em>"],
    ]  # fmt: skip
    statuses = ", ".join(f"{escape(code)}: {_n(n)}" for code, n in incident["failed_status_codes"].items())
    return (
        f'<div class="incident-card"><h3>Incident candidate {incident["id"]}: {escape(incident["window_start"])}'
        f" .. {escape(incident['window_end'])}</h3>"
        f"<p>{_n(incident['responses_5xx'])} of {_n(incident['requests'])} requests failed"
        f" ({_pct(incident['rate_5xx'])} 5xx; peak window {_pct(incident['peak_window_rate_5xx'])}),"
        f" {_n(incident['error_spans'])} of {_n(incident['spans'])} spans with status ERROR"
        f" ({_pct(incident['error_rate'])}); thresholds crossed: {escape(', '.join(incident['thresholds_crossed']))};"
        f" failed status codes: {statuses}.</p>"
        f'<p class="muted">Classification inputs for {escape(dora["regulation"])}, {escape(dora["for"])}:'
        " prefilled from the spans, to be completed and classified by the entity.</p>"
        + _table(["criterion", "prefilled"], rows)
        + "</div>"
    )


def render_html(report: dict[str, Any]) -> bytes:
    totals = report["totals"]
    rng = report["range"]
    latency = report["latency"]["overall"]
    cache = report["cache"]
    audit = report["audit"]
    incidents = report["incidents"]
    series = report["series"]
    width_ns = int(report["settings"]["window_seconds"] * 1e9)

    decisions = [Point(p["start_unix_nano"], {"allowed": p["allowed"], "denied": p["denied"],
                                               "no_policy": p["no_policy"]}) for p in series]  # fmt: skip
    latencies = [
        Point(p["start_unix_nano"], {s.key: p["latency_ms"][s.key] for s in LATENCY_SERIES})
        for p in series
        if p["latency_ms"]["count"]
    ]
    highlights = []
    for incident in incidents:
        start = next(p["start_unix_nano"] for p in series if p["start"] == incident["window_start"])
        highlights.append((start, start + incident["windows"] * width_ns))

    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>edgeward audit-trail report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>edgeward audit-trail report</h1>",
        f'<p class="muted" id="range">{escape(str(rng["first"]))} .. {escape(str(rng["last"]))} UTC'
        f" ({_n(rng['seconds'])} s) from {_n(len(report['sources'].get('span_files', [])))} span files and"
        f" {_n(sum(len(t) for t in report['sources'].get('audit_trails', [])))} audit files</p>",
        _chain_banner(audit),
        '<div class="figures" id="figures">',
        _figure(_n(totals["requests"]), "requests (SERVER spans)"),
        _figure(_n(totals["spans"]), "spans"),
        _figure(_n(report["denials"]["total"]), "denied requests"),
        _figure(_pct(totals["rate_5xx"]), f"5xx rate ({_n(totals['responses_5xx'])} responses)"),
        _figure(_pct(totals["error_rate"]), f"error rate ({_n(totals['error_spans'])} spans)"),
        _figure(_pct(cache["hit_ratio"]), f"cache hit ratio ({_n(cache['hit'])} of {_n(cache['lookups'])})"),
        _figure(f"{_n(latency['p50'])} ms", "latency p50"),
        _figure(f"{_n(latency['p99'])} ms", "latency p99"),
        _figure(
            _n(totals["distinct_clients"]["count"]),
            "distinct client addresses" + ("" if totals["distinct_clients"]["exact"] else " (estimated)"),
        ),
        _figure(_n(len(incidents)), "incident candidates"),
        _figure(_n(audit["records"]), "audit records"),
        _figure(_n(audit["reload_events_total"]), "certificate and config events"),
        "</div>",
        "<h2>Over time</h2>",
        time_chart("Latency percentiles", latencies, LATENCY_SERIES, width_ns, unit="ms", highlights=highlights),
        time_chart(
            "Access decisions",
            decisions,
            DECISION_SERIES,
            width_ns,
            stacked=True,
            unit="requests",
            highlights=highlights,
        ),
    ]

    out.append("<h2>Incident candidates</h2>")
    s = report["settings"]
    out.append(
        f'<p class="muted">Windows of {_n(s["window_seconds"])} s with at least {_n(s["min_requests"])} requests'
        f" where 5xx responses reach {_pct(s['max_5xx_rate'])} of requests or spans with status ERROR reach"
        f" {_pct(s['max_error_rate'])} of spans; adjacent windows form one candidate.</p>"
    )
    out.extend(_incident(incident) for incident in incidents)
    if not incidents:
        out.append("<p>None.</p>")

    out.append("<h2>Access decisions</h2>")
    rows = []
    for item in report["decisions"]["by_outcome"]:
        reasons = "; ".join(f"{escape(r['reason'])}: {_n(r['count'])}" for r in item["reasons"])
        rows.append([f"<code>{escape(item['outcome'])}</code>", _n(item["count"]), _pct(item["share"]), reasons])
    out.append(_table(["outcome", "count", "share", "reasons"], rows, {1, 2}))
    denials = report["denials"]
    out.append('<div class="cols"><div>')
    out.append(_top_table("Denials by identity", denials["by_identity"], "identity"))
    out.append(_top_table("Denials by client address", denials["by_client_address"], "address"))
    out.append("</div><div>")
    out.append(_top_table("Denials by route (or refusing rule)", denials["by_route"], "route"))
    identities = report["identities"]
    out.append(_top_table(f"Top identities ({_n(identities['distinct']['count'])} distinct)", identities["top"],
                          "identity"))  # fmt: skip
    out.append("</div></div>")

    out.append("<h2>Traffic</h2>")
    out.append('<div class="cols"><div>')
    out.append(_shares_table("Protocols", report["protocols"]["families"], "protocol"))
    out.append(_shares_table("Protocol versions", report["protocols"]["versions"], "network.protocol.version"))
    out.append(_shares_table("TLS versions", report["tls_versions"], "TLS"))
    out.append("</div><div>")
    out.append(_shares_table("Status classes", report["status"]["classes"], "class"))
    out.append(_shares_table("Cache", cache["by_status"], "edge.cache.status"))
    out.append(f'<p class="muted">{escape(cache["definition"])}; served from cache:'
               f" {_pct(cache['served_from_cache_ratio'])}</p>")  # fmt: skip
    out.append(_top_table("Routes", report["routes"], "route"))
    out.append("</div></div>")
    lat = [[k, _n(latency[k])] for k in ("min", "p50", "p90", "p99", "max", "mean")]
    out.append("<h3>Latency, all requests (ms)</h3>" + _table(["statistic", "ms"], lat, {1}))
    upstreams = report["upstreams"]
    out.append(_top_table("Upstream attempts (CLIENT spans)", upstreams["attempts"], "upstream"))
    failures = [[escape(f["upstream"]), escape(f["error_type"]), _n(f["count"])] for f in upstreams["failures"]]
    out.append("<h3>Failed upstream attempts</h3>" + _table(["upstream", "error.type", "count"], failures, {2}))

    out.append("<h2>Audit trail</h2>")
    out.append(
        f"<p>{_n(audit['records'])} records; {_n(audit['denials'])} denials recorded (the spans show"
        f" {_n(audit['denials_in_spans'])}); {_n(audit['dropped'])} events reported lost by the server.</p>"
    )
    events = [
        [escape(e["time"]), f"<code>{escape(e['event'])}</code>", escape(e["severity"]), escape(e["message"])]
        for e in audit["reload_events"]
    ]
    more = audit["reload_events_total"] - len(audit["reload_events"])
    out.append("<h3>Certificate, trust, key and config events</h3>"
               + _table(["time (UTC)", "event", "severity", "message"], events)
               + (f'<p class="muted">and {_n(more)} more (see the JSON)</p>' if more > 0 else ""))  # fmt: skip
    out.append(_shares_table("Audit events by name", audit["by_event"], "event.name"))
    chain_rows = []
    for chain in audit["chains"]:
        files = "<br>".join(f"<code>{escape(f)}</code>" for f in chain["files"])
        state = "intact" if chain["ok"] else f"broken: {escape(str(chain['summary'])[8:])}"
        chain_rows.append([files, _n(chain["records"]), f"{chain['first_seq']}..{chain['last_seq']}", state,
                           f"<code>{escape(chain['last_sha256'])}</code>"])  # fmt: skip
    out.append("<h3>Hash chain verification</h3>"
               + _table(["files", "records", "seq", "result", "last sha256"], chain_rows, {1}))  # fmt: skip

    out.append(
        f"<footer>evidence trail {escape(__version__)}; format {escape(report['format'])}. Counts are exact unless"
        " marked estimated: per-key tables keep at most"
        f" {_n(s['counter_capacity'])} keys (Misra-Gries) and distinct counts use K-minimum-values sketches."
        " Latency percentiles come from log-linear histograms (within 1.6%). Times are the spans' own"
        " (UTC). Span files: "
        + ", ".join(f"<code>{escape(p)}</code>" for p in report["sources"].get("span_files", []))
        + "</footer></main></body></html>"
    )
    return "\n".join(out).encode() + b"\n"
