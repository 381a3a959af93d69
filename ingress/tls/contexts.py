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


def policy_context(settings: TLSSettings) -> ssl.SSLContext:
    """A server context with versions, suites, ALPN and options set, but no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[settings.min_version]
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.options |= (
        ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE
    )
    if not settings.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
    ctx.set_alpn_protocols(list(settings.alpn))
    return ctx


def leaf_context(settings: TLSSettings, pair: CertPair) -> ssl.SSLContext:
    """A context serving one certificate; raises ssl.SSLError/OSError if it cannot load."""
    ctx = policy_context(settings)
    ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


def tls_policy(settings: TLSSettings) -> TLSSettings:
    """What a listening socket's context fixes: everything but the certificates."""
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
