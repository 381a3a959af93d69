"""Start-up benchmark (issue 7): from exec to the first HTTPS 200, for the executable and the source.

    .venv/bin/python bench/startup.py --executable dist/edgeward --rounds 9 --json bench/results/startup.json

Cells, interleaved every round, each a fresh process with one worker and the same config (an HTTPS
listener on a fixed loopback port, a static route to a 1 KiB file, access log off):

``executable_warm``
    the onefile executable, its extraction directory already there (the edge node's normal restart).
    Target: <= 1 s.
``executable_cold``
    the same with an empty ``XDG_CACHE_HOME``: the first start on a node, which unpacks the payload.
``python``
    ``python -m ingress serve`` from the virtualenv, for comparison.

The clock starts just before ``Popen`` and stops when a fresh TLS connection gets ``200`` with the
file's exact bytes; the client polls every 5 ms. Between cells the server gets SIGTERM and is waited for.
Medians are reported, with min and max, because this machine is noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certs import make_certs

ROOT = Path(__file__).resolve().parent.parent
BODY = bytes(range(256)) * 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, context: ssl.SSLContext) -> bool:
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /1k.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except (OSError, ssl.SSLError):
        return False
    return data.startswith(b"HTTP/1.1 200") and data.endswith(BODY)


def _first_200(argv: list[str], env: dict[str, str], port: int, context: ssl.SSLContext, limit: float) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        while time.perf_counter() - started < limit:
            if _get(port, context):
                return time.perf_counter() - started
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.005)
        raise RuntimeError(f"{argv[0]}: no 200 within {limit} s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executable", type=Path, default=ROOT / "dist" / "edgeward")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    exe = args.executable.resolve()
    with tempfile.TemporaryDirectory(prefix="edgeward-startup-") as tmp:
        work = Path(tmp)
        certs = make_certs(work / "pki")
        (work / "www").mkdir()
        (work / "www" / "1k.bin").write_bytes(BODY)
        port = _free_port()
        config = work / "edge.toml"
        config.write_text(
            "[access_log]\nenabled = false\n"
            '[[listeners]]\nname = "https"\n'
            f'address = "127.0.0.1:{port}"\n'
            "[listeners.tls]\n"
            f'certs = [{{ cert = "{certs.cert}", key = "{certs.key}" }}]\n'
            '[[routes]]\npath = "/"\n'
            f'[routes.static]\nroot = "{work / "www"}"\n'
        )
        serve = ["serve", "--config", str(config), "--workers", "1"]
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        warm_cache = work / "warm-cache"
        base = {**os.environ, "EDGEWARD_HOME": str(work / "home")}
        cells = {
            "executable_warm": ([str(exe), *serve], {**base, "XDG_CACHE_HOME": str(warm_cache)}),
            "executable_cold": ([str(exe), *serve], base),
            "python": ([sys.executable, "-m", "ingress", *serve], base),
        }
        _first_200(cells["executable_warm"][0], cells["executable_warm"][1], port, context, 60)  # fill the cache
        times: dict[str, list[float]] = {name: [] for name in cells}
        for number in range(args.rounds):
            for name, (argv, cell_env) in cells.items():
                env = cell_env
                if name == "executable_cold":
                    env = {**cell_env, "XDG_CACHE_HOME": tempfile.mkdtemp(dir=work, prefix="cold-")}
                seconds = _first_200(argv, env, port, context, 60)
                times[name].append(seconds)
                print(f"round {number + 1} {name}: {seconds * 1000:.0f} ms", file=sys.stderr)
        summary = {
            name: {
                "median_s": round(statistics.median(values), 4),
                "min_s": round(min(values), 4),
                "max_s": round(max(values), 4),
                "rounds": [round(v, 4) for v in values],
            }
            for name, values in times.items()
        }
        warm = summary["executable_warm"]["median_s"]
        report = {
            "executable": str(exe),
            "executable_bytes": exe.stat().st_size,
            "rounds": args.rounds,
            "cells": summary,
            "warm_vs_python": round(warm / summary["python"]["median_s"], 3),
            "target_warm_s": 1.0,
            "warm_meets_target": warm <= 1.0,
        }
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
