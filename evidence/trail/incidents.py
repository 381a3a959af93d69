"""Incident candidates: runs of windows whose failure rates cross a threshold, prefilled for a DORA report.

A window is a candidate when it holds at least `min_requests` requests and
either (a) the share of requests answered 5xx reaches `max_5xx_rate`, or
(b) the share of spans with status ERROR (SERVER spans answered 5xx, and
CLIENT spans: failed upstream tries, even those a retry hid) reaches
`max_error_rate`. Adjacent candidate windows are one incident.

Each incident carries the inputs of the classification criteria of
Commission Delegated Regulation (EU) 2024/1772 that spans can answer, ready
for the initial notification of a major ICT-related incident (Regulation
(EU) 2022/2554, DORA, Art. 19):

- clients, financial counterparts and transactions (Art. 1): distinct client
  addresses that got a failed response, as a count and as a share of all the
  client addresses in the report; failed requests as the transactions;
- duration and service downtime (Art. 3): from the first failed request's
  start to the last one's end, as the spans recorded them;
- geographical spread (Art. 4): client countries where a collector added
  `geo.country.iso_code`, and the edge locations (resource `cloud.region`,
  `cloud.availability_zone` or `host.name`) that served failures; marked not
  known otherwise;
- critical services affected (Art. 6): the routes, hosts and upstreams that
  failed. Whether they support critical or important functions is for the
  entity to say.

Reputational impact (Art. 2), data losses (Art. 5) and economic impact
(Art. 7) cannot be read from spans; they are listed as "to assess" so the
report shows what is still missing. The numbers are candidates for a
person's classification, never the classification itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from evidence.trail.sketch import CappedSet, Distinct
from evidence.trail.units import iso, ratio

if TYPE_CHECKING:
    from evidence.trail.aggregate import Settings, TrailAggregator, Window

TO_ASSESS: Final = "to assess"
REGULATION: Final = "Commission Delegated Regulation (EU) 2024/1772"
NOTIFICATION: Final = "initial notification, Regulation (EU) 2022/2554 (DORA) Art. 19"


def is_candidate(window: Window, settings: Settings) -> tuple[bool, list[str]]:
    """Whether `window` crosses a threshold, and which."""
    if window.requests < settings.min_requests:
        return False, []
    crossed = []
    if window.failed / window.requests >= settings.max_5xx_rate:
        crossed.append("5xx_rate")
    if window.spans and window.error_spans / window.spans >= settings.max_error_rate:
        crossed.append("error_rate")
    return bool(crossed), crossed


def find_incidents(
    windows: list[tuple[int, Window]], width: int, trail: TrailAggregator, settings: Settings
) -> list[dict[str, Any]]:
    """Incidents in time order, numbered from 1."""
    runs: list[list[tuple[int, Window, list[str]]]] = []
    for start, window in windows:
        candidate, crossed = is_candidate(window, settings)
        if not candidate:
            continue
        if runs and runs[-1][-1][0] + width == start:
            runs[-1].append((start, window, crossed))
        else:
            runs.append([(start, window, crossed)])
    return [_incident(number, run, width, trail, settings) for number, run in enumerate(runs, 1)]


def _incident(
    number: int, run: list[tuple[int, Window, list[str]]], width: int, trail: TrailAggregator, settings: Settings
) -> dict[str, Any]:
    clients = Distinct(settings.window_k)
    routes, hosts, upstreams, countries, locations = (CappedSet(settings.names_kept) for _ in range(5))
    requests = failed = spans = error_spans = 0
    first = last = 0
    statuses: dict[int, int] = {}
    crossed: set[str] = set()
    peak_5xx = peak_error = 0.0
    for _, window, why in run:
        crossed.update(why)
        requests += window.requests
        failed += window.failed
        spans += window.spans
        error_spans += window.error_spans
        peak_5xx = max(peak_5xx, window.failed / window.requests)
        peak_error = max(peak_error, window.error_spans / window.spans if window.spans else 0.0)
        clients.merge(window.failed_clients)
        routes.merge(window.failed_routes)
        hosts.merge(window.failed_hosts)
        upstreams.merge(window.failed_upstreams)
        countries.merge(window.failed_countries)
        locations.merge(window.failed_locations)
        for status, n in window.failed_status.items():
            statuses[status] = statuses.get(status, 0) + n
        if window.first_failure_ns and (not first or window.first_failure_ns < first):
            first = window.first_failure_ns
        last = max(last, window.last_failure_ns)
    start, end = run[0][0], run[-1][0] + width
    all_clients = trail.clients.estimate()
    affected = clients.estimate()
    return {
        "id": number,
        "window_start": iso(start),
        "window_end": iso(end),
        "windows": len(run),
        "thresholds_crossed": sorted(crossed),
        "requests": requests,
        "responses_5xx": failed,
        "rate_5xx": ratio(failed, requests),
        "peak_window_rate_5xx": round(peak_5xx, 6),
        "spans": spans,
        "error_spans": error_spans,
        "error_rate": ratio(error_spans, spans),
        "peak_window_error_rate": round(peak_error, 6),
        "failed_status_codes": {str(status or "(none)"): n for status, n in sorted(statuses.items())},
        "dora": {
            "regulation": REGULATION,
            "for": NOTIFICATION,
            "note": "inputs prefilled from the edge's spans; the classification is the entity's to make",
            "clients_financial_counterparts_and_transactions": {
                "article": "Art. 1",
                "clients_affected": affected,
                "clients_affected_exact": clients.exact,
                "clients_in_report": all_clients,
                "clients_affected_share": ratio(affected, all_clients),
                "transactions_affected": failed,
                "transactions_in_incident": requests,
                "transactions_affected_share": ratio(failed, requests),
                "financial_counterparts_affected": TO_ASSESS,
            },
            "duration_and_service_downtime": {
                "article": "Art. 3",
                "first_failure": iso(first) if first else None,
                "last_failure": iso(last) if last else None,
                "duration_seconds": round((last - first) / 1e9, 3) if first else 0.0,
                "service_downtime": TO_ASSESS,
            },
            "geographical_spread": {
                "article": "Art. 4",
                "known": bool(countries.items),
                "client_countries": sorted(countries.items),
                "client_countries_truncated": countries.overflow,
                "edge_locations": sorted(locations.items),
            },
            "critical_services_affected": {
                "article": "Art. 6",
                "routes": sorted(routes.items),
                "hosts": sorted(hosts.items),
                "upstreams": sorted(upstreams.items),
                "truncated": routes.overflow or hosts.overflow or upstreams.overflow,
                "critical_or_important_functions": TO_ASSESS,
            },
            "reputational_impact": {"article": "Art. 2", "value": TO_ASSESS},
            "data_losses": {"article": "Art. 5", "value": TO_ASSESS},
            "economic_impact": {"article": "Art. 7", "value": TO_ASSESS},
        },
    }
