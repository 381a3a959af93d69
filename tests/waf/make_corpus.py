"""Build tests/waf/corpus.jsonl: the labelled requests the firewall is measured against.

    .venv/bin/python -m tests.waf.make_corpus

Deterministic (seeded), so the committed file can be regenerated and diffed.
Attacks come from `attacks.py`, each sent in one of the places it is
typically sent, with an encoding chosen round robin from those attackers
use in that place (plain, URL-encoded once, twice or three times, every
byte encoded, `+` for spaces, HTML entities, `\\u` escapes, IIS `%u`, SQL
comments for spaces, tabs and newlines for spaces, mixed case). The benign
half is built from `benign.py`.

One JSON object per line: id, label ("attack" or "benign"), category,
variant (place and encoding), method, path, query, headers (lower-case
names), body (text) or body_b64 (bytes), content_type.
"""

from __future__ import annotations

import base64
import json
import random
import string
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.waf import attacks, benign

OUT = Path(__file__).with_name("corpus.jsonl")

_SAFE_RAW = set(string.ascii_letters + string.digits + "-._~'\"<>()[]{};|$`\\*!=/:@,?^")


def _min_query(s: str) -> str:
    """What a raw client (curl, a script) must encode in a query value; the rest goes as typed."""
    out = []
    for ch in s:
        if ch in _SAFE_RAW:
            out.append(ch)
        else:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
    return "".join(out)


def _min_path(s: str) -> str:
    return _min_query(s).replace("?", "%3F")


def _url(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _url_all(s: str) -> str:
    return "".join(f"%{b:02X}" for b in s.encode("utf-8"))


def _plus(s: str) -> str:
    return urllib.parse.quote_plus(s)


def _html(s: str, style: str) -> str:
    named = {"<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;", "(": "&lpar;", ")": "&rpar;", ":": "&colon;"}
    out = []
    for ch in s:
        if ch.isalnum() or ch == " ":
            out.append(ch)
        elif style == "named" and ch in named:
            out.append(named[ch])
        elif style == "hex":
            out.append(f"&#x{ord(ch):x};")
        else:
            out.append(f"&#{ord(ch)};")
    return "".join(out)


def _uescape(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch == " " else f"\\u{ord(ch):04x}" for ch in s)


def _iis_u(s: str) -> str:
    return "".join(ch if ch.isalnum() else f"%u{ord(ch):04X}" for ch in s)


class _Rng:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def mixed(self, s: str) -> str:
        return "".join(ch.upper() if self.r.random() < 0.5 else ch.lower() for ch in s)


RNG = _Rng(20240501)

# Encodings of a payload before it is put in a query value or path segment; the place's own
# minimal escaping is applied afterwards where the result could not be sent raw.
TEXT_ENCODINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda s: s,
    "url": _url,
    "url_all": _url_all,
    "double": lambda s: _url(_url(s)),
    "triple": lambda s: _url(_url(_url(s))),
    "plus": _plus,
    "html_dec": lambda s: _html(s, "dec"),
    "html_hex": lambda s: _html(s, "hex"),
    "html_named": lambda s: _html(s, "named"),
    "uescape": _uescape,
    "iis_u": _iis_u,
    "mixed": RNG.mixed,
    "sqlcomment": lambda s: s.replace(" ", "/**/"),
    "tab": lambda s: s.replace(" ", "\t"),
    "newline": lambda s: s.replace(" ", "\n"),
}

CATEGORY_ENCODINGS = {
    "sqli": ["plain", "url", "plus", "sqlcomment", "mixed", "double", "tab", "url_all", "triple", "newline"],
    "xss": [
        "plain",
        "url",
        "html_dec",
        "mixed",
        "double",
        "html_hex",
        "uescape",
        "html_named",
        "triple",
        "url_all",
        "iis_u",
    ],
    "cmdi": ["plain", "url", "plus", "double", "tab", "url_all", "triple"],
    "traversal": ["plain", "url", "double", "url_all", "triple", "mixed", "iis_u"],
    "ssrf": ["plain", "url", "double", "mixed", "url_all"],
    "ldap": ["plain", "url", "double", "url_all"],
    "xxe": ["plain", "url"],
    "ssti": ["plain", "url", "double", "uescape", "url_all"],
    "crlf": ["plain", "url", "double", "url_all"],
    "log4shell": ["plain", "url", "double", "mixed", "url_all", "uescape"],
    "proto": ["plain"],
    "nosqli": ["plain"],
    "deser": ["plain"],
}

# Encodings that already leave only characters a request target can carry.
_ESCAPED = {"url", "url_all", "double", "triple", "plus", "iis_u"}

BASE_HEADERS = {
    "user-agent": benign.USER_AGENTS[0],
    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "accept-language": "en-GB,en;q=0.9",
}


def _record(
    rid: str,
    label: str,
    category: str,
    variant: str,
    *,
    method: str = "GET",
    path: str = "/",
    query: str = "",
    headers: dict[str, str] | None = None,
    body: str | bytes = "",
    content_type: str = "",
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": rid,
        "label": label,
        "category": category,
        "variant": variant,
        "method": method,
        "path": path,
        "query": query,
        "headers": dict(headers if headers is not None else BASE_HEADERS),
        "content_type": content_type,
    }
    if isinstance(body, bytes):
        rec["body_b64"] = base64.b64encode(body).decode("ascii")
    else:
        rec["body"] = body
    return rec


def _json_with(field: str, value: str, escape: bool) -> str:
    doc = {"id": 4711, "channel": "web", field: value, "locale": "en-GB"}
    text = json.dumps(doc, ensure_ascii=False)
    if escape:
        # Replace the one encoded value by its \u-escaped spelling, as an ASCII-safe serialiser writes it.
        text = text.replace(json.dumps(value, ensure_ascii=False)[1:-1], _uescape(value))
    return text


def _multipart(field: str, filename: str, ctype: str, content: str) -> tuple[str, str]:
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nMy upload\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n{content}\r\n--{boundary}--\r\n"
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _place_attack(rid: str, category: str, payload: str, place: str, encoding: str) -> dict[str, Any]:
    enc = TEXT_ENCODINGS[encoding]
    variant = f"{place}/{encoding}"
    headers = dict(BASE_HEADERS)
    if place == "q":
        value = enc(payload)
        if encoding not in _ESCAPED:
            value = _min_query(value)
        return _record(rid, "attack", category, variant, path="/search", query=f"page=1&q={value}&sort=relevance")
    if place == "raw-q":
        return _record(rid, "attack", category, variant, path="/api/v1/items", query=payload)
    if place == "path":
        value = enc(payload)
        if encoding not in _ESCAPED:
            value = _min_path(value)
        return _record(rid, "attack", category, variant, path=f"/files/{value}")
    if place == "raw-path":
        return _record(rid, "attack", category, variant, path=f"/redirect{payload}")
    if place in ("ua", "referer", "xapi", "ctype", "xurl"):
        name = {
            "ua": "user-agent",
            "referer": "referer",
            "xapi": "x-api-version",
            "ctype": "content-type",
            "xurl": "x-original-url",
        }[place]
        value = enc(payload)
        if any(ord(c) < 32 or ord(c) > 126 for c in value):
            value = _min_query(value)
        headers[name] = value
        method = "POST" if place == "ctype" else "GET"
        body = "a=1" if place == "ctype" else ""
        return _record(
            rid, "attack", category, variant, method=method, path="/api/v1/profile", headers=headers, body=body
        )
    if place == "cookie":
        value = enc(payload)
        if encoding not in _ESCAPED:
            value = urllib.parse.quote(value, safe="'\"<>()[]{}|$`*!=/:@^")
        headers["cookie"] = f"sid=9f2c1e7a4b; theme=dark; pref={value}"
        return _record(rid, "attack", category, variant, path="/account", headers=headers)
    if place == "json":
        escape = encoding == "uescape"
        value = payload if escape else enc(payload)
        body = _json_with("comment", value, escape)
        return _record(
            rid,
            "attack",
            category,
            variant,
            method="POST",
            path="/api/v1/comments",
            body=body,
            content_type="application/json",
        )
    if place == "json-raw":
        return _record(
            rid,
            "attack",
            category,
            variant,
            method="POST",
            path="/api/v1/users",
            body=payload,
            content_type="application/json; charset=utf-8",
        )
    if place == "form":
        value = enc(payload)
        if encoding not in _ESCAPED:
            value = _plus(value)
        body = f"name=Jane+Doe&email=jane%40example.com&message={value}&submit=Send"
        return _record(
            rid,
            "attack",
            category,
            variant,
            method="POST",
            path="/contact",
            body=body,
            content_type="application/x-www-form-urlencoded",
        )
    if place == "form-raw":
        return _record(
            rid,
            "attack",
            category,
            variant,
            method="POST",
            path="/settings",
            body=payload,
            content_type="application/x-www-form-urlencoded",
        )
    if place == "multipart":
        body, ctype = _multipart("file", "avatar.svg", "image/svg+xml", payload)
        return _record(rid, "attack", category, variant, method="POST", path="/upload", body=body, content_type=ctype)
    if place == "xml":
        return _record(
            rid,
            "attack",
            category,
            variant,
            method="POST",
            path="/soap/UserService",
            body=payload,
            content_type="application/xml",
        )
    if place == "text":
        return _record(
            rid,
            "attack",
            category,
            variant,
            method="PUT",
            path="/api/v1/notes/17",
            body=payload,
            content_type="text/plain; charset=utf-8",
        )
    raise ValueError(place)


def _encodings_for(category: str, place: str) -> list[str]:
    if place in ("raw-q", "raw-path", "json-raw", "form-raw", "xml", "text", "multipart"):
        return ["plain"]
    allowed = CATEGORY_ENCODINGS[category]
    if place == "json":
        return [e for e in allowed if e in ("plain", "uescape", "mixed", "url", "html_dec", "html_named")] or ["plain"]
    if place in ("ua", "xapi", "ctype", "xurl"):
        return [e for e in allowed if e in ("plain", "mixed", "url")] or ["plain"]
    if place == "referer":
        return [e for e in allowed if e in ("plain", "url", "mixed")] or ["plain"]
    if place == "cookie":
        return [e for e in allowed if e in ("plain", "url", "double")] or ["plain"]
    if place == "form":
        return [e for e in allowed if e in ("plain", "url", "double", "mixed", "sqlcomment", "html_dec")] or ["plain"]
    return allowed


# Entries of these classes are sent twice, in different places or encodings: they are the
# classes attackers vary most, and the ones with the most encodings to get right.
TWICE = {"sqli", "xss", "cmdi", "traversal", "ssti", "log4shell"}


def attack_records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for category, entries in attacks.ALL.items():
        counters: dict[str, int] = {}
        n = 0
        for i, (payload, places_text) in enumerate(entries):
            places = places_text.split()
            rounds = 2 if category in TWICE else 1
            for k in range(rounds):
                place = places[(i + k) % len(places)]
                encs = _encodings_for(category, place)
                c = counters.get(place, 0)
                counters[place] = c + 1
                encoding = encs[c % len(encs)]
                n += 1
                out.append(_place_attack(f"atk-{category}-{n:03d}", category, payload, place, encoding))
    out.extend(_entropy_attacks())
    return out


def _entropy_attacks() -> list[dict[str, Any]]:
    r = random.Random(7)
    out = []
    for i, (size, ctype) in enumerate(
        [
            (512, ""),
            (2048, "text/plain"),
            (4096, "application/x-www-form-urlencoded"),
            (1024, "text/plain; charset=utf-8"),
            (8192, ""),
            (300, "application/xml"),
        ]
    ):
        blob = bytes(r.getrandbits(8) for _ in range(size))
        out.append(
            _record(
                f"atk-entropy-{i + 1:03d}",
                "attack",
                "entropy",
                f"body/random-{size}",
                method="POST",
                path="/api/v1/upload-note",
                body=blob,
                content_type=ctype,
            )
        )
    # Text drawn evenly from across Unicode (ASCII, Latin, Greek, Cyrillic, CJK): what binary smuggled
    # as "text" in a JSON string looks like once decoded by a lenient client.
    ranges = [(0x21, 0x7E), (0xA1, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x9FFF), (0x1F300, 0x1F5FF)]
    for i in range(2):
        chars = []
        for _ in range(1500):
            lo, hi = ranges[r.randrange(len(ranges))]
            chars.append(chr(r.randint(lo, hi)))
        text = "".join(chars).replace("\\", "/").replace('"', "'")
        body = json.dumps({"id": i, "note": text}, ensure_ascii=False)
        out.append(
            _record(
                f"atk-entropy-{i + 7:03d}",
                "attack",
                "entropy",
                "json/mixed-script-random",
                method="POST",
                path="/api/v1/notes",
                body=body,
                content_type="application/json",
            )
        )
    return out


# ---------------------------------------------------------------- benign


def _jwt(r: random.Random, claims: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "2024-05"}, separators=(",", ":")).encode())
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{payload}.{b64(bytes(r.getrandbits(8) for _ in range(64)))}"


def benign_records() -> list[dict[str, Any]]:
    r = random.Random(99)
    out: list[dict[str, Any]] = []

    def add(kind: str, **kw: Any) -> None:
        out.append(_record(f"ben-{kind}-{len(out) + 1:03d}", "benign", kind, kind, **kw))

    def hdrs(i: int, **extra: str) -> dict[str, str]:
        h = {
            "user-agent": benign.USER_AGENTS[i % len(benign.USER_AGENTS)],
            "accept": "application/json, text/plain, */*",
            "accept-language": "en-GB,en;q=0.9,fr;q=0.8",
        }
        if i % 3 == 0:
            h["referer"] = benign.REFERERS[i % len(benign.REFERERS)]
        if i % 2 == 0:
            tok = _jwt(r, {"sub": f"user-{i}", "iat": 1714550000 + i, "exp": 1714553600 + i, "scope": "openid profile"})
            h["cookie"] = (
                f"_ga=GA1.2.{r.randint(10**8, 10**9)}.{1714550000 + i}; session={tok}; "
                f"consent=%7B%22ads%22%3Afalse%2C%22analytics%22%3Atrue%7D; lang=en-GB"
            )
        h.update(extra)
        return h

    # Searches and listings: SQL words in their everyday sense, apostrophes, ampersands, percent signs.
    for i, term in enumerate(benign.SEARCH_TERMS):
        q = _plus(term) if i % 2 == 0 else _url(term)
        add("search", path="/search", query=f"q={q}&page={1 + i % 4}&sort=relevance", headers=hdrs(i))
    # Static files, tracking and pagination parameters.
    statics = [
        ("/static/app.3f9a1c.js", ""),
        ("/static/css/main.css", "v=20240501"),
        ("/images/logo.png", "w=320&h=80&fit=crop"),
        ("/fonts/inter-var.woff2", ""),
        ("/favicon.ico", ""),
        ("/products", "category=shoes&size=42&color=blue&price_min=50&price_max=150&sort=-rating"),
        ("/products/sku-10023", "utm_source=newsletter&utm_medium=email&utm_campaign=spring_sale_2024"),
        ("/api/v1/accounts", "limit=50&offset=100&fields=id,iban,balance,currency"),
        ("/api/v1/transactions", "from=2024-04-01&to=2024-04-30&min=10.00&max=2500.00&type=debit"),
        ("/api/v1/fx", "base=EUR&symbols=USD,GBP,CHF&date=2024-05-01"),
        ("/callback", "code=SplxlOBeZQQYbYS6WxSbIA&state=af0ifjsldkj%3D%3D&session_state=b1c2d3"),
        (
            "/oauth/authorize",
            "client_id=app&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb%3Fx%3D1&scope=openid+email",
        ),
        ("/maps", "ll=48.8566%2C2.3522&z=14&q=Caf%C3%A9+de+Flore"),
        ("/api/v1/search", "q=%22exact+phrase%22+-excluded&lang=en"),
        ("/docs/getting-started", ""),
        ("/blog/2024/05/why-we-rewrote-our-edge", "ref=hn"),
        ("/api/v1/users/me", ""),
        ("/download", "file=statement-2024-04.pdf&format=pdf"),
        ("/api/v1/branches", "near=SW1A+1AA&radius=5km"),
        ("/api/v2/orders", "status=shipped%2Cdelivered&created_after=2024-04-01T00%3A00%3A00Z"),
        ("/share", "url=https%3A%2F%2Fshop.example.com%2Fproduct%2F1234&title=Look+at+this%21"),
        ("/track", "e=page_view&p=%2Fcheckout%2Fstep-2&t=1714550000&sid=5d41402abc4b2a76"),
        ("/api/v1/statements/2024-04", "format=csv&separator=%3B"),
        ("/help/articles/reset-password", ""),
        ("/api/v1/cards/4711/limits", ""),
        ("/wp-content/uploads/2024/05/team-photo.jpg", ""),
        ("/api/v1/payees", "name=O%27Brien+%26+Sons&iban=IE29AIBK93115212345678"),
        ("/calendar", "view=week&start=2024-05-06&tz=Europe%2FLondon"),
        ("/api/v1/quotes", "symbols=AAPL,MSFT,GOOG&fields=price,change%25"),
        ("/search", "q=select+*+from+the+menu+%E2%80%93+lunch+specials"),
        ("/api/v1/notifications", "since=2024-05-01T10%3A15%3A00%2B02%3A00"),
        ("/login", "next=%2Faccounts%2Foverview%3Ftab%3Dsavings"),
        ("/api/v1/geo", "q=St.+John%27s%2C+Newfoundland"),
        ("/api/v1/products", "filter[brand]=acme&filter[price][gte]=10&page[size]=20"),
        ("/api/v1/products", "ids[]=1&ids[]=2&ids[]=3"),
        ("/unsubscribe", "email=o%27neill.patrick%40example.com&list=weekly"),
        ("/api/v1/export", "columns=date%2Camount%2Cdescription&order=date+desc"),
        ("/api/v1/rates", "pair=EUR%2FUSD&interval=1h"),
        ("/img/banner.webp", "dpr=2"),
        ("/articles", "tag=c%23&tag=.net"),
    ]
    for i, (path, query) in enumerate(statics):
        add("get", path=path, query=query, headers=hdrs(i + 7))

    # Payments and banking JSON.
    for i in range(40):
        iban, bic = benign.IBANS[i % len(benign.IBANS)]
        iban2, _ = benign.IBANS[(i + 3) % len(benign.IBANS)]
        name = benign.NAMES[i % len(benign.NAMES)]
        street, postcode, city, country = benign.ADDRESSES[i % len(benign.ADDRESSES)]
        doc = {
            "paymentId": f"pay_{r.randrange(16**12):012x}",
            "instructedAmount": {"amount": f"{r.randint(1, 250000) / 100:.2f}", "currency": benign.CURRENCIES[i % 6]},
            "debtorAccount": {"iban": iban2},
            "creditor": {
                "name": name,
                "account": {"iban": iban, "bic": bic},
                "address": {"street": street, "postcode": postcode, "city": city, "country": country},
            },
            "remittanceInformationUnstructured": benign.REMITTANCE[i % len(benign.REMITTANCE)],
            "requestedExecutionDate": f"2024-05-{1 + i % 28:02d}",
            "endToEndId": f"E2E-{r.randrange(10**10):010d}",
            "urgent": i % 5 == 0,
        }
        if i % 4 == 0:
            doc["tags"] = ["household", "recurring"]
        method = ["POST", "PUT", "PATCH"][i % 3]
        add(
            "payment",
            method=method,
            path="/api/v1/payments",
            headers=hdrs(i),
            body=json.dumps(doc, ensure_ascii=i % 2 == 0),
            content_type="application/json" if i % 3 else "application/json; charset=utf-8",
        )

    # Customer profiles, KYC with base64 documents.
    for i in range(25):
        name = benign.NAMES[(i + 5) % len(benign.NAMES)]
        street, postcode, city, country = benign.ADDRESSES[(i + 2) % len(benign.ADDRESSES)]
        doc: dict[str, Any] = {
            "customer": {
                "fullName": name,
                "email": benign.EMAILS[i % len(benign.EMAILS)],
                "phone": f"+{r.randint(30, 49)} {r.randint(100, 999)} {r.randint(1000000, 9999999)}",
                "dateOfBirth": f"19{r.randint(50, 99)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
                "address": {"line1": street, "postcode": postcode, "city": city, "country": country},
            },
            "marketingConsent": i % 2 == 0,
            "notes": benign.PROSE[i % len(benign.PROSE)],
        }
        if i % 3 == 0:
            raw = bytes(r.getrandbits(8) for _ in range(r.randint(600, 3000)))
            doc["documents"] = [{"type": "passport", "mime": "image/jpeg", "data": base64.b64encode(raw).decode()}]
        if i % 5 == 1:
            doc["avatar"] = (
                "data:image/png;base64," + base64.b64encode(bytes(r.getrandbits(8) for _ in range(400))).decode()
            )
        add(
            "profile",
            method="POST" if i % 2 else "PUT",
            path="/api/v1/customers",
            headers=hdrs(i),
            body=json.dumps(doc, ensure_ascii=False),
            content_type="application/json",
        )

    # Auth: logins, token exchanges, JWTs in bodies.
    for i in range(15):
        tok = _jwt(
            r,
            {
                "sub": f"{r.randrange(10**8)}",
                "aud": "api",
                "iss": "https://idp.example.com",
                "iat": 1714550000,
                "exp": 1714553600,
                "roles": ["payments.read"],
                "name": benign.NAMES[i % 16],
            },
        )
        kind = i % 3
        if kind == 0:
            body = json.dumps({"username": benign.EMAILS[i % 6], "password": benign.PASSWORDS[i % 5], "remember": True})
            add(
                "login",
                method="POST",
                path="/api/v1/session",
                headers=hdrs(i),
                body=body,
                content_type="application/json",
            )
        elif kind == 1:
            body = json.dumps(
                {
                    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "subject_token": tok,
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                }
            )
            add(
                "token", method="POST", path="/oauth/token", headers=hdrs(i), body=body, content_type="application/json"
            )
        else:
            body = f"grant_type=refresh_token&refresh_token={tok}&client_id=mobile-app&scope=openid%20offline_access"
            add(
                "token",
                method="POST",
                path="/oauth/token",
                headers=hdrs(i),
                body=body,
                content_type="application/x-www-form-urlencoded",
            )

    # Messages, reviews, support tickets (prose).
    for i, text in enumerate(benign.PROSE):
        body = json.dumps(
            {"subject": text.split(".")[0][:60], "message": text, "rating": 1 + i % 5}, ensure_ascii=False
        )
        add(
            "message",
            method="POST",
            path="/api/v1/support/tickets",
            headers=hdrs(i),
            body=body,
            content_type="application/json",
        )
    for i, text in enumerate(benign.PROSE):
        body = f"name={_plus(benign.NAMES[i % 16])}&email={_url(benign.EMAILS[i % 6])}&message={_plus(text)}&consent=on"
        add(
            "contact",
            method="POST",
            path="/contact",
            headers=hdrs(i + 1),
            body=body,
            content_type="application/x-www-form-urlencoded",
        )

    # A developer forum: posts with code.
    for i, (title, text) in enumerate(benign.DEV_POSTS):
        body = json.dumps({"title": title, "body": text, "tags": ["question"], "draft": False})
        add(
            "forum",
            method="POST",
            path="/api/v1/forum/posts",
            headers=hdrs(i),
            body=body,
            content_type="application/json",
        )
    for i, (title, text) in enumerate(benign.DEV_POSTS[:10]):
        body = f"title={_plus(title)}&body={_plus(text)}&category=help"
        add(
            "forum",
            method="POST",
            path="/forum/new",
            headers=hdrs(i + 2),
            body=body,
            content_type="application/x-www-form-urlencoded; charset=UTF-8",
        )

    # Shop: carts and orders.
    for i in range(20):
        items = [
            {"sku": sku, "name": pname, "qty": 1 + (i + j) % 3, "unitPrice": price}
            for j, (sku, pname, price) in enumerate(benign.PRODUCTS[i % 3 : i % 3 + 3])
        ]
        street, postcode, city, country = benign.ADDRESSES[i % len(benign.ADDRESSES)]
        doc = {
            "items": items,
            "shipping": {
                "name": benign.NAMES[i % 16],
                "street": street,
                "postcode": postcode,
                "city": city,
                "country": country,
                "instructions": "Leave with neighbour at no. 7 if I'm out",
            },
            "coupon": "SPRING24" if i % 4 == 0 else None,
            "giftMessage": "Happy birthday! Don't spend it all at once ;)" if i % 5 == 0 else "",
        }
        add(
            "order",
            method="POST",
            path="/api/v1/orders",
            headers=hdrs(i),
            body=json.dumps(doc),
            content_type="application/json",
        )

    # Checkout and settings forms.
    for i in range(15):
        street, postcode, city, country = benign.ADDRESSES[i % len(benign.ADDRESSES)]
        fields = {
            "first_name": benign.NAMES[i % 16].split()[0],
            "last_name": benign.NAMES[i % 16].split()[-1],
            "address1": street,
            "postcode": postcode,
            "city": city,
            "country": country,
            "phone": "+44 20 7946 0958",
            "notes": "Ring twice & wait - it's a big house",
        }
        add(
            "checkout",
            method="POST",
            path="/checkout/address",
            headers=hdrs(i),
            body=urllib.parse.urlencode(fields),
            content_type="application/x-www-form-urlencoded",
        )

    # Uploads: multipart with text, CSV and binary files.
    for i in range(12):
        if i % 3 == 0:
            content = "date;description;amount\n2024-04-01;Coffee at Joe's;-3.20\n2024-04-02;Salary;+2500.00\n"
            body, ctype = _multipart("file", "export.csv", "text/csv", content)
            add("upload", method="POST", path="/api/v1/imports", headers=hdrs(i), body=body, content_type=ctype)
        else:
            boundary = "----formdata-undici-0123456789"
            binary = b"\x89PNG\r\n\x1a\n" + bytes(r.getrandbits(8) for _ in range(r.randint(800, 4000)))
            body_b = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="caption"\r\n\r\n'
                    f"{benign.PROSE[i % len(benign.PROSE)][:80]}\r\n--{boundary}\r\n"
                    'Content-Disposition: form-data; name="photo"; filename="IMG_2041.png"\r\nContent-Type: '
                    "image/png\r\n\r\n"
                ).encode()
                + binary
                + f"\r\n--{boundary}--\r\n".encode()
            )
            add(
                "upload",
                method="POST",
                path="/api/v1/photos",
                headers=hdrs(i),
                body=body_b,
                content_type=f"multipart/form-data; boundary={boundary}",
            )

    # Base64 and binary bodies; JWTs and base64 in headers.
    for i in range(10):
        raw = bytes(r.getrandbits(8) for _ in range(r.randint(300, 6000)))
        if i % 2 == 0:
            add(
                "base64",
                method="POST",
                path="/api/v1/attachments",
                headers=hdrs(i),
                body=base64.b64encode(raw).decode(),
                content_type="text/plain",
            )
        else:
            doc = {
                "filename": f"scan-{i}.pdf",
                "contentBase64": base64.b64encode(raw).decode(),
                "sha256": "".join(r.choice("0123456789abcdef") for _ in range(64)),
            }
            add(
                "base64",
                method="POST",
                path="/api/v1/attachments",
                headers=hdrs(i),
                body=json.dumps(doc),
                content_type="application/json",
            )
    for i in range(6):
        raw = bytes(r.getrandbits(8) for _ in range(r.randint(1000, 5000)))
        add(
            "binary",
            method="PUT",
            path=f"/api/v1/blobs/{i}",
            headers=hdrs(i),
            body=raw,
            content_type="application/octet-stream",
        )
    for i in range(8):
        tok = _jwt(
            r,
            {
                "sub": f"svc-{i}",
                "aud": ["api", "billing"],
                "iat": 1714550000,
                "exp": 1714550900,
                "cnf": {"x5t#S256": base64.urlsafe_b64encode(bytes(r.getrandbits(8) for _ in range(32))).decode()},
            },
        )
        h = hdrs(i + 1, authorization=f"Bearer {tok}")
        h["cookie"] = (
            f"id_token={tok}; refresh=" + base64.b64encode(bytes(r.getrandbits(8) for _ in range(48))).decode()
        )
        add("jwt", path="/api/v1/accounts/4711/balance", headers=h)

    # XML and GraphQL.
    soap = (
        '<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
        '<soap:Body><GetBalance xmlns="urn:bank:v1"><AccountId>4711</AccountId><Currency>EUR</Currency>'
        "</GetBalance></soap:Body></soap:Envelope>"
    )
    add(
        "xml",
        method="POST",
        path="/soap/AccountService",
        headers=hdrs(1),
        body=soap,
        content_type="text/xml; charset=utf-8",
    )
    pain = (
        '<?xml version="1.0" encoding="UTF-8"?><Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.09">'
        "<CstmrCdtTrfInitn><GrpHdr><MsgId>MSG-2024-05-01-001</MsgId><CreDtTm>2024-05-01T10:00:00</CreDtTm>"
        "<NbOfTxs>1</NbOfTxs><InitgPty><Nm>O'Brien &amp; Sons Ltd</Nm></InitgPty></GrpHdr><PmtInf>"
        '<CdtTrfTxInf><Amt><InstdAmt Ccy="EUR">1234.56</InstdAmt></Amt><Cdtr><Nm>Zoë Müller</Nm></Cdtr>'
        "<CdtrAcct><Id><IBAN>DE89370400440532013000</IBAN></Id></CdtrAcct><RmtInf><Ustrd>Invoice 2024-0042</Ustrd>"
        "</RmtInf></CdtTrfTxInf></PmtInf></CstmrCdtTrfInitn></Document>"
    )
    add("xml", method="POST", path="/api/v1/batches", headers=hdrs(2), body=pain, content_type="application/xml")
    gql = [
        "query Account($id: ID!) { account(id: $id) { iban balance { amount currency } transactions(first: 20) "
        "{ edges { node { id amount description } } } } }",
        'mutation { updateAddress(input: {line1: "12 Rue de l\'Église", city: "Paris"}) { ok errors } }',
        'query { search(term: "union square", first: 5) { ... on Hotel { name rating } } }',
    ]
    for i, q in enumerate(gql):
        add(
            "graphql",
            method="POST",
            path="/graphql",
            headers=hdrs(i),
            body=json.dumps({"query": q, "variables": {"id": "4711"}}),
            content_type="application/graphql+json" if i == 1 else "application/json",
        )

    # Deletes with bodies, JSON Schema, webhooks.
    for i in range(5):
        add(
            "delete",
            method="DELETE",
            path=f"/api/v1/payees/{100 + i}",
            headers=hdrs(i),
            body=json.dumps(
                {"reason": ["moved bank", "duplicate", "no longer needed", "typo in name", "other"][i], "confirm": True}
            ),
            content_type="application/json",
        )
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://example.com/payment.json",
        "type": "object",
        "required": ["amount"],
        "properties": {
            "amount": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]{2})?$"},
            "currency": {"$ref": "#/$defs/currency"},
        },
        "$defs": {"currency": {"enum": ["EUR", "GBP", "USD"]}},
    }
    add(
        "schema",
        method="PUT",
        path="/api/v1/schemas/payment",
        headers=hdrs(3),
        body=json.dumps(schema),
        content_type="application/schema+json",
    )
    for i in range(6):
        event = {
            "id": f"evt_{r.randrange(16**24):024x}",
            "type": ["payment_intent.succeeded", "charge.refunded", "customer.updated"][i % 3],
            "created": 1714550000 + i,
            "data": {
                "object": {
                    "id": f"pi_{r.randrange(16**24):024x}",
                    "amount": r.randint(100, 99999),
                    "currency": "eur",
                    "description": benign.REMITTANCE[i],
                    "receipt_url": f"https://pay.example.com/receipts/{i}?s=ab12",
                }
            },
            "livemode": True,
        }
        add(
            "webhook",
            method="POST",
            path="/hooks/payments",
            headers=hdrs(i, **{"stripe-signature": f"t=1714550000,v1={r.randrange(16**64):064x}"}),
            body=json.dumps(event),
            content_type="application/json",
        )
    return out


def main() -> None:
    records = attack_records() + benign_records()
    with OUT.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    atk = sum(1 for x in records if x["label"] == "attack")
    print(f"{OUT}: {atk} attacks, {len(records) - atk} benign")


if __name__ == "__main__":
    main()
