"""The OSV query API on loopback, answered from a local advisory snapshot, for pip-audit's `-s osv`.

pip-audit stays the scanner of record (its collection, dedup by alias, JSON report); this server
only replaces api.osv.dev. It binds 127.0.0.1 on an ephemeral port, answers nothing but
`POST /v1/query`, and keeps a log of what it was asked and what it could not answer, so the caller
can prove every package was really looked up in this snapshot.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from packaging.version import InvalidVersion, Version

from audit.pypi import normalise_name
from audit.scan import osv
from audit.scan.advisories import AdvisoryIndex

_MAX_BODY = 64 * 1024
# What pip-audit reads from a record. `published` is left out on purpose: pip-audit parses it with
# two fixed strptime formats and crashes on any other valid RFC 3339 spelling.
_WIRE_FIELDS = ("schema_version", "id", "modified", "aliases", "summary", "details", "affected")


@dataclass(frozen=True)
class Failure:
    """A query the server refused to answer: the package stays unchecked, and the report says why."""

    name: str
    version: str
    reason: str


class QueryLog:
    """Thread-safe record of answered queries and failures (the handler runs on server threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answered: set[tuple[str, str]] = set()
        self._failures: list[Failure] = []

    def answered(self, name: str, version: str) -> None:
        with self._lock:
            self._answered.add((normalise_name(name), version))

    def failed(self, failure: Failure) -> None:
        with self._lock:
            self._failures.append(failure)

    def was_answered(self, name: str, version: Version) -> bool:
        with self._lock:
            return any(n == normalise_name(name) and Version(v) == version for n, v in self._answered)

    def failures(self) -> list[Failure]:
        with self._lock:
            return list(self._failures)


def answer(index: AdvisoryIndex, query: object) -> tuple[HTTPStatus, dict[str, Any]]:
    """The OSV `/v1/query` answer for one decoded request body (no sockets: testable directly)."""
    if not isinstance(query, Mapping):
        return HTTPStatus.BAD_REQUEST, {"error": "body must be a JSON object"}
    package = query.get("package")
    version = query.get("version")
    if not isinstance(package, Mapping) or not isinstance(package.get("name"), str) or not isinstance(version, str):
        return HTTPStatus.BAD_REQUEST, {"error": "need package.name and version"}
    if package.get("ecosystem") != osv.ECOSYSTEM:
        return HTTPStatus.BAD_REQUEST, {"error": f"only ecosystem {osv.ECOSYSTEM} is served"}
    try:
        parsed = Version(version)
    except InvalidVersion:
        return HTTPStatus.BAD_REQUEST, {"error": f"version {version!r} is not PEP 440"}
    name = package["name"]
    vulns = osv.matching(index.for_package(name), name, parsed)
    return HTTPStatus.OK, {"vulns": [{k: record[k] for k in _WIRE_FIELDS if k in record} for record in vulns]}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        if self.path != "/v1/query":
            self._send(HTTPStatus.NOT_FOUND, {"error": "only POST /v1/query"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length <= 0 or length > _MAX_BODY:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body missing or too large"})
            return
        try:
            query = json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._send(HTTPStatus.BAD_REQUEST, {"error": "body is not JSON"})
            return
        try:
            status, body = answer(self.server.index, query)
        except osv.Undecidable as exc:
            # The snapshot has a record for this package that cannot be evaluated: refuse to answer
            # (pip-audit then stops), and remember which package it was so the report can say so.
            package, version = query["package"]["name"], query["version"]
            self.server.log.failed(Failure(normalise_name(package), version, f"advisory {exc}"))
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
            return
        if status == HTTPStatus.OK:
            self.server.log.answered(query["package"]["name"], query["version"])
        self._send(status, body)

    def do_GET(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only POST /v1/query"})

    def _send(self, status: HTTPStatus, body: Mapping[str, Any]) -> None:
        data = json.dumps(body, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the query log is the record, and stderr belongs to the progress output."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, index: AdvisoryIndex) -> None:
        self.index = index
        self.log = QueryLog()
        super().__init__(("127.0.0.1", 0), _Handler)


@dataclass(frozen=True)
class RunningServer:
    url: str  # http://127.0.0.1:PORT/v1/query, for pip-audit's --osv-url
    log: QueryLog


@contextmanager
def serve(index: AdvisoryIndex) -> Iterator[RunningServer]:
    """Serve `index` on 127.0.0.1:ephemeral for the duration of the block."""
    server = _Server(index)
    thread = threading.Thread(target=server.serve_forever, name="osv-loopback", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield RunningServer(url=f"http://{host!s}:{port}/v1/query", log=server.log)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
