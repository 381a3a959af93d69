"""`evidence trail` on a million spans (issue 8, item 4): wall time and peak RSS against 60 s and 300 MB.

    .venv/bin/python bench/trail.py --spans 1000000 --json bench/results/trail.json

Generation: spans are written by the server's own encoder
(`ingress.telemetry.otlp.spans.SpanEncoder.json_line`, the bytes
`[telemetry.files] traces` gets) from `Exchange` tuples, in batches of
`--batch` requests a line (what one telemetry tick writes under load),
into a rotating traces file (`ingress.telemetry.rotating.RotatingFile`,
64 MiB per file, so the report reads rotated siblings too). Denials go to a
real hash-chained audit file (`ingress.telemetry.audit.AuditTrail`), with a
certificate and a config reload event per simulated hour.

The traffic, over `--hours` of wall time, seeded: 60 % HTTP/2, 25 %
HTTP/1.1, 15 % HTTP/3; TLS 1.3 and some 1.2, a little plain HTTP; 5,000
client addresses and 800 token subjects (Zipf-like); static routes, a
cached API route (hits, misses, stale) and a proxied route whose tries are
CLIENT spans (retries on failures); about 6 % denied by the policy across
every outcome; and two outages (15 minutes and 5 minutes) where the
proxied upstream answers 503 or times out, to give incident candidates.

Measurement: `evidence trail` runs as a child process (`python -m
evidence trail ...`); wall time is measured around it and peak RSS is
`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` after it exits (the only
child measured, since generation runs in this process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingress.config.telemetry import Audit  # noqa: E402
from ingress.protocol.events import Decision  # noqa: E402
from ingress.protocol.trace import Attempt  # noqa: E402
from ingress.telemetry.audit import AuditTrail  # noqa: E402
from ingress.telemetry.otlp.logs import INFO  # noqa: E402
from ingress.telemetry.otlp.spans import SpanEncoder  # noqa: E402
from ingress.telemetry.record import Exchange  # noqa: E402
from ingress.telemetry.rotating import RotatingFile  # noqa: E402

START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
RESOURCE = {"service.name": "edgeward", "service.version": "0.1.0", "host.name": "edge-fra-1",
            "cloud.region": "eu-central-1"}  # fmt: skip
PROTOCOLS = [("2", 60), ("1.1", 25), ("3", 15)]
ROUTES = [("/", "static", 35), ("/assets/", "static", 20), ("/api/", "cache", 25), ("/payments/", "proxy", 20)]
DENIALS = [
    ("denied_jwt", "no token"), ("denied_jwt", "expired"), ("denied_jwt", "bad signature"),
    ("denied_rbac", "no grant for POST"), ("denied_ip", "network deny"), ("rate_limited", "per-subject"),
    ("denied_mtls", "no client certificate"),
]  # fmt: skip
AGENTS = ["curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "okhttp/4.12.0", "python-httpx/0.28.1"]


def _weighted(items: list[tuple[str, int]]) -> list[str]:
    return [value for value, weight in items for _ in range(weight)]


def generate(directory: Path, spans: int, hours: float, batch: int, seed: int) -> dict[str, int]:
    """Write the traces and audit files; returns what was written."""
    rng = random.Random(seed)
    encoder = SpanEncoder(RESOURCE)
    traces = RotatingFile(str(directory / "traces.jsonl"), 64 * 1024 * 1024, 0.0, 0)
    audit = AuditTrail(Audit(file=str(directory / "audit.jsonl")), RESOURCE, max_batch=1 << 30)
    clients = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(5000)]
    subjects = [f"user-{i:04d}" for i in range(800)]
    protocols = _weighted(PROTOCOLS)
    routes = [(path, kind) for path, kind, weight in ROUTES for _ in range(weight)]
    outages = [(START_NS + int(3600e9 * hours * 0.30), 15 * 60 * 10**9),
               (START_NS + int(3600e9 * hours * 0.75), 5 * 60 * 10**9)]  # fmt: skip
    # Requests are spread evenly; the span count includes each proxied request's CLIENT spans.
    requests_estimate = int(spans / 1.25)
    step = int(hours * 3600e9 / max(requests_estimate, 1))
    written = {"spans": 0, "requests": 0, "denied": 0, "lines": 0, "audit_events": 0}
    now = START_NS
    next_reload = START_NS
    counter = 0
    while written["spans"] < spans:
        exchanges: list[Exchange] = []
        for _ in range(batch):
            if written["spans"] >= spans:
                break
            counter += 1
            now += step
            while now >= next_reload:
                audit.record("edge.cert.reloaded", INFO, "certificate for edge.example reloaded",
                             {"edge.listener": "https", "edge.sni": "edge.example"}, time_ns=next_reload)  # fmt: skip
                audit.record("edge.config.reloaded", INFO, "configuration reloaded",
                             {"edge.source": "/etc/edgeward/edge.toml"}, time_ns=next_reload + 10**9)  # fmt: skip
                written["audit_events"] += 2
                next_reload += 3600 * 10**9
            client = clients[min(int(rng.paretovariate(1.2)) - 1, len(clients) - 1) if rng.random() < 0.6
                             else rng.randrange(len(clients))]  # fmt: skip
            subject = subjects[min(int(rng.paretovariate(1.1)) - 1, len(subjects) - 1)] if rng.random() < 0.7 else ""
            protocol = rng.choice(protocols)
            tls = "" if rng.random() < 0.02 else ("TLSv1.2" if rng.random() < 0.1 else "TLSv1.3")
            if protocol == "3":
                tls = "TLSv1.3"
            path, kind = rng.choice(routes)
            in_outage = any(start <= now < start + length for start, length in outages)
            latency = int(rng.lognormvariate(0, 0.8) * (2e6 if kind == "static" else 25e6))
            status, cache, upstream, error = 200, "", "", ""
            attempts: tuple[Attempt, ...] = ()
            decision: Decision | None = None
            if path in ("/api/", "/payments/"):
                if rng.random() < 0.06:
                    outcome, reason = rng.choice(DENIALS)
                    decision = Decision(outcome, reason, rule=path.strip("/"), subject=subject)
                    status = (
                        429 if outcome == "rate_limited" else 403 if outcome in ("denied_rbac", "denied_ip") else 401
                    )
                    latency = int(rng.uniform(0.05e6, 0.4e6))
                else:
                    decision = Decision("allowed", "", rule=path.strip("/"), subject=subject)
            if status == 200 and kind == "cache":
                cache = rng.choices(["hit", "miss", "stale", "revalidated"], [70, 20, 5, 5])[0]
                upstream = "api" if cache != "hit" else ""
            if status == 200 and kind == "proxy":
                upstream = "payments"
            if upstream:
                tries = []
                begin = now
                failing = in_outage and upstream == "payments"
                for resend in range(2 if failing else 1):
                    end = begin + latency // 2
                    code, err = (
                        (503, "") if failing and rng.random() < 0.7 else (0, "timeout") if failing else (200, "")
                    )
                    tries.append(Attempt(rng.randbytes(8), begin, end, "10.0.0.7:8080", code, err, resend))
                    begin = end
                attempts = tuple(tries)
                if failing:
                    status, error = (503, "") if attempts[-1].status == 503 else (504, "upstream_timeout")
            body = 0 if status >= 400 else rng.choice([512, 1024, 4096, 18000])
            exchange = Exchange(
                rng.randbytes(16), rng.randbytes(8), b"", "", True, now, now + latency,
                "GET" if kind != "proxy" else "POST",
                f"{path}item/{counter % 5000}", path, status, protocol, tls, "edge.example", client,
                rng.choice(AGENTS), decision, cache, upstream, attempts, body, "https" if tls else "http",
                "edge.example" if tls else "", "", error,
            )  # fmt: skip
            exchanges.append(exchange)
            written["requests"] += 1
            written["spans"] += 1 + len(attempts)
            if decision is not None and decision.outcome != "allowed":
                audit.denied(exchange)
                written["denied"] += 1
                written["audit_events"] += 1
        traces.write(encoder.json_line(exchanges))
        audit.flush()
        written["lines"] += 1
    traces.close()
    audit.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=24.0, help="time the spans cover")
    parser.add_argument("--batch", type=int, default=512, help="requests per line (one telemetry tick)")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--dir", type=Path, help="keep the files here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    directory = args.dir or Path(tempfile.mkdtemp(prefix="trail-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.monotonic()
        written = generate(directory, args.spans, args.hours, args.batch, args.seed)
        generated_s = time.monotonic() - t0
        size = sum(p.stat().st_size for p in directory.iterdir() if not p.name.endswith(".lock"))
        print(f"generated {written} ({size / 1e6:.0f} MB) in {generated_s:.1f} s", file=sys.stderr)

        cmd = [sys.executable, "-m", "evidence", "trail", str(directory / "traces.jsonl"),
               str(directory / "audit.jsonl"), "--output", str(directory / "trail.html"),
               "--json", str(directory / "trail.json"), "--quiet"]  # fmt: skip
        t0 = time.monotonic()
        code = subprocess.run(cmd, cwd=ROOT, check=False).returncode
        wall = time.monotonic() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
        report = json.loads((directory / "trail.json").read_text())
        result = {
            "spans": written["spans"],
            "requests": written["requests"],
            "lines": written["lines"],
            "input_mb": round(size / 1e6, 1),
            "exit_code": code,
            "wall_s": round(wall, 2),
            "peak_rss_mb": round(peak_mb, 1),
            "spans_per_s": round(written["spans"] / wall),
            "target": {"wall_s": 60, "peak_rss_mb": 300},
            "ok": code == 0 and wall <= 60 and peak_mb <= 300,
            "report_spans": report["totals"]["spans"],
            "report_requests": report["totals"]["requests"],
            "report_denials": report["denials"]["total"],
            "report_incidents": len(report["incidents"]),
            "python": sys.version.split()[0],
            "cpu": os.cpu_count(),
        }
        if report["totals"]["spans"] != written["spans"] or report["denials"]["total"] != written["denied"]:
            result["ok"] = False
            result["error"] = "the report's counts differ from what was generated"
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
