"""How the report writes times and shares: ISO 8601 UTC, milliseconds, ratios rounded for stable JSON."""

from __future__ import annotations

import datetime as dt
from typing import Final

NS: Final = 1_000_000_000


def iso(ns: int) -> str:
    """Unix nanoseconds as ISO 8601 UTC with milliseconds ("2024-05-01T12:00:00.250Z")."""
    seconds, rest = divmod(ns, NS)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1_000_000:03d}Z"


def ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def ratio(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0
