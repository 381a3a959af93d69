"""The observer's batching: a backlog is worked off a chunk per loop iteration, in order, losing nothing.

In process, with a real loop and a real traces file: the observer needs no socket to be tested.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingress.config.loader import parse_config
from ingress.protocol.events import Peer, Request
from ingress.protocol.trace import Attempt, TraceContext
from ingress.telemetry.context import Tracer
from ingress.telemetry.observer import CHUNK, Observer
from tests.ports import refused_port

PEER = Peer("192.0.2.1", "", "")


def test_a_backlog_is_worked_off_a_chunk_per_iteration_in_order(tmp_path: Path) -> None:
    """Requests recorded while a backlog is being worked off join its end; every one becomes a span, in order."""
    traces = tmp_path / "traces.jsonl"
    config = parse_config(
        {
            "listeners": [{"name": "http", "address": "127.0.0.1:0"}],
            "routes": [{"path": "/", "static": {"root": str(tmp_path)}}],
            "telemetry": {"files": {"traces": str(traces)}},
        },
        "test.toml",
    )
    loop = asyncio.new_event_loop()
    try:
        observer = Observer(loop, config, 0, Tracer(config.telemetry.tracing))

        def record(i: int) -> None:
            request = Request("GET", b"/r/%d" % i, b"", {}, "example.test", "1.1", True, "http")
            request.peer = PEER
            observer.request(request, 200, 0, 1_700_000_000_000_000_000 + i, "1.1")

        first = 3 * CHUNK + 5
        for i in range(first):
            record(i)
        observer.tick()
        assert len(observer.pending) == first - CHUNK  # one chunk now, the rest in later iterations
        for i in range(first, first + 7):
            record(i)
        loop.run_until_complete(asyncio.sleep(0.05))
        assert observer.pending == []
        loop.run_until_complete(observer.close())
    finally:
        loop.close()
    paths = [
        attribute["value"]["stringValue"]
        for line in traces.read_text().splitlines()
        for resource in json.loads(line)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
        for attribute in span["attributes"]
        if attribute["key"] == "url.path"
    ]
    assert paths == [f"/r/{i}" for i in range(first + 7)]


@pytest.fixture(params=["spans only", "with an access log"])
def exporting(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, Observer]]:
    """An observer with a span exporter towards a port nobody listens on (nothing is sent in these tests).

    Spans only, they are encoded straight from the request tuples; with an access log, from records.
    """
    logged = request.param == "with an access log"
    config = parse_config(
        {
            "access_log": {"enabled": logged, "path": str(tmp_path / "access.log")},
            "listeners": [{"name": "http", "address": "127.0.0.1:0"}],
            "routes": [{"path": "/", "static": {"root": str(tmp_path)}}],
            "telemetry": {"otlp": {"endpoint": f"http://127.0.0.1:{refused_port()}", "metrics": False, "logs": False}},
        },
        "test.toml",
    )
    loop = asyncio.new_event_loop()
    observer = Observer(loop, config, 0, Tracer(config.telemetry.tracing))
    assert (observer.access_log is not None) == logged
    try:
        yield loop, observer
    finally:
        exporter = observer.span_exporter
        if exporter is not None:
            exporter.queued_items = 0  # what the test pretended was queued never was
        loop.run_until_complete(observer.close())
        loop.close()


def _mixed(observer: Observer) -> list[int]:
    """Record a plain request, one proxied with two attempts, a plain one, one with an unsampled context
    and a plain one; returns the spans each would make (a SERVER span, a CLIENT span per attempt, none unsampled)."""
    attempt = Attempt(b"\x01" * 8, 1, 2, "127.0.0.1:9", 200, "", 0)
    spans = []
    for i, (tries, trace) in enumerate(
        [
            (None, None),
            ([attempt, attempt._replace(resend=1)], None),
            (None, None),
            (None, TraceContext(b"\x02" * 16, b"\x03" * 8, b"\x04" * 8, "", False)),
            (None, None),
        ]
    ):
        request = Request("GET", b"/r/%d" % i, b"", {}, "example.test", "1.1", True, "http")
        request.peer = PEER
        request.attempts = tries
        request.trace = trace
        observer.request(request, 200, 0, 1_700_000_000_000_000_000, "1.1")
        spans.append(0 if trace is not None else 1 + len(tries or ()))
    return spans


def test_spans_with_no_room_are_counted_as_dropped_span_for_span(
    exporting: tuple[asyncio.AbstractEventLoop, Observer],
) -> None:
    """With the exporter full, a tick drops every span its requests would have made, and no more."""
    _, observer = exporting
    exporter = observer.span_exporter
    assert exporter is not None
    exporter.queued_items = exporter.capacity
    spans = _mixed(observer)
    observer.tick()
    assert sum(exporter.dropped_items.values()) == sum(spans) == 6


def test_spans_past_the_room_left_are_counted_as_dropped_span_for_span(
    exporting: tuple[asyncio.AbstractEventLoop, Observer],
) -> None:
    """With room for three spans, the first request's span is kept and the next request's three do not
    fit: it and every request after it count as dropped, by the spans each would have made."""
    _, observer = exporting
    exporter = observer.span_exporter
    assert exporter is not None
    exporter.queued_items = exporter.capacity - 3
    spans = _mixed(observer)
    observer.tick()
    assert sum(exporter.dropped_items.values()) == sum(spans[1:]) == 5
