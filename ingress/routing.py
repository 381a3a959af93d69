"""Host and path to a route, decided once per request with dict lookups.

Routing works on the decoded, normalised path, never the raw bytes, so
`/%61dmin` and `/a/../admin` land on the same route as `/admin`; any rule
attached to a route cannot be bypassed by spelling the path differently.

A Host that no route of the listener serves, or that is not a well-formed
`host[:port]`, maps to a group with no routes and a `refusal` status (the
configured unknown-host status, or 400). The verdict is memoised with the
lookup, so checking the Host costs a request nothing once it has been seen.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingress.errors import ProtocolError
from ingress.protocol.events import Request, Response
from ingress.protocol.hostcheck import valid_host

if TYPE_CHECKING:
    from ingress.handlers.cors import CorsPolicy

# What a handler gives back: the answer, or (a proxied request) a Future of it.
Outcome = Response | asyncio.Future[Response]
Handler = Callable[[Request, str], Outcome]


@dataclass(frozen=True, slots=True)
class RouteEntry:
    prefix: str
    methods: frozenset[str]
    allow: bytes
    handle: Handler
    # The handler reads request bodies as they arrive (a proxy); others get them whole.
    streams: bool = False
    # The route's CORS policy: it answers preflights and has already wrapped `handle`.
    cors: CorsPolicy | None = None


def normalize_path(raw: bytes) -> str:
    """Decode and normalise a request path; raise ProtocolError(400) on anything unsafe."""
    # `find`, not `in`: on bytes, `in` first tries the operand as an integer and formats the TypeError
    # it then clears, which costs more than the search (CPython 3.11); this runs for every request.
    find = raw.find
    if find(b"%") < 0 and find(b"/.") < 0 and find(b"//") < 0 and find(b"\\") < 0:
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(400, "non-ASCII bytes in path") from None
    decoded = urllib.parse.unquote_to_bytes(raw)
    if b"\x00" in decoded or b"\\" in decoded:
        raise ProtocolError(400, "NUL or backslash in path")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(400, "path is not valid UTF-8") from None
    out: list[str] = []
    for segment in text.split("/")[1:]:
        if segment == ".." or (";" in segment and segment.partition(";")[0] in (".", "..")):
            # `..;/` is a dot-dot segment to Tomcat and Spring, which drop path parameters first.
            raise ProtocolError(400, "dot-dot segment in path")
        if segment in ("", "."):
            continue
        out.append(segment)
    trailing = "/" if text.endswith(("/", "/.")) and out else ""
    return "/" + "/".join(out) + trailing


def host_name(host: str) -> str:
    """The Host header without its port; IPv6 literals keep their brackets."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.partition(":")[0]


def _matches(prefix: str, path: str) -> bool:
    if prefix.endswith("/"):
        return path.startswith(prefix) or path + "/" == prefix
    return path == prefix or path.startswith(prefix + "/")


class RouteGroup:
    """The routes of one host pattern, plus a bounded memo of raw path to (route, normalised path).

    `refusal` is 0, or for the groups standing for an unknown or malformed Host
    (which have no routes and never remember a path) the status to answer.
    """

    __slots__ = ("entries", "paths", "refusal")

    MAX_PATHS = 4096

    def __init__(self, refusal: int = 0) -> None:
        self.entries: list[RouteEntry] = []
        self.paths: dict[bytes, tuple[RouteEntry, str]] = {}
        self.refusal = refusal

    def match(self, path: str) -> RouteEntry | None:
        for entry in self.entries:
            if _matches(entry.prefix, path):
                return entry
        return None

    def remember(self, raw: bytes, entry: RouteEntry, path: str) -> None:
        if len(self.paths) >= self.MAX_PATHS:
            self.paths.clear()
        self.paths[raw] = (entry, path)


class Router:
    def __init__(self, unknown_status: int = 404) -> None:
        self._exact: dict[str, RouteGroup] = {}
        self._wildcard: dict[str, RouteGroup] = {}
        self._any: RouteGroup | None = None
        self._hosts: dict[str, RouteGroup] = {}
        self.unknown = RouteGroup(unknown_status)
        self.malformed = RouteGroup(400)

    def add(self, host: str, entry: RouteEntry) -> None:
        host = host.lower()
        if host == "*":
            if self._any is None:
                self._any = RouteGroup()
            group = self._any
        elif host.startswith("*."):
            group = self._wildcard.setdefault(host[1:], RouteGroup())
        else:
            group = self._exact.setdefault(host, RouteGroup())
        group.entries.append(entry)
        group.entries.sort(key=lambda e: len(e.prefix), reverse=True)
        self._hosts.clear()

    def group(self, host: str) -> RouteGroup:
        """The most specific host group for a Host header: exact, then wildcard, then `*`.

        A Host no pattern matches gets `unknown`, a malformed or empty one `malformed`.
        """
        try:
            return self._hosts[host]
        except KeyError:
            pass
        group: RouteGroup | None
        if not valid_host(host):
            group = self.malformed
        else:
            name = host_name(host).rstrip(".")
            group = self._exact.get(name)
            if group is None:
                labels = name.split(".")
                for i in range(1, len(labels)):
                    group = self._wildcard.get("." + ".".join(labels[i:]))
                    if group is not None:
                        break
            if group is None:
                group = self._any or self.unknown
        if len(self._hosts) < 4096:
            self._hosts[host] = group
        return group

    def nameless(self) -> RouteGroup:
        """The group for a request that names no host at all (HTTP/1.0 without Host): only `*` routes serve it."""
        return self._any or self.unknown

    def match(self, host: str, path: str) -> RouteEntry | None:
        return self.group(host).match(path)
