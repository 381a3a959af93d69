"""Listening sockets.

Each worker binds its own socket with SO_REUSEPORT so the kernel spreads
connections across workers with no shared accept lock. The supervisor
first binds (without listening) to reserve each port, which also turns a
configured port 0 into one concrete port that every worker then shares.
"""

from __future__ import annotations

import socket

from ingress.config.semantics import parse_address

BACKLOG = 4096


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reserve(address: str) -> tuple[socket.socket, tuple[str, int]]:
    """Bind without listening; returns the socket (keep it open) and the bound host/port."""
    host, port = parse_address(address)
    if host == "localhost":
        host = "127.0.0.1"
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    bound = sock.getsockname()
    return sock, (host, bound[1])


def listen(host: str, port: int) -> socket.socket:
    """A worker's own listening socket in the port's SO_REUSEPORT group."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
