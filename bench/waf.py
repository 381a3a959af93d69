"""Request-firewall benchmarks: what ``[waf] enabled = true`` costs edgeward on a static GET and a proxied JSON POST.

    .venv/bin/python bench/waf.py --rounds 5 --duration 8 --json bench/results/waf.json
    .venv/bin/python bench/waf.py --profile-only      # the in-process breakdown alone, a few seconds

Cells, each run once per round on a fresh edgeward process (one worker on
CPU 0), interleaved in this order every round. The load generator is
``wrk -t1 -c64`` (HTTPS/1.1 keep-alive, ALPN ``http/1.1``) on CPU 1. A cell
with the firewall differs from its baseline by one line, ``[waf] enabled``
(the default profile, ``balanced``), and wrk sends the same bytes to both:

``get_off`` / ``get_on``
    GET ``/1k.bin?page=2&sort=price&filter=category%3Dshoes%20size%3D42&utm_source=newsletter``
    from a ``[routes.static]`` route, with a browser's User-Agent, Accept,
    Accept-Language and Accept-Encoding, a Referer and a Cookie (a session id
    and three preferences). Target: ``get_on`` >= 0.9x ``get_off``.
``get_off_varied`` / ``get_on_varied``
    as ``get_off`` / ``get_on``, but a wrk Lua script counts the ``page``
    value up, so no two requests carry the same query and the engine's
    memory of clean values cannot answer for it (the other values still
    repeat, as they do from one browser). Reported, no target.
``post_off`` / ``post_on``
    POST ``/v1/payment_intents`` with a 4 KiB JSON payment document
    (nested objects, line items, prose, numbers, \\u escapes as Python's
    ``json.dumps`` writes them, a base64 field) and ``Content-Type:
    application/json`` to a ``[routes.proxy]`` route; the origin answers a
    small JSON object. wrk takes the body from a Lua script. With the
    firewall the body is held whole and inspected before any of it goes
    upstream; without, it streams. Target: ``post_on`` >= 0.75x ``post_off``.

The origin is bench/proxy.py's nginx (one worker, plain HTTP/1.1 keep-alive,
on the load-generator core CPU 1, ``stub_status`` to count what it served)
with one more location answering the POST.

Before wrk runs, the exact request wrk will send must get a 200 with the
file's 1024 bytes (GET) or the origin's answer (POST), and attacks must be
refused by a server with the firewall and by none without: GET with
``?q=<script>alert(1)</script>`` (as typed and percent-encoded), and, on the
proxied route, the same query and a body with ``' OR 1=1--`` in a string,
which must not reach the origin when refused and must when not. The checks
run again after the measurement. A failed check, a non-2xx answer, > 1 %
socket errors, or an origin that served fewer requests than wrk completed
makes the cell an error; no number is filled in.

Before the servers start, the engine itself is timed in process on the same
requests: ``WafEngine.inspect_head`` and ``inspect_body`` as a whole, each
step of ``inspect_body`` and of its matching on their own, and a cProfile of
the body inspection and of a head with a new query (see ``engine_profile``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import hashlib
import http.client
import itertools
import json
import pstats
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))

from certs import make_certs  # noqa: E402
from interleaved import (  # noqa: E402
    CellResult,
    Measurement,
    check_wrk,
    common_meta,
    first_line,
    fmt,
    foreign_cpu,
    load_warnings,
    note_busy_before,
    on_signal,
    paired_ratios,
    ratio,
    run_rounds,
    scratch_dir,
    target_status,
)
from proxy import STATUS_PATH, TLS_EDGEWARD, EdgewardProxy, Origin, origin_status  # noqa: E402
from run import (  # noqa: E402
    DEFAULT_INGRESS,
    FOREIGN_THRESHOLD,
    SERVER_CPU,
    log,
    make_www,
    pin_self_to_client_cpu,
    raise_nofile,
)
from servers import BenchEnv, Edgeward, Mode, RunningServer, ServerError  # noqa: E402
from workloads import CLIENT_CPU, WARMUP_SECONDS, ServerCpu, WorkloadError, _wrk  # noqa: E402

from ingress.config.waf import Waf  # noqa: E402
from ingress.policy.waf import entropy, jsonbody  # noqa: E402
from ingress.policy.waf import normalise as n  # noqa: E402
from ingress.policy.waf.content import body_kind  # noqa: E402
from ingress.policy.waf.engine import WafEngine  # noqa: E402
from ingress.policy.waf.matcher import MAX_PASSES, Matcher  # noqa: E402

WRK_CONNECTIONS = 64
GET_PATH = "/1k.bin"
GET_QUERY = "page=2&sort=price&filter=category%3Dshoes%20size%3D42&utm_source=newsletter"
GET_HEADERS = (
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    ),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
    ("Accept-Language", "en-GB,en;q=0.9,de;q=0.8"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Referer", "https://shop.example.com/products/running?page=1&sort=price"),
    (
        "Cookie",
        "sid=s%3A9f2c1e7a4b0d4e1f8a3c6b5d2e7f1a0c.Xq1vR8kP2mN5tY7wZ3bC6dF9gH; theme=dark; lang=en-GB; "
        "consent=ads%3D0%2Canalytics%3D1",
    ),
)
POST_PATH = "/v1/payment_intents"
POST_HEADERS = (
    ("User-Agent", "shop-backend/2.8.1 python-requests/2.32.3"),
    ("Accept", "application/json"),
    ("Content-Type", "application/json"),
    ("Authorization", "Bearer sk_live_51PbL9zKfQ2vH7aXw1c8TmR4sYqE0nD3uJ6hG"),
    ("Idempotency-Key", "7c0e6f0a-3b1d-4c8e-9a2f-5d6b7e8f9a01"),
)
BODY_BYTES = 4096
ORIGIN_ANSWER = '{"id":"pi_3PbL9zKfQ2vH7aXw1c8TmR4s","status":"succeeded"}'
ATTACK_QUERIES = ("q=<script>alert(1)</script>", "q=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
ATTACK_STRING = "web' OR 1=1--"
VARIED_START = 1_000_000
"""First ``page`` value of the varied cell: every value has the same number of digits."""
GET_TARGET = 0.90
POST_TARGET = 0.75
CELLS = ("get_off", "get_on", "get_off_varied", "get_on_varied", "post_off", "post_on")
PAIRS = (
    ("get_on", "get_off", GET_TARGET),
    ("get_on_varied", "get_off_varied", None),
    ("get_on_varied", "get_off", None),
    ("post_on", "post_off", POST_TARGET),
)

LUA_VARIED = r"""-- bench/waf.py: the query's page value counts up, so no two requests carry the same query.
-- The request is wrk's own (its -H headers, in its order), cut around the page value once.
local prefix, suffix
sent = 0

function init(args)
  local req = wrk.format()
  local at = string.find(req, "page=2&", 1, true)
  prefix = string.sub(req, 1, at + 4)
  suffix = string.sub(req, at + 6)
end

function request()
  sent = sent + 1
  return prefix .. (START + sent) .. suffix
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local s = 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
  end
  io.write(string.format("bench.queries_sent=%d\n", s))
end
"""

LUA_POST = r"""-- bench/waf.py: POST the JSON document (headers come from -H).
wrk.method = "POST"
local f = assert(io.open(BODY_FILE, "rb"))
wrk.body = f:read("*a")
f:close()
"""


# --------------------------------------------------------------------------
# The request bodies


def payment_document(size: int = BODY_BYTES, channel: str = "web", *, ascii_only: bool = True) -> bytes:
    """A payment-intent document as a shop's backend would POST it, exactly *size* bytes.

    Written by ``json.dumps`` with its defaults, as ``requests(json=...)`` does: non-ASCII
    names become \\u escapes, which the firewall decodes once more before matching.
    *ascii_only* False writes them as UTF-8, as JavaScript's ``JSON.stringify`` does.
    """
    items = [
        ("SKU-RUN-4471", 'Trail running shoe, men\'s, size 42 (EU), colour "slate grey"', 2, 8999),
        ("SKU-SOC-0912", "Merino running socks, 3-pack", 1, 1899),
        ("SKU-BTL-0330", "Insulated bottle 750 ml \u2014 keeps drinks cold for 24 h", 1, 2450),
        ("SKU-GFT-0001", "Gift wrapping with a handwritten card", 1, 350),
    ]
    receipt = base64.b64encode(hashlib.sha512(b"receipt-2024-05-01").digest() * 4).decode()
    doc: dict[str, Any] = {
        "id": "pi_3PbL9zKfQ2vH7aXw1c8TmR4s",
        "object": "payment_intent",
        "amount": 24697,
        "currency": "eur",
        "capture_method": "automatic",
        "confirm": True,
        "customer": {
            "id": "cus_Q8mZr2LxV5nT1a",
            "name": "Zo\u00eb M\u00fcller-Lindstr\u00f6m",
            "email": "zoe.mueller@example.de",
            "phone": "+49 30 12345678",
            "preferred_locales": ["de-DE", "en-GB"],
            "address": {
                "line1": "Friedrichstra\u00dfe 123",
                "line2": "Hinterhaus, 3. OG",
                "postal_code": "10117",
                "city": "Berlin",
                "country": "DE",
            },
        },
        "shipping": {
            "method": "standard",
            "carrier": "DHL",
            "amount": 499,
            "instructions": "Please leave the parcel with the neighbour on the ground floor if nobody answers; "
            "the bell for flat 3B doesn't always work, so knock twice.",
        },
        "line_items": [
            {
                "sku": sku,
                "description": text,
                "quantity": qty,
                "unit_amount": amount,
                "tax_rate": 0.19,
                "discounts": [
                    {
                        "code": "SPRING15",
                        "description": "Spring sale: 15% off running gear",
                        "amount": round(amount * qty * 0.15),
                    }
                ]
                if sku.startswith("SKU-RUN")
                else [],
            }
            for sku, text, qty, amount in items
        ],
        "payment_method": {
            "type": "card",
            "card": {
                "brand": "visa",
                "last4": "4242",
                "exp_month": 12,
                "exp_year": 2027,
                "three_d_secure": {"version": "2.2.0", "result": "authenticated"},
            },
        },
        "metadata": {
            "order_id": "ORD-2024-0501-77812",
            "channel": channel,
            "campaign": "newsletter-may",
            "ab_bucket": "checkout-v2",
        },
        "risk": {"score": 12, "ip_country": "DE", "checks": {"cvc": "pass", "address_line1": "pass"}},
        "statement_descriptor": "EXAMPLE SHOP BERLIN",
        "description": "Order ORD-2024-0501-77812: trail running shoes and accessories, shipped standard to "
        "Berlin. Customer asked us to combine this with the earlier back-order if it arrives within two days.",
        "receipt_signature": receipt,
        "note": "",
    }
    pad = size - len(json.dumps(doc, ensure_ascii=ascii_only).encode())
    if pad < 0:
        raise ValueError(f"the document is {size - pad} bytes without its note, more than {size}")
    filler = "Thanks for shopping with us. Returns are free within 30 days; keep the receipt and the box. " * 50
    doc["note"] = filler[:pad]
    body = json.dumps(doc, ensure_ascii=ascii_only).encode()
    assert len(body) == size
    return body


def attack_document() -> bytes:
    """The same document with a SQL injection in one string value (the same note, so a few bytes longer)."""
    return payment_document(BODY_BYTES + len(ATTACK_STRING) - len("web"), channel=ATTACK_STRING)


# --------------------------------------------------------------------------
# Servers


def waf_toml(enabled: bool) -> str:
    return f"\n[waf]\nenabled = {'true' if enabled else 'false'}\n"


class EdgewardWafStatic(Edgeward):
    """edgeward, HTTPS listener only (ALPN http/1.1), one static route, the firewall on or off."""

    protocols = frozenset({"https"})
    http_versions = frozenset({"h1"})

    def __init__(self, env: BenchEnv, name: str, *, waf: bool) -> None:
        super().__init__(env, tls_extra=TLS_EDGEWARD, extra_config=waf_toml(waf))
        self.name = name  # type: ignore[misc]
        self.waf = waf


class EdgewardWafProxy(EdgewardProxy):
    """bench/proxy.py's edgeward proxy (no cache), its route also taking POST, the firewall on or off."""

    def __init__(self, env: BenchEnv, name: str, *, waf: bool) -> None:
        super().__init__(env, cache=False, methods=("GET", "HEAD", "POST"), tail=waf_toml(waf), name=name)
        self.waf = waf


class ApiOrigin(Origin):
    """bench/proxy.py's origin plus the payment endpoint, which answers a POST with a small JSON object."""

    name = "origin-nginx-api"

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command(ports, confdir, quic)
        conf = confdir / "nginx.conf"
        anchor = f"        location = {STATUS_PATH} {{"
        text = conf.read_text()
        if anchor not in text:
            raise ServerError(f"{self.name}: bench/proxy.py's origin config changed; no {anchor.strip()!r} in it")
        location = (
            f"        location = {POST_PATH} {{\n"
            "            default_type application/json;\n"
            f"            return 200 '{ORIGIN_ANSWER}';\n"
            "        }\n"
        )
        conf.write_text(text.replace(anchor, location + anchor))
        return argv, env


@dataclass
class Servers:
    origin: ApiOrigin
    get_off: EdgewardWafStatic
    get_on: EdgewardWafStatic
    post_off: EdgewardWafProxy
    post_on: EdgewardWafProxy


def make_servers(env: BenchEnv) -> Servers:
    return Servers(
        origin=ApiOrigin(replace(env, server_cpu=CLIENT_CPU)),
        get_off=EdgewardWafStatic(env, "edgeward-static-waf-off", waf=False),
        get_on=EdgewardWafStatic(env, "edgeward-static-waf-on", waf=True),
        post_off=EdgewardWafProxy(env, "edgeward-proxy-waf-off", waf=False),
        post_on=EdgewardWafProxy(env, "edgeward-proxy-waf-on", waf=True),
    )


# --------------------------------------------------------------------------
# Checks


@dataclass(frozen=True)
class Inputs:
    body: bytes
    attack_body: bytes
    body_file: Path
    lua_varied: Path
    lua_post: Path


def make_inputs(workdir: Path) -> Inputs:
    body = payment_document()
    body_file = workdir / "payment.json"
    body_file.write_bytes(body)
    lua_varied = workdir / "varied.lua"
    lua_varied.write_text(LUA_VARIED.replace("START", str(VARIED_START), 1))
    lua_post = workdir / "post.lua"
    lua_post.write_text(LUA_POST.replace("BODY_FILE", json.dumps(str(body_file.resolve()))))
    return Inputs(body, attack_document(), body_file, lua_varied.resolve(), lua_post.resolve())


def https_request(
    server: RunningServer, method: str, target: str, headers: tuple[tuple[str, str], ...], body: bytes | None = None
) -> tuple[int, bytes]:
    """One request over TLS (certificate verified against the bench CA, ALPN http/1.1): (status, body)."""
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection("127.0.0.1", server.ports["https"], timeout=10, context=ctx)
    try:
        conn.request(method, target, body=body, headers=dict(headers))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_clean(server: RunningServer, post: bool, inputs: Inputs) -> dict[str, Any]:
    """The request wrk sends gets a 200 with the file's bytes (GET) or the origin's answer (POST)."""
    if post:
        status, body = https_request(server, "POST", POST_PATH, POST_HEADERS, inputs.body)
        expected = ORIGIN_ANSWER.encode()
    else:
        status, body = https_request(server, "GET", f"{GET_PATH}?{GET_QUERY}", GET_HEADERS)
        expected = (server.www / GET_PATH.lstrip("/")).read_bytes()
    if status != 200 or body != expected:
        raise WorkloadError(
            f"{'POST ' + POST_PATH if post else 'GET ' + GET_PATH} -> {status}, {len(body)} bytes {body[:120]!r} "
            f"(want 200 and {len(expected)} bytes); log tail:\n{server.log_tail()}"
        )
    return {"status": status, "length": len(body)}


def check_attacks(
    server: RunningServer, origin: RunningServer | None, post: bool, waf: bool, inputs: Inputs
) -> dict[str, Any]:
    """Attacks get a 403 with the firewall and not without it; a refused request never reaches the origin."""
    tries: list[tuple[str, str, tuple[tuple[str, str], ...], bytes | None]] = []
    if post:
        tries += [(POST_PATH, "body", POST_HEADERS, inputs.attack_body)]
        tries += [(f"{POST_PATH}?{q}", q, POST_HEADERS, inputs.body) for q in ATTACK_QUERIES]
    else:
        tries += [(f"{GET_PATH}?{q}", q, GET_HEADERS, None) for q in ATTACK_QUERIES]
    out: dict[str, Any] = {}
    for target, what, headers, body in tries:
        before = origin_status(origin)["requests"] if origin is not None else 0
        status, _ = https_request(server, "POST" if post else "GET", target, headers, body)
        # One status read is one origin request too.
        reached = origin_status(origin)["requests"] - before - 1 if origin is not None else None
        if waf and status != 403:
            raise WorkloadError(f"firewall on, but {what!r} -> {status}, want 403; log tail:\n{server.log_tail()}")
        if not waf and status == 403:
            raise WorkloadError(f"firewall off, but {what!r} -> 403; log tail:\n{server.log_tail()}")
        if reached is not None and reached != (0 if waf else 1):
            raise WorkloadError(f"{what!r} -> {status}, and the origin served {reached} request(s) for it")
        out[what] = {"status": status, "origin_requests": reached}
    return out


# --------------------------------------------------------------------------
# Measurement


Kind = Literal["get", "get_varied", "post"]


@dataclass(frozen=True)
class Cell:
    name: str
    server: Callable[[Servers], Edgeward]
    kind: Kind
    waf: bool
    description: str


CELL_SPECS: dict[str, Cell] = {
    c.name: c
    for c in (
        Cell(
            "get_off",
            lambda s: s.get_off,
            "get",
            False,
            f"[routes.static], [waf] enabled = false; wrk GET {GET_PATH}?{GET_QUERY} with browser headers",
        ),
        Cell("get_on", lambda s: s.get_on, "get", True, "the same with [waf] enabled = true (profile balanced)"),
        Cell(
            "get_off_varied",
            lambda s: s.get_off,
            "get_varied",
            False,
            f"as get_off, the page value counting up from {VARIED_START} (wrk Lua): every query new",
        ),
        Cell(
            "get_on_varied",
            lambda s: s.get_on,
            "get_varied",
            True,
            "as get_on with get_off_varied's queries: the engine's memory of clean values cannot answer for them",
        ),
        Cell(
            "post_off",
            lambda s: s.post_off,
            "post",
            False,
            f"[routes.proxy] -> nginx origin on CPU 1, [waf] enabled = false; wrk POST {POST_PATH}, "
            f"{BODY_BYTES}-byte JSON (wrk Lua)",
        ),
        Cell("post_on", lambda s: s.post_on, "post", True, "the same with [waf] enabled = true (profile balanced)"),
    )
}


def wrk_args(kind: Kind, inputs: Inputs) -> tuple[str, list[str]]:
    """(path and query, wrk options before the URL) of a cell's requests."""
    headers = POST_HEADERS if kind == "post" else GET_HEADERS
    args = [arg for name, value in headers for arg in ("-H", f"{name}: {value}")]
    if kind == "post":
        return POST_PATH, [*args, "-s", str(inputs.lua_post)]
    if kind == "get_varied":
        return f"{GET_PATH}?{GET_QUERY}", [*args, "-s", str(inputs.lua_varied)]
    return f"{GET_PATH}?{GET_QUERY}", args


def measure(
    cell: Cell, server: RunningServer, origin: RunningServer | None, duration: float, inputs: Inputs
) -> Measurement:
    post = cell.kind == "post"
    checks: dict[str, Any] = {
        "before": check_clean(server, post, inputs),
        "attacks_before": check_attacks(server, origin, post, cell.waf, inputs),
    }
    target, args = wrk_args(cell.kind, inputs)
    url = server.url("https", target)
    warm = _wrk(url, WARMUP_SECONDS, WRK_CONNECTIONS, extra_args=args)
    check_wrk(warm, server.log_tail)
    server.check_alive()
    st0 = origin_status(origin) if origin is not None else None
    origin0 = origin.cpu_seconds() if origin is not None else 0.0
    with ServerCpu(server) as cpu:
        result = _wrk(url, duration, WRK_CONNECTIONS, extra_args=args)
    origin_cpu = origin.cpu_seconds() - origin0 if origin is not None else 0.0
    st1 = origin_status(origin) if origin is not None else None
    server.check_alive()
    result.update(cpu.detail())
    check_wrk(result, server.log_tail)
    requests = result["requests"]
    result["warmup"] = {"requests": warm["requests"], "requests_per_sec": warm["requests_per_sec"]}
    result["origin_cpu_util"] = round(origin_cpu / (cpu.wall_seconds or 1.0), 3)
    result["load_core_cpu_util"] = round(result["client_cpu_util"] + result["origin_cpu_util"], 3)
    if st0 is not None and st1 is not None:
        served = st1["requests"] - st0["requests"] - 1  # minus st1's own status read
        result["origin"] = {"requests": served, "new_connections": st1["accepts"] - st0["accepts"] - 1}
        if served < requests:
            raise WorkloadError(f"the origin served {served} requests but wrk completed {requests}")
    if cell.kind == "get_varied":
        sent = int(result.get("script", {}).get("queries_sent", -1))
        if sent < requests:
            raise WorkloadError(f"the varied-query script reports {sent} queries for {requests} requests")
        result["distinct_queries"] = sent
    checks["after"] = check_clean(server, post, inputs)
    checks["attacks_after"] = check_attacks(server, origin, post, cell.waf, inputs)
    result["checks"] = checks
    values = {"req_per_s": result["requests_per_sec"]}
    if cpu.cpu_seconds > 0:
        values["req_per_server_cpu_s"] = requests / cpu.cpu_seconds
        result["server_cpu_us_per_req"] = round(1e6 * cpu.cpu_seconds / requests, 2)
    return Measurement(values, result)


def run_cell(
    name: str, rnd: int, prefix: str, servers: Servers, inputs: Inputs, args: argparse.Namespace, meta: dict[str, Any]
) -> tuple[Measurement | None, bool, str | None]:
    """Start the origin (POST cells) and a fresh server, check, measure once."""
    spec = CELL_SPECS[name]
    note_busy_before(args.wait_quiet, meta, rnd, name, prefix)
    server = spec.server(servers)
    try:
        with contextlib.ExitStack() as stack:
            origin = None
            if spec.kind == "post":
                origin = stack.enter_context(servers.origin.start("http"))
                meta["commands"][servers.origin.name] = " ".join(map(str, origin.argv))
                assert isinstance(server, EdgewardWafProxy)
                server.origin_port = origin.ports["http"]
            running = stack.enter_context(server.start("https"))
            meta["commands"][server.name] = " ".join(map(str, running.argv))
            m = measure(spec, running, origin, args.duration, inputs)
            m.detail["server_log_tail"] = running.log_tail(5)
    except (ServerError, WorkloadError, OSError, http.client.HTTPException, subprocess.SubprocessError) as exc:
        err = f"{type(exc).__name__}: {exc}"
        log(f"{prefix} ERROR {err[:1500]}")
        return None, False, err
    d = m.detail
    d["round"] = rnd
    f = foreign_cpu(d, "server_cpu_util", "client_cpu_util", "origin_cpu_util")
    d["foreign_cpu_util"] = f
    noisy = f is not None and f > FOREIGN_THRESHOLD
    shown = f"req/s={m.values['req_per_s']:,.0f}, per CPU-s={m.values.get('req_per_server_cpu_s', 0):,.0f}"
    shown += f" (server {d['server_cpu_util']:.2f}, wrk {d['client_cpu_util']:.2f}, origin {d['origin_cpu_util']:.2f})"
    if noisy:
        shown += f" warning: foreign load {f:.2f} CPU"
    log(f"{prefix} {shown}")
    return m, noisy, None


# --------------------------------------------------------------------------
# The engine in process


def _best_us(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    return round(min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6, 2)


def _lower(headers: tuple[tuple[str, str], ...]) -> dict[bytes, bytes]:
    """Headers as the protocols hand them to the pipeline: lower-case names, bytes."""
    return {name.lower().encode("latin-1"): value.encode("latin-1") for name, value in headers}


def without_escaped_quote(body: bytes) -> bytes:
    """*body* without the two ``\\"`` around ``slate grey`` in a line item (4 bytes shorter)."""
    out = body.replace(b'colour \\"slate grey\\"', b"colour slate grey")
    if b'\\"' in out or out == body:
        raise ValueError("the document's escaped quotes changed; update without_escaped_quote")
    return out


def engine_profile(body: bytes, number: int = 2000) -> dict[str, Any]:
    """Where the firewall's time goes on this bench's requests, in process (timeit, best of 7; one core).

    ``steps`` are inspect_body's own steps, in its order, on the POST body: the media type,
    cutting the body at its quotes (for the entropy gate), JSON validity and limits (the C
    parser, then the rest), lowering, matching as sent and decoded, joining the string
    literals, and the entropy bound. Their sum is close to ``post_body``. ``match_walk``
    splits matching further (see there). ``variants_us`` times inspect_body on the same
    document as JavaScript's ``JSON.stringify`` writes it (UTF-8, no \\u escapes), and
    without its escaped quotes (``\\"`` decodes to a character patterns use, so the
    decoded text is matched again).
    """
    engine = WafEngine(Waf(enabled=True).resolved_profiles()[Waf().profile])
    post_headers, get_headers = _lower(POST_HEADERS), _lower(GET_HEADERS)
    path, get_path, query = POST_PATH.encode(), GET_PATH.encode(), GET_QUERY.encode()
    if engine.inspect("POST", path, b"", post_headers, body) is not None:
        raise SystemExit("the bench's POST body is refused by the firewall in process")
    if engine.inspect_head("GET", get_path, query, get_headers) is not None:
        raise SystemExit("the bench's GET is refused by the firewall in process")
    counter = itertools.count(VARIED_START)
    before, _, after = query.partition(b"page=2&")

    def new_query() -> object:
        return engine.inspect_head("GET", get_path, b"%spage=%d&%s" % (before, next(counter), after), get_headers)

    profile = engine.profile
    ctype = post_headers[b"content-type"]
    pieces = jsonbody.split(body)
    text = body.lower().decode("latin-1")
    sample = jsonbody.string_bytes(pieces)
    matcher = engine._matcher  # the automaton inspect_body uses
    limits = engine._limits
    json_parse = _best_us(lambda: json.loads(body.decode("utf-8")), number)
    steps = {
        "media_type": _best_us(lambda: body_kind(ctype), number * 10),
        "json_split": _best_us(lambda: jsonbody.split(body), number),
        "json_parse": json_parse,
        "json_limits": round(_best_us(lambda: jsonbody.check(body, limits, pieces), number) - json_parse, 2),
        "lower_decode": _best_us(lambda: body.lower().decode("latin-1"), number),
        "match": _best_us(lambda: matcher.scan([text], plus=False, lines=False), number),
        "string_literals": _best_us(lambda: jsonbody.string_bytes(pieces), number),
        "entropy": _best_us(lambda: entropy.exceeds(sample, profile.entropy_threshold), number),
    }
    total = _best_us(lambda: engine.inspect_body("POST", post_headers, body), number)
    timings = {
        "post_head_repeat": _best_us(lambda: engine.inspect_head("POST", path, b"", post_headers), number * 10),
        "post_body": total,
        "get_head_repeat": _best_us(lambda: engine.inspect_head("GET", get_path, query, get_headers), number * 10),
        "get_head_new_query": _best_us(new_query, number),
    }
    return {
        "body_bytes": len(body),
        "body_backslashes": body.count(b"\\"),
        "string_literal_bytes": len(sample),
        "us": timings,
        "steps_us": steps,
        "steps_sum_us": round(sum(steps.values()), 2),
        "match_walk": match_walk(matcher, text, number),
        "variants_us": {
            name: _best_us(partial(engine.inspect_body, "POST", post_headers, variant), number)
            for name, variant in (
                ("as_sent", body),
                ("utf8_unescaped", payment_document(ascii_only=False)),
                ("no_escaped_quote", without_escaped_quote(body)),
            )
        },
        "cprofile_post_body": cprofile_rows(partial(engine.inspect_body, "POST", post_headers, body), number),
        "cprofile_get_head_new_query": cprofile_rows(new_query, number),
    }


def match_walk(matcher: Matcher, text: str, number: int) -> list[dict[str, Any]]:
    """Matcher.scan's steps on one input, in its order, as it takes them for this input: (step, µs).

    As sent: collapse whitespace if needed, one automaton pass. Then, while a decoder could
    change the text, a decoding pass; a pass that changed something other than into
    non-ASCII letters (``active``) is collapsed if needed and scanned again. Written after
    matcher.py; the sum is checked against a real ``scan`` (``scan_us``).
    """
    walk: list[dict[str, Any]] = []

    def timed(step: str, fn: Callable[[], Any]) -> Any:
        walk.append({"step": step, "us": _best_us(fn, number)})
        return fn()

    current = text
    if timed("as sent: needs_collapse", lambda: n.needs_collapse(text)):
        current = timed("as sent: collapse", lambda: n.collapse(text))
    timed("as sent: automaton pass", lambda: matcher.first(current))
    for p in range(1, MAX_PASSES + 1):
        if not timed(f"pass {p}: needs_decoding", partial(n.needs_decoding, current, False)):
            break
        decoded, active = timed(f"pass {p}: decode_once", partial(n.decode_once, current, False))
        if decoded == current:
            break
        if active:
            if timed(f"pass {p}: needs_collapse", partial(n.needs_collapse, decoded)):
                decoded = timed(f"pass {p}: collapse", partial(n.collapse, decoded))
            timed(f"pass {p}: automaton pass", partial(matcher.first, decoded))
        current = decoded
    walk.append({"step": "(sum)", "us": round(sum(w["us"] for w in walk), 2)})
    walk.append({"step": "scan_us", "us": _best_us(lambda: matcher.scan([text], plus=False, lines=False), number)})
    return walk


def cprofile_rows(call: Callable[[], object], number: int) -> list[dict[str, Any]]:
    """The functions *call* spends its time in, per call, most own time first (cProfile's overhead included)."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(number):
        call()
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (filename, line, func), (_cc, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = Path(filename)
        label = f"{where.parent.name}/{where.name}:{line} {func}" if line else func
        rows.append(
            {
                "function": label,
                "calls_per_call": round(calls / number, 2),
                "own_us_per_call": round(tottime / number * 1e6, 2),
                "cumulative_us_per_call": round(cumtime / number * 1e6, 2),
            }
        )
    rows.sort(key=lambda r: r["own_us_per_call"], reverse=True)
    return rows[:15]


def render_profile(p: dict[str, Any]) -> list[str]:
    us, steps, variants = p["us"], p["steps_us"], p["variants_us"]
    lines = [
        f"In process (timeit, best of 7, µs per call): POST head {us['post_head_repeat']:.2f}, "
        f"POST {p['body_bytes']}-byte JSON body **{us['post_body']:.1f}** ({variants['utf8_unescaped']:.1f} for "
        f"the same document in UTF-8 without \\u escapes, {variants['no_escaped_quote']:.1f} without its "
        f"escaped quotes); GET head {us['get_head_repeat']:.2f} "
        f"(every value seen before), {us['get_head_new_query']:.2f} with a new query each time.",
        "",
        "| inspect_body step | µs | share |",
        "|---|---:|---:|",
    ]
    total = p["steps_sum_us"] or 1.0
    lines += [f"| {name} | {v:.2f} | {v / total:.0%} |" for name, v in steps.items()]
    lines += [
        f"| (sum) | {p['steps_sum_us']:.2f} | |",
        "",
        f"The body has {p['body_backslashes']} backslashes; entropy looks at {p['string_literal_bytes']} bytes of "
        "string literals. Matching, step by step:",
        "",
        "| match step | µs |",
        "|---|---:|",
    ]
    lines += [f"| {w['step']} | {w['us']:.2f} |" for w in p["match_walk"]]
    lines.append("")
    for key, what in (("cprofile_post_body", "inspect_body, POST"), ("cprofile_get_head_new_query", "GET, new query")):
        lines += [
            f"| {what}: function (cProfile, own time) | calls per call | own µs | cumulative µs |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| `{r['function']}` | {r['calls_per_call']:g} | {r['own_us_per_call']:.2f} | "
            f"{r['cumulative_us_per_call']:.2f} |"
            for r in p[key][:10]
        ]
        lines.append("")
    return lines[:-1]


# --------------------------------------------------------------------------
# Results


def summary(results: dict[str, CellResult]) -> dict[str, Any]:
    """Ratios firewall on / off: judged on req/s, with requests per server CPU-second reported beside it."""
    out: dict[str, Any] = {"targets": [], "derived": {}}
    for a, b, target in PAIRS:
        if a not in results or b not in results:
            continue
        # A load-core-bound cell is a lower bound on its server's rate: bound numerator -> the
        # ratio is a lower bound, bound denominator -> an upper bound.
        a_bound, b_bound = results[a].saturated("load_core_cpu_util"), results[b].saturated("load_core_cpu_util")
        bound = None if a_bound == b_bound else ("lower" if a_bound else "upper")
        for metric in ("req_per_s", "req_per_server_cpu_s"):
            r = ratio(results, a, b, metric)
            status = target_status(r, target) if target is not None else "reported"
            if target is not None and metric == "req_per_s" and r is not None:
                if a_bound and b_bound:
                    status = "inconclusive: both load-core-bound"
                elif a_bound and r < target:
                    status = f"inconclusive: {a} load-core-bound"
                elif b_bound and r >= target:
                    status = f"inconclusive: {b} load-core-bound"
            out["targets"].append(
                {
                    "name": f"{a} / {b}, {metric}",
                    "ratio": r,
                    "per_round": paired_ratios(results, a, b, metric),
                    "target": target,
                    "status": status,
                    "judged": target is not None and metric == "req_per_s",
                    "bound": bound if metric == "req_per_s" else None,
                }
            )
    us = {
        name: statistics.median(v)
        for name, c in results.items()
        if (v := [x["server_cpu_us_per_req"] for x in c.details if "server_cpu_us_per_req" in x])
    }
    out["derived"]["server_cpu_us_per_req"] = us
    for a, b, _ in PAIRS:
        if a in us and b in us:
            out["derived"][f"{a}_over_{b}_cost_us_per_req"] = round(us[a] - us[b], 2)
    return out


METRIC_UNITS = {"req_per_s": "req/s", "req_per_server_cpu_s": "req/CPU-s"}


def render_markdown(
    results: dict[str, CellResult], meta: dict[str, Any], summ: dict[str, Any], profile: dict[str, Any] | None
) -> str:
    lines = [
        f"`bench/waf.py --rounds {meta['rounds']} --duration {meta['duration']:g}` ({meta['date']}, "
        f"{meta['cpu']}, git {meta['git_rev']}): edgeward one worker on CPU {SERVER_CPU}; wrk (-t1 "
        f"-c{WRK_CONNECTIONS}, HTTPS/1.1 keep-alive) and, for the POST cells, the nginx origin on CPU "
        f"{CLIENT_CPU}; {meta['rounds']} interleaved rounds, fresh processes per cell, medians.",
        *load_warnings(meta),
        "",
        "| cell | req/s | req per server CPU-s | server µs/req | server CPU | wrk CPU | origin CPU | rounds (req/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    us = summ["derived"].get("server_cpu_us_per_req", {})
    for name in meta["cells"]:
        c = results[name]
        rounds = ", ".join(f"{v:,.0f}" for v in c.values.get("req_per_s", []))
        if c.errors:
            rounds += f" ({len(c.errors)} ERR)"
        rps = fmt(c.median("req_per_s"))
        if c.saturated("load_core_cpu_util") and c.median("req_per_s") is not None:
            rps = "≥" + rps
        origin = fmt(c.util("origin_cpu_util"), 2) if CELL_SPECS[name].kind == "post" else "—"
        lines.append(
            f"| {name} | {rps} | {fmt(c.median('req_per_server_cpu_s'))} | {fmt(us.get(name), 1)} | "
            f"{fmt(c.util('server_cpu_util'), 2)} | {fmt(c.util('client_cpu_util'), 2)} | {origin} | {rounds} |"
        )
    lines += ["", "| ratio | of medians | per round | target | status |", "|---|---:|---|---:|---|"]
    for t in summ["targets"]:
        name = t["name"] + ("" if t["judged"] else " (reported)")
        r = "—" if t["ratio"] is None else f"{t['ratio']:.2f}"
        if t.get("bound") and t["ratio"] is not None:
            r = ("≤" if t["bound"] == "upper" else "≥") + r
        per_round = ", ".join(f"{x:.2f}" for x in t.get("per_round", []))
        target = "—" if t["target"] is None else f"≥ {t['target']:g}"
        lines.append(f"| {name} | {r} | {per_round} | {target} | {t['status'] if t['judged'] else '—'} |")
    d = summ["derived"]
    costs = [f"`{a}` {d[k]:+.1f} µs over `{b}`" for a, b, _ in PAIRS if (k := f"{a}_over_{b}_cost_us_per_req") in d]
    if costs:
        lines += ["", "Server CPU per request the firewall adds: " + "; ".join(costs) + "."]
    if profile is not None:
        lines += ["", *render_profile(profile)]
    errs = [(name, e) for name in meta["cells"] for e in results[name].errors]
    if errs:
        lines += ["", "Errors:", ""]
        lines += [f"- {name}: {e.splitlines()[0][:300]}" for name, e in errs]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Orchestration


def uncommitted(path: str) -> list[str]:
    """Files under *path* that differ from the commit in ``git_rev``: the code measured is the work tree's."""
    proc = subprocess.run(
        ["git", "-C", str(BENCH_DIR.parent), "status", "--porcelain", "--", path],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return [line.strip() for line in proc.stdout.splitlines()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement (after a 1 s warm-up)")
    p.add_argument("--cells", default="", help=f"comma list of cells (default all: {','.join(CELLS)})")
    p.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "waf.json")
    p.add_argument("--ingress", type=Path, default=DEFAULT_INGRESS)
    p.add_argument("--wait-quiet", type=float, default=30.0, metavar="S")
    p.add_argument(
        "--retry-noisy",
        type=int,
        default=2,
        metavar="N",
        help="measure a cell again, up to N times, when foreign CPU load shared the cores during it",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the in-process engine profile")
    p.add_argument("--profile-only", action="store_true", help="print the in-process engine profile and stop")
    p.add_argument("--keep-workdir", action="store_true")
    args = p.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()] or list(CELLS)
    bad = [c for c in cells if c not in CELL_SPECS]
    if bad:
        p.error(f"unknown cell(s) {bad}; known: {list(CELLS)}")
    args.cells = [c for c in CELLS if c in cells]
    if args.rounds < 1 or args.duration < 1:
        p.error("--rounds and --duration must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile_only:
        print("\n".join(render_profile(engine_profile(payment_document()))))
        return 0
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    for tool in ("taskset", "wrk", "nginx"):
        if shutil.which(tool) is None and not (tool == "nginx" and Path("/usr/sbin/nginx").exists()):
            raise SystemExit(f"{tool} is required (apt-get install -y {tool})")
    pinned = pin_self_to_client_cpu()
    nofile = raise_nofile()
    with scratch_dir("edgeward-waf-bench-", args.keep_workdir) as workdir:
        www = workdir / "www"
        make_www(www)
        env = BenchEnv(
            server_cpu=SERVER_CPU,
            workdir=workdir,
            www=www,
            certs=make_certs(workdir / "tls"),
            bench_dir=BENCH_DIR,
            peers_venv=BENCH_DIR / ".venv-peers",
            ingress_bin=args.ingress,
        )
        servers = make_servers(env)
        inputs = make_inputs(workdir)
        meta = common_meta("bench/waf.py", argv, args.rounds, args.duration)
        meta.update(
            {
                "wrk_connections": WRK_CONNECTIONS,
                "cells": args.cells,
                "cell_descriptions": {c: CELL_SPECS[c].description for c in args.cells},
                "pinned": {
                    "server_cpu": SERVER_CPU,
                    "client_cpu": CLIENT_CPU if pinned else None,
                    "origin_cpu": CLIENT_CPU,
                },
                "rlimit_nofile": list(nofile),
                "uncommitted_ingress_changes": uncommitted("ingress"),
                "requests": {
                    "get": {"target": f"{GET_PATH}?{GET_QUERY}", "headers": dict(GET_HEADERS)},
                    "post": {
                        "target": POST_PATH,
                        "headers": dict(POST_HEADERS),
                        "body": inputs.body.decode(),
                        "origin_answer": ORIGIN_ANSWER,
                    },
                    "attack_queries": list(ATTACK_QUERIES),
                    "attack_string_in_body": ATTACK_STRING,
                },
                "versions": {
                    "edgeward": servers.get_on.version(),
                    "nginx": servers.origin.version(),
                    "wrk": first_line(["wrk", "--version"]),
                    "openssl": first_line(["openssl", "version"]),
                    "python (harness)": sys.version.split()[0],
                },
                "configs": {
                    "post_off": servers.post_off.config_text(0, 0),
                    "post_on": servers.post_on.config_text(0, 0),
                    "get_waf_off": waf_toml(False),
                    "get_waf_on": waf_toml(True),
                },
            }
        )
        for name, version in meta["versions"].items():
            log(f"  {name}: {version}")
        profile = None
        if not args.no_profile:
            log("timing the engine in process ...")
            profile = engine_profile(inputs.body)
            log(f"  inspect_body {profile['us']['post_body']} µs, steps {profile['steps_us']}")

        def once(name: str, rnd: int, prefix: str) -> tuple[Measurement | None, bool, str | None]:
            return run_cell(name, rnd, prefix, servers, inputs, args, meta)

        results = run_rounds(args.cells, args.rounds, args.retry_noisy, once, meta)
        for s in (servers.get_on, servers.origin):
            confs = sorted((workdir / "conf").glob(f"{s.name}-*/*.conf")) + sorted(
                (workdir / "conf").glob(f"{s.name}-*/*.toml")
            )
            if confs:
                meta["configs"][s.name] = confs[-1].read_text()
        summ = summary(results)
        print(render_markdown(results, meta, summ, profile))
        out = {
            "meta": meta,
            "cells": {
                name: c.as_json(METRIC_UNITS, ("load_core_bound", "load_core_cpu_util"), ("origin_cpu_util",))
                for name, c in results.items()
            },
            **summ,
            "engine_profile": profile,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
