"""The client side of TLS: how the proxy talks to https origins.

A bank's backends sit on an internal network that is no more trusted than
the Internet, so the defaults are those of a browser: the origin's chain
must verify (against `ca`, else the system store) and its certificate must
name the host dialled (or `server_name`). The context is built once per
pool, not per connection: building one parses the CA bundle and the client
key, which costs milliseconds; reusing it costs nothing.

File errors are raised before any connection is made, naming the config
key (`upstreams[payments].ca`) as well as the file, because an operator
reading "no such file" needs to know which of the many upstreams to fix.
"""

from __future__ import annotations

import logging
import ssl

from cryptography import x509

from ingress.config.upstream import Upstream
from ingress.errors import TLSMaterialError
from ingress.tls.contexts import INTERMEDIATE_CIPHERS
from ingress.tls.material import load_pair

log = logging.getLogger("edgeward.upstream")

ALPN = ["http/1.1"]


def origin_context(upstream: Upstream) -> ssl.SSLContext:
    """A client context for `upstream`'s https origins; raises TLSMaterialError naming the key and file.

    The name checked (and sent in SNI) is not set here but per connection,
    as `server_hostname`: see `server_hostname`. CPython sends no SNI for
    an IP address and matches it against the certificate's IP SANs.
    """
    key = f"upstreams[{upstream.name}]"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(ALPN)
    if upstream.insecure_skip_verify:
        _unsafe_accept_any_certificate(ctx, upstream.name)
    elif upstream.ca:
        ctx.load_verify_locations(cadata=_read_ca(upstream.ca, f"{key}.ca"))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if upstream.client_cert:
        _load_client_pair(ctx, upstream, key)
    elif upstream.client_key:
        raise TLSMaterialError(f"{key}.client_key is set without {key}.client_cert")
    return ctx


def server_hostname(upstream: Upstream, host: str) -> str:
    """The name an origin's certificate must carry: `server_name`, else the host dialled."""
    return upstream.server_name or host


def _unsafe_accept_any_certificate(ctx: ssl.SSLContext, name: str) -> None:
    """Turn verification off: any man in the middle is then accepted. Lab origins only."""
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    log.warning("upstreams[%s]: insecure_skip_verify is on; origin certificates are NOT verified", name)


def _read_ca(path: str, key: str) -> str:
    """The bundle's text, checked to hold certificates, so a wrong file fails at load and not at first request."""
    try:
        with open(path, "rb") as fh:
            pem = fh.read()
    except FileNotFoundError:
        raise TLSMaterialError(f"{key}: CA file {path} does not exist") from None
    except OSError as exc:
        raise TLSMaterialError(f"{key}: CA file {path} cannot be read: {exc.strerror}") from None
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TLSMaterialError(f"{key}: CA file {path} holds no PEM certificate") from None
    return pem.decode("ascii", "replace")


def _load_client_pair(ctx: ssl.SSLContext, upstream: Upstream, key: str) -> None:
    """Present a client certificate (mutual TLS to the origin), checked first for a clear error."""
    cert_path = upstream.client_cert
    key_path = upstream.client_key or cert_path
    try:
        load_pair(cert_path, key_path)
    except TLSMaterialError as exc:
        raise TLSMaterialError(f"{key}.client_cert/client_key: {exc}") from None
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise TLSMaterialError(f"{key}.client_cert/client_key: {cert_path}, {key_path}: {exc}") from None
