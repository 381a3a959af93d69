"""HTTP/2 floods against edgeward while a well-behaved client measures its rate.

For each flood kind, edgeward (one worker, pinned to CPU 0) serves
``h2load -c4 -m10`` on the 1 KiB file (pinned to CPU 1) twice: once alone
and once while a flooder process (also on CPU 1, at nice 10 so the
measuring client keeps priority) repeats the attack, reconnecting each
time the server answers GOAWAY ENHANCE_YOUR_CALM. Baseline and flooded runs
alternate per round; the result per kind is the median flooded rate divided
by the median baseline rate. The target is >= 0.5.

Flooders speak raw frames (hyperframe, hpack), because a real client library
refuses to send them. Each flooder counts the GOAWAY codes it receives,
which proves the server saw the attack as one.

    .venv/bin/python bench/floods.py --rounds 3 --duration 5 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from certs import make_certs
from servers import BenchEnv, Edgeward
from workloads import _h2load

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = [(":method", "GET"), (":scheme", "https"), (":path", "/1k.bin"), (":authority", "localhost")]
KINDS = ("rapid_reset", "continuation", "settings", "ping", "empty_frames", "hpack_bomb")


def _connect(port: int, ca: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(PREFACE + SettingsFrame(0).serialize())
    return tls


def _attack(kind: str, encoder: hpack.Encoder, sid: int) -> tuple[bytes, int]:
    """One burst of the flood; returns the bytes and the next stream id."""
    out = []
    if kind == "rapid_reset":
        for _ in range(50):
            out.append(HeadersFrame(sid, encoder.encode(REQUEST), flags=["END_HEADERS", "END_STREAM"]).serialize())
            out.append(RstStreamFrame(sid, error_code=8).serialize())
            sid += 2
    elif kind == "continuation":
        out.append(HeadersFrame(sid, encoder.encode(REQUEST)).serialize())
        out.extend(ContinuationFrame(sid, b"").serialize() for _ in range(200))
        sid += 2
    elif kind == "settings":
        out.extend(SettingsFrame(0, settings={4: 65535}).serialize() for _ in range(50))
    elif kind == "ping":
        out.extend(PingFrame(0, b"12345678").serialize() for _ in range(50))
    elif kind == "empty_frames":
        out.append(HeadersFrame(sid, encoder.encode(REQUEST), flags=["END_HEADERS"]).serialize())
        out.extend(DataFrame(sid, b"").serialize() for _ in range(200))
        sid += 2
    elif kind == "hpack_bomb":
        big = ("x-bomb", "b" * 4000)
        encoder.encode([big])  # into the dynamic table; later blocks reference it by index
        block = encoder.encode([*REQUEST, big]) + encoder.encode([big]) * 20
        out.append(HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        sid += 2
    return b"".join(out), sid


def flooder(kind: str, port: int, ca: str, stop_at: float, result: Any) -> None:
    os.nice(10)
    goaways: dict[int, int] = {}
    connections = 0
    while time.monotonic() < stop_at:
        try:
            tls = _connect(port, ca)
        except OSError:
            continue
        connections += 1
        encoder, sid = hpack.Encoder(), 1
        tls.settimeout(0.2)
        try:
            while time.monotonic() < stop_at:
                burst, sid = _attack(kind, encoder, sid)
                tls.sendall(burst)
                try:
                    data = tls.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                code = _goaway_code(data)
                if code is not None:
                    goaways[code] = goaways.get(code, 0) + 1
                    break
        except OSError:
            pass
        finally:
            tls.close()
    result.update({"connections": connections, "goaway_codes": goaways})


def _goaway_code(data: bytes) -> int | None:
    """The error code of the first GOAWAY frame in `data`, if any (frames may be cut; good enough here)."""
    i = 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i : i + 3], "big")
        if data[i + 3] == 0x7 and i + 9 + 8 <= len(data):
            frame = GoAwayFrame(0)
            frame.parse_body(memoryview(data[i + 9 : i + 9 + length]))
            return frame.error_code
        i += 9 + length
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--ingress", type=Path, default=Path(sys.executable).parent / "ingress")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edgeward-floods-"))
    www = workdir / "www"
    www.mkdir()
    (www / "1k.bin").write_bytes(os.urandom(1024))
    certs = make_certs(workdir / "tls")
    env = BenchEnv(
        workdir=workdir,
        www=www,
        certs=certs,
        bench_dir=Path(__file__).resolve().parent,
        peers_venv=Path("/nonexistent"),
        ingress_bin=args.ingress,
    )
    server = Edgeward(env).start("https", "h2")
    port = server.ports["https"]
    ca = str(certs.ca_cert)
    base: list[float] = []
    flooded: dict[str, list[float]] = {k: [] for k in KINDS}
    evidence: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    url = server.url("https", "/1k.bin")
    try:
        _h2load(url, 1)
        for rnd in range(1, args.rounds + 1):
            for kind in KINDS:
                base.append(_h2load(url, args.duration)["requests_per_sec"])
                with multiprocessing.Manager() as manager:
                    shared = manager.dict()
                    stop_at = time.monotonic() + args.duration + 1.5
                    proc = multiprocessing.Process(target=flooder, args=(kind, port, ca, stop_at, shared))
                    proc.start()
                    time.sleep(0.5)  # the flood is running before the measurement starts
                    rate = _h2load(url, args.duration)["requests_per_sec"]
                    proc.join()
                    evidence[kind].append(dict(shared))
                flooded[kind].append(rate)
                server.check_alive()
                rates = f"baseline {base[-1]:>9,.0f}  flooded {rate:>9,.0f} req/s"
                print(f"round {rnd} {kind:<13} {rates}  flooder {evidence[kind][-1]}")
    finally:
        server.stop()
    median_base = statistics.median(base)
    report: dict[str, Any] = {"baseline_req_s": median_base, "kinds": {}}
    print(f"\nbaseline median {median_base:,.0f} req/s over {len(base)} runs")
    for kind in KINDS:
        ratio = statistics.median(flooded[kind]) / median_base
        report["kinds"][kind] = {"flooded_req_s": flooded[kind], "ratio": ratio, "flooder": evidence[kind]}
        print(f"{kind:<13} {ratio:5.2f}x of baseline  {'met' if ratio >= 0.5 else 'MISSED'} (target >= 0.5)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
