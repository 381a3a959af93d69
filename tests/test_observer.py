"""The observer's batching: a backlog is worked off a chunk per loop iteration, in order, losing nothing.

In process, with a real loop and a real traces file: the observer needs no socket to be tested.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from ingress.config.loader import parse_config
from ingress.protocol.events import Peer, Request
from ingress.telemetry.context import Tracer
from ingress.telemetry.observer import CHUNK, Observer


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
        peer = Peer("192.0.2.1", "", "")

        def record(i: int) -> None:
            request = Request("GET", b"/r/%d" % i, b"", {}, "example.test", "1.1", True, "http")
            request.peer = peer
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
