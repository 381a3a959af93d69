"""HTTP hygiene at the edge: CORS per route, Host validation, the /healthz fast path, listener socket options.

Everything runs against the real server on ephemeral 127.0.0.1 ports with
real clients: curl (HTTP/1.1, HTTP/2 over TLS and h2c), raw sockets where a
client would tidy the bytes up (malformed Host), h2 frames for a malformed
:authority, aioquic for HTTP/3. Socket options are read back from the
running worker itself: `ss` shows a listening socket's backlog, and
pidfd_getfd(2) lends the test a duplicate of the worker's descriptor
(listening or accepted) so getsockopt reads what the server really set.
"""

from __future__ import annotations

import asyncio
import ctypes
import gzip
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import base_config
from tests.h2client import H2Client
from tests.h3client import h3_configuration, h3_request
from tests.origin import Origin
from tests.pki import CA, Issued
from tests.server import Server, wait_for

StartServer = Callable[..., Server]
LOCAL = "127.0.0.1"
APP = "https://app.example"
EVIL = "https://evil.example"


# --------------------------------------------------------------------------- clients


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]  # lower-case names, in order
    body: bytes

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def get(self, name: str) -> str | None:
        found = self.all(name)
        assert len(found) <= 1, f"{name} sent {len(found)} times: {found}"
        return found[0] if found else None

    def cors(self) -> dict[str, str]:
        return {n: v for n, v in self.headers if n.startswith("access-control-")}


def _parse(raw: bytes) -> Resp:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = [line.split(":", 1) for line in lines[1:]]
    return Resp(int(lines[0].split()[1]), [(n.strip().lower(), v.strip()) for n, v in fields], body)


def curl(*args: str) -> Resp:
    """One request with curl; `-i` output parsed into a Resp."""
    out = subprocess.run(["curl", "-sS", "-i", "--max-time", "10", *args], capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return _parse(out.stdout)


def raw_http(address: tuple[str, int], request: bytes) -> Resp:
    """Send bytes as they are (curl would tidy a bad Host) and read the answer to the close."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data, "no answer"
    return _parse(data)


def h3(server: Server, ca: CA, method: str, target: str, headers: list[tuple[str, str]], authority: str = "") -> Resp:
    port = int(server.state["quic"]["https"].rpartition(":")[2])
    status, fields, body = asyncio.run(
        h3_request(
            LOCAL,
            port,
            h3_configuration(str(ca.pem)),
            method.encode(),
            (authority or f"localhost:{port}").encode(),
            target.encode(),
            [(n.lower().encode(), v.encode()) for n, v in headers],
        )
    )
    return Resp(status, [(n.decode(), v.decode("latin-1")) for n, v in fields], body)


def origin_args(origin: str) -> list[str]:
    return ["-H", f"Origin: {origin}"]


def preflight_args(origin: str, method: str, headers: str = "") -> list[str]:
    args = ["-X", "OPTIONS", "-H", f"Origin: {origin}", "-H", f"Access-Control-Request-Method: {method}"]
    if headers:
        args += ["-H", f"Access-Control-Request-Headers: {headers}"]
    return args


def vary(resp: Resp) -> list[str]:
    """The Vary tokens, lower case, from what must be a single Vary field."""
    value = resp.get("vary")
    return [t.strip().lower() for t in value.split(",")] if value else []


# --------------------------------------------------------------------------- the CORS lab


@dataclass
class Lab:
    server: Server
    origin: Origin
    ca: CA

    def http(self, path: str) -> str:
        return self.server.url("http", path)

    def https(self, path: str) -> str:
        return self.server.url("https", path)

    def tls(self) -> list[str]:
        return ["--cacert", str(self.ca.pem)]


CORS_APP = {
    "origins": [APP, "http://localhost:3000"],
    "headers": ["content-type", "x-token"],
    "expose_headers": ["etag"],
    "credentials": True,
    "max_age": 300,
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, ca: CA, localhost_cert: Issued) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("cors")
    root = work / "www"
    for sub in ("open", "plain", "locked"):
        (root / sub).mkdir(parents=True)
        (root / sub / "f.txt").write_text(f"{sub}\n")
    (root / "hello.txt").write_text("hello world\n")
    (root / "zipped.txt").write_text("zipped " * 100)
    os.utime(root / "zipped.txt", (time.time() - 10, time.time() - 10))
    (root / "zipped.txt.gz").write_bytes(gzip.compress((root / "zipped.txt").read_bytes()))
    origin = Origin(name="app").start()
    config = base_config(
        root,
        localhost_cert,
        upstreams=[{"name": "app", "origins": [origin.url], "connect_timeout": 1.0}],
        routes=[
            {"path": "/", "static": {"root": str(root)}, "cors": CORS_APP},
            {"path": "/open/", "static": {"root": str(root)}, "cors": {"origins": ["*"], "expose_headers": ["etag"]}},
            {"path": "/plain/", "static": {"root": str(root)}},
            {"path": "/locked/", "static": {"root": str(root)}, "cors": {"origins": [APP], "credentials": True}},
            {
                "path": "/api/",
                "methods": ["GET", "POST", "DELETE"],
                "proxy": {"upstream": "app", "strip_prefix": "/api"},
                "cors": {"origins": [APP], "methods": ["GET", "POST"], "headers": ["content-type"]},
            },
            {
                "path": "/cached/",
                "proxy": {"upstream": "app", "strip_prefix": "/cached", "cache": True},
                "cors": {"origins": [APP]},
            },
            {
                "path": "/options/",
                "methods": ["GET", "OPTIONS"],
                "proxy": {"upstream": "app", "strip_prefix": "/options"},
                "cors": {"origins": [APP]},
            },
        ],
        policy={"rules": [{"name": "locked", "path": "/locked/", "allow": ["10.0.0.0/8"]}]},
    )
    config["listeners"][1]["h2c"] = True
    server = Server(config, work, name="cors")
    try:
        server.start()
        yield Lab(server, origin, ca)
    finally:
        server.stop()
        origin.stop()


# --------------------------------------------------------------------------- CORS: preflights


def test_preflight_from_a_listed_origin_is_answered_at_the_edge(lab: Lab) -> None:
    resp = curl(lab.http("/hello.txt"), *preflight_args(APP, "GET", "Content-Type, X-Token"))
    assert resp.status == 204
    assert resp.body == b""
    assert resp.cors() == {
        "access-control-allow-origin": APP,
        "access-control-allow-credentials": "true",
        "access-control-allow-methods": "GET, HEAD",
        "access-control-allow-headers": "content-type, x-token",
        "access-control-max-age": "300",
    }
    assert "origin" in vary(resp)
    assert resp.get("content-length") is None  # RFC 9110: no Content-Length on a 204


def test_preflight_echoes_the_listed_spelling_of_the_origin(lab: Lab) -> None:
    resp = curl(lab.http("/hello.txt"), *preflight_args("HTTPS://APP.Example", "GET"))
    assert resp.status == 204
    assert resp.get("access-control-allow-origin") == APP


@pytest.mark.parametrize(
    ("origin", "method", "headers"),
    [
        (EVIL, "GET", ""),  # origin not listed
        ("https://app.example.evil.example", "GET", ""),  # a listed origin as a prefix is not that origin
        ("null", "GET", ""),
        (APP, "PUT", ""),  # method not approved
        (APP, "GET", "content-type, x-secret"),  # one header not approved
    ],
    ids=["other-origin", "origin-prefix", "null", "method", "header"],
)
def test_preflight_asking_for_what_is_not_listed_gets_403(lab: Lab, origin: str, method: str, headers: str) -> None:
    resp = curl(lab.http("/hello.txt"), *preflight_args(origin, method, headers))
    assert resp.status == 403
    assert resp.cors() == {}
    assert "origin" in vary(resp)
    assert origin.encode() not in resp.body  # nothing the client sent is echoed


def test_preflight_on_a_proxied_route_never_reaches_the_origin(lab: Lab) -> None:
    before = len(lab.origin.requests)
    ok = curl(lab.http("/api/items"), *preflight_args(APP, "POST", "content-type"))
    assert ok.status == 204
    assert ok.get("access-control-allow-methods") == "GET, POST"
    refused = curl(lab.http("/api/items"), *preflight_args(APP, "DELETE"))  # the route takes it; CORS does not
    assert refused.status == 403
    assert len(lab.origin.requests) == before


def test_preflight_is_answered_before_the_access_gate(lab: Lab) -> None:
    """/locked/ admits only 10.0.0.0/8: the preflight (which carries no credentials) still gets its answer,
    and the real request's refusal carries CORS headers so the page can read the 403."""
    pre = curl(lab.http("/locked/f.txt"), *preflight_args(APP, "GET"))
    assert pre.status == 204
    assert pre.get("access-control-allow-origin") == APP
    refused = curl(lab.http("/locked/f.txt"), *origin_args(APP))
    assert refused.status == 403
    assert refused.get("access-control-allow-origin") == APP
    assert refused.get("access-control-allow-credentials") == "true"
    assert "origin" in vary(refused)


def test_options_that_is_no_preflight_goes_on_as_before(lab: Lab) -> None:
    # Without Access-Control-Request-Method an OPTIONS is an ordinary request: 204 with Allow, decorated.
    resp = curl(lab.http("/hello.txt"), "-X", "OPTIONS", *origin_args(APP))
    assert resp.status == 204
    assert resp.get("allow") == "GET, HEAD, OPTIONS"
    assert resp.get("access-control-allow-origin") == APP
    # A route that lists OPTIONS passes such a request to its origin; preflights still stop at the edge.
    tag = f"/x{time.monotonic_ns()}"
    passed = curl(lab.http("/options" + tag), "-X", "OPTIONS", *origin_args(APP))
    assert passed.status == 404  # the origin's answer for an unknown path
    assert passed.get("access-control-allow-origin") == APP
    assert lab.origin.wait_for(1, path=tag)[0].method == "OPTIONS"
    pre = curl(lab.http("/options" + tag), *preflight_args(APP, "GET"))
    assert pre.status == 204
    assert [r.method for r in lab.origin.requests if r.path == tag] == ["OPTIONS"]


def test_preflight_to_a_route_without_cors_is_not_approved(lab: Lab) -> None:
    resp = curl(lab.http("/plain/f.txt"), *preflight_args(APP, "GET"))
    assert resp.status == 204
    assert resp.get("allow") == "GET, HEAD, OPTIONS"
    assert resp.cors() == {}


def test_any_origin_route(lab: Lab) -> None:
    pre = curl(lab.http("/open/f.txt"), *preflight_args(EVIL, "GET"))
    assert pre.status == 204
    assert pre.get("access-control-allow-origin") == "*"
    assert pre.get("access-control-allow-credentials") is None
    for extra in ([], origin_args(EVIL)):
        resp = curl(lab.http("/open/f.txt"), *extra)
        assert resp.status == 200
        assert resp.cors() == {"access-control-allow-origin": "*", "access-control-expose-headers": "etag"}
        assert "origin" not in vary(resp)  # the answer is the same for every origin


# --------------------------------------------------------------------------- CORS: answers and Vary


def test_answer_to_a_listed_origin(lab: Lab) -> None:
    resp = curl(lab.http("/hello.txt"), *origin_args(APP))
    assert resp.status == 200
    assert resp.body == b"hello world\n"
    assert resp.get("content-length") == "12"
    assert resp.cors() == {
        "access-control-allow-origin": APP,
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "etag",
    }
    assert vary(resp) == ["origin"]
    assert resp.get("x-content-type-options") == "nosniff"  # the route's security headers stay


@pytest.mark.parametrize("origin", [EVIL, None], ids=["other-origin", "no-origin"])
def test_answers_that_depend_on_origin_say_so(lab: Lab, origin: str | None) -> None:
    resp = curl(lab.http("/hello.txt"), *(origin_args(origin) if origin else []))
    assert resp.status == 200
    assert resp.body == b"hello world\n"
    assert resp.cors() == {}
    assert vary(resp) == ["origin"]


def test_vary_is_merged_with_the_handlers_own(lab: Lab) -> None:
    for encoding in ("gzip", "identity"):
        resp = curl(lab.http("/zipped.txt"), *origin_args(APP), "-H", f"Accept-Encoding: {encoding}")
        assert resp.status == 200
        assert len(resp.all("vary")) == 1, resp.headers
        assert sorted(vary(resp)) == ["accept-encoding", "origin"]
        assert resp.get("access-control-allow-origin") == APP
    gz = curl(lab.http("/zipped.txt"), *origin_args(APP), "-H", "Accept-Encoding: gzip")
    assert gz.get("content-encoding") == "gzip"
    assert gzip.decompress(gz.body) == b"zipped " * 100


def test_route_without_cors_is_untouched(lab: Lab) -> None:
    resp = curl(lab.http("/plain/f.txt"), *origin_args(APP))
    assert resp.status == 200
    assert resp.cors() == {}
    assert resp.get("vary") is None


def test_errors_on_a_cors_route_are_decorated(lab: Lab) -> None:
    missing = curl(lab.http("/nothing-here"), *origin_args(APP))
    assert missing.status == 404
    assert missing.get("access-control-allow-origin") == APP
    post = curl(lab.http("/hello.txt"), "-X", "POST", "-d", "x", *origin_args(APP))
    assert post.status == 405
    assert post.get("access-control-allow-origin") == APP
    assert "origin" in vary(post)


def test_head_and_keep_alive_keep_their_framing(lab: Lab) -> None:
    """Decorated pre-serialised answers go out as one write: two pipelined requests must both parse."""
    host, port = lab.server.address("http")
    request = (
        b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n"
        b"HEAD /hello.txt HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n"
        b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    first, rest = data.split(b"\r\n\r\n", 1)
    assert b"Access-Control-Allow-Origin: https://app.example" in first
    assert rest.startswith(b"hello world\n")
    second, third = rest[len(b"hello world\n") :].split(b"\r\n\r\n", 1)
    assert second.startswith(b"HTTP/1.1 200")
    assert b"Access-Control" not in second
    assert b"Vary: Origin" in second
    assert third.startswith(b"HTTP/1.1 200")
    assert third.endswith(b"\r\n\r\nhello world\n")


def test_decorated_answers_follow_the_date(lab: Lab) -> None:
    first = curl(lab.http("/hello.txt"), *origin_args(APP))
    time.sleep(1.2)
    second = curl(lab.http("/hello.txt"), *origin_args(APP))
    assert first.get("date") != second.get("date")
    assert second.get("access-control-allow-origin") == APP


def test_proxied_route_edge_policy_replaces_the_origins(lab: Lab) -> None:
    target = lab.http(
        "/api/status?code=200&h=Access-Control-Allow-Origin:https://evil.example"
        "&h=Access-Control-Allow-Methods:PUT&h=Vary:Accept-Language"
    )
    resp = curl(target, *origin_args(APP))
    assert resp.status == 200
    assert resp.get("access-control-allow-origin") == APP
    assert resp.get("access-control-allow-methods") is None
    assert sorted(vary(resp)) == ["accept-language", "origin"]
    other = curl(target, *origin_args(EVIL))
    assert other.status == 200
    assert other.cors() == {}  # the origin's own grant to evil.example does not pass the edge
    assert sorted(vary(other)) == ["accept-language", "origin"]


def test_cached_answers_are_decorated_per_request(lab: Lab) -> None:
    """One stored answer (no Vary on Origin at the origin) serves every origin, each with its own CORS fields."""
    stamp = f"t={time.time_ns()}"
    target = lab.http(f"/cached/cache?cc=max-age%3D60&body=shared&h=Access-Control-Allow-Origin:*&{stamp}")
    first = curl(target, *origin_args(APP))
    second = curl(target, *origin_args(EVIL))
    third = curl(target, *origin_args(APP))
    assert [r.body for r in (first, second, third)] == [b"shared"] * 3
    assert [r.get("access-control-allow-origin") for r in (first, second, third)] == [APP, None, APP]
    assert all(vary(r) == ["origin"] for r in (first, second, third))
    assert "hit" in (third.get("cache-status") or "")  # the third came from the cache
    assert sum(stamp in r.target for r in lab.origin.requests) == 1


def test_cors_over_http2_tls_and_h2c(lab: Lab) -> None:
    tls = curl("--http2", *lab.tls(), lab.https("/hello.txt"), *origin_args(APP))
    h2c = curl("--http2-prior-knowledge", lab.http("/hello.txt"), *origin_args(APP))
    for resp in (tls, h2c):
        assert resp.status == 200
        assert resp.get("access-control-allow-origin") == APP
        assert vary(resp) == ["origin"]
        assert resp.body == b"hello world\n"
    pre = curl("--http2", *lab.tls(), lab.https("/hello.txt"), *preflight_args(APP, "GET", "x-token"))
    assert pre.status == 204
    assert pre.get("access-control-allow-headers") == "content-type, x-token"
    refused = curl("--http2", *lab.tls(), lab.https("/hello.txt"), *preflight_args(EVIL, "GET"))
    assert refused.status == 403


def test_cors_over_http3(lab: Lab) -> None:
    resp = h3(lab.server, lab.ca, "GET", "/hello.txt", [("origin", APP)])
    assert resp.status == 200
    assert resp.get("access-control-allow-origin") == APP
    assert vary(resp) == ["origin"]
    assert resp.body == b"hello world\n"
    other = h3(lab.server, lab.ca, "GET", "/hello.txt", [("origin", EVIL)])
    assert other.cors() == {}
    assert vary(other) == ["origin"]
    pre = h3(
        lab.server,
        lab.ca,
        "OPTIONS",
        "/api/x",
        [
            ("origin", APP),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
    )
    assert pre.status == 204
    assert pre.get("access-control-allow-methods") == "GET, POST"


# --------------------------------------------------------------------------- Host validation


def host_config(site: Path, cert: Issued, **server: Any) -> dict[str, Any]:
    config = base_config(site, cert)
    config["server"].update(server)
    config["routes"] = [
        {"host": "example.com", "path": "/", "static": {"root": str(site)}},
        {"host": "*.example.net", "path": "/", "static": {"root": str(site)}},
        {"host": "127.0.0.1", "path": "/", "static": {"root": str(site)}},
    ]
    return config


def get_with_host(address: tuple[str, int], host: bytes, path: bytes = b"/hello.txt") -> Resp:
    return raw_http(address, b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")


MALFORMED_HOSTS = [
    b"exa mple.com",
    b"user@example.com",
    b"example.com/../x",
    b"example.com:80:80",
    b"example.com:http",
    b"example.com:123456",
    b"[::1",
    b"[zz::1]",
    b"[::1]x",
    b"example..com",
    b".example.com",
    b"ex%61mple.com",
    b"\xe9xample.com",
    b"example.com\\",
    b"",
]


@pytest.mark.parametrize("host", MALFORMED_HOSTS, ids=[h.decode("latin-1") or "empty" for h in MALFORMED_HOSTS])
def test_malformed_host_gets_400(start_server: StartServer, site: Path, localhost_cert: Issued, host: bytes) -> None:
    server = start_server(base_config(site, localhost_cert))  # a `*` route: only the form of the Host matters
    resp = get_with_host(server.address("http"), host)
    assert resp.status == 400
    assert host not in resp.body or not host


def test_unknown_host_gets_421_and_known_ones_are_served(
    start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA
) -> None:
    server = start_server(host_config(site, localhost_cert))
    address = server.address("http")
    for host in (b"example.com", b"EXAMPLE.com.", b"example.com:8080", b"a.example.net", b"b.a.example.net:1"):
        resp = get_with_host(address, host)
        assert (host, resp.status, resp.body) == (host, 200, b"hello world\n")
    for host in (b"example.org", b"example.net", b"xexample.com", b"[::1]:8080", b"10.0.0.1"):
        resp = get_with_host(address, host)
        assert (host, resp.status) == (host, 421)
        assert resp.get("cache-control") == "no-store"
    # An absolute-form target names the host instead of the Host field (RFC 9112 section 3.2.2).
    absolute = b"GET http://%s/hello.txt HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    assert raw_http(address, absolute % b"example.org").status == 421
    assert raw_http(address, absolute % b"a.example.net:8080").status == 200
    # HTTP/1.0 may omit Host; no `*` route here serves a nameless request.
    assert raw_http(address, b"GET /hello.txt HTTP/1.0\r\n\r\n").status == 421
    # Over HTTP/2 (curl sends its Host header as :authority) and HTTP/3 alike.
    url = server.url("https", "/hello.txt")
    assert curl("--http2", "--cacert", str(ca.pem), url, "-H", "Host: example.org").status == 421
    assert curl("--http2", "--cacert", str(ca.pem), url, "-H", "Host: a.example.net").status == 200
    assert h3(server, ca, "GET", "/hello.txt", [], authority="example.org").status == 421
    assert h3(server, ca, "GET", "/hello.txt", [], authority="example.com").status == 200


def test_unknown_host_status_404(start_server: StartServer, site: Path, localhost_cert: Issued) -> None:
    server = start_server(host_config(site, localhost_cert, unknown_host_status=404))
    assert get_with_host(server.address("http"), b"example.org").status == 404
    assert get_with_host(server.address("http"), b"bad host").status == 400


def test_catch_all_route_serves_any_well_formed_host(
    start_server: StartServer, site: Path, localhost_cert: Issued
) -> None:
    server = start_server(base_config(site, localhost_cert))
    address = server.address("http")
    for host in (b"anything.example", b"[::1]:8443", b"10.1.2.3", b"under_score.local:"):
        assert get_with_host(address, host).status == 200, host
    absolute = b"GET http://[::1]:8080/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert raw_http(address, absolute).status == 200  # the IPv6 literal keeps its brackets
    # HTTP/1.0 without Host goes to the `*` route; HTTP/1.1 without Host stays a 400 (RFC 9112).
    assert raw_http(address, b"GET /hello.txt HTTP/1.0\r\n\r\n").status == 200
    assert raw_http(address, b"GET /hello.txt HTTP/1.1\r\nConnection: close\r\n\r\n").status == 400


def test_malformed_authority_over_http2_and_http3(
    start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA
) -> None:
    config = base_config(site, localhost_cert)
    config["listeners"][1]["h2c"] = True
    server = start_server(config)
    client = H2Client.plain(server.address("http"))
    try:
        for authority, status in (("a@b.example", 400), ("x.example:99999", 400), ("x.example", 200)):
            stream_id = client.new_stream()
            client.send_headers(stream_id, client.request_fields("/hello.txt", authority=authority, scheme="http"))
            assert client.response(stream_id).status == status, authority
    finally:
        client.close()
    assert h3(server, ca, "GET", "/hello.txt", [], authority="a@b.example").status == 400
    assert h3(server, ca, "GET", "/hello.txt", [], authority="x.example").status == 200


def test_malformed_host_is_refused_before_the_access_gate(
    start_server: StartServer, site: Path, localhost_cert: Issued
) -> None:
    config = base_config(site, localhost_cert, policy={"network": {"deny": ["127.0.0.0/8"]}})
    server = start_server(config)
    assert get_with_host(server.address("http"), b"a b").status == 400
    assert get_with_host(server.address("http"), b"ok.example").status == 403


# --------------------------------------------------------------------------- /healthz


def test_healthz_on_every_protocol(start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA) -> None:
    config = host_config(site, localhost_cert)
    config["listeners"][1]["h2c"] = True
    server = start_server(config)
    address = server.address("http")
    # Any Host, even one no route serves: a balancer probes by address.
    for host in (b"10.0.0.9:8080", b"example.org", b"not a host"):
        resp = get_with_host(address, host, b"/healthz")
        assert (resp.status, resp.body) == (200, b"ok\n"), host
    resp = raw_http(address, b"GET /healthz?probe=1 HTTP/1.1\r\nHost: 10.0.0.9\r\nConnection: close\r\n\r\n")
    assert (resp.status, resp.body) == (200, b"ok\n")
    assert resp.get("content-type") == "text/plain; charset=utf-8"
    assert resp.get("cache-control") == "no-store"
    head = raw_http(address, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (head.status, head.body, head.get("content-length")) == (200, b"", "3")
    h2c = curl("--http2-prior-knowledge", server.url("http", "/healthz"))
    assert (h2c.status, h2c.body) == (200, b"ok\n")
    https = curl("--http2", "--cacert", str(ca.pem), server.url("https", "/healthz"), "-H", "Host: example.org")
    assert (https.status, https.body) == (200, b"ok\n")
    quic = h3(server, ca, "GET", "/healthz", [])
    assert (quic.status, quic.body) == (200, b"ok\n")
    # The admin listener keeps its own.
    admin = httpx.get(server.admin_url("/healthz"), timeout=5)
    assert (admin.status_code, admin.text) == (200, "ok\n")


def test_healthz_is_exactly_that_path_for_get_and_head(
    start_server: StartServer, site: Path, localhost_cert: Issued
) -> None:
    server = start_server(base_config(site, localhost_cert))
    assert httpx.get(server.url("http", "/healthz/"), timeout=5).status_code == 404  # routed: no such file
    assert httpx.get(server.url("http", "/Healthz"), timeout=5).status_code == 404
    post = httpx.post(server.url("http", "/healthz"), content=b"x", timeout=5)
    assert post.status_code == 405  # routed: the static route takes GET and HEAD


def test_healthz_bypasses_the_gate_but_is_observed(
    start_server: StartServer, site: Path, localhost_cert: Issued, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    config = base_config(
        site,
        localhost_cert,
        policy={"network": {"deny": ["127.0.0.0/8"]}},
        access_log={"enabled": True, "path": str(log), "flush_interval": 0.1},
    )
    server = start_server(config)

    def responses_2xx() -> int:
        text = httpx.get(server.admin_url("/metrics"), timeout=5).text
        return sum(int(v) for v in re.findall(r'edgeward_responses_total\{[^}]*class="2xx"[^}]*\} (\d+)', text))

    before = responses_2xx()
    for _ in range(5):
        assert httpx.get(server.url("http", "/healthz"), timeout=5).text == "ok\n"
    assert httpx.get(server.url("http", "/hello.txt"), timeout=5).status_code == 403  # the gate is on
    # Counted (plus the one /metrics answer before) and logged like any request, under its own route.
    assert responses_2xx() == before + 5 + 1
    wait_for(lambda: log.exists() and "hello.txt" in log.read_text(), 5, "the refused request is logged")
    time.sleep(0.3)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry.get("path") for entry in lines] == ["/healthz"] * 5 + ["/hello.txt"], lines
    assert {entry.get("status") for entry in lines[:5]} == {200}


def test_healthz_path_is_configurable_and_can_be_turned_off(
    start_server: StartServer, site: Path, localhost_cert: Issued
) -> None:
    (site / "healthz").write_text("the site's own file\n")
    moved = start_server(base_config(site, localhost_cert, server={"healthz_path": "/_edge/up"}), name="moved")
    assert httpx.get(moved.url("http", "/_edge/up"), timeout=5).text == "ok\n"
    assert httpx.get(moved.url("http", "/healthz"), timeout=5).text == "the site's own file\n"
    off = start_server(base_config(site, localhost_cert, server={"healthz_path": ""}), name="off")
    assert httpx.get(off.url("http", "/healthz"), timeout=5).text == "the site's own file\n"


# --------------------------------------------------------------------------- config: check, schema


def check(tmp_path: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    from tests.server import to_toml

    path = tmp_path / "edge.toml"
    path.write_text(to_toml(config))
    return subprocess.run(
        [sys.executable, "-m", "ingress", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )


def _cfg(site: Path, cert: Issued, route: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    config = base_config(site, cert)
    config["routes"] = [{"path": "/", "static": {"root": str(site)}, **(route or {})}]
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def _cors(**cors: Any) -> dict[str, Any]:
    return {"cors": {"origins": [APP], **cors}}


BAD_CONFIGS: list[tuple[str, Callable[[Path, Issued], dict[str, Any]], list[str]]] = [
    (
        "star-with-credentials",
        lambda s, c: _cfg(s, c, {"cors": {"origins": ["*"], "credentials": True}}),
        [
            'routes[0].cors.credentials: origins = ["*"] with credentials = true would let any website read answers'
            " made with its visitors' cookies, and browsers refuse the combination; list the origins instead"
            ' (origins = ["https://app.example.com"]) or set credentials = false'
        ],
    ),
    (
        "star-and-more",
        lambda s, c: _cfg(s, c, {"cors": {"origins": ["*", APP]}}),
        ['routes[0].cors.origins: "*" already allows every origin; use ["*"] alone or list origins'],
    ),
    (
        "no-origins",
        lambda s, c: _cfg(s, c, {"cors": {"origins": []}}),
        ['routes[0].cors.origins: list at least one origin, e.g. origins = ["https://app.example.com"]'],
    ),
    (
        "origins-missing",
        lambda s, c: _cfg(s, c, {"cors": {"credentials": True}}),
        ["routes[0].cors.origins: required key is missing"],
    ),
    (
        "origin-with-path",
        lambda s, c: _cfg(s, c, {"cors": {"origins": ["https://app.example/"]}}),
        [
            "routes[0].cors.origins[0]: 'https://app.example/': an origin has no path, query, fragment or user"
            " (browsers send none, not even a final /)"
        ],
    ),
    (
        "origin-wildcard",
        lambda s, c: _cfg(s, c, {"cors": {"origins": ["https://*.example.com"]}}),
        [
            "routes[0].cors.origins[0]: 'https://*.example.com': origins are listed exactly, without wildcards;"
            ' list each one, e.g. "https://app.example.com"'
        ],
    ),
    (
        "origin-null",
        lambda s, c: _cfg(s, c, {"cors": {"origins": ["null"]}}),
        [
            "routes[0].cors.origins[0]: 'null' is the origin of sandboxed frames, file: pages and some redirects,"
            ' which any site can produce; list real origins such as "https://app.example.com"'
        ],
    ),
    (
        "origin-no-scheme",
        lambda s, c: _cfg(s, c, {"cors": {"origins": ["app.example.com"]}}),
        [
            "routes[0].cors.origins[0]: 'app.example.com' is not an origin; write scheme://host[:port],"
            ' e.g. "https://app.example.com"'
        ],
    ),
    (
        "origin-bad-port",
        lambda s, c: _cfg(s, c, {"cors": {"origins": ["https://app.example:0"]}}),
        ["routes[0].cors.origins[0]: 'https://app.example:0': the port must be a number from 1 to 65535"],
    ),
    (
        "origin-twice",
        lambda s, c: _cfg(s, c, {"cors": {"origins": [APP, "https://APP.example"]}}),
        ["routes[0].cors.origins[1]: 'https://APP.example' is already listed as origins[0]"],
    ),
    (
        "method-not-served",
        lambda s, c: _cfg(s, c, _cors(methods=["GET", "POST"])),
        [
            "routes[0].cors.methods[1]: POST is not in the route's methods (GET, HEAD), so a preflight would"
            " approve what the route then refuses with 405; add it to routes[0].methods or remove it here"
        ],
    ),
    (
        "method-star",
        lambda s, c: _cfg(s, c, _cors(methods=["*"])),
        ['routes[0].cors.methods[0]: list the methods, e.g. ["GET", "POST"]; "*" is not taken'],
    ),
    (
        "headers-star",
        lambda s, c: _cfg(s, c, _cors(headers=["*"], expose_headers=["x y"])),
        [
            'routes[0].cors.headers[0]: list the header names, e.g. ["content-type", "authorization"];'
            ' "*" is not taken',
            "routes[0].cors.expose_headers[0]: 'x y' is not a header name",
        ],
    ),
    (
        "max-age-too-long",
        lambda s, c: _cfg(s, c, _cors(max_age=90000)),
        ["routes[0].cors.max_age: 90000 is above the maximum 86400"],
    ),
    (
        "unknown-host-status",
        lambda s, c: _cfg(s, c, server={"unknown_host_status": 500}),
        ["server.unknown_host_status: invalid value 500; expected one of 421, 404"],
    ),
    (
        "healthz-relative",
        lambda s, c: _cfg(s, c, server={"healthz_path": "healthz"}),
        [
            "server.healthz_path: 'healthz' must be a normalised path of plain characters (no %, ?, #, // or dot"
            ' segments), e.g. "/healthz"; "" turns the health check off'
        ],
    ),
    (
        "healthz-escaped",
        lambda s, c: _cfg(s, c, server={"healthz_path": "/health%7a"}),
        [
            "server.healthz_path: '/health%7a' must be a normalised path of plain characters (no %, ?, #, // or"
            ' dot segments), e.g. "/healthz"; "" turns the health check off'
        ],
    ),
    (
        "healthz-root",
        lambda s, c: _cfg(s, c, server={"healthz_path": "/"}),
        [
            'server.healthz_path: "/" would answer every site\'s home page with "ok"; use a path of its own,'
            ' e.g. "/healthz"'
        ],
    ),
    (
        "route-claims-healthz",
        lambda s, c: {
            **_cfg(s, c),
            "routes": [{"path": "/", "static": {"root": str(s)}}, {"path": "/healthz/", "static": {"root": str(s)}}],
        },
        [
            "routes[1].path: '/healthz/' covers '/healthz', which server.healthz_path answers on every listener"
            " before routing, so this route would never see it; set server.healthz_path to another path"
            ' (e.g. "/_edge/healthz") or to "" to let the route serve it'
        ],
    ),
    (
        "socket-options-out-of-range",
        lambda s, c: {
            **_cfg(s, c),
            "listeners": [
                {
                    "name": "http",
                    "address": "127.0.0.1:0",
                    "socket": {"backlog": 0, "defer_accept": -1, "fastopen": 70000, "nodelay": "yes"},
                }
            ],
        },
        [
            "listeners[0].socket.backlog: 0 is below the minimum 1",
            "listeners[0].socket.defer_accept: -1 is below the minimum 0",
            "listeners[0].socket.fastopen: 70000 is above the maximum 65535",
            "listeners[0].socket.nodelay: expected true or false, got str 'yes'",
        ],
    ),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_refused_with_its_key_and_fix(
    tmp_path: Path,
    site: Path,
    localhost_cert: Issued,
    make: Callable[[Path, Issued], dict[str, Any]],
    expected: list[str],
) -> None:
    out = check(tmp_path, make(site, localhost_cert))
    assert out.returncode == 2, out.stderr
    path = tmp_path / "edge.toml"
    assert [line for line in out.stderr.splitlines() if line] == [f"{path}: {line}" for line in expected]


def test_good_config_with_every_new_key_passes_check(tmp_path: Path, site: Path, localhost_cert: Issued) -> None:
    config = _cfg(
        site,
        localhost_cert,
        {"cors": {**CORS_APP, "methods": ["GET"]}},
        server={"unknown_host_status": 404, "healthz_path": "/_edge/healthz"},
    )
    config["listeners"][1]["socket"] = {"backlog": 128, "nodelay": False, "defer_accept": 1, "fastopen": 16}
    config["routes"].append({"path": "/healthz", "static": {"root": str(site)}})  # the health path moved away
    out = check(tmp_path, config)
    assert out.returncode == 0, out.stderr


def test_schema_documents_the_new_keys() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ingress", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    props = json.loads(out.stdout)["properties"]
    server = props["server"]["properties"]
    assert server["unknown_host_status"]["enum"] == [421, 404]
    assert server["unknown_host_status"]["default"] == 421
    assert server["healthz_path"]["default"] == "/healthz"
    sock = props["listeners"]["items"]["properties"]["socket"]["properties"]
    assert {k: v.get("default") for k, v in sock.items()} == {
        "backlog": 4096,
        "nodelay": True,
        "defer_accept": 0,
        "fastopen": 0,
    }
    cors = props["routes"]["items"]["properties"]["cors"]
    assert cors["required"] == ["origins"]
    assert cors["properties"]["max_age"]["maximum"] == 86400
    for node in (*server.values(), *sock.values(), *cors["properties"].values()):
        assert node["description"]


# --------------------------------------------------------------------------- socket options


_PIDFD_GETFD = 438  # syscall number on x86_64 and aarch64


def worker_pid(server: Server) -> int:
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _inodes(port: int, state: str, remote_port: int | None = None) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local, remote, st, inode = cols[1], cols[2], cols[3], cols[9]
            if int(local.rsplit(":", 1)[1], 16) != port or st != state:
                continue
            if remote_port is not None and int(remote.rsplit(":", 1)[1], 16) != remote_port:
                continue
            found.add(inode)
    return found


def borrowed(pid: int, inode: str) -> socket.socket:
    """A duplicate of the process's descriptor for socket `inode` (pidfd_getfd), to getsockopt on."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target == f"socket:[{inode}]":
            pidfd = os.pidfd_open(pid)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                dup = libc.syscall(_PIDFD_GETFD, pidfd, int(fd), 0)
                assert dup >= 0, os.strerror(ctypes.get_errno())
            finally:
                os.close(pidfd)
            return socket.socket(fileno=dup)
    raise AssertionError(f"socket {inode} not open in {pid}")


def listening_socket(server: Server, listener: str) -> socket.socket:
    port = server.address(listener)[1]
    (inode,) = _inodes(port, "0A")  # one worker: one LISTEN socket (the supervisor's is only bound)
    return borrowed(worker_pid(server), inode)


def ss_backlog(port: int) -> int:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True)
    # State Recv-Q Send-Q ...: Send-Q of a LISTEN socket is its backlog; one socket per worker, all alike.
    (backlog,) = {int(line.split()[2]) for line in out.stdout.splitlines() if line.strip()}
    return backlog


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def test_backlog_is_what_the_listener_asks_for(start_server: StartServer, site: Path, localhost_cert: Issued) -> None:
    config = base_config(site, localhost_cert)
    config["listeners"][1]["socket"] = {"backlog": 77}
    server = start_server(config)
    assert ss_backlog(server.address("http")[1]) == 77
    assert ss_backlog(server.address("https")[1]) == min(4096, somaxconn())  # the default
    # A reload with new socket options rebinds the listener with them.
    config["listeners"][1]["socket"] = {"backlog": 55}
    server.write_config(config)
    server.signal(signal.SIGHUP)
    wait_for(lambda: ss_backlog(server.address("http")[1]) == 55, 10, "backlog 55 after reload")
    assert httpx.get(server.url("http", "/hello.txt"), timeout=5).text == "hello world\n"


def test_backlog_above_somaxconn_is_said_once(start_server: StartServer, site: Path, localhost_cert: Issued) -> None:
    config = base_config(site, localhost_cert)
    wanted = somaxconn() + 1
    config["listeners"][1]["socket"] = {"backlog": wanted}
    server = start_server(config, workers=2)
    assert ss_backlog(server.address("http")[1]) == somaxconn()
    said = [line for line in server.log().splitlines() if "net.core.somaxconn" in line]
    assert len(said) == 1, said
    assert f"listener http: backlog {wanted} is capped by the kernel at net.core.somaxconn = {somaxconn()}" in said[0]


def test_nodelay_on_accepted_connections(start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA) -> None:
    config = base_config(site, localhost_cert)
    config["listeners"][1]["socket"] = {"nodelay": False}
    server = start_server(config)
    pid = worker_pid(server)
    for listener, expected in (("https", 1), ("http", 0)):
        port = server.address(listener)[1]
        raw = socket.create_connection((LOCAL, port), timeout=5)
        client = (
            ssl.create_default_context(cafile=str(ca.pem)).wrap_socket(raw, server_hostname="localhost")
            if listener == "https"
            else raw
        )
        with client:
            client.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
            (inode,) = _inodes(port, "01", client.getsockname()[1])
            with borrowed(pid, inode) as accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == expected, listener
        with listening_socket(server, listener) as lsock:
            assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == expected


def test_defer_accept_keeps_silent_connections_in_the_kernel(
    start_server: StartServer, site: Path, localhost_cert: Issued
) -> None:
    config = base_config(site, localhost_cert)
    config["listeners"][1]["socket"] = {"defer_accept": 5}
    server = start_server(config)
    with listening_socket(server, "http") as lsock:
        assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) >= 5
    with listening_socket(server, "https") as lsock:
        assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
    deferred, plain = server.address("http")[1], server.address("https")[1]
    silent = socket.create_connection((LOCAL, deferred), timeout=5)
    control = socket.create_connection((LOCAL, plain), timeout=5)
    with silent, control:
        time.sleep(0.3)
        # The server's side of the silent connection is still half-open (SYN-RECV, state 03): not accepted.
        assert _inodes(deferred, "01", silent.getsockname()[1]) == set()
        assert _inodes(deferred, "03", silent.getsockname()[1])
        assert _worker_holds(server, deferred) == 0
        # Without the option the kernel hands the connection over at once.
        assert _inodes(plain, "01", control.getsockname()[1])
        assert _worker_holds(server, plain) == 1
        silent.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := silent.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello world\n")


def _worker_holds(server: Server, port: int) -> int:
    """Established connections to `port` that the worker has accepted (holds a descriptor for)."""
    held = {os.readlink(f"/proc/{worker_pid(server)}/fd/{fd}") for fd in os.listdir(f"/proc/{worker_pid(server)}/fd")}
    return sum(f"socket:[{inode}]" in held for inode in _inodes(port, "01"))


def _tcp_ext(name: str) -> int:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for keys, values in zip(lines[::2], lines[1::2], strict=True):
        if keys.startswith("TcpExt:"):
            return int(dict(zip(keys.split(), values.split(), strict=True))[name])
    raise AssertionError("no TcpExt in /proc/net/netstat")


def test_fastopen_queue_is_set_and_the_kernel_setting_is_reported(
    start_server: StartServer, site: Path, localhost_cert: Issued
) -> None:
    config = base_config(site, localhost_cert)
    config["listeners"][1]["socket"] = {"fastopen": 32}
    server = start_server(config)
    with listening_socket(server, "http") as lsock:
        assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN) == 32
    with listening_socket(server, "https") as lsock:
        assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN) == 0
    sysctl = int(Path("/proc/sys/net/ipv4/tcp_fastopen").read_text())
    warned = [line for line in server.log().splitlines() if "tcp_fastopen" in line]
    url = server.url("http", "/hello.txt")
    if sysctl & 0x2:
        assert warned == []
        before = _tcp_ext("TCPFastOpenPassive")
        for _ in range(3):  # the first connection fetches a cookie; later ones send data in the SYN
            subprocess.run(["curl", "-sS", "--tcp-fastopen", "-o", "/dev/null", url], check=True, timeout=10)
        assert _tcp_ext("TCPFastOpenPassive") > before
    else:
        assert len(warned) == 1, warned
        assert f"net.ipv4.tcp_fastopen = {sysctl} does not enable it for servers" in warned[0]
        # Still served: the option is kept, the kernel simply takes no data in the SYN.
        resp = curl("--tcp-fastopen", url)
        assert (resp.status, resp.body) == (200, b"hello world\n")


def test_options_the_os_lacks_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, on a real socket: what the server does on an OS without TCP_DEFER_ACCEPT."""
    from ingress.config.model import SocketOptions
    from ingress.server.listeners import apply_options

    monkeypatch.delattr(socket, "TCP_DEFER_ACCEPT")
    with socket.socket() as sock:
        skipped = apply_options(sock, SocketOptions(defer_accept=3, fastopen=8, nodelay=False))
        assert skipped == ["TCP_DEFER_ACCEPT is not available on this OS; continuing without it"]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN) == 8
