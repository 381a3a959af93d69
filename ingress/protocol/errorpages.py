"""Small error responses; the body never says more than the status."""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

from ingress.protocol.events import Response

_TEXT = b"text/plain; charset=utf-8"


def error_response(status: int, extra: list[tuple[bytes, bytes]] | None = None, note: str = "") -> Response:
    """`note`: a second line for the body, such as a reference to quote; never anything the client sent."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = f"{status} {phrase}\n{note}{chr(10) if note else ''}".encode()
    headers = [
        (b"Content-Type", _TEXT),
        (b"Content-Length", b"%d" % len(body)),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Cache-Control", b"no-store"),
    ]
    if extra:
        headers.extend(extra)
    return Response(status, headers, body)


def settled(waiting: asyncio.Future[Response], protocol: str) -> Response:
    """A handler's deferred answer, or 500 if the handler failed.

    A handler bug must not take the connection's other requests or streams with it;
    it is logged once as `<protocol>.handler_failed`.
    """
    try:
        return waiting.result()
    except Exception:
        logging.getLogger(f"edgeward.{protocol}").exception(
            "handler failed", extra={"event": f"{protocol}.handler_failed"}
        )
        return error_response(500)
