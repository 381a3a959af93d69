"""Host and path to a route, decided once per request with dict lookups.

Routing works on the decoded, normalised path, never the raw bytes, so
`/%61dmin` and `/a/../admin` land on the same route as `/admin`; any rule
attached to a route cannot be bypassed by spelling the path differently.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from ingress.errors import ProtocolError
from ingress.protocol.events import Request, Response

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


def normalize_path(raw: bytes) -> str:
    """Decode and normalise a request path; raise ProtocolError(400) on anything unsafe."""
    if b"%" not in raw and b"/." not in raw and b"//" not in raw and b"\\" not in raw:
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
    """The routes of one host pattern, plus a bounded memo of raw path to (route, normalised path)."""

    __slots__ = ("entries", "paths")

    MAX_PATHS = 4096

    def __init__(self) -> None:
        self.entries: list[RouteEntry] = []
        self.paths: dict[bytes, tuple[RouteEntry, str]] = {}

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
    def __init__(self) -> None:
        self._exact: dict[str, RouteGroup] = {}
        self._wildcard: dict[str, RouteGroup] = {}
        self._any: RouteGroup | None = None
        self._hosts: dict[str, RouteGroup | None] = {}

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

    def group(self, host: str) -> RouteGroup | None:
        """The most specific host group for a Host header: exact, then wildcard, then `*`."""
        try:
            return self._hosts[host]
        except KeyError:
            pass
        name = host_name(host).rstrip(".")
        group = self._exact.get(name)
        if group is None:
            labels = name.split(".")
            for i in range(1, len(labels)):
                group = self._wildcard.get("." + ".".join(labels[i:]))
                if group is not None:
                    break
        if group is None:
            group = self._any
        if len(self._hosts) < 4096:
            self._hosts[host] = group
        return group

    def match(self, host: str, path: str) -> RouteEntry | None:
        group = self.group(host)
        return group.match(path) if group is not None else None
