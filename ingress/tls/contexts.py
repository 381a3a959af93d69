"""SSLContext construction with the house TLS policy.

Options are only ever added with `|=`: assigning `options` would wipe
OpenSSL defaults such as middlebox compatibility, which strict TLS 1.3
clients depend on.
"""

from __future__ import annotations

import dataclasses
import ssl

from ingress.config.model import CertPair, TLSSettings

# Mozilla "intermediate" TLS 1.2 suites (TLS 1.3 suites are OpenSSL's defaults,
# which are exactly the intermediate set). DHE is left out: without DH
# parameters OpenSSL would not offer it anyway, and ECDHE covers every client
# the intermediate profile targets.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


_CLIENT_AUTH = {"off": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_AGAIN = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLSyscallError)


class AlertingSSLObject(ssl.SSLObject):
    """An SSLObject whose failed handshake still sends OpenSSL's fatal alert to the client.

    uvloop (like asyncio before CPython gh-98078) closes the transport when
    `do_handshake` raises, without sending what OpenSSL left in the outgoing
    BIO: the alert saying why (certificate_required, unknown_ca,
    protocol_version, ...). The client sees a bare close instead. Both
    event loops do send the outgoing BIO when the handshake "wants to read",
    so a failure with an alert pending is reported as that first. The
    connection then ends when the client answers the alert by closing (every
    TLS client does), when it sends more (the real error is raised then), or
    at the handshake timeout; no application data is ever read from it. A
    failure with nothing to send is raised at once, so a client that does
    not speak TLS is still dropped immediately.
    """

    outgoing: ssl.MemoryBIO | None = None
    failure: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        if self.failure is not None:
            raise self.failure
        try:
            super().do_handshake()
        except _AGAIN:
            raise
        except ssl.SSLError as exc:
            if self.outgoing is None or not self.outgoing.pending:
                raise
            self.failure = exc
            raise ssl.SSLWantReadError("handshake failed; sending the alert first") from exc


class EdgeSSLContext(ssl.SSLContext):
    """An SSLContext whose connections are AlertingSSLObjects (event loops wrap connections with `wrap_bio`)."""

    sslobject_class = AlertingSSLObject

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        sslobj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        assert isinstance(sslobj, AlertingSSLObject)
        sslobj.outgoing = outgoing
        return sslobj


def policy_context(settings: TLSSettings) -> ssl.SSLContext:
    """A server context with versions, suites, ALPN, options and client authentication set, but no certificate.

    Client authentication is set here, in every context, because the SNI
    callback moves a connection from the listener's base context to a
    certificate's context in the middle of the handshake: OpenSSL then asks
    for the client certificate as the base context says (`verify_mode` stays
    with the connection) but verifies it against the CAs of the context it
    was moved to. Both must agree, and building both here makes them.

    Session resumption keeps working with client authentication: OpenSSL
    only resumes sessions whose session ID context matches, and CPython sets
    one on every context it creates. A resumed session keeps the client
    certificate verified in its full handshake; its ticket is encrypted with
    keys of the listener's base context, which a change of client_auth or
    client_ca replaces (the policy keys the base context), so a session from
    before the change is not resumed after it.
    """
    ctx = EdgeSSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[settings.min_version]
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.options |= (
        ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE
    )
    if not settings.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
    ctx.set_alpn_protocols(list(settings.alpn))
    if settings.client_auth != "off":
        ctx.verify_mode = _CLIENT_AUTH[settings.client_auth]
        for bundle in settings.client_ca:
            ctx.load_verify_locations(cafile=bundle)
    return ctx


def leaf_context(settings: TLSSettings, pair: CertPair) -> ssl.SSLContext:
    """A context serving one certificate; raises ssl.SSLError/OSError if it cannot load."""
    ctx = policy_context(settings)
    ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


def tls_policy(settings: TLSSettings) -> TLSSettings:
    """What a listening socket's context fixes: everything but the certificates.

    client_auth and client_ca are part of it: the base context decides
    whether a client certificate is asked for, so changing either on reload
    rebinds the listener with a new context.
    """
    return dataclasses.replace(settings, certs=())


_shared_bases: dict[tuple[str, TLSSettings], ssl.SSLContext] = {}


def base_context(listener_name: str, settings: TLSSettings) -> ssl.SSLContext:
    """The context a listener hands to the event loop.

    OpenSSL encrypts session tickets with the keys of the context an SSL
    object was created from, even after SNI switches it to another context.
    Creating this base context in the supervisor before forking therefore
    gives every worker the same ticket keys, so a client resumes its session
    whichever worker accepts the next connection.

    Only the policy keys it, not the certificates: those are chosen per
    handshake by the SNI callback. A reload that only changes certificates
    keeps this context, so workers forked later still share its ticket keys.
    """
    key = (listener_name, tls_policy(settings))
    ctx = _shared_bases.get(key)
    if ctx is None:
        ctx = leaf_context(settings, settings.certs[0])
        _shared_bases[key] = ctx
    return ctx
