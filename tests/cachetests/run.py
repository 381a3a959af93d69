"""Run the http-cache-tests suite (cache-tests.fyi) against a reverse proxy and summarise the results.

    python tests/cachetests/run.py --suite /tmp/cachetests/node_modules/http-cache-tests \\
        --base http://127.0.0.1:8080 --origin-port 8000 --json /tmp/cachetests/summary.json

It starts the suite's own origin server (server/server.mjs) on 127.0.0.1:PORT,
runs the suite's command-line client (cli.mjs) against BASE (the proxy, which
must forward every path, including PUT /config/*, to 127.0.0.1:PORT), parses
the client's JSON, classifies every test the way cache-tests.fyi does
(lib/display.mjs `determineTestResult`), prints counts and writes a JSON
summary. Both node processes are started directly with the environment `npm
run` would give them, so the npm version does not matter.

Exit status: 0 whenever the suite ran and produced results, whatever they
are (the caller decides what pass rate is enough); 2 on harness errors (node
missing or too old, the origin not starting, the client crashing, timing out
or printing no JSON).

As a module: `Suite(path)` with `.tests()`, `.origin(port)` (a context
manager), `.run_client(base)` and `summarize(tests, results)`, so a pytest
test can start the origin before the edge (whose config needs its port).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MIN_NODE = (14, 8)  # the package's "engines"
# Make the suite's origin listen on 127.0.0.1 only (server.mjs calls server.listen(port), i.e. every address).
BIND_LOCAL_CJS = """\
const net = require('net')
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if ((typeof args[0] === 'number' || typeof args[0] === 'string') && typeof args[1] !== 'string') {
    args.splice(1, 0, process.env.CACHETESTS_HOST || '127.0.0.1')
  }
  return listen.apply(this, args)
}
"""
DUMP_TESTS_MJS = """\
import tests from '{index}'
import surrogate from '{surrogate}'
tests.push(surrogate)
console.log(JSON.stringify(tests))
"""
LISTENING = re.compile(r"Listening on \w+://[^:]+:(\d+)/")

# Outcomes, as cache-tests.fyi names them (lib/display.mjs resultTypes).
PASS_TYPES = ("pass", "yes")


class HarnessError(Exception):
    pass


class Suite:
    """An installed http-cache-tests package (the directory holding cli.mjs)."""

    def __init__(self, path: Path | str, node: str = "node") -> None:
        self.path = Path(path).resolve()
        self.node = node
        if not (self.path / "cli.mjs").is_file() or not (self.path / "server" / "server.mjs").is_file():
            raise HarnessError(f"{self.path} is not an http-cache-tests package (no cli.mjs / server/server.mjs)")
        self.version = json.loads((self.path / "package.json").read_text()).get("version", "?")
        self.workdir = Path(tempfile.mkdtemp(prefix="cachetests-"))
        (self.workdir / "bind-local.cjs").write_text(BIND_LOCAL_CJS)

    def node_version(self) -> tuple[int, ...]:
        try:
            out = subprocess.run([self.node, "--version"], capture_output=True, text=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as e:
            raise HarnessError(f"cannot run {self.node}: {e}") from e
        version = tuple(int(x) for x in re.findall(r"\d+", out.stdout)[:3])
        if version[:2] < MIN_NODE:
            raise HarnessError(f"node {out.stdout.strip()} is older than {MIN_NODE}")
        return version

    def _env(self, **config: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("npm_")}
        # cli.mjs and server.mjs read npm_config_X (from --X=) or else npm_package_config_X (package.json "config").
        for key in ("protocol", "port", "base", "id", "pidfile"):
            env[f"npm_package_config_{key}"] = ""
        env.update({f"npm_config_{k}": v for k, v in config.items()})
        return env

    def tests(self) -> list[dict[str, Any]]:
        """The test definitions, as the CLI runs them (tests/index.mjs plus the Surrogate-Control suite)."""
        script = self.workdir / "dump-tests.mjs"
        script.write_text(
            DUMP_TESTS_MJS.format(
                index=(self.path / "tests" / "index.mjs").as_uri(),
                surrogate=(self.path / "tests" / "surrogate-control.mjs").as_uri(),
            )
        )
        out = subprocess.run(
            [self.node, "--no-warnings", str(script)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.path,
        )
        if out.returncode != 0:
            raise HarnessError(f"cannot list the tests: {out.stderr[-2000:]}")
        return json.loads(out.stdout)

    @contextlib.contextmanager
    def origin(self, port: int, host: str = "127.0.0.1", max_lifetime: int = 1800) -> Iterator[int]:
        """The suite's origin server on host:port (0 = ephemeral); yields the port; stops it on exit."""
        log_path = self.workdir / "origin.log"
        env = self._env(protocol="http", port=str(port), pidfile=str(self.workdir / "server.pid"))
        env["CACHETESTS_HOST"] = host
        cmd = [
            "timeout", "--kill-after=5", str(max_lifetime),
            self.node, "--require", str(self.workdir / "bind-local.cjs"), "server/server.mjs",
        ]  # fmt: skip
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd, cwd=self.path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            deadline = time.monotonic() + 20
            while True:
                text = log_path.read_text(errors="replace")
                if m := LISTENING.search(text):
                    break
                if proc.poll() is not None:
                    raise HarnessError(f"the suite's origin exited with {proc.returncode}:\n{text[-2000:]}")
                if time.monotonic() > deadline:
                    raise HarnessError(f"the suite's origin did not start:\n{text[-2000:]}")
                time.sleep(0.05)
            yield int(m.group(1))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def run_client(self, base: str, test_id: str = "", timeout: float = 900) -> tuple[str, str]:
        """Run cli.mjs against `base`; returns (stdout, stderr). With `test_id`, stdout is a readable trace."""
        env = self._env(base=base.rstrip("/"), id=test_id)  # cli.mjs appends "/test/...": no trailing slash
        try:
            out = subprocess.run(
                [self.node, "--no-warnings", "cli.mjs"],
                check=False,
                cwd=self.path,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as e:
            raise HarnessError(f"the suite's client did not finish in {timeout}s") from e
        if out.returncode != 0:
            raise HarnessError(f"the suite's client exited with {out.returncode}:\n{out.stderr[-2000:]}")
        return out.stdout, out.stderr

    def results(self, base: str, timeout: float = 900) -> dict[str, Any]:
        stdout, stderr = self.run_client(base, timeout=timeout)
        try:
            results = json.loads(stdout)
        except json.JSONDecodeError as e:
            raise HarnessError(f"the suite's client printed no JSON: {stdout[-1000:]!r} {stderr[-1000:]!r}") from e
        if not isinstance(results, dict) or not results:
            raise HarnessError(f"the suite's client printed no results: {stdout[-1000:]!r} {stderr[-1000:]!r}")
        return results


def outcome(by_id: dict[str, dict[str, Any]], test_id: str, results: dict[str, Any], honor_deps: bool = True) -> str:
    """lib/display.mjs determineTestResult, in Python: one of pass, fail, optional_fail, yes, no, setup_fail,
    retry, dependency_fail, untested."""
    test = by_id[test_id]
    result = results.get(test_id)
    if result is None:
        return "untested"
    if honor_deps:
        for dep in test.get("depends_on", []):
            if dep in by_id and outcome(by_id, dep, results) not in PASS_TYPES:
                return "dependency_fail"
    if isinstance(result, list) and result and result[0] == "Setup":
        return "retry" if len(result) > 1 and result[1] == "retry" else "setup_fail"
    kind = test.get("kind", "required")
    if kind == "optimal":
        return "pass" if result is True else "optional_fail"
    if kind == "check":
        return "yes" if result is True else "no"
    return "pass" if result is True else "fail"


def summarize(suites: list[dict[str, Any]], results: dict[str, Any]) -> dict[str, Any]:
    """Counts over the tests a shared cache is tested with (every test but the `browser_only` ones)."""
    by_id = {t["id"]: {**t, "suite": s["id"]} for s in suites for t in s["tests"]}
    applicable = [t for t in by_id.values() if not t.get("browser_only")]
    outcomes = {t["id"]: outcome(by_id, t["id"], results) for t in applicable}
    kinds = Counter(t.get("kind", "required") for t in applicable)
    by_kind: dict[str, Counter[str]] = {k: Counter() for k in kinds}
    by_suite: dict[str, Counter[str]] = {}
    for t in applicable:
        by_kind[t.get("kind", "required")][outcomes[t["id"]]] += 1
        by_suite.setdefault(t["suite"], Counter())[outcomes[t["id"]]] += 1
    totals = Counter(outcomes.values())
    errors = Counter(r[0] for r in results.values() if isinstance(r, list) and r and r[0] not in ("Assertion", "Setup"))

    def detail(test_id: str) -> dict[str, Any]:
        r = results.get(test_id)
        return {"id": test_id, "suite": by_id[test_id]["suite"], "name": by_id[test_id]["name"], "result": r}

    required = by_kind.get("required", Counter())
    optimal = by_kind.get("optimal", Counter())
    return {
        "tests_defined": len(by_id),
        "applicable_shared": len(applicable),  # what the CLI runs: all but browser_only
        "shared_only": sum(1 for t in applicable if t.get("browser_skip")),  # browser_skip: never run on browsers
        "browser_only_skipped": len(by_id) - len(applicable),
        "results_received": len(results),
        "kinds": dict(kinds),
        "outcomes": dict(totals),
        "passed": totals["pass"],  # required and optimal tests that passed
        "failed": totals["fail"],  # required tests that failed: conformance problems
        "required": {"total": kinds["required"], "passed": required["pass"], **dict(required)},
        "optional": {"total": kinds["optimal"], "passed": optimal["pass"], "not_optimal": optimal["optional_fail"]},
        "checks": dict(by_kind.get("check", Counter())),  # informational yes/no
        "setup_fail": totals["setup_fail"],
        "dependency_fail": totals["dependency_fail"],
        "retry": totals["retry"],
        "untested": totals["untested"],
        "client_errors": dict(errors),  # error names other than Assertion/Setup (e.g. FetchError: a reset)
        "by_suite": {k: dict(v) for k, v in by_suite.items()},
        "failed_required": [detail(i) for i, o in outcomes.items() if o == "fail"],
        "setup_failures": [detail(i) for i, o in outcomes.items() if o in ("setup_fail", "retry")],
    }


def report(summary: dict[str, Any]) -> str:
    req, opt = summary["required"], summary["optional"]
    lines = [
        f"http-cache-tests {summary.get('suite_version', '?')} against {summary.get('base', '?')}",
        f"  defined {summary['tests_defined']}, applicable to a shared cache {summary['applicable_shared']}"
        f" ({summary['shared_only']} shared-only), browser-only skipped {summary['browser_only_skipped']}",
        f"  passed {summary['passed']}  failed {summary['failed']}"
        f"  required {req['passed']}/{req['total']}  optional {opt['passed']}/{opt['total']}"
        f" (not optimal {opt['not_optimal']})",
        f"  checks {summary['checks']}",
        f"  setup_fail {summary['setup_fail']}  dependency_fail {summary['dependency_fail']}"
        f"  retry {summary['retry']}  untested {summary['untested']}  client errors {summary['client_errors']}",
    ]
    for item in summary["failed_required"][:40]:
        lines.append(
            f"  FAIL {item['id']}: {item['result'][1] if isinstance(item['result'], list) else item['result']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--suite", required=True, help="installed package dir, e.g. /tmp/cachetests/node_modules/http-cache-tests"
    )
    ap.add_argument("--base", required=True, help="base URL of the proxy under test, e.g. http://127.0.0.1:8080")
    ap.add_argument("--origin-port", type=int, default=8000, help="port of the suite's origin on 127.0.0.1")
    ap.add_argument("--no-origin", action="store_true", help="the suite's origin is already running")
    ap.add_argument("--id", default="", help="run one test and print its request/response trace")
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--raw", type=Path, help="write the client's raw results here")
    ap.add_argument("--node", default="node")
    ap.add_argument("--timeout", type=float, default=900, help="seconds the client may take")
    args = ap.parse_args(argv)
    try:
        suite = Suite(args.suite, args.node)
        node = suite.node_version()
        with contextlib.ExitStack() as stack:
            port = args.origin_port if args.no_origin else stack.enter_context(suite.origin(args.origin_port))
            print(f"suite {suite.version} at {suite.path}, node {'.'.join(map(str, node))}, origin 127.0.0.1:{port}",
                  file=sys.stderr)  # fmt: skip
            if args.id:
                stdout, stderr = suite.run_client(args.base, test_id=args.id, timeout=args.timeout)
                print(stdout + stderr)
                return 0
            start = time.monotonic()
            results = suite.results(args.base, timeout=args.timeout)
            elapsed = time.monotonic() - start
        tests = suite.tests()
    except HarnessError as e:
        print(f"harness error: {e}", file=sys.stderr)
        return 2
    summary = {
        "suite": "http-cache-tests",
        "suite_version": suite.version,
        "node": ".".join(map(str, node)),
        "base": args.base,
        "origin_port": port,
        "seconds": round(elapsed, 1),
        **summarize(tests, results),
    }
    print(report(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    if args.raw:
        args.raw.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
