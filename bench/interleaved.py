"""What the interleaved benches (policy.py, proxy.py) share: per-cell results, ratios, and scaffolding.

Each cell collects one value per round and metric, plus the CPU use
measured alongside; ratios are of medians, or per round (both cells
measured minutes apart, in the same machine state). Servers started in a
work directory are stopped however the run ends.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from run import CLIENT_BOUND, log
from servers import stop_all


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
