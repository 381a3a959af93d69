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

Targeted fields (RFC 9213 `CDN-Cache-Control`, and `Surrogate-Control` of
the W3C Edge Architecture Note) replace Cache-Control and Expires for this
cache when one of its target list is present and valid (`Targeting`), as
the RFC says, with one exception: a `private` in Cache-Control still keeps
the response out of this cache. `private` says who may receive a response
(one user), which a field about how long a CDN may keep it does not
answer; a targeted field is often added site-wide while `private` is set
by the code that knows the answer is personal (RFC 9213 §5 warns of
exactly this reuse of sensitive responses). `no-store` and the freshness
directives are what targeted fields exist to override (RFC 9213 §3.1:
`Cache-Control: no-store` with `CDN-Cache-Control: max-age=600` is stored
by the CDN alone), and the Authorization and Set-Cookie rules read the
directives in force, so only the targeted field can allow those.
"""

from __future__ import annotations

import enum
import math
import re
import typing
from collections import UserString
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

import http_sf

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


# --- targeted fields (RFC 9213; Surrogate-Control of the W3C Edge Architecture Note) --------------------------------

SURROGATE_CONTROL = b"surrogate-control"
# What this cache tells origins it is (Edge Architecture §2.1): a surrogate that reads Surrogate-Control.
SURROGATE_CAPABILITY = b"Surrogate/1.0"
_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# One Surrogate-Control member: `name[=token-or-quoted-string][;device-token]`, nothing between the parts.
_SURROGATE_MEMBER = re.compile(
    rf'([{re.escape(_TCHARS)}]+)(?:=("(?:[^"\\]|\\.)*"|[{re.escape(_TCHARS)}]+))?(?:;([{re.escape(_TCHARS)}]+))?'
)


def parse_sf_dictionary(text: str) -> dict[str, object]:
    """A Structured Fields Dictionary (RFC 9651, which RFC 9213 fields are), by http_sf, in plain values.

    Values: True/False, int, str (String, Token, or a Decimal's text), bytes, a list (an Inner
    List's items) or a datetime (a Date). Parameters are dropped: RFC 9213 §2.1 gives them no
    meaning. ValueError on any syntax error (a non-ASCII field value included).
    """
    parsed = typing.cast("dict[str, tuple[object, object]]", http_sf.parse(text.encode("ascii"), tltype="dictionary"))
    return {key: _plain(value) for key, (value, _params) in parsed.items()}


def _plain(value: object) -> object:
    if isinstance(value, list):
        return [_plain(item[0]) for item in value]
    if isinstance(value, Decimal | UserString):
        return str(value)
    return value


def _sf_directives(values: list[bytes]) -> CacheControl | None:
    """A targeted field's directives (RFC 9213 §2.1); None when it is empty or does not parse.

    A value of the wrong kind is not coerced (§2.1: "SHOULD NOT consume"):
    `no-store=?0` is dropped, and a Decimal, byte sequence or list stays
    as text no delta-seconds rule accepts, so it counts as invalid (0).
    """
    try:
        parsed = parse_sf_dictionary(", ".join(v.decode("ascii") for v in values))
    except ValueError:  # UnicodeError is one
        return None
    directives: dict[str, tuple[str | None, ...]] = {}
    for name, value in parsed.items():
        if value is True:
            directives[name] = (None,)
        elif isinstance(value, int | str) and not isinstance(value, bool):
            directives[name] = (str(value),)
        elif value is not False:
            directives[name] = ("",)
    return CacheControl(directives) if parsed else None


def _surrogate_members(values: list[bytes]) -> list[tuple[str, str | None, str, str]]:
    """(name, value, device token, the member's text) of each well-formed Surrogate-Control member.

    Names and tokens are lower-cased; a malformed member (a space around
    `=`, say) is dropped on its own, as Cache-Control's parser does not.
    """
    out: list[tuple[str, str | None, str, str]] = []
    for raw in values:
        text = raw.decode("latin-1")
        for member in _split_list(text):
            m = _SURROGATE_MEMBER.fullmatch(member)
            if m is None:
                continue
            name, value, token = m.groups()
            if value is not None and value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            out.append((name.lower(), value, (token or "").lower(), member))
    return out


def _split_list(text: str) -> list[str]:
    """Comma-separated members, commas inside quoted strings kept; each stripped, empty ones dropped."""
    members: list[str] = []
    start, quoted, escaped = 0, False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            members.append(text[start:i])
            start = i + 1
    members.append(text[start:])
    return [m.strip(" \t") for m in members if m.strip(" \t")]


@dataclass(frozen=True, slots=True)
class Targeting:
    """This cache's target list (RFC 9213 §2.2) and the device token it answers to in Surrogate-Control.

    `fields` are lower-case field names, most applicable first; empty turns
    targeted fields off (Cache-Control alone decides). `token` names this
    cache in `Surrogate-Capability` and in `max-age=60;token`; empty: only
    untargeted Surrogate-Control members apply here.
    """

    fields: tuple[bytes, ...] = ()
    token: str = ""

    @classmethod
    def of(cls, fields: Iterable[str], token: str) -> Targeting:
        return cls(tuple(dict.fromkeys(f.strip().lower().encode("latin-1") for f in fields)), token.lower())

    @property
    def capability(self) -> bytes | None:
        """The Surrogate-Capability member announcing this cache, or None when it does not read Surrogate-Control."""
        if SURROGATE_CONTROL not in self.fields or not self.token:
            return None
        return self.token.encode("latin-1") + b'="' + SURROGATE_CAPABILITY + b'"'

    def directives(self, headers: Headers) -> CacheControl | None:
        """The first field of the target list present with a valid, non-empty value (RFC 9213 §2.2), parsed."""
        for name in self.fields:
            values = field_values(headers, name)
            if not values:
                continue
            found = self._surrogate(values) if name == SURROGATE_CONTROL else _sf_directives(values)
            if found:
                return found
        return None

    def _surrogate(self, values: list[bytes]) -> CacheControl | None:
        """Surrogate-Control's directives for this cache (Edge Architecture §2.2, §2.3).

        Members targeted at this cache's token win over untargeted ones;
        members targeted at another device do not apply here. `max-age=N+M`
        is read as `max-age=N`: the extension M would let a stale response
        be served, which only this field's own stale-* directives allow
        here. `no-store-remote` counts as `no-store`, since whether this
        edge is "remote" from the origin is not something it can know.
        """
        members = _surrogate_members(values)
        mine = [m for m in members if m[2] and m[2] == self.token]
        chosen = mine or [m for m in members if not m[2]]
        directives: dict[str, list[str | None]] = {}
        for name, value, _, _ in chosen:
            if name == "max-age" and value is not None:
                directives.setdefault(name, []).append(value.split("+", 1)[0])
            else:
                directives.setdefault("no-store" if name == "no-store-remote" else name, []).append(value)
        return CacheControl({k: tuple(v) for k, v in directives.items()}) if directives else None

    def policy(self, headers: Headers) -> tuple[CacheControl, bool]:
        """The directives this cache follows for a response, and whether a targeted field supplied them.

        A targeted field replaces Cache-Control (and Expires: the caller
        passes the flag on), except that Cache-Control's `private` is kept
        (see the module's docstring).
        """
        cc = response_cache_control(headers)
        targeted = self.directives(headers) if self.fields else None
        if targeted is None:
            return cc, False
        private = cc.directives.get("private")
        if private is not None and "private" not in targeted:
            return CacheControl({**targeted.directives, "private": private}), True
        return targeted, True

    def downstream(self, headers: Headers) -> Headers:
        """`headers` without the Surrogate-Control members this cache consumed.

        The Edge Architecture Note has a surrogate consume the directives
        addressed to it, so they do not reach the client (or browsers would
        read a CDN's policy); members targeted at another device go on, for
        a surrogate further down. Other targeted fields are passed on:
        RFC 9213 §3 has a CDN forward CDN-Cache-Control so that CDN caches
        downstream can use it too.
        """
        if SURROGATE_CONTROL not in self.fields or not any(n.lower() == SURROGATE_CONTROL for n, _ in headers):
            return headers
        out: Headers = []
        for name, value in headers:
            if name.lower() != SURROGATE_CONTROL:
                out.append((name, value))
                continue
            others = [m[3] for m in _surrogate_members([value]) if m[2] and m[2] != self.token]
            if others:
                out.append((name, ", ".join(others).encode("latin-1")))
        return out


NO_TARGETING = Targeting()
# What `[cache] targeted_fields` and `surrogate_token` default to (ingress/config/upstream.py, CacheSettings).
DEFAULT_TARGETING = Targeting.of(("CDN-Cache-Control", "Surrogate-Control"), "edgeward")


# --- storing (§3) ---------------------------------------------------------------------------------------------------


def unstorable_reason(
    method: str,
    status: int,
    request_headers: Mapping[bytes, bytes],
    headers: Headers,
    cc: CacheControl | None = None,
    targeted: bool = False,
) -> str:
    """Why a shared cache must not store this response, or "" when it may (§3, §3.5).

    A reason rather than a bool so logs and tests can say which rule applied.
    `targeted`: `cc` came from a targeted field, so Expires does not count
    (`Targeting.policy`).
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
    explicit = "max-age" in cc or "s-maxage" in cc or (not targeted and bool(field_values(headers, b"expires")))
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
    targeted: bool = False,
) -> bool:
    return not unstorable_reason(method, status, request_headers, headers, cc, targeted)


# --- freshness (§4.2.1, §4.2.2) -------------------------------------------------------------------------------------


def date_value(headers: Headers, response_time: float) -> float:
    """The origin's Date, or when the response arrived if it has none usable (RFC 9110 §6.6.1)."""
    _, when = _first_date(headers, b"date")
    return float(when) if when is not None else response_time


def freshness_lifetime(
    status: int, headers: Headers, cc: CacheControl, response_time: float, targeted: bool = False
) -> float:
    """Seconds the response stays fresh for a shared cache: s-maxage, max-age, Expires - Date, then heuristic.

    `targeted`: `cc` came from a targeted field, which replaces Expires too (RFC 9213 §2.2).
    """
    s_maxage = cc.seconds("s-maxage")
    if s_maxage is not None:
        return float(s_maxage)
    max_age = cc.seconds("max-age")
    if max_age is not None:
        return float(max_age)
    date = date_value(headers, response_time)
    present, expires = _first_date(headers, b"expires")
    if present and not targeted:
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
