"""Direct handshakes with Python's ssl: ALPN selection and what happens without a client certificate.

sslyze does not report ALPN, and its client-auth verdict is what the server asks for; connecting without a
certificate records what the server actually does (handshake refused, or accepted). Verification is off on
purpose: these handshakes measure the server, the chain is judged from sslyze's certificate info.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

ALPN_OFFERS: tuple[tuple[str, ...], ...] = (("h2", "http/1.1"), ("http/1.1",), ("h2",))
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def _context(alpn: tuple[str, ...]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # measuring the server, not trusting it (see module docstring)
    context.set_alpn_protocols(list(alpn))
    return context


def _handshake(address: tuple[str, int], alpn: tuple[str, ...], send: bool) -> dict[str, Any]:
    try:
        with socket.create_connection(address, timeout=5) as raw, _context(alpn).wrap_socket(raw) as tls:
            outcome: dict[str, Any] = {
                "handshake": "accepted",
                "alpn": tls.selected_alpn_protocol(),
                "version": tls.version(),
                "cipher": (tls.cipher() or ("",))[0],
            }
            if send:
                # TLS 1.3 sends the refusal of a missing client certificate after the handshake: read it.
                tls.sendall(REQUEST)
                try:
                    first = tls.recv(64)
                    outcome["request"] = "answered" if first else "closed without an answer"
                except (ssl.SSLError, OSError) as exc:
                    outcome["request"] = f"refused ({_reason(exc)})"
            return outcome
    except (ssl.SSLError, OSError) as exc:
        return {"handshake": f"refused ({_reason(exc)})"}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return type(exc).__name__


def probe(address: tuple[str, int]) -> dict[str, Any]:
    alpn = {" ".join(offer): _handshake(address, offer, False).get("alpn") for offer in ALPN_OFFERS}
    without_cert = _handshake(address, ("http/1.1",), True)
    refused = without_cert["handshake"] != "accepted" or str(without_cert.get("request", "")).startswith(
        ("refused", "closed")
    )
    return {"alpn_selected": alpn, "without_client_certificate": without_cert, "client_certificate_enforced": refused}
