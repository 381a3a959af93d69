"""Buffered JSON-lines access log.

Lines are formatted from the telemetry batch (see `record.Exchange`) and
written when `flush` is called from the worker's timer, so a slow disk
never adds latency to a request. The buffer is bounded: when it is full,
records are dropped and counted rather than growing memory.

The token subject and certificate names stay out of the access log: they
are personal data, and the certificate fingerprint and the trace id
suffice to correlate a line with the audit trail and the span.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

from ingress.telemetry.record import Exchange


class AccessLog:
    __slots__ = ("_buffer", "_fd", "_owns_fd", "dropped", "max_buffer")

    def __init__(self, path: str, max_buffer: int = 65536) -> None:
        if path == "-":
            self._fd, self._owns_fd = 2, False
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            self._owns_fd = True
        self._buffer: list[Exchange] = []
        self.max_buffer = max_buffer
        self.dropped = 0

    def add(self, batch: Sequence[Exchange]) -> None:
        room = self.max_buffer - len(self._buffer)
        if len(batch) <= room:
            self._buffer.extend(batch)
        else:
            self._buffer.extend(batch[: max(room, 0)])
            self.dropped += len(batch) - max(room, 0)

    def flush(self) -> None:
        if not self._buffer:
            return
        records, self._buffer = self._buffer, []
        lines = []
        dumps = json.dumps
        for rec in records:
            seconds, nanos = divmod(rec.end_ns, 1_000_000_000)
            decision = rec.decision
            item = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1_000_000:03d}Z",
                "client": rec.client,
                "method": rec.method,
                "path": rec.path,
                "status": rec.status,
                "bytes": rec.body_bytes,
                "duration_ms": round((rec.end_ns - rec.start_ns) / 1e6, 3),
                "protocol": "HTTP/" + rec.protocol if rec.protocol else "",
                "tls": rec.tls,
                "sni": rec.sni,
                "client_cert": rec.client_cert,
                "auth": decision.outcome if decision is not None else "",
                "auth_reason": decision.reason if decision is not None else "",
                "trace_id": rec.trace_id.hex(),
                "span_id": rec.span_id.hex(),
            }
            waf = decision.waf if decision is not None else None
            if waf is not None:
                item["waf"] = f"{'block' if waf.block else 'shadow'} {waf.category} {waf.pattern_id} in {waf.location}"
            lines.append(dumps(item, separators=(",", ":")))
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
