"""`ingress serve | check | schema | version | audit-verify`. The only module that exits.

Exit codes: 0 ok, 1 a finding or runtime failure, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from ingress import __version__, selfid
from ingress.check import verify_config
from ingress.config import Config, load_config
from ingress.config.default import default_config, edgeward_home
from ingress.config.schema import config_schema
from ingress.errors import ConfigError, EdgewardError
from ingress.telemetry import logs
from ingress.tls.devca import ensure_dev_pki

EXAMPLES = """examples:
  ingress serve                          run the embedded default (demo site, dev CA)
  ingress serve --config edge.toml       run from a config file
  ingress check --config edge.toml       validate everything serve would load
  ingress schema > edgeward.schema.json  JSON Schema of the config
  ingress version
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingress",
        description="edgeward edge ingress server",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the server",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", type=Path, help="TOML config; without it the embedded default runs")
    serve.add_argument("--workers", type=int, help="worker processes (default: config, else one per CPU)")
    serve.add_argument("--state-file", help="write pid, worker pids and bound addresses here as JSON once ready")
    check = sub.add_parser("check", help="validate a config without serving it")
    check.add_argument("--config", type=Path, required=True)
    sub.add_parser("schema", help="print the JSON Schema of the config")
    sub.add_parser("version", help="print version, Python, OpenSSL and build id")
    verify = sub.add_parser(
        "audit-verify",
        help="check the audit trail's hash chain; name the first broken link",
        epilog=AUDIT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="the audit file (its rotated files are found beside it), a directory, or files in chain order",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    return parser


AUDIT_EXAMPLES = """examples:
  ingress audit-verify /var/log/edgeward/audit.jsonl    the file and every rotated audit.jsonl.<UTC time>
  ingress audit-verify /var/log/edgeward/                a directory holding one audit trail
  ingress audit-verify a.jsonl.20250101T000000Z a.jsonl  exactly these files, in this order
"""


def _audit_verify(args: argparse.Namespace) -> int:
    from ingress.telemetry.auditchain import resolve_files, verify_chain

    report = verify_chain(resolve_files(args.files))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    print(str(report), file=sys.stderr)
    return 0 if report.ok else 1


def _load_checked(path: Path) -> Config:
    config = load_config(path)
    problems = verify_config(config)
    if problems:
        raise ConfigError(problems)
    return config


def _serve(args: argparse.Namespace) -> int:
    from ingress.server.supervisor import StartupError, Supervisor

    logs.setup()
    pki = None
    load: Callable[[], Config]
    if args.config is None:
        home = edgeward_home()
        pki = ensure_dev_pki(home)
        config = default_config(home, pki.cert, pki.key)
        load = lambda: default_config(home, pki.cert, pki.key)  # noqa: E731
    else:
        config = _load_checked(args.config)
        load = lambda: _load_checked(args.config)  # noqa: E731
    workers = args.workers if args.workers is not None else config.server.workers
    if workers < 0:
        print("ingress: --workers must be 0 (one per CPU) or more", file=sys.stderr)
        return 2
    supervisor = Supervisor(config, load, workers, args.state_file)
    try:
        bound = supervisor.start()
    except StartupError as exc:
        print(f"ingress: {exc}", file=sys.stderr)
        return 1
    _banner(config, bound, pki.ca if pki else None, supervisor.count)
    return supervisor.run()


def _banner(config: Config, bound: dict[str, str], ca: Path | None, workers: int) -> None:
    lines = [f"edgeward {__version__} serving with {workers} worker(s)"]
    curl = None
    for listener in config.listeners:
        scheme = "https" if listener.tls else "http"
        url = f"{scheme}://{bound[listener.name]}/"
        lines.append(f"  {listener.name:<8} {url}")
        if listener.tls and curl is None:
            curl = f"curl --cacert {shlex.quote(str(ca))} {url}" if ca else f"curl {url}"
    if "__admin__" in bound:
        lines.append(f"  {'admin':<8} http://{bound['__admin__']}/healthz")
    if curl:
        lines.append(f"try: {curl}")
    print("\n".join(lines), flush=True)


def _version() -> int:
    print(f"edgeward {__version__}")
    print(f"python {platform.python_version()}")
    print(f"openssl {ssl.OPENSSL_VERSION}")
    print(f"build {selfid.build_id()}")
    digest = selfid.own_digest()
    if digest is not None:
        print(f"sha256 {digest[0]}  {digest[1]}")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            code = _serve(args)
        elif args.command == "check":
            config = _load_checked(args.config)
            print(
                f"{args.config}: ok ({len(config.listeners)} listeners, {len(config.routes)} routes)",
                file=sys.stderr,
            )
            code = 0
        elif args.command == "audit-verify":
            code = _audit_verify(args)
        elif args.command == "schema":
            print(json.dumps(config_schema(), indent=2))
            code = 0
        else:
            code = _version()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        code = 2
    except EdgewardError as exc:
        print(f"ingress: {exc.diagnostics()}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    logging.shutdown()
    sys.exit(code)
