"""h3load: a small closed-loop HTTP/3 load generator on qh3 (or aioquic).

Used by the ``h3_1k`` workload because Debian's h2load (nghttp2 1.52) is not
built against ngtcp2/nghttp3 and has no HTTP/3, and Debian's curl has none
either. It is a load generator, not a server under test, and deliberately
simple:

* ``--processes N`` worker processes (separate interpreters, each with its
  own uvloop event loop) together open ``--connections C`` QUIC connections
  (round-robin over the workers); each connection keeps ``--streams S`` GET
  requests in flight: as soon as a response has ended, the next request goes
  out on a new stream (closed loop, like ``h2load -c C -m S``).
* Every worker opens all its connections first, so handshakes are outside
  the measurement. The parent then releases all workers at once (a line on
  their stdin) and prints ``go`` on its stdout; the workers run ``--warmup``
  seconds uncounted, then ``--duration`` seconds counted, and print one JSON
  line each. The parent prints their sum as one JSON line.
* A response counts as ``ok`` only with status 200 and exactly
  ``--expect-length`` body bytes. Everything else is counted (``non_2xx``,
  ``bad_length``, ``stream_reset``, ``conn_lost``) and reported, never hidden.
* ``--once`` fetches the URL once and prints status, length, SHA-256 of the
  body and the negotiated ALPN: the harness' byte-for-byte check.

QUIC stack: `qh3 <https://pypi.org/project/qh3/>`_ by default, a maintained
fork of aioquic whose packet protection, ACK bookkeeping and QPACK are native
(Rust/C), so it needs about 2.5x less CPU per request than aioquic; the
connection and HTTP/3 state machines are still Python. ``--quic-lib aioquic``
runs the same client on aioquic for cross-checks. Either way the client costs
much more CPU per request than a Go or Rust server, so the number it reports
describes the server only while the client's core is not saturated:
``client_cpu_seconds`` (the workers' user+system time inside the counted
window) and ``client_requests_per_cpu_second`` let the caller check that.

Run it with the peers venv (qh3, aioquic and uvloop come from the hashed lock):

    bench/.venv-peers/bin/python bench/h3load.py https://127.0.0.1:8443/1k.bin \\
        --cafile ca.pem --connections 16 --streams 10 --duration 6
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import importlib.metadata
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, suppress
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

COUNTERS = ("ok", "non_2xx", "bad_length", "stream_reset", "conn_lost", "started")
SOCKET_BUFFER = 4 << 20


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--connections", "-c", type=int, default=16)
    p.add_argument("--streams", "-m", type=int, default=10, help="requests in flight per connection")
    p.add_argument("--processes", "-p", type=int, default=1)
    p.add_argument("--duration", "-D", type=float, default=6.0, help="counted seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds before the count starts")
    p.add_argument("--cafile", help="CA to verify the server with (default: no verification)")
    p.add_argument("--server-name", default="localhost", help="SNI and certificate name")
    p.add_argument("--expect-length", type=int, default=None, help="body length an ok response must have")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument(
        "--quic-lib",
        choices=("qh3", "aioquic"),
        default="qh3",
        help="QUIC/HTTP-3 stack of the client (default qh3)",
    )
    p.add_argument("--once", action="store_true", help="one request; print status, length, sha256, alpn")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _quic_lib(name: str) -> SimpleNamespace:
    """The handful of names we use, from qh3 or aioquic (same API)."""
    mod = importlib.import_module
    return SimpleNamespace(
        connect=mod(f"{name}.asyncio.client").connect,
        QuicConnectionProtocol=mod(f"{name}.asyncio.protocol").QuicConnectionProtocol,
        H3_ALPN=mod(f"{name}.h3.connection").H3_ALPN,
        H3Connection=mod(f"{name}.h3.connection").H3Connection,
        DataReceived=mod(f"{name}.h3.events").DataReceived,
        HeadersReceived=mod(f"{name}.h3.events").HeadersReceived,
        QuicConfiguration=mod(f"{name}.quic.configuration").QuicConfiguration,
        ConnectionTerminated=mod(f"{name}.quic.events").ConnectionTerminated,
        StreamReset=mod(f"{name}.quic.events").StreamReset,
        version=importlib.metadata.version(name),
    )


# --------------------------------------------------------------------------
# Worker


def _worker(args: argparse.Namespace) -> int:
    """One process: open this worker's share of connections, wait for "go" on
    stdin, run warm-up + measurement, print one JSON line."""
    with suppress(ImportError):
        import uvloop

        uvloop.install()
    result = asyncio.run(_worker_main(args))
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


async def _worker_main(args: argparse.Namespace) -> dict[str, Any]:
    q = _quic_lib(args.quic_lib)
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 443
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    request = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", url.netloc.encode()),
        (b":path", path.encode()),
        (b"user-agent", b"edgeward-bench-h3load"),
    ]
    counts = dict.fromkeys(COUNTERS, 0)
    latency_sum = 0.0
    state = {"counting": False, "running": True}
    expect = args.expect_length
    once: dict[str, Any] = {}
    loop = asyncio.get_running_loop()

    # A connect that times out leaves the QUIC stack's internal waiters with
    # an unretrieved ConnectionError; we report the timeout ourselves.
    def on_loop_error(lp: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        if "never retrieved" not in ctx.get("message", ""):
            lp.default_exception_handler(ctx)

    loop.set_exception_handler(on_loop_error)
    done_once: asyncio.Future[None] = loop.create_future()

    class Client(q.QuicConnectionProtocol):  # type: ignore[misc, name-defined]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.h3 = q.H3Connection(self._quic)
            # stream id -> [status, body bytes so far, start time]
            self.inflight: dict[int, list[Any]] = {}
            self.body = bytearray()
            self.lost = False

        def fire(self) -> None:
            sid = self._quic.get_next_available_stream_id()
            self.h3.send_headers(sid, request, end_stream=True)
            self.inflight[sid] = [0, 0, time.monotonic()]
            if state["counting"]:
                counts["started"] += 1

        def start(self, n: int) -> None:
            for _ in range(n):
                self.fire()
            self.transmit()

        def datagram_received(self, data: bytes, addr: Any) -> None:
            # Read everything that is queued before answering: the event loop
            # hands over the datagrams of one socket read burst one by one,
            # and sending after each (the base class does) costs a packet,
            # a syscall and the server's work per response. One transmit per
            # loop iteration coalesces the ACK and new requests, as ngtcp2
            # and quic-go clients do.
            self._quic.receive_datagram(data, addr, now=self._loop.time())
            self._process_events()
            self._transmit_soon()

        def _finish(self, sid: int) -> None:
            nonlocal latency_sum
            status, length, t0 = self.inflight.pop(sid)
            if args.once:
                once.update(status=status, length=length, sha256=hashlib.sha256(self.body).hexdigest())
                if not done_once.done():
                    done_once.set_result(None)
                return
            if state["counting"]:
                if status != 200:
                    counts["non_2xx"] += 1
                elif expect is not None and length != expect:
                    counts["bad_length"] += 1
                else:
                    counts["ok"] += 1
                    latency_sum += time.monotonic() - t0
            if state["running"]:
                self.fire()

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, q.StreamReset):
                if self.inflight.pop(event.stream_id, None) is not None:
                    if state["counting"]:
                        counts["stream_reset"] += 1
                    if state["running"] and not args.once:
                        self.fire()
                return
            if isinstance(event, q.ConnectionTerminated):
                if not self.lost and state["running"]:
                    counts["conn_lost"] += 1
                self.lost = True
                if args.once and not done_once.done():
                    done_once.set_exception(ConnectionError(f"connection closed: {event.reason_phrase!r}"))
            for ev in self.h3.handle_event(event):
                if isinstance(ev, q.HeadersReceived):
                    entry = self.inflight.get(ev.stream_id)
                    if entry is None:
                        continue
                    for name, value in ev.headers:
                        if name == b":status":
                            entry[0] = int(value)
                            break
                    if ev.stream_ended:
                        self._finish(ev.stream_id)
                elif isinstance(ev, q.DataReceived):
                    entry = self.inflight.get(ev.stream_id)
                    if entry is None:
                        continue
                    entry[1] += len(ev.data)
                    if args.once:
                        self.body += ev.data
                    if ev.stream_ended:
                        self._finish(ev.stream_id)
            # Deliberately no super(): the base class would wrap every
            # stream in an asyncio StreamReader/Writer pair we never use.

    config = q.QuicConfiguration(is_client=True, alpn_protocols=q.H3_ALPN, server_name=args.server_name)
    if args.cafile:
        config.load_verify_locations(args.cafile)
    else:
        config.verify_mode = ssl.CERT_NONE

    my_conns = 1 if args.once else len(range(args.worker or 0, args.connections, args.processes))
    async with AsyncExitStack() as stack:
        clients: list[Client] = []
        try:
            for _ in range(my_conns):
                client = await asyncio.wait_for(
                    stack.enter_async_context(q.connect(host, port, configuration=config, create_protocol=Client)),
                    timeout=args.connect_timeout,
                )
                clients.append(client)
                # Bigger socket buffers than the 208 KiB default, so that a
                # client descheduled for a moment does not drop responses
                # (the kernel caps this at net.core.rmem_max/wmem_max).
                sock = client._transport.get_extra_info("socket")
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    with suppress(OSError, AttributeError):
                        sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except Exception as exc:  # whatever the QUIC stack raised (timeout, TLS alert, ...)
            reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            return {"error": f"QUIC connect failed after {len(clients)}/{my_conns} connections: {reason}"}
        alpn = sorted({c._quic.tls.alpn_negotiated or "" for c in clients})

        if args.once:
            clients[0].start(1)
            try:
                await asyncio.wait_for(done_once, timeout=args.connect_timeout)
            except (TimeoutError, ConnectionError) as exc:
                return {"error": f"GET {path}: {type(exc).__name__}: {exc}"}
            finally:
                clients[0].close()
            return {**once, "alpn": alpn, "quic_lib": f"{args.quic_lib} {q.version}"}

        # Handshakes done: tell the parent, wait for the common start signal.
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        for c in clients:
            c.start(args.streams)
        await asyncio.sleep(args.warmup)
        state["counting"] = True
        t0 = time.monotonic()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(args.duration)
        state["counting"] = False
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        elapsed = time.monotonic() - t0
        drops = _socket_drops({c._transport.get_extra_info("sockname")[1] for c in clients})
        state["running"] = False
        inflight_at_end = sum(len(c.inflight) for c in clients)
        for c in clients:
            c.close()
    return {
        **counts,
        "elapsed": elapsed,
        "connections": my_conns,
        "inflight_at_end": inflight_at_end,
        "latency_sum": latency_sum,
        "alpn": alpn,
        "quic_lib": f"{args.quic_lib} {q.version}",
        "client_cpu_seconds": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "client_socket_drops": drops,
    }


def _socket_drops(ports: set[int]) -> int | None:
    """Datagrams the kernel dropped on our own UDP sockets (full receive
    buffer), from the ``drops`` column of /proc/net/udp; None if unreadable."""
    total = 0
    try:
        with open("/proc/net/udp", encoding="ascii") as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) in ports:
                    total += int(fields[-1])
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return total


# --------------------------------------------------------------------------
# Parent


def _worker_argv(args: argparse.Namespace, index: int) -> Iterator[str]:
    yield sys.executable
    yield os.path.abspath(__file__)
    yield args.url
    for flag, value in (
        ("--connections", args.connections),
        ("--streams", args.streams),
        ("--processes", args.processes),
        ("--duration", args.duration),
        ("--warmup", args.warmup),
        ("--server-name", args.server_name),
        ("--connect-timeout", args.connect_timeout),
        ("--quic-lib", args.quic_lib),
        ("--worker", index),
    ):
        yield flag
        yield str(value)
    if args.cafile:
        yield "--cafile"
        yield args.cafile
    if args.expect_length is not None:
        yield "--expect-length"
        yield str(args.expect_length)


def _parent(args: argparse.Namespace) -> int:
    n = max(1, min(args.processes, args.connections))
    args.processes = n
    procs = [
        subprocess.Popen(
            list(_worker_argv(args, i)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        for i in range(n)
    ]
    outputs: list[dict[str, Any]] = []
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                # Connect failed: the worker printed its error JSON and exits.
                outputs.append(json.loads(line) if line.startswith("{") else {"error": f"worker said {line!r}"})
        for p in procs:
            assert p.stdin is not None
            with suppress(BrokenPipeError, OSError):
                p.stdin.write("go\n")
                p.stdin.flush()
        print("go", flush=True)
        for p in procs:
            out, _ = p.communicate(timeout=args.warmup + args.duration + 60)
            outputs += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    total: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    errors = [o["error"] for o in outputs if "error" in o]
    good = [o for o in outputs if "error" not in o]
    for o in good:
        for k in COUNTERS:
            total[k] += o[k]
    elapsed = max((o["elapsed"] for o in good), default=0.0)
    cpu = sum(o["client_cpu_seconds"] for o in good)
    latency = sum(o["latency_sum"] for o in good)
    total.update(
        {
            "processes": n,
            "connections": args.connections,
            "streams_per_connection": args.streams,
            "workers_ok": len(good),
            "errors": errors,
            "elapsed": elapsed,
            "requests_per_sec": total["ok"] / elapsed if elapsed else 0.0,
            "client_cpu_seconds": cpu,
            "client_cpu_util": cpu / elapsed if elapsed else 0.0,
            "client_requests_per_cpu_second": total["ok"] / cpu if cpu else 0.0,
            "mean_latency_ms": 1000 * latency / total["ok"] if total["ok"] else None,
            "alpn": sorted({a for o in good for a in o["alpn"]}),
            "quic_lib": sorted({o["quic_lib"] for o in good}),
            "inflight_at_end": sum(o["inflight_at_end"] for o in good),
            "client_socket_drops": sum(o["client_socket_drops"] or 0 for o in good),
        }
    )
    print(json.dumps(total), flush=True)
    return 1 if errors or len(good) < n else 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.connections < 1 or args.streams < 1 or args.processes < 1:
        raise SystemExit("--connections, --streams and --processes must be >= 1")
    if args.once:
        with suppress(ImportError):
            import uvloop

            uvloop.install()
        result = asyncio.run(_worker_main(args))
        print(json.dumps(result), flush=True)
        return 0 if "error" not in result else 1
    return _worker(args) if args.worker is not None else _parent(args)


if __name__ == "__main__":
    sys.exit(main())
