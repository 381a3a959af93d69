"""The edge configuration the http-cache-tests suite is run against (tests/test_cache_conformance.py, or by hand).

    python -m tests.cachetests.edge --origin-port 8000 --port 8080 > /tmp/cachetests/edge.toml
    .venv/bin/ingress serve --config /tmp/cachetests/edge.toml --workers 1

One worker, because each worker keeps its own cache and the suite expects
its second request to find what the first stored. Every path and method
goes to the suite's origin, which also takes each test's script
(`PUT /config/<uuid>`) and reports what it saw (`GET /state/<uuid>`)
through the edge; M-SEARCH is listed for the `invalidate-M-SEARCH*` tests,
which check that an unknown (so unsafe) method invalidates the target URI.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tests.server import to_toml

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "M-SEARCH"]


def edge_config(origin_port: int, port: int = 0) -> dict[str, Any]:
    """A plain listener on 127.0.0.1:`port` (0 = ephemeral) proxying everything, cached, to the suite's origin.

    `retries = 0`: a retried request reaches the origin twice, which the
    suite reports as a setup failure ("retry") rather than a cache result.
    """
    return {
        "server": {"drain_timeout": 1.0},
        "access_log": {"enabled": False},
        "admin": {"enabled": False},
        "listeners": [{"name": "http", "address": f"127.0.0.1:{port}"}],
        "upstreams": [{"name": "cachetests", "origins": [f"http://127.0.0.1:{origin_port}"], "retries": 0}],
        "routes": [{"path": "/", "methods": METHODS, "proxy": {"upstream": "cachetests", "cache": True}}],
        "cache": {"max_bytes": 64 << 20, "max_object_bytes": 1 << 20},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--origin-port", type=int, default=8000, help="port of the suite's origin on 127.0.0.1")
    ap.add_argument("--port", type=int, default=8080, help="port the edge listens on, on 127.0.0.1")
    args = ap.parse_args(argv)
    sys.stdout.write(to_toml(edge_config(args.origin_port, args.port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
