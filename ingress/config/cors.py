"""Typed, frozen configuration of a route's CORS policy (`[routes.cors]`).

Everything is explicit: origins are listed one by one (or the single `*`,
which never goes with credentials), and so are the methods and request
headers a preflight may approve. The edge answers preflights itself and
writes the Access-Control-* headers of every answer on the route, an
origin's own included, so one policy holds whatever handler serves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingress.config.meta import doc


@dataclass(frozen=True)
class Cors:
    origins: tuple[str, ...] = field(
        metadata=doc(
            "Origins whose scripts may read this route's answers, each `scheme://host[:port]`"
            ' (e.g. "https://app.example.com"), compared case-insensitively; ["*"] allows any origin,'
            " and only without `credentials`."
        )
    )
    methods: tuple[str, ...] = field(
        default=(),
        metadata=doc("Methods a preflight may approve (Access-Control-Allow-Methods); empty takes the route's."),
    )
    headers: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Request headers a preflight may approve (Access-Control-Allow-Headers), compared"
            ' case-insensitively, e.g. ["content-type", "authorization"].'
        ),
    )
    expose_headers: tuple[str, ...] = field(
        default=(),
        metadata=doc("Response headers scripts may read beyond the safelisted ones (Access-Control-Expose-Headers)."),
    )
    credentials: bool = field(
        default=False,
        metadata=doc(
            "Let scripts send cookies and Authorization and read the answer (Access-Control-Allow-Credentials);"
            ' not with origins = ["*"].'
        ),
    )
    max_age: int = field(
        default=600,
        metadata=doc(
            "Seconds a browser may reuse a preflight answer (Access-Control-Max-Age; Chromium caps it at 7200);"
            " 0 omits the header, and browsers then keep it for 5 seconds.",
            minimum=0,
            maximum=86400,
        ),
    )
