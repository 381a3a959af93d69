"""Typed, frozen configuration of the request firewall (WAF), and its cross-field rules.

`[waf]` turns the firewall on for every route (or leaves it to routes),
names the default profile and defines more profiles; a route's
`[routes.waf]` can switch it on or off and pick another profile. Two
profiles exist without any config: `balanced` (the default: high
precision) and `aggressive` (broader, with more false positives).

What a profile inspects: the path, the query, the values of the headers
listed in `headers`, cookie values, and bodies of POST, PUT, PATCH and
DELETE up to `max_inspect_body_bytes`. Inputs are decoded (URL, HTML
entities, JSON escapes, SQL comments; up to three times) and matched
against the profile's pattern set in one linear pass; JSON bodies are
also checked for validity and structure limits, and textual bodies for
entropy (encrypted or compressed blobs where text is expected).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ingress.config.meta import doc
from ingress.errors import Problem

PatternSetName = Literal["balanced", "aggressive"]
BUILTIN_PROFILES: tuple[PatternSetName, ...] = ("balanced", "aggressive")

# Headers whose values backends commonly log, reflect, or route on, and so where injection
# lands: logged and shown in analytics (user-agent, referer: Log4Shell, SQL injection, stored
# XSS), reflected (origin, in CORS answers), used for routing or building URLs
# (x-forwarded-host, x-original-url, x-rewrite-url: path traversal past the edge's own
# routing), parsed by frameworks (content-type: Struts OGNL), and x-api-version, the custom
# header most abused in Log4Shell scans. Referer and origin are matched without the SSRF
# patterns: nothing fetches them, and a front end run locally sends http://localhost:3000.
# Authorization is never inspected (tokens are random by design and checked by the JWT
# stage); cookies have their own switch.
DEFAULT_HEADERS = (
    "user-agent",
    "referer",
    "origin",
    "content-type",
    "x-forwarded-host",
    "x-original-url",
    "x-rewrite-url",
    "x-api-version",
)

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


@dataclass(frozen=True)
class WafProfile:
    name: str = field(metadata=doc("Name routes and `waf.profile` use.", pattern=r"^[a-z][a-z0-9_-]*$"))
    patterns: PatternSetName = field(
        default="balanced",
        metadata=doc(
            "Pattern set: `balanced` (high precision) or `aggressive` (balanced plus NoSQL operators,"
            " deserialisation markers, every HTML event handler and JavaScript sinks; more false positives)."
        ),
    )
    action: Literal["block", "shadow"] = field(
        default="block",
        metadata=doc(
            "`block` refuses a matching request (403; 400 for invalid JSON; 413 when oversize is reject);"
            " `shadow` only reports it (logs, metrics, audit) and lets it through, for trying a profile on"
            " live traffic first."
        ),
    )
    headers: tuple[str, ...] = field(
        default=DEFAULT_HEADERS,
        metadata=doc(
            "Request headers whose values are inspected, lower case; `*` inspects every header except"
            " cookie (see `cookies`) and authorization."
        ),
    )
    cookies: bool = field(default=True, metadata=doc("Inspect cookie values."))
    exclude: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            'Pattern ids switched off in this profile, to silence a known false positive (e.g. ["xss-003"]);'
            " a decision's pattern id names the one to list."
        ),
    )
    max_inspect_body_bytes: int = field(
        default=65536,
        metadata=doc(
            "Bodies of POST, PUT, PATCH and DELETE are inspected up to this size; 0 inspects no body.",
            minimum=0,
            maximum=16 << 20,
        ),
    )
    oversize: Literal["inspect_prefix", "reject"] = field(
        default="inspect_prefix",
        metadata=doc(
            "A body larger than `max_inspect_body_bytes`: `inspect_prefix` inspects its first bytes and lets"
            " the rest through unread (JSON validity is then not checked); `reject` refuses it with 413."
        ),
    )
    entropy: bool = field(
        default=True,
        metadata=doc(
            "Refuse textual bodies (JSON string values, form values, text) whose entropy is above"
            " `entropy_threshold`: encrypted or compressed payloads where text is expected. The kill switch."
        ),
    )
    entropy_threshold: float = field(
        default=6.5,
        metadata=doc(
            "Bits per byte; base64 and JWTs stay below 6.0, English text near 4.5, random bytes near 8.",
            minimum=1.0,
            maximum=8.0,
        ),
    )
    entropy_min_bytes: int = field(
        default=256,
        metadata=doc("Inputs shorter than this are too short for entropy to mean anything and pass.", minimum=64),
    )
    json_max_depth: int = field(
        default=32, metadata=doc("Nesting of objects and arrays in a JSON body.", minimum=1, maximum=512)
    )
    json_max_keys: int = field(default=1000, metadata=doc("Members of any one JSON object.", minimum=1))
    json_max_string_length: int = field(
        default=65536, metadata=doc("Characters of any one JSON string, key or value.", minimum=1)
    )
    json_max_array_items: int = field(default=10000, metadata=doc("Elements of any one JSON array.", minimum=1))


@dataclass(frozen=True)
class Waf:
    enabled: bool = field(
        default=False,
        metadata=doc("Inspect requests on every route that does not say otherwise in its `[routes.waf]`."),
    )
    profile: str = field(
        default="balanced",
        metadata=doc("Profile used where a route names none: `balanced`, `aggressive` or one of `profiles`."),
    )
    profiles: tuple[WafProfile, ...] = field(
        default=(),
        metadata=doc(
            "More profiles; one named `balanced` or `aggressive` replaces the built-in of that name"
            " (for example to run it in shadow mode)."
        ),
    )

    def resolved_profiles(self) -> dict[str, WafProfile]:
        """Every profile by name: the built-ins, then the configured ones over them."""
        out: dict[str, WafProfile] = {name: WafProfile(name=name, patterns=name) for name in BUILTIN_PROFILES}
        out.update((p.name, p) for p in self.profiles)
        return out


@dataclass(frozen=True)
class RouteWaf:
    enabled: bool | None = field(
        default=None, metadata=doc("Inspect this route's requests; absent follows `waf.enabled`.")
    )
    profile: str = field(default="", metadata=doc("Profile for this route; empty uses `waf.profile`."))


# The parts of Config the rules below read, so they can be checked on their own.
class _RouteView(Protocol):
    @property
    def waf(self) -> RouteWaf: ...


class WafConfigView(Protocol):
    @property
    def source(self) -> str: ...

    @property
    def waf(self) -> Waf: ...

    @property
    def routes(self) -> Sequence[_RouteView]: ...


def waf_problems(config: WafConfigView) -> list[Problem]:
    """Profiles named anywhere exist, names are unique, header names and excluded ids are real."""
    # Imported here, not at the top: the firewall package imports this module for its types.
    from ingress.policy.waf.patterns import load_pattern_set

    src, waf = config.source, config.waf
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for i, profile in enumerate(waf.profiles):
        at = f"waf.profiles[{i}]"
        if profile.name in seen:
            out.append(
                Problem(
                    src,
                    f"{at}.name",
                    f"duplicate profile name {profile.name!r} (also waf.profiles[{seen[profile.name]}])",
                )
            )
        seen.setdefault(profile.name, i)
        for j, name in enumerate(profile.headers):
            if name == "*":
                if len(profile.headers) > 1:
                    out.append(Problem(src, f"{at}.headers[{j}]", "`*` already means every header; list it alone"))
            elif not _HEADER_NAME.match(name):
                hint = f"; write it in lower case: {name.lower()!r}" if _HEADER_NAME.match(name.lower()) else ""
                out.append(Problem(src, f"{at}.headers[{j}]", f"{name!r} is not a header name{hint}"))
            elif name in ("cookie", "authorization"):
                fix = "use cookies = true" if name == "cookie" else "tokens are checked by [policy] jwt"
                out.append(Problem(src, f"{at}.headers[{j}]", f"{name} is not inspected as a header; {fix}"))
        known_ids = load_pattern_set(profile.patterns).ids()
        for j, pid in enumerate(profile.exclude):
            if pid not in known_ids:
                out.append(
                    Problem(
                        src,
                        f"{at}.exclude[{j}]",
                        f"no pattern {pid!r} in the {profile.patterns} set; ids are like sqli-001 (see the"
                        " pattern id of a decision)",
                    )
                )
    names = sorted(waf.resolved_profiles())
    known = ", ".join(names)
    if waf.profile not in names:
        out.append(
            Problem(
                src,
                "waf.profile",
                f"no WAF profile named {waf.profile!r} (profiles: {known}); define it in [[waf.profiles]]",
            )
        )
    for i, route in enumerate(config.routes):
        name = route.waf.profile
        if name and name not in names:
            out.append(
                Problem(
                    src,
                    f"routes[{i}].waf.profile",
                    f"no WAF profile named {name!r} (profiles: {known}); define it in [[waf.profiles]]",
                )
            )
    return out
