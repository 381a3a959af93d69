"""A small TOML writer for the rewritten assessment config (tables, arrays of tables, scalars, inline tables)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _is_table(v: Any) -> bool:
    return isinstance(v, Mapping) or (isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v))


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_scalar(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dumps(data: Mapping[str, Any]) -> str:
    lines: list[str] = []

    def table(prefix: str, d: Mapping[str, Any], array: bool = False) -> None:
        if prefix:
            lines.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        for k, v in d.items():
            if not _is_table(v):
                lines.append(f"{json.dumps(str(k))} = {_scalar(v)}")
        for k, v in d.items():
            if _is_table(v):
                name = f"{prefix}.{json.dumps(str(k))}" if prefix else json.dumps(str(k))
                if isinstance(v, list):
                    for item in v:
                        table(name, item, array=True)
                else:
                    table(name, v)

    table("", data)
    return "\n".join(lines) + "\n"
