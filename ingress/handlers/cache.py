"""The RFC 9111 shared cache a worker keeps for proxied routes: storage, selection and hit responses.

No I/O: the reverse proxy asks `lookup`, talks to the origin itself, and
hands answers back with `store` / `freshen`; the rules of freshness live in
`freshness`. A hit is served like a static file: its HTTP/1.1 bytes are
built once per Date tick and memoised on the entry, so another hit in the
same second is a dict lookup that allocates nothing.

Memory is bounded by `max_bytes` (stored bodies and header lines, least
recently used evicted first) and by a cap on variants per URI, so neither
many URIs nor a Vary on a client-chosen header can grow it. The per-tick
wire memos are not counted: they are dropped when the tick moves, so they
only ever hold the entries hit within the last second.

Stored headers keep the origin's case and order, minus hop-by-hop fields,
Date, Age and Server. Server comes from the clock like every other answer
of this server. Date is kept apart (`Entry.date_field`) and sent as the
origin gave it, or as updated by a 304: it says when the response was
generated (RFC 9110 §6.6.1), and a downstream cache that sends it back as
If-Modified-Since must not be told a copy is newer than it is. Age is
recomputed per hit as the response's current age (§4.2.3), which already
includes how old it was when it arrived (the origin's Date and Age).
Content-Length is rewritten from the stored body, since the origin may
have sent it chunked.

The HTTP/1.1 bytes built here carry the stored Date. The field list that
HTTP/2, HTTP/3 and a closing HTTP/1 connection serialise leaves Date out,
because those layers add the clock's Date to every answer themselves.

Which directives rule an entry is `Targeting.policy`: a targeted field
(CDN-Cache-Control, Surrogate-Control) when the origin sent one, else
Cache-Control. The consumed Surrogate-Control stays in the stored headers,
so a 304 can update the policy, and is left out of what a hit sends
(`Entry.sent`), as it is from a miss.

A GET with one byte range is answered from a stored 200 with a 206 of
that range (RFC 9110 §14.2 lets any cache do so); several ranges get the
whole 200, which §14.2 also allows and which keeps multipart bodies out of
the cache's hot path. If-Range must match the stored response strongly.
"""

from __future__ import annotations

import asyncio
import math
import urllib.parse
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Generic, TypeVar

from ingress.clock import Clock
from ingress.handlers import conditional
from ingress.handlers.freshness import (
    DEFAULT_TARGETING,
    CacheControl,
    Headers,
    Kind,
    Targeting,
    corrected_initial_age,
    current_age,
    date_value,
    field_members,
    freshness_lifetime,
    request_cache_control,
    reuse,
    stale_if_error_allowed,
    unstorable_reason,
)
from ingress.handlers.ranges import Unsatisfiable, parse_ranges
from ingress.protocol.errorpages import error_response
from ingress.protocol.events import Request, Response
from ingress.protocol.http1 import status_line

__all__ = [
    "CACHE_NAME",
    "Entry",
    "Flights",
    "Kind",
    "Lookup",
    "SharedCache",
    "cache_status",
    "primary_key",
    "validates",
]

CACHE_NAME = b"edgeward"
# Variants one URI may hold; past it the least recently stored goes.
MAX_VARIANTS = 32
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# Never stored: hop-by-hop (RFC 9110 §7.6.1), and fields this cache writes itself per answer.
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REWRITTEN = frozenset({b"date", b"age", b"server", b"content-length"})
# Not taken from a 304 (§3.2): they describe the stored body's bytes or select it, which a 304 does not change.
# A digest or coding that no longer matches the stored bytes would make every hit look corrupt, which §3.2 lets a
# cache avoid ("fields necessary to assure integrity of the stored response").
_KEPT_ON_FRESHEN = frozenset(
    {
        b"content-length",
        b"content-encoding",
        b"content-range",
        b"content-md5",
        b"content-digest",
        b"repr-digest",
        b"digest",
        b"vary",
    }
)
# A 304 to a client carries what a 200 would say about caching and identity (RFC 9110 §15.4.5).
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"etag", b"expires", b"vary", b"last-modified"}
)
# Request fields whose values compare case-insensitively when matching Vary.
_CASELESS = frozenset({b"accept", b"accept-charset", b"accept-encoding", b"accept-language"})

HIT = "hit"
HIT_STALE_WHILE_REVALIDATE = "hit; detail=stale-while-revalidate"
HIT_STALE_IF_ERROR = "hit; detail=stale-if-error"

Key = tuple[str, str, bytes, bytes]
T = TypeVar("T")


def primary_key(request: Request) -> Key:
    """The cache key before Vary: GET and HEAD share it, since HEAD is answered from the GET entry."""
    return (request.scheme.lower(), request.host.lower(), request.path, request.query)


def cache_status(
    *,
    hit: bool = False,
    fwd: str = "",
    fwd_status: int = 0,
    ttl: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: str = "",
) -> bytes:
    """This cache's member of a Cache-Status field (RFC 9211), e.g. b"edgeward; fwd=uri-miss; stored"."""
    parts = [CACHE_NAME]
    if hit:
        parts.append(b"hit")
    if fwd:
        parts.append(b"fwd=" + fwd.encode("ascii"))
    if fwd_status:
        parts.append(b"fwd-status=%d" % fwd_status)
    if ttl is not None:
        parts.append(b"ttl=%d" % ttl)
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    if detail:
        parts.append(b"detail=" + detail.encode("ascii"))
    return b"; ".join(parts)


def _normalise(name: bytes, value: bytes | None) -> bytes | None:
    """A request field's value as Vary compares it (§4.1): list whitespace dropped, case folded where it is moot."""
    if value is None:
        return None
    out = b",".join(m for m in (m.strip() for m in value.split(b",")) if m)
    return out.lower() if name in _CASELESS else out


def _storable_headers(headers: Headers, body_length: int, status: int) -> Headers:
    nominated = set(field_members(headers, b"connection"))
    kept = [
        (n, v) for n, v in headers if (low := n.lower()) not in _HOP and low not in _REWRITTEN and low not in nominated
    ]
    if status not in (204, 304):
        kept.append((b"Content-Length", b"%d" % body_length))
    return kept


def _first(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n.lower() == name:
            return v.strip()
    return None


class Entry:
    """One stored response (one variant of one URI), with what its freshness needs precomputed."""

    __slots__ = (
        "body",
        "cached",
        "cc",
        "date",
        "date_field",
        "etag",
        "fresh_until",
        "head_memo",
        "headers",
        "initial_age",
        "key",
        "last_modified",
        "lifetime",
        "memo",
        "response_time",
        "sent",
        "size",
        "status",
        "targeting",
        "vary",
    )

    def __init__(
        self,
        key: Key,
        vary: tuple[tuple[bytes, bytes | None], ...] | None,
        status: int,
        stored: Headers,
        received: Headers,
        body: bytes,
        request_time: float,
        response_time: float,
        targeting: Targeting = DEFAULT_TARGETING,
    ) -> None:
        self.key = key
        self.targeting = targeting
        # (request field, normalised value) pairs the response varies on; None for Vary: *, which matches nothing.
        self.vary = vary
        self.status = status
        self.body = body
        self.cached = False
        # Cache-Status parameters -> (preamble it was built with, response); GET and HEAD apart.
        self.memo: dict[str, tuple[bytes, Response]] = {}
        self.head_memo: dict[str, tuple[bytes, Response]] = {}
        self.headers: Headers = []
        self._update(stored, received, request_time, response_time)

    def _update(self, stored: Headers, received: Headers, request_time: float, response_time: float) -> None:
        """Take `stored` as the headers; `received` (the origin's full answer, or its 304) dates the response."""
        self.headers = stored
        # What a hit sends: the stored headers minus what this cache consumed (Surrogate-Control).
        self.sent = self.targeting.downstream(stored)
        cc, targeted = self.targeting.policy(stored)
        self.cc: CacheControl = cc
        self.etag = _first(stored, b"etag")
        self.last_modified = _first(stored, b"last-modified")
        self.date = date_value(received, response_time)
        # What a hit says in Date: the origin's (from `received`, so a 304's Date replaces it, §4.3.4), or when
        # the response arrived if it had none usable, as a cache must add one (RFC 9110 §6.6.1). Formatted from
        # the parsed instant, so an obsolete date format is sent as IMF-fixdate.
        self.date_field = formatdate(self.date, usegmt=True).encode("ascii")
        self.response_time = response_time
        self.initial_age = corrected_initial_age(received, request_time, response_time)
        # Lifetime from the *received* Date/Expires pair: Date is not stored, but Expires - Date needs both.
        self.lifetime = freshness_lifetime(self.status, _with_date(stored, received), cc, response_time, targeted)
        self.size = len(self.body) + sum(len(n) + len(v) + 4 for n, v in stored)
        # The instant it stops being fresh, for requests with no directives of their own (`SharedCache.hit`):
        # fresh while lifetime > initial_age + (now - response_time). Never, for no-cache.
        no_cache = "no-cache" in self.cc
        self.fresh_until = -math.inf if no_cache else response_time + self.lifetime - self.initial_age
        self.memo.clear()
        self.head_memo.clear()

    def matches(self, headers: Mapping[bytes, bytes]) -> bool:
        """Whether a request with these (lower-case) fields selects this variant (§4.1)."""
        vary = self.vary
        if vary is None:
            return False
        return all(_normalise(name, headers.get(name)) == want for name, want in vary)

    def current_age(self, now: float) -> float:
        return current_age(self.initial_age, self.response_time, now)

    def ttl(self, now: float) -> int:
        """Whole seconds of freshness left; negative once stale."""
        return math.floor(self.lifetime - self.current_age(now))


def _with_date(stored: Headers, received: Headers) -> Headers:
    """Stored headers plus the received Date, which freshness_lifetime needs but the entry does not keep."""
    return stored + [(n, v) for n, v in received if n.lower() == b"date"]


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the cache can do for a request.

    FRESH: serve `entry` now (fresh, or stale within the client's max-stale).
    STALE_WHILE_REVALIDATE: serve `entry` now and revalidate it in the background.
    STALE: go to the origin, conditionally (`conditional_headers(entry)`); on a
      304 `freshen`, on an error consider `stale_if_error_ok`. `fwd` is
      "stale", or "request" when the client's directives refused a fresh entry.
    MISS: nothing stored for this request; `fwd` is "uri-miss", "vary-miss",
      "method" (not GET/HEAD) or "bypass" (cache disabled); `entry` is None.
    ONLY_IF_CACHED: the client sent only-if-cached and nothing may be served:
      answer 504 without contacting the origin.
    """

    kind: Kind
    entry: Entry | None = None
    fwd: str = ""
    age: int = 0
    ttl: int = 0

    @property
    def status(self) -> str:
        """The Cache-Status parameters for this outcome, as `respond` takes them."""
        if self.kind is Kind.FRESH:
            return HIT
        if self.kind is Kind.STALE_WHILE_REVALIDATE:
            return HIT_STALE_WHILE_REVALIDATE
        if self.kind is Kind.ONLY_IF_CACHED:
            return "detail=only-if-cached"
        return "fwd=" + self.fwd


_BYPASS = Lookup(Kind.MISS, fwd="bypass")
_METHOD = Lookup(Kind.MISS, fwd="method")


class SharedCache:
    """Stored responses by URI and Vary, bounded by bytes, with the counters a metrics endpoint reads."""

    def __init__(self, max_bytes: int, max_object_bytes: int, targeting: Targeting = DEFAULT_TARGETING) -> None:
        """`targeting`: the targeted fields this cache follows (`[cache] targeted_fields`, `surrogate_token`)."""
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self.targeting = targeting
        self._index: dict[Key, list[Entry]] = {}
        self._lru: OrderedDict[Entry, None] = OrderedDict()
        self._memo_preamble = b""
        self._memoised: list[Entry] = []
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.evictions = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._lru)

    # selection ------------------------------------------------------------------------------------------------------
    def lookup(self, request: Request, now: float) -> Lookup:
        """Select the stored response for `request` and say whether it may be served (§4)."""
        method = request.method
        if method not in ("GET", "HEAD"):
            return _METHOD
        request_cc = request_cache_control(request.headers)
        if not self.max_bytes:
            found = _BYPASS
        else:
            variants = self._index.get(primary_key(request))
            if not variants:
                found = Lookup(Kind.MISS, fwd="uri-miss")
            else:
                entry = next((v for v in variants if v.matches(request.headers)), None)
                found = Lookup(Kind.MISS, fwd="vary-miss") if entry is None else self._judge(entry, request_cc, now)
        if found.kind is Kind.FRESH or found.kind is Kind.STALE_WHILE_REVALIDATE:
            self.hits += 1
        else:
            self.misses += 1
            if found.kind is Kind.MISS and "only-if-cached" in request_cc:
                return Lookup(Kind.ONLY_IF_CACHED, fwd=found.fwd)
        return found

    def hit(self, request: Request, now: float, clock: Clock) -> Response | None:
        """The common hit, decided with a few dict lookups; None sends the request to `lookup`.

        A GET or HEAD without Cache-Control, Pragma or conditionals, for a fresh
        variant: the same answer `lookup` + `respond` give, without parsing
        directives or allocating a Lookup, so a hit costs what a static file does.
        """
        headers = request.headers
        if (
            b"cache-control" in headers
            or b"pragma" in headers
            or b"if-none-match" in headers
            or b"if-modified-since" in headers
            or b"range" in headers
        ):
            return None
        variants = self._index.get((request.scheme, request.host, request.path, request.query))
        if not variants:
            return None
        for entry in variants:
            vary = entry.vary
            if vary is not None and (not vary or entry.matches(headers)):
                break
        else:
            return None
        if now >= entry.fresh_until:
            return None
        self.hits += 1
        memo = (entry.head_memo if request.method == "HEAD" else entry.memo).get(HIT)
        if memo is not None and memo[0] is clock.preamble:
            # Memoised this second, so already moved to the recent end this second: recency is kept
            # to the second, and the hottest entries skip the reordering.
            return memo[1]
        self._lru.move_to_end(entry)
        return self.respond(entry, request, now, clock, HIT)

    def _judge(self, entry: Entry, request_cc: CacheControl, now: float) -> Lookup:
        self._lru.move_to_end(entry)
        age = entry.current_age(now)
        kind, fwd = reuse(age, entry.lifetime, entry.cc, request_cc)
        return Lookup(kind, entry, fwd, math.floor(age), math.floor(entry.lifetime - age))

    @staticmethod
    def conditional_headers(entry: Entry) -> Headers:
        """Validators for revalidating `entry` at the origin (§4.3.1)."""
        out: Headers = []
        if entry.etag is not None:
            out.append((b"If-None-Match", entry.etag))
        if entry.last_modified is not None:
            out.append((b"If-Modified-Since", entry.last_modified))
        return out

    def stale_if_error_ok(self, entry: Entry, request: Request, now: float) -> bool:
        """Whether `entry` may be served because the origin failed (5xx or no answer) (RFC 5861 §4)."""
        request_cc = request_cache_control(request.headers)
        return stale_if_error_allowed(entry.current_age(now), entry.lifetime, entry.cc, request_cc)

    # storing --------------------------------------------------------------------------------------------------------
    def unstorable_reason(self, request: Request, status: int, headers: Headers) -> str:
        """Why the origin's answer (`headers` as received) may not be stored here, or "" (§3, by this cache's policy).

        The proxy asks before reading a body it would otherwise stream.
        """
        cc, targeted = self.targeting.policy(headers)
        return unstorable_reason(request.method, status, request.headers, headers, cc, targeted)

    def store(
        self,
        request: Request,
        status: int,
        headers: Headers,
        body: bytes,
        request_time: float,
        response_time: float,
    ) -> Entry | None:
        """Store the origin's answer if §3 allows; None when it is not stored.

        `headers` should be what the proxy sends downstream for this answer, so
        a hit looks like the miss did. The new response replaces any stored
        variant this request would have selected.
        """
        if not self.max_bytes or len(body) > self.max_object_bytes:
            return None
        if self.unstorable_reason(request, status, headers):
            return None
        names = field_members(headers, b"vary")
        vary = tuple((name, _normalise(name, request.headers.get(name))) for name in dict.fromkeys(names))
        key = primary_key(request)
        stored = _storable_headers(headers, len(body), status)
        entry = Entry(key, vary, status, stored, headers, body, request_time, response_time, self.targeting)
        if entry.size > self.max_bytes:
            return None
        for old in [v for v in self._index.get(key, ()) if v.matches(request.headers)]:
            self._remove(old)
        variants = self._index.setdefault(key, [])
        variants.insert(0, entry)
        if len(variants) > MAX_VARIANTS:
            self._remove(variants[-1])
            self.evictions += 1
        entry.cached = True
        self._lru[entry] = None
        self.bytes += entry.size
        self.stores += 1
        self._evict()
        return entry

    def freshen(self, entry: Entry, headers: Headers, request_time: float, response_time: float) -> Entry:
        """Update `entry` from a 304 to its revalidation (§4.3.4) and return it, fresh again.

        An entry evicted or purged meanwhile is updated (the caller serves it)
        but not put back, so a purge during a revalidation sticks.

        A 304 whose validator contradicts the entry's (`validates`) updates
        nothing (§4.3.4: the cache MUST NOT use it to update): the entry is
        returned as it was, for the caller to answer this one request with,
        since the origin did answer the entry's own validators with 304; and
        it is removed, because freshening it on the origin's word is exactly
        what §4.3.4 forbids, and revalidating it again would only repeat
        this. The next request fetches the response afresh.
        """
        if not validates(entry, headers):
            self._remove(entry)
            return entry
        nominated = set(field_members(headers, b"connection"))
        fresh = [
            (n, v)
            for n, v in headers
            if (low := n.lower()) not in _HOP
            and low not in _REWRITTEN
            and low not in _KEPT_ON_FRESHEN
            and low not in nominated
        ]
        replaced = {n.lower() for n, _ in fresh}
        stored = [(n, v) for n, v in entry.headers if n.lower() not in replaced] + fresh
        # Content-Length was appended last at store time; keep it last so the order stays stable.
        stored.sort(key=lambda f: f[0].lower() == b"content-length")
        before = entry.size
        entry._update(stored, headers, request_time, response_time)
        if entry.cached:
            self.bytes += entry.size - before
            cc = entry.cc
            if "no-store" in cc or "private" in cc:
                self._remove(entry)
            else:
                self._lru.move_to_end(entry)
                self._evict()
        return entry

    # removal --------------------------------------------------------------------------------------------------------
    def invalidate(self, request: Request, status: int, response_headers: Headers) -> int:
        """Drop what an unsafe request's successful answer made outdated (§4.4); the number of entries removed.

        The target URI always; Location and Content-Location only on the same
        origin, so one site cannot evict another's entries.
        """
        if request.method in SAFE_METHODS or not 200 <= status < 400:
            return 0
        target = primary_key(request)
        keys = {target}
        scheme, host = target[0], target[1]
        base = f"{scheme}://{host}{request.path.decode('latin-1')}"
        if request.query:
            base += "?" + request.query.decode("latin-1")
        for value in (_first(response_headers, b"location"), _first(response_headers, b"content-location")):
            if not value:
                continue
            try:
                url = urllib.parse.urlsplit(urllib.parse.urljoin(base, value.decode("latin-1")))
            except ValueError:
                continue
            if url.scheme.lower() == scheme and url.netloc.lower() == host:
                keys.add((scheme, host, (url.path or "/").encode("latin-1"), url.query.encode("latin-1")))
        removed = 0
        for key in keys:
            for entry in list(self._index.get(key, ())):
                self._remove(entry)
                removed += 1
        return removed

    def purge(self, host: str, path: str, prefix: bool = False) -> int:
        """Remove entries by host ("*" or "" for any) and path; the number removed.

        A path with "?" matches that query exactly; without, every query of the
        path. With `prefix`, every URI whose path (and query) starts with it.
        """
        host = host.lower()
        any_host = host in ("", "*")
        target = path.encode("utf-8")
        removed = 0
        for key in list(self._index):
            if not any_host and key[1] != host:
                continue
            uri = key[2] + b"?" + key[3] if key[3] else key[2]
            if prefix:
                hit = uri.startswith(target)
            elif b"?" in target:
                hit = uri == target
            else:
                hit = key[2] == target
            if hit:
                for entry in list(self._index[key]):
                    self._remove(entry)
                    removed += 1
        return removed

    def _remove(self, entry: Entry) -> None:
        if not entry.cached:
            return
        entry.cached = False
        del self._lru[entry]
        self.bytes -= entry.size
        variants = self._index[entry.key]
        variants.remove(entry)
        if not variants:
            del self._index[entry.key]

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._lru:
            self._remove(next(iter(self._lru)))
            self.evictions += 1

    # serving --------------------------------------------------------------------------------------------------------
    def respond(self, entry: Entry, request: Request, now: float, clock: Clock, status: str = HIT) -> Response:
        """A response from `entry`, pre-serialised for HTTP/1.1 and memoised for the current Date tick.

        `status` is this cache's Cache-Status parameters (a `Lookup.status`,
        or e.g. "fwd=stale; fwd-status=304" after a revalidation); exactly
        "hit" gets the entry's remaining ttl added. A client's own matching
        If-None-Match / If-Modified-Since gets a 304, built per request.
        """
        preamble = clock.preamble
        if preamble is not self._memo_preamble:
            for old in self._memoised:
                old.memo.clear()
                old.head_memo.clear()
            self._memoised = []
            self._memo_preamble = preamble
        headers = request.headers
        conditional_request = b"if-none-match" in headers or b"if-modified-since" in headers
        if conditional_request and entry.status == 200 and _not_modified(entry, headers):
            return self._not_modified(entry, now, clock, status)
        head = request.method == "HEAD"
        if not head and entry.status == 200 and b"range" in headers:
            partial = self._partial(entry, headers, now, clock, status)
            if partial is not None:
                return partial
        memos = entry.head_memo if head else entry.memo
        memo = memos.get(status)
        if memo is not None and memo[0] is preamble:
            return memo[1]
        fields = self._fields(entry, entry.sent, now, status)
        wire = _head(entry.status, entry, clock, fields)
        response = (
            Response(entry.status, fields, b"", wire)
            if head
            else Response(entry.status, fields, entry.body, wire + entry.body)
        )
        if not entry.memo and not entry.head_memo:
            self._memoised.append(entry)
        memos[status] = (preamble, response)
        return response

    def _not_modified(self, entry: Entry, now: float, clock: Clock, status: str) -> Response:
        kept = [(n, v) for n, v in entry.sent if n.lower() in _NOT_MODIFIED_FIELDS]
        fields = self._fields(entry, kept, now, status)
        return Response(304, fields, b"", _head(304, entry, clock, fields))

    def _partial(
        self, entry: Entry, headers: Mapping[bytes, bytes], now: float, clock: Clock, status: str
    ) -> Response | None:
        """The 206 (or 416) for a GET with Range from a stored 200; None to send the whole response instead."""
        if_range = headers.get(b"if-range")
        if if_range is not None and not _if_range_matches(entry, if_range):
            return None  # the client's copy is another representation: it needs all of this one (RFC 9110 §13.1.5)
        size = len(entry.body)
        try:
            ranges = parse_ranges(headers[b"range"], size)
        except Unsatisfiable:
            value = CACHE_NAME + b"; " + status.encode("ascii")
            return error_response(416, [(b"Content-Range", b"bytes */%d" % size), (b"Cache-Status", value)])
        if ranges is None or len(ranges) != 1:
            return None
        first, last = ranges[0]
        part = entry.body[first : last + 1]
        described = [(n, v) for n, v in entry.sent if n.lower() != b"content-length"]
        described += [
            (b"Content-Range", b"bytes %d-%d/%d" % (first, last, size)),
            (b"Content-Length", b"%d" % len(part)),
        ]
        fields = self._fields(entry, described, now, status)
        return Response(206, fields, part, _head(206, entry, clock, fields) + part)

    @staticmethod
    def _fields(entry: Entry, headers: Headers, now: float, status: str) -> Headers:
        age = entry.current_age(now)
        value = CACHE_NAME + b"; " + status.encode("ascii")
        if status == HIT:
            value += b"; ttl=%d" % math.floor(entry.lifetime - age)
        return [*headers, (b"Age", b"%d" % math.floor(age)), (b"Cache-Status", value)]


def _head(status: int, entry: Entry, clock: Clock, fields: Headers) -> bytes:
    """The HTTP/1.1 head of an answer from `entry`: the stored Date where other answers have the clock's."""
    lines = b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    return status_line(status) + b"Date: " + entry.date_field + b"\r\n" + clock.server + lines + b"\r\n"


def validates(entry: Entry, headers: Headers) -> bool:
    """Whether a 304 with these fields identifies `entry` as the stored response it validates (§4.3.4).

    The 304 answered the entry's own validators (`conditional_headers`), so
    it is only refused when what it says contradicts them: a strong ETag
    must equal the entry's strong ETag, a weak one match it weakly; with no
    ETag, a Last-Modified must be the entry's. A 304 with neither validates
    an entry that has no ETag, since Last-Modified is not required on a 304
    (RFC 9110 §15.4.5) and origins validating by date often omit it; an
    entry with an ETag needs it back, as the origin MUST send it.
    """
    etag = _first(headers, b"etag")
    if etag is not None:
        stored = entry.etag
        if stored is None:
            return False
        if etag.startswith(b"W/"):
            return _opaque(etag) == _opaque(stored)  # weak comparison (RFC 9110 §8.8.3.2)
        return etag == stored  # a strong validator names only a response with the same strong one
    modified = _first(headers, b"last-modified")
    if modified is not None:
        if entry.last_modified is None:
            return False
        when = conditional.http_date_seconds(modified)
        return when is not None and when == conditional.http_date_seconds(entry.last_modified)
    return entry.etag is None


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def _if_range_matches(entry: Entry, value: bytes) -> bool:
    """Whether If-Range names the stored response (RFC 9110 §13.1.5): its strong ETag, or exactly its Last-Modified.

    A weak ETag never matches, and a date only when the stored response has
    that Last-Modified, so a range is never spliced onto another version.
    """
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        return entry.etag is not None and not entry.etag.startswith(b"W/") and value == entry.etag
    when = conditional.http_date_seconds(value)
    if when is None or entry.last_modified is None:
        return False
    return when == conditional.http_date_seconds(entry.last_modified)


def _not_modified(entry: Entry, headers: Mapping[bytes, bytes]) -> bool:
    """Whether the client's own validators match the stored response (RFC 9110 §13.1.2, §13.1.3)."""
    inm = headers.get(b"if-none-match")
    if inm is not None:
        return (entry.etag is not None and conditional.weak_match(inm, entry.etag)) or inm.strip() == b"*"
    ims = conditional.http_date_seconds(headers.get(b"if-modified-since", b""))
    if ims is None:
        return False
    # §4.3.2: compare with Last-Modified, else with the stored response's Date.
    modified = conditional.http_date_seconds(entry.last_modified) if entry.last_modified is not None else None
    return (modified if modified is not None else entry.date) <= ims


class Flights(Generic[T]):
    """Request collapsing: one request per key goes to the origin while the others wait for it.

    `join` returns None to the first caller, the leader, which must end the
    flight with `done` or `fail` (in a `finally`, or waiters hang). Everyone
    else gets a future of their own, so a waiter that is cancelled cancels
    only itself. Waiters should not reuse the leader's Response: they wake
    and run `lookup` again, so Vary and their own request directives are
    honoured, and go to the origin themselves if the answer was not stored
    or does not fit them.
    """

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[Hashable, list[asyncio.Future[T]]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def join(self, key: Hashable, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[T] | None:
        waiters = self._waiting.get(key)
        if waiters is None:
            self._waiting[key] = []
            return None
        future: asyncio.Future[T] = (loop or asyncio.get_running_loop()).create_future()
        waiters.append(future)
        return future

    def done(self, key: Hashable, result: T) -> None:
        for future in self._waiting.pop(key, ()):
            if not future.done():
                future.set_result(result)

    def fail(self, key: Hashable, exc: BaseException) -> None:
        for future in self._waiting.pop(key, ()):
            if not future.done():
                future.set_exception(exc)
