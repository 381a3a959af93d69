"""`evidence trail`: exact numbers from the server's own span and audit files, a named broken link, a real browser.

Three kinds of input, all in the server's exact format:

- synthetic files written with the server's own encoders (`SpanEncoder.json_line`
  into a `RotatingFile`, `AuditTrail` for the audit file) from a hand-built list
  of exchanges, so every figure in the report is checked against a count made
  here from that list (an independent oracle), incident windows included;
- files the real edge wrote while serving a known mix of requests over HTTP/1.1,
  HTTP/2 (httpx) and HTTP/3 (aioquic), some refused by the JWT policy, some 404,
  some answered 500 by a proxied origin, some served from the cache; its HTML
  report is then rendered by headless Chromium: the DOM must show the key
  figures and the screenshot must not be blank (pixel variance, PNG decoded
  here with zlib);
- damaged inputs: an edited audit record (exit 1, the first broken link
  named) and a span line that is not JSON (exit 2, one line naming file:line).
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from evidence.trail.aggregate import Settings, TrailAggregator
from evidence.trail.otlp import ServerSpan, decode_spans
from evidence.trail.sketch import Distinct, Histogram, TopCounter, bucket_bounds, bucket_of
from ingress.config.telemetry import Audit
from ingress.protocol.events import Decision
from ingress.protocol.trace import Attempt
from ingress.telemetry.audit import AuditTrail
from ingress.telemetry.otlp.logs import INFO
from ingress.telemetry.otlp.spans import SpanEncoder
from ingress.telemetry.record import Exchange
from ingress.telemetry.rotating import RotatingFile
from tests.chromium import browse, pixel_variance, png_pixels
from tests.h3client import H3Transport
from tests.origin import Origin
from tests.pki import CA, Issued
from tests.server import Server, wait_for
from tests.test_policy import Keys, policy_config

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
MINUTE = 60 * 10**9
MS = 10**6
RESOURCE = {"service.name": "edgeward", "host.name": "edge-test-1", "cloud.region": "eu-west-3"}


def run_trail(*args: str | Path, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "evidence", "trail", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check is not None:
        assert proc.returncode == check, proc.stderr
    return proc


def rows(table: dict[str, Any]) -> dict[str, int]:
    return {row["key"]: row["count"] for row in table["rows"]}


def shares(items: list[dict[str, Any]]) -> dict[str, int]:
    return {item["key"]: item["count"] for item in items}


# =========================================================================== synthetic files, exact numbers


@dataclass
class Synthetic:
    directory: Path
    traces: Path
    audit: Path
    exchanges: list[Exchange]
    reloads: int


def synthetic_exchanges() -> list[Exchange]:
    """Ten minutes of 100 requests each; minutes 4 and 5 are an outage of the /payments/ upstream.

    Request i of minute m: protocol by i % 10 (0-2 h1, 3-7 h2, 8-9 h3; i % 10 == 0 on TLS 1.2, the rest 1.3);
    route /api/ (cached: hit on i % 10 == 1, else miss) for i % 5 == 1, /payments/ (proxied) for i % 5 == 2,
    else / ; denied_jwt "expired" on i % 20 == 7, denied_rbac "no grant for DELETE" as mallory on i % 20 == 13,
    otherwise allowed as alice (odd i) or bob (a refused request has no http.route: it is never routed);
    latency 10 ms, 400 ms on every 50th. In the outage every
    /payments/ request that the policy lets through (15 a minute) is a 503 after two failed tries, from
    10.0.0.<i + 1>; outside it one
    request a minute is a 500 (below the 5 % threshold).
    """
    out: list[Exchange] = []
    n = 0
    for minute in range(10):
        for i in range(100):
            n += 1
            start = T0 + minute * MINUTE + i * 500 * MS
            latency = 400 * MS if i % 50 == 49 else 10 * MS
            protocol = "1.1" if i % 10 < 3 else "2" if i % 10 < 8 else "3"
            tls = "TLSv1.2" if i % 10 == 0 else "TLSv1.3"
            route = "/api/" if i % 5 == 1 else "/payments/" if i % 5 == 2 else "/"
            client = f"192.0.2.{i % 7 + 1}"
            status, cache, upstream, error = 200, "", "", ""
            attempts: tuple[Attempt, ...] = ()
            if i % 20 == 7:
                decision = Decision("denied_jwt", "expired", rule="api")
                status = 401
            elif i % 20 == 13:
                decision = Decision("denied_rbac", "no grant for DELETE", rule="api", subject="mallory")
                status = 403
            else:
                decision = Decision("allowed", "", rule="api", subject="alice" if i % 2 else "bob")
            if status == 200 and route == "/api/":
                cache = "hit" if i % 10 == 1 else "miss"
                upstream = "api" if cache == "miss" else ""
                if upstream:
                    attempts = (Attempt(n.to_bytes(8, "big"), start + MS, start + 5 * MS, "10.9.0.1:80", 200, "", 0),)
            if status == 200 and route == "/payments/":
                upstream = "core"
                if minute in (4, 5):
                    client = f"10.0.0.{i + 1}"
                    attempts = tuple(
                        Attempt((n * 10 + k).to_bytes(8, "big"), start + k * MS, start + (k + 1) * MS,
                                "10.9.0.2:80", 0, "connect", k)
                        for k in range(2)
                    )  # fmt: skip
                    status, error = 503, "upstream_unavailable"
                elif i == 2:
                    status = 500
            out.append(
                Exchange(
                    n.to_bytes(16, "big"),
                    n.to_bytes(8, "big"),
                    b"",
                    "",
                    True,
                    start,
                    start + latency,
                    "GET",
                    f"{route}item{i}",
                    route if decision.outcome == "allowed" else "",
                    status,
                    protocol,
                    tls,
                    "edge.example",
                    client,
                    "test/1",
                    decision,
                    cache,
                    upstream,
                    attempts,
                    0 if status >= 400 else 100,
                    "https",
                    "edge.example",
                    "",
                    error,
                )
            )
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    directory = tmp_path_factory.mktemp("trail-synthetic")
    traces, audit_path = directory / "traces.jsonl", directory / "audit.jsonl"
    exchanges = synthetic_exchanges()
    encoder = SpanEncoder(RESOURCE)
    files = RotatingFile(str(traces), rotate_bytes=300_000)  # a few rotated files, as the server leaves them
    trail = AuditTrail(Audit(file=str(audit_path)), RESOURCE, max_batch=1 << 20)
    reloads = 0
    for batch in range(0, len(exchanges), 64):
        chunk = exchanges[batch : batch + 64]
        files.write(encoder.json_line(chunk))
        for exchange in chunk:
            trail.denied(exchange)
        if batch % 256 == 0:
            trail.record("edge.cert.reloaded", INFO, "certificate reloaded", {"edge.listener": "https"},
                         time_ns=chunk[0].start_ns)  # fmt: skip
            trail.record("edge.config.reloaded", INFO, "configuration reloaded", {}, time_ns=chunk[0].start_ns)
            reloads += 2
        trail.flush()
    files.close()
    trail.close()
    assert len(list(directory.glob("traces.jsonl.*Z*"))) >= 2
    return Synthetic(directory, traces, audit_path, exchanges, reloads)


def oracle(exchanges: list[Exchange]) -> dict[str, Any]:
    """The report's numbers, counted the obvious way from the exchanges themselves."""
    decided = [e for e in exchanges if e.decision is not None]
    denied = [e for e in decided if e.decision is not None and e.decision.outcome != "allowed"]

    def identity(e: Exchange) -> str:
        return e.decision.subject if e.decision is not None and e.decision.subject else "(anonymous)"

    cache = Counter(e.cache for e in exchanges if e.cache)
    return {
        "requests": len(exchanges),
        "spans": len(exchanges) + sum(len(e.attempts) for e in exchanges),
        "attempts": sum(len(e.attempts) for e in exchanges),
        "5xx": sum(e.status >= 500 for e in exchanges),
        "outcomes": Counter(e.decision.outcome for e in decided if e.decision is not None),
        "reasons": Counter((e.decision.outcome, e.decision.reason or "(none)") for e in decided if e.decision),
        "denied_identity": Counter(identity(e) for e in denied),
        "denied_client": Counter(e.client for e in denied),
        "denied_route": Counter(e.route or f"rule {e.decision.rule}" for e in denied if e.decision is not None),
        "identities": Counter(identity(e) for e in exchanges),
        "versions": Counter(e.protocol for e in exchanges),
        "tls": Counter("TLS " + e.tls.removeprefix("TLSv") for e in exchanges),
        "cache": cache,
        "hit_ratio": round(cache["hit"] / sum(cache.values()), 6),
        "clients": len({e.client for e in exchanges}),
    }


def test_synthetic_trail_gives_exact_numbers(synthetic: Synthetic, tmp_path: Path) -> None:
    html, report_json = tmp_path / "trail.html", tmp_path / "trail.json"
    proc = run_trail(synthetic.traces, synthetic.audit, "--output", html, "--json", report_json)
    report = json.loads(report_json.read_text())
    want = oracle(synthetic.exchanges)

    # The rotated siblings were found from the base name, and the audit file recognised by its content.
    assert len(report["sources"]["span_files"]) >= 3
    assert report["sources"]["audit_trails"] == [[str(synthetic.audit)]]

    totals = report["totals"]
    assert totals["requests"] == want["requests"] == 1000
    assert totals["spans"] == want["spans"]
    assert totals["upstream_attempts"] == want["attempts"]
    assert totals["responses_5xx"] == want["5xx"] == 2 * 15 + 8
    assert totals["distinct_clients"] == {"count": want["clients"], "exact": True}
    assert report["range"]["spans_first"] == "2026-01-01T00:00:00.000Z"
    assert report["range"]["spans_last"] == "2026-01-01T00:09:49.900Z"  # minute 9, request 99: +49.5 s, +400 ms

    decisions = {item["outcome"]: item for item in report["decisions"]["by_outcome"]}
    assert {k: v["count"] for k, v in decisions.items()} == dict(want["outcomes"])
    got_reasons = {(k, r["reason"]): r["count"] for k, v in decisions.items() for r in v["reasons"]}
    assert got_reasons == dict(want["reasons"])
    assert report["denials"]["total"] == sum(want["denied_identity"].values()) == 100
    assert rows(report["denials"]["by_identity"]) == dict(want["denied_identity"])
    assert rows(report["denials"]["by_client_address"]) == dict(want["denied_client"])
    assert rows(report["denials"]["by_route"]) == dict(want["denied_route"])
    assert rows(report["identities"]["top"]) == dict(want["identities"])
    assert report["identities"]["top"]["exact"] is True

    assert shares(report["protocols"]["versions"]) == dict(want["versions"])
    assert shares(report["protocols"]["families"]) == {"h1": 300, "h2": 500, "h3": 200}
    assert shares(report["tls_versions"]) == dict(want["tls"])
    assert shares(report["cache"]["by_status"]) == dict(want["cache"])
    assert report["cache"]["hit_ratio"] == want["hit_ratio"]

    # Latency: 98 % at 10 ms, 2 % at 400 ms; percentiles within the histogram's 1.6 %.
    latency = report["latency"]["overall"]
    assert latency["count"] == 1000
    assert latency["p50"] == pytest.approx(10.0, rel=0.016)
    assert latency["p90"] == pytest.approx(10.0, rel=0.016)
    assert latency["p99"] == pytest.approx(400.0, rel=0.016)
    assert (latency["min"], latency["max"]) == (10.0, 400.0)
    assert len(report["series"]) == 10
    assert [point["requests"] for point in report["series"]] == [100] * 10

    # One incident: minutes 4 and 5, where 15 of 100 requests a minute failed, from 15 addresses.
    (incident,) = report["incidents"]
    assert (incident["window_start"], incident["window_end"]) == (
        "2026-01-01T00:04:00.000Z",
        "2026-01-01T00:06:00.000Z",
    )
    assert (incident["requests"], incident["responses_5xx"]) == (200, 30)
    assert incident["thresholds_crossed"] == ["5xx_rate", "error_rate"]
    assert incident["failed_status_codes"] == {"503": 30}
    dora = incident["dora"]
    affected = dora["clients_financial_counterparts_and_transactions"]
    assert (affected["clients_affected"], affected["clients_affected_exact"]) == (
        15,
        True,
    )  # the same 15 i in both minutes
    assert affected["clients_in_report"] == want["clients"]
    assert affected["transactions_affected"] == 30
    duration = dora["duration_and_service_downtime"]
    assert duration["first_failure"] == "2026-01-01T00:04:01.000Z"  # request 2 of minute 4
    assert duration["last_failure"] == "2026-01-01T00:05:48.510Z"  # request 97 of minute 5, +10 ms
    assert duration["duration_seconds"] == 107.51
    services = dora["critical_services_affected"]
    assert (services["routes"], services["upstreams"], services["hosts"]) == (
        ["/payments/"],
        ["core"],
        ["edge.example"],
    )
    assert dora["geographical_spread"] == {
        "article": "Art. 4", "known": False, "client_countries": [], "client_countries_truncated": False,
        "edge_locations": ["eu-west-3"],
    }  # fmt: skip
    assert dora["data_losses"]["value"] == "to assess"

    audit = report["audit"]
    assert audit["chain_ok"] is True
    assert audit["denials"] == audit["denials_in_spans"] == 100
    assert audit["records"] == 100 + synthetic.reloads
    assert audit["reload_events_total"] == synthetic.reloads
    assert {e["event"] for e in audit["reload_events"]} == {"edge.cert.reloaded", "edge.config.reloaded"}
    assert "audit chain: ok" in proc.stderr

    # Deterministic: the same files give the same JSON bytes.
    again = tmp_path / "again.json"
    run_trail(synthetic.traces, synthetic.audit, "--output", tmp_path / "again.html", "--json", again)
    assert again.read_bytes() == report_json.read_bytes()
    page = html.read_text()
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_tampered_audit_record_names_the_first_broken_link(synthetic: Synthetic, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    lines = synthetic.audit.read_bytes().splitlines(keepends=True)
    outcome = b'"edge.auth.outcome","value":{"stringValue":'
    lines[41] = lines[41].replace(outcome + b'"denied_', outcome + b'"allowed_')
    assert lines[41] != synthetic.audit.read_bytes().splitlines(keepends=True)[41]
    audit.write_bytes(b"".join(lines))
    html, report_json = tmp_path / "t.html", tmp_path / "t.json"
    proc = run_trail(synthetic.traces, audit, "--output", html, "--json", report_json, check=1)

    report = json.loads(report_json.read_text())  # written all the same
    (chain,) = report["audit"]["chains"]
    assert chain["ok"] is False
    broken = chain["broken"]
    # Line 42 (seq 42) was edited: its hash no longer matches what line 43 links to.
    assert (broken["file"], broken["line"], broken["seq"]) == (str(audit), 42, 42)
    assert "record edited" in broken["problem"]
    assert f"{audit}:42 (seq 42)" in proc.stderr
    assert report["totals"]["requests"] == 1000  # the rest of the report is still there
    page = html.read_text()
    assert "BROKEN" in page and f"{audit}:42" in page


def test_a_span_line_that_is_not_json_is_a_usage_error_naming_file_and_line(
    synthetic: Synthetic, tmp_path: Path
) -> None:
    traces = tmp_path / "traces.jsonl"
    good = synthetic.traces.read_bytes().splitlines(keepends=True)
    traces.write_bytes(good[0] + good[1][: len(good[1]) // 2] + b"\n" + good[2])  # a torn batch, as after a crash
    proc = run_trail(traces, "--quiet", "--output", tmp_path / "t.html", "--json", tmp_path / "t.json", check=2)
    first = proc.stderr.strip().splitlines()[0]  # then only the hint
    assert first.startswith(f"evidence trail: {traces}:2: not a JSON line"), proc.stderr
    assert not (tmp_path / "t.json").exists()

    run_trail(traces, "--skip-damaged", "--output", tmp_path / "t.html", "--json", tmp_path / "t.json")
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["sources"]["damaged_lines"] == 1
    assert report["sources"]["damaged_listed"][0].startswith(f"{traces}:2: ")
    assert report["totals"]["requests"] == 128  # lines 1 and 3, 64 requests each
    assert report["audit"]["chain_ok"] is None

    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    proc = run_trail(other, check=2)
    assert f"{other}:1: neither an OTLP JSON Lines span file" in proc.stderr
    assert run_trail(tmp_path / "missing.jsonl", check=2).stderr.startswith(f"evidence trail: {tmp_path}/missing")


# =========================================================================== the bounded parts


def test_generic_otlp_json_decodes_like_the_compact_path() -> None:
    """Another producer's spelling (enum names, a double attribute, a "}}"-leading value) takes the generic path."""
    exchange = synthetic_exchanges()[2]._replace(host="}}odd")
    line = SpanEncoder(RESOURCE).json_line([exchange])
    resource, spans = decode_spans(line)
    assert resource["cloud.region"] == "eu-west-3"
    (span,) = spans
    assert isinstance(span, ServerSpan)
    assert span.host == "}}odd" and span.route == "/payments/" and (span.status, span.error) == (500, True)
    generic = json.loads(line)
    item = generic["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    item["kind"] = "SPAN_KIND_SERVER"
    item["attributes"].append({"key": "x.ratio", "value": {"doubleValue": 0.5}})
    _, (same,) = decode_spans(json.dumps(generic).encode())
    assert same == span


def test_sketches_are_exact_when_small_and_bounded_when_not() -> None:
    counter = TopCounter[str](capacity=10)
    for i in range(5):
        counter.add(f"k{i}", i + 1)
    assert counter.exact and counter.top(2) == [("k4", 5), ("k3", 4)]
    heavy = TopCounter[str](capacity=10)
    for i in range(20_000):
        heavy.add("hot" if i % 3 == 0 else f"cold{i}")
    assert len(heavy.counts) <= 10 and not heavy.exact
    (key, count), *_ = heavy.top(1)
    assert key == "hot" and count <= 6667 <= count + heavy.decrements

    distinct = Distinct(k=256)
    distinct.update(f"10.0.{i // 256}.{i % 256}" for i in range(200))
    assert (distinct.estimate(), distinct.exact) == (200, True)
    distinct.update(f"10.1.{i // 256}.{i % 256}" for i in range(50_000))
    assert not distinct.exact and len(distinct._hashes) < 2 * 256
    assert distinct.estimate() == pytest.approx(50_200, rel=0.2)

    histogram = Histogram()
    for value in range(1, 100_001):
        histogram.add(value * 1000)
    assert histogram.quantile(0.5) == pytest.approx(50_000_000, rel=0.016)
    assert histogram.quantile(0.99) == pytest.approx(99_000_000, rel=0.016)
    for value in (1, 7, 1000, 123_456_789, 2**40 + 5):
        low, high = bucket_bounds(bucket_of(value))
        assert low <= value < high and (high - low) / low <= 1 / 32


def test_windows_coarsen_and_keep_every_count() -> None:
    """A day of spans at 60 s windows with max_windows 100 ends at 960 s windows, totals unchanged."""
    trail = TrailAggregator(Settings(max_windows=100, min_requests=1))
    base = synthetic_exchanges()[0]
    line = SpanEncoder(RESOURCE).json_line(
        [base._replace(start_ns=T0 + k * 600 * 10**9, end_ns=T0 + k * 600 * 10**9 + MS) for k in range(144)]
    )
    trail.add_spans(*decode_spans(line))
    assert len(trail.windows) <= 100 and trail.width == 960 * 10**9
    report = trail.report()
    assert sum(point["requests"] for point in report["series"]) == report["totals"]["requests"] == 144
    assert report["settings"]["window_seconds"] == 960.0


# =========================================================================== the real edge, and a real browser


@pytest.fixture(scope="module")
def trail_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("trail-jwt")
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = directory / "idp.pub.pem"
    public_pem.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return Keys(private, public_pem, ec.generate_private_key(ec.SECP256R1()))


def span_count(paths: list[Path]) -> int:
    count = 0
    for path in paths:
        if path.exists():
            for line in path.read_bytes().splitlines():
                count += len(decode_spans(line)[1])
    return count


def test_real_edge_files_give_exact_counts_and_render_in_chromium(
    tmp_path: Path, ca: CA, localhost_cert: Issued, trail_keys: Keys, chromium: str
) -> None:
    site = tmp_path / "www"
    (site / "sub").mkdir(parents=True)
    (site / "hello.txt").write_text("hello world\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    traces, audit = logs / "traces.jsonl", logs / "audit.jsonl"
    with Origin(name="trail-origin") as origin:
        config = policy_config(site, localhost_cert, ca, trail_keys, tmp_path / "access.log")
        config["upstreams"] = [{"name": "app", "origins": [origin.url], "retries": 0}]
        config["routes"] = [
            *config["routes"],
            {"path": "/status", "proxy": {"upstream": "app"}},
            {"path": "/cache", "methods": ["GET", "HEAD"], "proxy": {"upstream": "app", "cache": True}},
        ]
        config["cache"] = {"max_bytes": 1 << 20, "max_object_bytes": 64 * 1024}
        config["telemetry"] = {"interval": 0.05, "files": {"traces": str(traces)}}
        config["audit"] = {"file": str(audit)}
        server = Server(config, tmp_path, name="trail-edge").start()
        try:
            port = server.address("https")[1]

            def url(path: str) -> str:
                return f"https://localhost:{port}{path}"

            verify = ssl.create_default_context(cafile=str(ca.pem))
            h1 = httpx.Client(verify=verify, timeout=10)
            h2 = httpx.Client(verify=verify, timeout=10, http2=True)
            h3 = httpx.Client(transport=H3Transport(str(ca.pem)), timeout=10)
            sent: Counter[tuple[str, int]] = Counter()
            plan = [
                (h1, "h1", "/hello.txt", 200, 3), (h1, "h1", "/nope.txt", 404, 1),
                (h1, "h1", "/status?code=500", 500, 2), (h1, "h1", "/cache?cc=max-age%3D600&body=c", 200, 2),
                (h2, "h2", "/hello.txt", 200, 3), (h2, "h2", "/payments/a.txt", 401, 2),
                (h3, "h3", "/hello.txt", 200, 2), (h3, "h3", "/payments/b.txt", 401, 1),
            ]  # fmt: skip
            for client, version, path, status, times in plan:
                for _ in range(times):
                    response = client.get(url(path))
                    assert response.status_code == status, (version, path, response.text)
                    sent[(version, status)] += 1
            for client in (h1, h2, h3):
                client.close()
            requests = sum(sent.values())  # 16
            attempts = 2 + 1  # the two proxied 500s and the cache miss; the cache hit needs no upstream
            wait_for(lambda: span_count([traces]) == requests + attempts, 10, "every span on disk")

            # A config reload (SIGHUP) goes into the audit trail as edge.config.* events.
            server.signal(signal.SIGHUP)

            def reloaded() -> bool:
                return audit.exists() and b"edge.config.reloaded" in audit.read_bytes()

            wait_for(reloaded, 10, "the reload in the audit trail")
        finally:
            server.stop()

    html, report_json = tmp_path / "trail.html", tmp_path / "trail.json"
    run_trail(logs, "--output", html, "--json", report_json, "--min-requests", "1000")
    report = json.loads(report_json.read_text())
    totals = report["totals"]
    assert (totals["requests"], totals["upstream_attempts"], totals["spans"]) == (16, 3, 19)
    assert totals["responses_5xx"] == 2
    assert shares(report["protocols"]["families"]) == {"h1": 8, "h2": 5, "h3": 3}
    assert shares(report["protocols"]["versions"]) == {"1.1": 8, "2": 5, "3": 3}
    assert shares(report["tls_versions"]) == {"TLS 1.3": 16}
    assert shares(report["status"]["codes"]) == {"200": 10, "401": 3, "404": 1, "500": 2}
    decisions = {item["outcome"]: item for item in report["decisions"]["by_outcome"]}
    assert {k: v["count"] for k, v in decisions.items()} == {"allowed": 13, "denied_jwt": 3}
    assert [(r["reason"], r["count"]) for r in decisions["denied_jwt"]["reasons"]] == [("no token", 3)]
    assert rows(report["denials"]["by_route"]) == {"rule payments": 3}  # refused before routing
    assert rows(report["denials"]["by_client_address"]) == {"127.0.0.1": 3}
    assert rows(report["denials"]["by_identity"]) == {"(anonymous)": 3}
    assert shares(report["cache"]["by_status"]) == {"hit": 1, "miss": 1}
    assert report["cache"]["hit_ratio"] == 0.5
    assert report["upstreams"]["failures"] == [{"upstream": "app", "error_type": "500", "count": 2}]
    assert report["incidents"] == []  # --min-requests 1000: 16 requests are no incident

    audit_report = report["audit"]
    assert audit_report["chain_ok"] is True
    assert audit_report["denials"] == audit_report["denials_in_spans"] == 3
    names_on_disk = Counter(
        json.loads(line)["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["eventName"]
        for line in audit.read_bytes().splitlines()
    )
    assert shares(audit_report["by_event"]) == dict(names_on_disk)
    reloads = sum(n for name, n in names_on_disk.items() if name.startswith(("edge.config.", "edge.cert.")))
    assert audit_report["reload_events_total"] == reloads >= 1
    assert "edge.config.reloaded" in {e["event"] for e in audit_report["reload_events"]}

    # The browser: what the DOM shows, and that the page is not blank.
    dom = browse(chromium, html, "--dump-dom").stdout.decode()
    for figure in (
        'id="figures"', "16</div>", "requests (SERVER spans)", "19</div>", "denied requests",
        "12.50%", "cache hit ratio", "50.00%", "Audit hash chain intact", "Latency percentiles",
        "Access decisions", "denied_jwt", "no token", "rule payments", "edge.config.reloaded",
    ):  # fmt: skip
        assert figure in dom, figure
    assert dom.count("<svg") >= 2
    shot = tmp_path / "shot.png"
    browse(chromium, html, f"--screenshot={shot}")
    width, height, _ = png_pixels(shot.read_bytes())
    assert (width, height) == (1100, 1600)
    assert pixel_variance(shot.read_bytes()) > 100  # a blank page is 0
