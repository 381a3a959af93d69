"""What the interleaved benches (policy, proxy, telemetry, waf) share: per-cell results, ratios, and scaffolding.

Each cell collects one value per round and metric, plus the CPU use
measured alongside; ratios are of medians, or per round (both cells
measured minutes apart, in the same machine state). Servers started in a
work directory are stopped however the run ends.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from run import BUSY_THRESHOLD, CLIENT_BOUND, SERVER_CPU, cpu_model, git_rev, log, wait_quiet
from servers import stop_all
from workloads import CLIENT_CPU, WorkloadError


@dataclass
class CellResult:
    values: dict[str, list[float]] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, metric: str) -> float | None:
        vals = self.values.get(metric)
        return statistics.median(vals) if vals else None

    def util(self, key: str) -> float | None:
        vals = [d[key] for d in self.details if key in d]
        return statistics.median(vals) if vals else None

    def saturated(self, load_key: str) -> bool:
        """The load side (`load_key`'s CPU) was saturated while the server's was not: a bound, not a rate."""
        load, srv = self.util(load_key), self.util("server_cpu_util")
        return load is not None and srv is not None and load >= CLIENT_BOUND and srv < CLIENT_BOUND

    def as_json(
        self, units: Mapping[str, str], bound: tuple[str, str], utils: Sequence[str], **extra: Any
    ) -> dict[str, Any]:
        """The cell as the JSON results hold it: medians, every round's values, and `bound`
        (name, load-side CPU key) saying whether the load side rather than the server was the limit."""
        name, load_key = bound
        return {
            "medians": {k: statistics.median(v) for k, v in self.values.items()},
            "units": {k: units.get(k, "") for k in self.values},
            "values": self.values,
            name: self.saturated(load_key),
            **{key: self.util(key) for key in ("server_cpu_util", "client_cpu_util", *utils)},
            **extra,
            "errors": self.errors,
            "details": self.details,
        }


def ratio(results: dict[str, CellResult], a: str, b: str, metric: str) -> float | None:
    x, y = results[a].median(metric), results[b].median(metric)
    return x / y if x is not None and y else None


def paired_ratios(results: dict[str, CellResult], a: str, b: str, metric: str) -> list[float]:
    """a / b within each round both measured (same machine state, minutes apart)."""

    def by_round(c: CellResult) -> dict[int, float]:
        return dict(zip((d["round"] for d in c.details), c.values.get(metric, []), strict=True))

    ra, rb = by_round(results[a]), by_round(results[b])
    return [ra[r] / rb[r] for r in sorted(ra) if rb.get(r)]


def on_signal(signum: int, frame: FrameType | None) -> None:
    stop_all()
    raise SystemExit(128 + signum)


@contextmanager
def scratch_dir(prefix: str, keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # nginx workers (user nobody) must traverse it
    try:
        yield path
    finally:
        stop_all()
        if keep:
            log(f"workdir kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------
# Shared by telemetry.py (and free for the others): one measurement, the
# interleaved round loop with its foreign-load retries, and the report bits
# every interleaved bench repeats.


@dataclass
class Measurement:
    values: dict[str, float]
    detail: dict[str, Any]


def record(result: CellResult, m: Measurement) -> None:
    for metric, value in m.values.items():
        result.values.setdefault(metric, []).append(value)
    result.details.append(m.detail)


def first_line(argv: list[str]) -> str:
    """First line a tool prints for its version (for the results' metadata)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def fmt(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def target_status(r: float | None, target: float, override: str | None = None) -> str:
    if r is None:
        return "no data"
    if override and r < target:
        return override
    return "met" if r >= target else "missed"


def foreign_cpu(detail: dict[str, Any], *util_keys: str) -> float | None:
    """Busy time of the server and load cores not explained by our processes' own CPU use
    (``util_keys`` of *detail*, e.g. server, wrk and a helper on the load core): someone
    else's load that shared the cores during the measurement."""
    cores = detail.get("core_busy") or {}
    a, b = cores.get(f"cpu{SERVER_CPU}"), cores.get(f"cpu{CLIENT_CPU}")
    if a is None or b is None or any(k not in detail for k in util_keys):
        return None
    return round(float(a) + float(b) - sum(float(detail[k]) for k in util_keys), 3)


def check_wrk(result: dict[str, Any], log_tail: Callable[[], str]) -> None:
    """No number from a run with a non-2xx answer, no completed request or > 1 % socket errors."""
    requests = result.get("requests", 0)
    if result["non_2xx"]:
        raise WorkloadError(
            f"{result['non_2xx']} non-2xx/3xx responses of {requests} (socket errors {result['socket_errors']}); "
            f"log tail:\n{log_tail()}"
        )
    if requests == 0:
        raise WorkloadError(f"wrk completed 0 requests; log tail:\n{log_tail()}")
    errors = sum(v for k, v in result["socket_errors"].items() if k != "timeout")
    if errors > 0.01 * requests:
        raise WorkloadError(f"socket errors {result['socket_errors']} for {requests} requests; log tail:\n{log_tail()}")


def common_meta(script: str, argv: list[str] | None, rounds: int, duration: float) -> dict[str, Any]:
    """The metadata every interleaved bench records, and the lists run_rounds fills."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", script, *(argv if argv is not None else sys.argv[1:])]),
        "rounds": rounds,
        "duration": duration,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "git_rev": git_rev(),
        "busy_before": [],
        "busy_during": [],
        "discarded": [],
        "commands": {},
    }


def note_busy_before(wait: float, meta: dict[str, Any], rnd: int, name: str, prefix: str) -> None:
    """Wait up to *wait* s for the machine to be quiet; note it in *meta* if it was not."""
    busy = wait_quiet(wait)
    if max(busy.values(), default=0.0) > BUSY_THRESHOLD:
        meta["busy_before"].append({"round": rnd, "cell": name, "core_busy": busy})
        log(f"{prefix} warning: machine busy before start {busy}")


RunOnce = Callable[[str, int, str], tuple[Measurement | None, bool, str | None]]
"""(cell, round, log prefix) -> (measurement, noisy, error): one start-check-measure of a cell."""


def run_rounds(
    cells: list[str], rounds: int, retry_noisy: int, run_once: RunOnce, meta: dict[str, Any], width: int = 20
) -> dict[str, CellResult]:
    """Every cell once per round, in order. A measurement that shared the cores with foreign load
    is taken again (up to *retry_noisy* times); if every attempt was disturbed the least disturbed
    one is kept and noted in ``meta["busy_during"]``, the others go to ``meta["discarded"]``."""
    results = {name: CellResult() for name in cells}
    total, n, t0 = rounds * len(cells), 0, time.monotonic()
    for rnd in range(1, rounds + 1):
        for name in cells:
            n += 1
            prefix = f"[{n}/{total}] round {rnd} {name:<{width}}"
            noisy_attempts: list[Measurement] = []
            clean = False
            for attempt in range(retry_noisy + 1):
                m, noisy, err = run_once(name, rnd, prefix)
                if m is None:
                    results[name].errors.append(f"round {rnd}: {err}")
                    break
                if not noisy:
                    record(results[name], m)
                    clean = True
                    break
                noisy_attempts.append(m)
                if attempt < retry_noisy:
                    log(f"{prefix} foreign load during the measurement: measuring again")
            if noisy_attempts and not clean:
                best = min(noisy_attempts, key=lambda a: a.detail["foreign_cpu_util"])
                record(results[name], best)
                meta["busy_during"].append({"round": rnd, "cell": name, "foreign_cpu": best.detail["foreign_cpu_util"]})
                log(f"{prefix} kept the least disturbed attempt: {best.values}")
                noisy_attempts.remove(best)
            for a in noisy_attempts:
                meta["discarded"].append({"round": rnd, "cell": name, "values": a.values, "detail": a.detail})
    meta["elapsed_seconds"] = round(time.monotonic() - t0, 1)
    return results


def load_warnings(meta: dict[str, Any]) -> list[str]:
    """Markdown lines naming the cells measured while foreign load shared the machine."""
    lines: list[str] = []
    busy = [*meta.get("busy_before", []), *meta.get("busy_during", [])]
    if busy:
        shown = ", ".join(dict.fromkeys(f"{b['cell']} r{b['round']}" for b in busy))
        lines += ["", f"**Warning:** foreign CPU load before/during: {shown} (see the JSON)."]
    if meta.get("discarded"):
        shown = ", ".join(f"{b['cell']} r{b['round']}" for b in meta["discarded"])
        lines += ["", f"Measured again because of foreign CPU load: {shown} (values in `meta.discarded`)."]
    return lines
