"""Cross-field rules of a route's CORS policy.

Each rule refuses a policy that would not do what it says: an origin that
no browser ever sends (a path, a wildcard, `null`), `*` with credentials
(which browsers refuse and which would hand any site the user's session if
they did not), or a method the route itself answers with 405.
"""

from __future__ import annotations

import ipaddress
import re

from ingress.config.model import Route
from ingress.errors import Problem

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_EXAMPLE = '"https://app.example.com"'


def origin_problem(text: str) -> str | None:
    """Why `text` is not a serialised origin (`scheme://host[:port]`), or None if it is one."""
    if text == "null":
        return (
            "'null' is the origin of sandboxed frames, file: pages and some redirects, which any site can"
            f" produce; list real origins such as {_EXAMPLE}"
        )
    scheme, sep, rest = text.lower().partition("://")
    if not sep or not _SCHEME.match(scheme):
        return f"{text!r} is not an origin; write scheme://host[:port], e.g. {_EXAMPLE}"
    if "*" in rest:
        return f"{text!r}: origins are listed exactly, without wildcards; list each one, e.g. {_EXAMPLE}"
    if any(c in rest for c in "/?#@"):
        return f"{text!r}: an origin has no path, query, fragment or user (browsers send none, not even a final /)"
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket:
            return f"{text!r} has an unclosed IPv6 bracket"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{text!r}: {host!r} is not an IPv6 address"
        if after and not after.startswith(":"):
            return f"{text!r}: expected :port after the IPv6 address"
        port = after[1:] if after else None
    else:
        host, colon, port_text = rest.partition(":")
        port = port_text if colon else None
        if not host or not all(_LABEL.match(label) for label in host.split(".")):
            return f"{text!r}: {host!r} is not a host name or IP address"
    if port is not None and (not port.isdigit() or not 0 < int(port) <= 65535):
        return f"{text!r}: the port must be a number from 1 to 65535"
    return None


def cors_problems(src: str, at: str, route: Route) -> list[Problem]:
    cors = route.cors
    if cors is None:
        return []
    at = f"{at}.cors"
    out: list[Problem] = []
    if not cors.origins:
        out.append(Problem(src, f"{at}.origins", f"list at least one origin, e.g. origins = [{_EXAMPLE}]"))
    if "*" in cors.origins:
        if len(cors.origins) > 1:
            out.append(
                Problem(src, f"{at}.origins", '"*" already allows every origin; use ["*"] alone or list origins')
            )
        if cors.credentials:
            out.append(
                Problem(
                    src,
                    f"{at}.credentials",
                    'origins = ["*"] with credentials = true would let any website read answers made with its'
                    " visitors' cookies, and browsers refuse the combination; list the origins instead"
                    f" (origins = [{_EXAMPLE}]) or set credentials = false",
                )
            )
    seen: dict[str, int] = {}
    for j, origin in enumerate(cors.origins):
        if origin == "*":
            continue
        why = origin_problem(origin)
        if why is not None:
            out.append(Problem(src, f"{at}.origins[{j}]", why))
        key = origin.lower()
        if key in seen:
            out.append(Problem(src, f"{at}.origins[{j}]", f"{origin!r} is already listed as origins[{seen[key]}]"))
        seen.setdefault(key, j)
    served = set(route.methods) | ({"HEAD"} if "GET" in route.methods else set())
    for j, method in enumerate(cors.methods):
        if method == "*":
            out.append(Problem(src, f"{at}.methods[{j}]", 'list the methods, e.g. ["GET", "POST"]; "*" is not taken'))
        elif not _TOKEN.match(method) or method != method.upper():
            out.append(Problem(src, f"{at}.methods[{j}]", f"{method!r} is not an upper-case HTTP method token"))
        elif method not in served:
            out.append(
                Problem(
                    src,
                    f"{at}.methods[{j}]",
                    f"{method} is not in the route's methods ({', '.join(route.methods)}), so a preflight would"
                    f" approve what the route then refuses with 405; add it to {at.rpartition('.')[0]}.methods"
                    " or remove it here",
                )
            )
    for key in ("headers", "expose_headers"):
        for j, name in enumerate(getattr(cors, key)):
            if name == "*":
                out.append(
                    Problem(
                        src,
                        f"{at}.{key}[{j}]",
                        'list the header names, e.g. ["content-type", "authorization"]; "*" is not taken',
                    )
                )
            elif not _TOKEN.match(name):
                out.append(Problem(src, f"{at}.{key}[{j}]", f"{name!r} is not a header name"))
    return out
