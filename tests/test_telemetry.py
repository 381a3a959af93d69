"""Telemetry end to end: the real edge, real clients, and a real OTLP collector that decodes what arrives.

The edge runs as a subprocess (tests/server.py) exporting to the OTLP/HTTP
and OTLP/gRPC receivers of tests/otlp_receiver.py, which decode every
request with opentelemetry-proto; requests go over HTTP/1.1 and HTTP/2
(httpx) and HTTP/3 (aioquic, tests/h3client.py), to static files and to the
recording origin of tests/origin.py. Everything asserted is what left the
edge: the spans the collector decoded, the traceparent the origin
received, the OTLP JSON Lines and audit files on disk (parsed with
opentelemetry-proto-json and plain `json`), the access log, /metrics, and
`ingress audit-verify`'s exit status.

Each test finds its own requests by a unique User-Agent, so the edges that
tests share (module-scoped, to keep server starts few) only ever gain
spans. Tests that change how the edge exports (sampling, a dead or slow
collector, reloads and shutdown) start their own.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.proto_json.trace.v1.trace import TracesData

from tests.conftest import base_config
from tests.h3client import H3Transport
from tests.origin import Origin
from tests.otlp_receiver import OTLPGrpcReceiver, OTLPHttpReceiver, Receiver
from tests.pki import CA, Issued
from tests.ports import refused_origin
from tests.server import Server, wait_for
from tests.test_metrics import Parsed, parse_exposition
from tests.test_policy import Keys, bearer, mint, policy_config

StartServer = Callable[..., Server]
INGRESS = Path(sys.executable).with_name("ingress")
SERVER = Span.SPAN_KIND_SERVER
CLIENT = Span.SPAN_KIND_CLIENT
ERROR = Status.STATUS_CODE_ERROR
UNSET = Status.STATUS_CODE_UNSET
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "vendor=opaque,other=1"
VERSION = {"h1": "1.1", "h2": "2", "h3": "3"}
HTTP_VERSION = {"h1": "HTTP/1.1", "h2": "HTTP/2", "h3": "HTTP/3"}
# Span flags (trace.proto SpanFlags): sampled, "is remote" known, parent is remote.
SAMPLED, HAS_IS_REMOTE, REMOTE_PARENT = 0x01, 0x100, 0x200
# Short intervals everywhere, so what is asserted shows within a fraction of a second.
FAST_OTLP = {"interval": 0.1, "metrics_interval": 1.0}


# --------------------------------------------------------------------------- reading spans


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(item) for item in value.array_value.values)
    assert kind is not None, "an AnyValue with nothing set"
    return getattr(value, kind)


def attrs(span: Any) -> dict[str, Any]:
    keys = [kv.key for kv in span.attributes]
    assert len(keys) == len(set(keys)), f"duplicate attribute keys: {keys}"
    return {kv.key: value_of(kv.value) for kv in span.attributes}


def agent() -> str:
    """A User-Agent no other request carries: how a test finds its own SERVER span."""
    return f"edgeward-telemetry-test/{uuid.uuid4().hex[:16]}"


def server_span(collector: Receiver, user_agent: str, timeout: float = 10.0) -> Span:
    """The one SERVER span of the request sent with `user_agent`, once the collector has it."""
    found: list[Span] = []

    def arrived() -> bool:
        found[:] = [
            s for s in collector.spans() if s.kind == SERVER and attrs(s).get("user_agent.original") == user_agent
        ]
        return bool(found)

    wait_for(arrived, timeout, f"the SERVER span of {user_agent}")
    assert len(found) == 1, found
    return found[0]


def children(collector: Receiver, parent: Span) -> list[Span]:
    """CLIENT spans under `parent`, in the order they started (they are exported in the same batch)."""
    spans = [s for s in collector.spans() if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id]
    return sorted(spans, key=lambda s: s.start_time_unix_nano)


def check_client_span(span: Span, server: Span, origin_port: int, upstream: str) -> dict[str, Any]:
    """What every CLIENT span carries; returns its attributes for the caller's specifics."""
    got = attrs(span)
    assert span.kind == CLIENT
    assert span.name == "GET"
    assert span.trace_id == server.trace_id
    assert span.parent_span_id == server.span_id
    assert span.span_id not in (server.span_id, b"\0" * 8)
    assert server.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
    assert span.end_time_unix_nano <= server.end_time_unix_nano
    assert span.flags == SAMPLED | HAS_IS_REMOTE  # its parent is this edge's own span, never remote
    assert got["http.request.method"] == "GET"
    assert got["server.address"] == "127.0.0.1"
    assert got["server.port"] == origin_port
    assert got["edge.upstream"] == upstream
    return got


# --------------------------------------------------------------------------- the audit file, the access log, /metrics


def audit_records(path: Path) -> list[dict[str, Any]]:
    """Each line's one OTLP log record, with its attributes flattened to {key: JSON value}."""
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        (resource_logs,) = json.loads(line)["resourceLogs"]
        (scope_logs,) = resource_logs["scopeLogs"]
        (record,) = scope_logs["logRecords"]
        flat = {}
        for item in record.get("attributes", []):
            ((_, value),) = item["value"].items()
            flat[item["key"]] = value
        out.append({**record, "attrs": flat})
    return out


def audit_event(path: Path, name: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
    """The first audit record named `name` whose top-level fields include `match`, once it is written."""
    found: list[dict[str, Any]] = []

    def written() -> bool:
        found[:] = [
            r
            for r in audit_records(path)
            if r["attrs"].get("event.name") == name and all(r.get(k) == v for k, v in match.items())
        ]
        return bool(found)

    wait_for(written, timeout, f"an audit record {name} {match} in {path}")
    return found[0]


def access_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def scrape(server: Server) -> dict[str, Parsed]:
    reply = httpx.get(server.admin_url("/metrics"), timeout=5)
    assert reply.status_code == 200
    return parse_exposition(reply.text)


def telemetry_counts(server: Server, family: str, signal_name: str) -> float:
    """edgeward_telemetry_{exported,dropped}_total for one signal, summed over reasons and workers; 0 if absent."""
    fam = scrape(server).get(family)
    return fam.total(signal=signal_name) if fam is not None else 0.0


# --------------------------------------------------------------------------- clients


@dataclass
class Clients:
    """httpx clients over each protocol version, all closed when the test ends."""

    ca: CA
    made: list[httpx.Client]

    def __call__(self, version: str, cert: Issued | None = None, local: str | None = None) -> httpx.Client:
        if version == "h3":
            assert local is None, "the HTTP/3 client always binds 127.0.0.1"
            transport: httpx.BaseTransport = H3Transport(
                str(self.ca.pem), str(cert.cert) if cert else None, str(cert.key) if cert else None
            )
        else:
            context = ssl.create_default_context(cafile=str(self.ca.pem))
            if cert is not None:
                context.load_cert_chain(str(cert.cert), str(cert.key))
            transport = httpx.HTTPTransport(verify=context, http2=version == "h2", local_address=local)
        client = httpx.Client(transport=transport, timeout=10.0)
        self.made.append(client)
        return client


@pytest.fixture
def clients(ca: CA) -> Iterator[Clients]:
    made = Clients(ca, [])
    yield made
    for client in made.made:
        client.close()


def get(client: httpx.Client, url: str, user_agent: str, version: str | None = None, **headers: str) -> httpx.Response:
    response = client.get(url, headers={"User-Agent": user_agent, **headers})
    if version is not None and url.startswith("https:"):
        assert response.http_version == HTTP_VERSION[version]
    return response


# --------------------------------------------------------------------------- the shared edge


@pytest.fixture(scope="module")
def jwt_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("telemetry-jwt")
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = directory / "idp.pub.pem"
    public_pem.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return Keys(private, public_pem, ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def deployer(ca: CA) -> Issued:
    """A client certificate the edge trusts, whose SPIFFE id maps to no role."""
    return ca.issue("telemetry-deployer", ["deployer.clients.test"], client=True, uris=("spiffe://edgeward.test/x",))


def make_site(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "hello.txt").write_text("hello world\n")
    (root / "sub" / "index.html").write_text("<h1>sub</h1>\n")
    return root


def port_of(url: str) -> int:
    return int(url.rpartition(":")[2])


@dataclass
class Rig:
    """The shared edge: policy, static files, a cached route, a flaky and a dead upstream, all exported."""

    server: Server
    collector: OTLPHttpReceiver
    origin: Origin
    access_log: Path
    audit: Path
    traces: Path
    flaky_dead: str  # the origin the flaky upstream tries first, which refuses connections
    gone: tuple[str, str]  # the dead upstream's two origins

    def url(self, path: str, listener: str = "https") -> str:
        if listener == "https":
            return f"https://localhost:{self.server.address('https')[1]}{path}"
        return self.server.url(listener, path)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, ca: CA, localhost_cert: Issued, jwt_keys: Keys) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("telemetry-rig")
    site = make_site(work / "www")
    access_log, audit, traces = work / "access.log", work / "audit.jsonl", work / "traces.jsonl"
    flaky_dead, gone = refused_origin(), (refused_origin(), refused_origin())
    with OTLPHttpReceiver() as collector, Origin(name="telemetry-origin") as origin:
        config = policy_config(site, localhost_cert, ca, jwt_keys, access_log, network={"deny": ["127.0.0.3/32"]})
        config["upstreams"] = [
            {"name": "app", "origins": [origin.url], "retries": 0},
            {"name": "flaky", "origins": [flaky_dead, origin.url], "retries": 1, "retry_budget": 1.0},
            {
                "name": "gone",
                "origins": list(gone),
                "retries": 1,
                "retry_budget": 1.0,
                "outlier": {"consecutive_failures": 0},
            },
            {"name": "sluggish", "origins": [origin.url], "retries": 0, "first_byte_timeout": 0.3},
        ]
        config["routes"] = [
            *config["routes"],
            {"path": "/sub", "static": {"root": str(site)}},
            {"path": "/cache", "methods": ["GET", "HEAD"], "proxy": {"upstream": "app", "cache": True}},
            {"path": "/echo", "proxy": {"upstream": "flaky"}},
            {"path": "/status", "proxy": {"upstream": "gone"}},
            {"path": "/stall", "proxy": {"upstream": "sluggish"}},
        ]
        config["cache"] = {"max_bytes": 1 << 20, "max_object_bytes": 64 * 1024}
        config["telemetry"] = {
            "interval": 0.05,
            "tracing": {"trusted_sources": ["127.0.0.1/32"]},
            "otlp": {"endpoint": collector.endpoint, **FAST_OTLP},
            "files": {"traces": str(traces)},
        }
        config["audit"] = {"file": str(audit)}
        server = Server(config, work, name="telemetry-rig")
        server.start()
        try:
            yield Rig(server, collector, origin, access_log, audit, traces, flaky_dead, gone)
        finally:
            server.stop()


# =========================================================================== 1. allowed requests, h1 h2 h3


@pytest.mark.parametrize("version", ["h1", "h2", "h3"])
def test_allowed_static_request_is_one_server_span(rig: Rig, clients: Clients, version: str) -> None:
    ua = agent()
    response = get(clients(version), rig.url("/hello.txt"), ua, version)
    assert (response.status_code, response.text) == (200, "hello world\n")

    span = server_span(rig.collector, ua)
    got = attrs(span)
    assert span.kind == SERVER
    assert span.name == "GET /"
    assert len(span.trace_id) == 16 and span.trace_id != b"\0" * 16
    assert len(span.span_id) == 8 and span.span_id != b"\0" * 8
    assert span.parent_span_id == b"" and span.trace_state == ""
    assert span.flags == SAMPLED | HAS_IS_REMOTE
    assert span.status.code == UNSET
    assert 0 < span.start_time_unix_nano <= span.end_time_unix_nano
    assert span.end_time_unix_nano - span.start_time_unix_nano < 5_000_000_000
    assert abs(span.end_time_unix_nano / 1e9 - time.time()) < 60
    expected = {
        "http.request.method": "GET",
        "url.path": "/hello.txt",
        "url.scheme": "https",
        "http.route": "/",
        "http.response.status_code": 200,
        "http.response.body.size": len("hello world\n"),
        "network.protocol.name": "http",
        "network.protocol.version": VERSION[version],
        "tls.protocol.name": "tls",
        "tls.protocol.version": "1.3",
        "tls.client.server_name": "localhost",
        "client.address": "127.0.0.1",
        "user_agent.original": ua,
        "edge.auth.outcome": "allowed",
        "edge.auth.reason": "no rule",
    }
    assert {k: got.get(k) for k in expected} == expected
    assert got["server.address"].split(":")[0] == "localhost"
    for absent in ("error.type", "edge.upstream", "edge.cache.status", "edge.auth.subject", "tls.client.hash.sha256"):
        assert absent not in got, absent
    assert children(rig.collector, span) == []

    # The access log line of the request names the same span.
    def logged() -> list[dict[str, Any]]:
        return [r for r in access_records(rig.access_log) if r["trace_id"] == span.trace_id.hex()]

    wait_for(lambda: bool(logged()), 5, "the access-log line of the request")
    (line,) = logged()
    assert line["span_id"] == span.span_id.hex()
    assert (line["path"], line["status"], line["protocol"]) == ("/hello.txt", 200, HTTP_VERSION[version])


@pytest.mark.parametrize("version", ["h1", "h2", "h3"])
def test_server_address_is_the_host_without_the_port(rig: Rig, clients: Clients, version: str) -> None:
    """Semantic conventions: server.address is the host of Host/:authority, server.port its port."""
    ua = agent()
    assert get(clients(version), rig.url("/hello.txt"), ua, version).status_code == 200
    got = attrs(server_span(rig.collector, ua))
    assert got["server.address"] == "localhost", got["server.address"]
    assert got.get("server.port") == rig.server.address("https")[1]


def test_plain_http_span_has_no_tls_attributes(rig: Rig) -> None:
    ua = agent()
    with httpx.Client(timeout=10) as client:
        assert get(client, rig.url("/hello.txt", "http"), ua).status_code == 200
    got = attrs(server_span(rig.collector, ua))
    assert got["url.scheme"] == "http"
    assert got["network.protocol.version"] == "1.1"
    for absent in ("tls.protocol.name", "tls.protocol.version", "tls.client.server_name"):
        assert absent not in got, absent


def raw_exchange(server: Server, source: str, data: bytes) -> bytes:
    """Send `data` on a plain HTTP connection from `source` and read what comes back until the edge closes."""
    with socket.create_connection(server.address("http"), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def only_span_from(collector: Receiver, client: str) -> Span:
    found: list[Span] = []

    def arrived() -> bool:
        found[:] = [s for s in collector.spans() if attrs(s).get("client.address") == client]
        return bool(found)

    wait_for(arrived, 10, f"a span from {client}")
    assert len(found) == 1, found
    return found[0]


def test_a_request_that_could_not_be_parsed_still_has_a_span(rig: Rig) -> None:
    """100% of requests: bytes that never became a request are a span named HTTP with the edge's status."""
    answer = raw_exchange(rig.server, "127.0.0.4", b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    span = only_span_from(rig.collector, "127.0.0.4")
    got = attrs(span)
    assert span.kind == SERVER
    assert span.name == "HTTP"
    assert got["http.response.status_code"] == 400
    assert got["network.protocol.version"] == "1.1"
    assert got["url.scheme"] == "http"
    assert span.status.code == UNSET
    for absent in ("http.route", "edge.auth.outcome", "user_agent.original"):
        assert absent not in got, absent


@pytest.mark.parametrize("version", ["h1", "h2", "h3"])
def test_a_request_the_limits_refuse_still_has_a_span(rig: Rig, clients: Clients, version: str) -> None:
    """A header block over max_header_bytes is answered 431 on every protocol, and is a span on every protocol."""

    def refused() -> list[Span]:
        return [
            s
            for s in rig.collector.spans()
            if attrs(s).get("http.response.status_code") == 431
            and attrs(s).get("network.protocol.version") == VERSION[version]
        ]

    before = len(refused())
    marker = agent()
    response = get(clients(version), rig.url("/hello.txt"), agent(), version, **{"x-big": "b" * 20_000})
    assert response.status_code == 431
    get(clients(version), rig.url("/hello.txt"), marker, version)
    server_span(rig.collector, marker)  # a later request's span is in: the refused one had its tick
    spans = refused()
    assert len(spans) == before + 1, f"no span for the refused {version} request"
    got = attrs(spans[-1])
    assert spans[-1].kind == SERVER
    assert got["url.scheme"] == "https"
    assert got["tls.protocol.version"] == "1.3"


# =========================================================================== 2. denied at each stage


@dataclass(frozen=True)
class Denial:
    path: str
    status: int
    outcome: str
    reason: str
    rule: str
    subject: str = ""


def check_denial(rig: Rig, ua: str, response: httpx.Response, want: Denial, version: str) -> None:
    assert response.status_code == want.status, response.text
    span = server_span(rig.collector, ua)
    got = attrs(span)
    assert span.kind == SERVER
    assert span.status.code == UNSET  # a refusal is the edge working, not failing
    assert got["http.response.status_code"] == want.status
    assert got["url.path"] == want.path
    assert got["network.protocol.version"] == VERSION[version]
    assert got["edge.auth.outcome"] == want.outcome
    assert got["edge.auth.reason"] == want.reason
    assert got.get("edge.auth.rule", "") == want.rule
    assert got.get("edge.auth.subject", "") == want.subject
    route = got.get("http.route", "")
    assert span.name == (f"GET {route}" if route else "GET")
    assert "error.type" not in got
    assert children(rig.collector, span) == []  # nothing behind the gate was asked

    # The audit trail holds the refusal, filed under the same trace and span.
    record = audit_event(rig.audit, "edge.auth.denied", traceId=span.trace_id.hex())
    assert record["spanId"] == span.span_id.hex()
    assert record["eventName"] == "edge.auth.denied"
    assert record["severityText"] == "WARN"
    assert record["attrs"]["edge.auth.outcome"] == want.outcome
    assert record["attrs"]["edge.auth.reason"] == want.reason
    assert record["attrs"]["url.path"] == want.path
    assert record["attrs"]["http.response.status_code"] == str(want.status)
    assert record["attrs"]["client.address"] == got["client.address"]
    if want.subject:
        assert record["attrs"]["edge.auth.subject"] == want.subject
    assert int(record["attrs"]["audit.seq"]) >= 1
    assert re.fullmatch(r"[0-9a-f]{64}", record["attrs"]["audit.prev_sha256"])
    # ... and the collector got it as an OTLP log record with the same ids.
    wait_for(
        lambda: any(r.trace_id == span.trace_id and r.span_id == span.span_id for r in rig.collector.log_records()),
        10,
        "the denial as an OTLP log record",
    )


@pytest.mark.parametrize("version", ["h1", "h2", "h3"])
def test_each_denial_stage_is_on_the_span_and_in_the_audit_trail(
    rig: Rig, clients: Clients, jwt_keys: Keys, version: str
) -> None:
    client = clients(version)
    now = int(time.time())
    expired = mint(jwt_keys, roles=["payments.read"], iat=now - 900, exp=now - 600)
    forged = mint(jwt_keys, jwt_keys.other, roles=["payments.read"])
    wrong_role = mint(jwt_keys, roles=["ops"], sub=f"rbac-{version}")
    cases: list[tuple[Denial, dict[str, str]]] = [
        (Denial("/internal/a.txt", 403, "denied_ip", "address refused by rule", "internal"), {}),
        (Denial("/ops/a.txt", 403, "denied_mtls", "no client certificate", "ops"), {}),
        (Denial("/payments/a.txt", 401, "denied_jwt", "expired", "payments"), bearer(expired)),
        (Denial("/payments/b.txt", 401, "denied_jwt", "no token", "payments"), {}),
        (
            Denial("/payments/c.txt", 403, "denied_rbac", "missing role", "payments", f"rbac-{version}"),
            bearer(wrong_role),
        ),
    ]
    sent = []
    for want, headers in cases:
        ua = agent()
        sent.append((ua, get(client, rig.url(want.path), ua, version, **headers), want))
    # A forged signature: refused by the JWT stage (its exact reason is the verifier's business).
    forged_ua = agent()
    forged_reply = get(client, rig.url("/payments/d.txt"), forged_ua, version, **bearer(forged))
    for ua, response, want in sent:
        check_denial(rig, ua, response, want, version)
    assert forged_reply.status_code == 401
    forged_attrs = attrs(server_span(rig.collector, forged_ua))
    assert forged_attrs["edge.auth.outcome"] == "denied_jwt" and forged_attrs["edge.auth.reason"]


def test_network_deny_is_denied_ip(rig: Rig, clients: Clients) -> None:
    """The global [policy.network] deny list (127.0.0.3), before any rule is looked up."""
    ua = agent()
    response = get(clients("h1", local="127.0.0.3"), rig.url("/hello.txt", "http"), ua)
    check_denial(rig, ua, response, Denial("/hello.txt", 403, "denied_ip", "address refused", ""), "h1")
    assert attrs(server_span(rig.collector, ua))["client.address"] == "127.0.0.3"


@pytest.mark.parametrize("version", ["h1", "h2", "h3"])
def test_rate_limited_request_names_the_limit_and_the_subject(
    rig: Rig, clients: Clients, jwt_keys: Keys, version: str
) -> None:
    client = clients(version)
    subject = f"limited-{version}-{uuid.uuid4().hex[:8]}"
    token = bearer(mint(jwt_keys, sub=subject))
    agents = [agent() for _ in range(4)]  # the limit: per-subject, burst 3
    replies = [get(client, rig.url(f"/limited/{i}.txt"), ua, version, **token) for i, ua in enumerate(agents)]
    assert [r.status_code for r in replies] == [404, 404, 404, 429]  # allowed (no such file), then refused
    for ua in agents[:3]:
        got = attrs(server_span(rig.collector, ua))
        assert (got["edge.auth.outcome"], got["edge.auth.reason"], got["edge.auth.subject"]) == (
            "allowed",
            "granted",
            subject,
        )
    want = Denial("/limited/3.txt", 429, "rate_limited", "per-subject", "limited", subject)
    check_denial(rig, agents[3], replies[3], want, version)


def test_client_certificate_fingerprint_on_a_denied_mtls_request(rig: Rig, clients: Clients, deployer: Issued) -> None:
    ua = agent()
    # The deployer's SPIFFE id maps to no role here, so the ops rule refuses it: after the certificate stage.
    response = get(clients("h2", cert=deployer), rig.url("/ops/a.txt"), ua, "h2")
    assert response.status_code == 403
    span = server_span(rig.collector, ua)
    got = attrs(span)
    assert (got["edge.auth.outcome"], got["edge.auth.reason"]) == ("denied_rbac", "missing role")
    # Semantic conventions: the SHA-256 of the DER certificate, upper-case hex.
    assert got["tls.client.hash.sha256"] == deployer.fingerprint.hex().upper()
    audit_event(rig.audit, "edge.auth.denied", traceId=span.trace_id.hex())


def test_audit_denial_spells_its_attributes_as_the_span_does(rig: Rig, clients: Clients, deployer: Issued) -> None:
    """The audit record reuses semantic-convention keys; their values must be what the span says for them."""
    ua = agent()
    assert get(clients("h2", cert=deployer), rig.url("/ops/b.txt"), ua, "h2").status_code == 403
    span = server_span(rig.collector, ua)
    got = attrs(span)
    record = audit_event(rig.audit, "edge.auth.denied", traceId=span.trace_id.hex())["attrs"]
    keys = ("server.address", "client.address", "tls.client.hash.sha256", "url.path", "network.protocol.version")
    assert {k: record.get(k) for k in keys} == {k: got.get(k) for k in keys}


# =========================================================================== 3. cached


def cache_target(tag: str, **params: str) -> str:
    return "/cache?" + urllib.parse.urlencode({"t": f"{tag}-{uuid.uuid4().hex[:12]}", **params})


@pytest.mark.parametrize("version", ["h1", "h2", "h3"])
def test_cache_miss_has_a_client_span_and_the_hit_has_none(rig: Rig, clients: Clients, version: str) -> None:
    client = clients(version)
    path = cache_target(f"telemetry-{version}", cc="max-age=60", body="cached body")
    miss_ua, hit_ua = agent(), agent()
    first = get(client, rig.url(path), miss_ua, version)
    second = get(client, rig.url(path), hit_ua, version)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.headers["cache-status"].startswith("edgeward; hit")
    assert rig.origin.count_target(path) == 1

    miss = server_span(rig.collector, miss_ua)
    got = attrs(miss)
    assert got["edge.cache.status"] == "miss"
    assert got["edge.upstream"] == "app"
    assert got["http.route"] == "/cache"
    assert miss.name == "GET /cache"
    assert got["network.protocol.version"] == VERSION[version]
    (attempt,) = children(rig.collector, miss)
    client_attrs = check_client_span(attempt, miss, rig.origin.port, "app")
    assert client_attrs["http.response.status_code"] == 200
    assert "http.request.resend_count" not in client_attrs
    assert "error.type" not in client_attrs
    assert attempt.status.code == UNSET
    assert attempt.flags & SAMPLED

    # The origin's traceparent names this CLIENT span as its parent.
    received = [r for r in rig.origin.requests if r.target == path]
    assert len(received) == 1
    assert received[0].header("traceparent") == f"00-{miss.trace_id.hex()}-{attempt.span_id.hex()}-01"

    hit = server_span(rig.collector, hit_ua)
    assert attrs(hit)["edge.cache.status"] == "hit"
    assert attrs(hit)["http.response.status_code"] == 200
    assert hit.trace_id != miss.trace_id
    assert children(rig.collector, hit) == []


# =========================================================================== 4. proxied, with a retry


def test_retry_after_a_refused_connect_is_two_client_spans(rig: Rig, clients: Clients) -> None:
    """The flaky upstream's first origin refuses connections; round robin tries it first, then the live one."""
    ua = agent()
    marker = uuid.uuid4().hex[:12]
    response = get(clients("h1"), rig.url(f"/echo?m={marker}"), ua, "h1")
    assert response.status_code == 200

    server = server_span(rig.collector, ua)
    got = attrs(server)
    assert got["edge.upstream"] == "flaky"
    assert got["http.response.status_code"] == 200
    assert server.status.code == UNSET
    assert "error.type" not in got
    refused, ok = children(rig.collector, server)

    refused_attrs = check_client_span(refused, server, port_of(rig.flaky_dead), "flaky")
    assert refused_attrs["error.type"].startswith("connect"), refused_attrs
    assert "http.response.status_code" not in refused_attrs
    assert "http.request.resend_count" not in refused_attrs
    assert refused.status.code == ERROR

    ok_attrs = check_client_span(ok, server, rig.origin.port, "flaky")
    assert ok_attrs["http.response.status_code"] == 200
    assert ok_attrs["http.request.resend_count"] == 1
    assert "error.type" not in ok_attrs
    assert ok.status.code == UNSET
    assert refused.span_id != ok.span_id
    assert refused.end_time_unix_nano <= ok.start_time_unix_nano

    # What reached the origin: the retry's span as parent, in the server span's trace.
    (received,) = [r for r in rig.origin.requests if f"m={marker}" in r.target]
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", received.header("traceparent") or "")
    assert match is not None, received.header("traceparent")
    assert match.group(1) == server.trace_id.hex()
    assert match.group(2) == ok.span_id.hex()
    assert received.header("tracestate") is None


# =========================================================================== 5. errors the edge made


@pytest.mark.parametrize("version", ["h1", "h2", "h3"])
def test_all_origins_dead_is_an_error_span(rig: Rig, clients: Clients, version: str) -> None:
    ua = agent()
    response = get(clients(version), rig.url("/status?code=200"), ua, version)
    assert response.status_code == 502

    span = server_span(rig.collector, ua)
    got = attrs(span)
    assert span.status.code == ERROR
    assert got["http.response.status_code"] == 502
    assert got["error.type"] == "connect"
    assert got["edge.upstream"] == "gone"
    tries = children(rig.collector, span)
    assert len(tries) == 2  # the first try and one retry, each on another origin
    assert {attrs(t)["server.port"] for t in tries} == {port_of(o) for o in rig.gone}
    for attempt, resend in zip(tries, (0, 1), strict=True):
        a = check_client_span(attempt, span, attrs(attempt)["server.port"], "gone")
        assert a["error.type"] == "connect"
        assert attempt.status.code == ERROR
        assert a.get("http.request.resend_count", 0) == resend
        assert "http.response.status_code" not in a


def test_origin_timeout_is_a_504_error_span(rig: Rig, clients: Clients) -> None:
    """The origin accepts and says nothing: the CLIENT span names the timeout, the SERVER span the 504."""
    ua = agent()
    response = get(clients("h2"), rig.url("/stall?ms=5000"), ua, "h2")
    assert response.status_code == 504
    span = server_span(rig.collector, ua)
    got = attrs(span)
    assert span.status.code == ERROR
    assert (got["http.response.status_code"], got["error.type"], got["edge.upstream"]) == (
        504,
        "first_byte_timeout",
        "sluggish",
    )
    (attempt,) = children(rig.collector, span)
    client_attrs = check_client_span(attempt, span, rig.origin.port, "sluggish")
    assert client_attrs["error.type"] == "first_byte_timeout"
    assert "http.response.status_code" not in client_attrs
    assert attempt.status.code == ERROR
    assert attempt.end_time_unix_nano - attempt.start_time_unix_nano >= 250_000_000  # the 0.3 s it waited


# =========================================================================== 6. whose trace context is continued


def test_trusted_source_continues_the_callers_trace(rig: Rig) -> None:
    ua = agent()
    path = cache_target("trusted", cc="no-store")
    with httpx.Client(timeout=10) as client:  # from 127.0.0.1, which the rig trusts
        response = get(client, rig.url(path, "http"), ua, traceparent=TRACEPARENT, tracestate=TRACESTATE)
    assert response.status_code == 200

    span = server_span(rig.collector, ua)
    assert span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT_ID
    assert span.span_id.hex() != PARENT_ID
    assert span.trace_state == TRACESTATE
    assert span.flags == SAMPLED | HAS_IS_REMOTE | REMOTE_PARENT
    (attempt,) = children(rig.collector, span)
    assert attempt.trace_id.hex() == TRACE_ID
    assert attempt.trace_state == TRACESTATE
    # Propagated upstream: the same trace, this edge's CLIENT span as the parent, the tracestate kept.
    (received,) = [r for r in rig.origin.requests if r.target == path]
    assert received.header("traceparent") == f"00-{TRACE_ID}-{attempt.span_id.hex()}-01"
    assert received.header("tracestate") == TRACESTATE

    def logged() -> list[dict[str, Any]]:
        return [r for r in access_records(rig.access_log) if r["span_id"] == span.span_id.hex()]

    wait_for(lambda: bool(logged()), 5, "the access-log line")
    assert logged()[0]["trace_id"] == TRACE_ID


def test_trusted_unsampled_parent_is_followed(rig: Rig) -> None:
    """A trusted caller that did not sample: no span is exported, yet its trace id is logged and propagated."""
    ua, after = agent(), agent()
    path = cache_target("unsampled", cc="no-store")
    with httpx.Client(timeout=10) as client:
        assert get(client, rig.url(path, "http"), ua, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00").status_code == 200
        assert get(client, rig.url("/hello.txt", "http"), after).status_code == 200
    server_span(rig.collector, after)  # exported after the unsampled one would have been
    assert [s for s in rig.collector.spans() if attrs(s).get("user_agent.original") == ua] == []
    (received,) = [r for r in rig.origin.requests if r.target == path]
    assert re.fullmatch(rf"00-{TRACE_ID}-[0-9a-f]{{16}}-00", received.header("traceparent") or "")
    assert (received.header("traceparent") or "")[36:52] != PARENT_ID

    def logged() -> list[dict[str, Any]]:
        return [r for r in access_records(rig.access_log) if r["path"] == "/cache" and r["trace_id"] == TRACE_ID]

    wait_for(lambda: len(logged()) >= 1, 5, "the unsampled request in the access log")


@pytest.mark.parametrize("traceparent", [f"ff-{TRACE_ID}-{PARENT_ID}-01", f"00-{'0' * 32}-{PARENT_ID}-01", "junk"])
def test_trusted_source_with_an_invalid_traceparent_gets_a_new_trace(rig: Rig, traceparent: str) -> None:
    ua = agent()
    with httpx.Client(timeout=10) as client:
        assert get(client, rig.url("/hello.txt", "http"), ua, traceparent=traceparent).status_code == 200
    span = server_span(rig.collector, ua)
    assert span.trace_id.hex() not in (TRACE_ID, "0" * 32)
    assert span.parent_span_id == b""
    assert span.flags == SAMPLED | HAS_IS_REMOTE


def test_untrusted_source_gets_a_new_trace(rig: Rig, clients: Clients) -> None:
    """127.0.0.2 is not in trusted_sources: its traceparent and tracestate are replaced, not continued."""
    ua = agent()
    path = cache_target("untrusted", cc="no-store")
    client = clients("h1", local="127.0.0.2")
    response = get(client, rig.url(path, "http"), ua, traceparent=TRACEPARENT, tracestate=TRACESTATE)
    assert response.status_code == 200
    span = server_span(rig.collector, ua)
    assert attrs(span)["client.address"] == "127.0.0.2"
    assert span.trace_id.hex() != TRACE_ID
    assert span.parent_span_id == b""
    assert span.trace_state == ""
    assert span.flags == SAMPLED | HAS_IS_REMOTE
    (attempt,) = children(rig.collector, span)
    (received,) = [r for r in rig.origin.requests if r.target == path]
    assert received.header("traceparent") == f"00-{span.trace_id.hex()}-{attempt.span_id.hex()}-01"
    assert received.header("tracestate") is None


# =========================================================================== 10. the JSON Lines file


def test_traces_file_is_otlp_json_lines_with_the_spans_the_collector_got(rig: Rig, clients: Clients) -> None:
    # Some spans of every kind, whatever ran before.
    for version in ("h1", "h2"):
        client = clients(version)
        get(client, rig.url("/hello.txt"), agent(), version)
        get(client, rig.url(cache_target("jsonl", cc="no-store")), agent(), version)
        get(client, rig.url("/payments/x.txt"), agent(), version)

    def file_spans() -> dict[bytes, Any]:
        spans = {}
        for line in rig.traces.read_bytes().splitlines():
            for resource_spans in TracesData.from_json(line).resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        spans[span.span_id] = span
        return spans

    def same_sets() -> bool:
        return set(file_spans()) == {s.span_id for s in rig.collector.spans()}

    wait_for(same_sets, 10, "the file and the collector holding the same spans")
    # The exporter's own count of what the collector accepted agrees with what the collector holds.
    wait_for(
        lambda: (
            telemetry_counts(rig.server, "edgeward_telemetry_exported_total", "traces")
            == rig.collector.item_count("traces")
        ),
        5,
        "edgeward_telemetry_exported_total{signal=traces} to match the spans the collector got",
    )
    on_file = file_spans()
    collected = {s.span_id: s for s in rig.collector.spans()}
    assert len(collected) == len(rig.collector.spans())  # no span exported twice
    assert len(on_file) >= 6
    for span_id, proto in collected.items():
        span = on_file[span_id]
        assert span.trace_id == proto.trace_id
        assert (span.parent_span_id or b"") == proto.parent_span_id
        assert (span.trace_state or "") == proto.trace_state
        assert span.flags == proto.flags
        assert span.name == proto.name
        assert span.kind == proto.kind
        assert span.start_time_unix_nano == proto.start_time_unix_nano
        assert span.end_time_unix_nano == proto.end_time_unix_nano
        assert (span.status.code if span.status else 0) == proto.status.code
        assert [(kv.key, kv.value.to_dict()) for kv in span.attributes] == [
            (kv.key, MessageToDict(kv.value)) for kv in proto.attributes
        ]

    # Plain JSON: the OTLP/JSON encoding's hex ids and int64-as-string, one ExportTraceServiceRequest a line.
    lines = rig.traces.read_bytes().splitlines()
    assert lines and all(line.strip() for line in lines)
    for line in lines:
        data = json.loads(line)
        assert set(data) == {"resourceSpans"}
        for resource_spans in data["resourceSpans"]:
            resource = {kv["key"]: kv["value"] for kv in resource_spans["resource"]["attributes"]}
            assert resource["service.name"] == {"stringValue": "edgeward"}
            for scope_spans in resource_spans["scopeSpans"]:
                assert scope_spans["scope"]["name"] == "edgeward"
                for span in scope_spans["spans"]:
                    assert re.fullmatch(r"[0-9a-f]{32}", span["traceId"]), span["traceId"]
                    assert re.fullmatch(r"[0-9a-f]{16}", span["spanId"]), span["spanId"]
                    if "parentSpanId" in span:
                        assert re.fullmatch(r"[0-9a-f]{16}", span["parentSpanId"])
                    assert isinstance(span["startTimeUnixNano"], str) and span["startTimeUnixNano"].isdigit()
                    assert isinstance(span["endTimeUnixNano"], str) and span["endTimeUnixNano"].isdigit()
                    for kv in span["attributes"]:
                        if "intValue" in kv["value"]:
                            assert isinstance(kv["value"]["intValue"], str)
                    assert span["kind"] in (SERVER, CLIENT)


def traces_in(paths: list[Path]) -> dict[bytes, Any]:
    spans = {}
    for path in paths:
        for line in path.read_bytes().splitlines():
            for resource_spans in TracesData.from_json(line).resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        assert span.span_id not in spans, "a span written twice"
                        spans[span.span_id] = span
    return spans


def test_traces_files_rotate_and_the_last_spans_go_out_at_shutdown(
    start_server: StartServer, tmp_path: Path, localhost_cert: Issued, log_collector: OTLPHttpReceiver
) -> None:
    """Two workers share a small rotating traces file; spans wait for a 30 s export interval and leave at stop."""
    traces = tmp_path / "traces" / "traces.jsonl"
    traces.parent.mkdir()
    config = base_config(make_site(tmp_path / "www"), localhost_cert)
    config["telemetry"] = {
        "interval": 0.05,
        "otlp": {"endpoint": log_collector.endpoint, "interval": 30.0, "metrics_interval": 60.0},
        "files": {"traces": str(traces), "rotate_bytes": 4096, "keep": 0},
    }
    server = start_server(config, workers=2, name="rotating")
    n = 40
    for _ in range(n):  # a connection each, so both workers serve some
        with httpx.Client(timeout=10) as client:
            assert get(client, server.url("http", "/hello.txt"), agent()).status_code == 200

    def files() -> list[Path]:
        rotated = sorted(
            p for p in traces.parent.iterdir() if re.fullmatch(r"traces\.jsonl\.\d{8}T\d{6}Z(-\d+)?", p.name)
        )
        return [*rotated, traces]

    wait_for(lambda: traces.exists() and len(traces_in(files())) == n, 5, f"{n} spans on file")
    assert len(files()) >= 2, [p.name for p in files()]  # rotated at 4 KiB
    assert all(path.stat().st_size > 0 for path in files()[:-1])
    assert log_collector.requests("traces") == []  # the export interval has not come yet

    server.stop()
    assert server.proc is not None and server.proc.returncode == 0
    spans = log_collector.wait_for_spans(n, timeout=5)
    assert len(spans) == n
    assert {s.span_id for s in spans} == set(traces_in(files()))
    senders = {
        attrs(r.request.resource_spans[0].resource)["service.instance.id"] for r in log_collector.requests("traces")
    }
    assert len(senders) == 2, "both workers' spans were flushed at shutdown"


# =========================================================================== 12. metrics


def duration_counts(server: Server) -> dict[tuple[str, str, str], float]:
    """edgeward_http_server_request_duration_seconds_count by (route, status_class, protocol), over workers."""
    out: dict[tuple[str, str, str], float] = {}
    fam = scrape(server).get("edgeward_http_server_request_duration_seconds")
    if fam is None:
        return out
    assert fam.kind == "histogram"
    for (name, labels), value in fam.samples.items():
        if name.endswith("_count"):
            d = dict(labels)
            key = (d["route"], d["status_class"], d["protocol"])
            out[key] = out.get(key, 0) + value
    return out


def test_request_metrics_on_metrics_and_over_otlp(rig: Rig, clients: Clients) -> None:
    """Requests to the /sub route (its own label, which nothing else in the module sends to) are counted exactly."""
    routes = {"/sub"}
    before = {k: v for k, v in duration_counts(rig.server).items() if k[0] in routes}
    sent = {("/sub", "2xx", "1.1"): 3, ("/sub", "2xx", "2"): 2, ("/sub", "2xx", "3"): 1, ("/sub", "4xx", "2"): 1}
    for version, n in (("h1", 3), ("h2", 2), ("h3", 1)):
        client = clients(version)
        for _ in range(n):
            assert get(client, rig.url("/sub/index.html"), agent(), version).status_code == 200
    assert get(clients("h2"), rig.url("/sub/no-such-file"), agent(), "h2").status_code == 404

    def delta() -> dict[tuple[str, str, str], float]:
        after = {k: v for k, v in duration_counts(rig.server).items() if k[0] in routes}
        return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}

    wait_for(lambda: delta() == sent, 5, f"the duration histogram to count {sent}")
    fam = scrape(rig.server)["edgeward_http_server_request_duration_seconds"]
    for route, status_class, protocol in sent:
        labels = {"route": route, "status_class": status_class, "protocol": protocol}
        assert fam.total("_bucket", le="+Inf", **labels) == fam.total("_count", **labels)
        assert 0 < fam.total("_sum", **labels) < 10 * fam.total("_count", **labels)
    assert delta() == sent  # and nothing else was counted meanwhile

    # The same histogram over OTLP, with the counts /metrics shows (a later export never has fewer).
    want = {k: v for k, v in duration_counts(rig.server).items() if k[0] in routes}

    def exported() -> dict[tuple[str, str, str], int]:
        latest: dict[tuple[str, str, str], int] = {}
        for metric in rig.collector.metrics():
            if metric.name != "http.server.request.duration":
                continue
            assert metric.unit == "s"
            assert metric.histogram.aggregation_temporality == 2  # cumulative
            for point in metric.histogram.data_points:
                d = attrs(point)
                key = (d["route"], d["status_class"], d["protocol"])
                latest[key] = max(latest.get(key, 0), point.count)
                assert sum(point.bucket_counts) == point.count
        return latest

    wait_for(lambda: all(exported().get(k, 0) >= v for k, v in want.items()), 10, "the histogram over OTLP")
    assert {k: v for k, v in exported().items() if k[0] in routes} == want
    names = {m.name for m in rig.collector.metrics()}
    assert "http.server.active_requests" in names
    requests = rig.collector.requests("metrics")
    assert all(r.headers["content-type"] == "application/x-protobuf" for r in requests)
    resource = attrs(requests[-1].request.resource_metrics[0].resource)
    assert resource["service.name"] == "edgeward"

    # What telemetry itself did, for the operator: spans exported, none dropped.
    fams = scrape(rig.server)
    assert fams["edgeward_telemetry_exported_total"].total(signal="traces") >= 1
    dropped = fams.get("edgeward_telemetry_dropped_total")
    assert dropped is None or dropped.total(signal="traces") == 0


def test_admin_scrapes_are_not_counted_as_the_data_planes_root_route(rig: Rig) -> None:
    """The admin listener's own router has a "/" route; its requests must not land on the site's route "/"."""
    ua = agent()
    with httpx.Client(timeout=5) as admin:
        before = duration_counts(rig.server).get(("/", "2xx", "1.1"), 0)
        for _ in range(3):
            assert get(admin, rig.server.admin_url("/metrics"), ua).status_code == 200
        # A data-plane request after them: once it is counted, so is every scrape before it.
        marker = agent()
        assert get(admin, rig.url("/sub/index.html", "http"), marker).status_code == 200
    server_span(rig.collector, marker)
    after = duration_counts(rig.server).get(("/", "2xx", "1.1"), 0)
    scrapes = [s for s in rig.collector.spans() if attrs(s).get("user_agent.original") == ua]
    assert [attrs(s).get("http.route") for s in scrapes if attrs(s).get("http.route") == "/"] == []
    assert after - before == 0, f"{after - before:g} admin scrapes counted as requests to the site's route /"


# =========================================================================== 7. sampling


def test_sample_ratio_zero_exports_no_spans_yet_logs_and_counts_every_request(
    start_server: StartServer, tmp_path: Path, localhost_cert: Issued, origin_for_sampling: Origin
) -> None:
    site = make_site(tmp_path / "sampled-www")
    log = tmp_path / "access.log"
    traces = tmp_path / "traces.jsonl"
    with OTLPHttpReceiver() as collector:
        config = base_config(
            site, localhost_cert, access_log={"enabled": True, "path": str(log), "flush_interval": 0.1}
        )
        config["upstreams"] = [{"name": "app", "origins": [origin_for_sampling.url], "retries": 0}]
        config["routes"] = [
            {"path": "/sub", "static": {"root": str(site)}},
            {"path": "/echo", "proxy": {"upstream": "app"}},
        ]
        config["telemetry"] = {
            "interval": 0.05,
            "tracing": {"sample_ratio": 0.0},
            "otlp": {"endpoint": collector.endpoint, **FAST_OTLP},
            "files": {"traces": str(traces)},
        }
        server = start_server(config, name="unsampled")
        with httpx.Client(timeout=10) as client:
            for _ in range(4):
                assert client.get(server.url("http", "/sub/index.html")).status_code == 200
            marker = uuid.uuid4().hex[:12]
            assert client.get(server.url("http", f"/echo?m={marker}")).status_code == 200

        # The access log has a trace id and span id for every request all the same.
        def served() -> list[dict[str, Any]]:  # the site's requests (not the admin scrapes below)
            return [r for r in access_records(log) if r["path"] != "/metrics"]

        wait_for(lambda: len(served()) == 5, 5, "five access-log lines")
        records = served()
        assert all(re.fullmatch(r"[0-9a-f]{32}", r["trace_id"]) for r in records)
        assert all(re.fullmatch(r"[0-9a-f]{16}", r["span_id"]) for r in records)
        assert len({r["trace_id"] for r in records}) == 5
        # The origin is told the trace (the one in the access log) is not sampled.
        (received,) = [r for r in origin_for_sampling.requests if f"m={marker}" in r.target]
        (echo,) = [r for r in records if r["path"] == "/echo"]
        assert re.fullmatch(rf"00-{echo['trace_id']}-[0-9a-f]{{16}}-00", received.header("traceparent") or "")

        # Metrics count every request, on /metrics and over OTLP.
        want = {("/sub", "2xx", "1.1"): 4, ("/echo", "2xx", "1.1"): 1}

        def mine(counts: dict[tuple[str, str, str], float]) -> dict[tuple[str, str, str], float]:
            return {k: v for k, v in counts.items() if k[0] in ("/sub", "/echo")}

        wait_for(lambda: mine(duration_counts(server)) == want, 5, "five requests counted")

        def exported_counts(received: Any) -> dict[tuple[str, str, str], float]:
            out: dict[tuple[str, str, str], float] = {}
            for rm in received.request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name == "http.server.request.duration":
                            for point in metric.histogram.data_points:
                                d = attrs(point)
                                out[(d["route"], d["status_class"], d["protocol"])] = point.count
            return out

        wait_for(
            lambda: any(mine(exported_counts(r)) == want for r in collector.requests("metrics")),
            10,
            "an OTLP metrics export counting the five requests",
        )
        # Metrics went out after every request was recorded; the span exporter sent nothing, lost nothing.
        assert collector.requests("traces") == []
        assert collector.spans() == []
        assert telemetry_counts(server, "edgeward_telemetry_exported_total", "traces") == 0
        assert telemetry_counts(server, "edgeward_telemetry_dropped_total", "traces") == 0
        assert not traces.exists() or traces.read_bytes() == b""


@pytest.fixture(scope="module")
def origin_for_sampling() -> Iterator[Origin]:
    with Origin(name="sampling-origin") as origin:
        yield origin


# =========================================================================== 8. a collector that is down or slow


@pytest.fixture(scope="module")
def quiet_edge(tmp_path_factory: pytest.TempPathFactory, localhost_cert: Issued) -> Iterator[Server]:
    """The same edge with telemetry off: no collector, no files; the baseline for timing."""
    work = tmp_path_factory.mktemp("quiet")
    server = Server(base_config(make_site(work / "www"), localhost_cert), work, name="quiet")
    server.start()
    yield server
    server.stop()


class Blackhole:
    """A collector host that accepts TCP connections (the kernel does) and never answers a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()  # connections still in the backlog are reset


def timed_requests(server: Server, n: int) -> float:
    """Seconds for `n` sequential keep-alive GETs of a small static file."""
    with httpx.Client(timeout=30) as client:
        url = server.url("http", "/hello.txt")
        for _ in range(5):  # warm up: connection, file cache
            assert client.get(url).status_code == 200
        start = time.perf_counter()
        for _ in range(n):
            assert client.get(url).status_code == 200
        return time.perf_counter() - start


def exporting_config(site: Path, cert: Issued, endpoint: str, **otlp: Any) -> dict[str, Any]:
    config = base_config(site, cert)
    config["telemetry"] = {"interval": 0.05, "otlp": {"endpoint": endpoint, **FAST_OTLP, **otlp}}
    return config


N_TIMED = 500


def dropped_spans_counted(server: Server, total: int, queue: int) -> dict[str, Parsed]:
    """The metrics once all but `queue` of `total` spans (those the exporter may still hold to
    retry) are counted as dropped."""
    wait_for(
        lambda: telemetry_counts(server, "edgeward_telemetry_dropped_total", "traces") >= total - queue,
        10,
        "the spans that could not be sent counted as dropped",
    )
    return scrape(server)


@pytest.mark.parametrize("down", ["refused", "unresponsive"])
def test_dead_collector_leaves_serving_at_full_speed_and_counts_drops(
    start_server: StartServer, tmp_path: Path, localhost_cert: Issued, quiet_edge: Server, down: str
) -> None:
    """A closed port (refused at once) or a host that never answers (every export runs into its timeout).

    The export timeout is 3 s: an exporter that waited on the loop would
    stall the requests by whole seconds, far beyond the bound.
    """
    hole = Blackhole() if down == "unresponsive" else None
    endpoint = hole.endpoint if hole is not None else refused_origin()
    try:
        config = exporting_config(
            make_site(tmp_path / "www"), localhost_cert, endpoint, timeout=3.0, queue_spans=256, batch_spans=64
        )
        server = start_server(config, name=f"dead-{down}")
        baseline = timed_requests(quiet_edge, N_TIMED)
        took = timed_requests(server, N_TIMED)
        baseline = min(baseline, timed_requests(quiet_edge, N_TIMED))
        assert took <= 2 * baseline + 0.5, (
            f"{N_TIMED} requests took {took:.3f}s against {baseline:.3f}s without telemetry"
        )

        total = N_TIMED + 5
        fams = dropped_spans_counted(server, total, queue=256)
        dropped = fams["edgeward_telemetry_dropped_total"]
        assert dropped.total(signal="traces") > 0
        reasons = {dict(labels)["reason"] for (_, labels) in dropped.samples if dict(labels)["signal"] == "traces"}
        assert reasons, dropped.samples
        assert fams["edgeward_telemetry_exported_total"].value(signal="traces") == 0
        # Requests are counted as ever.
        assert fams["edgeward_http_server_request_duration_seconds"].total("_count") >= total
    finally:
        if hole is not None:
            hole.close()


def test_a_dead_collector_still_audits_denials_and_counts_every_request(
    start_server: StartServer, tmp_path: Path, localhost_cert: Issued, ca: CA, jwt_keys: Keys
) -> None:
    """Spans that can only be dropped are counted without building their records; a denial's
    audit event and the request histogram do not depend on them."""
    site = make_site(tmp_path / "www")
    audit = tmp_path / "audit.jsonl"
    config = policy_config(
        site, localhost_cert, ca, jwt_keys, tmp_path / "access.log", network={"deny": ["127.0.0.3/32"]}
    )
    config["access_log"] = {"enabled": False}
    config["audit"] = {"file": str(audit)}
    config["telemetry"] = {
        "interval": 0.05,
        "otlp": {"endpoint": refused_origin(), **FAST_OTLP, "queue_spans": 64, "batch_spans": 64},
    }
    server = start_server(config, name="dead-audited")
    allowed = 300
    with httpx.Client(timeout=10) as client:
        for _ in range(allowed):
            assert client.get(server.url("http", "/hello.txt")).status_code == 200
    with httpx.Client(timeout=10, transport=httpx.HTTPTransport(local_address="127.0.0.3")) as client:
        assert client.get(server.url("http", "/hello.txt")).status_code == 403

    record = audit_event(audit, "edge.auth.denied")
    assert record["attrs"]["edge.auth.outcome"] == "denied_ip"
    assert record["attrs"]["client.address"] == "127.0.0.3"
    assert re.fullmatch(r"[0-9a-f]{32}", record["traceId"])
    total = allowed + 1
    fams = dropped_spans_counted(server, total, queue=64)
    assert fams["edgeward_telemetry_exported_total"].value(signal="traces") == 0
    assert fams["edgeward_telemetry_dropped_total"].total(signal="traces") <= total
    duration = fams["edgeward_http_server_request_duration_seconds"]
    assert duration.total("_count", status_class="2xx") == allowed
    assert duration.total("_count", status_class="4xx") == 1


def test_slow_collector_keeps_serving_and_its_bounded_queue_drops_are_counted(
    start_server: StartServer, tmp_path: Path, localhost_cert: Issued, quiet_edge: Server
) -> None:
    with OTLPHttpReceiver(mode="slow", delay=3.0) as collector:
        config = exporting_config(
            make_site(tmp_path / "www"), localhost_cert, collector.endpoint, queue_spans=64, batch_spans=8
        )
        server = start_server(config, name="slow-collector")
        baseline = timed_requests(quiet_edge, N_TIMED)
        took = timed_requests(server, N_TIMED)
        baseline = min(baseline, timed_requests(quiet_edge, N_TIMED))
        assert took <= 2 * baseline + 0.5, (
            f"{N_TIMED} requests took {took:.3f}s against {baseline:.3f}s without telemetry"
        )
        collector.wait_for_attempts(1)  # an export is held by the collector

        total = N_TIMED + 5

        def bounded() -> bool:
            # Of `total` spans, at most 64 are held at once: the rest were exported or dropped.
            exported = telemetry_counts(server, "edgeward_telemetry_exported_total", "traces")
            dropped = telemetry_counts(server, "edgeward_telemetry_dropped_total", "traces")
            return dropped > 0 and dropped + exported >= total - 64

        wait_for(bounded, 10, "drops counted beyond the 64-span queue")
        dropped = scrape(server)["edgeward_telemetry_dropped_total"]
        assert dropped.total(signal="traces", reason="queue_full") > 0
        # The collector did get spans, in batches no bigger than the queue.
        spans_per_request = [
            sum(len(ss.spans) for rs in r.request.resource_spans for ss in rs.scope_spans)
            # Each answer takes 3 s and other signals' exports share the collector: allow several.
            for r in collector.wait_for_requests(1, "traces", timeout=30)
        ]
        assert all(0 < n <= 64 for n in spans_per_request), spans_per_request


# =========================================================================== 9. gRPC, and a config that trusts nobody


@dataclass
class GrpcEdge:
    server: Server
    collector: OTLPGrpcReceiver
    origin: Origin


@pytest.fixture(scope="module")
def grpc_edge(tmp_path_factory: pytest.TempPathFactory, localhost_cert: Issued) -> Iterator[GrpcEdge]:
    work = tmp_path_factory.mktemp("grpc-edge")
    with OTLPGrpcReceiver() as collector, Origin(name="grpc-origin") as origin:
        config = base_config(make_site(work / "www"), localhost_cert)
        config["upstreams"] = [{"name": "app", "origins": [origin.url], "retries": 0}]
        config["routes"] = [*config["routes"], {"path": "/echo", "proxy": {"upstream": "app"}}]
        config["policy"] = {"network": {"deny": ["127.0.0.3/32"]}}
        config["telemetry"] = {
            "interval": 0.05,
            "tracing": {"trusted_sources": []},
            "otlp": {"endpoint": collector.endpoint, **FAST_OTLP},
        }
        config["audit"] = {"file": str(work / "audit.jsonl")}
        server = Server(config, work, name="grpc-edge")
        server.start()
        try:
            yield GrpcEdge(server, collector, origin)
        finally:
            server.stop()


def test_grpc_export_delivers_spans_metrics_and_audit_logs(grpc_edge: GrpcEdge, clients: Clients) -> None:
    assert grpc_edge.collector.endpoint.startswith("grpc://")
    ua = agent()
    url = f"https://localhost:{grpc_edge.server.address('https')[1]}/hello.txt"
    assert get(clients("h2"), url, ua, "h2").status_code == 200
    span = server_span(grpc_edge.collector, ua)
    got = attrs(span)
    assert (span.kind, span.name, got["network.protocol.version"], got["tls.protocol.version"]) == (
        SERVER,
        "GET /",
        "2",
        "1.3",
    )
    assert grpc_edge.collector.requests("traces")

    denied_ua = agent()
    refused = get(clients("h1", local="127.0.0.3"), grpc_edge.server.url("http", "/hello.txt"), denied_ua)
    assert refused.status_code == 403
    denied = server_span(grpc_edge.collector, denied_ua)
    assert attrs(denied)["edge.auth.outcome"] == "denied_ip"
    wait_for(
        lambda: any(r.trace_id == denied.trace_id for r in grpc_edge.collector.log_records()),
        10,
        "the denial as an OTLP log over gRPC",
    )
    (record,) = [r for r in grpc_edge.collector.log_records() if r.trace_id == denied.trace_id]
    assert record.span_id == denied.span_id
    assert attrs(record)["event.name"] == "edge.auth.denied"
    grpc_edge.collector.wait_for_requests(1, "metrics", timeout=10)
    assert any(m.name == "http.server.request.duration" for m in grpc_edge.collector.metrics())


def test_untrusted_config_starts_a_new_trace_for_everyone(grpc_edge: GrpcEdge) -> None:
    """trusted_sources = []: even 127.0.0.1's traceparent is replaced, and not sent upstream."""
    ua = agent()
    marker = uuid.uuid4().hex[:12]
    with httpx.Client(timeout=10) as client:
        response = get(
            client,
            grpc_edge.server.url("http", f"/echo?m={marker}"),
            ua,
            traceparent=TRACEPARENT,
            tracestate=TRACESTATE,
        )
    assert response.status_code == 200
    span = server_span(grpc_edge.collector, ua)
    assert span.trace_id.hex() != TRACE_ID
    assert span.parent_span_id == b""
    assert span.trace_state == ""
    assert span.flags == SAMPLED | HAS_IS_REMOTE
    (attempt,) = children(grpc_edge.collector, span)
    (received,) = [r for r in grpc_edge.origin.requests if f"m={marker}" in r.target]
    assert received.header("traceparent") == f"00-{span.trace_id.hex()}-{attempt.span_id.hex()}-01"
    assert TRACE_ID not in json.dumps(received.headers)
    assert received.header("tracestate") is None


# =========================================================================== 11. audit events beyond denials


def audit_names(path: Path) -> list[str]:
    return [r["attrs"]["event.name"] for r in audit_records(path)]


def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INGRESS), "audit-verify", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def log_collector() -> Iterator[OTLPHttpReceiver]:
    with OTLPHttpReceiver() as collector:
        yield collector


def test_reloads_and_drain_are_audited_and_the_chain_verifies(
    start_server: StartServer, tmp_path: Path, ca: CA, client_tls: ssl.SSLContext, log_collector: OTLPHttpReceiver
) -> None:
    cert = ca.issue(f"telemetry-rot-{uuid.uuid4().hex[:8]}", ["localhost", "127.0.0.1"])
    audit = tmp_path / "audit" / "audit.jsonl"
    audit.parent.mkdir()
    site = make_site(tmp_path / "www")
    config = base_config(site, cert, audit={"file": str(audit)}, policy={"network": {"deny": ["127.0.0.3/32"]}})
    config["server"]["cert_poll_interval"] = 0.1
    config["telemetry"] = {"interval": 0.05, "otlp": {"endpoint": log_collector.endpoint, **FAST_OTLP}}
    server = start_server(config, name="audited")
    url = f"https://localhost:{server.address('https')[1]}/hello.txt"

    # A denial, to have a request-made record among the others.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=10) as denied:
        assert denied.get(server.url("http", "/hello.txt")).status_code == 403
    audit_event(audit, "edge.auth.denied")

    # Certificate hot reload: the file is replaced, the edge serves the new one and says so.
    renewed = ca.issue(cert.cert.name.removesuffix(".pem"), ["localhost", "127.0.0.1"])
    assert renewed.cert == cert.cert and renewed.fingerprint != cert.fingerprint
    reloaded = audit_event(audit, "edge.cert.reloaded")
    assert reloaded["severityText"] in ("INFO", "WARN")
    assert str(cert.cert) in json.dumps(reloaded)
    with httpx.Client(verify=client_tls, timeout=10) as client:
        assert client.get(url).status_code == 200

    # A config reload that is accepted ...
    config["server"]["server_header"] = "edgeward-reloaded"
    server.write_config(config)
    server.signal(signal.SIGHUP)
    audit_event(audit, "edge.config.accepted")
    audit_event(audit, "edge.config.reloaded")
    wait_for(
        lambda: httpx.get(server.url("http", "/hello.txt"), timeout=5).headers.get("server") == "edgeward-reloaded",
        5,
        "the reloaded config serving",
    )
    # ... and one that is refused (the previous config keeps serving).
    config["limits"] = {"max_header_bytes": 1}
    server.write_config(config)
    server.signal(signal.SIGHUP)
    refused = audit_event(audit, "edge.config.refused")
    assert refused["severityText"] in ("WARN", "ERROR")
    assert httpx.get(server.url("http", "/hello.txt"), timeout=5).status_code == 200

    # Shutdown: the drain and the stop are the last records.
    server.stop()
    assert server.proc is not None and server.proc.returncode == 0, server.log()
    names = audit_names(audit)
    assert "edge.drain" in names and "edge.stop" in names, names
    for name in ("edge.auth.denied", "edge.cert.reloaded", "edge.config.accepted", "edge.config.refused"):
        assert names.index(name) < names.index("edge.drain"), names
    seqs = [int(r["attrs"]["audit.seq"]) for r in audit_records(audit)]
    assert seqs == list(range(1, len(seqs) + 1))

    ok = run_verify(str(audit))
    assert ok.returncode == 0, ok.stderr
    lines = audit.read_bytes().splitlines()
    last = hashlib.sha256(lines[-1]).hexdigest()
    assert ok.stderr.strip() == f"ok: {len(lines)} records, seq 1..{len(lines)}, last sha256 {last}"

    # An edited copy is refused, naming the file and the line.
    copy = tmp_path / "copy" / "audit.jsonl"
    copy.parent.mkdir()
    shutil.copy(audit, copy)
    edited = list(lines)
    edited[1] = edited[1].replace(b'"severityNumber":', b'"severityNumber": ', 1)
    assert edited[1] != lines[1]
    copy.write_bytes(b"\n".join(edited) + b"\n")
    broken = run_verify(str(copy))
    assert broken.returncode == 1, broken.stderr
    assert f"{copy}:2" in broken.stderr, broken.stderr

    # Every audit event went to the collector too, as an OTLP log carrying the file's chain anchors.
    exported = {
        (attrs(r)["audit.seq"], attrs(r)["event.name"], attrs(r)["audit.prev_sha256"])
        for r in log_collector.log_records()
    }
    on_file = {
        (int(r["attrs"]["audit.seq"]), r["attrs"]["event.name"], r["attrs"]["audit.prev_sha256"])
        for r in audit_records(audit)
    }
    assert exported <= on_file, exported - on_file
    missing = sorted((seq, name) for seq, name, _ in on_file - exported)
    assert missing == [], f"audit events never exported over OTLP: {missing}"
