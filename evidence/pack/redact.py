"""The config snapshot with secrets redacted, from the operator's own TOML (what they wrote, not defaults).

Which values are secret comes from two places: the config model itself (fields whose metadata says
`secret=True`, such as the OTLP headers, found by walking ingress.config's dataclasses, so a new secret
field is redacted without touching this module) and key names that say so (*secret*, *password*,
*passphrase*, *token*, *hmac*, *credential*, api keys). Files named in the config (private keys, HMAC key
files) are never opened: the snapshot records their paths only.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"secret|password|passphrase|passwd|token|hmac|credential|api[_-]?key", re.IGNORECASE)


def secret_paths(root: type[Any]) -> frozenset[str]:
    """Dotted paths (list indices dropped) of every config field marked secret in the model."""
    found: set[str] = set()

    def walk(cls: type[Any], prefix: str, seen: frozenset[type[Any]]) -> None:
        if cls in seen:
            return
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            path = f"{prefix}{f.name}"
            if f.metadata.get("secret"):
                found.add(path)
            for inner in _dataclasses_in(hints.get(f.name)):
                walk(inner, path + ".", seen | {cls})

    walk(root, "", frozenset())
    return frozenset(found)


def _dataclasses_in(hint: Any) -> list[type[Any]]:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return [hint]
    out: list[type[Any]] = []
    for arg in typing.get_args(hint):
        if arg is not Ellipsis and arg is not types.NoneType:
            out += _dataclasses_in(arg)
    return out


def redact(raw: Mapping[str, Any], secrets: frozenset[str]) -> tuple[dict[str, Any], list[str]]:
    """A copy of `raw` with secret values replaced; also the dotted paths that were redacted (for the index)."""
    redacted: list[str] = []

    def scrub(value: Any, path: str, shown: str) -> Any:
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, inner in value.items():
                child, child_shown = f"{path}.{key}" if path else key, f"{shown}.{key}" if shown else key
                if child in secrets or _SECRET_NAME.search(key):
                    out[key] = _mask(inner)
                    redacted.append(child_shown)
                else:
                    out[key] = scrub(inner, child, child_shown)
            return out
        if isinstance(value, list):
            return [scrub(item, path, f"{shown}[{i}]") for i, item in enumerate(value)]
        return value

    return scrub(raw, "", ""), redacted


def _mask(value: Any) -> Any:
    """Keep the shape (header names, list length) but never a value."""
    if isinstance(value, Mapping):
        return {key: REDACTED for key in value}
    if isinstance(value, list):
        return [REDACTED for _ in value]
    return REDACTED
