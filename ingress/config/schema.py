"""JSON Schema of the config, derived from the model so it cannot drift."""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

from ingress.config.model import Config


def _schema(tp: Any, meta: typing.Mapping[str, Any]) -> dict[str, Any]:
    origin = get_origin(tp)
    out: dict[str, Any]
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        out = _schema(inner[0], {})
    elif dataclasses.is_dataclass(tp):
        out = _object(typing.cast(type, tp))
    elif origin is tuple:
        out = {"type": "array", "items": _schema(get_args(tp)[0], {})}
    elif origin is collections.abc.Mapping:
        out = {"type": "object", "additionalProperties": {"type": "string"}}
    elif origin is Literal:
        out = {"enum": list(get_args(tp))}
    else:
        out = {"type": {str: "string", int: "integer", float: "number", bool: "boolean"}[tp]}
    if "doc" in meta:
        out["description"] = meta["doc"]
    for key in ("minimum", "maximum", "pattern"):
        if key in meta:
            out[key] = meta[key]
    return out


def _object(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        prop = _schema(hints[f.name], f.metadata)
        if f.default is not dataclasses.MISSING and f.default is not None:
            default = f.default
            prop["default"] = list(default) if isinstance(default, tuple) else default
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        props[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def config_schema() -> dict[str, Any]:
    schema = _object(Config)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://edgeward.dev/schema/config.json",
        "title": "edgeward ingress configuration",
        **schema,
    }
