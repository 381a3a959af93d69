"""RFC 9111 conformance of the shared cache, measured by http-cache-tests (cache-tests.fyi) against a real edge.

The suite (npm `http-cache-tests` 0.4.5, pinned) is installed by `./dev test`
(`setup_tools`) into .cache/cachetests; its origin is started on 127.0.0.1,
then one edge with a cached proxy route in front of it (tests/cachetests/edge.py),
and the suite's client runs all of its tests through the edge (about 20 s).

Two things are asserted over the required tests that apply to a shared cache
(every test but the 5 browser-only ones: 165 in 0.4.5):

- the share passing is at least THRESHOLD, the level reached, so a change that
  loses conformance fails here;
- every required test that does not pass is one of KNOWN, each with the reason
  it is accepted, so a new failure is seen even when something else improved.

The summary (counts, and every required test not passing with the suite's
message) is printed to the terminal whatever the outcome, for CI logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.cachetests.edge import edge_config
from tests.cachetests.run import HarnessError, Suite, outcome, report, summarize
from tests.server import ROOT, Server

SUITE = ROOT / ".cache" / "cachetests" / "node_modules" / "http-cache-tests"
SUITE_VERSION = "0.4.5"

# Reached: 149 of 165 required tests (0.903). Of the 16 not passing, 9 (age-parse-*) test a draft rule RFC 9111
# replaced, 4 (stale-close-*) cannot pass with 0.4.5's client, 2 are the deliberate Set-Cookie rule and 1 asks for
# an update RFC 9111 §4.3.4 forbids.
THRESHOLD = 0.90

_AGE = "0.4.5 expects an invalid or list-valued Age to make the response stale, as RFC 9111 drafts said; the RFC (§5.1) says use the first member and ignore an invalid one, as the cache does (the suite's later revision agrees)"  # noqa: E501
_STALE_CLOSE = "needs stale-close (check: serve stale when the origin drops the connection); even then unpassable in 0.4.5, whose client counts the cache's error answer as a cached one"  # noqa: E501
_SET_COOKIE = "deliberate: a response setting a cookie is stored only with public or s-maxage, so one client's cookie is never replayed to another"  # noqa: E501
KNOWN: dict[str, str] = {
    **{
        f"age-parse-{name}": _AGE
        for name in (
            "nonnumeric",
            "negative",
            "float",
            "prefix-twoline",
            "dup-0",
            "dup-0-twoline",
            "dup-old",
            "parameter",
            "numeric-parameter",
        )
    },
    **{f"stale-close-{cc}": _STALE_CLOSE for cc in ("must-revalidate", "proxy-revalidate", "no-cache", "s-maxage=2")},
    "headers-store-Set-Cookie": _SET_COOKIE,
    "304-etag-update-response-Set-Cookie": _SET_COOKIE,
    "304-etag-update-response-ETag": "the 304's ETag differs from the stored one, so RFC 9111 §4.3.4 forbids updating the stored response; the cache drops it and the test's third request is not a hit",  # noqa: E501
}


def _suite() -> Suite:
    if not (SUITE / "cli.mjs").is_file():
        pytest.fail(
            f"http-cache-tests {SUITE_VERSION} is not installed at {SUITE}: run ./dev test (its setup_tools installs "
            f"node and the suite), or `npm install --no-audit --no-fund --prefix .cache/cachetests "
            f"http-cache-tests@{SUITE_VERSION}` from {ROOT}",
            pytrace=False,
        )
    suite = Suite(SUITE)
    if suite.version != SUITE_VERSION:
        pytest.fail(f"{SUITE} holds http-cache-tests {suite.version}, not {SUITE_VERSION}", pytrace=False)
    try:
        suite.node_version()
    except HarnessError as e:
        pytest.fail(f"http-cache-tests needs node >= 14.8: {e}", pytrace=False)
    return suite


def test_http_cache_tests_conformance(start_server: Callable[..., Server], capsys: pytest.CaptureFixture[str]) -> None:
    suite = _suite()
    start = time.monotonic()
    try:
        with suite.origin(0) as port:
            edge = start_server(edge_config(port), name="cachetests-edge")
            results = suite.results(edge.url("http", ""), timeout=120)
        tests = suite.tests()
    except HarnessError as e:
        pytest.fail(f"http-cache-tests did not run: {e}", pytrace=False)
    summary: dict[str, Any] = {
        "suite_version": suite.version,
        "base": edge.url("http", ""),
        **summarize(tests, results),
    }
    by_id = {t["id"]: t for s in tests for t in s["tests"]}
    required = [i for i, t in by_id.items() if not t.get("browser_only") and t.get("kind", "required") == "required"]
    not_passing = {i: outcome(by_id, i, results) for i in required if outcome(by_id, i, results) != "pass"}
    unexpected = sorted(set(not_passing) - set(KNOWN))
    now_passing = sorted(set(KNOWN) - set(not_passing))
    passed = summary["required"]["passed"]
    share = passed / len(required)

    lines = [
        "",
        report({**summary, "failed_required": []}),  # each required test not passing is listed below
        f"  required passing {passed}/{len(required)} = {share:.3f} (threshold {THRESHOLD})"
        f" in {time.monotonic() - start:.1f}s",
        *(
            f"  NOT PASSING {i} ({o}): {_message(by_id, i, results)}{'' if i in KNOWN else '  <-- UNEXPECTED'}"
            for i, o in sorted(not_passing.items())
        ),
        *(f"  now passing, drop it from KNOWN: {i}" for i in now_passing),
    ]
    text = "\n".join(lines)
    with capsys.disabled():
        print(text)
    assert summary["results_received"] == summary["applicable_shared"], text
    assert not unexpected, f"required tests newly not passing: {unexpected}\n{text}"
    assert share >= THRESHOLD, text


def _message(by_id: dict[str, dict[str, Any]], test_id: str, results: dict[str, Any]) -> str:
    """What the suite said, or for a dependency failure which dependency did not pass."""
    failed_deps = [
        f"{d} {outcome(by_id, d, results)}"
        for d in by_id[test_id].get("depends_on", [])
        if d in by_id and outcome(by_id, d, results) not in ("pass", "yes")
    ]
    if failed_deps:
        return "depends on " + ", ".join(failed_deps)
    result = results.get(test_id)
    if isinstance(result, list) and len(result) > 1:
        return f"{result[0]}: {result[1]}"
    return str(result)
