"""Cross-field rules that a single key's type cannot express.

Pure functions over a parsed Config: no file is opened here, so the rules
are cheap enough to run on every reload before anything else happens.
"""

from __future__ import annotations

import ipaddress
import re

from ingress.config.cidr import parse_cidr
from ingress.config.cors_semantics import cors_problems
from ingress.config.model import Config, Listener, Route, TLSSettings
from ingress.errors import Problem

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Z-]+$")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Path characters that need no percent-encoding (RFC 3986 pchar and "/"): the health check is compared
# with the raw request path, so a path spelled any other way could never match it.
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$")


def parse_address(text: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[::1]:port`); raises ValueError with the reason."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected host:port, e.g. 127.0.0.1:8443 or [::1]:8443")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 0 to 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{host!r} is not an IP address; bind to an address, not a name") from None
    return host, int(port)


def bind_key(host: str, port: int) -> tuple[str, int]:
    """The address a bind really takes: `localhost` binds 127.0.0.1; IPv6 has many spellings.

    Listeners bind with SO_REUSEPORT, so two listeners on one address would not
    fail to start: they would silently split its connections between them.
    """
    if host == "localhost":
        return "127.0.0.1", port
    return str(ipaddress.ip_address(host)), port


def normalised_path(path: str) -> bool:
    """No `//`, `.` or `..` segments: routes and policy rules are matched against normalised request paths."""
    return "//" not in path and "/../" not in path + "/" and "/./" not in path + "/"


def path_message(path: str) -> str:
    return f"{path!r} must be a normalised path without //, . or .. segments"


def method_token(method: str) -> bool:
    """An upper-case RFC 9110 token, as methods are compared case-sensitively."""
    return bool(_TOKEN.match(method)) and method == method.upper()


def valid_host_pattern(pattern: str) -> bool:
    """`*`, an exact DNS name or IP, or `*.` followed by a DNS name."""
    if pattern == "*":
        return True
    name = pattern[2:] if pattern.startswith("*.") else pattern
    try:
        ipaddress.ip_address(name)
        return not pattern.startswith("*.")
    except ValueError:
        pass
    labels = name.split(".")
    return all(_HOST_LABEL.match(label) for label in labels)


def covers(prefix: str, path: str) -> bool:
    """Whether a route with this path prefix serves `path` (the rule of ingress.routing)."""
    if prefix.endswith("/"):
        return path.startswith(prefix) or path + "/" == prefix
    return path == prefix or path.startswith(prefix + "/")


def _healthz_problems(config: Config) -> list[Problem]:
    """The health path is answered before routing: a route that names it would silently never see it."""
    src, path = config.source, config.server.healthz_path
    if not path:
        return []
    if not _PLAIN_PATH.match(path) or not normalised_path(path):
        return [
            Problem(
                src,
                "server.healthz_path",
                f"{path!r} must be a normalised path of plain characters (no %, ?, #, // or dot segments),"
                ' e.g. "/healthz"; "" turns the health check off',
            )
        ]
    if path == "/":
        return [
            Problem(
                src,
                "server.healthz_path",
                '"/" would answer every site\'s home page with "ok"; use a path of its own, e.g. "/healthz"',
            )
        ]
    out = []
    for i, route in enumerate(config.routes):
        # A catch-all "/" covers every path by definition; a longer prefix names this one on purpose.
        if route.path != "/" and covers(route.path, path):
            out.append(
                Problem(
                    src,
                    f"routes[{i}].path",
                    f"{route.path!r} covers {path!r}, which server.healthz_path answers on every listener"
                    " before routing, so this route would never see it; set server.healthz_path to another"
                    ' path (e.g. "/_edge/healthz") or to "" to let the route serve it',
                )
            )
    return out


def semantic_problems(config: Config) -> list[Problem]:
    src = config.source
    problems: list[Problem] = _healthz_problems(config)
    names: dict[str, int] = {}
    binds: dict[tuple[str, int], str] = {}
    for i, listener in enumerate(config.listeners):
        at = f"listeners[{i}]"
        if listener.name in names:
            problems.append(
                Problem(
                    src,
                    f"{at}.name",
                    f"duplicate listener name {listener.name!r} (also listeners[{names[listener.name]}])",
                )
            )
        names[listener.name] = i
        try:
            bind = bind_key(*parse_address(listener.address))
        except ValueError as exc:
            problems.append(Problem(src, f"{at}.address", str(exc)))
        else:
            if bind[1] != 0 and bind in binds:
                problems.append(
                    Problem(
                        src,
                        f"{at}.address",
                        f"{listener.address} is already used by listener {binds[bind]!r}",
                    )
                )
            binds[bind] = listener.name
        if listener.tls is not None and listener.h2c:
            problems.append(
                Problem(src, f"{at}.h2c", "h2c is cleartext HTTP/2; on a TLS listener offer h2 in tls.alpn instead")
            )
        if listener.tls is not None:
            alpn = listener.tls.alpn
            if not alpn or len(set(alpn)) != len(alpn):
                problems.append(Problem(src, f"{at}.tls.alpn", 'list each protocol once, e.g. ["h2", "http/1.1"]'))
            if not listener.tls.certs:
                problems.append(
                    Problem(
                        src,
                        f"{at}.tls.certs",
                        "at least one certificate is required; add { cert = ..., key = ... }",
                    )
                )
            problems.extend(_client_auth_problems(src, at, listener.tls))
            for j, pair in enumerate(listener.tls.certs):
                for k, name in enumerate(pair.names):
                    if name == "*" or not valid_host_pattern(name.lower()):
                        problems.append(
                            Problem(
                                src,
                                f"{at}.tls.certs[{j}].names[{k}]",
                                f"{name!r} is not a DNS name or *.domain wildcard",
                            )
                        )
    if not config.listeners:
        problems.append(Problem(src, "listeners", "at least one listener is required"))
    if config.admin.enabled:
        try:
            bind = bind_key(*parse_address(config.admin.address))
            if bind[1] != 0 and bind in binds:
                problems.append(
                    Problem(
                        src,
                        "admin.address",
                        f"{config.admin.address} is already used by listener {binds[bind]!r}",
                    )
                )
        except ValueError as exc:
            problems.append(Problem(src, "admin.address", str(exc)))
    seen: dict[tuple[str, str, str], int] = {}
    for i, route in enumerate(config.routes):
        problems.extend(_route_problems(config, i, route, names))
        for listener_name in route.listeners or tuple(names):
            key = (route.host.lower(), route.path, listener_name)
            if key in seen:
                problems.append(
                    Problem(
                        src,
                        f"routes[{i}]",
                        f"collides with routes[{seen[key]}]: both serve host {route.host!r} path {route.path!r}"
                        f" on listener {listener_name!r}; change the path, host or listeners",
                    )
                )
                break
            seen[key] = i
    for i, listener in enumerate(config.listeners):
        problems.extend(_proxy_problems(src, f"listeners[{i}]", listener))
    problems.extend(_policy_address_problems(config))
    return problems


def _cidr_problems(src: str, at: str, cidrs: tuple[str, ...]) -> list[Problem]:
    """Each entry must be a network or an address (see ingress.config.cidr.parse_cidr)."""
    out = []
    for j, text in enumerate(cidrs):
        try:
            parse_cidr(text)
        except ValueError as exc:
            out.append(Problem(src, f"{at}[{j}]", str(exc)))
    return out


def _proxy_problems(src: str, at: str, listener: Listener) -> list[Problem]:
    """A PROXY header is believed only from listed balancers, and there is none on UDP."""
    out = _cidr_problems(src, f"{at}.proxy_from", listener.proxy_from)
    mode = listener.proxy_protocol
    if mode != "off" and not listener.proxy_from:
        out.append(
            Problem(
                src,
                f"{at}.proxy_from",
                f'proxy_protocol = "{mode}" lets the sender choose the client address, so it needs the'
                ' balancers allowed to send it; add proxy_from = ["10.0.0.0/24"] (your balancers\' addresses)',
            )
        )
    if mode == "off" and listener.proxy_from:
        out.append(
            Problem(
                src,
                f"{at}.proxy_from",
                'proxy_from is set but proxy_protocol is "off", so no PROXY header is read;'
                ' set proxy_protocol = "v2" (or "v1", "any"), or remove proxy_from',
            )
        )
    if mode != "off" and listener.tls is not None and listener.quic.enabled:
        out.append(
            Problem(
                src,
                f"{at}.quic.enabled",
                "HTTP/3 runs over UDP, where no PROXY header arrives, so its clients would appear with the"
                " balancer's address and bypass address rules; set quic.enabled = false on this listener",
            )
        )
    return out


def _policy_address_problems(config: Config) -> list[Problem]:
    src, network = config.source, config.policy.network
    out = _cidr_problems(src, "policy.network.allow", network.allow)
    out += _cidr_problems(src, "policy.network.deny", network.deny)
    out += _cidr_problems(src, "policy.network.trusted_proxies", network.trusted_proxies)
    for i, rule in enumerate(config.policy.rules):
        out += _cidr_problems(src, f"policy.rules[{i}].allow", rule.allow)
        out += _cidr_problems(src, f"policy.rules[{i}].deny", rule.deny)
    return out


def _client_auth_problems(src: str, at: str, tls: TLSSettings) -> list[Problem]:
    """Mutual TLS needs CAs to verify against; CAs or CRLs without client_auth would look like mTLS and not be."""
    if tls.client_auth != "off" and not tls.client_ca:
        return [
            Problem(
                src,
                f"{at}.tls.client_ca",
                f'client_auth = "{tls.client_auth}" needs the CA bundles client certificates must chain to;'
                ' add client_ca = ["/path/to/client-ca.pem"]',
            )
        ]
    problems = []
    if tls.client_auth == "off" and tls.client_ca:
        problems.append(
            Problem(
                src,
                f"{at}.tls.client_auth",
                'client_ca is set but client_auth is "off", so no client certificate is asked for;'
                ' set client_auth = "required" (or "optional"), or remove client_ca',
            )
        )
    if tls.client_auth == "off" and tls.client_crl:
        problems.append(
            Problem(
                src,
                f"{at}.tls.client_crl",
                'client_crl is set but client_auth is "off", so no client certificate is asked for or checked'
                ' against it; set client_auth = "required" (or "optional") with client_ca, or remove client_crl',
            )
        )
    return problems


def _route_problems(config: Config, i: int, route: Route, listeners: dict[str, int]) -> list[Problem]:
    src, at = config.source, f"routes[{i}]"
    out: list[Problem] = []
    handlers = [h for h in ("static", "redirect", "proxy") if getattr(route, h) is not None]
    if len(handlers) != 1:
        what = "none" if not handlers else " and ".join(handlers)
        out.append(Problem(src, at, f"needs exactly one handler (static, redirect or proxy), has {what}"))
    if not valid_host_pattern(route.host.lower()):
        out.append(Problem(src, f"{at}.host", f"{route.host!r} is not `*`, a DNS name or a *.domain wildcard"))
    if not normalised_path(route.path):
        out.append(Problem(src, f"{at}.path", path_message(route.path)))
    for j, name in enumerate(route.listeners):
        if name not in listeners:
            out.append(
                Problem(
                    src,
                    f"{at}.listeners[{j}]",
                    f"no listener named {name!r}; listeners are {', '.join(listeners)}",
                )
            )
    for j, method in enumerate(route.methods):
        if not method_token(method):
            out.append(Problem(src, f"{at}.methods[{j}]", f"{method!r} is not an upper-case HTTP method token"))
    if route.static is not None and set(route.methods) - {"GET", "HEAD"}:
        extra = sorted(set(route.methods) - {"GET", "HEAD"})
        out.append(
            Problem(
                src,
                f"{at}.methods",
                f"a static route serves only GET and HEAD; remove {', '.join(extra)}",
            )
        )
    out.extend(cors_problems(src, at, route))
    return out
