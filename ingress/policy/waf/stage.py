"""The firewall as a pipeline stage: in front of one route's handler, after the access gate.

It runs after authentication so that an anonymous flood is refused by the
cheaper gate first, and so that a decision can name who sent the request.
A route without the firewall has no stage at all; one with it pays a few
hash lookups for a request whose values were seen before and found clean.

A match in `block` mode is answered here (403 with a reference, 400 for
invalid JSON, 413 for an oversize body under `oversize = "reject"`) and
never reaches the handler; in `shadow` mode the request goes on and the
match is recorded. Either way the request's Decision carries the Verdict,
so the access log, the span, the metrics and the audit file all name the
category, pattern id and location, and none of them the payload.

The reference given to the client is the request's span id: one id that
finds the span, the access-log line and the audit record of the request.
"""

from __future__ import annotations

from collections.abc import Callable

from ingress.policy.waf.engine import BODY_METHODS, WafEngine
from ingress.policy.waf.verdict import Verdict
from ingress.protocol.errorpages import error_response
from ingress.protocol.events import Decision, Request, Response
from ingress.routing import Handler, Outcome

DENIED_WAF = "denied_waf"
REFERENCE_HEADER = b"Edge-Reference"
_NO_DECISION = Decision("allowed", "")


class WafStage:
    """Wraps a route's handler; one per route, sharing its profile's engine with other routes."""

    __slots__ = ("_decisions", "_handle", "_matches", "_span_id", "engine", "inspects_bodies")

    def __init__(
        self,
        engine: WafEngine,
        handle: Handler,
        decisions: dict[str, int],
        matches: dict[tuple[str, str, str], int],
        span_id: Callable[[Request], bytes],
    ) -> None:
        """`decisions`: the worker's access decisions by outcome, where a block counts as denied_waf;
        `matches`: its firewall matches by (profile, action, category), blocked or not;
        `span_id`: the id of the request's span, fixed when called (the tracer's context)."""
        self.engine = engine
        self._handle = handle
        self._decisions = decisions
        self._matches = matches
        self._span_id = span_id
        self.inspects_bodies = engine.profile.max_inspect_body_bytes > 0

    def gathers(self, methods: frozenset[str]) -> frozenset[str]:
        """Of a route's methods, those whose bodies must arrive whole to be inspected before forwarding."""
        return methods & BODY_METHODS if self.inspects_bodies else frozenset()

    def __call__(self, request: Request, path: str) -> Outcome:
        engine = self.engine
        verdict = engine.inspect_head(request.method, request.path, request.query, request.headers)
        if verdict is None:
            body = request.body
            # A streamed body (a Pipe) only reaches here for a method the profile does not inspect.
            if not body or not isinstance(body, bytes):
                return self._handle(request, path)
            verdict = engine.inspect_body(request.method, request.headers, body)
            if verdict is None:
                return self._handle(request, path)
        return self._found(request, path, verdict)

    def _found(self, request: Request, path: str, verdict: Verdict) -> Outcome:
        prior = request.decision or _NO_DECISION
        key = (verdict.profile, "blocked" if verdict.block else "shadow", verdict.category)
        matches = self._matches
        matches[key] = matches.get(key, 0) + 1
        if not verdict.block:
            request.decision = Decision(prior.outcome, prior.reason, prior.rule, prior.subject, prior.roles, verdict)
            return self._handle(request, path)
        request.decision = Decision(
            DENIED_WAF,
            f"{verdict.category} {verdict.pattern_id} in {verdict.location}",
            prior.rule,
            prior.subject,
            (),
            verdict,
        )
        decisions = self._decisions
        decisions[DENIED_WAF] = decisions.get(DENIED_WAF, 0) + 1
        if prior is not _NO_DECISION and decisions.get(prior.outcome):
            decisions[prior.outcome] -= 1  # the gate counted it allowed; it is counted once, as refused
        return _refusal(verdict.status, self._span_id(request).hex())


def _refusal(status: int, reference: str) -> Response:
    """The status and a reference to quote to support; the body says no more than the status does."""
    return error_response(status, [(REFERENCE_HEADER, reference.encode("ascii"))], f"reference: {reference}")
