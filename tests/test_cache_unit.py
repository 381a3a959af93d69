"""The RFC 9111 shared cache core, without a network: freshness rules, storage, selection and hit responses.

Times are fixed epoch seconds so every age, lifetime and ttl below is exact.
"""

from __future__ import annotations

import asyncio
import math
from email.utils import formatdate
from typing import Any

import pytest

from ingress.clock import Clock
from ingress.config.upstream import CacheSettings
from ingress.handlers import cache as cache_mod
from ingress.handlers.cache import (
    HIT_STALE_IF_ERROR,
    Entry,
    Flights,
    Kind,
    Lookup,
    SharedCache,
    cache_status,
    primary_key,
)
from ingress.handlers.freshness import (
    DEFAULT_TARGETING,
    DELTA_MAX,
    EMPTY,
    HEURISTIC_MAX,
    NO_TARGETING,
    CacheControl,
    Targeting,
    age_value,
    corrected_initial_age,
    current_age,
    date_value,
    freshness_lifetime,
    parse_cache_control,
    parse_sf_dictionary,
    request_cache_control,
    response_cache_control,
    reuse,
    stale_if_error_allowed,
    storable,
    unstorable_reason,
)
from ingress.handlers.proxy.handler import gather
from ingress.handlers.proxy.upstream import UpstreamError
from ingress.protocol.events import Request, Response
from ingress.protocol.pipe import Pipe

T0 = 1_700_000_000
BODY = b"hello cache\n"


def date(t: float) -> bytes:
    return formatdate(t, usegmt=True).encode("ascii")


def cc(text: str) -> CacheControl:
    return parse_cache_control([text.encode()])


def req(
    path: bytes = b"/a",
    method: str = "GET",
    headers: dict[bytes, bytes] | None = None,
    query: bytes = b"",
    host: str = "Example.COM",
    scheme: str = "https",
) -> Request:
    return Request(method, path, query, dict(headers or {}), host, "1.1", True, scheme)


def origin(
    cache_control: bytes | None = b"max-age=60", *extra: tuple[bytes, bytes], at: float = T0
) -> list[tuple[bytes, bytes]]:
    headers = [(b"Date", date(at)), (b"Content-Type", b"text/plain")]
    if cache_control is not None:
        headers.append((b"Cache-Control", cache_control))
    headers.extend(extra)
    return headers


def stored(
    c: SharedCache,
    request: Request | None = None,
    cache_control: bytes | None = b"max-age=60",
    *extra: tuple[bytes, bytes],
    status: int = 200,
    body: bytes = BODY,
) -> Entry:
    entry = c.store(request or req(), status, origin(cache_control, *extra), body, T0, T0)
    assert entry is not None
    return entry


# --- Cache-Control parsing ------------------------------------------------------------------------------------------


def test_parse_names_are_case_insensitive_and_values_kept() -> None:
    parsed = parse_cache_control([b"Max-Age=60, PUBLIC", b"S-MaxAge=30"])
    assert parsed.directives == {"max-age": ("60",), "public": (None,), "s-maxage": ("30",)}


def test_parse_quoted_values_keep_commas_and_unescape() -> None:
    parsed = parse_cache_control([b'no-cache="Set-Cookie, X-A", private="a\\"b", max-age="10"'])
    assert parsed.directives == {"no-cache": ("Set-Cookie, X-A",), "private": ('a"b',), "max-age": ("10",)}
    assert parsed.seconds("max-age") == 10


def test_parse_skips_junk_and_empty_members() -> None:
    parsed = parse_cache_control([b" ,, max-age=5 junk , ,no-store,"])
    assert parsed.directives == {"max-age": ("5",), "no-store": (None,)}


def test_seconds_duplicates_agreeing_conflicting_invalid() -> None:
    assert parse_cache_control([b"max-age=60", b"max-age=60"]).seconds("max-age") == 60
    assert parse_cache_control([b"max-age=60, max-age=30"]).seconds("max-age") == 0
    assert parse_cache_control([b"max-age=abc"]).seconds("max-age") == 0
    assert parse_cache_control([b"max-age"]).seconds("max-age") == 0
    assert parse_cache_control([b"max-age=-1"]).seconds("max-age") == 0
    assert parse_cache_control([b"public"]).seconds("max-age") is None
    assert parse_cache_control([b"max-age=99999999999999"]).seconds("max-age") == DELTA_MAX


def test_largest_and_max_stale() -> None:
    assert parse_cache_control([b"min-fresh=5, min-fresh=20, min-fresh=x"]).largest("min-fresh") == 20
    assert parse_cache_control([b"max-stale"]).max_stale() == math.inf
    assert parse_cache_control([b"max-stale=30"]).max_stale() == 30
    assert parse_cache_control([b"max-stale=30, max-stale=10"]).max_stale() == 10
    assert parse_cache_control([b"max-stale=x"]).max_stale() == 0
    assert EMPTY.max_stale() is None


def test_request_pragma_no_cache_only_without_cache_control() -> None:
    assert "no-cache" in request_cache_control({b"pragma": b"No-Cache"})
    assert "no-cache" not in request_cache_control({b"pragma": b"no-cache", b"cache-control": b"max-age=5"})
    assert request_cache_control({}) is EMPTY


# --- freshness lifetime -------------------------------------------------------------------------------------------


def lifetime(headers: list[tuple[bytes, bytes]], status: int = 200, response_time: float = T0) -> float:
    return freshness_lifetime(status, headers, response_cache_control(headers), response_time)


def test_lifetime_precedence_s_maxage_max_age_expires() -> None:
    base = [(b"Date", date(T0)), (b"Expires", date(T0 + 300)), (b"Last-Modified", date(T0 - 10000))]
    assert lifetime([*base, (b"Cache-Control", b"max-age=60, s-maxage=30")]) == 30
    assert lifetime([*base, (b"Cache-Control", b"max-age=60")]) == 60
    assert lifetime(base) == 300
    assert lifetime(base[:1] + base[2:]) == 1000  # heuristic: 10% of 10000


def test_expires_invalid_or_conflicting_is_expired() -> None:
    assert lifetime([(b"Date", date(T0)), (b"Expires", b"0")]) == 0
    assert lifetime([(b"Date", date(T0)), (b"Expires", date(T0 + 50)), (b"Expires", date(T0 + 90))]) == 0
    assert lifetime([(b"Date", date(T0)), (b"Expires", date(T0 - 50))]) == 0


def test_expires_without_date_uses_response_time() -> None:
    assert lifetime([(b"Expires", date(T0 + 100))], response_time=T0 + 40) == 60


def test_heuristic_is_capped_and_needs_allowed_status_or_public() -> None:
    old = [(b"Date", date(T0)), (b"Last-Modified", date(T0 - 100 * 86400))]
    assert lifetime(old) == HEURISTIC_MAX
    assert lifetime([(b"Date", date(T0)), (b"Last-Modified", date(T0 - 500))], status=302) == 0
    assert lifetime([*old, (b"Cache-Control", b"public")], status=302) == HEURISTIC_MAX
    assert lifetime([(b"Date", date(T0))]) == 0
    assert lifetime([(b"Date", date(T0)), (b"Last-Modified", date(T0 + 5))]) == 0


# --- age ------------------------------------------------------------------------------------------------------------


def test_age_value_first_member_invalid_and_overflow() -> None:
    assert age_value([(b"Age", b"30, 40")]) == 30
    assert age_value([(b"age", b"7"), (b"Age", b"9")]) == 7
    assert age_value([(b"Age", b"-3")]) == 0
    assert age_value([(b"Age", b"99999999999")]) == DELTA_MAX
    assert age_value([]) == 0


@pytest.mark.parametrize(
    ("lines", "age"),
    [
        # The Age values of http-cache-tests 0.4.5's age-parse suite. That version expects every one of these but
        # "7200,0" and "0,7200" to make the response stale, as drafts of RFC 9111 said; the RFC as published
        # (§5.1, httpwg/http-core#778) says to use the first member and to ignore an invalid value, and so
        # does the suite's later revision. This cache follows the RFC: these pin it.
        ([b"abc"], 0),
        ([b"-7200"], 0),
        ([b"7200.0"], 0),
        ([b"7200;foo=bar"], 0),
        ([b"7200;foo=111"], 0),
        ([b"7200,0"], 7200),
        ([b"0,7200"], 0),
        ([b"7200", b"0"], 7200),
        ([b"0", b"7200"], 0),
        ([b"0, 0"], 0),
        ([b"0", b"0"], 0),
        ([b"3600, 3600"], 3600),
        ([b"2147483648"], DELTA_MAX),
        ([b"2147483649"], DELTA_MAX),
    ],
)
def test_age_parsing_follows_rfc_9111_section_5_1(lines: list[bytes], age: int) -> None:
    headers = [(b"Age", line) for line in lines]
    assert age_value(headers) == age
    c = SharedCache(1 << 20, 1 << 20)
    c.store(req(), 200, origin(b"max-age=3600", *headers), BODY, T0, T0)
    assert c.lookup(req(), T0 + 1).kind is (Kind.FRESH if age < 3600 else Kind.STALE)


def test_corrected_initial_age_apparent_vs_age_plus_delay() -> None:
    # Date 10s before arrival: apparent age 10 beats Age 3 + delay 2.
    assert corrected_initial_age([(b"Date", date(T0 - 10)), (b"Age", b"3")], T0 - 2, T0) == 10
    # Age 20 + delay 2 beats apparent age 10.
    assert corrected_initial_age([(b"Date", date(T0 - 10)), (b"Age", b"20")], T0 - 2, T0) == 22
    # A Date in the future (clock skew) gives apparent age 0, not negative.
    assert corrected_initial_age([(b"Date", date(T0 + 50))], T0, T0) == 0
    assert date_value([], T0 + 1) == T0 + 1


def test_current_age_adds_resident_time() -> None:
    assert current_age(12.0, T0, T0 + 30) == 42
    assert current_age(12.0, T0, T0 - 5) == 12


# --- storability ----------------------------------------------------------------------------------------------------


def why(
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    method: str = "GET",
    rh: dict[bytes, bytes] | None = None,
) -> str:
    return unstorable_reason(method, status, rh or {}, headers if headers is not None else origin())


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, ""),
        ({"method": "HEAD"}, "method"),
        ({"method": "POST"}, "method"),
        ({"status": 206}, "partial"),
        ({"status": 299}, ""),
        ({"status": 299, "headers": origin(b"max-age=60, must-understand")}, "status"),
        ({"status": 299, "headers": origin(None)}, "no-freshness"),
        ({"status": 304}, "status"),
        ({"headers": origin(b"max-age=60, No-Store")}, "no-store"),
        ({"rh": {b"cache-control": b"no-store"}}, "no-store"),
        ({"headers": origin(b"max-age=60, no-store, must-understand")}, ""),
        ({"headers": origin(b"max-age=60, private")}, "private"),
        ({"headers": origin(b'max-age=60, private="Set-Cookie"')}, "private"),
        ({"headers": origin(b"max-age=60", (b"Vary", b"Accept, *"))}, "vary-star"),
        ({"rh": {b"authorization": b"Bearer x"}}, "authorization"),
        ({"rh": {b"authorization": b"x"}, "headers": origin(b"max-age=60, public")}, ""),
        ({"rh": {b"authorization": b"x"}, "headers": origin(b"s-maxage=60")}, ""),
        ({"rh": {b"authorization": b"x"}, "headers": origin(b"max-age=60, must-revalidate")}, ""),
        ({"headers": origin(b"max-age=60", (b"Set-Cookie", b"s=1"))}, "set-cookie"),
        ({"headers": origin(b"public, max-age=60", (b"Set-Cookie", b"s=1"))}, ""),
        ({"headers": origin(None)}, "no-freshness"),
        ({"headers": origin(None, (b"ETag", b'"x"'))}, ""),
        ({"headers": origin(None, (b"Last-Modified", date(T0 - 9)))}, ""),
        ({"headers": origin(None, (b"Expires", date(T0 + 9)))}, ""),
        ({"headers": origin(b"no-cache", (b"ETag", b'"x"'))}, ""),
        ({"headers": origin(b"public")}, ""),
        ({"status": 302, "headers": origin(None, (b"ETag", b'"x"'))}, "no-freshness"),
        ({"status": 503, "headers": origin(b"max-age=5")}, ""),
    ],
)
def test_unstorable_reason(kwargs: dict[str, Any], reason: str) -> None:
    assert why(**kwargs) == reason


def test_storable_is_the_negation() -> None:
    assert storable("GET", 200, {}, origin())
    assert not storable("GET", 200, {}, origin(b"private"))


# --- reuse decisions ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "life", "response", "asked", "expected"),
    [
        (10, 60, "", "", (Kind.FRESH, "")),
        (60, 60, "", "", (Kind.STALE, "stale")),
        (10, 60, "", "no-cache", (Kind.STALE, "request")),
        (70, 60, "", "no-cache", (Kind.STALE, "stale")),
        (10, 60, "", "max-age=0", (Kind.STALE, "request")),
        (10, 60, "", "max-age=10", (Kind.FRESH, "")),
        (10, 60, "", "max-age=9", (Kind.STALE, "request")),
        (10, 60, "", "min-fresh=50", (Kind.FRESH, "")),
        (10, 60, "", "min-fresh=51", (Kind.STALE, "request")),
        (70, 60, "", "max-stale=10", (Kind.FRESH, "")),
        (71, 60, "", "max-stale=10", (Kind.STALE, "stale")),
        (5000, 60, "", "max-stale", (Kind.FRESH, "")),
        (70, 60, "must-revalidate", "max-stale", (Kind.STALE, "stale")),
        (70, 60, "proxy-revalidate", "max-stale", (Kind.STALE, "stale")),
        (70, 60, "s-maxage=60", "max-stale", (Kind.STALE, "stale")),
        (10, 60, "no-cache", "", (Kind.STALE, "stale")),
        (10, 60, 'no-cache="set-cookie"', "", (Kind.STALE, "stale")),
        (80, 60, "stale-while-revalidate=20", "", (Kind.STALE_WHILE_REVALIDATE, "")),
        (81, 60, "stale-while-revalidate=20", "", (Kind.STALE, "stale")),
        (80, 60, "s-maxage=60, stale-while-revalidate=20", "", (Kind.STALE_WHILE_REVALIDATE, "")),
        (80, 60, "must-revalidate, stale-while-revalidate=20", "", (Kind.STALE, "stale")),
        (80, 60, "stale-while-revalidate=20", "max-age=70", (Kind.STALE, "stale")),
        (70, 60, "", "only-if-cached", (Kind.ONLY_IF_CACHED, "stale")),
        (10, 60, "", "only-if-cached", (Kind.FRESH, "")),
        (10, 60, "", "only-if-cached, no-cache", (Kind.ONLY_IF_CACHED, "request")),
        (70, 60, "", "only-if-cached, max-stale=20", (Kind.FRESH, "")),
    ],
)
def test_reuse(age: float, life: float, response: str, asked: str, expected: tuple[Kind, str]) -> None:
    assert reuse(age, life, cc(response), cc(asked)) == expected


@pytest.mark.parametrize(
    ("age", "response", "asked", "allowed"),
    [
        (100, "stale-if-error=50", "", True),
        (111, "stale-if-error=50", "", False),
        (100, "", "stale-if-error=40", True),
        (100, "", "stale-if-error=39", False),
        (100, "stale-if-error=10", "stale-if-error=40", True),
        (100, "must-revalidate, stale-if-error=500", "stale-if-error=500", False),
        (100, "proxy-revalidate, stale-if-error=500", "", False),
        (100, "no-cache, stale-if-error=500", "", False),
        (100, "", "", False),
        (30, "stale-if-error=0", "", True),
    ],
)
def test_stale_if_error(age: float, response: str, asked: str, allowed: bool) -> None:
    assert stale_if_error_allowed(age, 60, cc(response), cc(asked)) is allowed


# --- cache_status ---------------------------------------------------------------------------------------------------


def test_cache_status_strings() -> None:
    assert cache_status(hit=True, ttl=42) == b"edgeward; hit; ttl=42"
    assert cache_status(fwd="uri-miss", stored=True) == b"edgeward; fwd=uri-miss; stored"
    assert cache_status(fwd="vary-miss") == b"edgeward; fwd=vary-miss"
    assert cache_status(fwd="stale", fwd_status=304) == b"edgeward; fwd=stale; fwd-status=304"
    assert cache_status(fwd="request") == b"edgeward; fwd=request"
    assert cache_status(hit=True, detail="stale-while-revalidate") == b"edgeward; hit; detail=stale-while-revalidate"
    assert cache_status(fwd="uri-miss", collapsed=True) == b"edgeward; fwd=uri-miss; collapsed"


def test_lookup_status_strings() -> None:
    assert Lookup(Kind.FRESH).status == "hit"
    assert Lookup(Kind.STALE_WHILE_REVALIDATE).status == "hit; detail=stale-while-revalidate"
    assert Lookup(Kind.STALE, fwd="request").status == "fwd=request"
    assert Lookup(Kind.MISS, fwd="vary-miss").status == "fwd=vary-miss"
    assert Lookup(Kind.ONLY_IF_CACHED, fwd="uri-miss").status == "detail=only-if-cached"


# --- store and lookup -----------------------------------------------------------------------------------------------


def test_fresh_hit_counts_and_numbers() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c)
    found = c.lookup(req(), T0 + 15)
    assert (found.kind, found.entry, found.fwd, found.age, found.ttl) == (Kind.FRESH, entry, "", 15, 45)
    assert (c.hits, c.misses, c.stores) == (1, 0, 1)
    assert c.lookup(req(), T0 + 60).kind is Kind.STALE
    assert (c.hits, c.misses) == (1, 1)


def test_key_is_scheme_host_path_query() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    stored(c, req(query=b"x=1"))
    assert primary_key(req(query=b"x=1")) == ("https", "example.com", b"/a", b"x=1")
    assert c.lookup(req(query=b"x=1", host="EXAMPLE.com"), T0).kind is Kind.FRESH
    for other in (req(), req(query=b"x=2"), req(query=b"x=1", scheme="http"), req(query=b"x=1", host="b.example")):
        found = c.lookup(other, T0)
        assert (found.kind, found.fwd) == (Kind.MISS, "uri-miss")


def test_head_is_answered_from_get_and_never_stored() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    assert c.store(req(method="HEAD"), 200, origin(), b"", T0, T0) is None
    entry = stored(c)
    assert c.lookup(req(method="HEAD"), T0).entry is entry


def test_unsafe_methods_and_disabled_cache_bypass() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    stored(c)
    assert c.lookup(req(method="POST"), T0) == Lookup(Kind.MISS, fwd="method")
    off = SharedCache(0, 1 << 20)
    assert off.store(req(), 200, origin(), BODY, T0, T0) is None
    assert off.lookup(req(), T0) == Lookup(Kind.MISS, fwd="bypass")
    assert len(off) == 0


def test_authorization_rule_through_store() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    authed = req(headers={b"authorization": b"Bearer t"})
    assert c.store(authed, 200, origin(b"max-age=60"), BODY, T0, T0) is None
    assert c.store(authed, 200, origin(b"max-age=60, public"), BODY, T0, T0) is not None


def test_request_no_store_is_not_stored_but_may_be_served() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    assert c.store(req(headers={b"cache-control": b"no-store"}), 200, origin(), BODY, T0, T0) is None
    stored(c)
    assert c.lookup(req(headers={b"cache-control": b"no-store"}), T0 + 1).kind is Kind.FRESH


def test_vary_selects_variants_and_normalises() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    vary = (b"Vary", b"Accept-Encoding, X-Tenant")
    gz = stored(c, req(headers={b"accept-encoding": b"gzip, br", b"x-tenant": b"A"}), b"max-age=60", vary)
    plain = stored(c, req(headers={b"x-tenant": b"A"}), b"max-age=60", vary)
    assert gz.vary == ((b"accept-encoding", b"gzip,br"), (b"x-tenant", b"A"))
    assert c.lookup(req(headers={b"accept-encoding": b"GZIP ,BR", b"x-tenant": b"A"}), T0).entry is gz
    assert c.lookup(req(headers={b"x-tenant": b"A"}), T0).entry is plain
    miss = c.lookup(req(headers={b"accept-encoding": b"gzip, br", b"x-tenant": b"a"}), T0)
    assert (miss.kind, miss.fwd) == (Kind.MISS, "vary-miss")
    assert len(c) == 2


def test_vary_on_absent_field_and_new_vary_replaces_plain_entry() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    plain = stored(c)
    absent = stored(c, req(), b"max-age=60", (b"Vary", b"Cookie"))
    assert not plain.cached and len(c) == 1  # the request that stored `absent` also selected `plain`
    assert absent.vary == ((b"cookie", None),)
    assert c.lookup(req(), T0).entry is absent
    assert c.lookup(req(headers={b"cookie": b""}), T0).fwd == "vary-miss"
    assert c.lookup(req(headers={b"cookie": b"s=1"}), T0).fwd == "vary-miss"


def test_same_variant_is_replaced() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    first = stored(c, req(headers={b"accept": b"text/html"}), b"max-age=60", (b"Vary", b"Accept"))
    second = stored(c, req(headers={b"accept": b"TEXT/HTML"}), b"max-age=99", (b"Vary", b"Accept"))
    assert len(c) == 1
    assert c.bytes == second.size
    assert not first.cached
    assert c.lookup(req(headers={b"accept": b"text/html"}), T0).entry is second


def test_variants_per_uri_are_capped() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entries = [
        stored(c, req(headers={b"x-v": b"%d" % i}), b"max-age=60", (b"Vary", b"X-V"))
        for i in range(cache_mod.MAX_VARIANTS + 1)
    ]
    assert len(c) == cache_mod.MAX_VARIANTS
    assert not entries[0].cached
    assert c.evictions == 1
    assert c.lookup(req(headers={b"x-v": b"0"}), T0).fwd == "vary-miss"


def test_lru_by_bytes_evicts_least_recently_used() -> None:
    body = b"x" * 1000
    probe = SharedCache(1 << 20, 1 << 20)
    size = stored(probe, body=body).size
    assert size == 1000 + sum(len(n) + len(v) + 4 for n, v in stored(probe, body=body).headers)
    c = SharedCache(3 * size, 1 << 20)
    a = stored(c, req(b"/a"), body=body)
    b = stored(c, req(b"/b"), body=body)
    stored(c, req(b"/c"), body=body)
    assert c.bytes == 3 * size
    assert c.lookup(req(b"/a"), T0).kind is Kind.FRESH  # /a becomes most recently used
    stored(c, req(b"/d"), body=body)
    assert not b.cached and a.cached
    assert c.lookup(req(b"/b"), T0).fwd == "uri-miss"
    assert (c.evictions, c.bytes, len(c)) == (1, 3 * size, 3)


def test_object_limits() -> None:
    c = SharedCache(1 << 20, 100)
    assert c.store(req(), 200, origin(), b"x" * 101, T0, T0) is None
    assert c.store(req(), 200, origin(), b"x" * 100, T0, T0) is not None
    tiny = SharedCache(50, 1000)
    assert tiny.store(req(), 200, origin(), b"x" * 40, T0, T0) is None  # body fits, headers push it past max_bytes
    assert tiny.bytes == 0


def test_stored_headers_drop_hop_by_hop_date_age_server_and_fix_length() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    headers = [
        (b"Date", date(T0)),
        (b"Server", b"origin/1"),
        (b"Age", b"5"),
        (b"Connection", b"close, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Keep-Alive", b"timeout=5"),
        (b"content-length", b"999"),
        (b"Cache-Control", b"max-age=60"),
        (b"X-Custom", b"Kept"),
    ]
    entry = c.store(req(), 200, headers, BODY, T0, T0)
    assert entry is not None
    assert entry.headers == [
        (b"Cache-Control", b"max-age=60"),
        (b"X-Custom", b"Kept"),
        (b"Content-Length", b"12"),
    ]
    assert entry.initial_age == 5  # the origin's Age still counts though the field is not kept


def test_only_if_cached() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    oic = {b"cache-control": b"only-if-cached"}
    assert c.lookup(req(headers=oic), T0) == Lookup(Kind.ONLY_IF_CACHED, fwd="uri-miss")
    stored(c)
    assert c.lookup(req(headers=oic), T0 + 10).kind is Kind.FRESH
    assert c.lookup(req(headers=oic), T0 + 61).kind is Kind.ONLY_IF_CACHED


def test_lookup_stale_while_revalidate_and_request_directives() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    stored(c, None, b"max-age=60, stale-while-revalidate=30")
    found = c.lookup(req(), T0 + 80)
    assert (found.kind, found.ttl, found.age) == (Kind.STALE_WHILE_REVALIDATE, -20, 80)
    assert c.lookup(req(), T0 + 91).kind is Kind.STALE
    no_cache = c.lookup(req(headers={b"cache-control": b"no-cache"}), T0 + 5)
    assert (no_cache.kind, no_cache.fwd) == (Kind.STALE, "request")
    assert c.lookup(req(headers={b"cache-control": b"max-stale=40"}), T0 + 100).kind is Kind.FRESH


def test_conditional_headers() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    both = stored(c, req(b"/1"), b"max-age=1", (b"ETag", b'"v1"'), (b"Last-Modified", date(T0 - 100)))
    assert c.conditional_headers(both) == [(b"If-None-Match", b'"v1"'), (b"If-Modified-Since", date(T0 - 100))]
    assert c.conditional_headers(stored(c, req(b"/2"))) == []


def test_stale_if_error_ok_uses_entry_and_request() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c, None, b"max-age=60, stale-if-error=30")
    assert c.stale_if_error_ok(entry, req(), T0 + 90)
    assert not c.stale_if_error_ok(entry, req(), T0 + 91)
    assert c.stale_if_error_ok(entry, req(headers={b"cache-control": b"stale-if-error=100"}), T0 + 160)
    strict = stored(c, req(b"/s"), b"max-age=60, must-revalidate, stale-if-error=30")
    assert not c.stale_if_error_ok(strict, req(b"/s"), T0 + 61)


# --- freshen --------------------------------------------------------------------------------------------------------


def test_freshen_updates_headers_and_restarts_age() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c, None, b"max-age=60", (b"ETag", b'"v1"'), (b"X-Old", b"1"))
    before = c.bytes
    assert c.lookup(req(), T0 + 100).kind is Kind.STALE
    update = [
        (b"Date", date(T0 + 100)),
        (b"cache-control", b"max-age=120"),
        (b"ETag", b'"v1"'),
        (b"X-New", b"2"),
        (b"Content-Length", b"0"),
        (b"Content-Encoding", b"gzip"),
        (b"Connection", b"keep-alive"),
    ]
    assert c.freshen(entry, update, T0 + 99, T0 + 100) is entry
    assert entry.headers == [
        (b"Content-Type", b"text/plain"),
        (b"X-Old", b"1"),
        (b"cache-control", b"max-age=120"),
        (b"ETag", b'"v1"'),
        (b"X-New", b"2"),
        (b"Content-Length", b"12"),
    ]
    assert (entry.lifetime, entry.initial_age, entry.response_time) == (120, 1, T0 + 100)
    found = c.lookup(req(), T0 + 110)
    assert (found.kind, found.age, found.ttl) == (Kind.FRESH, 11, 109)
    assert c.bytes == entry.size == before + len(b"X-New") + len(b"2") + 4 + 1  # "max-age=120" is one byte longer


def test_freshen_keeps_fields_that_describe_the_stored_bytes() -> None:
    # §3.2: a 304 cannot change the stored body, so neither may it change what describes its bytes.
    c = SharedCache(1 << 20, 1 << 20)
    kept = [
        (b"ETag", b'"v1"'),
        (b"Content-MD5", b"rL0Y20zC+Fzt72VPzMSk2A=="),
        (b"Content-Digest", b"sha-256=:a:"),
        (b"Repr-Digest", b"sha-256=:b:"),
        (b"Content-Encoding", b"gzip"),
        (b"X-Frame-Options", b"deny"),
    ]
    entry = stored(c, None, b"max-age=1", *kept)
    update = [
        (b"ETag", b'"v1"'),
        (b"Content-MD5", b"N7UdGUp1E+RbVvZSTy1R8g=="),
        (b"content-digest", b"sha-256=:c:"),
        (b"Repr-Digest", b"sha-256=:d:"),
        (b"Content-Encoding", b"br"),
        (b"X-Frame-Options", b"sameorigin"),
    ]
    c.freshen(entry, update, T0 + 5, T0 + 5)
    values = dict(entry.headers)
    assert values[b"Content-MD5"] == b"rL0Y20zC+Fzt72VPzMSk2A=="
    assert values[b"Content-Digest"] == b"sha-256=:a:" and b"content-digest" not in values
    assert values[b"Repr-Digest"] == b"sha-256=:b:"
    assert values[b"Content-Encoding"] == b"gzip"
    assert values[b"X-Frame-Options"] == b"sameorigin"  # anything else is taken from the 304


@pytest.mark.parametrize(
    ("stored_validators", "update", "selected"),
    [
        ([(b"ETag", b'"a"')], [(b"ETag", b'"a"')], True),
        ([(b"ETag", b'"a"')], [(b"ETag", b'"b"')], False),  # http-cache-tests 304-etag-update-response-ETag
        ([(b"ETag", b'W/"a"')], [(b"ETag", b'"a"')], False),  # a strong validator never names a weak one
        ([(b"ETag", b'"a"')], [(b"ETag", b'W/"a"')], True),  # weak comparison
        ([(b"ETag", b'W/"a"')], [(b"ETag", b'W/"a"')], True),
        ([(b"ETag", b'W/"a"')], [(b"ETag", b'W/"b"')], False),
        ([(b"Last-Modified", date(T0 - 9))], [(b"ETag", b'"a"')], False),
        ([(b"ETag", b'"a"')], [], False),  # the origin MUST send the ETag back (RFC 9110 §15.4.5)
        ([(b"ETag", b'"a"'), (b"Last-Modified", date(T0 - 9))], [(b"Last-Modified", date(T0 - 9))], True),
        ([(b"Last-Modified", date(T0 - 9))], [(b"Last-Modified", date(T0 - 9))], True),
        ([(b"Last-Modified", date(T0 - 9))], [(b"Last-Modified", date(T0 - 8))], False),
        ([(b"Last-Modified", date(T0 - 9))], [(b"Last-Modified", b"garbage")], False),
        ([(b"Last-Modified", date(T0 - 9))], [], True),  # Last-Modified is not required on a 304
        ([], [(b"Last-Modified", date(T0 - 9))], False),
        ([], [], True),
    ],
)
def test_freshen_only_updates_the_response_the_304_validates(
    stored_validators: list[tuple[bytes, bytes]], update: list[tuple[bytes, bytes]], selected: bool
) -> None:
    # §4.3.4: a 304 whose validator does not identify the stored response MUST NOT update it.
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c, None, b"max-age=1", *stored_validators)
    before = list(entry.headers)
    served = c.freshen(entry, [(b"Cache-Control", b"max-age=600"), *update], T0 + 5, T0 + 5)
    assert served is entry
    if selected:
        assert (entry.lifetime, entry.cached, len(c)) == (600, True, 1)
        assert c.lookup(req(), T0 + 10).kind is Kind.FRESH
    else:
        # Answered once as stored (the origin did say 304 to its validators), then fetched afresh.
        assert (entry.lifetime, entry.headers, entry.cached) == (1, before, False)
        assert (len(c), c.bytes) == (0, 0)
        assert c.lookup(req(), T0 + 10).fwd == "uri-miss"


def test_freshen_after_purge_does_not_reinsert_and_no_store_removes() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c)
    assert c.purge("*", "/a") == 1
    c.freshen(entry, [(b"Cache-Control", b"max-age=5")], T0, T0 + 1)
    assert (len(c), c.bytes, entry.lifetime) == (0, 0, 5)
    again = stored(c)
    c.freshen(again, [(b"Cache-Control", b"no-store")], T0, T0 + 1)
    assert (len(c), c.bytes, again.cached) == (0, 0, False)


# --- invalidation and purge -----------------------------------------------------------------------------------------


def test_invalidate_unsafe_success_target_and_same_origin_locations() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    for path in (b"/b", b"/c", b"/d"):
        stored(c, req(path))
    stored(c, req(b"/a", headers={b"x": b"1"}), b"max-age=60", (b"Vary", b"X"))
    stored(c, req(b"/a", headers={b"x": b"2"}), b"max-age=60", (b"Vary", b"X"))
    headers = [(b"Location", b"https://example.com/b"), (b"Content-Location", b"../c")]
    assert c.invalidate(req(b"/x/y", method="POST"), 201, headers) == 2  # /x/y not stored; /b and /c are
    assert {k[2] for k in c._index} == {b"/a", b"/d"}
    assert c.invalidate(req(b"/a", method="DELETE"), 204, []) == 2  # both variants
    assert {k[2] for k in c._index} == {b"/d"}


def test_invalidate_ignores_other_origins_errors_and_safe_methods() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    stored(c, req(b"/b"))
    stored(c, req(b"/p"))
    assert c.invalidate(req(b"/p", method="PUT"), 200, [(b"Location", b"https://other.example/b")]) == 1
    assert c.invalidate(req(b"/b", method="PUT"), 500, []) == 0
    assert c.invalidate(req(b"/b", method="PUT"), 404, []) == 0
    assert c.invalidate(req(b"/b"), 200, []) == 0
    assert c.invalidate(req(b"/x", method="PATCH"), 200, [(b"Content-Location", b"http://example.com/b")]) == 0
    assert len(c) == 1


def test_purge_exact_query_prefix_and_host() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    stored(c, req(b"/img/a.png"))
    stored(c, req(b"/img/a.png", query=b"v=2"))
    stored(c, req(b"/img/b.png"))
    stored(c, req(b"/img/b.png", host="other.example"))
    stored(c, req(b"/index.html"))
    assert c.purge("example.com", "/img/a.png?v=2") == 1
    assert c.purge("EXAMPLE.COM", "/img/a.png") == 1
    assert c.purge("nobody.example", "/img/", prefix=True) == 0
    assert c.purge("", "/img/", prefix=True) == 2
    assert c.purge("*", "/index.html") == 1
    assert (len(c), c.bytes) == (0, 0)


# --- respond --------------------------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock("edgeward")


def test_respond_wire_is_exact_and_headers_match(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c, None, b"max-age=60", (b"ETag", b'"v1"'))
    response = c.respond(entry, req(), T0 + 15, clock, c.lookup(req(), T0 + 15).status)
    fields = [
        (b"Content-Type", b"text/plain"),
        (b"Cache-Control", b"max-age=60"),
        (b"ETag", b'"v1"'),
        (b"Content-Length", b"12"),
        (b"Age", b"15"),
        (b"Cache-Status", b"edgeward; hit; ttl=45"),
    ]
    assert response.status == 200
    assert response.headers == fields
    assert response.body == BODY
    block = b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    # The origin's Date, not the clock's (RFC 9110 §6.6.1); Server as on every answer.
    head = b"HTTP/1.1 200 OK\r\nDate: " + date(T0) + b"\r\nServer: edgeward\r\n"
    assert response.wire == head + block + b"\r\n" + BODY
    assert response.wire.count(b"Date: ") == 1


def test_respond_sends_the_stored_date_and_a_304_updates_it(clock: Clock) -> None:
    # http-cache-tests other-date-update: a hit keeps the origin's Date (RFC 9110 §6.6.1), Age says how old it is.
    c = SharedCache(1 << 20, 1 << 20)
    entry = c.store(req(), 200, origin(b"max-age=1", (b"ETag", b'"v1"'), at=T0 - 4), BODY, T0, T0)
    assert entry is not None
    hit = c.respond(entry, req(), T0 + 1, clock)
    assert hit.wire is not None and hit.wire.startswith(b"HTTP/1.1 200 OK\r\nDate: " + date(T0 - 4) + b"\r\n")
    assert (b"Age", b"5") in hit.headers
    # Date is not among the fields: the protocols that serialise them add the clock's Date themselves.
    assert all(n.lower() != b"date" for n, _ in hit.headers)
    # A 304 replaces the stored Date (§4.3.4) ...
    c.freshen(entry, [(b"Date", date(T0 + 7)), (b"ETag", b'"v1"'), (b"Cache-Control", b"max-age=60")], T0 + 8, T0 + 8)
    assert entry.date_field == date(T0 + 7)
    assert c.respond(entry, req(), T0 + 9, clock).wire.startswith(b"HTTP/1.1 200 OK\r\nDate: " + date(T0 + 7))
    # ... and one without Date is dated when it arrived, as is a response without a usable Date.
    c.freshen(entry, [(b"ETag", b'"v1"')], T0 + 20, T0 + 21)
    assert entry.date_field == date(T0 + 21)
    undated = c.store(req(b"/u"), 200, [(b"Cache-Control", b"max-age=9"), (b"Date", b"yesterday")], BODY, T0, T0 + 2)
    assert undated is not None and undated.date_field == date(T0 + 2)
    # An obsolete date format is sent as IMF-fixdate.
    rfc850 = c.store(req(b"/o"), 200, [(b"Cache-Control", b"max-age=9"), (b"Date", b"Sunday, 06-Nov-94 08:49:37 GMT")],
                     BODY, T0, T0)  # fmt: skip
    assert rfc850 is not None and rfc850.date_field == b"Sun, 06 Nov 1994 08:49:37 GMT"


def test_respond_memoised_per_tick(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c)
    first = c.respond(entry, req(), T0 + 1, clock, "hit")
    again = c.respond(entry, req(), T0 + 1.5, clock, "hit")
    assert again is first and again.wire is first.wire
    swr = c.respond(entry, req(), T0 + 1, clock, "hit; detail=stale-while-revalidate")
    assert swr is not first and (b"Cache-Status", b"edgeward; hit; detail=stale-while-revalidate") in swr.headers
    clock.advance()
    later = c.respond(entry, req(), T0 + 2, clock, "hit")
    assert later is not first
    assert (b"Age", b"2") in later.headers and (b"Cache-Status", b"edgeward; hit; ttl=58") in later.headers
    assert c.respond(entry, req(), T0 + 2, clock, "hit") is later


def test_respond_memo_dropped_when_tick_moves_and_on_freshen(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c)
    other = stored(c, req(b"/other"))
    c.respond(entry, req(), T0, clock)
    c.respond(other, req(b"/other"), T0, clock, HIT_STALE_IF_ERROR)
    assert entry.memo and other.memo
    clock.advance()
    c.respond(entry, req(), T0 + 1, clock)
    assert not other.memo  # not hit this tick: its bytes are let go
    first = c.respond(entry, req(), T0 + 1, clock)
    c.freshen(entry, [(b"X-After", b"1")], T0 + 1, T0 + 1)
    rebuilt = c.respond(entry, req(), T0 + 1, clock)
    assert rebuilt is not first and (b"X-After", b"1") in rebuilt.headers


def test_respond_head_has_no_body_and_own_memo(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c)
    get = c.respond(entry, req(), T0, clock)
    head = c.respond(entry, req(method="HEAD"), T0, clock)
    assert head is not get
    assert head.body == b""
    assert head.headers == get.headers
    assert get.wire is not None and head.wire == get.wire[: -len(BODY)]
    assert c.respond(entry, req(method="HEAD"), T0, clock) is head


def test_respond_conditional_304(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    modified = date(T0 - 100)
    entry = stored(c, None, b"max-age=60", (b"ETag", b'"v1"'), (b"Last-Modified", modified), (b"Vary", b"Accept"))
    for headers in (
        {b"if-none-match": b'W/"v1", "v0"'},
        {b"if-none-match": b"*"},
        {b"if-modified-since": modified},
        {b"if-modified-since": date(T0)},
    ):
        response = c.respond(entry, req(headers=headers), T0 + 5, clock, "hit")
        assert response.status == 304, headers
        assert response.body == b""
        assert response.headers == [
            (b"Cache-Control", b"max-age=60"),
            (b"ETag", b'"v1"'),
            (b"Last-Modified", modified),
            (b"Vary", b"Accept"),
            (b"Age", b"5"),
            (b"Cache-Status", b"edgeward; hit; ttl=55"),
        ]
        head = b"HTTP/1.1 304 Not Modified\r\nDate: " + date(T0) + b"\r\nServer: edgeward\r\n"
        assert response.wire is not None and response.wire.startswith(head)
        assert response.wire.endswith(b"\r\n\r\n")
    for headers in (
        {b"if-none-match": b'"v2"'},
        {b"if-none-match": b'"v2"', b"if-modified-since": date(T0)},  # If-None-Match wins
        {b"if-modified-since": date(T0 - 101)},
        {b"if-modified-since": b"garbage"},
    ):
        assert c.respond(entry, req(headers=headers), T0 + 5, clock).status == 200, headers


def test_respond_if_modified_since_falls_back_to_date(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c)
    assert c.respond(entry, req(headers={b"if-modified-since": date(T0)}), T0, clock).status == 304
    assert c.respond(entry, req(headers={b"if-modified-since": date(T0 - 1)}), T0, clock).status == 200


def test_respond_revalidated_status(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c, None, b"max-age=0", (b"ETag", b'"v1"'))
    found = c.lookup(req(), T0 + 3)
    assert (found.kind, found.status) == (Kind.STALE, "fwd=stale")
    c.freshen(entry, [(b"Date", date(T0 + 3)), (b"Cache-Control", b"max-age=10"), (b"ETag", b'"v1"')], T0 + 3, T0 + 3)
    response = c.respond(entry, req(), T0 + 3, clock, found.status + "; fwd-status=304")
    assert response.headers[-2:] == [(b"Age", b"0"), (b"Cache-Status", b"edgeward; fwd=stale; fwd-status=304")]


# --- singleflight ---------------------------------------------------------------------------------------------------


def test_flights_one_leader_many_waiters() -> None:
    async def main() -> tuple[list[bool], list[str], int]:
        flights: Flights[str] = Flights()
        joined = [flights.join("k") for _ in range(10)]
        leaders = [f is None for f in joined]
        futures = [f for f in joined if f is not None]
        assert len(flights) == 1
        flights.done("k", "stored")
        results = await asyncio.gather(*futures)
        return leaders, list(results), len(flights)

    leaders, results, left = asyncio.run(main())
    assert leaders == [True] + [False] * 9
    assert results == ["stored"] * 9
    assert left == 0


def test_flights_concurrent_tasks_and_failure() -> None:
    async def main() -> tuple[int, list[object]]:
        flights: Flights[int] = Flights()
        led = 0

        async def request() -> object:
            nonlocal led
            waiter = flights.join(("https", "example.com", b"/a", b""))
            if waiter is None:
                led += 1
                await asyncio.sleep(0)
                flights.fail(("https", "example.com", b"/a", b""), RuntimeError("origin down"))
                return "leader"
            try:
                return await waiter
            except RuntimeError as exc:
                return str(exc)

        results = await asyncio.gather(*(request() for _ in range(5)))
        return led, list(results)

    led, results = asyncio.run(main())
    assert led == 1
    assert results == ["leader"] + ["origin down"] * 4


def test_flights_cancelled_waiter_does_not_affect_others() -> None:
    async def main() -> tuple[bool, int]:
        flights: Flights[int] = Flights()
        assert flights.join("k") is None
        a = flights.join("k")
        b = flights.join("k")
        assert a is not None and b is not None
        a.cancel()
        flights.done("k", 7)
        flights.done("k", 8)  # a second end is harmless
        return a.cancelled(), await b

    assert asyncio.run(main()) == (True, 7)


# --- the hit fast path ----------------------------------------------------------------------------------------------


def test_hit_gives_what_lookup_and_respond_give(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    request = req(host="example.com")
    entry = stored(c, request)
    fast = c.hit(request, T0 + 1, clock)
    assert fast is not None
    lookup = c.lookup(request, T0 + 1)
    assert lookup.kind is Kind.FRESH
    assert c.respond(entry, request, T0 + 1, clock, lookup.status) is fast
    assert c.hit(req(host="example.com", method="HEAD"), T0 + 1, clock) is c.respond(
        entry, req(host="example.com", method="HEAD"), T0 + 1, clock
    )
    assert c.hits == 3


@pytest.mark.parametrize(
    ("headers", "cache_control", "at"),
    [
        ({b"cache-control": b"max-age=0"}, b"max-age=60", T0 + 1),  # client directives: the full path decides
        ({b"pragma": b"no-cache"}, b"max-age=60", T0 + 1),
        ({b"if-none-match": b'"x"'}, b"max-age=60", T0 + 1),
        ({b"range": b"bytes=0-1"}, b"max-age=60", T0 + 1),  # a 206 is built per request
        ({}, b"max-age=60, no-cache", T0 + 1),  # always revalidated
        ({}, b"max-age=60", T0 + 60),  # stale
    ],
)
def test_hit_leaves_everything_else_to_lookup(
    clock: Clock, headers: dict[bytes, bytes], cache_control: bytes, at: float
) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    stored(c, req(host="example.com"), cache_control)
    assert c.hit(req(host="example.com", headers=headers), at, clock) is None


def test_hit_honours_vary(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    english = req(host="example.com", headers={b"accept-language": b"en"})
    stored(c, english, b"max-age=60", (b"Vary", b"Accept-Language"))
    assert c.hit(english, T0 + 1, clock) is not None
    assert c.hit(req(host="example.com", headers={b"accept-language": b"fr"}), T0 + 1, clock) is None


# --- targeted fields (RFC 9213, Surrogate-Control) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("max-age=60, no-store", {"max-age": 60, "no-store": True}),
        ('no-cache="set-cookie, x", a=?0, b=?1', {"no-cache": "set-cookie, x", "a": False, "b": True}),
        ("max-age=1.5, t=tok/en:x, c=:aGk=:", {"max-age": "1.5", "t": "tok/en:x", "c": b"hi"}),
        ('max-age=60;for-me;x=1, l=(1 "a");p', {"max-age": 60, "l": [1, "a"]}),  # parameters are dropped
        ("max-age=1, max-age=2", {"max-age": 2}),  # the last of a key wins (RFC 8941 §4.2.2)
        ("  max-age=-5  ", {"max-age": -5}),
        ("", {}),
    ],
)
def test_sf_dictionary_parses(text: str, parsed: dict[str, object]) -> None:
    assert parse_sf_dictionary(text) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "Max-Age=60",  # keys are lower-case
        "max-age =60",
        "max-age= 60",
        "max-age=60,",
        "max-age=60;",
        "max-age=60 no-store",
        "max-age=1234567890123456",  # more than 15 digits
        "max-age=1.2345",
        'x="unterminated',
        'x="bad \\n escape"',
        "x=@1659578233.5",  # a Date is an integer
        "max-age=caf\u00e9",  # not ASCII
        "x=(1 2",
        "x=:not base64!:",
    ],
)
def test_sf_dictionary_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_sf_dictionary(text)


def policy(*headers: tuple[bytes, bytes], targeting: Targeting = DEFAULT_TARGETING) -> tuple[dict[str, Any], bool]:
    cc, targeted = targeting.policy(list(headers))
    return dict(cc.directives), targeted


def test_targeted_field_replaces_cache_control() -> None:
    assert policy((b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"max-age=600")) == (
        {"max-age": ("600",)},
        True,
    )
    # Without one, or with the feature off, Cache-Control decides.
    assert policy((b"Cache-Control", b"max-age=5")) == ({"max-age": ("5",)}, False)
    off = policy((b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"max-age=600"), targeting=NO_TARGETING)
    assert off == ({"no-store": (None,)}, False)
    # A field not on the target list changes nothing (RFC 9213 §2.2).
    assert policy((b"Cache-Control", b"no-store"), (b"Other-Cache-Control", b"max-age=600"))[1] is False


def test_targeted_fields_in_target_list_order_first_valid_wins() -> None:
    both = ((b"Surrogate-Control", b"max-age=30"), (b"CDN-Cache-Control", b"max-age=600"))
    assert policy(*both)[0] == {"max-age": ("600",)}
    surrogate_first = Targeting.of(["Surrogate-Control", "CDN-Cache-Control"], "edgeward")
    assert policy(*both, targeting=surrogate_first)[0] == {"max-age": ("30",)}
    # An invalid or empty field is skipped as if absent; so is a Surrogate-Control with nothing for this cache.
    assert policy((b"CDN-Cache-Control", b"Max-Age=600"), both[0])[0] == {"max-age": ("30",)}
    assert policy((b"CDN-Cache-Control", b""), both[0])[0] == {"max-age": ("30",)}
    elsewhere = policy((b"Cache-Control", b"max-age=5"), (b"Surrogate-Control", b"max-age=60;othercdn"))
    assert elsewhere == ({"max-age": ("5",)}, False)


def test_targeted_values_of_the_wrong_kind_are_not_coerced() -> None:
    directives = policy((b"CDN-Cache-Control", b"max-age=1.5, no-store=?0, private=:aGk=:"))[0]
    assert directives == {"max-age": ("1.5",), "private": ("",)}
    assert CacheControl(directives).seconds("max-age") == 0  # invalid: stale, as in Cache-Control


def test_surrogate_control_targeting_and_syntax() -> None:
    sc = b"Surrogate-Control"
    # Members for this cache's token win over untargeted ones; other devices' members never apply.
    assert policy((sc, b"no-store, max-age=60;EdgeWard, max-age=5;othercdn"))[0] == {"max-age": ("60",)}
    assert policy((sc, b"max-age=60, no-store;othercdn"))[0] == {"max-age": ("60",)}
    # Names are case-insensitive; a malformed member is dropped alone; `+extension` is not applied.
    assert policy((sc, b'MaX-AgE=60+600, max-age =100, content="ESI/1.0, x"'))[0] == {
        "max-age": ("60",),
        "content": ("ESI/1.0, x",),
    }
    assert policy((sc, b"no-store-remote"))[0] == {"no-store": (None,)}
    # Without a token of its own the cache follows untargeted members only.
    tokenless = Targeting.of(["Surrogate-Control"], "")
    assert policy((sc, b"max-age=60;edgeward, max-age=5"), targeting=tokenless)[0] == {"max-age": ("5",)}
    assert tokenless.capability is None
    assert DEFAULT_TARGETING.capability == b'edgeward="Surrogate/1.0"'
    assert Targeting.of(["CDN-Cache-Control"], "edgeward").capability is None


def test_targeted_field_keeps_cache_control_private() -> None:
    """A site-wide CDN field must not make one user's answer (Cache-Control: private) reusable for others."""
    directives, targeted = policy((b"Cache-Control", b"private"), (b"CDN-Cache-Control", b"max-age=600"))
    assert targeted and directives == {"max-age": ("600",), "private": (None,)}
    c = SharedCache(1 << 20, 1 << 20)
    assert c.unstorable_reason(req(), 200, [(b"Cache-Control", b"private"), (b"CDN-Cache-Control", b"max-age=60")])
    assert c.unstorable_reason(req(), 200, [(b"Surrogate-Control", b"private, max-age=60")]) == "private"
    assert (
        c.unstorable_reason(req(), 200, [(b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"max-age=60")]) == ""
    )


def test_targeted_field_alone_allows_authorization_and_set_cookie() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    auth = req(headers={b"authorization": b"Bearer x"})
    public_cc = [(b"Cache-Control", b"public, max-age=60"), (b"CDN-Cache-Control", b"max-age=60")]
    assert c.unstorable_reason(auth, 200, public_cc) == "authorization"
    assert c.unstorable_reason(auth, 200, [(b"CDN-Cache-Control", b"public, max-age=60")]) == ""
    cookie = [(b"Set-Cookie", b"a=b"), (b"Cache-Control", b"s-maxage=60"), (b"CDN-Cache-Control", b"max-age=60")]
    assert c.unstorable_reason(req(), 200, cookie) == "set-cookie"
    assert c.unstorable_reason(req(), 200, [(b"Set-Cookie", b"a=b"), (b"Surrogate-Control", b"s-maxage=60")]) == ""
    assert c.unstorable_reason(req(headers={b"cache-control": b"no-store"}), 200, public_cc[1:]) == "no-store"


def test_targeted_field_ignores_expires() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    expires = (b"Expires", date(T0 + 600))
    entry = c.store(req(), 200, [(b"Date", date(T0)), (b"Surrogate-Control", b"max-age=0"), expires], BODY, T0, T0)
    assert entry is not None and entry.lifetime == 0
    # Stored on Expires alone only when no targeted field is in force.
    assert c.unstorable_reason(req(), 200, [(b"Date", date(T0)), (b"CDN-Cache-Control", b"none"), expires])
    assert not c.unstorable_reason(req(), 200, [(b"Date", date(T0)), expires])
    # Age still counts against a targeted max-age.
    aged = c.store(req(b"/aged"), 200, [(b"Surrogate-Control", b"max-age=3600"), (b"Age", b"7200")], BODY, T0, T0)
    assert aged is not None and c.lookup(req(b"/aged"), T0).kind is Kind.STALE


def test_surrogate_control_consumed_downstream_others_passed_on(clock: Clock) -> None:
    headers = [
        (b"Surrogate-Control", b"max-age=60, no-store;othercdn"),
        (b"CDN-Cache-Control", b"max-age=60"),
        (b"Cache-Control", b"no-store"),
    ]
    assert DEFAULT_TARGETING.downstream(headers) == [
        (b"Surrogate-Control", b"no-store;othercdn"),
        (b"CDN-Cache-Control", b"max-age=60"),
        (b"Cache-Control", b"no-store"),
    ]
    assert DEFAULT_TARGETING.downstream([(b"surrogate-control", b"max-age=60;EDGEWARD, no-store")]) == []
    assert NO_TARGETING.downstream(headers) is headers
    # Stored, the field still rules the entry, but a hit does not send it.
    c = SharedCache(1 << 20, 1 << 20)
    entry = c.store(req(), 200, [(b"Surrogate-Control", b"max-age=60"), (b"Cache-Control", b"no-store")], BODY, T0, T0)
    assert entry is not None and entry.lifetime == 60
    hit = c.respond(entry, req(), T0 + 1, clock)
    assert [n for n, _ in hit.headers] == [b"Cache-Control", b"Content-Length", b"Age", b"Cache-Status"]
    assert hit.wire is not None and b"Surrogate-Control" not in hit.wire


def test_freshen_takes_a_new_targeted_policy() -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c, None, b"no-store", (b"Surrogate-Control", b"max-age=1"), (b"ETag", b'"v"'))
    assert entry.lifetime == 1
    c.freshen(entry, [(b"ETag", b'"v"'), (b"Surrogate-Control", b"max-age=300")], T0 + 5, T0 + 5)
    assert entry.lifetime == 300 and entry.cached
    c.freshen(entry, [(b"ETag", b'"v"'), (b"Surrogate-Control", b"no-store")], T0 + 6, T0 + 6)
    assert not entry.cached and len(c) == 0


def test_cache_without_targeting_follows_cache_control_only() -> None:
    c = SharedCache(1 << 20, 1 << 20, NO_TARGETING)
    headers = [(b"Cache-Control", b"no-store"), (b"Surrogate-Control", b"max-age=60")]
    assert c.store(req(), 200, headers, BODY, T0, T0) is None
    entry = c.store(
        req(b"/b"), 200, [(b"Cache-Control", b"max-age=5"), (b"CDN-Cache-Control", b"no-store")], BODY, T0, T0
    )
    assert entry is not None and entry.lifetime == 5
    assert (b"CDN-Cache-Control", b"no-store") in entry.sent


def test_default_targeting_is_the_config_default() -> None:
    settings = CacheSettings()
    assert Targeting.of(settings.targeted_fields, settings.surrogate_token) == DEFAULT_TARGETING
    assert DEFAULT_TARGETING.fields == (b"cdn-cache-control", b"surrogate-control")


# --- ranges from a stored response ----------------------------------------------------------------------------------

DIGITS = b"0123456789A"


def ranged(c: SharedCache, clock: Clock, entry: Entry, **headers: bytes) -> Response:
    request = req(headers={k.replace("_", "-").encode(): v for k, v in headers.items()})
    return c.respond(entry, request, T0 + 1, clock, "hit")


@pytest.mark.parametrize(
    ("spec", "content_range", "part"),
    [
        (b"bytes=0-1", b"bytes 0-1/11", b"01"),
        (b"bytes=1-", b"bytes 1-10/11", b"123456789A"),
        (b"bytes=-1", b"bytes 10-10/11", b"A"),
        (b"bytes=5-99", b"bytes 5-10/11", b"56789A"),
        (b"bytes=0-1,1-3", b"bytes 0-3/11", b"0123"),  # overlapping ranges coalesce into one
    ],
)
def test_respond_one_range_from_a_stored_200(clock: Clock, spec: bytes, content_range: bytes, part: bytes) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c, None, b"max-age=60", (b"ETag", b'"d"'), body=DIGITS)
    reply = ranged(c, clock, entry, range=spec)
    assert (reply.status, reply.body) == (206, part)
    fields = dict(reply.headers)
    assert fields[b"Content-Range"] == content_range and fields[b"Content-Length"] == b"%d" % len(part)
    assert [n for n, _ in reply.headers].count(b"Content-Length") == 1
    assert fields[b"Cache-Status"] == b"edgeward; hit; ttl=59" and fields[b"ETag"] == b'"d"'
    assert reply.wire is not None and reply.wire.startswith(b"HTTP/1.1 206 Partial Content\r\nDate: " + date(T0))
    assert reply.wire.endswith(b"\r\n\r\n" + part)


def test_respond_range_falls_back_to_the_whole_response(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    lm = date(T0 - 100)
    entry = stored(c, None, b"max-age=60", (b"ETag", b'"d"'), (b"Last-Modified", lm), body=DIGITS)
    whole = [
        ranged(c, clock, entry, range=b"bytes=0-1,5-6"),  # several ranges: the whole 200, which §14.2 allows
        ranged(c, clock, entry, range=b"items=0-1"),
        ranged(c, clock, entry, range=b"bytes=0-1", if_range=b'"other"'),
        ranged(c, clock, entry, range=b"bytes=0-1", if_range=b'W/"d"'),  # If-Range needs a strong match
        ranged(c, clock, entry, range=b"bytes=0-1", if_range=date(T0 - 99)),
    ]
    assert [(r.status, r.body) for r in whole] == [(200, DIGITS)] * 5
    matched = [ranged(c, clock, entry, range=b"bytes=0-1", if_range=v) for v in (b'"d"', lm)]
    assert [(r.status, r.body) for r in matched] == [(206, b"01")] * 2
    head = c.respond(entry, req(method="HEAD", headers={b"range": b"bytes=0-1"}), T0 + 1, clock)
    assert head.status == 200
    not_found = stored(c, req(b"/404"), b"max-age=60", status=404, body=DIGITS)
    assert c.respond(not_found, req(b"/404", headers={b"range": b"bytes=0-1"}), T0 + 1, clock).status == 404


def test_respond_unsatisfiable_range_is_416(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c, None, b"max-age=60", body=DIGITS)
    reply = ranged(c, clock, entry, range=b"bytes=11-")
    assert reply.status == 416
    assert (b"Content-Range", b"bytes */11") in reply.headers
    assert (b"Cache-Status", b"edgeward; hit") in reply.headers


def test_respond_conditional_wins_over_range(clock: Clock) -> None:
    c = SharedCache(1 << 20, 1 << 20)
    entry = stored(c, None, b"max-age=60", (b"ETag", b'"d"'), body=DIGITS)
    assert ranged(c, clock, entry, range=b"bytes=0-1", if_none_match=b'"d"').status == 304


# --- gathering an answer for storing (the proxy's side) -------------------------------------------------------------


def test_gather_resumes_a_producer_paused_before_it_started() -> None:
    """The origin filled the pipe to its usual mark before the cache began: gathering must start it again."""

    async def main() -> bytes | None:
        pipe = Pipe(None, high_water=1000)
        pipe.on_drain = lambda: (pipe.feed(b"b" * 500), pipe.finish())
        assert pipe.feed(b"a" * 1500) is False and pipe.paused
        return await asyncio.wait_for(gather(pipe, 4000, asyncio.get_running_loop()), 5)

    assert asyncio.run(main()) == b"a" * 1500 + b"b" * 500


def test_gather_leaves_a_body_past_the_limit_whole_in_the_pipe() -> None:
    async def main() -> tuple[bytes | None, Pipe]:
        pipe = Pipe(None, high_water=1000)
        loop = asyncio.get_running_loop()
        loop.call_soon(pipe.feed, b"x" * 3000)
        loop.call_soon(pipe.feed, b"y" * 2000)
        return await gather(pipe, 4000, loop), pipe

    body, pipe = asyncio.run(main())
    assert body is None
    assert (pipe.read_total, pipe.buffered, pipe.high_water) == (0, 5000, 1000)
    assert pipe.paused  # the producer stays held until the client has read the pipe down
    assert bytes(pipe.read()) == b"x" * 3000 + b"y" * 2000 and not pipe.paused


def test_gather_never_returns_a_cut_body() -> None:
    async def main() -> bytes | None:
        pipe = Pipe(None)
        loop = asyncio.get_running_loop()
        loop.call_soon(pipe.feed, b"part")
        loop.call_soon(pipe.fail, "origin closed the connection")
        return await gather(pipe, 4000, loop)

    with pytest.raises(UpstreamError) as caught:
        asyncio.run(main())
    assert caught.value.kind == "reset"
