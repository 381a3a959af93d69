"""Field metadata shared by every config module, so docs and bounds live beside each field."""

from __future__ import annotations

from typing import Any


def doc(text: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: `text` documents the key; `minimum`/`maximum`/`pattern` bound it."""
    return {"doc": text, **extra}
