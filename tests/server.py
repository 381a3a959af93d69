"""Start the real server as a subprocess on ephemeral ports, and stop it.

Every server is started under `timeout`, in its own session, so that even
if the test process dies the server stops by itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.program import ingress_argv

ROOT = Path(__file__).resolve().parent.parent
MAX_LIFETIME_S = 600


def to_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for test configs (tables, arrays of tables, scalars, inline tables)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    def table(prefix: str, d: dict[str, Any], array: bool = False) -> None:
        simple = {k: v for k, v in d.items() if not _is_table(v)}
        nested = {k: v for k, v in d.items() if _is_table(v)}
        if prefix:
            lines.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        for k, v in simple.items():
            lines.append(f"{k} = {scalar(v)}")
        for k, v in nested.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, list):
                for item in v:
                    table(name, item, array=True)
            else:
                table(name, v)

    table("", data)
    return "\n".join(lines) + "\n"


def _is_table(v: Any) -> bool:
    return isinstance(v, dict) or (isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v))


class Server:
    """A running `ingress serve`; `url(name)` gives a listener's base URL."""

    def __init__(
        self, config: dict[str, Any], workdir: Path, workers: int = 1, name: str = "server", program: str = "python"
    ) -> None:
        self.workdir = workdir
        self.program = program
        self.config_path = workdir / f"{name}.toml"
        self.state_path = workdir / f"{name}.state.json"
        self.log_path = workdir / f"{name}.log"
        self.workers = workers
        self.write_config(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: dict[str, Any] = {}

    def write_config(self, config: dict[str, Any]) -> None:
        self.config = config
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(to_toml(config))
        tmp.replace(self.config_path)

    def start(self, timeout: float = 20.0) -> Server:
        self.state_path.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        cmd = [
            "timeout", "--kill-after=5", str(MAX_LIFETIME_S),
            *ingress_argv(self.program), "serve",
            "--config", str(self.config_path),
            "--workers", str(self.workers),
            "--state-file", str(self.state_path),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=ROOT, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state_path.exists():
                self.state = json.loads(self.state_path.read_text())
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        return int(self.state["pid"])

    def refresh_state(self) -> dict[str, Any]:
        self.state = json.loads(self.state_path.read_text())
        return self.state

    def address(self, listener: str) -> tuple[str, int]:
        host, _, port = self.state["listeners"][listener].rpartition(":")
        return host.strip("[]"), int(port)

    def url(self, listener: str, path: str = "/") -> str:
        host, port = self.address(listener)
        scheme = "https" if self._tls(listener) else "http"
        return f"{scheme}://{host}:{port}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://{self.state['admin']}{path}"

    def _tls(self, listener: str) -> bool:
        for lst in self.config["listeners"]:
            if lst["name"] == listener:
                return "tls" in lst
        raise KeyError(listener)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.state.get("pid", self.proc.pid), signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired, KeyError):
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until `predicate()`; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)
    return time.monotonic() - start


def events(server: Server, name: str) -> list[dict[str, Any]]:
    """The server's JSON log records whose `event` is `name`, in order."""
    found = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            if item.get("event") == name:
                found.append(item)
    return found
