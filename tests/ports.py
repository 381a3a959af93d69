"""Ports for tests that need an address where connecting is refused.

Closing a socket right after binding it only borrows a number: the kernel
may hand the same port to the next listener that binds port 0 (an edge,
an origin, a collector started later in the same test), and then the
"dead" origin answers. A socket that stays bound without listening keeps
the port out of everyone else's reach and still refuses every connection.
"""

from __future__ import annotations

import socket

_HELD: list[socket.socket] = []  # open for the life of the test process


def refusing_socket() -> socket.socket:
    """A socket bound to a port on 127.0.0.1 and not listening: the port refuses while it is open.

    For a test that later starts a server on that same port: close it right before the server binds.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def refused_port() -> int:
    """A port on 127.0.0.1 that refuses connections for as long as the tests run."""
    sock = refusing_socket()
    _HELD.append(sock)
    return int(sock.getsockname()[1])


def refused_origin() -> str:
    return f"http://127.0.0.1:{refused_port()}"
