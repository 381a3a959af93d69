"""The shared cache end to end: the real edge in front of the test origin, real clients.

What is asserted is what a client and the origin see: Cache-Status and Age
on the answers, and how many requests reached the origin. The cache's
rules themselves are unit-tested in test_cache_unit.py; these tests prove
they are wired into the request path on every protocol, that concurrent
misses collapse, and that a purge on the admin listener reaches every
worker.
"""

from __future__ import annotations

import concurrent.futures
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import base_config
from tests.origin import Origin
from tests.pki import Issued
from tests.server import Server, wait_for


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


def cache_config(site: Path, cert: Issued, origin: Origin, **cache: Any) -> dict[str, Any]:
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
