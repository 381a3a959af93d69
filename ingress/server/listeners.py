"""Listening sockets.

Each worker binds its own socket with SO_REUSEPORT so the kernel spreads
connections across workers with no shared accept lock. The supervisor
first binds (without listening) to reserve each port, which also turns a
configured port 0 into one concrete port that every worker then shares.

HTTP/3 listens on UDP at the same port as its TCP listener. That UDP
socket is bound once, by the supervisor, without SO_REUSEPORT (see
ingress.server.quic for why one worker serves it); being exclusive, it
also refuses a second instance on the same port.

Each listener's TCP options (`listeners[].socket`) are set on the worker's
own listening socket before it listens. An option this OS does not have,
or one the kernel will not honour as asked, is skipped or kept with one
log line from the first worker; it is never a reason not to start.
"""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path
from typing import Any

from ingress.config.model import SocketOptions
from ingress.config.semantics import bind_key, parse_address

log = logging.getLogger("edgeward.listeners")

DEFAULT_OPTIONS = SocketOptions()
# Bit of net.ipv4.tcp_fastopen that lets listening sockets accept data in a SYN.
TFO_SERVER = 0x2
SYSCTL = Path("/proc/sys/net")
UDP_BUFFER = 4 << 20  # bursts of datagrams wait here while the loop is busy; the kernel caps it at rmem_max
PORT_ATTEMPTS = 16


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


def reserve_with_udp(address: str) -> tuple[socket.socket, socket.socket, tuple[str, int]]:
    """Reserve a TCP port and bind UDP on the same number; returns (tcp, udp, (host, port)).

    With port 0 the kernel picks a port free for TCP, which may be taken for
    UDP: try again with another, a few times, before giving up.
    """
    port = bind_key(*parse_address(address))[1]
    for attempt in range(PORT_ATTEMPTS):
        tcp, bound = reserve(address)
        try:
            return tcp, bind_udp(*bound), bound
        except OSError as exc:
            tcp.close()
            if port == 0 and exc.errno == errno.EADDRINUSE and attempt < PORT_ATTEMPTS - 1:
                continue
            raise OSError(exc.errno, f"{exc.strerror} (UDP, for HTTP/3)") from None
    raise AssertionError("unreachable")


def bind_udp(host: str, port: int) -> socket.socket:
    """The listener's one UDP socket: no SO_REUSEADDR or SO_REUSEPORT, so nobody else shares the port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listen(
    host: str, port: int, options: SocketOptions = DEFAULT_OPTIONS, name: str = "", report: bool = False
) -> socket.socket:
    """A worker's own listening socket in the port's SO_REUSEPORT group.

    `report`: log what of `options` does not take effect (one worker does, so it is said once).
    """
    sock = _tcp_socket(host, reuseport=True)
    try:
        notes = apply_options(sock, options)
        sock.bind((host, port))
        sock.listen(options.backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    if report:
        for note in notes + kernel_notes(options):
            log.warning("listener %s: %s", name, note, extra={"event": "listener.socket_option", "listener": name})
    return sock


def apply_options(sock: socket.socket, options: SocketOptions) -> list[str]:
    """Set `options` on a TCP socket that is not listening yet; returns what was skipped, and why.

    Linux copies TCP_NODELAY from a listening socket to the connections it
    accepts; uvloop sets it on each one as well, so `nodelay = false` is
    applied again per connection by `keep_nagle`.
    """
    wanted = [("TCP_NODELAY", 1 if options.nodelay else 0)]
    if options.defer_accept:
        wanted.append(("TCP_DEFER_ACCEPT", options.defer_accept))
    if options.fastopen:
        wanted.append(("TCP_FASTOPEN", options.fastopen))
    skipped = []
    for option, value in wanted:
        number = getattr(socket, option, None)
        if number is None:
            skipped.append(f"{option} is not available on this OS; continuing without it")
            continue
        try:
            sock.setsockopt(socket.IPPROTO_TCP, number, value)
        except OSError as exc:
            skipped.append(f"cannot set {option}={value} ({exc.strerror}); continuing without it")
    return skipped


def keep_nagle(sock: Any) -> None:
    """Turn TCP_NODELAY back off on an accepted connection (for `nodelay = false`); `sock` as the transport gives it."""
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)


def kernel_notes(options: SocketOptions) -> list[str]:
    """System settings that keep options from working as configured (Linux; elsewhere nothing is read)."""
    notes = []
    somaxconn = _sysctl("core/somaxconn")
    if somaxconn is not None and options.backlog > somaxconn:
        notes.append(f"backlog {options.backlog} is capped by the kernel at net.core.somaxconn = {somaxconn}")
    fastopen = _sysctl("ipv4/tcp_fastopen")
    if options.fastopen and fastopen is not None and not fastopen & TFO_SERVER:
        notes.append(
            f"fastopen is set, but net.ipv4.tcp_fastopen = {fastopen} does not enable it for servers, so SYN data"
            f" is ignored; set it to {fastopen | TFO_SERVER} (sysctl -w net.ipv4.tcp_fastopen={fastopen | TFO_SERVER})"
        )
    return notes


def _sysctl(name: str) -> int | None:
    try:
        return int((SYSCTL / name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
