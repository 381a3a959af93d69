"""Which policy rule covers a request: host and path, matched once per distinct request target.

Rules match the decoded, normalised path (the same `normalize_path` routing
uses), so `/%61dmin` or `/a/../admin` meets the rule written for `/admin`:
a rule cannot be bypassed by spelling the path differently. The answer is
memoised per (Host, raw path), so a repeated request costs one dict lookup.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Generic, TypeVar

from ingress.errors import ProtocolError
from ingress.routing import host_name, normalize_path

T = TypeVar("T")
MEMO_SIZE = 4096
_NO_MATCH = -1


def host_matcher(pattern: str) -> re.Pattern[str]:
    """`*`, an exact name, or `*.example.com` (one or more labels below it), as routes take them."""
    pattern = pattern.lower()
    if pattern == "*":
        return re.compile(r"")
    if pattern.startswith("*."):
        return re.compile(r"[^.]+(?:\.[^.]+)*" + re.escape(pattern[1:]) + r"\Z")
    return re.compile(re.escape(pattern) + r"\Z")


def path_matcher(pattern: str) -> re.Pattern[str]:
    """A path prefix on segment boundaries; a `*` segment stands for exactly one segment.

    `/api/` covers everything below /api/; `/api` covers /api and
    everything below it; `/accounts/*/payments` covers
    /accounts/42/payments and below, but not /accounts/payments.
    """
    segments = pattern.split("/")
    body = "/".join("[^/]+" if s == "*" else re.escape(s) for s in segments)
    if pattern.endswith("/"):
        return re.compile(body)
    return re.compile(body + r"(?:/|\Z)")


class RuleIndex(Generic[T]):
    """Rules in config order; the first whose host and path match a request applies."""

    __slots__ = ("_hosts", "_memo", "_paths", "_rules")

    def __init__(self, rules: Sequence[tuple[str, str, T]]) -> None:
        self._rules = [rule for _, _, rule in rules]
        self._hosts = [host_matcher(host) for host, _, _ in rules]
        self._paths = [path_matcher(path) for _, path, _ in rules]
        self._memo: dict[tuple[str, bytes], int] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    def match(self, host: str, raw_path: bytes) -> T | None:
        key = (host, raw_path)
        index = self._memo.get(key)
        if index is None:
            index = self._find(host, raw_path)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = index
        return self._rules[index] if index != _NO_MATCH else None

    def _find(self, host: str, raw_path: bytes) -> int:
        try:
            path = normalize_path(raw_path)
        except ProtocolError:
            # Routing refuses the same path with 400, so nothing behind the edge is reached either way.
            return _NO_MATCH
        name = host_name(host).rstrip(".").lower()
        for i, (host_re, path_re) in enumerate(zip(self._hosts, self._paths, strict=True)):
            if host_re.match(name) and path_re.match(path):
                return i
        return _NO_MATCH
