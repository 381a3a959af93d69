"""The QUIC endpoint of one listener: a UDP socket shared by all its HTTP/3 connections.

Datagrams are routed to connections by destination connection ID, never by
the sender's address, so a client whose address changes (NAT rebinding,
a phone moving networks) keeps its connection; aioquic validates the new
path. That is also why one worker serves QUIC, not all of them: with
SO_REUSEPORT the kernel picks the worker by hashing the 4-tuple, so after
a rebinding a connection's packets would land in a worker that has never
heard of it. The supervisor binds one UDP socket per listener, keeps it
across worker restarts (datagrams queue in the socket meanwhile), and only
worker 0 reads it. TCP keeps spreading across every worker. A side effect:
the endpoint's session-ticket store sees every QUIC connection of its
listener, so resumption never misses for landing in another worker.

Address validation: with `quic.retry` the first Initial from an address
gets a Retry carrying an encrypted token, and no connection state is made
until the client echoes it from the same address, so spoofed floods cost
one small datagram each.
"""

from __future__ import annotations

import asyncio
import os
import typing
from typing import TYPE_CHECKING

from aioquic._buffer import Buffer  # aioquic.buffer re-exports it without declaring so
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.packet import (
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from ingress.server.h3connection import HTTP3Connection, count
from ingress.tls.quic import ServerConnection, TicketStore

if TYPE_CHECKING:
    from ingress.server.runtime import ListenerRuntime, WorkerContext

CID_LENGTH = 8  # aioquic's default length for the connection IDs it issues
_VERSIONS = [int(QuicProtocolVersion.VERSION_1), int(QuicProtocolVersion.VERSION_2)]


class QuicEndpoint(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport  # set by connection_made, before any datagram arrives

    def __init__(self, ctx: WorkerContext, runtime: ListenerRuntime) -> None:
        self.ctx = ctx
        self.runtime = runtime
        self.tickets = TicketStore()
        self.retry = QuicRetryTokenHandler()
        self.routes: dict[bytes, HTTP3Connection] = {}
        self.connections: set[HTTP3Connection] = set()  # until terminated, closing period included
        self.accepting = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors (port unreachable and the like): QUIC's own timers deal with lost peers."""

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if data and not data[0] & 0x80:
            # Short header, the common case: the connection ID follows the first byte.
            conn = self.routes.get(data[1 : 1 + CID_LENGTH])
            if conn is not None:
                conn.datagram_received(data, addr)
            return
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            return
        conn = self.routes.get(header.destination_cid)
        if conn is not None:
            conn.datagram_received(data, addr)
            return
        if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            return  # RFC 9000 section 14.1: never answer small datagrams from unknown peers
        if header.version is not None and header.version not in _VERSIONS:
            if header.packet_type != QuicPacketType.VERSION_NEGOTIATION:
                self.transport.sendto(
                    encode_quic_version_negotiation(
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                        supported_versions=_VERSIONS,
                    ),
                    addr,
                )
            return
        if header.packet_type != QuicPacketType.INITIAL or not self.accepting or header.version is None:
            return
        original_cid: bytes = header.destination_cid
        retry_cid: bytes | None = None
        settings = self.runtime.config.quic
        if settings.retry:
            if not header.token:
                source_cid = os.urandom(CID_LENGTH)
                token = self.retry.create_token(
                    address=addr,
                    original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=source_cid,
                    now=self.ctx.loop.time(),
                )
                count(self.ctx.stats, "retry")
                self.transport.sendto(
                    encode_quic_retry(
                        version=header.version,
                        source_cid=source_cid,
                        destination_cid=header.source_cid,
                        original_destination_cid=header.destination_cid,
                        retry_token=token,
                    ),
                    addr,
                )
                return
            try:
                original_cid = self.retry.validate_token(
                    address=addr, destination_cid=header.destination_cid, token=header.token, now=self.ctx.loop.time()
                )
            except ValueError:
                return  # forged, expired or from another address: drop, as if never received
            retry_cid = header.destination_cid
        certs = self.runtime.certs
        assert certs is not None  # QUIC is only served on TLS listeners
        quic = ServerConnection(certs, settings, self.tickets, original_cid, retry_cid)
        conn = HTTP3Connection(self, quic, addr)
        self.connections.add(conn)
        self.route(header.destination_cid, conn)
        self.route(quic.host_cid, conn)
        conn.datagram_received(data, addr)

    # connection bookkeeping ------------------------------------------------------
    def route(self, cid: bytes, conn: HTTP3Connection) -> None:
        self.routes[cid] = conn
        conn.cids.append(cid)

    def unroute(self, cid: bytes) -> None:
        conn = self.routes.pop(cid, None)
        if conn is not None and cid in conn.cids:
            conn.cids.remove(cid)

    def forget(self, conn: HTTP3Connection) -> None:
        self.connections.discard(conn)
        for cid in conn.cids:
            if self.routes.get(cid) is conn:
                del self.routes[cid]
        conn.cids.clear()

    # lifecycle -------------------------------------------------------------------
    def drain(self) -> None:
        """Refuse new connections; those open are drained by the worker like any other."""
        self.accepting = False

    def close(self) -> None:
        self.transport.close()
