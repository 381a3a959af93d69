"""The firewall of one profile: request head and body in, a Verdict or None out.

Plain values only (method, path, query, headers, body), so it is tested
without a server and the same for HTTP/1.1, 2 and 3. Nothing here awaits,
logs or locks; a worker keeps one engine per profile.

A clean request should cost little. Head values repeat (user agents,
referers, cookies, the paths and queries of static files), so values found
clean are remembered in a bounded set per engine and cost one hash lookup
next time; only a value never seen, or one that changed, is scanned. The
set only ever holds values that did not match, keyed by their exact bytes,
and it is emptied, not grown, when full, so it cannot be made to hide an
attack or to grow without bound. Nothing else outlives a call: the lowered
and decoded copies of a body are dropped when it returns, and no value
larger than CLEAN_VALUE_MAX (4 KiB) is ever kept.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from ingress.config.waf import WafProfile
from ingress.policy.waf import coding, entropy, jsonbody
from ingress.policy.waf import normalise as n
from ingress.policy.waf import verdict as v
from ingress.policy.waf.content import BodyKind, body_kind
from ingress.policy.waf.matcher import Matcher
from ingress.policy.waf.patterns import Pattern, load_pattern_set
from ingress.policy.waf.verdict import Verdict

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Never inspected as headers: cookies have their own switch; tokens are the JWT stage's.
_NOT_HEADERS = frozenset({b"cookie", b"authorization"})
_ENTROPY_KINDS = frozenset({BodyKind.JSON, BodyKind.FORM, BodyKind.TEXT})
# Headers that say where the client came from: nothing behind the edge fetches them, and a
# front end run locally sends http://localhost:3000 in them, so the SSRF patterns stay off.
_REFERRERS = frozenset({b"referer", b"origin"})
_NOT_FOR_REFERRERS = frozenset({"ssrf"})

# The clean-value memory: values up to this size, this many bytes in all.
CLEAN_VALUE_MAX = 4096
CLEAN_TOTAL_MAX = 2 << 20
_LOCATION_NAME_MAX = 64


def _matcher_for(profile: WafProfile, without: frozenset[str] = frozenset()) -> Matcher:
    excluded = frozenset(profile.exclude)
    patterns = load_pattern_set(profile.patterns).patterns
    return Matcher([p for p in patterns if p.id not in excluded and p.category not in without])


def _texts(values: list[bytes]) -> list[str]:
    """Lower case, one character per byte; lowered and decoded in one go when the separator byte
    appears in none of the values. NUL goes: it would split a keyword for the matcher only."""
    joined = b"\xb6".join(values)
    if joined.count(b"\xb6") == len(values) - 1:
        texts = joined.lower().decode("latin-1").split(n.SEPARATOR)
    else:
        texts = [value.lower().decode("latin-1") for value in values]
    if joined.find(b"\x00") >= 0:  # not `in`: see routing.normalize_path
        texts = [t.replace("\x00", "") for t in texts]
    return texts


def _name(raw: bytes) -> str:
    """A header or cookie name as it may appear in a log: printable ASCII, bounded."""
    text = raw[:_LOCATION_NAME_MAX].decode("latin-1")
    return "".join(c if " " < c < "\x7f" else "?" for c in text)


class WafEngine:
    """Inspects requests for one profile; build once per config, share across requests."""

    def __init__(self, profile: WafProfile) -> None:
        self.profile = profile
        self.name = profile.name
        self._matcher = _matcher_for(profile)
        self._referrer_matcher = _matcher_for(profile, without=_NOT_FOR_REFERRERS)
        self._block = profile.action == "block"
        self._all_headers = profile.headers == ("*",)
        self._headers = tuple(
            (name, name in _REFERRERS) for name in (h.encode("latin-1") for h in profile.headers if h != "*")
        )
        self._value_names = tuple(name for name, referrer in self._headers if not referrer)
        self._referrer_names = tuple(name for name, referrer in self._headers if referrer)
        self._cookies = profile.cookies
        self._limits = jsonbody.JsonLimits(
            profile.json_max_depth, profile.json_max_keys, profile.json_max_string_length, profile.json_max_array_items
        )
        # Values found clean, one set per way of inspecting them (a Referer found clean without
        # the SSRF patterns must not vouch for the same bytes in a query).
        self._clean: set[bytes] = set()
        self._clean_referrers: set[bytes] = set()
        self._clean_cookies: set[bytes] = set()
        self._clean_bytes = 0

    # ------------------------------------------------------------------ verdicts

    def _verdict(self, status: int, category: str, pattern_id: str, location: str, passes: int = 0) -> Verdict:
        return Verdict(status, category, pattern_id, location, self.name, self._block, passes)

    def _matched(self, pattern: Pattern, location: str, passes: int) -> Verdict:
        return self._verdict(v.FORBIDDEN, pattern.category, pattern.id, location, passes)

    # ------------------------------------------------------------------ head

    def inspect_head(self, method: str, path: bytes, query: bytes, headers: Mapping[bytes, bytes]) -> Verdict | None:
        """Path, query, the profile's headers and cookie values; None when nothing matched."""
        clean = self._clean
        cookie = headers.get(b"cookie") if self._cookies else None
        # The common case, every value seen before and found clean, in a few C-level calls.
        if (
            not self._all_headers
            and (path in clean or not path)
            and (query in clean or not query)
            and (not cookie or cookie in self._clean_cookies)
            and clean.issuperset(filter(None, map(headers.get, self._value_names)))
            and self._clean_referrers.issuperset(filter(None, map(headers.get, self._referrer_names)))
        ):
            return None
        values: list[bytes] = []
        kinds: list[bytes] = []  # b"" path, b"?" query, b"h" + name, b"c" cookie pair
        if path and path not in clean:
            values.append(path)
            kinds.append(b"")
        if query and query not in clean:
            values.append(query)
            kinds.append(b"?")
        referrers: list[tuple[bytes, bytes]] = []
        if self._all_headers:
            for name, value in headers.items():
                if value and name not in _NOT_HEADERS and not name.startswith(b":"):
                    self._collect(name, value, values, kinds, referrers)
        else:
            # Spelt out rather than calling _collect: this loop runs for every request.
            clean_referrers = self._clean_referrers
            for name, referrer in self._headers:
                found = headers.get(name)
                if not found:
                    continue
                if referrer:
                    if found not in clean_referrers:
                        referrers.append((name, found))
                elif found not in clean:
                    values.append(found)
                    kinds.append(b"h" + name)
        if cookie and cookie in self._clean_cookies:
            cookie = None
        if cookie:
            # Each `name=value` pair is its own input, so a pattern cannot run across pairs.
            for pair in cookie.split(b";"):
                values.append(pair)
                kinds.append(b"c")
        if values:
            hit = self._matcher.scan(_texts(values), plus=True, lines=True)
            if hit is not None:
                pattern, index, passes = hit
                return self._matched(pattern, _location(kinds[index], values[index]), passes)
        if referrers:
            hit = self._referrer_matcher.scan(_texts([v for _, v in referrers]), plus=True, lines=True)
            if hit is not None:
                pattern, index, passes = hit
                return self._matched(pattern, _location(b"h" + referrers[index][0], b""), passes)
        for value, kind in zip(values, kinds, strict=True):
            if kind != b"c":
                self._remember(clean, value)
        for _, value in referrers:
            self._remember(self._clean_referrers, value)
        if cookie:
            self._remember(self._clean_cookies, cookie)
        return None

    def _collect(
        self, name: bytes, value: bytes, values: list[bytes], kinds: list[bytes], referrers: list[tuple[bytes, bytes]]
    ) -> None:
        if name in _REFERRERS:
            if value not in self._clean_referrers:
                referrers.append((name, value))
        elif value not in self._clean:
            values.append(value)
            kinds.append(b"h" + name)

    def _remember(self, into: set[bytes], value: bytes) -> None:
        if len(value) > CLEAN_VALUE_MAX or value in into:
            return
        if self._clean_bytes + len(value) > CLEAN_TOTAL_MAX:
            self._clean.clear()
            self._clean_referrers.clear()
            self._clean_cookies.clear()
            self._clean_bytes = 0
        into.add(value)
        self._clean_bytes += len(value)

    # ------------------------------------------------------------------ body

    def wants_body(self, method: str) -> bool:
        """Whether inspect_body would look at a body of this method (so it is worth buffering)."""
        return method in BODY_METHODS and self.profile.max_inspect_body_bytes > 0

    def inspect_body(
        self, method: str, headers: Mapping[bytes, bytes], body: bytes, total: int | None = None
    ) -> Verdict | None:
        """The body of POST, PUT, PATCH and DELETE; `total` is its full length when `body` is a prefix.

        Checks, in order: the content coding (gzip and deflate are decoded, others get 415),
        size (413 when oversize = reject), JSON validity and limits (400), patterns (403),
        entropy (403). A body cut to its first `max_inspect_body_bytes` is scanned but not
        held to JSON validity, since a prefix is rarely valid.
        """
        if method not in BODY_METHODS:
            return None
        profile = self.profile
        limit = profile.max_inspect_body_bytes
        if not body or not limit:
            return None
        encoding = headers.get(b"content-encoding")
        if encoding is not None:
            try:
                body, longer = coding.decoded(encoding, body, limit, whole=total is None or total <= len(body))
            except coding.Undecodable as exc:
                if exc.unsupported:
                    return self._verdict(v.UNSUPPORTED_MEDIA, v.ENCODING, v.BODY_CODING, "body")
                return self._verdict(v.BAD_REQUEST, v.ENCODING, v.BODY_CORRUPT, "body")
            total = limit + 1 if longer else None
        size = len(body) if total is None else max(total, len(body))
        if not size:
            return None
        whole = size <= limit
        if not whole:
            if profile.oversize == "reject":
                return self._verdict(v.TOO_LARGE, v.OVERSIZE, v.BODY_OVERSIZE, "body")
            body = body[:limit]
        kind = body_kind(headers.get(b"content-type", b""))
        gate = profile.entropy and kind in _ENTROPY_KINDS and len(body) >= profile.entropy_min_bytes
        # 1. JSON: valid and within limits. Cut at its quotes only when the entropy gate needs
        # the string literals (a piece per string costs more than the limits need).
        pieces = jsonbody.split(body) if gate and kind is BodyKind.JSON else None
        if kind is BodyKind.JSON and whole:
            failed = jsonbody.check(body, self._limits, pieces)
            if failed is not None:
                return self._verdict(v.BAD_REQUEST, v.JSON, failed, "body")
        # 2. Patterns, over the body as sent and decoded.
        text = body.lower().decode("latin-1")
        if "\x00" in text:
            text = text.replace("\x00", "")
        hit = self._matcher.scan([text], plus=kind is BodyKind.FORM, lines=False)
        if hit is not None:
            return self._matched(hit[0], "body", hit[2])
        # 3. Entropy of what should be text.
        if gate:
            if pieces is not None:
                sample = jsonbody.string_bytes(pieces)
            elif kind is BodyKind.FORM:
                sample = urllib.parse.unquote_to_bytes(body.replace(b"+", b" "))
            else:
                sample = body
            if len(sample) >= profile.entropy_min_bytes and entropy.exceeds(sample, profile.entropy_threshold):
                return self._verdict(v.FORBIDDEN, v.ENTROPY, v.ENTROPY_ID, "body")
        return None

    def inspect(
        self, method: str, path: bytes, query: bytes, headers: Mapping[bytes, bytes], body: bytes = b""
    ) -> Verdict | None:
        """inspect_head, then inspect_body: the first verdict, or None."""
        found = self.inspect_head(method, path, query, headers)
        if found is None and body:
            found = self.inspect_body(method, headers, body)
        return found


def _location(kind: bytes, value: bytes) -> str:
    if kind == b"":
        return "path"
    if kind == b"?":
        return "query"
    if kind == b"c":
        return "cookie:" + _name(value.partition(b"=")[0].strip())
    return "header:" + _name(kind[1:])
