"""Buffered JSON-lines access log.

The request path only appends a tuple of values it already has; formatting
and the write happen in `flush`, which the worker calls from its timer, so
a slow disk never adds latency to a request. The buffer is bounded: when it
is full, records are dropped and counted rather than growing memory.
"""

from __future__ import annotations

import json
import os
import time

from ingress.protocol.events import Decision, Peer

# client_cert is the SHA-256 fingerprint (hex) of the client certificate, "" without one; auth and
# auth_reason are the access policy's outcome and why ("" when no policy ran). The token subject and
# certificate names stay out of the access log: they are personal data, and the fingerprint suffices
# to correlate with the audit trail.
Record = tuple[float, str, str, str, int, int, float, str, str, str, str, str, str]

_FIELDS = (
    "time",
    "client",
    "method",
    "path",
    "status",
    "bytes",
    "duration_ms",
    "protocol",
    "tls",
    "sni",
    "client_cert",
    "auth",
    "auth_reason",
)


class AccessLog:
    __slots__ = ("_buffer", "_fd", "_owns_fd", "dropped", "max_buffer")

    def __init__(self, path: str, max_buffer: int = 65536) -> None:
        if path == "-":
            self._fd, self._owns_fd = 2, False
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            self._owns_fd = True
        self._buffer: list[Record] = []
        self.max_buffer = max_buffer
        self.dropped = 0

    def record(self, rec: Record) -> None:
        if len(self._buffer) < self.max_buffer:
            self._buffer.append(rec)
        else:
            self.dropped += 1

    def request(
        self,
        peer: Peer,
        method: str,
        path: str,
        status: int,
        nbytes: int,
        t0: float,
        protocol: str,
        decision: Decision | None = None,
    ) -> None:
        """One answered request, whatever protocol carried it; `t0` is its `perf_counter` start."""
        duration = time.perf_counter() - t0
        self.record(
            (
                time.time(),
                peer.client,
                method,
                path,
                status,
                nbytes,
                duration,
                protocol,
                peer.tls,
                peer.sni,
                peer.client_cert,
                decision.outcome if decision is not None else "",
                decision.reason if decision is not None else "",
            )
        )

    def flush(self) -> None:
        if not self._buffer:
            return
        records, self._buffer = self._buffer, []
        lines = []
        for rec in records:
            item = dict(zip(_FIELDS, rec, strict=True))
            item["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec[0])) + f".{int(rec[0] % 1 * 1000):03d}Z"
            item["duration_ms"] = round(rec[6] * 1000, 3)
            lines.append(json.dumps(item, separators=(",", ":")))
        data = ("\n".join(lines) + "\n").encode()
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError:
            self.dropped += len(records)

    def close(self) -> None:
        self.flush()
        if self._owns_fd:
            os.close(self._fd)
