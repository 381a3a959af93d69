"""What a refused client is told: the status, the RFC 6750 challenge, and nothing more.

The body never says why beyond the RFC error code: the reason (expired,
unknown key, wrong audience, ...) goes to the decision record for logs and
audit, where operators need it and attackers cannot read it. Answers that
do not vary are built once per policy and reused, like pre-serialised
static responses.
"""

from __future__ import annotations

import math

from ingress.protocol.errorpages import error_response
from ingress.protocol.events import Response

_RETRY_MEMO = 64


class Answers:
    __slots__ = ("_retry", "bad_request", "forbidden", "insufficient_scope", "invalid_token", "no_token")

    def __init__(self, realm: str) -> None:
        challenge = b'Bearer realm="' + realm.encode("latin-1") + b'"'
        # RFC 6750 section 3.1: without any credentials the challenge carries no error code.
        self.no_token = error_response(401, [(b"WWW-Authenticate", challenge)])
        self.invalid_token = error_response(401, [(b"WWW-Authenticate", challenge + b', error="invalid_token"')])
        self.bad_request = error_response(400, [(b"WWW-Authenticate", challenge + b', error="invalid_request"')])
        self.insufficient_scope = error_response(
            403, [(b"WWW-Authenticate", challenge + b', error="insufficient_scope"')]
        )
        self.forbidden = error_response(403)
        self._retry: dict[int, Response] = {}

    def too_many(self, wait: float) -> Response:
        """429 with Retry-After in whole seconds, rounded up so a client that obeys it is served."""
        seconds = max(1, math.ceil(wait))
        response = self._retry.get(seconds)
        if response is None:
            response = error_response(429, [(b"Retry-After", b"%d" % seconds)])
            if len(self._retry) < _RETRY_MEMO:
                self._retry[seconds] = response
        return response
