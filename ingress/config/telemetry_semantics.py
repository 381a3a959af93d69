"""Cross-field rules for `[telemetry]` and `[audit]`, and the one parser of collector endpoints.

Run with the other semantic checks on every load and reload, so a typo in
an endpoint or a trusted network is refused before anything is built,
naming the key and the fix.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ingress.config.cidr import parse_cidr
from ingress.config.model import Config
from ingress.errors import Problem

DEFAULT_PORTS = {"http": 4318, "https": 4318, "grpc": 4317, "grpcs": 4317}
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
_RESERVED = frozenset({"content-type", "content-length", "host", "te", "connection", "transfer-encoding"})


class Endpoint(NamedTuple):
    scheme: str  # http, https (OTLP/HTTP) or grpc, grpcs (OTLP/gRPC)
    host: str  # a DNS name or an address, IPv6 without brackets
    port: int
    path: str  # a base path for OTLP/HTTP ("" or "/prefix"); always "" for gRPC

    @property
    def tls(self) -> bool:
        return self.scheme in ("https", "grpcs")

    @property
    def grpc(self) -> bool:
        return self.scheme in ("grpc", "grpcs")


def parse_endpoint(text: str) -> Endpoint:
    """`http://collector:4318`, `grpcs://[::1]:4317`, `https://otel.bank/otlp`; ValueError says what is wrong.

    Names are allowed, unlike origins: a collector is dialled from the
    exporter's thread, never on the request path, so resolving it blocks
    nothing.
    """
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if "@" in rest.partition("/")[0]:
        # Never echo it: what precedes the @ is likely a password.
        raise ValueError("must not hold user:password@; send credentials with telemetry.otlp.headers")
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError(f"{text!r} must start with http://, https://, grpc:// or grpcs://")
    authority, slash, path = rest.partition("/")
    if "?" in rest or "#" in rest:
        raise ValueError(f"{text!r} must be scheme://host[:port][/path] with no query, fragment or user")
    path = ("/" + path).rstrip("/") if slash else ""
    if path and scheme.startswith("grpc"):
        raise ValueError(f"{text!r}: a gRPC endpoint has no path; the service name is fixed by OTLP")
    if authority.startswith("["):
        host, bracket, after = authority[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 collector as [address]:port")
        port_text = after[1:]
    else:
        host, _, port_text = authority.partition(":")
        if not _HOST.match(host):
            raise ValueError(f"{text!r}: {host!r} is not a host name or address")
    if not host:
        raise ValueError(f"{text!r} has no host")
    port = DEFAULT_PORTS[scheme]
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: the port must be 1-65535")
        port = int(port_text)
    return Endpoint(scheme, host, port, path)


def telemetry_problems(config: Config) -> list[Problem]:
    src = config.source
    telemetry = config.telemetry
    problems: list[Problem] = []
    for j, text in enumerate(telemetry.tracing.trusted_sources):
        try:
            parse_cidr(text)
        except ValueError as exc:
            problems.append(Problem(src, f"telemetry.tracing.trusted_sources[{j}]", str(exc)))
    otlp = telemetry.otlp
    endpoint = None
    if otlp.endpoint:
        try:
            endpoint = parse_endpoint(otlp.endpoint)
        except ValueError as exc:
            problems.append(Problem(src, "telemetry.otlp.endpoint", str(exc)))
    if bool(otlp.cert) != bool(otlp.key):
        problems.append(
            Problem(src, "telemetry.otlp.key", "set both cert and key for mTLS to the collector, or neither")
        )
    if endpoint is not None and not endpoint.tls and (otlp.ca or otlp.cert):
        problems.append(
            Problem(src, "telemetry.otlp.endpoint", "ca/cert/key are set but the endpoint is not https:// or grpcs://")
        )
    if not otlp.endpoint and (otlp.ca or otlp.cert or otlp.headers):
        problems.append(Problem(src, "telemetry.otlp.endpoint", "is empty, so ca, cert, key and headers do nothing"))
    for name, value in otlp.headers.items():
        at = f"telemetry.otlp.headers.{name}"
        if not _HEADER_NAME.match(name):
            problems.append(Problem(src, at, "is not a valid header name"))
        elif name.lower() in _RESERVED or name.startswith(":"):
            problems.append(Problem(src, at, "is set by the exporter itself; remove it"))
        if not _HEADER_VALUE.match(value):
            # The value may be a secret: say what is wrong without echoing it.
            problems.append(Problem(src, at, "the value holds a control character (CR, LF, NUL ...)"))
    if otlp.batch_spans > otlp.queue_spans:
        problems.append(
            Problem(
                src,
                "telemetry.otlp.batch_spans",
                f"{otlp.batch_spans} is above queue_spans ({otlp.queue_spans}); lower it to {otlp.queue_spans} or less",
            )
        )
    files = {"telemetry.files.traces": telemetry.files.traces}
    files["audit.file"] = config.audit.file
    seen: dict[str, str] = {}
    for key, path in files.items():
        if path and path in seen:
            problems.append(Problem(src, key, f"{path} is also {seen[path]}; each file needs its own path"))
        if path:
            seen[path] = key
    if config.access_log.enabled and config.access_log.path in seen:
        problems.append(Problem(src, "access_log.path", f"is also {seen[config.access_log.path]}"))
    return problems
