"""What the firewall decided about a request: which rule, where, and the status to answer with.

A verdict never holds the request's bytes: the pattern id says what was
matched and the location says where, which is what an operator needs to
triage a false positive, without copying a password or a token that
happened to match into a log.
"""

from __future__ import annotations

from dataclasses import dataclass

FORBIDDEN = 403
BAD_REQUEST = 400
TOO_LARGE = 413
UNSUPPORTED_MEDIA = 415

# Categories that are not pattern classes.
ENTROPY = "entropy"
JSON = "json"
OVERSIZE = "oversize"
ENCODING = "encoding"

# Pattern ids of the checks that are not patterns, stable for dashboards and alerts.
ENTROPY_ID = "entropy-gate"
JSON_INVALID = "json-invalid"
JSON_DEPTH = "json-depth"
JSON_KEYS = "json-keys"
JSON_STRING = "json-string"
JSON_ARRAY = "json-array"
BODY_OVERSIZE = "body-oversize"
BODY_CODING = "body-coding"  # a Content-Encoding the firewall cannot decode (415)
BODY_CORRUPT = "body-corrupt"  # a body that is not valid in its Content-Encoding (400)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision to refuse (or, in shadow mode, to report) a request.

    `location` is `path`, `query`, `header:<name>`, `cookie:<name>` or `body`;
    `passes` is how many decoding passes the input needed before it matched
    (0: as sent, 2: double encoded), for telling probes from evasion.
    `block` is False when the profile only reports (action = "shadow").
    """

    status: int
    category: str
    pattern_id: str
    location: str
    profile: str
    block: bool = True
    passes: int = 0
