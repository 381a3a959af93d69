"""SSLContext construction with the house TLS policy.

Options are only ever added with `|=`: assigning `options` would wipe
OpenSSL defaults such as middlebox compatibility, which strict TLS 1.3
clients depend on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import ssl
import tempfile
import typing
from collections.abc import Iterator

from cryptography.hazmat.primitives import serialization

from ingress.config.model import CertPair, TLSSettings
from ingress.tls import failures
from ingress.tls.identity import ClientCertificateRefused, ClientTrust
from ingress.tls.material import CertInfo, load_client_material

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

    Each failed handshake is counted once, by reason (ingress.tls.failures),
    when OpenSSL first reports it: the deferred re-raise is not counted
    again, and a successful handshake pays nothing for the counting.
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
            failures.count(failures.tcp_reason(exc))
            if self.outgoing is None or not self.outgoing.pending:
                raise
            self.failure = exc
            raise ssl.SSLWantReadError("handshake failed; sending the alert first") from exc

    @typing.overload
    def getpeercert(self, binary_form: typing.Literal[False] = ...) -> dict[str, typing.Any] | None: ...
    @typing.overload
    def getpeercert(self, binary_form: typing.Literal[True]) -> bytes | None: ...
    @typing.overload
    def getpeercert(self, binary_form: bool) -> dict[str, typing.Any] | bytes | None: ...
    def getpeercert(self, binary_form: bool = False) -> dict[str, typing.Any] | bytes | None:
        """The DER form as usual; the decoded dictionary only as an empty one.

        The event loop decodes the client certificate into a dictionary after
        every mutual-TLS handshake (for `get_extra_info("peercert")`), which
        costs about 100 microseconds of formatting per handshake. Nothing
        here reads it: identity comes from the DER bytes (tls/identity.py),
        parsed once per certificate.
        """
        if binary_form:
            return super().getpeercert(True)
        return {} if super().getpeercert(True) is not None else None


class ResumptionCheckingSSLObject(AlertingSSLObject):
    """An AlertingSSLObject that refuses resumed sessions of client certificates no longer acceptable.

    A resumed session (TLS 1.2 session ID or ticket, TLS 1.3 PSK) skips
    certificate verification: without this check a client whose
    certificate was revoked, or whose CA was removed, by a hot reload since
    its full handshake keeps resuming for as long as its tickets last. The
    listener's current ClientTrust decides (ClientTrust.check_resumed).
    Only listeners with client authentication create these objects (see
    policy_context), and a full handshake pays one `session_reused` call.
    """

    def do_handshake(self) -> None:
        super().do_handshake()
        if self.session_reused:
            self._check_resumed()

    def _check_resumed(self) -> None:
        # The connection's context is the certificate context SNI moved it to, holding the current trust.
        trust = getattr(self.context, "client_trust", None)
        der = self.getpeercert(binary_form=True)
        if trust is None or der is None:  # der None: client_auth is optional and the session has no certificate
            return
        try:
            trust.check_resumed(der, dt.datetime.now(dt.UTC))
        except ClientCertificateRefused as exc:
            failures.count(failures.KIND_REASONS[exc.kind])
            # The handshake is complete, so no alert can follow: the event loop closes the connection.
            raise ssl.SSLError(f"resumed session refused: {exc.reason}") from None


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


class ClientAuthSSLContext(EdgeSSLContext):
    """The context of a listener with client authentication; `client_trust` judges resumed sessions (see above)."""

    sslobject_class = ResumptionCheckingSSLObject
    client_trust: ClientTrust | None = None


@contextlib.contextmanager
def _as_file(data: bytes) -> Iterator[str]:
    """`data` behind a path OpenSSL can open, for the loaders that take nothing else.

    An anonymous memory file where Linux offers one, else a private
    temporary file; either way the bytes are those already parsed and
    checked, never a second read of a file that may have changed since.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("edgeward-tls", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as fh:
                fh.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="edgeward-tls-") as fh:  # mode 0600
        fh.write(data)
        fh.flush()
        yield fh.name


def policy_context(settings: TLSSettings, trust: ClientTrust | None = None) -> ssl.SSLContext:
    """A server context with versions, suites, ALPN, options and client authentication set, but no certificate.

    `trust` holds the client CAs and CRLs already loaded and checked; without
    it they are loaded from `settings` (the listener's base context).

    Client authentication is set here, in every context, because the SNI
    callback moves every connection (with or without a server name) from
    the listener's base context to a certificate's context in the middle of
    the handshake, and OpenSSL then takes each part of client verification
    from a different one (tests/test_mtls_revocation.py proves each):

    - from the base context: `verify_mode`, and the verify flags, which the
      connection copied when it was created. VERIFY_CRL_CHECK_LEAF set only
      on the context it moves to is silently not applied;
    - from the context it moved to: the trust store, that is the client CAs
      and the CRLs. Rebuilding the certificates' contexts (CertStore.poll)
      therefore changes what new handshakes trust, while the base context,
      shared by every worker and kept across reloads, holds the same files
      as they were when the listener was bound, and is never consulted.

    With client CRLs, VERIFY_CRL_CHECK_LEAF makes OpenSSL check every
    client certificate against the CRL of the CA that issued it, and refuse
    it when that CA has no CRL, or only an expired one (an expired CRL is
    treated like an expired certificate). Operationally: each CA issuing
    client certificates must have a CRL here, refreshed before its
    nextUpdate, or every client it issued is locked out. Loading refuses a
    CA without a CRL (material.client_material); the handshake failure
    counter `no_valid_crl` shows one that has since expired. Only the leaf
    is checked: an intermediate CA's revocation is not, unless it is
    removed from client_ca. OpenSSL also verifies the CRL's signature on
    every handshake, so a large CRL makes every mTLS handshake slower.

    Session resumption keeps working with client authentication: OpenSSL
    only resumes sessions whose session ID context matches, and CPython sets
    one on every context it creates. A resumed session keeps the client
    certificate verified in its full handshake; its ticket is encrypted with
    keys of the listener's base context, which a change of client_auth,
    client_ca or client_crl in the config replaces (the policy keys the base
    context), so a session from before the change is not resumed after it.
    A change of the files' contents keeps the base context and its ticket
    keys, so ResumptionCheckingSSLObject judges each resumed session against
    the CAs and CRLs in force.
    """
    mtls = settings.client_auth != "off"
    ctx = ClientAuthSSLContext(ssl.PROTOCOL_TLS_SERVER) if mtls else EdgeSSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[settings.min_version]
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.options |= (
        ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE
    )
    if not settings.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
    ctx.set_alpn_protocols(list(settings.alpn))
    if isinstance(ctx, ClientAuthSSLContext):
        # One TLS 1.3 ticket per handshake instead of OpenSSL's two. A ticket carrying a client
        # certificate costs about 0.3 ms of server CPU to issue (measured: 600 -> ~800 full mTLS
        # handshakes per CPU-second with one); a client resumes its next connection with it, and
        # every resumption hands out a fresh one.
        ctx.num_tickets = 1
        ctx.verify_mode = _CLIENT_AUTH[settings.client_auth]
        if trust is None:
            material = load_client_material(settings.client_ca, settings.client_crl)
            trust = ClientTrust(material.cas, material.crls)
        ctx.load_verify_locations(cadata="".join(ca.public_bytes(_PEM).decode() for ca in trust.cas))
        if trust.crls:
            # Python loads CRLs only from files (cadata takes certificates only).
            with _as_file(b"".join(item.crl.public_bytes(_PEM) for item in trust.crls)) as path:
                ctx.load_verify_locations(cafile=path)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        ctx.client_trust = trust
    return ctx


_PEM = serialization.Encoding.PEM


def leaf_context(settings: TLSSettings, pair: CertPair) -> ssl.SSLContext:
    """A context serving one certificate from its files; raises ssl.SSLError/OSError/TLSMaterialError."""
    ctx = policy_context(settings)
    ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


def serving_context(settings: TLSSettings, info: CertInfo, trust: ClientTrust | None) -> ssl.SSLContext:
    """A context serving one parsed certificate, trusting `trust`'s client CAs and CRLs.

    Built from objects in memory, not from the files: a change of client
    CAs or CRLs rebuilds every certificate's context, and must not fail (or
    pick up a half-written file) because a certificate file is being
    replaced at the same moment; that change is the certificate's own
    reload, and is checked there.
    """
    ctx = policy_context(settings, trust)
    key = info.key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with _as_file(key + b"".join(cert.public_bytes(_PEM) for cert in info.chain)) as path:
        ctx.load_cert_chain(path)
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
