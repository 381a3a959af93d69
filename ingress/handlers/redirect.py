"""Redirects, e.g. plain HTTP to HTTPS."""

from __future__ import annotations

import re
import urllib.parse

from ingress.config.model import Redirect
from ingress.protocol.errorpages import error_response
from ingress.protocol.events import Request, Response
from ingress.routing import host_name

# A Host we may echo into Location: a DNS name or IPv4, or a bracketed IPv6.
_SAFE_HOST = re.compile(r"^(?:[a-z0-9.-]{1,253}|\[[0-9a-f:.]{2,45}\])(?::\d{1,5})?$")
_DEFAULT_PORT = {"https": 443, "http": 80}


class RedirectHandler:
    def __init__(self, target: Redirect) -> None:
        self.target = target

    def handle(self, request: Request, path: str) -> Response:
        target = self.target
        host = target.host
        if not host:
            if not _SAFE_HOST.match(request.host):
                return error_response(400)
            host = host_name(request.host)
        if target.port and target.port != _DEFAULT_PORT[target.scheme]:
            host = f"{host}:{target.port}"
        location = f"{target.scheme}://{host}{urllib.parse.quote(path)}".encode("ascii")
        if request.query:
            location += b"?" + request.query
        return error_response(target.status, [(b"Location", location)])
