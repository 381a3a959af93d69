"""The supervisor: forks workers, restarts the dead, relays signals.

It serves no traffic and runs no event loop: it blocks the signals it
cares about and takes them synchronously with `sigtimedwait`, which makes
its whole life one readable loop.

Before forking it reserves every port and creates the TLS base contexts,
so all workers share concrete ports and session-ticket keys. It also binds
the UDP socket of each HTTP/3 listener and keeps it for its whole life:
worker 0 serves it, and a restarted worker 0 inherits the same socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvloop

from ingress.check import verify_config
from ingress.config.model import Config
from ingress.errors import EdgewardError
from ingress.handlers.purgelog import PurgeLog
from ingress.server import reload
from ingress.server.listeners import format_address, refuse_if_listening, reserve, reserve_with_udp
from ingress.server.worker import ADMIN, Worker
from ingress.telemetry.audit import AuditTrail, audit_handler
from ingress.telemetry.export import transport_for
from ingress.telemetry.otlp.logs import LogEvent, export_request
from ingress.telemetry.otlp.resource import resource_attributes
from ingress.tls.contexts import base_context

log = logging.getLogger("edgeward.supervisor")

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_PR_SET_PDEATHSIG = 1
STARTUP_TIMEOUT = 30.0
STABLE_AFTER = 30.0
MAX_BACKOFF = 10.0


def _redirect_to_main_thread(signo: int, _frame: object) -> None:
    signal.pthread_kill(threading.main_thread().ident or 0, signo)


def _collect_signals_on_this_thread() -> None:
    """Block the supervisor's signals here, to be taken with sigtimedwait, and catch them on other threads.

    The kernel hands a process-directed signal to any thread that does not block it. Threads started
    before this call keep their own masks: the compiled executable has one (the onefile bootstrap's
    parent monitor), where an uncaught SIGTERM would kill the supervisor without a drain, and SIGCHLD would
    be lost. A handler there passes the signal on to this thread, where it waits, blocked, for sigtimedwait.
    """
    for sig in _SIGNALS:
        signal.signal(sig, _redirect_to_main_thread)
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)


class StartupError(EdgewardError):
    pass


@dataclass
class _Slot:
    index: int
    pid: int = 0
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


class Supervisor:
    def __init__(
        self,
        config: Config,
        load: Callable[[], Config],
        workers: int,
        state_file: str | None = None,
    ) -> None:
        self.config = config
        self.load = load
        self._audit(config)
        self.count = workers or os.cpu_count() or 1
        self.state_file = state_file
        self.slots = [_Slot(i) for i in range(self.count)]
        self.reserved: list[socket.socket] = []
        self.udp: dict[str, socket.socket] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.stopping = False
        self.purges = PurgeLog()

    # public -------------------------------------------------------------
    def start(self) -> dict[str, str]:
        """Reserve ports, fork workers and wait until every one is listening."""
        self._reserve()
        for listener in self.config.listeners:
            if listener.tls is not None:
                base_context(listener.name, listener.tls)
        _collect_signals_on_this_thread()
        self._ready_r, self._ready_w = os.pipe()
        # What the workers inherit lives as long as they do. Frozen, the collector never walks it: a full
        # collection does not stall a worker over the whole start-up heap, and does not write to (and so
        # unshare) the pages the forked workers still share with this process.
        gc.freeze()
        for slot in self.slots:
            self._spawn(slot)
        self._await_ready()
        self._write_state()
        return {name: format_address(*addr) for name, addr in self.addresses.items()}

    def run(self) -> int:
        """Supervise until told to stop; returns the exit code."""
        while True:
            info = signal.sigtimedwait(_SIGNALS, 0.5)
            self._drain_ready_pipe()
            if info is None:
                self._restart_due()
                continue
            if info.si_signo == signal.SIGCHLD:
                self._reap()
            elif info.si_signo == signal.SIGHUP:
                self._reload()
            elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return self._stop(info.si_signo)
            # Anything else (a tracer attaching with ptrace can make the wait report a garbage number)
            # is not a request to stop.

    # internals ------------------------------------------------------------
    def _reserve(self) -> None:
        quic = {lst.name for lst in self.config.listeners if lst.tls is not None and lst.quic.enabled}
        pairs = [(lst.name, lst.address) for lst in self.config.listeners]
        if self.config.admin.enabled:
            pairs.append((ADMIN, self.config.admin.address))
        for name, address in pairs:
            try:
                refuse_if_listening(address)
                if name in quic:
                    sock, self.udp[name], bound = reserve_with_udp(address)
                else:
                    sock, bound = reserve(address)
            except OSError as exc:
                raise StartupError(f"cannot bind {name} at {address}: {exc.strerror}") from None
            self.reserved.append(sock)
            self.addresses[name] = bound

    def _spawn(self, slot: _Slot) -> None:
        pid = os.fork()
        if pid:
            slot.pid, slot.started = pid, time.monotonic()
            return
        code = 0
        try:
            code = self._child(slot.index)
        finally:
            os._exit(code)

    def _child(self, index: int) -> int:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        for sock in self.reserved:
            sock.close()
        os.close(self._ready_r)
        ready_w = self._ready_w

        def ready() -> None:
            os.write(ready_w, b"r")

        worker = Worker(self.config, self.addresses, self.load, index, self.udp, self.purges)
        try:
            uvloop.run(worker.run(ready))
        except Exception:
            log.exception("worker %d failed", index, extra={"event": "worker.crashed"})
            return 3
        return 0

    def _await_ready(self) -> None:
        pending = self.count
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while pending:
            for slot in self.slots:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
                if pid:
                    self._kill_all()
                    raise StartupError(
                        f"worker {slot.index} exited during start-up ({_describe(status)}); see the log above"
                    )
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill_all()
                raise StartupError(f"workers not ready after {STARTUP_TIMEOUT:.0f} s")
            readable, _, _ = select.select([self._ready_r], [], [], min(left, 0.2))
            if readable:
                pending -= len(os.read(self._ready_r, pending))
        os.set_blocking(self._ready_r, False)

    def _drain_ready_pipe(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._ready_r, 4096)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            for slot in self.slots:
                if slot.pid != pid:
                    continue
                slot.pid = 0
                if self.stopping:
                    break
                lived = time.monotonic() - slot.started
                slot.failures = 0 if lived > STABLE_AFTER else slot.failures + 1
                delay = min(MAX_BACKOFF, 0.1 * (2 ** max(0, slot.failures - 1))) if slot.failures else 0.0
                slot.restart_at = time.monotonic() + delay
                log.error(
                    "worker %d (pid %d) exited (%s); restarting in %.1f s",
                    slot.index,
                    pid,
                    _describe(status),
                    delay,
                    extra={"event": "worker.restart", "worker": slot.index, "backoff_s": delay},
                )
        self._restart_due()

    def _restart_due(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        restarted = False
        for slot in self.slots:
            if slot.pid == 0 and slot.restart_at <= now:
                self._spawn(slot)
                restarted = True
        if restarted:
            self._write_state()

    def _reload(self) -> None:
        config = reload.attempt(self.load, lambda new: reload.restart_problems(self.config, new) + verify_config(new))
        if config is None:
            return
        self.config = config
        self._audit(config)
        log.info("config valid; reloading workers", extra={"event": "config.reload"})
        self._signal_workers(signal.SIGHUP)

    def _audit(self, config: Config) -> None:
        """The supervisor's own audit events (reloads, stop) go to the trail as they are logged."""
        handler = audit_handler()
        old = handler.trail
        if config.audit.file:
            if old is None or old.settings != config.audit:
                resource = resource_attributes(config.telemetry.service_name, config.telemetry.resource)
                handler.trail = AuditTrail(config.audit, resource)
        else:
            handler.trail = None
        if old is not None and handler.trail is not old:
            old.close()
        handler.immediate = True
        handler.forward = self._exporter(config) if handler.trail is not None else None

    @staticmethod
    def _exporter(config: Config) -> Callable[[list[LogEvent]], None] | None:
        """Send the supervisor's audit records to the collector as they are written.

        Synchronously, within two seconds: these are a handful of events
        (reloads, stop), and a thread here would be forked with the workers.
        A failure is logged by nobody (it would be audited in turn); the file
        keeps the record.
        """
        otlp = config.telemetry.otlp
        if not (otlp.endpoint and otlp.logs):
            return None
        transport = transport_for(dataclasses.replace(otlp, timeout=min(otlp.timeout, 2.0)), config.source)
        resource = resource_attributes(config.telemetry.service_name, config.telemetry.resource)

        def forward(events: list[LogEvent]) -> None:
            transport.export("logs", export_request(events, resource))

        return forward

    def _stop(self, signo: int) -> int:
        self.stopping = True
        log.info("stopping on %s", signal.Signals(signo).name, extra={"event": "supervisor.stop"})
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.drain_timeout + 5.0
        while any(s.pid for s in self.slots) and time.monotonic() < deadline:
            signal.sigtimedwait({signal.SIGCHLD}, 0.1)
            self._reap()
        self._kill_all()
        for sock in [*self.reserved, *self.udp.values()]:
            sock.close()
        if self.state_file:
            with contextlib.suppress(OSError):
                os.unlink(self.state_file)
        return 0

    def _signal_workers(self, signo: int) -> None:
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signo)

    def _kill_all(self) -> None:
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(slot.pid, 0)
                slot.pid = 0

    def _write_state(self) -> None:
        if not self.state_file:
            return
        state = {
            "pid": os.getpid(),
            "workers": [s.pid for s in self.slots],
            "listeners": {n: format_address(*a) for n, a in self.addresses.items() if n != ADMIN},
            "admin": format_address(*self.addresses[ADMIN]) if ADMIN in self.addresses else None,
            "quic": {n: format_address(*s.getsockname()[:2]) for n, s in self.udp.items()},
        }
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(state, fh)
        os.replace(tmp, self.state_file)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
