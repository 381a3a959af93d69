"""The trail report's single pass: decoded spans and audit records in, a bounded summary out.

Sans-IO and clock-free: `TrailAggregator` is fed tuples (`otlp.ServerSpan`,
`otlp.ClientSpan`, `otlp.AuditRecord`) and chain reports, in any order, and
every time it knows comes from them. `report()` turns what it holds into
the report (a JSON-ready dict that `render_json` and `render_html` both
print), so the two outputs can never disagree.

Memory is bounded whatever the input (see `sketch` for each structure):

- totals and small fixed sets (status classes, protocol versions, cache
  statuses, decision outcomes) are plain counts, capped like everything else;
- keys a client chooses (identity, address, route, reason) go to Misra-Gries
  `TopCounter`s of `Settings.capacity` counters, exact below that many
  distinct keys and flagged with their error bound above;
- distinct clients and identities are K-minimum-values sketches;
- time is cut into windows of `Settings.window_ns`; when more than
  `Settings.max_windows` would be needed, the width doubles and neighbours
  merge (histograms and sketches merge exactly), so a month of spans holds as
  few windows as a minute. Each window keeps a log-linear latency histogram
  and the counts the charts and the incident detector need;
- audit events worth listing (certificate, trust, config and key reloads) are
  kept up to `Settings.events_kept`, the rest only counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from evidence.trail.incidents import find_incidents
from evidence.trail.otlp import AuditRecord, ClientSpan, ServerSpan
from evidence.trail.sketch import CappedSet, Distinct, Histogram, TopCounter, hash64
from evidence.trail.units import NS, iso, ms, ratio
from ingress.telemetry.auditchain import ChainReport

ANONYMOUS: Final = "(anonymous)"
NO_ROUTE: Final = "(no route)"
NO_POLICY: Final = "(no policy)"
UNKNOWN: Final = "(unknown)"
PROTOCOL_FAMILY: Final = {"1.0": "h1", "1.1": "h1", "2": "h2", "3": "h3"}
# Audit events an auditor wants listed one by one: what changed the edge's keys, trust or config.
RELOAD_PREFIXES: Final = ("edge.cert.", "edge.client_trust.", "edge.config.", "edge.jwks.")
DENIED_EVENT: Final = "edge.auth.denied"
DROPPED_EVENT: Final = "edge.audit.dropped"
# Resource attributes that say where an edge runs, most specific first.
LOCATION_KEYS: Final = ("cloud.region", "cloud.availability_zone", "host.name")
QUANTILES: Final = ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))


@dataclass(frozen=True)
class Settings:
    window_ns: int = 60 * NS  # the narrowest window; it doubles when the trail is long (max_windows)
    max_windows: int = 720
    max_5xx_rate: float = 0.05  # a window at or above this share of 5xx responses is an incident candidate
    max_error_rate: float = 0.10  # ... or at or above this share of spans with status ERROR (upstream tries too)
    min_requests: int = 20  # windows with fewer requests are never candidates: 1 of 2 failing is not an incident
    top: int = 10  # rows per "top" table
    capacity: int = 1000  # counters per TopCounter
    distinct_k: int = 4096  # KMV sketch size for the whole trail: exact up to this many clients
    window_k: int = 256  # KMV sketch size per window (failing clients)
    names_kept: int = 32  # routes, hosts, upstreams, countries listed per incident
    events_kept: int = 500
    shape_capacity: int = 65536  # (status, protocol, TLS, cache, outcome) combinations counted exactly

    def __post_init__(self) -> None:
        if self.window_ns < 1 or self.max_windows < 2 or self.top < 1 or self.capacity < 1:
            raise ValueError("window, max_windows, top and capacity must be positive (max_windows at least 2)")


class Window:
    """What one time window holds; merged pairwise when the width doubles."""

    __slots__ = (
        "allowed",
        "denied",
        "error_spans",
        "failed",
        "failed_clients",
        "failed_countries",
        "failed_hosts",
        "failed_locations",
        "failed_routes",
        "failed_status",
        "failed_upstreams",
        "first_failure_ns",
        "last_failure_ns",
        "latency",
        "no_policy",
        "requests",
        "spans",
    )

    def __init__(self, settings: Settings) -> None:
        self.requests = 0
        self.spans = 0
        self.error_spans = 0
        self.failed = 0  # requests answered 5xx (or whose SERVER span has status ERROR)
        self.allowed = 0
        self.no_policy = 0
        self.denied: dict[str, int] = {}
        self.latency = Histogram()
        self.failed_status: dict[int, int] = {}
        self.failed_clients = Distinct(settings.window_k)
        self.failed_routes = CappedSet(settings.names_kept)
        self.failed_hosts = CappedSet(settings.names_kept)
        self.failed_upstreams = CappedSet(settings.names_kept)
        self.failed_countries = CappedSet(settings.names_kept)
        self.failed_locations = CappedSet(settings.names_kept)
        self.first_failure_ns = 0
        self.last_failure_ns = 0

    def fail_time(self, start_ns: int, end_ns: int) -> None:
        if not self.first_failure_ns or start_ns < self.first_failure_ns:
            self.first_failure_ns = start_ns
        self.last_failure_ns = max(self.last_failure_ns, end_ns)

    def merge(self, other: Window) -> None:
        self.requests += other.requests
        self.spans += other.spans
        self.error_spans += other.error_spans
        self.failed += other.failed
        self.allowed += other.allowed
        self.no_policy += other.no_policy
        for outcome, n in other.denied.items():
            self.denied[outcome] = self.denied.get(outcome, 0) + n
        for status, n in other.failed_status.items():
            self.failed_status[status] = self.failed_status.get(status, 0) + n
        self.latency.merge(other.latency)
        self.failed_clients.merge(other.failed_clients)
        self.failed_routes.merge(other.failed_routes)
        self.failed_hosts.merge(other.failed_hosts)
        self.failed_upstreams.merge(other.failed_upstreams)
        self.failed_countries.merge(other.failed_countries)
        self.failed_locations.merge(other.failed_locations)
        if other.first_failure_ns:
            self.fail_time(other.first_failure_ns, other.last_failure_ns)


def identity_of(subject: str, cert: str) -> str:
    """Who made a request: the token's or certificate's subject, else the client certificate, else nobody."""
    if subject:
        return subject
    if cert:
        return f"cert sha256:{cert.lower()}"
    return ANONYMOUS


class TrailAggregator:
    """Feed it spans, audit records and chain reports; `report()` at the end."""

    def __init__(self, settings: Settings | None = None) -> None:
        s = self.settings = settings or Settings()
        self.width = s.window_ns
        self.windows: dict[int, Window] = {}
        self._low = self._high = 0
        self._current_index = -1
        self._current: Window | None = None
        self.coarsened = 0

        self.first_ns = 0
        self.last_ns = 0
        self.lines = 0
        self.requests = 0
        self.server_spans_with_error = 0
        self.client_spans = 0
        self.client_errors = 0
        # (status, protocol, tls, cache, outcome): a few hundred combinations in real traffic.
        self.shapes = TopCounter[tuple[int, str, str, str, str]](s.shape_capacity)
        self.reasons = TopCounter[str](s.capacity)  # "outcome\0reason"
        self.routes = TopCounter[str](s.capacity)
        self.identities = TopCounter[str](s.capacity)
        self.denied_identities = TopCounter[str](s.capacity)
        self.denied_clients = TopCounter[str](s.capacity)
        self.denied_routes = TopCounter[str](s.capacity)
        self.upstream_attempts = TopCounter[str](s.capacity)
        self.upstream_failures = TopCounter[str](s.capacity)  # "upstream\0error.type"
        self.clients = Distinct(s.distinct_k)
        self.identity_count = Distinct(s.distinct_k)
        self.locations = CappedSet(s.names_kept)
        self._hashes: dict[str, int] = {}  # client address -> hash64, emptied when large

        self.audit_records = 0
        self.audit_first_ns = 0
        self.audit_last_ns = 0
        self.audit_names = TopCounter[str](256)
        self.audit_denials = 0
        self.audit_dropped = 0
        self.reload_events: list[dict[str, Any]] = []
        self.reload_events_total = 0
        self.chains: list[ChainReport] = []

    # --- windows ------------------------------------------------------------------------------------------------

    def _window(self, time_ns: int) -> Window:
        index = time_ns // self.width
        if index == self._current_index and self._current is not None:
            return self._current
        window = self.windows.get(index)
        if window is None:
            if not self.windows:
                self._low = self._high = index
            else:
                self._low, self._high = min(self._low, index), max(self._high, index)
            window = self.windows[index] = Window(self.settings)
            if self._high - self._low + 1 > self.settings.max_windows:
                self._coarsen()
                return self._window(time_ns)
        self._current_index, self._current = index, window
        return window

    def _coarsen(self) -> None:
        """Double the window width, merging each pair of neighbours, until the time range fits again."""
        while self._high - self._low + 1 > self.settings.max_windows:
            merged: dict[int, Window] = {}
            for index in sorted(self.windows):
                window = self.windows[index]
                target = merged.get(index >> 1)
                if target is None:
                    merged[index >> 1] = window
                else:
                    target.merge(window)
            self.windows = merged
            self.width *= 2
            self._low >>= 1
            self._high >>= 1
            self.coarsened += 1
        self._current_index, self._current = -1, None

    # --- spans --------------------------------------------------------------------------------------------------

    def add_spans(self, resource: dict[str, str], spans: Iterable[ServerSpan | ClientSpan]) -> None:
        """One decoded line: its resource (where the edge runs) and its spans."""
        self.lines += 1
        location = ""
        for key in LOCATION_KEYS:
            location = resource.get(key, "")
            if location:
                self.locations.add(location)
                break
        for span in spans:
            if type(span) is ServerSpan:
                self.add_server(span, location)
            else:
                self.add_client(span)  # type: ignore[arg-type]

    def _time(self, start_ns: int, end_ns: int) -> None:
        if not self.first_ns or start_ns < self.first_ns:
            self.first_ns = start_ns
        if end_ns > self.last_ns:  # noqa: PLR1730 - the hot path: a compare is cheaper than max()
            self.last_ns = end_ns

    def add_server(self, span: ServerSpan, location: str = "") -> None:
        (start, end, status, protocol, tls, route, host, client, outcome, reason, rule, subject, cert, cache, upstream,
         error, country) = span  # fmt: skip
        self._time(start, end)
        self.requests += 1
        window = self._window(start)
        window.requests += 1
        window.spans += 1
        window.latency.add(end - start)
        # Low-cardinality dimensions are counted together, as one key: one update instead of five.
        self.shapes.add((status, protocol, tls, cache, outcome))
        route = route or NO_ROUTE
        self.routes.add(route)
        identity = identity_of(subject, cert)
        self.identities.add(identity)
        if identity != ANONYMOUS:
            self.identity_count.add(identity)
        if client:
            hashes = self._hashes
            value = hashes.get(client)
            if value is None:
                if len(hashes) >= 65536:
                    hashes.clear()
                value = hashes[client] = hash64(client)
            self.clients.add_hash(value)
        else:
            value = 0

        if not outcome:
            window.no_policy += 1
        else:
            self.reasons.add(f"{outcome}\0{reason}")
            if outcome == "allowed":
                window.allowed += 1
            else:
                window.denied[outcome] = window.denied.get(outcome, 0) + 1
                self.denied_identities.add(identity)
                self.denied_clients.add(client or UNKNOWN)
                # A refused request never reaches routing (no http.route): the rule that refused it says where.
                self.denied_routes.add(route if route != NO_ROUTE or not rule else f"rule {rule}")

        if error or status >= 500:
            self.server_spans_with_error += error
            window.error_spans += error
            window.failed += 1
            window.failed_status[status] = window.failed_status.get(status, 0) + 1
            window.fail_time(start, end)
            if client:
                window.failed_clients.add_hash(value)
            window.failed_routes.add(route)
            if host:
                window.failed_hosts.add(host)
            if upstream:
                window.failed_upstreams.add(upstream)
            if country:
                window.failed_countries.add(country)
            if location:
                window.failed_locations.add(location)

    def add_client(self, span: ClientSpan) -> None:
        start, end, upstream, error_type, error = span
        self._time(start, end)
        self.client_spans += 1
        window = self._window(start)
        window.spans += 1
        upstream = upstream or UNKNOWN
        self.upstream_attempts.add(upstream)
        if error or error_type:
            self.client_errors += 1
            window.error_spans += 1
            self.upstream_failures.add(f"{upstream}\0{error_type or UNKNOWN}")
            if upstream != UNKNOWN:
                window.failed_upstreams.add(upstream)

    # --- audit --------------------------------------------------------------------------------------------------

    def add_audit(self, record: AuditRecord) -> None:
        self.audit_records += 1
        t = record.time_ns
        if t:
            if not self.audit_first_ns or t < self.audit_first_ns:
                self.audit_first_ns = t
            self.audit_last_ns = max(self.audit_last_ns, t)
        name = record.name or UNKNOWN
        self.audit_names.add(name)
        if name == DENIED_EVENT:
            self.audit_denials += 1
        elif name == DROPPED_EVENT:
            dropped = record.attributes.get("audit.dropped", 0)
            self.audit_dropped += dropped if isinstance(dropped, int) else 0
        elif name.startswith(RELOAD_PREFIXES):
            self.reload_events_total += 1
            if len(self.reload_events) < self.settings.events_kept:
                details = {
                    key: value
                    for key, value in record.attributes.items()
                    if key not in ("event.name", "audit.seq", "audit.prev_sha256", "log.event")
                }
                self.reload_events.append(
                    {
                        "time": iso(t),
                        "time_unix_nano": t,
                        "event": name,
                        "severity": record.severity,
                        "message": record.body,
                        "seq": record.attributes.get("audit.seq", 0),
                        "attributes": details,
                    }
                )

    def add_chain(self, report: ChainReport) -> None:
        self.chains.append(report)

    # --- the report ---------------------------------------------------------------------------------------------

    def sorted_windows(self) -> list[tuple[int, Window]]:
        return [(index * self.width, self.windows[index]) for index in sorted(self.windows)]

    def report(self, sources: dict[str, Any] | None = None) -> dict[str, Any]:
        s = self.settings
        windows = self.sorted_windows()
        return {
            "format": "edgeward-evidence-trail/1",
            "sources": sources or {},
            "settings": {
                "window_seconds": self.width / NS,
                "requested_window_seconds": s.window_ns / NS,
                "max_5xx_rate": s.max_5xx_rate,
                "max_error_rate": s.max_error_rate,
                "min_requests": s.min_requests,
                "top": s.top,
                "counter_capacity": s.capacity,
            },
            "range": self._range(),
            "totals": self._totals(),
            "decisions": self._decisions(),
            "denials": {
                "total": self.denied_identities.total,
                "by_identity": _top(self.denied_identities, s.top),
                "by_client_address": _top(self.denied_clients, s.top),
                "by_route": _top(self.denied_routes, s.top),
            },
            "identities": {
                "distinct": _distinct(self.identity_count),
                "top": _top(self.identities, s.top),
            },
            "routes": _top(self.routes, s.top),
            "protocols": self._protocols(),
            "tls_versions": _share_rows(self._dimension(2, lambda tls: tls or "none (plain TCP)")),
            "status": {
                "classes": _share_rows(self._dimension(0, lambda code: f"{code // 100}xx" if code else UNKNOWN)),
                "codes": _share_rows(self._dimension(0, lambda code: str(code) if code else UNKNOWN)),
                "exact": self.shapes.exact,
            },
            "cache": self._cache(),
            "upstreams": self._upstreams(),
            "latency": {"overall": _latency(self._overall_latency()), "unit": "ms"},
            "series": [_series_point(start, self.width, window) for start, window in windows],
            "incidents": find_incidents(windows, self.width, self, s),
            "audit": self._audit(),
        }

    def _dimension(self, index: int, label: Callable[[Any], str], skip: Any = None) -> dict[str, int]:
        """Counts of one element of the shape key (status, protocol, tls, cache, outcome), by `label`."""
        counts: dict[str, int] = {}
        for shape, n in self.shapes.counts.items():
            value = shape[index]
            if skip is not None and value == skip:
                continue
            key = label(value)
            counts[key] = counts.get(key, 0) + n
        return counts

    def _overall_latency(self) -> Histogram:
        overall = Histogram()
        for window in self.windows.values():
            overall.merge(window.latency)
        return overall

    def _range(self) -> dict[str, Any]:
        starts = [t for t in (self.first_ns, self.audit_first_ns) if t]
        ends = [t for t in (self.last_ns, self.audit_last_ns) if t]
        first, last = (min(starts), max(ends)) if starts and ends else (0, 0)
        return {
            "first": iso(first) if first else None,
            "last": iso(last) if last else None,
            "first_unix_nano": first,
            "last_unix_nano": last,
            "seconds": round((last - first) / NS, 3),
            "spans_first": iso(self.first_ns) if self.first_ns else None,
            "spans_last": iso(self.last_ns) if self.last_ns else None,
            "audit_first": iso(self.audit_first_ns) if self.audit_first_ns else None,
            "audit_last": iso(self.audit_last_ns) if self.audit_last_ns else None,
        }

    def _totals(self) -> dict[str, Any]:
        failed = sum(w.failed for w in self.windows.values())
        return {
            "lines": self.lines,
            "spans": self.requests + self.client_spans,
            "requests": self.requests,
            "upstream_attempts": self.client_spans,
            "upstream_attempt_errors": self.client_errors,
            "responses_5xx": failed,
            "rate_5xx": ratio(failed, self.requests),
            "error_spans": self.server_spans_with_error + self.client_errors,
            "error_rate": ratio(self.server_spans_with_error + self.client_errors, self.requests + self.client_spans),
            "distinct_clients": _distinct(self.clients),
            "audit_records": self.audit_records,
        }

    def _decisions(self) -> dict[str, Any]:
        reasons: dict[str, dict[str, int]] = {}
        for key, n in self.reasons.counts.items():
            outcome, _, reason = key.partition("\0")
            reasons.setdefault(outcome, {})[reason or "(none)"] = n
        by_outcome = []
        outcomes = self._dimension(4, lambda outcome: outcome or NO_POLICY)
        total = sum(outcomes.values())
        for outcome, n in sorted(outcomes.items(), key=lambda item: (-item[1], item[0])):
            by_outcome.append(
                {
                    "outcome": outcome,
                    "count": n,
                    "share": ratio(n, total),
                    "reasons": [
                        {"reason": reason, "count": count}
                        for reason, count in sorted(reasons.get(outcome, {}).items(), key=lambda i: (-i[1], i[0]))
                    ],
                }
            )
        return {
            "total": total,
            "exact": self.shapes.exact and self.reasons.exact,
            "by_outcome": by_outcome,
        }

    def _protocols(self) -> dict[str, Any]:
        families: dict[str, int] = {}
        versions = self._dimension(1, lambda version: version or UNKNOWN)
        for version, n in versions.items():
            family = PROTOCOL_FAMILY.get(version, version)
            families[family] = families.get(family, 0) + n
        total = sum(versions.values())
        return {
            "families": [
                {"key": key, "count": n, "share": ratio(n, total)}
                for key, n in sorted(families.items(), key=lambda i: (-i[1], i[0]))
            ],
            "versions": _share_rows(versions),
        }

    def _cache(self) -> dict[str, Any]:
        counts = self._dimension(3, str, skip="")
        lookups = sum(n for status, n in counts.items() if status != "bypass")
        hits = counts.get("hit", 0)
        from_cache = hits + counts.get("stale", 0) + counts.get("revalidated", 0)
        return {
            "lookups": lookups,
            "hit": hits,
            "hit_ratio": ratio(hits, lookups),
            "served_from_cache_ratio": ratio(from_cache, lookups),
            "by_status": _share_rows(counts),
            "definition": "hit_ratio = hit / lookups; served_from_cache_ratio counts stale and revalidated too;"
            " lookups are requests with an edge.cache.status other than bypass",
        }

    def _upstreams(self) -> dict[str, Any]:
        failures = []
        for key, n in self.upstream_failures.top(self.settings.top):
            upstream, _, error_type = key.partition("\0")
            failures.append({"upstream": upstream, "error_type": error_type, "count": n})
        return {
            "attempts": _top(self.upstream_attempts, self.settings.top),
            "failures": failures,
            "failures_exact": self.upstream_failures.exact,
        }

    def _audit(self) -> dict[str, Any]:
        events = sorted(self.reload_events, key=lambda e: (e["time_unix_nano"], e["seq"]))
        chains = [chain.to_json() | {"summary": str(chain)} for chain in self.chains]
        return {
            "records": self.audit_records,
            "by_event": _share_rows(self.audit_names.counts),
            "denials": self.audit_denials,
            "denials_in_spans": self.denied_identities.total,
            "dropped": self.audit_dropped,
            "reload_events": events,
            "reload_events_total": self.reload_events_total,
            "chains": chains,
            "chain_ok": all(chain.ok for chain in self.chains) if self.chains else None,
        }


def _top(counter: TopCounter[str], limit: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [{"key": key, "count": n} for key, n in counter.top(limit)]
    if not counter.exact:
        for row in rows:
            row["count_max"] = row["count"] + counter.decrements
    shown = sum(row["count"] for row in rows)
    return {
        "total": counter.total,
        "exact": counter.exact,
        "rows": rows,
        "other": counter.total - shown,
        "distinct_kept": counter.distinct_kept(),
    }


def _share_rows(counts: dict[str, int]) -> list[dict[str, Any]]:
    total = sum(counts.values())
    return [
        {"key": key, "count": n, "share": ratio(n, total)}
        for key, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]


def _distinct(sketch: Distinct) -> dict[str, Any]:
    return {"count": sketch.estimate(), "exact": sketch.exact}


def _latency(histogram: Histogram) -> dict[str, Any]:
    out: dict[str, Any] = {"count": histogram.count}
    for q, name in QUANTILES:
        out[name] = ms(histogram.quantile(q))
    out["max"] = ms(histogram.maximum)
    out["min"] = ms(histogram.minimum)
    out["mean"] = ms(histogram.mean())
    return out


def _series_point(start: int, width: int, window: Window) -> dict[str, Any]:
    return {
        "start": iso(start),
        "start_unix_nano": start,
        "seconds": width / NS,
        "requests": window.requests,
        "spans": window.spans,
        "allowed": window.allowed,
        "denied": sum(window.denied.values()),
        "denied_by_outcome": dict(sorted(window.denied.items())),
        "no_policy": window.no_policy,
        "responses_5xx": window.failed,
        "error_spans": window.error_spans,
        "latency_ms": _latency(window.latency),
    }
