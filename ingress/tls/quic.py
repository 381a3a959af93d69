"""TLS for QUIC: certificates by SNI, session tickets, 0-RTT policy.

QUIC carries its own TLS 1.3 (aioquic's, not OpenSSL's), so the listener's
SSLContext and its `sni_callback` play no part. aioquic has no SNI
callback either: its server signs with whatever certificate the
configuration held when the connection was created, before the ClientHello
has been read. The narrowest hook is the ClientHello handler itself:
`SNIContext` reads the server name from the hello, asks the listener's
CertStore for the current chain and key, then lets aioquic continue. The
CertStore is the same object the TCP side uses, so a hot-reloaded
certificate is seen by the next QUIC handshake too.

Mutual TLS (`tls.client_auth`): aioquic's server asks for a client
certificate only when its private `_request_client_certificate` flag is
set, and of what the client sends it checks only the CertificateVerify
signature, never the chain. `SNIContext` sets the flag and verifies the
chain against `tls.client_ca`, and the leaf against `tls.client_crl`,
itself (ClientTrust, the same rules as OpenSSL's on TCP), failing the
handshake with the TLS alert OpenSSL would send, which QUIC carries as
CONNECTION_CLOSE error 0x100 + alert. aioquic requests client
certificates only on full handshakes, and its session tickets do not carry
the client's certificate: a resumed connection would have no identity, and
0-RTT data would run before any certificate was seen. So while client
authentication is on, no session tickets are issued or accepted, and every
HTTP/3 connection makes a full, authenticated handshake.

aioquic is pinned by the lock file. The private names used here
(`_server_handle_hello`, `_server_handle_certificate`,
`_server_handle_certificate_verify`, `_request_client_certificate`,
`_peer_certificate`, `_peer_certificate_chain`, `_initialize`,
`_local_max_streams_bidi`, `_max_early_data`) have no public equivalent;
the HTTP/3 and mTLS tests exercise each of them (SNI, client certificates,
stream limit, 0-RTT), so an upgrade that moves one fails there rather than
in production.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from aioquic import tls
from aioquic._buffer import Buffer  # aioquic.buffer re-exports it without declaring so
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream
from cryptography.hazmat.primitives.serialization import Encoding

from ingress.config.model import QuicSettings
from ingress.tls import failures
from ingress.tls.identity import ClientCertificateRefused, ClientIdentity, identity_from_der
from ingress.tls.sni import CertStore

ALPN = ["h3"]
MAX_TICKETS = 10000


class AlertCertificateRequired(tls.Alert):
    """TLS 1.3's alert for a client that sent no certificate where one is required (RFC 8446 section 4.4.2.4)."""

    description = tls.AlertDescription.certificate_required


class AlertCertificateRefused(tls.Alert):
    """A client certificate ClientTrust refused: the alert OpenSSL would send, and the failure counter's reason."""

    def __init__(self, refused: ClientCertificateRefused) -> None:
        self.description = _REFUSALS[refused.kind]
        self.reason = failures.KIND_REASONS[refused.kind]
        super().__init__(f"client certificate refused: {refused.reason}")


_Alert = tls.AlertDescription
# ClientCertificateRefused.kind -> the alert OpenSSL sends for the same X509_V_ERR (ssl_x509err2alert).
_REFUSALS = {
    "expired": _Alert.certificate_expired,
    "not_yet_valid": _Alert.bad_certificate,
    "unknown_ca": _Alert.unknown_ca,
    "wrong_usage": _Alert.unsupported_certificate,
    "bad_cert": _Alert.bad_certificate,
    "revoked": _Alert.certificate_revoked,
    "crl_missing": _Alert.unknown_ca,
    "crl_expired": _Alert.certificate_expired,
    "crl_not_yet_valid": _Alert.bad_certificate,
    "crl_scope": _Alert.certificate_unknown,
}
# Any other alert aioquic raises in a server handshake -> failure reason.
_ALERT_REASONS = {
    _Alert.certificate_required: "no_client_cert",
    _Alert.bad_certificate: "bad_cert",
    _Alert.unsupported_certificate: "bad_cert",
    _Alert.certificate_expired: "cert_expired",
    _Alert.protocol_version: "protocol_version",
    _Alert.handshake_failure: "no_shared_cipher",  # aioquic: no cipher suite or signature algorithm in common
}


class SNIContext(tls.Context):
    """aioquic's TLS context, choosing the certificate once the ClientHello names the server.

    With client authentication on, it also verifies the client's certificate
    chain, which aioquic leaves to the application, and records who the
    client is in `identity`.
    """

    certs: CertStore
    early_data: bool
    sni: str | None
    identity: ClientIdentity | None

    def handle_message(self, input_data: bytes, output_buf: dict[tls.Epoch, Buffer]) -> None:
        """Count a handshake that fails, by reason, as AlertingSSLObject does for TCP; the alert goes on as raised."""
        try:
            super().handle_message(input_data, output_buf)
        except tls.Alert as exc:
            failures.count(getattr(exc, "reason", None) or _ALERT_REASONS.get(exc.description, "other"))
            raise

    def _server_handle_hello(self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer) -> None:
        start = input_buf.tell()
        hello = tls.pull_client_hello(input_buf)
        input_buf.seek(start)
        self.sni = hello.server_name
        chain, key = self.certs.quic_pair(hello.server_name)
        self.certificate = chain[0]
        self.certificate_chain = list(chain[1:])
        self.certificate_private_key = key
        if not self.early_data:
            # Tickets issued from here on tell clients not to try 0-RTT.
            self._max_early_data = None
        super()._server_handle_hello(input_buf, initial_buf, handshake_buf)

    def _server_handle_certificate(self, input_buf: Buffer) -> None:
        """The client's Certificate message: refuse it here, before any signature is checked."""
        # (1) aioquic parses the message; a certificate that does not parse is bad_certificate.
        super()._server_handle_certificate(input_buf)
        leaf = self._peer_certificate
        # (2) None sent: `optional` goes on without an identity, `required` ends the handshake.
        if leaf is None:
            if self.certs.client_auth == "required":
                raise AlertCertificateRequired("client certificate required")
            return
        # (3) The chain must reach a client_ca CA, now, with clientAuth usage, and the leaf must not be
        # revoked: the checks aioquic never makes. Refused, the alert is the one OpenSSL sends on TCP.
        trust = self.certs.client_trust
        assert trust is not None  # the flag that asked for a certificate is only set with a trust store
        try:
            trust.verify(leaf, self._peer_certificate_chain, dt.datetime.now(dt.UTC))
        except ClientCertificateRefused as exc:
            raise AlertCertificateRefused(exc) from None

    def _server_handle_certificate_verify(self, input_buf: Buffer) -> None:
        """The client's CertificateVerify: once it checks, the identity is the client's."""
        # (4) aioquic checks the signature over the handshake transcript: the client holds the key.
        super()._server_handle_certificate_verify(input_buf)
        # (5) Only now is the certificate the client's own; the DER bytes are the ones it sent.
        leaf = self._peer_certificate
        assert leaf is not None  # CertificateVerify only follows a non-empty Certificate
        self.identity = identity_from_der(leaf.public_bytes(Encoding.DER))


class ServerConnection(QuicConnection):
    """A server-side QuicConnection whose TLS context picks its certificate by SNI."""

    def __init__(
        self,
        certs: CertStore,
        settings: QuicSettings,
        tickets: TicketStore,
        original_destination_connection_id: bytes,
        retry_source_connection_id: bytes | None,
    ) -> None:
        chain, key = certs.quic_pair(None)  # a placeholder aioquic insists on; replaced per ClientHello
        # No tickets with client authentication: see the module docstring.
        resumable = certs.client_auth == "off"
        configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=ALPN,
            idle_timeout=settings.idle_timeout,
            congestion_control_algorithm="cubic",
            certificate=chain[0],
            certificate_chain=list(chain[1:]),
            private_key=key,
        )
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
            session_ticket_fetcher=tickets.pop if resumable else None,
            session_ticket_handler=tickets.add if resumable else None,
        )
        # aioquic grants 128 concurrent request streams and offers no setting; the
        # limit is announced in the transport parameters, built in _initialize.
        self._local_max_streams_bidi.value = settings.max_streams
        self._certs = certs
        self._early_data = settings.early_data
        # Request streams whose body a handler reads at its own pace: how many body bytes wait unread.
        self.reader_paced: dict[int, Callable[[], int]] = {}

    def _write_stream_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream) -> None:
        """Grant window on a paced stream only as its reader consumes, not as data arrives.

        aioquic doubles a stream's window whenever half of it has been received,
        which suits a reader that takes everything at once. A proxied upload is
        read as fast as the upstream accepts it; without this a 1 GiB body to a
        slow origin would end up in memory.
        """
        stream_id = stream.stream_id
        unread = self.reader_paced.get(stream_id) if stream_id is not None else None
        if unread is None or stream_id is None:
            super()._write_stream_limits(builder, space, stream)
            return
        # Counted in stream offsets, which include HTTP/3 frame headers: what was delivered, less what waits.
        window = stream.receiver.starting_offset() - unread() + self._local_max_stream_data_bidi_remote
        stream.max_stream_data_local = max(stream.max_stream_data_local, window)
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    @property
    def sni(self) -> str | None:
        tls_ctx = getattr(self, "tls", None)
        return tls_ctx.sni if isinstance(tls_ctx, SNIContext) else None

    @property
    def identity(self) -> ClientIdentity | None:
        """The verified client certificate's identity, once the handshake has completed with one."""
        tls_ctx = getattr(self, "tls", None)
        return tls_ctx.identity if isinstance(tls_ctx, SNIContext) else None

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        context = self.tls
        context.__class__ = SNIContext
        assert isinstance(context, SNIContext)
        context.certs = self._certs
        context.early_data = self._early_data
        context.sni = None
        context.identity = None
        context._request_client_certificate = self._certs.client_auth != "off"


class TicketStore:
    """Session tickets this worker issued, for resumption; bounded, and each ticket used once.

    Single use is the 0-RTT replay defence RFC 8446 section 8.1 describes: a
    replayed ClientHello finds its ticket gone and gets a full handshake, so
    its early data is never processed twice. Clients receive a fresh ticket
    on every connection, so honest ones always hold an unused one.
    """

    def __init__(self, capacity: int = MAX_TICKETS) -> None:
        self.capacity = capacity
        self._tickets: dict[bytes, tls.SessionTicket] = {}

    def add(self, ticket: tls.SessionTicket) -> None:
        tickets = self._tickets
        if len(tickets) >= self.capacity:
            del tickets[next(iter(tickets))]  # the oldest: dicts keep insertion order
        tickets[ticket.ticket] = ticket

    def pop(self, label: bytes) -> tls.SessionTicket | None:
        return self._tickets.pop(label, None)

    def __len__(self) -> int:
        return len(self._tickets)
