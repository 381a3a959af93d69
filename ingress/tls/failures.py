"""Failed TLS handshakes, counted by why they failed.

A refused handshake never reaches HTTP, so no access-log line or response
counter sees it; without these counts an expired CRL or a client fleet on
the wrong CA shows up only as a silent drop in traffic. The labels are a
small fixed set, the same for TCP (OpenSSL) and QUIC (aioquic), so one
dashboard and one alert rule cover both:

- `no_client_cert`: client authentication is required and none was sent;
- `cert_expired`: the client certificate is past its notAfter;
- `cert_revoked`: its serial is on its CA's CRL;
- `unknown_ca`: its chain leads to no CA in client_ca, or a signature on it
  does not verify;
- `bad_cert`: any other verification failure (not yet valid, not for
  client authentication, path length, ...);
- `no_valid_crl`: the server has no usable CRL for the client's CA
  (missing, expired, not yet valid, out of scope). Every client of that
  CA is refused, so this one is an incident on the server's side;
- `protocol_version`: no TLS version in common (TLS 1.0/1.1 clients);
- `no_shared_cipher`: no cipher suite or signature algorithm in common;
- `not_tls`: the bytes were not TLS at all (plain HTTP to the HTTPS port);
- `client_alert`: the client ended the handshake with an alert, usually
  because it does not trust the server's certificate;
- `other`: anything else.

Handshake timeouts are not counted: uvloop aborts such a connection with
ConnectionAbortedError, an OSError, which it neither reports to the
loop's exception handler nor passes to any hook the server owns (see
`_check_handshake_timeout` and `_fatal_error` in uvloop's sslproto.pyx).

The counts are per worker process (each forks with its own copy) and
bumped only on the failure path: a successful handshake costs nothing
here.
"""

from __future__ import annotations

import ssl

REASONS = (
    "no_client_cert",
    "cert_expired",
    "cert_revoked",
    "unknown_ca",
    "bad_cert",
    "no_valid_crl",
    "protocol_version",
    "no_shared_cipher",
    "not_tls",
    "client_alert",
    "other",
)

counts: dict[str, int] = dict.fromkeys(REASONS, 0)


def count(reason: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1


# ClientCertificateRefused.kind (edgeward's own verification: QUIC, resumed TCP sessions) -> reason.
KIND_REASONS = {
    "expired": "cert_expired",
    "not_yet_valid": "bad_cert",
    "unknown_ca": "unknown_ca",
    "wrong_usage": "bad_cert",
    "bad_cert": "bad_cert",
    "revoked": "cert_revoked",
    "crl_missing": "no_valid_crl",
    "crl_expired": "no_valid_crl",
    "crl_not_yet_valid": "no_valid_crl",
    "crl_scope": "no_valid_crl",
}

# X509_V_ERR_* codes (openssl/x509_vfy.h) -> reason; any other non-zero code is bad_cert.
_VERIFY_CODES = {
    10: "cert_expired",  # CERT_HAS_EXPIRED
    23: "cert_revoked",  # CERT_REVOKED
    **dict.fromkeys(
        # UNABLE_TO_GET_ISSUER_CERT, UNABLE_TO_DECRYPT_CERT_SIGNATURE, UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY,
        # CERT_SIGNATURE_FAILURE, DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN,
        # UNABLE_TO_GET_ISSUER_CERT_LOCALLY, UNABLE_TO_VERIFY_LEAF_SIGNATURE, NO_ISSUER_PUBLIC_KEY,
        # CERT_UNTRUSTED, CERT_REJECTED, SUBJECT_ISSUER_MISMATCH, AKID_SKID_MISMATCH,
        # AKID_ISSUER_SERIAL_MISMATCH, KEYUSAGE_NO_CERTSIGN, PATH_LOOP, INVALID_CA
        (2, 4, 6, 7, 18, 19, 20, 21, 24, 27, 28, 29, 30, 31, 32, 55, 79),
        "unknown_ca",
    ),
    **dict.fromkeys(
        # UNABLE_TO_GET_CRL, UNABLE_TO_DECRYPT_CRL_SIGNATURE, CRL_SIGNATURE_FAILURE, CRL_NOT_YET_VALID,
        # CRL_HAS_EXPIRED, ERROR_IN_CRL_LAST_UPDATE_FIELD, ERROR_IN_CRL_NEXT_UPDATE_FIELD,
        # UNABLE_TO_GET_CRL_ISSUER, KEYUSAGE_NO_CRL_SIGN, UNHANDLED_CRITICAL_CRL_EXTENSION,
        # DIFFERENT_CRL_SCOPE, CRL_PATH_VALIDATION_ERROR
        (3, 5, 8, 11, 12, 15, 16, 33, 35, 36, 44, 54),
        "no_valid_crl",
    ),
}

# SSLError.reason (OpenSSL's SSL_R_* names) -> reason.
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_cert",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_SHARED_SIGNATURE_ALGORITHMS": "no_shared_cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_cipher",
    "NO_SUITABLE_KEY_SHARE": "no_shared_cipher",
    "HTTP_REQUEST": "not_tls",
    "HTTPS_PROXY_REQUEST": "not_tls",
    "WRONG_VERSION_NUMBER": "not_tls",
    "UNKNOWN_PROTOCOL": "not_tls",
    "PACKET_LENGTH_TOO_LONG": "not_tls",
    "RECORD_LENGTH_MISMATCH": "not_tls",
}


def tcp_reason(exc: ssl.SSLError) -> str:
    """The reason for an OpenSSL handshake failure: the verify code if any, else OpenSSL's reason name."""
    code = getattr(exc, "verify_code", 0)
    if code:
        return _VERIFY_CODES.get(code, "bad_cert")
    name = exc.reason or ""
    found = _REASONS.get(name)
    if found is not None:
        return found
    # An alert the client sent: OpenSSL names them SSLV3_ALERT_*, TLSV1_ALERT_*, TLSV13_ALERT_*.
    if name.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):
        return "client_alert"
    return "other"
