"""RFC 9111 semantics for a shared cache, as pure functions of fields and times.

Kept apart from the cache's storage so each rule can be tested by itself
and read against the RFC section it implements. Every time is wall-clock
epoch seconds supplied by the caller: the cache decides nothing from a
clock of its own, so tests (and a cache replaying a response) control time.

Where the RFC lets a cache choose, the choice here is the conservative one,
because storing or serving too much leaks one client's answer to another
while storing too little only costs a trip to the origin:

- a directive that repeats with different values, or whose value is not
  delta-seconds, counts as 0 (stale; no stale serving); a request's
  `min-fresh` takes the largest valid value instead;
- `private` and `no-cache` with field names are treated as unqualified
  (the whole response is private / must be revalidated);
- a response setting a cookie is stored only when the origin explicitly
  addressed shared caches (`public` or `s-maxage`), as nginx and Varnish do;
- HEAD responses are never stored (HEAD is answered from the GET entry);
- 206 and `Vary: *` responses are not stored;
- `must-revalidate`, `proxy-revalidate` and `no-cache` forbid every kind of
  stale serving, `stale-if-error` included. `s-maxage` (which implies
  proxy-revalidate, §5.2.2.10) forbids the *client's* `max-stale`, but the
  origin's own `stale-while-revalidate` / `stale-if-error` on the same
  response still apply: an origin sending both means it, as CDNs read it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping

from ingress.handlers.conditional import http_date_seconds

Headers = list[tuple[bytes, bytes]]

# RFC 9111 §1.2.2: a delta-seconds too large to represent is this value.
DELTA_MAX = 2147483648
# §4.2.2: a typical heuristic is 10% of the time since Last-Modified; capped so
# a file untouched for years is still revalidated daily.
HEURISTIC_FRACTION = 0.1
HEURISTIC_MAX = 86400
# RFC 9110 §15.1: statuses whose responses may be reused with heuristic freshness.
# 206 is left out because this cache does not store partial content.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses whose semantics this cache knows, so it may store them with explicit freshness (§3, must-understand).
UNDERSTOOD_STATUSES = HEURISTIC_STATUSES | frozenset({302, 303, 307, 400, 403, 451, 500, 502, 503, 504})
STORABLE_METHODS = frozenset({"GET"})


# --- fields ---------------------------------------------------------------------------------------------------------


def field_values(headers: Headers, name: bytes) -> list[bytes]:
    """Every line of field `name` (lower-case), in order; names in `headers` may be in any case."""
    return [v for n, v in headers if n.lower() == name]


def field_members(headers: Headers, name: bytes) -> list[bytes]:
    """The comma-separated members of a list field across all its lines, stripped, lower-cased."""
    return [m.strip().lower() for v in field_values(headers, name) for m in v.split(b",") if m.strip()]


def _first_date(headers: Headers, name: bytes) -> tuple[bool, int | None]:
    """(present, seconds); a repeated field with different values is as invalid as a malformed one (§4.2.1)."""
    values = field_values(headers, name)
    if not values:
        return False, None
    parsed = {http_date_seconds(v.strip()) for v in values}
    return True, parsed.pop() if len(parsed) == 1 else None


def _delta(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        return None
    return min(int(text), DELTA_MAX)


# --- Cache-Control --------------------------------------------------------------------------------------------------


class CacheControl:
    """Parsed Cache-Control directives: lower-cased names, each with every value it was given.

    All values are kept, not just the first, because a directive that repeats
    with a different value is a contradiction the rules above resolve
    conservatively, which needs to see both.
    """

    __slots__ = ("directives",)

    def __init__(self, directives: Mapping[str, tuple[str | None, ...]]) -> None:
        self.directives = directives

    def __contains__(self, name: str) -> bool:
        return name in self.directives

    def __bool__(self) -> bool:
        return bool(self.directives)

    def __repr__(self) -> str:
        return f"CacheControl({dict(self.directives)!r})"

    def seconds(self, name: str) -> int | None:
        """None when absent; the value when every occurrence agrees; 0 when any is invalid or they conflict."""
        values = self.directives.get(name)
        if values is None:
            return None
        parsed = {_delta(v) for v in values}
        if len(parsed) != 1 or None in parsed:
            return 0
        only = parsed.pop()
        return 0 if only is None else only

    def largest(self, name: str) -> int | None:
        """The largest valid value, for limits where more is stricter (min-fresh); None if absent or all invalid."""
        valid = [d for d in (_delta(v) for v in self.directives.get(name, ())) if d is not None]
        return max(valid) if valid else None

    def max_stale(self) -> float | None:
        """The client's tolerance for staleness: None if not given, inf when given without a value."""
        values = self.directives.get("max-stale")
        if values is None:
            return None
        if all(v is None for v in values):
            return math.inf
        parsed = [_delta(v) for v in values if v is not None]
        return float(min(0 if d is None else d for d in parsed))


EMPTY = CacheControl({})


def parse_cache_control(values: Iterable[bytes]) -> CacheControl:
    """Directives from Cache-Control field values (§5.2): case-insensitive names, token or quoted values.

    Commas inside a quoted value (`no-cache="a, b"`) do not split it; junk after
    a value up to the next comma is skipped rather than failing the whole field.
    """
    found: dict[str, list[str | None]] = {}
    for raw in values:
        text = raw.decode("latin-1")
        i, n = 0, len(text)
        while i < n:
            while i < n and text[i] in " \t,":
                i += 1
            start = i
            while i < n and text[i] not in "=, \t":
                i += 1
            name = text[start:i].lower()
            while i < n and text[i] in " \t":
                i += 1
            value: str | None = None
            if i < n and text[i] == "=":
                i += 1
                while i < n and text[i] in " \t":
                    i += 1
                if i < n and text[i] == '"':
                    i += 1
                    chars: list[str] = []
                    while i < n and text[i] != '"':
                        if text[i] == "\\" and i + 1 < n:
                            i += 1
                        chars.append(text[i])
                        i += 1
                    i += 1
                    value = "".join(chars)
                else:
                    start = i
                    while i < n and text[i] not in ", \t":
                        i += 1
                    value = text[start:i]
            while i < n and text[i] != ",":
                i += 1
            if name:
                found.setdefault(name, []).append(value)
    return CacheControl({k: tuple(v) for k, v in found.items()})


def response_cache_control(headers: Headers) -> CacheControl:
    return parse_cache_control(field_values(headers, b"cache-control"))


def request_cache_control(headers: Mapping[bytes, bytes]) -> CacheControl:
    """The request's directives; `Pragma: no-cache` counts as `no-cache` when Cache-Control is absent (§5.4)."""
    value = headers.get(b"cache-control")
    if value is not None:
        return parse_cache_control((value,))
    pragma = headers.get(b"pragma")
    if pragma is not None and b"no-cache" in (m.strip().lower() for m in pragma.split(b",")):
        return CacheControl({"no-cache": (None,)})
    return EMPTY


def prohibits_stale(cc: CacheControl) -> bool:
    """Whether the response may never be served stale, whatever the client or an error (§4.2.4)."""
    return "must-revalidate" in cc or "proxy-revalidate" in cc or "no-cache" in cc


# --- storing (§3) ---------------------------------------------------------------------------------------------------


def unstorable_reason(
    method: str,
    status: int,
    request_headers: Mapping[bytes, bytes],
    headers: Headers,
    cc: CacheControl | None = None,
) -> str:
    """Why a shared cache must not store this response, or "" when it may (§3, §3.5).

    A reason rather than a bool so logs and tests can say which rule applied.
    """
    if method not in STORABLE_METHODS:
        return "method"
    if status == 206:
        return "partial"
    if status < 200 or status > 599 or status == 304:
        return "status"  # not a final answer with content of its own
    if cc is None:
        cc = response_cache_control(headers)
    request_cc = request_cache_control(request_headers)
    understood = status in UNDERSTOOD_STATUSES
    # must-understand (§5.2.2.3): only a cache that knows the status may store it, and then no-store is
    # just the fallback for caches that do not. Without it, §3 needs no knowledge of the status, only
    # explicit freshness (below): an unknown status with max-age is stored like any other.
    if "must-understand" in cc and not understood:
        return "status"
    if ("no-store" in cc and "must-understand" not in cc) or "no-store" in request_cc:
        return "no-store"
    if "private" in cc:
        return "private"
    if b"*" in field_members(headers, b"vary"):
        return "vary-star"
    if b"authorization" in request_headers and not ("public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
        return "authorization"
    if field_values(headers, b"set-cookie") and not ("public" in cc or "s-maxage" in cc):
        return "set-cookie"
    explicit = "max-age" in cc or "s-maxage" in cc or bool(field_values(headers, b"expires"))
    if explicit or "public" in cc:
        return ""
    has_validator = bool(field_values(headers, b"etag") or field_values(headers, b"last-modified"))
    if status in HEURISTIC_STATUSES and has_validator:
        return ""
    return "no-freshness"


def storable(
    method: str,
    status: int,
    request_headers: Mapping[bytes, bytes],
    headers: Headers,
    cc: CacheControl | None = None,
) -> bool:
    return not unstorable_reason(method, status, request_headers, headers, cc)


# --- freshness (§4.2.1, §4.2.2) -------------------------------------------------------------------------------------


def date_value(headers: Headers, response_time: float) -> float:
    """The origin's Date, or when the response arrived if it has none usable (RFC 9110 §6.6.1)."""
    _, when = _first_date(headers, b"date")
    return float(when) if when is not None else response_time


def freshness_lifetime(status: int, headers: Headers, cc: CacheControl, response_time: float) -> float:
    """Seconds the response stays fresh for a shared cache: s-maxage, max-age, Expires - Date, then heuristic."""
    s_maxage = cc.seconds("s-maxage")
    if s_maxage is not None:
        return float(s_maxage)
    max_age = cc.seconds("max-age")
    if max_age is not None:
        return float(max_age)
    date = date_value(headers, response_time)
    present, expires = _first_date(headers, b"expires")
    if present:
        # §5.3: an invalid Expires (notably "0") means already expired.
        return max(0.0, expires - date) if expires is not None else 0.0
    return heuristic_lifetime(status, headers, cc, date)


def heuristic_lifetime(status: int, headers: Headers, cc: CacheControl, date: float) -> float:
    """10% of the time since Last-Modified, capped, for statuses that allow it or a `public` response (§4.2.2)."""
    if status not in HEURISTIC_STATUSES and "public" not in cc:
        return 0.0
    _, modified = _first_date(headers, b"last-modified")
    if modified is None or modified >= date:
        return 0.0
    return min(HEURISTIC_MAX, (date - modified) * HEURISTIC_FRACTION)


# --- age (§4.2.3) ---------------------------------------------------------------------------------------------------


def age_value(headers: Headers) -> int:
    """The Age field's first member (§5.1); an invalid one is ignored as 0.

    Not "invalid means stale": drafts of RFC 9111 said so, and http-cache-tests
    0.4.5 still expects it (its age-parse-* tests fail here), but the RFC as
    published chose this after finding that caches almost all ignore a bad
    Age (httpwg/http-core#778). Age can only shorten a response's life, so
    ignoring a garbled one serves nothing the origin's own Date and freshness
    did not allow.
    """
    values = field_values(headers, b"age")
    if not values:
        return 0
    first = _delta(values[0].split(b",")[0].decode("latin-1"))
    return 0 if first is None else first


def corrected_initial_age(headers: Headers, request_time: float, response_time: float) -> float:
    """How old the response already was when it arrived: the larger of the Date-based and Age-based estimates.

    The Age-based one adds the round trip, since the response may have aged
    anywhere between sending the request and receiving the answer.
    """
    apparent_age = max(0.0, response_time - date_value(headers, response_time))
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value(headers) + response_delay
    return max(apparent_age, corrected_age_value)


def current_age(initial_age: float, response_time: float, now: float) -> float:
    """The stored response's age now: its age on arrival plus the time it has been resident."""
    return initial_age + max(0.0, now - response_time)


# --- reuse (§4.2.4, RFC 5861) ---------------------------------------------------------------------------------------


class Kind(enum.Enum):
    """What a lookup found; see `ingress.handlers.cache.Lookup`."""

    FRESH = "fresh"
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"
    STALE = "stale"
    MISS = "miss"
    ONLY_IF_CACHED = "only-if-cached"


def reuse(age: float, lifetime: float, response: CacheControl, request: CacheControl) -> tuple[Kind, str]:
    """Whether a stored response selected for a request may be served, and if not why it is forwarded.

    Returns (kind, fwd) with fwd the RFC 9211 reason: "request" when the
    client's directives refused a response that was fresh, "stale" when the
    stored response itself needs validation. A request's `only-if-cached`
    turns STALE into ONLY_IF_CACHED: such a client wants a 504, not a fetch.
    """
    kind, fwd = _reuse(age, lifetime, response, request)
    if kind is Kind.STALE and "only-if-cached" in request:
        return Kind.ONLY_IF_CACHED, fwd
    return kind, fwd


def _reuse(age: float, lifetime: float, response: CacheControl, request: CacheControl) -> tuple[Kind, str]:
    fresh = lifetime > age
    refused = "request" if fresh else "stale"
    if "no-cache" in request:
        return Kind.STALE, refused
    max_age = request.seconds("max-age")
    if max_age is not None and age > max_age:
        return Kind.STALE, refused
    min_fresh = request.largest("min-fresh")
    if min_fresh is not None and lifetime - age < min_fresh:
        return Kind.STALE, refused
    if "no-cache" in response:
        return Kind.STALE, "stale"
    if fresh:
        return Kind.FRESH, ""
    if prohibits_stale(response):
        return Kind.STALE, "stale"
    staleness = age - lifetime
    max_stale = request.max_stale()
    if max_stale is not None and "s-maxage" not in response and staleness <= max_stale:
        return Kind.FRESH, ""
    swr = response.seconds("stale-while-revalidate")
    if swr is not None and staleness <= swr:
        return Kind.STALE_WHILE_REVALIDATE, ""
    return Kind.STALE, "stale"


def stale_if_error_allowed(age: float, lifetime: float, response: CacheControl, request: CacheControl) -> bool:
    """Whether the response may stand in for an origin error (RFC 5861 §4), by the response's or request's window."""
    if prohibits_stale(response):
        return False
    windows = [s for s in (response.seconds("stale-if-error"), request.seconds("stale-if-error")) if s is not None]
    return bool(windows) and age - lifetime <= max(windows)
