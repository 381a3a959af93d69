"""The request firewall at engine level: corpus rates, normalisers, content types, JSON limits,
entropy, pattern-file validation, verdicts, config rules, and linear time on hostile inputs.

Server-level behaviour (status codes on the wire, shadow-mode logging, no upstream touched)
is tested where the engine is wired into the pipeline.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench import waf_corpus
from ingress.config.loader import _build, _Collector
from ingress.config.schema import _object
from ingress.config.waf import DEFAULT_HEADERS, RouteWaf, Waf, WafProfile, waf_problems
from ingress.policy.waf import Firewall, PatternFileError, Verdict, WafEngine, entropy, jsonbody, load_pattern_set
from ingress.policy.waf import engine as engine_module
from ingress.policy.waf import normalise as n
from ingress.policy.waf.content import BodyKind, body_kind
from ingress.policy.waf.patterns import CATEGORIES, parse_pattern_file

CORPUS = Path(__file__).parent / "waf" / "corpus.jsonl"
JSON_CT = {b"content-type": b"application/json"}
FORM_CT = {b"content-type": b"application/x-www-form-urlencoded"}


def engine(**fields: Any) -> WafEngine:
    fields.setdefault("name", "test")
    return WafEngine(WafProfile(**fields))


def head(e: WafEngine, path: bytes = b"/", query: bytes = b"", **headers: bytes) -> Verdict | None:
    return e.inspect_head("GET", path, query, {k.replace("_", "-").encode(): v for k, v in headers.items()})


# ---------------------------------------------------------------- corpus


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    return list(waf_corpus.load(CORPUS))


def test_corpus_is_large_labelled_and_covers_every_category(corpus: list[dict[str, Any]]) -> None:
    attacks = [r for r in corpus if r["label"] == "attack"]
    benign = [r for r in corpus if r["label"] == "benign"]
    assert len(attacks) >= 300
    assert len(benign) >= 300
    assert len({r["id"] for r in corpus}) == len(corpus)
    assert {r["category"] for r in attacks} == {*CATEGORIES, "entropy"}
    variants = {r["variant"].split("/")[1] for r in attacks}
    for encoding in ("plain", "url", "double", "triple", "html_dec", "html_named", "uescape", "sqlcomment", "mixed"):
        assert encoding in variants
    places = {r["variant"].split("/")[0] for r in attacks}
    for place in ("q", "path", "ua", "referer", "cookie", "json", "form", "xml", "multipart"):
        assert place in places


@pytest.mark.parametrize("mode", ["balanced", "aggressive"])
def test_corpus_rates_meet_targets(corpus: list[dict[str, Any]], mode: str) -> None:
    result = waf_corpus.evaluate(corpus, mode)
    min_detection, max_fp = waf_corpus.TARGETS[mode]
    assert result["detection_rate"] >= min_detection, result["misses"]
    assert result["false_positive_rate"] <= max_fp, result["false_positive_details"]


def test_aggressive_catches_what_balanced_does(corpus: list[dict[str, Any]]) -> None:
    balanced = waf_corpus.evaluate(corpus, "balanced")
    aggressive = waf_corpus.evaluate(corpus, "aggressive")
    assert set(aggressive["misses"]) <= set(balanced["misses"])
    assert aggressive["per_category"]["nosqli"]["rate"] == 1.0
    assert aggressive["per_category"]["deser"]["rate"] == 1.0


# ---------------------------------------------------------------- normalisers


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("%3cscript%3e", "<script>"),
        ("%3Cscript%3E".lower(), "<script>"),
        ("%41%42", "ab"),  # decoded letters come out lower case
        ("%zz%4", "%zz%4"),  # not escapes: kept as they are
        ("100%", "100%"),
        ("%u003cimg%u0020", "<img "),  # IIS %u
        ("%uff1cscript%uff1e", "<script>"),  # full-width, folded as NFKC would
        ("a%00b", "ab"),  # NUL removed, so it cannot split a keyword
        ("%25%33%63", "%3c"),  # one layer per pass
    ],
)
def test_url_decode(raw: str, decoded: str) -> None:
    assert n.url_decode(raw) == decoded


def test_plus_is_a_space_only_where_form_encoding_applies() -> None:
    assert n.decode_once("union+select", plus=True) == ("union select", True)
    assert n.decode_once("union+select", plus=False) == ("union+select", False)
    assert n.decode_once("a%2bb", plus=True) == ("a+b", True)  # an encoded plus stays a plus in the same pass


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("\\u003cscript\\u003e", "<script>"),
        ("\\u0041\\u0042", "ab"),
        ("\\x3cimg", "<img"),
        ("\\u{3c}svg", "<svg"),
        ("a\\\\u003c", "a\\u003c"),  # an escaped backslash, then literal text
        ('\\"\\/\\n', '"/\n'),
        ("c:\\windows", "c:\\windows"),  # not an escape
        ("\\ud800", "\ufffd"),  # a lone surrogate cannot reach the matcher
        ("\\u0000x", "x"),
        ("end\\", "end\\"),
    ],
)
def test_backslash_decode(raw: str, decoded: str) -> None:
    assert n.backslash_decode(raw) == decoded


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("&lt;script&gt;", "<script>"),
        ("&LT;b&GT;".lower(), "<b>"),
        ("&#60;&#x3c;&#X3C;".lower(), "<<<"),
        ("&#60script", "<script"),  # numeric references work without the semicolon
        ("&#0000000060;", "<"),  # any number of leading zeros
        ("&#x41;&#65;", "aa"),
        ("java&newline;script&colon;", "java\nscript:"),
        ("&tab;", "\t"),
        ("tom & jerry", "tom & jerry"),
        ("&notanentity;", "&notanentity;"),
        ("&#99999999999;", "\ufffd"),
        ("&#;", "&#;"),
    ],
)
def test_html_decode(raw: str, decoded: str) -> None:
    assert n.html_decode(raw) == decoded


@pytest.mark.parametrize(
    ("raw", "stripped"),
    [
        ("union/**/select", "union select"),
        ("union/*random text*/select", "union select"),
        ("/*!50000union*/ select", " union  select"),
        ("1/*unterminated", "1/*unterminated"),
        ("/*/*/a", " a"),
        ("a/**/b/**/c", "a b c"),
    ],
)
def test_strip_sql_comments(raw: str, stripped: str) -> None:
    assert n.strip_sql_comments(raw) == stripped


@pytest.mark.parametrize(
    ("raw", "folded"),
    [
        ("..\xc0\xaf..\xc0\xaf", "../../"),  # overlong '/'
        ("\xc0\xae\xc0\xae/", "../"),  # overlong '.'
        ("\xe0\x80\xae", "."),  # three-byte overlong
        ("\xef\xbc\x9cscript\xef\xbc\x9e", "<script>"),  # full-width < >, as UTF-8 bytes
        ("caf\xc3\xa9", "caf\xc3\xa9"),  # ordinary UTF-8 is left alone
        ("\xef\xbd\xa1", "\xef\xbd\xa1"),  # half-width katakana is not ASCII
    ],
)
def test_fold_utf8(raw: str, folded: str) -> None:
    assert n.fold_utf8(raw) == folded


def test_collapse_makes_every_whitespace_run_one_space() -> None:
    assert n.collapse("union\tselect") == "union select"
    assert n.collapse("union \n\r\x0b\x0c select") == "union select"
    assert n.collapse("union\xa0select") == "union select"
    assert n.collapse("union\u2003select") == "union select"
    assert n.collapse("union\xc2\xa0select") == "union select"  # NBSP as UTF-8 bytes
    assert n.collapse("union\xe2\x80\x83select") == "union select"  # em space as UTF-8 bytes
    assert n.collapse("\xe2\x80\x9cquoted\xe2\x80\x9d") == "\xe2\x80\x9cquoted\xe2\x80\x9d"  # curly quotes stay
    for s in ("a  b", "a\tb", "a\nb", "a\x1fb", "a\xa0b", "a\u2003b"):
        assert n.needs_collapse(s), s
    assert not n.needs_collapse("a b c")


def test_line_form_keeps_line_breaks_only() -> None:
    assert n.line_form("a\r\nset-cookie:  x\t y") == "a\nset-cookie: x y"


def test_fast_path_needs_no_decoding() -> None:
    clean = "/api/v1/items?page=2"
    assert not n.needs_decoding(clean, plus=True)
    assert n.decode_once(clean, plus=True)[0] is clean
    for trigger in ("%", "&#", "&lt;", "\\u", "/*", "\\x", "\xc0\xae"):
        assert n.needs_decoding("a" + trigger + "b", plus=False), trigger
    # An ampersand alone separates query parameters: no reference to decode without `&#` or `;`.
    assert not n.needs_decoding("a=1&b=2", plus=False)
    assert n.needs_decoding("a+b", plus=True)
    assert not n.needs_decoding("a+b", plus=False)


def test_inert_decodings_spare_a_rescan() -> None:
    assert n.inert(0xE9) and n.inert(0x4E2D) and n.inert(0x1F600)
    for cp in (0x3C, 0x20, 0xA0, 0x2003, 0x3000, 0xFF1C):
        assert not n.inert(cp), hex(cp)
    assert n.decode_once("o\\u2019brien caf\\u00e9", plus=False) == ("o\u2019brien caf\u00e9", False)
    assert n.decode_once("\\u003cscript", plus=False) == ("<script", True)
    assert n.decode_once("caf&eacute; &nbsp;", plus=False) == ("caf\u00e9 \u00a0", True)
    e = engine()
    scans: list[str] = []
    real = e._matcher.first

    def recording(text: str) -> Any:
        scans.append(text)
        return real(text)

    e._matcher.first = recording  # type: ignore[method-assign]
    ascii_only = json.dumps({"name": "Siobhán O'Brien", "city": "Zürich"}).encode()
    assert b"\\u00e1" in ascii_only
    assert e.inspect_body("POST", JSON_CT, ascii_only) is None
    assert len(scans) == 1
    verdict = e.inspect_body("POST", JSON_CT, b'{"name": "Zo\\u00eb", "x": "\\u003cscript>"}')
    assert verdict is not None and verdict.passes == 1 and len(scans) == 3


def test_up_to_three_decoding_passes() -> None:
    e = engine()
    payload = "<script>"
    for layers in (1, 2, 3):
        encoded = payload
        for _ in range(layers):
            encoded = "".join(f"%{b:02X}" for b in encoded.encode())
        verdict = head(e, b"/", b"q=" + encoded.encode())
        assert verdict is not None and verdict.pattern_id == "xss-001" and verdict.passes == layers
    four = payload
    for _ in range(4):
        four = "".join(f"%{b:02X}" for b in four.encode())
    assert head(e, b"/", b"q=" + four.encode()) is None


@pytest.mark.parametrize(
    "query",
    [
        b"q=UNION%09SELECT",
        b"q=union%0aselect",
        b"q=union/**/select",
        b"q=UnIoN/*x*/SeLeCt",
        b"q=union+++select",
        b"q=/*!50000UNION*/+SELECT",
        b"q=union%C2%A0select",
        b"q=union%A0select",
        b"q=union%E2%80%83select",
        b"q=%26%2360%3Bscript%26%2362%3B",
        b"q=%EF%BC%9Cscript%EF%BC%9E",
        b"q=%u003Cscript%u003E",
        b"q=\\u003cscript\\u003e",
        b"q=%5Cu003cscript%5Cu003e",
        b"q=uni%00on+select",
    ],
)
def test_evasions_are_normalised_away(query: bytes) -> None:
    verdict = head(engine(), b"/search", query)
    assert verdict is not None and verdict.location == "query"


def test_header_injection_in_a_decoded_head_value() -> None:
    e = engine()
    every_byte = "".join(f"%{b:02X}" for b in b"\r\nSet-Cookie: admin=1")
    verdict = head(e, b"/r", b"next=" + every_byte.encode())
    assert verdict is not None and verdict.category == "crlf" and verdict.pattern_id == "crlf-009"
    # The same words on their own line in a JSON body are prose, not an injection.
    body = json.dumps({"message": "Hello,\nLocation: London\nSubject: my card"}).encode()
    assert e.inspect_body("POST", JSON_CT, body) is None


# ---------------------------------------------------------------- content types


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        (b"application/json", BodyKind.JSON),
        (b"application/json; charset=utf-8", BodyKind.JSON),
        (b"Application/JSON ; charset=UTF-8", BodyKind.JSON),
        (b"application/problem+json", BodyKind.JSON),
        (b"application/vnd.api+json;ext=bulk", BodyKind.JSON),
        (b"application/jsonx", BodyKind.BINARY),
        (b"application/json-seq", BodyKind.BINARY),
        (b"application/x-json-stream", BodyKind.BINARY),
        (b"text/json", BodyKind.TEXT),
        (b"application/x-www-form-urlencoded", BodyKind.FORM),
        (b"application/x-www-form-urlencoded; charset=UTF-8", BodyKind.FORM),
        (b"application/x-www-form-urlencodedx", BodyKind.BINARY),
        (b"multipart/form-data; boundary=x", BodyKind.MULTIPART),
        (b"multipart/form-datax", BodyKind.BINARY),
        (b"text/plain", BodyKind.TEXT),
        (b"application/soap+xml", BodyKind.TEXT),
        (b"", BodyKind.TEXT),
        (b"application/octet-stream", BodyKind.BINARY),
        (b"image/png", BodyKind.BINARY),
    ],
)
def test_content_type_boundaries(content_type: bytes, kind: BodyKind) -> None:
    assert body_kind(content_type) is kind


def test_json_rules_only_for_json_types() -> None:
    e = engine()
    invalid = b'{"a": '
    verdict = e.inspect_body("POST", {b"content-type": b"application/json; charset=utf-8"}, invalid)
    assert verdict is not None and (verdict.status, verdict.pattern_id) == (400, "json-invalid")
    assert e.inspect_body("POST", {b"content-type": b"application/jsonx"}, invalid) is None
    assert e.inspect_body("POST", {b"content-type": b"text/plain"}, invalid) is None


def test_form_values_are_decoded_and_scanned() -> None:
    e = engine()
    verdict = e.inspect_body("POST", FORM_CT, b"name=Jane&comment=1%27+UNION+SELECT+password+FROM+users--")
    assert verdict is not None and verdict.pattern_id == "sqli-001" and verdict.passes == 1
    assert e.inspect_body("POST", FORM_CT, b"name=O%27Brien&comment=Drop+us+a+line%2C+union+members%21") is None


def test_multipart_is_scanned_raw() -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="f"; filename="a.svg"\r\n\r\n<svg onload=alert(1)>\r\n--b--\r\n'
    )
    verdict = engine().inspect_body("POST", {b"content-type": b"multipart/form-data; boundary=b"}, body)
    assert verdict is not None and verdict.category == "xss"


# ---------------------------------------------------------------- JSON limits


def nested(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"[1]" + b"}" * (depth - 1)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (nested(32), None),
        (nested(33), "json-depth"),
        (b"[" * 100000 + b"]" * 100000, "json-depth"),  # past the interpreter's recursion limit
        (json.dumps({f"k{i}": i for i in range(1000)}).encode(), None),
        (json.dumps({f"k{i}": i for i in range(1001)}).encode(), "json-keys"),
        (json.dumps([{f"k{i}": i for i in range(600)}, {f"j{i}": i for i in range(600)}]).encode(), None),
        (json.dumps(["x" * 65536]).encode(), None),
        (json.dumps(["x" * 65537]).encode(), "json-string"),
        (json.dumps({"x" * 65537: 1}).encode(), "json-string"),
        (json.dumps(["\\" * 40000]).encode(), "json-string"),  # 80000 bytes of escapes, 40000 characters
        (json.dumps(["\\" * 70000]).encode(), "json-string"),
        (json.dumps(list(range(10000))).encode(), None),
        (json.dumps(list(range(10001))).encode(), "json-array"),
        (json.dumps([list(range(6000)), list(range(6000))]).encode(), None),
        (b'{"a": 1,}', "json-invalid"),
        (b"{'a': 1}", "json-invalid"),
        (b'{"a": "\xff"}', "json-invalid"),
        (b'"just a string"', None),
    ],
)
def test_json_limits(body: bytes, expected: str | None) -> None:
    limits = jsonbody.JsonLimits()
    if expected == "json-string" and body.count(b"\\") and len(body) < 100000:
        # 40000 backslashes are 40000 characters: within the limit.
        expected = None
    assert jsonbody.check(body, limits) == expected


def test_each_json_limit_gives_a_precise_verdict() -> None:
    e = engine(
        json_max_depth=4,
        json_max_keys=3,
        json_max_string_length=10,
        json_max_array_items=5,
        max_inspect_body_bytes=1 << 20,
    )
    cases = {
        "json-depth": b'{"a": {"b": {"c": {"d": {"e": 1}}}}}',
        "json-keys": b'{"a": 1, "b": 2, "c": 3, "d": 4}',
        "json-string": b'{"a": "01234567890"}',
        "json-array": b"[1, 2, 3, 4, 5, 6]",
        "json-invalid": b'{"a": [1, 2}',
    }
    for pattern_id, body in cases.items():
        verdict = e.inspect_body("PUT", JSON_CT, body)
        assert verdict == Verdict(400, "json", pattern_id, "body", "test"), pattern_id
    assert e.inspect_body("PUT", JSON_CT, b'{"a": {"b": {"c": [1, 2, 3, 4, 5]}}, "k": "0123456789"}') is None


def test_a_truncated_json_prefix_is_scanned_not_refused() -> None:
    e = engine(max_inspect_body_bytes=64)
    body = json.dumps({"note": "x" * 100}).encode()
    assert e.inspect_body("POST", JSON_CT, body) is None
    attack = json.dumps({"q": "' UNION SELECT 1--", "pad": "x" * 100}).encode()
    verdict = e.inspect_body("POST", JSON_CT, attack)
    assert verdict is not None and verdict.pattern_id == "sqli-001"


# ---------------------------------------------------------------- entropy


def test_entropy_values() -> None:
    rnd = random.Random(1)
    random_bytes = bytes(rnd.getrandbits(8) for _ in range(4096))
    assert entropy.shannon(random_bytes) > 7.9
    assert entropy.shannon(b"a" * 100) == 0.0
    assert entropy.shannon(bytes(range(256))) == 8.0
    b64 = base64.b64encode(random_bytes)
    assert entropy.shannon(b64) < 6.0
    assert not entropy.exceeds(b64, 6.5)
    assert entropy.exceeds(random_bytes, 6.5)
    assert not entropy.exceeds(random_bytes, 7.99)


@pytest.mark.parametrize(
    "text",
    [
        "Hi there, I'd like to update the address on my account. " * 40,
        "Très bien, l'hôtel était à côté de la gare; le petit-déjeuner était copieux. " * 40,
        "Привет, как дела? Я хотел бы обновить адрес в моём аккаунте. " * 40,
        "我想更新我账户上的地址。上个月我搬家了\uff0c还没有收到我的卡。" * 40,
    ],
)
def test_entropy_bound_agrees_with_the_exact_value_on_text(text: str) -> None:
    data = text.encode()
    assert entropy.shannon(data) < 6.5
    assert not entropy.exceeds(data, 6.5)


def test_entropy_decision_matches_exact_shannon_on_random_inputs() -> None:
    rnd = random.Random(2)
    for _ in range(200):
        alphabet = rnd.randint(2, 256)
        size = rnd.randint(64, 2000)
        data = bytes(rnd.randrange(alphabet) for _ in range(size))
        threshold = rnd.uniform(1.0, 8.0)
        assert entropy.exceeds(data, threshold) == (entropy.shannon(data) > threshold)


def jwt(rnd: random.Random) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {
        "sub": "user-1",
        "iat": 1714550000,
        "exp": 1714553600,
        "scope": "openid profile",
        "nonce": b64(os.urandom(24)),
    }
    return ".".join([b64(b'{"alg":"ES256","typ":"JWT"}'), b64(json.dumps(claims).encode()), b64(rnd.randbytes(64))])


def test_entropy_gate_on_bodies() -> None:
    e = engine()
    rnd = random.Random(3)
    random_bytes = rnd.randbytes(2048)
    for ctype in (b"text/plain", b""):
        verdict = e.inspect_body("POST", {b"content-type": ctype}, random_bytes)
        assert verdict == Verdict(403, "entropy", "entropy-gate", "body", "test"), ctype
    form = b"blob=" + "".join(f"%{b:02X}" for b in random_bytes).encode()
    assert e.inspect_body("POST", FORM_CT, form) is not None
    # Base64 blobs and JWTs pass at the default threshold, in JSON and as text.
    blob = base64.b64encode(rnd.randbytes(6000)).decode()
    assert e.inspect_body("POST", JSON_CT, json.dumps({"file": blob}).encode()) is None
    assert e.inspect_body("POST", {b"content-type": b"text/plain"}, blob.encode()) is None
    tokens = [jwt(rnd) for _ in range(8)]
    assert e.inspect_body("POST", JSON_CT, json.dumps({"tokens": tokens}).encode()) is None
    assert e.inspect_body("POST", {b"content-type": b"text/plain"}, " ".join(tokens).encode()) is None
    # Binary types and multipart uploads are binary by nature: no gate.
    assert e.inspect_body("PUT", {b"content-type": b"application/octet-stream"}, random_bytes) is None
    assert e.inspect_body("POST", {b"content-type": b"multipart/form-data; boundary=x"}, random_bytes) is None
    # Short inputs say nothing.
    assert e.inspect_body("POST", {b"content-type": b"text/plain"}, random_bytes[:255]) is None


def test_json_entropy_counts_string_literals_only() -> None:
    rnd = random.Random(4)
    ascii_chars = [chr(c) for c in range(0x21, 0x7F) if c not in (0x22, 0x5C)]
    wide_chars = [chr(c) for c in range(0xA1, 0x800)]
    noise = "".join(rnd.choice(ascii_chars if rnd.random() < 0.5 else wide_chars) for _ in range(1500))
    # Random text in a string literal, diluted by a long array of digits: the body as a whole is
    # far under the threshold, its string literals far over it.
    body = json.dumps({"values": [rnd.randrange(10) for _ in range(3000)], "note": noise}, ensure_ascii=False).encode()
    strings = jsonbody.string_bytes(jsonbody.split(body))
    assert strings.startswith(b"valuesnote")
    assert entropy.shannon(body) < 5.0 < 6.5 < entropy.shannon(strings)
    assert engine().inspect_body("POST", JSON_CT, body) == Verdict(403, "entropy", "entropy-gate", "body", "test")
    # Escaped quotes and backslashes do not end a literal early.
    assert jsonbody.string_bytes(jsonbody.split(b'{"a": "x\\"y\\\\", "b": 1}')) == b"axyb"
    # Numbers and structure alone have no string literals to measure.
    numbers = json.dumps([rnd.random() for _ in range(500)]).encode()
    assert jsonbody.string_bytes(jsonbody.split(numbers)) == b""
    assert engine().inspect_body("POST", JSON_CT, numbers) is None


def test_entropy_kill_switch_and_threshold() -> None:
    random_bytes = random.Random(5).randbytes(2048)
    text = {b"content-type": b"text/plain"}
    assert engine(entropy=False).inspect_body("POST", text, random_bytes) is None
    assert engine(entropy_threshold=8.0).inspect_body("POST", text, random_bytes) is None
    english = ("The quick brown fox jumps over the lazy dog. " * 20).encode()
    assert engine().inspect_body("POST", text, english) is None
    assert engine(entropy_threshold=3.0).inspect_body("POST", text, english) is not None


# ---------------------------------------------------------------- pattern files


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[sqli]\nsqli-001 union select\n", 1, "the first line must be `version <version>`"),
        ("version 1\n[sqli]\nsqli-001 union select\nsqli-001 or 1=1\n", 4, "duplicate id 'sqli-001' (also x.txt:3)"),
        ("version 1\n[sqli]\nsqli-001\n", 3, "sqli-001: empty pattern"),
        ("version 1\n[sqli]\nsqli-001 \\s\\s\n", 3, "sqli-001: empty pattern"),
        ("version 1\n[sql]\nsql-001 union select\n", 2, "unknown category 'sql'"),
        ("version 1\n[sqli]\nxss-001 <script\n", 3, "id 'xss-001' is under [sqli]; ids start with their category"),
        ("version 1\n[sqli]\nsqli-1 union select\n", 3, "'sqli-1' is not an id like sqli-001"),
        ("version 1\nsqli-001 union select\n", 2, "pattern before the first [category] header"),
        ("version 1\n[sqli]\nsqli-001 a\\tb\n", 3, "unknown escape '\\\\t'"),
        ("version 1\n[sqli]\nsqli-001 ab\n", 3, "shorter than 3 characters"),
        ("version 1\n[crlf]\ncrlf-001 \u560aset-cookie\n", 3, "crlf-001: patterns are ASCII"),
        ("version 1\n[sqli]\nsqli-001 union  select\n", 3, "two never match"),
        ("version 1\n[sqli]\nsqli-001 union select\nsqli-002 UNION SELECT\n", 4, "repeats sqli-001"),
        ("version 1\n[sqli]\nsqli-001 union select\nversion 2\n", 4, "a second version line"),
        ("version 1\n[sqli]\nsqli-001 union select\ninclude balanced\n", 4, "include must come before"),
        ("version 1\ninclude nosuchset\n", 2, "no pattern set 'nosuchset'"),
        ("version 1\n", 0, "no patterns"),
        ("# only a comment\n", 0, "empty file"),
    ],
)
def test_pattern_file_errors_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(PatternFileError) as err:
        parse_pattern_file(text, "x.txt", include=load_pattern_set)
    assert err.value.source == "x.txt"
    assert err.value.line == line
    assert message in err.value.message
    assert str(err.value).startswith(f"x.txt:{line}: " if line else "x.txt: ")


def test_pattern_file_syntax() -> None:
    text = "# c\nversion 7\n\n[cmdi]\ncmdi-001 ;sleep\\s\n[crlf]\ncrlf-001 \\nset-cookie:\ncrlf-002 \\\\nbcc:\n"
    parsed = parse_pattern_file(text, "x.txt")
    assert parsed.version == "7"
    assert [(p.id, p.category, p.text, p.line) for p in parsed.patterns] == [
        ("cmdi-001", "cmdi", ";sleep ", 5),
        ("crlf-001", "crlf", "\nset-cookie:", 7),
        ("crlf-002", "crlf", "\\nbcc:", 8),
    ]


def test_builtin_sets() -> None:
    balanced = load_pattern_set("balanced")
    aggressive = load_pattern_set("aggressive")
    assert balanced.version and aggressive.version
    assert len(balanced.patterns) >= 120
    assert len(aggressive.patterns) >= 190
    assert balanced.ids() < aggressive.ids()  # aggressive includes balanced by reference
    assert {p.category for p in balanced.patterns} == set(CATEGORIES) - {"nosqli", "deser"}
    assert {p.category for p in aggressive.patterns} == set(CATEGORIES)
    for p in aggressive.patterns:
        assert p.text == p.text.lower() and "  " not in p.text, p.id
    with pytest.raises(LookupError, match="no pattern set 'nope'"):
        load_pattern_set("nope")


def test_no_regular_expression_touches_request_input() -> None:
    package = Path(engine_module.__file__).parent
    for module in ("engine", "matcher", "normalise", "jsonbody", "entropy", "content", "verdict", "firewall"):
        source = (package / f"{module}.py").read_text()
        assert "import re\n" not in source and "from re " not in source, module


# ---------------------------------------------------------------- verdicts and inputs


def test_locations() -> None:
    e = engine()
    assert head(e, b"/files/..%2f..%2fetc%2fpasswd") == Verdict(403, "traversal", "traversal-020", "path", "test")
    verdict = head(e, b"/", b"", user_agent=b"${jndi:ldap://x/a}")
    assert verdict is not None and verdict.location == "header:user-agent" and verdict.category == "log4shell"
    verdict = head(e, b"/", b"", cookie=b"sid=1; theme=dark; pref=%3Cscript%3E")
    assert verdict is not None and verdict.location == "cookie:pref"
    verdict = head(e, b"/", b"", cookie=b"sid=1; <script>=1")
    assert verdict is not None and verdict.location == "cookie:<script>"
    verdict = e.inspect_body("DELETE", JSON_CT, b'{"reason": "1; DROP TABLE users"}')
    assert verdict is not None and verdict.location == "body" and verdict.category == "sqli"


def test_location_names_are_bounded_and_printable() -> None:
    e = engine(headers=("*",))
    name = b"x-" + b"\x01" * 200
    verdict = e.inspect_head("GET", b"/", b"", {name: b"<script>"})
    assert verdict is not None
    assert verdict.location == "header:x-" + "?" * 62


def test_a_pattern_cannot_span_two_inputs() -> None:
    e = engine()
    # "union" ends the query and "select" starts the user agent; so do ';' and 'id;' in cookies.
    assert head(e, b"/", b"q=union", user_agent=b"select x") is None
    assert head(e, b"/", b"", cookie=b"a=x; id; b=1") is None
    assert head(e, b"/", b"q=<scr", referer=b"ipt>") is None


def test_referrers_are_matched_without_ssrf_patterns() -> None:
    e = engine()
    local = b"http://localhost:3000/checkout"
    assert head(e, b"/", b"", referer=local, origin=b"http://localhost:3000") is None
    # ... and that does not vouch for the same bytes anywhere else.
    verdict = head(e, b"/", b"url=" + local)
    assert verdict is not None and verdict.category == "ssrf"
    verdict = head(e, b"/", b"", referer=b"http://localhost/${jndi:ldap://x/a}")
    assert verdict is not None and (verdict.category, verdict.location) == ("log4shell", "header:referer")


def test_only_configured_headers_and_cookies_are_inspected() -> None:
    attack = b"${jndi:ldap://evil/a}"
    e = engine()
    assert head(e, b"/", b"", x_custom=attack) is None
    assert head(e, b"/", b"", authorization=b"Bearer " + attack) is None
    assert head(engine(headers=("x-custom",)), b"/", b"", x_custom=attack) is not None
    every = engine(headers=("*",))
    assert head(every, b"/", b"", x_custom=attack) is not None
    assert head(every, b"/", b"", authorization=b"Bearer " + attack) is None
    assert head(engine(cookies=False), b"/", b"", cookie=b"a=" + attack) is None
    assert head(e, b"/", b"", cookie=b"a=" + attack) is not None
    assert set(DEFAULT_HEADERS) >= {"user-agent", "referer", "content-type", "x-forwarded-host", "x-original-url"}


def test_bodies_only_for_methods_that_carry_them() -> None:
    e = engine()
    body = b"<script>alert(1)</script>"
    for method in ("GET", "HEAD", "OPTIONS"):
        assert e.inspect_body(method, {}, body) is None
        assert not e.wants_body(method)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert e.inspect_body(method, {}, body) is not None
        assert e.wants_body(method)
    assert not engine(max_inspect_body_bytes=0).wants_body("POST")
    assert engine(max_inspect_body_bytes=0).inspect_body("POST", {}, body) is None


def test_oversize_bodies() -> None:
    attack_late = b"a" * 200 + b"<script>"
    prefix = engine(max_inspect_body_bytes=100)
    assert prefix.inspect_body("POST", {}, attack_late) is None  # only the first 100 bytes are read
    assert prefix.inspect_body("POST", {}, b"<script>" + b"a" * 200) is not None
    # The caller may pass just the prefix it buffered and the full length.
    assert prefix.inspect_body("POST", {}, b"<script>", total=10**9) is not None
    reject = engine(max_inspect_body_bytes=100, oversize="reject")
    assert reject.inspect_body("POST", {}, b"a" * 101) == Verdict(413, "oversize", "body-oversize", "body", "test")
    assert reject.inspect_body("POST", {}, b"a" * 10, total=101) is not None
    assert reject.inspect_body("POST", {}, b"a" * 100) is None


@pytest.mark.parametrize("mode", ["balanced", "aggressive"])
def test_long_texts_decoded_in_windows_find_what_decoding_them_whole_finds(
    corpus: list[dict[str, Any]], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long body is decoded only around its encoded sequences; that must change no verdict.

    Every attack of the corpus (query or body) is put inside 3 KiB of prose at its start,
    middle and end, as a plain-text body, and inspected windowed and whole.
    """
    from ingress.policy.waf import matcher

    prose = b"Dear team, please find the quarterly figures attached; revenue rose by 4.2 per cent. " * 36
    e = engine(patterns=mode, entropy=False)
    headers = {b"content-type": b"text/plain"}
    payloads = []
    for record in corpus:
        if record["label"] == "attack":
            _, _, query, _, body = waf_corpus.request_of(record)
            if body or query:
                payloads.append(body or query)
    assert len(payloads) > 300
    checked = windowed_bodies = 0
    for payload in payloads:
        for body in (payload + prose, prose[:1537] + payload + prose[1537:], prose + payload):
            assert len(body) >= matcher.WINDOWED_MIN
            monkeypatch.setattr(matcher, "WINDOWED_MIN", 1 << 30)
            whole = e.inspect_body("POST", headers, body)
            monkeypatch.setattr(matcher, "WINDOWED_MIN", 1024)
            windowed = e.inspect_body("POST", headers, body)
            assert windowed == whole, (payload, windowed, whole)
            checked += whole is not None
            windows = matcher._windows(body.lower().decode("latin-1"), False, 64)
            windowed_bodies += bool(windows)
    assert checked > 600  # most attacks are found in a long body too, so the comparison says something
    assert windowed_bodies > 600  # and most long bodies were decoded in windows, not whole


def test_a_sql_comment_longer_than_any_window_still_joins_keywords() -> None:
    filler = "x" * 3000
    body = f"note=fine&q=1 union/*{filler}*/select password from users".encode()
    found = engine().inspect_body("POST", {b"content-type": b"text/plain"}, b"padding " * 200 + body)
    assert found is not None and found.category == "sqli"


def test_compressed_bodies_are_decoded_within_the_inspection_limit() -> None:
    attack = json.dumps({"comment": "<script>alert(1)</script>"}).encode()
    e = engine()
    gz = {**JSON_CT, b"content-encoding": b"gzip"}
    for coded, headers in (
        (gzip.compress(attack), gz),
        (gzip.compress(attack), {**JSON_CT, b"content-encoding": b" X-GZIP "}),
        (zlib.compress(attack), {**JSON_CT, b"content-encoding": b"deflate"}),
        (zlib.compress(attack)[2:-4], {**JSON_CT, b"content-encoding": b"deflate"}),  # raw deflate, no zlib wrapper
    ):
        found = e.inspect_body("POST", headers, coded)
        assert found is not None and (found.category, found.location) == ("xss", "body"), headers
    clean = json.dumps({"rows": list(range(500))}).encode()
    assert e.inspect_body("POST", gz, gzip.compress(clean)) is None  # valid JSON once decoded, low entropy
    assert e.inspect_body("POST", {**JSON_CT, b"content-encoding": b"identity"}, clean) is None
    # What cannot be read is refused, not passed unread; a broken stream is a bad request.
    assert e.inspect_body("POST", {**JSON_CT, b"content-encoding": b"br"}, b"\x1b\x00") == Verdict(
        415, "encoding", "body-coding", "body", "test"
    )
    assert e.inspect_body("POST", {**JSON_CT, b"content-encoding": b"gzip, gzip"}, gzip.compress(clean)) is not None
    assert e.inspect_body("POST", gz, gzip.compress(clean)[:-10]) == Verdict(
        400, "encoding", "body-corrupt", "body", "test"
    )
    assert e.inspect_body("POST", gz, b"not gzip at all") == Verdict(400, "encoding", "body-corrupt", "body", "test")


def test_a_decompression_bomb_is_decoded_no_further_than_the_limit() -> None:
    bomb = gzip.compress(b"a" * (64 << 20))  # 64 MiB of "a" in about 64 KiB
    headers = {b"content-type": b"text/plain", b"content-encoding": b"gzip"}
    reject = engine(max_inspect_body_bytes=4096, oversize="reject")
    started = time.perf_counter()
    assert reject.inspect_body("POST", headers, bomb) == Verdict(413, "oversize", "body-oversize", "body", "test")
    assert time.perf_counter() - started < 0.05  # inflating 64 MiB would take far longer
    prefix = engine(max_inspect_body_bytes=4096)
    late = gzip.compress(b"a" * 8192 + b"<script>alert(1)</script>")
    assert prefix.inspect_body("POST", headers, late) is None  # past the limit, as for a plain body
    early = gzip.compress(b"<script>alert(1)</script>" + b"a" * (64 << 20))
    assert prefix.inspect_body("POST", headers, early) is not None


def test_shadow_mode_reports_without_blocking() -> None:
    verdict = head(engine(action="shadow"), b"/", b"q=%3Cscript%3E")
    assert verdict is not None and not verdict.block and verdict.status == 403
    assert head(engine(), b"/", b"q=%3Cscript%3E") == Verdict(403, "xss", "xss-001", "query", "test", True, 1)


def test_excluded_patterns_are_off() -> None:
    text = {b"content-type": b"text/plain"}
    body = b"I love JavaScript: it's everywhere."
    assert engine().inspect_body("POST", text, body) is not None
    assert engine(exclude=("xss-003",)).inspect_body("POST", text, body) is None


def test_verdicts_hold_no_request_bytes() -> None:
    secret = "hunter2' OR '1'='1"
    verdict = engine().inspect_body("POST", JSON_CT, json.dumps({"password": secret}).encode())
    assert verdict is not None
    assert all(secret not in str(value) and "hunter2" not in str(value) for value in vars_of(verdict))


def vars_of(verdict: Verdict) -> list[object]:
    return [getattr(verdict, f) for f in verdict.__slots__]


def test_clean_values_are_remembered_but_never_attacks() -> None:
    e = engine()
    calls: list[int] = []
    real = e._matcher.scan

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    e._matcher.scan = counting  # type: ignore[method-assign]
    headers = {b"user-agent": b"Mozilla/5.0", b"cookie": b"sid=abc; lang=en"}
    assert e.inspect_head("GET", b"/a", b"x=1", headers) is None
    assert e.inspect_head("GET", b"/a", b"x=1", headers) is None
    assert len(calls) == 1
    attack = {b"user-agent": b"() { :; }; /bin/bash -c id"}
    assert e.inspect_head("GET", b"/a", b"x=1", attack) is not None
    assert e.inspect_head("GET", b"/a", b"x=1", attack) is not None
    assert len(calls) == 3


def test_clean_value_memory_is_bounded() -> None:
    e = engine()
    for i in range(3000):
        e.inspect_head("GET", b"/p/" + str(i).encode() * 200, b"", {})
    assert e._clean_bytes <= engine_module.CLEAN_TOTAL_MAX
    assert sum(len(v) for v in e._clean) == e._clean_bytes
    big = b"/" + b"a" * (engine_module.CLEAN_VALUE_MAX + 1)
    e.inspect_head("GET", big, b"", {})
    assert big not in e._clean


# ---------------------------------------------------------------- linear time


def elapsed(f: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


HOSTILE = {
    "percent": b"%25",
    "percent-u": b"%u",
    "comment-open": b"/*",
    "comment-pairs": b"/**/",
    "entity-start": b"&#",
    "entity-named": b"&lt",
    "entity-amp": b"&amp;",
    "backslash-u": b"\\u",
    "backslash": b"\\",
    "letters": b"a",
    "quote": b"'",
    "overlong": b"%c0",
    "fullwidth": b"\xef\xbc",
    "whitespace": b" \t",
    "pattern-prefix": b"union selec",
}


@pytest.mark.parametrize("unit", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_inputs_take_linear_time(unit: bytes) -> None:
    e = engine(max_inspect_body_bytes=8 << 20)
    small = unit * ((256 << 10) // len(unit))
    large = unit * ((1 << 20) // len(unit))

    def body(data: bytes) -> Callable[[], object]:
        return lambda: e.inspect_body("POST", FORM_CT, data)

    def query(data: bytes) -> Callable[[], object]:
        return lambda: e.inspect_head("GET", b"/", data, {})

    for probe in (body, query):
        t_small = elapsed(probe(small))
        t_large = elapsed(probe(large))
        assert t_large < 3.0, (probe.__name__, t_large)
        assert t_large < 8 * max(t_small, 0.002), (probe.__name__, t_small, t_large)


@pytest.mark.parametrize(
    "unit", [b"[", b'{"a":', b'"\\\\', b'["a",'], ids=["brackets", "objects", "escapes", "strings"]
)
def test_hostile_json_takes_linear_time(unit: bytes) -> None:
    e = engine(max_inspect_body_bytes=8 << 20)
    small = unit * ((256 << 10) // len(unit))
    large = unit * ((1 << 20) // len(unit))
    t_small = elapsed(lambda: e.inspect_body("POST", JSON_CT, small))
    t_large = elapsed(lambda: e.inspect_body("POST", JSON_CT, large))
    assert t_large < 3.0
    assert t_large < 8 * max(t_small, 0.002)


# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class RouteStub:
    waf: RouteWaf = field(default_factory=RouteWaf)


@dataclass(frozen=True)
class ConfigStub:
    waf: Waf = field(default_factory=Waf)
    routes: tuple[RouteStub, ...] = ()
    source: str = "edge.toml"


def messages(config: ConfigStub) -> list[str]:
    return [str(p) for p in waf_problems(config)]


def test_config_defaults_and_builtin_profiles() -> None:
    waf = Waf()
    assert not waf.enabled and waf.profile == "balanced"
    profiles = waf.resolved_profiles()
    assert set(profiles) == {"balanced", "aggressive"}
    assert profiles["aggressive"].patterns == "aggressive"
    p = WafProfile(name="x")
    assert (p.patterns, p.action, p.headers, p.cookies, p.oversize) == (
        "balanced",
        "block",
        DEFAULT_HEADERS,
        True,
        "inspect_prefix",
    )
    assert (p.max_inspect_body_bytes, p.entropy, p.entropy_threshold) == (65536, True, 6.5)
    assert (p.json_max_depth, p.json_max_keys, p.json_max_string_length, p.json_max_array_items) == (
        32,
        1000,
        65536,
        10000,
    )
    assert messages(ConfigStub()) == []


def test_config_semantics_name_key_and_fix() -> None:
    config = ConfigStub(
        waf=Waf(
            profile="strict",
            profiles=(
                WafProfile(name="api", headers=("User-Agent", "x y", "cookie")),
                WafProfile(name="api", exclude=("xss-999",), patterns="aggressive"),
                WafProfile(name="all", headers=("*", "referer")),
            ),
        ),
        routes=(RouteStub(), RouteStub(RouteWaf(profile="nope"))),
    )
    assert messages(config) == [
        "edge.toml: waf.profiles[0].headers[0]: 'User-Agent' is not a header name;"
        " write it in lower case: 'user-agent'",
        "edge.toml: waf.profiles[0].headers[1]: 'x y' is not a header name",
        "edge.toml: waf.profiles[0].headers[2]: cookie is not inspected as a header; use cookies = true",
        "edge.toml: waf.profiles[1].name: duplicate profile name 'api' (also waf.profiles[0])",
        "edge.toml: waf.profiles[1].exclude[0]: no pattern 'xss-999' in the aggressive set; ids are like sqli-001"
        " (see the pattern id of a decision)",
        "edge.toml: waf.profiles[2].headers[0]: `*` already means every header; list it alone",
        "edge.toml: waf.profile: no WAF profile named 'strict' (profiles: aggressive, all, api, balanced);"
        " define it in [[waf.profiles]]",
        "edge.toml: routes[1].waf.profile: no WAF profile named 'nope' (profiles: aggressive, all, api, balanced);"
        " define it in [[waf.profiles]]",
    ]


def test_config_tables_load_with_the_config_loader() -> None:
    out = _Collector("edge.toml")
    data = {
        "enabled": True,
        "profile": "api",
        "profiles": [{"name": "api", "action": "shadow", "entropy_threshold": 7, "exclude": ["xss-003"]}],
    }
    waf = _build(Waf, data, "waf", out)
    assert out.problems == []
    assert waf == Waf(
        True, "api", (WafProfile(name="api", action="shadow", entropy_threshold=7.0, exclude=("xss-003",)),)
    )
    bad = {"profiles": [{"name": "x", "action": "log", "entropy_treshold": 7, "json_max_depth": 0}]}
    _build(Waf, bad, "waf", out)
    assert [str(p) for p in out.problems] == [
        "edge.toml: waf.profiles[0].action: invalid value 'log'; expected one of 'block', 'shadow'",
        "edge.toml: waf.profiles[0].entropy_treshold: unknown key; did you mean 'entropy_threshold'?",
        "edge.toml: waf.profiles[0].json_max_depth: 0 is below the minimum 1",
    ]
    route = _build(RouteWaf, {"enabled": False}, "routes[0].waf", out)
    assert route == RouteWaf(enabled=False)
    schema = _object(Waf)
    assert schema["properties"]["profiles"]["items"]["properties"]["action"]["enum"] == ["block", "shadow"]
    assert "description" in schema["properties"]["enabled"]


def test_firewall_picks_the_engine_per_route() -> None:
    off = Firewall(Waf())
    assert off.engine_for(None) is None
    assert off.engine_for(RouteWaf()) is None
    on = off.engine_for(RouteWaf(enabled=True))
    assert on is not None and on.name == "balanced"
    routes = (RouteWaf(profile="aggressive"), RouteWaf(enabled=False))
    fw = Firewall(Waf(enabled=True, profiles=(WafProfile(name="balanced", action="shadow"),)), routes)
    default = fw.engine_for(None)
    assert default is not None and default.profile.action == "shadow"
    aggressive = fw.engine_for(routes[0])
    assert aggressive is not None and aggressive.profile.patterns == "aggressive"
    assert fw.engine_for(routes[1]) is None
