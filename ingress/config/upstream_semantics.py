"""Cross-field rules for upstream pools and proxy routes.

Pure functions over a parsed Config, run with the other semantic checks on
every load and reload, so a route naming a missing pool or an origin that
cannot be parsed is refused before anything is built.
"""

from __future__ import annotations

import ipaddress
import re

from ingress.config.model import Config
from ingress.errors import Problem

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(text: str) -> tuple[str, str, int]:
    """`http://host:port` → (scheme, host, port); raises ValueError saying what is wrong.

    Only addresses (or `localhost`) are accepted: resolving names on the request
    path would block, and an origin that moves with DNS is not what a bank pins.
    """
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError(f"{text!r} must start with http:// or https://")
    if "/" in rest.rstrip("/") or "?" in rest or "@" in rest:
        raise ValueError(f"{text!r} must be scheme://host:port with no path, query or user")
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket:
            raise ValueError(f"{text!r} has an unclosed IPv6 bracket")
        if after and not after.startswith(":"):
            raise ValueError(f"{text!r}: expected :port after the IPv6 address")
        has_port, port_text = bool(after), after[1:]
    elif rest.count(":") > 1:
        raise ValueError(f"{text!r}: an IPv6 address must be in brackets, as [::1]")
    else:
        host, colon, port_text = rest.partition(":")
        has_port = bool(colon)
    if not host:
        raise ValueError(f"{text!r} has no host")
    host = host.lower()
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address; origins are addresses (or localhost)") from None
    if has_port:
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    else:
        port = DEFAULT_PORTS[scheme]
    return scheme, host, port


def upstream_problems(config: Config) -> list[Problem]:
    src = config.source
    out: list[Problem] = []
    names: dict[str, int] = {}
    for i, upstream in enumerate(config.upstreams):
        at = f"upstreams[{i}]"
        if upstream.name in names:
            out.append(
                Problem(
                    src,
                    f"{at}.name",
                    f"duplicate upstream name {upstream.name!r} (also upstreams[{names[upstream.name]}])",
                )
            )
        names[upstream.name] = i
        if not upstream.origins:
            out.append(Problem(src, f"{at}.origins", 'list at least one origin, e.g. ["http://127.0.0.1:9000"]'))
        seen: set[tuple[str, str, int]] = set()
        for j, origin in enumerate(upstream.origins):
            try:
                parsed = parse_origin(origin)
            except ValueError as exc:
                out.append(Problem(src, f"{at}.origins[{j}]", str(exc)))
                continue
            if parsed in seen:
                out.append(Problem(src, f"{at}.origins[{j}]", f"{origin!r} is listed twice"))
            seen.add(parsed)
        kind, _, name = upstream.hash_on.partition(":")
        if kind not in ("client_ip", "header", "cookie") or (kind == "client_ip") == bool(name):
            out.append(
                Problem(src, f"{at}.hash_on", f"{upstream.hash_on!r}: use client_ip, header:NAME or cookie:NAME")
            )
        elif name and not _HEADER_NAME.match(name):
            out.append(Problem(src, f"{at}.hash_on", f"{name!r} is not a valid header or cookie name"))
        if bool(upstream.client_cert) != bool(upstream.client_key):
            out.append(Problem(src, f"{at}.client_key", "client_cert and client_key go together; set both or neither"))
        if upstream.max_idle > upstream.max_connections:
            out.append(Problem(src, f"{at}.max_idle", "cannot exceed max_connections"))
        health = upstream.health
        if health.path and not health.path.startswith("/"):
            out.append(Problem(src, f"{at}.health.path", f"{health.path!r} must start with /"))
        if health.path and health.timeout >= health.interval:
            out.append(Problem(src, f"{at}.health.timeout", "must be shorter than health.interval"))
        for j, status in enumerate(health.expect_status):
            if not 100 <= status <= 599:
                out.append(Problem(src, f"{at}.health.expect_status[{j}]", f"{status} is not an HTTP status"))
    for i, route in enumerate(config.routes):
        proxy = route.proxy
        if proxy is None:
            continue
        at = f"routes[{i}].proxy"
        if proxy.upstream not in names:
            known = ", ".join(names) or "none are defined; add [[upstreams]]"
            out.append(Problem(src, f"{at}.upstream", f"no upstream named {proxy.upstream!r}; upstreams: {known}"))
        if proxy.websocket and "GET" not in route.methods:
            out.append(Problem(src, f"routes[{i}].methods", "a WebSocket route needs GET in methods"))
        if proxy.strip_prefix and not route.path.startswith(proxy.strip_prefix):
            out.append(
                Problem(
                    src,
                    f"{at}.strip_prefix",
                    f"{proxy.strip_prefix!r} is not a prefix of the route path {route.path!r}",
                )
            )
    settings = config.proxy
    for key in (
        "request_id_header",
        "cert_subject_header",
        "cert_fingerprint_header",
        "auth_subject_header",
        "auth_roles_header",
    ):
        value = getattr(settings, key)
        if value and not _HEADER_NAME.match(value):
            out.append(Problem(src, f"proxy.{key}", f"{value!r} is not a valid header name"))
    for j, name in enumerate(config.cache.targeted_fields):
        if not _HEADER_NAME.match(name):
            out.append(
                Problem(src, f"cache.targeted_fields[{j}]", f"{name!r} is not a header name, e.g. CDN-Cache-Control")
            )
    return out
