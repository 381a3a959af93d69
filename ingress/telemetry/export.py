"""Getting encoded OTLP batches to the collector without the collector ever slowing a request.

The exporter is a bounded queue measured in items (spans, log records,
data points) with at most one export in flight, run by a transport in an
executor thread. Everything the loop does here is O(1) bookkeeping; what
cannot be held is refused at `offer` and counted, never waited for.

A collector that fails is left alone for a while (exponential backoff,
0.5 s doubling to 30 s, with jitter so that many workers do not return in
step), and while it is, `room()` is 0: the caller can then count its
spans as dropped without spending anything on encoding them. That is what
keeps a dead collector from costing request latency. A batch that failed
in a way that may pass later is sent once more after the backoff; every
other failed batch is dropped and counted under the failure's reason.

Failures are logged once when exporting stops working and once when it
works again, not per batch: a collector down for an hour is two lines.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import random

from ingress.config.model import Config
from ingress.config.telemetry import OTLP
from ingress.errors import ConfigError, Problem
from ingress.telemetry.grpc import GrpcTransport
from ingress.telemetry.transports import (
    HttpTransport,
    OTLPSettingsError,
    Result,
    Signal,
    Transport,
    client_context,
    parse_endpoint,
)

__all__ = [
    "Exporter",
    "GrpcTransport",
    "HttpTransport",
    "Result",
    "Transport",
    "otlp_file_problems",
    "transport_for",
]

log = logging.getLogger("edgeward.telemetry")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# Reasons this module drops under itself; a failed export's batch is dropped under the Result's reason.
QUEUE_FULL = "queue_full"
UNAVAILABLE = "collector_unavailable"
SHUTDOWN = "shutdown"
REJECTED = "rejected"


class _Batch:
    __slots__ = ("items", "payload", "retried")

    def __init__(self, payload: bytes, items: int) -> None:
        self.payload = payload
        self.items = items
        self.retried = False


class Exporter:
    """One signal's export queue; every method is called on the loop thread and returns at once.

    The exporter owns its transport: `close` closes it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: Transport,
        signal: Signal,
        capacity: int,
        *,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.loop = loop
        self.transport = transport
        self.signal = signal
        self.capacity = capacity
        self.exported_items = 0
        self.dropped_items: dict[str, int] = {}
        self.failed_exports = 0
        self.queued_items = 0  # held in memory: waiting, or in the export in flight
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._executor = executor
        self._queue: collections.deque[_Batch] = collections.deque()
        self._inflight: asyncio.Future[Result] | None = None
        self._inflight_batch: _Batch | None = None
        self._resume_at = 0.0  # loop time before which the collector is left alone
        self._timer: asyncio.TimerHandle | None = None
        self._failures = 0  # in a row; sets the backoff
        self._up = True
        self._down_drops = 0  # dropped since the last "down" log line, for the recovery line
        self._closing = False
        self._closed = False
        self._idle: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"Exporter({self.signal}, {self.transport!r}, queued={self.queued_items}/{self.capacity})"

    # what the caller uses -----------------------------------------------------------------------
    def room(self) -> int:
        """Items `offer` would take now; 0 while backing off from a failed collector, or closing."""
        if self._closing or (self._resume_at and self.loop.time() < self._resume_at):
            return 0
        return max(0, self.capacity - self.queued_items)

    def offer(self, payload: bytes, items: int) -> bool:
        """Queue one encoded Export*ServiceRequest of `items` items; False (and counted) if it does not fit."""
        room = self.room()
        if items > room:
            self.drop(items)
            return False
        self._queue.append(_Batch(payload, items))
        self.queued_items += items
        self._send()
        return True

    def drop(self, items: int, reason: str | None = None) -> None:
        """Count `items` the caller did not offer; the reason defaults to why `room()` is what it is."""
        if reason is None:
            if self._closing:
                reason = SHUTDOWN
            elif self._resume_at and self.loop.time() < self._resume_at:
                reason = UNAVAILABLE
            else:
                reason = QUEUE_FULL
        self._count_drop(items, reason)

    @property
    def down(self) -> bool:
        """The last export failed; cleared by the next success."""
        return not self._up

    async def close(self, timeout: float) -> None:
        """Send what is queued within `timeout` seconds, count the rest as dropped, close the transport.

        The backoff is waived for this last chance, but the first failure
        ends it: a collector that refuses one batch now refuses the next.
        """
        if self._closing:
            return
        self._closing = True
        deadline = self.loop.time() + timeout
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._resume_at = 0.0
        self._send()
        while self._inflight is not None:
            left = deadline - self.loop.time()
            if left <= 0:
                break
            self._idle = self.loop.create_future()
            try:
                await asyncio.wait_for(self._idle, left)
            except TimeoutError:
                break
        for batch in self._queue:
            self._count_drop(batch.items, SHUTDOWN)
        self._queue.clear()
        if self._inflight_batch is not None:  # still in flight: its result, whenever it comes, is ignored
            self._count_drop(self._inflight_batch.items, SHUTDOWN)
            self._inflight = self._inflight_batch = None
        self.queued_items = 0
        self._closed = True
        try:
            self.transport.close()  # also wakes an export still blocked in its thread
        except Exception:
            log.exception("closing the OTLP transport failed", extra={"event": "telemetry.close_failed"})

    # the one export in flight -------------------------------------------------------------------
    def _send(self) -> None:
        if self._inflight is not None or not self._queue or self._closed:
            return
        if self._resume_at and self.loop.time() < self._resume_at:
            return
        batch = self._queue.popleft()
        try:
            future = self.loop.run_in_executor(self._executor, self.transport.export, self.signal, batch.payload)
        except RuntimeError:  # the executor is shut down: the process is ending
            self.queued_items -= batch.items
            self._count_drop(batch.items, SHUTDOWN)
            return
        self._inflight, self._inflight_batch = future, batch
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[Result]) -> None:
        if future is not self._inflight or self._inflight_batch is None:
            return  # abandoned at close
        batch = self._inflight_batch
        self._inflight = self._inflight_batch = None
        try:
            result = future.result()
        except BaseException as exc:  # a transport bug or a cancelled executor must not stop exporting
            result = Result(False, "error", detail=type(exc).__name__)
        try:
            if result.ok:
                self._succeeded(batch, result)
            else:
                self._failed(batch, result)
        except Exception:
            log.exception("OTLP export bookkeeping failed", extra={"event": "telemetry.export_error"})
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        if not (self._closing and not self._up):
            self._send()

    def _succeeded(self, batch: _Batch, result: Result) -> None:
        self.queued_items -= batch.items
        rejected = min(result.rejected, batch.items)
        self.exported_items += batch.items - rejected
        if rejected:
            self._count_drop(rejected, REJECTED)
        self._failures = 0
        self._resume_at = 0.0
        if not self._up:
            self._up = True
            log.info(
                "OTLP export works again",
                extra={
                    "event": "telemetry.export_recovered",
                    "signal": self.signal,
                    "endpoint": self.transport.shown,
                    "dropped_while_down": self._down_drops,
                },
            )

    def _failed(self, batch: _Batch, result: Result) -> None:
        self.failed_exports += 1
        delay = 0.0
        if result.retryable or not result.answered:  # the collector is down or overloaded, not just this batch
            self._failures += 1
            ceiling = min(self._max_backoff, self._first_backoff * 2 ** min(self._failures - 1, 30))
            delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret
            if result.retry_after is not None:
                delay = max(delay, min(result.retry_after, self._max_backoff))
            self._resume_at = self.loop.time() + delay
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(self._resume_at, self._resume)
        if result.retryable and not batch.retried and not self._closing:
            batch.retried = True
            self._queue.appendleft(batch)  # still counted in queued_items: it never left the bound
        else:
            self.queued_items -= batch.items
            self._count_drop(batch.items, result.reason or "error")
        if self._up:
            self._up = False
            self._down_drops = 0
            log.warning(
                "OTLP export failed; dropping and counting until the collector answers again",
                extra={
                    "event": "telemetry.export_failed",
                    "signal": self.signal,
                    "endpoint": self.transport.shown,
                    "reason": result.reason,
                    "detail": result.detail,
                    "retry_in": round(delay, 3),
                },
            )

    def _resume(self) -> None:
        # The backoff is over when its timer says so: uvloop may run a timer a fraction of a millisecond
        # before `loop.time()` reaches its deadline, and a comparison here would then strand the queue.
        self._timer = None
        self._resume_at = 0.0
        self._send()

    def _count_drop(self, items: int, reason: str) -> None:
        if items <= 0:
            return
        self.dropped_items[reason] = self.dropped_items.get(reason, 0) + items
        if not self._up:
            self._down_drops += items


# configuration ------------------------------------------------------------------------------------


def transport_for(settings: OTLP, source: str = "") -> Transport:
    """The transport `settings.endpoint` asks for; ConfigError naming the key and the fix if it cannot be built.

    Opens the CA and client certificate files, but no connection: the first export connects.
    """
    try:
        endpoint = parse_endpoint(settings.endpoint)
        kind = GrpcTransport if endpoint.scheme in ("grpc", "grpcs") else HttpTransport
        return kind(settings.endpoint, settings.headers, settings.ca, settings.cert, settings.key, settings.timeout)
    except OTLPSettingsError as exc:
        raise ConfigError([Problem(source, exc.path, exc.message)]) from None


def otlp_file_problems(config: Config) -> list[Problem]:
    """The CA and client certificate files of `[telemetry.otlp]`, loaded as `serve` would (for `ingress check`).

    Only file problems: the endpoint and headers are config semantics
    (`telemetry_problems`), which `check` reports already.
    """
    otlp = config.telemetry.otlp
    try:
        endpoint = parse_endpoint(otlp.endpoint)
    except OTLPSettingsError:
        return []  # no endpoint (nothing is exported), or one that semantics reports
    if not endpoint.tls:
        return []
    try:
        client_context(otlp.ca, otlp.cert, otlp.key, ["h2" if endpoint.grpc else "http/1.1"])
    except OTLPSettingsError as exc:
        return [Problem(config.source, exc.path, exc.message)]
    return []
