"""Static files against the real server: resolution, headers, traversal, conditionals, ranges,
precompressed sidecars, large (streamed) files, cache revalidation and the access log.

Clients are httpx (verify=client_tls) and curl; a raw socket where a client would normalise the
request target. `raw_get` reads bodies with `iter_raw`, so a Content-Encoding is never decoded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import resource
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import base_config
from tests.h3client import H3Transport
from tests.pki import CA, Issued
from tests.server import Server

HELLO = b"hello world\n"
KIB_BIN = bytes(range(256)) * 4
BIG_BIN = bytes(range(256)) * 4096 * 2
SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT\n"
APP_JS = b"console.log('edgeward precompressed test');\n" * 20
APP_JS_BR = b"BR-SIDECAR-BYTES:" + bytes(range(40))  # opaque to the server; never decoded here
STRONG_ETAG = re.compile(r'^"[^"\s]+"$')
SECURITY = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
}

StartServer = Callable[..., Server]


def digest(data: bytes) -> str:
    """Compare large bodies by hash so a mismatch does not print megabytes."""
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()}"


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(params=["h1", "h2", "h3"])
def client(request: pytest.FixtureRequest, ca: CA) -> Iterator[httpx.Client]:
    """The behaviour suite's one client, run over each protocol version in turn.

    Plain `http://` URLs have no h2 (no h2c on these listeners) and no h3, so
    they go over HTTP/1.1 whatever the parameter; `https://` ones use the
    version named, and `expect_version` checks that they really did.
    """
    version = request.param
    if version == "h3":
        c = httpx.Client(transport=H3Transport(str(ca.pem)), timeout=10.0)
    else:
        # A context of its own: httpx sets ALPN on it, which must not leak into raw-socket tests.
        verify = ssl.create_default_context(cafile=str(ca.pem))
        c = httpx.Client(verify=verify, timeout=10.0, http2=version == "h2")
    with c:
        del c.headers["Accept-Encoding"]  # only the tests that negotiate send it
        c.event_hooks["response"] = [_version_check(version)]
        yield c


_VERSIONS = {"h1": "HTTP/1.1", "h2": "HTTP/2", "h3": "HTTP/3"}


def _version_check(version: str) -> Callable[[httpx.Response], None]:
    def check(response: httpx.Response) -> None:
        if response.url.scheme == "https":
            assert response.http_version == _VERSIONS[version], (response.url, response.http_version)

    return check


@pytest.fixture
def custom(start_server: StartServer, site: Path, localhost_cert: Issued) -> Callable[..., Server]:
    def _start(**overrides: Any) -> Server:
        return start_server(base_config(site, localhost_cert, **overrides))

    return _start


def static_routes(root: Path, **static: Any) -> list[dict[str, Any]]:
    return [{"path": "/", "static": {"root": str(root), **static}}]


def raw_get(client: httpx.Client, url: str, **headers: str) -> tuple[httpx.Response, bytes]:
    """GET without decoding any Content-Encoding; header names use `_` for `-`."""
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    with client.stream("GET", url, headers=sent) as r:
        body = b"".join(r.iter_raw())
    return r, body


def raw_request(srv: Server, listener: str, target: str, client_tls: ssl.SSLContext) -> tuple[int, bytes]:
    """Send a request target byte for byte (no client-side normalisation); return (status, body)."""
    sock = socket.create_connection(srv.address(listener), timeout=5)
    if listener == "https":
        sock = client_tls.wrap_socket(sock, server_hostname="localhost")
    with sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--http1.1", *args], capture_output=True, timeout=timeout, check=False)


def wait_for(predicate: Callable[[], Any], timeout: float = 3.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def poll(
    client: httpx.Client, url: str, ok: Callable[[httpx.Response], bool], timeout: float = 3.0
) -> httpx.Response | None:
    """GET `url` until `ok(response)`; the response, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(url)
        if ok(r):
            return r
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def parse_byteranges(content_type: str, body: bytes) -> list[tuple[str, str, bytes]]:
    """Parse multipart/byteranges strictly: [(content_type, content_range, data)] using each part's length."""
    match = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", content_type)
    assert match, content_type
    delimiter = b"--" + match.group(1).encode()
    parts: list[tuple[str, str, bytes]] = []
    pos = body.index(delimiter)
    assert body[:pos].strip(b"\r\n") == b"", "junk before the first boundary"
    while True:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            assert body[pos + 2 :].strip(b"\r\n") == b""
            return parts
        assert body[pos : pos + 2] == b"\r\n"
        head_end = body.index(b"\r\n\r\n", pos)
        fields = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in body[pos + 2 : head_end].decode().split("\r\n"))
        )
        first, last = re.fullmatch(r"bytes (\d+)-(\d+)/\d+", fields["content-range"]).groups()  # type: ignore[union-attr]
        start = head_end + 4
        end = start + int(last) - int(first) + 1
        parts.append((fields["content-type"], fields["content-range"], body[start:end]))
        assert body[end : end + 2] == b"\r\n"
        pos = body.index(delimiter, end)
        assert pos == end + 2


# --- resolution and content types ---------------------------------------------------------------------------------


def test_index_directories_and_missing(server: Server, client: httpx.Client) -> None:
    r = client.get(server.url("https", "/"))
    assert (r.status_code, r.content) == (200, b"<h1>home</h1>\n")
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    r = client.get(server.url("https", "/sub"))
    assert (r.status_code, r.headers["location"]) == (301, "/sub/")
    r = client.get(server.url("https", "/sub?a=1&b=2"))
    assert (r.status_code, r.headers["location"]) == (301, "/sub/?a=1&b=2")
    r = client.get(server.url("https", "/sub/"))
    assert (r.status_code, r.content) == (200, b"<h1>sub</h1>\n")
    r = client.get(server.url("https", "/sub/index.html"))
    assert (r.status_code, r.content) == (200, b"<h1>sub</h1>\n")
    for missing in ("/missing", "/missing.html", "/sub/missing/", "/hello.txt/", "/hello.txt/x"):
        r = client.get(server.url("https", missing))
        assert r.status_code == 404, missing
        assert HELLO not in r.content
    r = client.get(server.url("https", "/sub"), follow_redirects=True)
    assert (r.status_code, r.content) == (200, b"<h1>sub</h1>\n")


def test_directory_without_index_is_404(server: Server, site: Path, client: httpx.Client) -> None:
    (site / "empty").mkdir()
    (site / "empty" / "file.txt").write_text("x")
    assert client.get(server.url("https", "/empty/")).status_code == 404
    assert client.get(server.url("https", "/empty/file.txt")).status_code == 200


def test_percent_encoded_and_unicode_names(server: Server, site: Path, client: httpx.Client) -> None:
    (site / "café.txt").write_text("unicode name\n")
    (site / "a b.txt").write_text("space in name\n")
    (site / "dir with space").mkdir()
    (site / "dir with space" / "index.html").write_text("spaced dir\n")
    assert client.get(server.url("https", "/caf%C3%A9.txt")).content == b"unicode name\n"
    assert client.get(server.url("https", "/a%20b.txt")).content == b"space in name\n"
    assert client.get(server.url("https", "/%68ello.txt")).content == HELLO  # an encoded plain letter
    r = client.get(server.url("https", "/dir%20with%20space"))
    assert (r.status_code, r.headers["location"]) == (301, "/dir%20with%20space/")
    assert client.get(server.url("https", "/dir%20with%20space/")).content == b"spaced dir\n"
    assert client.get(server.url("https", "/caf%E9.txt")).status_code == 400  # not UTF-8


CONTENT_TYPES = {
    "page.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "notes.txt": "text/plain; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "data.json": "application/json",
    "image.PNG": "image/png",
    "blob.unknownext": "application/octet-stream",
    "noextension": "application/octet-stream",
    "dir.d/file": "application/octet-stream",
}


def test_content_types(server: Server, site: Path, client: httpx.Client) -> None:
    (site / "dir.d").mkdir()
    for name in CONTENT_TYPES:
        (site / name).write_bytes(b"content of " + name.encode())
    for name, expected in CONTENT_TYPES.items():
        r = client.get(server.url("https", "/" + name))
        assert (r.status_code, r.headers["content-type"]) == (200, expected), name
        assert r.content == b"content of " + name.encode()


def test_curl_fetches_index_over_tls(server: Server, ca: CA) -> None:
    out = curl("--cacert", str(ca.pem), "-D", "-", server.url("https", "/"))
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"\r\nContent-Type: text/html; charset=utf-8" in head
    assert body == b"<h1>home</h1>\n"


# --- security headers ---------------------------------------------------------------------------------------------


def test_security_headers_and_hsts_only_on_tls(server: Server, client: httpx.Client) -> None:
    tls = client.get(server.url("https", "/hello.txt"))
    plain = client.get(server.url("http", "/hello.txt"))
    for name, value in SECURITY.items():
        assert tls.headers.get(name) == value, name
        if name == "strict-transport-security":
            assert name not in plain.headers
        else:
            assert plain.headers.get(name) == value, name
    assert "content-security-policy" not in tls.headers
    # A 304 carries them too.
    again = client.get(server.url("https", "/hello.txt"), headers={"If-None-Match": tls.headers["etag"]})
    assert again.status_code == 304
    assert again.headers.get("strict-transport-security") == SECURITY["strict-transport-security"]
    assert again.headers.get("x-frame-options") == "DENY"


def test_security_headers_per_route_override(custom: Callable[..., Server], site: Path, client: httpx.Client) -> None:
    srv = custom(
        routes=[
            {
                "path": "/sub/",
                "static": {"root": str(site)},
                "headers": {
                    "hsts": "",
                    "content_security_policy": "default-src 'self'",
                    "frame_options": "SAMEORIGIN",
                    "referrer_policy": "",
                },
            },
            {"path": "/", "static": {"root": str(site)}},
        ]
    )
    sub = client.get(srv.url("https", "/sub/"))
    assert (sub.status_code, sub.content) == (200, b"<h1>sub</h1>\n")
    assert "strict-transport-security" not in sub.headers
    assert "referrer-policy" not in sub.headers
    assert sub.headers["content-security-policy"] == "default-src 'self'"
    assert sub.headers["x-frame-options"] == "SAMEORIGIN"
    assert sub.headers["x-content-type-options"] == "nosniff"
    not_modified = client.get(srv.url("https", "/sub/"), headers={"If-None-Match": sub.headers["etag"]})
    assert not_modified.status_code == 304
    assert not_modified.headers["content-security-policy"] == "default-src 'self'"
    assert "strict-transport-security" not in not_modified.headers
    root = client.get(srv.url("https", "/hello.txt"))
    assert root.headers["strict-transport-security"] == SECURITY["strict-transport-security"]
    assert root.headers["x-frame-options"] == "DENY"
    assert "content-security-policy" not in root.headers


# --- traversal, symlinks, dotfiles ---------------------------------------------------------------------------------

TRAVERSAL_TARGETS = [
    "/../etc/passwd",
    "/../../../../../../etc/passwd",
    "/../secret.txt",
    "/sub/../../secret.txt",
    "/./../secret.txt",
    "/%2e%2e/",
    "/%2e%2e/secret.txt",
    "/%2e%2e%2f",
    "/%2e%2e%2fsecret.txt",
    "/%2E%2E/%2E%2E/etc/passwd",
    "/.%2e/secret.txt",
    "/..%2f..%2fetc/passwd",
    "/..%2fsecret.txt",
    "/a/%2e%2e/%2e%2e/etc/passwd",
    "/a/%2e%2e/%2e%2e/secret.txt",
    "/%252e%252e/secret.txt",
    "/hello.txt%00",
    "/hello.txt%00.html",
    "/%00/../secret.txt",
    "/..\\secret.txt",
    "/..\\..\\etc\\passwd",
    "/%5c..%5csecret.txt",
    "/sub%5c..%5c..%5csecret.txt",
    "//etc/passwd",
    "/%2fetc%2fpasswd",
    "http://localhost/../secret.txt",
]


def test_traversal_attempts_never_leave_the_root(server: Server, tmp_path: Path, client_tls: ssl.SSLContext) -> None:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    failures = []
    for listener in ("http", "https"):
        for target in TRAVERSAL_TARGETS:
            status, body = raw_request(server, listener, target, client_tls)
            if status not in (400, 403, 404) or SECRET in body or b"root:" in body:
                failures.append(f"{listener} {target!r} -> {status} {body[:60]!r}")
    assert not failures, "\n".join(failures)


def test_curl_path_as_is_traversal(server: Server, tmp_path: Path, ca: CA) -> None:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    for url in (server.url("https", "/../secret.txt"), server.url("https", "/sub/../../secret.txt")):
        out = curl("--path-as-is", "--cacert", str(ca.pem), "-w", "\n%{http_code}", url)
        assert out.returncode == 0, out.stderr
        assert out.stdout.endswith(b"\n400")
        assert SECRET not in out.stdout


def test_symlinks(server: Server, site: Path, tmp_path: Path, client: httpx.Client) -> None:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    (outside_dir / "file.txt").write_bytes(SECRET)
    (site / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (site / "escape-dir").symlink_to(outside_dir, target_is_directory=True)
    (site / "escape-abs.txt").symlink_to("/etc/passwd")
    (site / "alias.txt").symlink_to("hello.txt")
    (site / "sub" / "up.txt").symlink_to("../hello.txt")
    (site / "sub-link").symlink_to("sub", target_is_directory=True)
    for path in ("/escape.txt", "/escape-dir/file.txt", "/escape-abs.txt"):
        r = client.get(server.url("https", path))
        assert r.status_code == 403, path
        assert SECRET not in r.content
        assert b"root:" not in r.content
    for path, body in (("/alias.txt", HELLO), ("/sub/up.txt", HELLO), ("/sub-link/", b"<h1>sub</h1>\n")):
        r = client.get(server.url("https", path))
        assert (r.status_code, r.content) == (200, body), path


def test_dotfiles_hidden_by_default(server: Server, site: Path, client: httpx.Client) -> None:
    (site / ".env").write_text("SECRET_KEY=1\n")
    (site / ".git").mkdir()
    (site / ".git" / "config").write_text("[core]\n")
    (site / "sub" / ".hidden").write_text("hidden\n")
    (site / ".well-known").mkdir()
    (site / ".well-known" / "security.txt").write_text("Contact: mailto:security@example.com\n")
    for path in ("/.env", "/.git/config", "/.git/", "/sub/.hidden", "/%2eenv", "/sub/%2ehidden", "/.git%2fconfig"):
        r = client.get(server.url("https", path))
        assert r.status_code == 404, path
        assert b"SECRET_KEY" not in r.content
        assert b"[core]" not in r.content
    r = client.get(server.url("https", "/.well-known/security.txt"))
    assert (r.status_code, r.content) == (200, b"Contact: mailto:security@example.com\n")


def test_dotfiles_served_when_enabled(custom: Callable[..., Server], site: Path, client: httpx.Client) -> None:
    (site / ".env").write_text("SECRET_KEY=1\n")
    (site / ".git").mkdir()
    (site / ".git" / "config").write_text("[core]\n")
    srv = custom(routes=static_routes(site, dotfiles=True))
    assert client.get(srv.url("https", "/.env")).content == b"SECRET_KEY=1\n"
    assert client.get(srv.url("https", "/.git/config")).content == b"[core]\n"
    assert client.get(srv.url("https", "/.env/../secret")).status_code in (400, 404)


# --- validators and conditional requests ----------------------------------------------------------------------------

FILES = [pytest.param("/hello.txt", HELLO, id="inline"), pytest.param("/big.bin", BIG_BIN, id="streamed")]


@pytest.mark.parametrize(("path", "data"), FILES)
def test_validators_and_if_none_match(server: Server, site: Path, client: httpx.Client, path: str, data: bytes) -> None:
    url = server.url("https", path)
    r = client.get(url)
    assert r.status_code == 200
    assert digest(r.content) == digest(data)
    etag, last_modified = r.headers["etag"], r.headers["last-modified"]
    assert STRONG_ETAG.match(etag), etag
    assert last_modified == formatdate(int((site / path[1:]).stat().st_mtime), usegmt=True)
    assert r.headers["accept-ranges"] == "bytes"
    for value in (etag, f"W/{etag}", "*", f'"nope", {etag}', f'"nope",{etag} , "x"'):
        nm = client.get(url, headers={"If-None-Match": value})
        assert nm.status_code == 304, value
        assert nm.content == b""
        assert nm.headers["etag"] == etag
        assert "content-length" not in nm.headers or nm.headers["content-length"] == str(len(data))
    head = client.head(url, headers={"If-None-Match": etag})
    assert head.status_code == 304
    for value in ('"nope"', 'W/"nope"', etag[:-2] + '"'):
        ok = client.get(url, headers={"If-None-Match": value})
        assert ok.status_code == 200, value
        assert digest(ok.content) == digest(data)


@pytest.mark.parametrize(("path", "data"), FILES)
def test_if_modified_since(server: Server, client: httpx.Client, path: str, data: bytes) -> None:
    url = server.url("https", path)
    r = client.get(url)
    last_modified = r.headers["last-modified"]
    mtime = parsedate_to_datetime(last_modified).timestamp()
    assert client.get(url, headers={"If-Modified-Since": last_modified}).status_code == 304
    older = formatdate(mtime - 3600, usegmt=True)
    r = client.get(url, headers={"If-Modified-Since": older})
    assert r.status_code == 200
    assert digest(r.content) == digest(data)
    assert client.get(url, headers={"If-Modified-Since": "not a date"}).status_code == 200
    # If-None-Match takes precedence over If-Modified-Since.
    r = client.get(url, headers={"If-None-Match": '"nope"', "If-Modified-Since": last_modified})
    assert r.status_code == 200


@pytest.mark.parametrize(("path", "data"), FILES)
def test_if_match_and_if_unmodified_since(server: Server, client: httpx.Client, path: str, data: bytes) -> None:
    url = server.url("https", path)
    r = client.get(url)
    etag = r.headers["etag"]
    mtime = parsedate_to_datetime(r.headers["last-modified"]).timestamp()
    assert client.get(url, headers={"If-Match": '"nope"'}).status_code == 412
    assert client.get(url, headers={"If-Match": f"W/{etag}"}).status_code == 412  # strong comparison
    ok = client.get(url, headers={"If-Match": etag})
    assert (ok.status_code, digest(ok.content)) == (200, digest(data))
    assert client.get(url, headers={"If-Match": "*"}).status_code == 200
    assert client.get(url, headers={"If-Unmodified-Since": formatdate(mtime - 86400, usegmt=True)}).status_code == 412
    assert client.get(url, headers={"If-Unmodified-Since": formatdate(mtime + 86400, usegmt=True)}).status_code == 200
    # If-Match, when present, replaces If-Unmodified-Since.
    both = client.get(url, headers={"If-Match": etag, "If-Unmodified-Since": formatdate(mtime - 86400, usegmt=True)})
    assert both.status_code == 200


def test_obsolete_http_date_formats_are_gmt(
    start_server: StartServer,
    site: Path,
    localhost_cert: Issued,
    client: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RFC 850 and asctime dates are GMT too (RFC 9110 §5.6.7), whatever the server's local time zone."""
    monkeypatch.setenv("TZ", "JST-9")  # the server process inherits it
    srv = start_server(base_config(site, localhost_cert))
    url = srv.url("https", "/hello.txt")
    when = parsedate_to_datetime(client.get(url).headers["last-modified"])
    rfc850 = when.strftime("%A, %d-%b-%y %H:%M:%S GMT")
    asctime = when.strftime("%a %b ") + f"{when.day:>2}" + when.strftime(" %H:%M:%S %Y")
    for value in (rfc850, asctime):
        assert client.get(url, headers={"If-Modified-Since": value}).status_code == 304, value
        assert client.get(url, headers={"If-Unmodified-Since": value}).status_code == 200, value


# --- ranges -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["http", "https"])
@pytest.mark.parametrize(
    ("path", "data"),
    [
        pytest.param("/1k.bin", KIB_BIN, id="inline"),
        pytest.param("/mid.bin", os.urandom(100 * 1024), id="inline-sendfile"),
        pytest.param("/big.bin", BIG_BIN, id="streamed"),
    ],
)
def test_ranges(server: Server, site: Path, client: httpx.Client, listener: str, path: str, data: bytes) -> None:
    (site / path[1:]).write_bytes(data)
    url = server.url(listener, path)
    size = len(data)

    def get(range_: str, **extra: str) -> httpx.Response:
        return client.get(url, headers={"Range": range_, **extra})

    r = get("bytes=0-9")
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 0-9/{size}"
    assert r.headers["content-length"] == "10"
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == data[:10]
    r = get("bytes=-5")
    assert (r.status_code, r.headers["content-range"], r.content) == (
        206,
        f"bytes {size - 5}-{size - 1}/{size}",
        data[-5:],
    )
    r = get("bytes=10-")
    assert (r.status_code, r.headers["content-range"]) == (206, f"bytes 10-{size - 1}/{size}")
    assert digest(r.content) == digest(data[10:])
    r = get(f"bytes={size - 3}-{size + 100}")
    assert (r.status_code, r.content) == (206, data[-3:])
    r = get("bytes=0-1,5-6")
    assert r.status_code == 206
    assert "content-range" not in r.headers
    assert int(r.headers["content-length"]) == len(r.content)
    parts = parse_byteranges(r.headers["content-type"], r.content)
    assert parts == [
        ("application/octet-stream", f"bytes 0-1/{size}", data[0:2]),
        ("application/octet-stream", f"bytes 5-6/{size}", data[5:7]),
    ]
    far, span = size // 4, size // 8
    r = get(f"bytes=-3,{far}-{far + span - 1}")
    parts = parse_byteranges(r.headers["content-type"], r.content)
    assert [p[2] for p in parts] == [data[far : far + span], data[-3:]]
    r = get("bytes=0-3,2-5,6-7")  # overlapping and adjacent ranges are coalesced (or sent as asked)
    assert r.status_code == 206
    if r.headers["content-type"].startswith("multipart/"):
        joined = b"".join(p[2] for p in parse_byteranges(r.headers["content-type"], r.content))
        assert joined in (data[0:8], data[0:4] + data[2:6] + data[6:8])
    else:
        assert (r.headers["content-range"], r.content) == (f"bytes 0-7/{size}", data[:8])
    r = get("bytes=99999999-")
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{size}"
    assert data[:16] not in r.content
    for invalid in ("bytes=abc", "bytes=5-2", "items=0-1", "bytes 0-1", "bytes=0-1;x", "bytes=--1"):
        r = get(invalid)
        assert r.status_code == 200, invalid
        assert digest(r.content) == digest(data), invalid
    etag = client.get(url).headers["etag"]
    r = get("bytes=0-9", **{"If-Range": etag})
    assert (r.status_code, r.content) == (206, data[:10])
    r = get("bytes=0-9", **{"If-Range": '"stale-etag"'})
    assert r.status_code == 200
    assert digest(r.content) == digest(data)
    r = get("bytes=0-9", **{"If-Range": f"W/{etag}"})
    assert r.status_code == 200
    head = client.head(url, headers={"Range": "bytes=0-9"})
    assert head.status_code in (200, 206)
    # The connection is still in sync after all of the above.
    r = client.get(url)
    assert digest(r.content) == digest(data)


def test_range_edge_cases(server: Server, site: Path, client: httpx.Client) -> None:
    (site / "empty.txt").write_bytes(b"")
    url = server.url("https", "/1k.bin")
    # Empty list elements are ignored (RFC 9110 §5.6.1.2), not a reason to drop the Range.
    r = client.get(url, headers={"Range": "bytes=0-1,,5-6"})
    assert r.status_code == 206
    assert [p[2] for p in parse_byteranges(r.headers["content-type"], r.content)] == [KIB_BIN[0:2], KIB_BIN[5:7]]
    r = client.get(url, headers={"Range": "bytes=1024-"})  # first byte just past the end
    assert (r.status_code, r.headers["content-range"]) == (416, "bytes */1024")
    r = client.get(url, headers={"Range": "bytes=0-0,-1"})
    assert [p[2] for p in parse_byteranges(r.headers["content-type"], r.content)] == [KIB_BIN[:1], KIB_BIN[-1:]]
    r = client.get(url, headers={"Range": "bytes=-2000"})  # suffix longer than the file: all of it
    assert (r.status_code, r.headers["content-range"], r.content) == (206, "bytes 0-1023/1024", KIB_BIN)
    r = client.get(url, headers={"Range": "bytes=" + ",".join(f"{i * 10}-{i * 10}" for i in range(40))})
    assert r.status_code == 200  # too many ranges: ignored rather than amplified
    assert r.content == KIB_BIN
    empty = server.url("https", "/empty.txt")
    for spec in ("bytes=-5", "bytes=0-", "bytes=0-0"):
        r = client.get(empty, headers={"Range": spec})
        assert r.status_code in (200, 416), spec
        assert r.content == b"" or r.status_code == 416
        if r.status_code == 416:
            assert r.headers["content-range"] == "bytes */0"
        assert "content-range" not in r.headers or r.headers["content-range"] == "bytes */0", spec


def test_curl_range_and_if_range_date(server: Server, ca: CA, client: httpx.Client) -> None:
    url = server.url("https", "/big.bin")
    out = curl("--cacert", str(ca.pem), "-r", "1000-1999", "-w", "%{http_code}", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == BIG_BIN[1000:2000] + b"206"
    last_modified = client.get(url).headers["last-modified"]
    r = client.get(url, headers={"Range": "bytes=5-9", "If-Range": last_modified})
    assert (r.status_code, r.content) == (206, BIG_BIN[5:10])


# --- precompressed sidecars ----------------------------------------------------------------------------------------


@pytest.fixture
def precompressed(site: Path) -> Path:
    """app.js with .gz and .br sidecars that are newer than it; old.js with a stale .gz."""
    now = time.time()
    (site / "app.js").write_bytes(APP_JS)
    (site / "app.js.gz").write_bytes(gzip.compress(APP_JS, mtime=0))
    (site / "app.js.br").write_bytes(APP_JS_BR)
    os.utime(site / "app.js", (now - 100, now - 100))
    os.utime(site / "app.js.gz", (now - 50, now - 50))
    os.utime(site / "app.js.br", (now - 100, now - 100))  # same mtime as the original still counts
    (site / "old.js").write_bytes(APP_JS)
    (site / "old.js.gz").write_bytes(gzip.compress(b"stale content", mtime=0))
    os.utime(site / "old.js.gz", (now - 200, now - 200))
    os.utime(site / "old.js", (now - 100, now - 100))
    return site


def test_precompressed_negotiation(server: Server, precompressed: Path, client: httpx.Client) -> None:
    url = server.url("https", "/app.js")
    gz = (precompressed / "app.js.gz").read_bytes()
    identity, body = raw_get(client, url)
    assert body == APP_JS
    assert "content-encoding" not in identity.headers
    assert identity.headers["vary"] == "Accept-Encoding"
    assert identity.headers["content-type"] == "text/javascript; charset=utf-8"

    br, body = raw_get(client, url, Accept_Encoding="br, gzip")
    assert (br.headers["content-encoding"], body) == ("br", APP_JS_BR)
    assert br.headers["vary"] == "Accept-Encoding"
    assert br.headers["content-length"] == str(len(APP_JS_BR))
    assert br.headers["content-type"] == "text/javascript; charset=utf-8"
    assert STRONG_ETAG.match(br.headers["etag"])
    assert br.headers["etag"] != identity.headers["etag"]

    r, body = raw_get(client, url, Accept_Encoding="gzip;q=1, br;q=0.5")
    assert (r.headers["content-encoding"], body) == ("gzip", gz)
    assert gzip.decompress(body) == APP_JS
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["etag"] not in (identity.headers["etag"], br.headers["etag"])

    for accept in ("identity", "br;q=0", "br;q=0, identity", "compress, deflate", "gzip;q=0, br;q=0"):
        r, body = raw_get(client, url, Accept_Encoding=accept)
        assert "content-encoding" not in r.headers, accept
        assert body == APP_JS, accept
        assert r.headers["vary"] == "Accept-Encoding", accept
        assert r.headers["etag"] == identity.headers["etag"], accept
    r, body = raw_get(client, url, Accept_Encoding="br;q=0, gzip")
    assert (r.headers["content-encoding"], body) == ("gzip", gz)
    r, body = raw_get(client, url, Accept_Encoding="GZIP")
    assert r.headers.get("content-encoding") == "gzip"
    r, body = raw_get(client, url, Accept_Encoding="*")
    assert r.headers.get("content-encoding") == "br"


def test_precompressed_conditionals_ranges_and_head(server: Server, precompressed: Path, client: httpx.Client) -> None:
    url = server.url("https", "/app.js")
    br, _ = raw_get(client, url, Accept_Encoding="br")
    identity, _ = raw_get(client, url)
    r, body = raw_get(client, url, Accept_Encoding="br", If_None_Match=br.headers["etag"])
    assert (r.status_code, body) == (304, b"")
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["etag"] == br.headers["etag"]
    # The identity ETag does not validate the br representation (and vice versa).
    r, body = raw_get(client, url, Accept_Encoding="br", If_None_Match=identity.headers["etag"])
    assert (r.status_code, body) == (200, APP_JS_BR)
    r, body = raw_get(client, url, If_None_Match=br.headers["etag"])
    assert (r.status_code, body) == (200, APP_JS)
    r, body = raw_get(client, url, Accept_Encoding="br", Range="bytes=0-4")
    assert (r.status_code, body) == (206, APP_JS_BR[:5])
    assert r.headers["content-range"] == f"bytes 0-4/{len(APP_JS_BR)}"
    assert r.headers["content-encoding"] == "br"
    head = client.head(url, headers={"Accept-Encoding": "br"})
    assert head.headers["content-length"] == str(len(APP_JS_BR))
    assert head.headers["content-encoding"] == "br"


def test_stale_sidecar_is_ignored(server: Server, precompressed: Path, client: httpx.Client) -> None:
    r, body = raw_get(client, server.url("https", "/old.js"), Accept_Encoding="gzip, br")
    assert r.status_code == 200
    assert body == APP_JS
    assert "content-encoding" not in r.headers
    # A sidecar requested directly is just a file.
    r, body = raw_get(client, server.url("https", "/old.js.gz"))
    assert (r.status_code, r.headers["content-type"]) == (200, "application/gzip")
    assert "content-encoding" not in r.headers


def test_precompressed_disabled(custom: Callable[..., Server], precompressed: Path, client: httpx.Client) -> None:
    srv = custom(routes=static_routes(precompressed, precompressed=False))
    r, body = raw_get(client, srv.url("https", "/app.js"), Accept_Encoding="br, gzip")
    assert body == APP_JS
    assert "content-encoding" not in r.headers
    assert "vary" not in r.headers


def test_curl_compressed_gzip(server: Server, precompressed: Path, ca: CA) -> None:
    url = server.url("https", "/app.js")
    out = curl("--cacert", str(ca.pem), "-H", "Accept-Encoding: gzip", "--compressed", "-D", "/dev/stderr", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == APP_JS
    assert b"Content-Encoding: gzip" in out.stderr


# --- large files: sendfile (plain) and mmap (TLS) ------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["http", "https"])
def test_big_file_byte_identical(server: Server, client: httpx.Client, ca: CA, listener: str) -> None:
    url = server.url(listener, "/big.bin")
    r = client.get(url)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(BIG_BIN))
    assert digest(r.content) == digest(BIG_BIN)
    with client.stream("GET", url) as streamed:
        assert digest(b"".join(streamed.iter_bytes(4096))) == digest(BIG_BIN)
    out = curl("--cacert", str(ca.pem), "--limit-rate", "2M", url)
    assert out.returncode == 0, out.stderr
    assert digest(out.stdout) == digest(BIG_BIN)


@pytest.mark.parametrize("listener", ["http", "https"])
def test_big_file_slow_reader_does_not_block_others(
    server: Server, client: httpx.Client, client_tls: ssl.SSLContext, listener: str
) -> None:
    """A reader with a tiny receive window stalls mid-body; the worker keeps serving, and the body completes."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(server.address(listener))
    if listener == "https":
        sock = client_tls.wrap_socket(sock, server_hostname="localhost")
    with sock:
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = sock.recv(16384)
        time.sleep(0.3)  # the server now has a full socket and must wait, not spin or buffer the file
        for _ in range(3):
            r = client.get(server.url(listener, "/hello.txt"))
            assert (r.status_code, r.content) == (200, HELLO)
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert digest(body) == digest(BIG_BIN)


@pytest.mark.parametrize("inline_max_bytes", [0, 4 << 20], ids=["nothing-inline", "everything-inline"])
def test_inline_threshold_does_not_change_bytes(
    custom: Callable[..., Server], site: Path, client: httpx.Client, inline_max_bytes: int
) -> None:
    (site / "mid.bin").write_bytes(os.urandom(100 * 1024))
    (site / "empty.txt").write_bytes(b"")
    srv = custom(routes=static_routes(site, inline_max_bytes=inline_max_bytes))
    files = {
        "/hello.txt": HELLO,
        "/1k.bin": KIB_BIN,
        "/mid.bin": (site / "mid.bin").read_bytes(),
        "/big.bin": BIG_BIN,
        "/empty.txt": b"",
        "/": b"<h1>home</h1>\n",
    }
    for listener in ("http", "https"):
        for path, data in files.items():
            url = srv.url(listener, path)
            r = client.get(url)
            assert r.status_code == 200, (listener, path)
            assert r.headers["content-length"] == str(len(data))
            assert digest(r.content) == digest(data), (listener, path)
            etag = r.headers["etag"]
            assert STRONG_ETAG.match(etag)
            assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
            head = client.head(url)
            assert (head.status_code, head.headers["content-length"]) == (200, str(len(data)))
            if len(data) > 10:
                r = client.get(url, headers={"Range": "bytes=1-3,-2"})
                parts = parse_byteranges(r.headers["content-type"], r.content)
                assert [p[2] for p in parts] == [data[1:4], data[-2:]]
                r = client.get(url, headers={"Range": "bytes=3-"})
                assert digest(r.content) == digest(data[3:])


# --- cache revalidation ----------------------------------------------------------------------------------------------


def test_changed_and_deleted_files_are_noticed(server: Server, site: Path, client: httpx.Client) -> None:
    """Each listener has its own cache; both must serve new content and a new ETag within ~2 s (one tick)."""
    urls = {name: (server.url(name, "/hello.txt"), server.url(name, "/big.bin")) for name in ("http", "https")}
    old = {name: (client.get(h).headers["etag"], client.get(b).headers["etag"]) for name, (h, b) in urls.items()}

    changed = b"changed content, longer than before\n"
    new_big = bytes(reversed(BIG_BIN))  # same size: only the content and mtime differ
    (site / "hello.txt").write_bytes(changed)
    (site / "big.bin").write_bytes(new_big)
    start = time.monotonic()
    for name, (hello, big) in urls.items():
        r = poll(client, hello, lambda x: x.content == changed)
        assert r, f"{name}: new content not served within 3 s"
        assert r.headers["content-length"] == str(len(changed))
        assert r.headers["etag"] != old[name][0]
        assert client.get(hello, headers={"If-None-Match": old[name][0]}).status_code == 200
        assert client.get(hello, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        old_big = old[name][1]
        rb = poll(client, big, lambda x: x.headers["etag"] != old_big)  # noqa: B023 - called right here
        assert rb, f"{name}: new big.bin not served within 3 s"
        assert digest(rb.content) == digest(new_big)
    assert time.monotonic() - start < 2.5

    # Replaced by rename (new inode), as deploy tools do.
    tmp = site / "hello.txt.tmp"
    tmp.write_bytes(b"renamed into place\n")
    tmp.replace(site / "hello.txt")
    for name, (hello, _) in urls.items():
        assert poll(client, hello, lambda x: x.content == b"renamed into place\n"), name

    (site / "hello.txt").unlink()
    (site / "big.bin").unlink()
    start = time.monotonic()
    for name, (hello, big) in urls.items():
        assert poll(client, hello, lambda x: x.status_code == 404), f"{name}: deleted file served"
        assert poll(client, big, lambda x: x.status_code == 404), f"{name}: deleted big file served"
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("listener", ["http", "https"])
def test_file_truncated_in_place_does_not_kill_the_worker(
    server: Server, site: Path, client: httpx.Client, client_tls: ssl.SSLContext, listener: str
) -> None:
    """Truncating a large file that is being served (in place, same inode) may cut responses short
    until the cache notices, but must not crash the worker (an mmap read past the new end of file
    raises SIGBUS)."""
    url = server.url(listener, "/big.bin")
    assert digest(client.get(url).content) == digest(BIG_BIN)  # now cached (and mapped, on TLS)
    with open(site / "big.bin", "r+b") as f:
        f.truncate(1000)

    def fetch() -> httpx.Response | None:
        try:
            return client.get(url)
        except httpx.TransportError:
            return None  # cutting the connection is honest once the promised length cannot be sent

    r = fetch()  # within the same revalidation tick the old length is still believed
    assert r is None or (r.status_code, r.content) == (200, BIG_BIN[:1000])
    with httpx.Client(verify=client_tls, timeout=5.0) as fresh:
        for _ in range(3):
            try:
                assert fresh.get(server.url(listener, "/hello.txt")).content == HELLO
            except httpx.TransportError as exc:
                pytest.fail(f"worker gone after the file was truncated ({exc!r}); log:\n{server.log()[-1500:]}")
    assert wait_for(lambda: (x := fetch()) is not None and x.content == BIG_BIN[:1000]), "truncated file not re-read"
    assert "worker.restart" not in server.log(), server.log()[-2000:]


def test_many_large_files_do_not_exhaust_file_descriptors(
    custom: Callable[..., Server], site: Path, client: httpx.Client, client_tls: ssl.SSLContext
) -> None:
    """The cache may keep streamed files open, but not without bound. Started with RLIMIT_NOFILE at 256
    (1024 is a common default), the server must serve 300 distinct 40 KiB files on each listener, and
    keep serving (and accepting) after them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = max(256, len(os.listdir("/proc/self/fd")) + 64)
    count = limit + 44
    many = site / "many"
    many.mkdir()
    for i in range(count):
        (many / f"f{i}.bin").write_bytes(b"%06d" % i + bytes(40 * 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))  # inherited by the server it starts
    try:
        srv = custom(routes=static_routes(site, inline_max_bytes=16 * 1024))  # 40 KiB is streamed on TLS too
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    failures = []
    for listener in ("http", "https"):
        for i in range(count):
            try:
                r = client.get(srv.url(listener, f"/many/f{i}.bin"))
                ok = r.status_code == 200 and r.content[:6] == b"%06d" % i and len(r.content) == 6 + 40 * 1024
                if not ok:
                    failures.append(f"{listener} f{i}.bin -> {r.status_code}")
            except httpx.TransportError as exc:
                failures.append(f"{listener} f{i}.bin -> {exc!r}")
    with httpx.Client(verify=client_tls, timeout=5.0) as fresh:
        for listener in ("http", "https"):
            try:
                r = fresh.get(srv.url(listener, "/hello.txt"))
                if (r.status_code, r.content) != (200, HELLO):
                    failures.append(f"{listener} fresh /hello.txt -> {r.status_code}")
            except httpx.TransportError as exc:
                failures.append(f"{listener} fresh /hello.txt -> {exc!r}")
    assert not failures, f"{len(failures)} failures, first: {failures[:5]}, last: {failures[-3:]}"


# --- access log ----------------------------------------------------------------------------------------------------

LOG_KEYS = {
    "trace_id",
    "span_id",
    "time",
    "client",
    "method",
    "path",
    "status",
    "bytes",
    "duration_ms",
    "protocol",
    "tls",
    "sni",
    "client_cert",
    "auth",
    "auth_reason",
}


def test_access_log_json_lines(custom: Callable[..., Server], tmp_path: Path, client: httpx.Client, ca: CA) -> None:
    log_path = tmp_path / "access.log"
    srv = custom(access_log={"enabled": True, "path": str(log_path), "flush_interval": 0.1})
    host, port = srv.address("https")
    out = curl(
        "--cacert",
        str(ca.pem),
        "--resolve",
        f"localhost:{port}:{host}",
        f"https://localhost:{port}/hello.txt",
    )
    assert (out.returncode, out.stdout) == (0, HELLO), out.stderr
    assert client.get(srv.url("http", "/big.bin")).status_code == 200
    assert client.head(srv.url("http", "/hello.txt")).status_code == 200
    missing_response = client.get(srv.url("https", "/missing"))
    assert missing_response.status_code == 404

    def records() -> list[dict[str, Any]]:
        if not log_path.exists():
            return []
        return [json.loads(line) for line in log_path.read_text().splitlines() if line]

    entries = wait_for(lambda: len(records()) >= 4 and records())
    assert entries, f"access log incomplete: {log_path.read_text() if log_path.exists() else '(missing)'}"
    assert len(entries) == 4
    for entry in entries:
        assert set(entry) == LOG_KEYS
        assert re.fullmatch(r"[0-9a-f]{32}", entry["trace_id"]) and re.fullmatch(r"[0-9a-f]{16}", entry["span_id"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
        assert entry["client"] == "127.0.0.1"
        assert entry["client_cert"] == ""  # no listener here asks for a client certificate
        assert (entry["auth"], entry["auth_reason"]) == ("", "")  # no [policy]: no gate ran
        assert isinstance(entry["duration_ms"], int | float)
        assert 0 <= entry["duration_ms"] < 5000
    tls, big, head, missing = entries
    # curl here is pinned to HTTP/1.1; plain http is always HTTP/1.1; the client speaks its parameter's version.
    protocols = [e["protocol"] for e in entries]
    assert protocols == ["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", missing_response.http_version]
    assert {k: tls[k] for k in ("method", "path", "status", "bytes", "tls", "sni")} == {
        "method": "GET",
        "path": "/hello.txt",
        "status": 200,
        "bytes": len(HELLO),
        "tls": "TLSv1.3",
        "sni": "localhost",
    }
    assert {k: big[k] for k in ("method", "path", "status", "bytes", "tls", "sni")} == {
        "method": "GET",
        "path": "/big.bin",
        "status": 200,
        "bytes": len(BIG_BIN),
        "tls": "",
        "sni": "",
    }
    assert (head["method"], head["status"], head["bytes"]) == ("HEAD", 200, 0)
    # httpx connects to 127.0.0.1, and TLS sends no SNI for an IP address.
    assert (missing["path"], missing["status"], missing["tls"], missing["sni"]) == ("/missing", 404, "TLSv1.3", "")
