"""Listening sockets.

Each worker binds its own socket with SO_REUSEPORT so the kernel spreads
connections across workers with no shared accept lock. The supervisor
first binds (without listening) to reserve each port, which also turns a
configured port 0 into one concrete port that every worker then shares.
"""

from __future__ import annotations

import socket

from ingress.config.semantics import bind_key, parse_address

BACKLOG = 4096


def _tcp_socket(host: str, reuseport: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def refuse_if_listening(address: str) -> None:
    """Raise EADDRINUSE if any socket already listens on `address`.

    Workers bind with SO_REUSEPORT, and the kernel lets every process of the
    same user join that group: a second instance on the same port would start
    without error and silently take a share of the first one's connections.
    A probe bound without SO_REUSEPORT conflicts with any listening socket,
    while SO_REUSEADDR keeps it from tripping over TIME_WAIT leftovers.
    """
    host, port = bind_key(*parse_address(address))
    if port == 0:
        return
    with _tcp_socket(host, reuseport=False) as probe:
        probe.bind((host, port))


def reserve(address: str) -> tuple[socket.socket, tuple[str, int]]:
    """Bind without listening; returns the socket (keep it open) and the bound host/port."""
    host, port = bind_key(*parse_address(address))
    sock = _tcp_socket(host, reuseport=True)
    sock.bind((host, port))
    return sock, (host, sock.getsockname()[1])


def listen(host: str, port: int) -> socket.socket:
    """A worker's own listening socket in the port's SO_REUSEPORT group."""
    sock = _tcp_socket(host, reuseport=True)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
