"""The shared cache end to end: the real edge in front of the test origin, real clients.

What is asserted is what a client and the origin see: Cache-Status and Age
on the answers, and how many requests reached the origin. The cache's
rules themselves are unit-tested in test_cache_unit.py; these tests prove
they are wired into the request path on every protocol, that concurrent
misses collapse, that a purge on the admin listener reaches every worker,
that answers of unknown length are stored when they fit and streamed
(with bounded memory) when they do not, that targeted fields rule this
cache without leaking what Cache-Control calls private, and that ranges
are served from stored answers.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import base_config
from tests.origin import Origin, Received, pattern_bytes, pattern_sha256
from tests.pki import Issued
from tests.server import Server, wait_for
from tests.test_proxy import RssSampler, rss_kib

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


class FramedOrigin:
    """An origin on a plain socket that sends one fixed answer per connection, then closes its side.

    For the framings tests/origin.py does not send: a body that ends where
    the connection does, or one cut short.
    """

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.requests = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        break
                    head += data
                if b"\r\n\r\n" in head:
                    self.requests += 1
                    conn.sendall(self.reply)
                    conn.shutdown(socket.SHUT_WR)  # FIN: a clean end of the connection

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() on Linux, which close() alone does not
        self._sock.close()
        self._thread.join(5)


def cache_config(site: Path, cert: Issued, origin: Origin | FramedOrigin, **cache: Any) -> dict[str, Any]:
    config = base_config(site, cert)
    config["upstreams"] = [{"name": "app", "origins": [origin.url], "retries": 0}]
    config["routes"] = [
        {"path": "/", "methods": ["GET", "HEAD", "POST", "PURGE"], "proxy": {"upstream": "app", "cache": True}}
    ]
    config["cache"] = {"max_bytes": 1 << 20, "max_object_bytes": 64 * 1024, **cache}
    return config


@pytest.fixture
def edge(start_server: Callable[..., Server], site: Path, localhost_cert: Issued, origin: Origin) -> Server:
    return start_server(cache_config(site, localhost_cert, origin))


def target(tag: str, **params: str) -> str:
    """A unique /cache URL per test, so module-scoped origin counters never mix."""
    return "/cache?" + urllib.parse.urlencode({"t": f"{tag}-{time.monotonic_ns()}", **params})


def get(edge: Server, path: str, **headers: str) -> httpx.Response:
    return httpx.get(edge.url("http", path), headers=headers, timeout=10)


def test_hit_after_a_stored_miss(edge: Server, origin: Origin) -> None:
    path = target("hit", cc="max-age=60", body="cached body")
    first = get(edge, path)
    second = get(edge, path)
    assert (first.status_code, first.text) == (200, "cached body")
    assert first.headers["cache-status"] == "edgeward; fwd=uri-miss; stored"
    assert second.text == "cached body"
    assert second.headers["cache-status"].startswith("edgeward; hit; ttl=")
    assert int(second.headers["age"]) <= 1
    assert origin.count_target(path) == 1


def test_hit_over_http2(edge: Server, origin: Origin, client_tls: ssl.SSLContext) -> None:
    path = target("h2", cc="max-age=60", body="over h2")
    url = edge.url("https", path).replace("127.0.0.1", "localhost")
    with httpx.Client(http2=True, verify=client_tls) as client:
        first = client.get(url)
        reply = client.get(url)
    assert first.headers["cache-status"] == "edgeward; fwd=uri-miss; stored"
    assert reply.http_version == "HTTP/2"
    assert (reply.status_code, reply.text) == (200, "over h2")
    assert reply.headers["cache-status"].startswith("edgeward; hit")
    assert origin.count_target(path) == 1


def test_no_store_and_private_are_never_stored(edge: Server, origin: Origin) -> None:
    for cc in ("no-store", "private, max-age=60"):
        path = target("nostore", cc=cc)
        get(edge, path)
        reply = get(edge, path)
        assert "hit" not in reply.headers["cache-status"]
        assert origin.count_target(path) == 2


def test_authorization_is_stored_only_when_the_origin_allows(edge: Server, origin: Origin) -> None:
    plain = target("auth", cc="max-age=60")
    get(edge, plain, authorization="Bearer x")
    get(edge, plain, authorization="Bearer x")
    assert origin.count_target(plain) == 2
    public = target("auth-public", cc="public, max-age=60")
    get(edge, public, authorization="Bearer x")
    reply = get(edge, public, authorization="Bearer x")
    assert reply.headers["cache-status"].startswith("edgeward; hit")
    assert origin.count_target(public) == 1


def test_vary_keeps_variants_apart(edge: Server, origin: Origin) -> None:
    path = target("vary", cc="max-age=60", vary="Accept-Language")
    en = get(edge, path, **{"accept-language": "en"})
    fr = get(edge, path, **{"accept-language": "fr"})
    en_again = get(edge, path, **{"accept-language": "en"})
    assert fr.headers["cache-status"] == "edgeward; fwd=vary-miss; stored"
    assert en_again.headers["cache-status"].startswith("edgeward; hit")
    assert en.headers["x-origin-seq"] == en_again.headers["x-origin-seq"] != fr.headers["x-origin-seq"]
    assert origin.count_target(path) == 2


def test_revalidation_with_etag_gets_a_304_from_the_origin(edge: Server, origin: Origin) -> None:
    path = target("etag", cc="max-age=1", etag='"v1"', body="validated")
    get(edge, path)
    time.sleep(2.2)
    reply = get(edge, path)
    assert reply.status_code == 200 and reply.text == "validated"
    assert reply.headers["cache-status"] == "edgeward; fwd=stale; fwd-status=304"
    again = [r for r in origin.requests if r.target == path]
    assert len(again) == 2 and again[1].header("if-none-match") == '"v1"'


def test_client_conditional_on_a_hit_gets_304(edge: Server, origin: Origin) -> None:
    path = target("cond", cc="max-age=60", etag='"abc"')
    get(edge, path)
    reply = get(edge, path, **{"if-none-match": '"abc"'})
    assert reply.status_code == 304
    assert origin.count_target(path) == 1


def test_unsafe_method_invalidates(edge: Server, origin: Origin) -> None:
    path = target("inval", cc="max-age=60")
    get(edge, path)
    assert get(edge, path).headers["cache-status"].startswith("edgeward; hit")
    httpx.post(edge.url("http", path), content=b"x", timeout=10)
    reply = get(edge, path)
    assert "hit" not in reply.headers["cache-status"]


def test_concurrent_misses_make_one_origin_fetch(edge: Server, origin: Origin) -> None:
    """Singleflight: twenty clients miss at once; the origin answers one of them, slowly."""
    path = "/slow?" + urllib.parse.urlencode({"ms": "400", "cc": "max-age=60", "t": str(time.monotonic_ns())})
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: get(edge, path), range(20)))
    assert [r.status_code for r in replies] == [200] * 20
    assert origin.count_target(path) == 1
    statuses = [r.headers["cache-status"] for r in replies]
    assert statuses.count("edgeward; fwd=uri-miss; stored") == 1
    assert all("hit" in s for s in statuses if "stored" not in s)


def test_stale_if_error_serves_the_stored_answer_when_the_origin_fails(
    start_server: Callable[..., Server], site: Path, localhost_cert: Issued
) -> None:
    with Origin() as flaky:
        edge = start_server(cache_config(site, localhost_cert, flaky))
        path = target("sie", cc="max-age=1, stale-if-error=60", body="still here")
        assert get(edge, path).text == "still here"
        flaky.kill()
        time.sleep(2.2)
        reply = get(edge, path)
        assert (reply.status_code, reply.text) == (200, "still here")
        assert reply.headers["cache-status"] == "edgeward; hit; detail=stale-if-error"


def test_only_if_cached_miss_is_504_without_touching_the_origin(edge: Server, origin: Origin) -> None:
    path = target("oic", cc="max-age=60")
    reply = get(edge, path, **{"cache-control": "only-if-cached"})
    assert reply.status_code == 504
    assert origin.count_target(path) == 0


def test_purge_reaches_every_worker(
    start_server: Callable[..., Server], site: Path, localhost_cert: Issued, origin: Origin
) -> None:
    edge = start_server(cache_config(site, localhost_cert, origin), workers=2)
    path = target("purge", cc="max-age=600")
    # Fill both workers' caches: new connections spread over the SO_REUSEPORT workers.
    for _ in range(20):
        get(edge, path)
    filled = origin.count_target(path)
    assert 1 <= filled <= 2
    reply = httpx.request("PURGE", edge.admin_url("/cache?" + urllib.parse.urlencode({"path": "/cache"})), timeout=5)
    assert reply.status_code == 200 and reply.json()["prefix"] is False
    time.sleep(1.5)  # the other worker applies the purge log on its next tick
    for _ in range(20):
        get(edge, path)
    assert origin.count_target(path) == filled * 2 or origin.count_target(path) == filled + 2
    for _ in range(10):
        assert get(edge, path).headers["cache-status"].startswith("edgeward; hit")


def test_purge_needs_a_path(edge: Server) -> None:
    reply = httpx.request("PURGE", edge.admin_url("/cache"), timeout=5)
    assert reply.status_code == 400
    assert "path=" in reply.text


def test_cache_metrics_count_hits_and_misses(edge: Server, origin: Origin) -> None:
    path = target("metrics", cc="max-age=60")
    get(edge, path)
    get(edge, path)
    wait_for(lambda: "edgeward_cache_lookups_total" in httpx.get(edge.admin_url("/metrics")).text, 5, "metrics")
    text = httpx.get(edge.admin_url("/metrics"), timeout=5).text
    hits = [line for line in text.splitlines() if line.startswith("edgeward_cache_lookups_total") and "hit" in line]
    assert hits and int(hits[0].rsplit(" ", 1)[1]) >= 1


def test_a_get_body_is_not_forwarded_on_a_cached_route(edge: Server, origin: Origin) -> None:
    """The key does not include the body, so forwarding one would let a client poison the entry."""
    path = target("fatget", cc="max-age=60", body="real")
    reply = httpx.request("GET", edge.url("http", path), content=b"poison" * 10, timeout=10)
    assert reply.text == "real"
    (seen,) = [r for r in origin.requests if r.target == path]
    assert seen.body_length == 0 and seen.header("content-length") is None


# --- answers of unknown length ------------------------------------------------------------------------------------


def bytes_target(tag: str, n: int, **params: str) -> str:
    """/bytes answering `n` pattern bytes chunked, cacheable for a minute, at a URL unique to this test."""
    query = {"n": str(n), "chunked": "1", "h": "Cache-Control:max-age=60", "t": f"{tag}-{time.monotonic_ns()}"}
    return "/bytes?" + urllib.parse.urlencode({**query, **params})


def test_chunked_answer_that_fits_is_stored(edge: Server, origin: Origin) -> None:
    """A body exactly the object limit (64 KiB here), sent chunked, is stored and replayed with its length."""
    path = bytes_target("fits", 64 * KiB, chunk="8192")
    first = get(edge, path)
    second = get(edge, path)
    assert first.headers["cache-status"] == "edgeward; fwd=uri-miss; stored"
    assert first.content == second.content == pattern_bytes(0, 64 * KiB)
    assert first.headers["content-length"] == second.headers["content-length"] == str(64 * KiB)
    assert "transfer-encoding" not in second.headers
    assert second.headers["cache-status"].startswith("edgeward; hit")
    assert origin.count_target(path) == 1


def test_chunked_answer_past_the_limit_streams_whole_and_is_not_stored(edge: Server, origin: Origin) -> None:
    path = bytes_target("past", 64 * KiB + 1, chunk="1000")
    for _ in range(2):
        reply = get(edge, path)
        assert reply.content == pattern_bytes(0, 64 * KiB + 1)
        assert reply.headers["cache-status"] == "edgeward; fwd=uri-miss; fwd-status=200"
        assert reply.headers["transfer-encoding"] == "chunked" and "content-length" not in reply.headers
    assert origin.count_target(path) == 2


def test_chunked_answer_past_the_limit_keeps_backpressure_and_bounded_memory(
    start_server: Callable[..., Server], site: Path, localhost_cert: Issued, origin: Origin
) -> None:
    """256 MiB, chunked, cacheable, over a 4 MiB object limit: held back while the client waits, never held whole.

    The limit is above the pipe's own high-water mark, so while the edge
    gathers the answer for storing, the pipe takes up to the limit; once
    it has outgrown it the stream must get the usual backpressure back.
    """
    n = 256 * MiB
    edge = start_server(cache_config(site, localhost_cert, origin, max_bytes=64 * MiB, max_object_bytes=4 * MiB))
    worker = int(edge.refresh_state()["workers"][0])
    path = bytes_target("big", n, chunk=str(MiB))
    # Under the limit but over the pipe's usual mark, so the origin is paused before the cache starts gathering.
    fits = bytes_target("fits-big", 3 * MiB, chunk=str(MiB))
    stored, hit = (get(edge, fits) for _ in range(2))
    assert stored.headers["cache-status"] == "edgeward; fwd=uri-miss; stored" and len(stored.content) == 3 * MiB
    assert hit.headers["cache-status"].startswith("edgeward; hit")
    warm = bytes_target("warm", 16 * MiB, chunk=str(MiB))
    assert len(get(edge, warm).content) == 16 * MiB  # pools, buffers and allocator arenas, as a real download would
    before = rss_kib(worker)
    digest = hashlib.sha256()
    got = 0
    with RssSampler(worker) as sampler, httpx.stream("GET", edge.url("http", path), timeout=30) as reply:
        assert reply.headers["cache-status"] == "edgeward; fwd=uri-miss; fwd-status=200"
        chunks = reply.iter_bytes()
        first = next(chunks)
        digest.update(first)
        got += len(first)
        (seen,) = [r for r in origin.requests if r.target == path]
        # The client reads nothing for a second: the origin must be held back, not let run to the end.
        time.sleep(1.0)
        assert not seen.responded, "the origin sent the whole answer while the client was not reading"
        for chunk in chunks:
            digest.update(chunk)
            got += len(chunk)
    growth = (sampler.peak - before) / 1024
    print(f"\n256 MiB chunked over a 4 MiB object limit: worker RSS grew {growth:.1f} MiB")
    assert got == n and digest.hexdigest() == pattern_sha256(n)
    assert seen.responded
    assert growth <= 16, f"worker RSS grew {growth:.1f} MiB"


def test_event_stream_is_relayed_as_it_arrives(edge: Server, origin: Origin) -> None:
    """A cacheable event stream is not held back to be stored: the first event comes before the last is sent."""
    path = "/sse?" + urllib.parse.urlencode(
        {"events": "3", "interval_ms": "500", "h": "Cache-Control:max-age=60", "t": str(time.monotonic_ns())}
    )
    with httpx.stream("GET", edge.url("http", path), timeout=10) as reply:
        assert reply.headers["cache-status"] == "edgeward; fwd=uri-miss; fwd-status=200"
        lines = reply.iter_lines()
        first = next(lines)
        (seen,) = [r for r in origin.requests if r.target == path]
        assert first == "id: 0" and seen.events_sent < 3
        assert "data: event 2" in "".join(lines)
    assert seen.events_sent == 3


def test_close_delimited_answer_is_stored_and_a_cut_one_is_not(
    start_server: Callable[..., Server], site: Path, localhost_cert: Issued
) -> None:
    """A body that ends with a clean close is complete (RFC 9112 §8); a chunked body cut short is never stored."""
    whole = FramedOrigin(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Type: text/plain\r\n\r\nall of it")
    cut = FramedOrigin(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n"
    )
    try:
        edge = start_server(cache_config(site, localhost_cert, whole))
        first, second = get(edge, "/closed"), get(edge, "/closed")
        assert first.text == second.text == "all of it"
        assert first.headers["cache-status"] == "edgeward; fwd=uri-miss; stored"
        assert second.headers["cache-status"].startswith("edgeward; hit")
        assert whole.requests == 1
        edge = start_server(cache_config(site, localhost_cert, cut), name="cut")
        for _ in range(2):
            assert get(edge, "/cut").status_code == 502
        assert cut.requests == 2
    finally:
        whole.close()
        cut.close()


# --- targeted cache control ---------------------------------------------------------------------------------------


def only(origin: Origin, path: str) -> Received:
    (seen,) = [r for r in origin.requests if r.target == path]
    return seen


def test_surrogate_control_rules_the_edge_and_is_consumed(edge: Server, origin: Origin) -> None:
    """Cache-Control: no-store for everyone else, Surrogate-Control: max-age for the edge, which keeps it to itself."""
    path = target("sc", cc="no-store", h="Surrogate-Control:max-age=60", body="edge only")
    first = get(edge, path)
    second = get(edge, path)
    assert first.headers["cache-status"] == "edgeward; fwd=uri-miss; stored"
    assert second.headers["cache-status"].startswith("edgeward; hit") and second.text == "edge only"
    for reply in (first, second):
        assert reply.headers["cache-control"] == "no-store"
        assert "surrogate-control" not in reply.headers
    assert only(origin, path).header("surrogate-capability") == 'edgeward="Surrogate/1.0"'


def test_surrogate_control_for_another_device_is_passed_on_and_ignored(edge: Server, origin: Origin) -> None:
    path = target("sc-other", cc="no-store", h="Surrogate-Control:max-age=60;othercdn")
    for _ in range(2):
        reply = get(edge, path, **{"surrogate-capability": 'othercdn="Surrogate/1.0"'})
        assert reply.headers["surrogate-control"] == "max-age=60;othercdn"
        assert "hit" not in reply.headers["cache-status"]
    assert origin.count_target(path) == 2
    # The capability of the surrogate in front goes on, with the edge's own after it.
    seen = [r for r in origin.requests if r.target == path]
    assert seen[0].header("surrogate-capability") == 'othercdn="Surrogate/1.0", edgeward="Surrogate/1.0"'


def test_cdn_cache_control_overrides_and_is_passed_on(edge: Server, origin: Origin) -> None:
    path = target("cdn", cc="max-age=0", h="CDN-Cache-Control:max-age=60")
    get(edge, path)
    reply = get(edge, path)
    assert reply.headers["cache-status"].startswith("edgeward; hit")
    assert reply.headers["cdn-cache-control"] == "max-age=60" and reply.headers["cache-control"] == "max-age=0"
    assert origin.count_target(path) == 1


def test_targeted_fields_never_share_what_cache_control_calls_private(edge: Server, origin: Origin) -> None:
    """One user's answer stays one user's, whatever a site-wide CDN or surrogate field says."""
    for i, field in enumerate(("CDN-Cache-Control:max-age=60", "Surrogate-Control:max-age=60;edgeward")):
        path = target(f"private-{i}", cc="private", h=field, body="alice's account")
        get(edge, path, cookie="session=alice")
        reply = get(edge, path, cookie="session=mallory")
        assert "hit" not in reply.headers["cache-status"]
        assert origin.count_target(path) == 2


# --- ranges from the cache ----------------------------------------------------------------------------------------


def test_range_is_served_from_a_stored_answer(edge: Server, origin: Origin) -> None:
    path = target("range", cc="max-age=60", body="0123456789A")
    # A miss with Range stores the whole answer the origin gave, and answers the range from it.
    first = get(edge, path, range="bytes=2-4")
    assert (first.status_code, first.text) == (206, "234")
    assert first.headers["content-range"] == "bytes 2-4/11"
    assert first.headers["cache-status"] == "edgeward; fwd=uri-miss; stored"
    suffix = get(edge, path, range="bytes=-1")
    assert (suffix.status_code, suffix.text, suffix.headers["content-length"]) == (206, "A", "1")
    assert suffix.headers["cache-status"].startswith("edgeward; hit")
    assert get(edge, path, range="bytes=20-").status_code == 416
    assert get(edge, path).text == "0123456789A"
    assert origin.count_target(path) == 1


def test_range_from_the_cache_over_http2(edge: Server, origin: Origin, client_tls: ssl.SSLContext) -> None:
    path = target("range-h2", cc="max-age=60", body="0123456789A")
    url = edge.url("https", path).replace("127.0.0.1", "localhost")
    with httpx.Client(http2=True, verify=client_tls) as client:
        client.get(url)
        reply = client.get(url, headers={"range": "bytes=0-1"})
    assert reply.http_version == "HTTP/2"
    assert (reply.status_code, reply.text, reply.headers["content-range"]) == (206, "01", "bytes 0-1/11")
    assert origin.count_target(path) == 1


def test_targeted_fields_and_token_come_from_config(
    start_server: Callable[..., Server], site: Path, localhost_cert: Issued, origin: Origin
) -> None:
    """`[cache] surrogate_token` names the edge upstream and in targeting; `targeted_fields = []` turns it all off."""
    named = start_server(cache_config(site, localhost_cert, origin, surrogate_token="bank-edge"), name="named")
    path = target("token", cc="no-store", h="Surrogate-Control:max-age=60;bank-edge, no-store")
    get(named, path)
    assert get(named, path).headers["cache-status"].startswith("edgeward; hit")
    assert only(origin, path).header("surrogate-capability") == 'bank-edge="Surrogate/1.0"'
    off = start_server(cache_config(site, localhost_cert, origin, targeted_fields=[]), name="off")
    path = target("off", cc="no-store", h="Surrogate-Control:max-age=60")
    for _ in range(2):
        reply = get(off, path)
        assert "hit" not in reply.headers["cache-status"] and reply.headers["surrogate-control"] == "max-age=60"
    assert origin.count_target(path) == 2
    assert all(r.header("surrogate-capability") is None for r in origin.requests if r.target == path)
