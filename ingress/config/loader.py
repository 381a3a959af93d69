"""TOML to typed config, rejecting anything it does not understand.

The conversion is driven by the dataclass type hints in `model`, so a new
field needs no loader code. Every problem is collected (not just the first)
and reported with the file, the key path and, for a misspelt key, the
closest valid name.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from ingress.config.model import Config
from ingress.config.policy_semantics import policy_problems
from ingress.config.semantics import semantic_problems
from ingress.config.telemetry_semantics import telemetry_problems
from ingress.config.upstream_semantics import upstream_problems
from ingress.config.waf import waf_problems
from ingress.errors import ConfigError, Problem

T = TypeVar("T")

_MISSING = object()


class _Collector:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.source, path, message))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin is collections.abc.Mapping:
        return "table of strings"
    if origin is tuple:
        return f"array of {_type_name(get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "table"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str, out: _Collector, meta: Mapping[str, Any]) -> Any:
    """Convert one value to `tp`; on a problem record it and return _MISSING."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _convert(inner[0], value, path, out, meta)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            out.add(path, f"expected a table, got {_describe(value)}")
            return _MISSING
        return _build(typing.cast(type, tp), value, path, out)
    if origin is tuple:
        if not isinstance(value, list):
            out.add(path, f"expected an array, got {_describe(value)}")
            return _MISSING
        (item_tp, _ellipsis) = get_args(tp)
        items = [_convert(item_tp, v, f"{path}[{i}]", out, {}) for i, v in enumerate(value)]
        return _MISSING if any(i is _MISSING for i in items) else tuple(items)
    if origin is collections.abc.Mapping:
        if not isinstance(value, dict):
            out.add(path, f"expected a table of strings, got {_describe(value)}")
            return _MISSING
        bad = [k for k, v in value.items() if not isinstance(v, str)]
        for key in bad:
            out.add(_join(path, key), f"expected a string, got {_describe(value[key])}")
        return _MISSING if bad else types.MappingProxyType(dict(value))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or type(value) is not type(allowed[0]):
            choices = ", ".join(repr(a) for a in allowed)
            out.add(path, f"invalid value {value!r}; expected one of {choices}")
            return _MISSING
        return value
    if tp is bool:
        if not isinstance(value, bool):
            out.add(path, f"expected true or false, got {_describe(value)}")
            return _MISSING
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            out.add(path, f"expected an integer, got {_describe(value)}")
            return _MISSING
        return _bounded(value, path, out, meta)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.add(path, f"expected a number of seconds, got {_describe(value)}")
            return _MISSING
        return _bounded(float(value), path, out, meta)
    if tp is str:
        if not isinstance(value, str):
            out.add(path, f"expected a string, got {_describe(value)}")
            return _MISSING
        pattern = meta.get("pattern")
        if pattern and not re.search(pattern, value):
            out.add(path, f"invalid value {value!r}; must match {pattern}")
            return _MISSING
        return value
    raise TypeError(f"config model uses unsupported type {tp!r} at {path}")


def _bounded(value: T, path: str, out: _Collector, meta: Mapping[str, Any]) -> T | object:
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None and value < lo:
        out.add(path, f"{value} is below the minimum {lo}")
        return _MISSING
    if hi is not None and value > hi:
        out.add(path, f"{value} is above the maximum {hi}")
        return _MISSING
    return value


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"


def _build(cls: type[T], data: Mapping[str, Any], path: str, out: _Collector) -> T | Any:
    hints = get_type_hints(cls)
    fields = {
        f.name: f
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if not f.metadata.get("internal")
    }
    kwargs: dict[str, Any] = {}
    ok = True
    for key, value in data.items():
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(fields)}"
            out.add(_join(path, key), f"unknown key{hint}")
            ok = False
            continue
        converted = _convert(hints[key], value, _join(path, key), out, fields[key].metadata)
        if converted is _MISSING:
            ok = False
        else:
            kwargs[key] = converted
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in data and no_default:
            out.add(_join(path, name), "required key is missing")
            ok = False
    return cls(**kwargs) if ok else _MISSING


def parse_config(data: Mapping[str, Any], source: str) -> Config:
    """Build a Config from already-parsed TOML data, or raise ConfigError listing every problem."""
    out = _Collector(source)
    built = _build(Config, data, "", out)
    if built is _MISSING:
        raise ConfigError(out.problems)
    config = dataclasses.replace(typing.cast(Config, built), source=source)
    problems = (
        semantic_problems(config)
        + policy_problems(config)
        + upstream_problems(config)
        + telemetry_problems(config)
        + waf_problems(config)
    )
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(source, "", f"cannot read file: {exc.strerror}")]) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(source, "", f"not UTF-8 at byte {exc.start}")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(source, "", f"invalid TOML: {exc}")]) from exc
    return parse_config(data, source)
