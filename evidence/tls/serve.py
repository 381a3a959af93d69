"""Run the released executable on its release config, on loopback, for as long as the scan needs.

The config is the operator's with only what a measurement must change: every listener and the admin
listener bind 127.0.0.1:0 (ports are read back from --state-file), OTLP export is switched off (no traffic
leaves the machine) and log, trace and audit files go to a scratch directory. Everything TLS (certificates,
versions, ALPN, client auth, CAs, CRLs) is left exactly as released. The server runs under `timeout`, in its
own session, and is always stopped, even when the scan fails.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
import tomllib
from pathlib import Path
from types import TracebackType
from typing import Any

from audit.errors import AuditError
from evidence.tls.toml import dumps

MAX_LIFETIME_S = 300
REWRITES = (
    "listeners[*].address -> 127.0.0.1:0",
    "admin.address -> 127.0.0.1:0",
    "telemetry.otlp removed (no export during the measurement)",
    "access_log.path, telemetry.files.traces and audit.file -> a scratch directory",
)


def measurement_config(raw: dict[str, Any], scratch: Path) -> dict[str, Any]:
    config = copy.deepcopy(raw)
    for listener in config.get("listeners", []):
        listener["address"] = "127.0.0.1:0"
    config.setdefault("admin", {})["address"] = "127.0.0.1:0"
    telemetry = config.get("telemetry", {})
    telemetry.pop("otlp", None)
    if telemetry.get("files", {}).get("traces"):
        telemetry["files"]["traces"] = str(scratch / "traces.jsonl")
    if config.get("audit", {}).get("file"):
        config["audit"]["file"] = str(scratch / "audit.jsonl")
    if config.get("access_log", {}).get("path", "-") != "-":
        config["access_log"]["path"] = str(scratch / "access.log")
    return config


class RunningServer:
    """`edgeward serve` on the rewritten config; `addresses` maps listener name -> (host, port)."""

    def __init__(self, executable: Path, config: Path, scratch: Path) -> None:
        self.raw = tomllib.loads(config.read_text(encoding="utf-8"))
        self.executable = executable
        self.scratch = scratch
        self.config_path = scratch / "assess.toml"
        self.state_path = scratch / "state.json"
        self.log_path = scratch / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: dict[str, Any] = {}

    def __enter__(self) -> RunningServer:
        self.config_path.write_text(dumps(measurement_config(self.raw, self.scratch)), encoding="utf-8")
        cmd = ["timeout", "--kill-after=5", str(MAX_LIFETIME_S), str(self.executable), "serve",
               "--config", str(self.config_path), "--workers", "1", "--state-file", str(self.state_path)]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, cwd=self.scratch)
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                if self.state_path.exists():
                    self.state = json.loads(self.state_path.read_text())
                    return self
                if self.proc.poll() is not None:
                    tail = " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-3:])
                    raise AuditError(f"{self.executable} serve exited with {self.proc.returncode}: {tail}")
                time.sleep(0.05)
            raise AuditError(f"{self.executable} serve was not ready within 30 s")
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def address(self, listener: str) -> tuple[str, int]:
        host, _, port = str(self.state["listeners"][listener]).rpartition(":")
        return host.strip("[]"), int(port)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(int(self.state.get("pid", proc.pid)), signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
