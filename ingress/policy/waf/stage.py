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

import asyncio
import typing
from collections.abc import Callable

from ingress.policy.waf.engine import WafEngine
from ingress.policy.waf.verdict import Verdict
from ingress.protocol.errorpages import error_response
from ingress.protocol.events import Decision, Request, Response
from ingress.protocol.pipe import Pipe
from ingress.routing import Handler, Outcome

DENIED_WAF = "denied_waf"
REFERENCE_HEADER = b"Edge-Reference"
_NO_DECISION = Decision("allowed", "")


class WafStage:
    """Wraps a route's handler; one per route, sharing its profile's engine with other routes."""

    __slots__ = ("_decisions", "_handle", "_matches", "_span_id", "engine")

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

    def __call__(self, request: Request, path: str) -> Outcome:
        engine = self.engine
        verdict = engine.inspect_head(request.method, request.path, request.query, request.headers)
        if verdict is None:
            body = request.body
            if not body:
                return self._handle(request, path)
            if body.__class__ is not bytes:
                # Still arriving (a proxied route streams bodies): held whole before it may go on.
                if engine.wants_body(request.method):
                    return self._gather(request, path, typing.cast(Pipe, body))
                return self._handle(request, path)
            verdict = engine.inspect_body(request.method, request.headers, body)
            if verdict is None:
                return self._handle(request, path)
        return self._found(request, path, verdict)

    def _gather(self, request: Request, path: str, pipe: Pipe) -> asyncio.Future[Response]:
        """Read the whole body, inspect it, and only then hand the request on with the body as bytes.

        Asking for the body is what answers `Expect: 100-continue`, so a client is told to send
        it only once the gate and the head's inspection have let the request through. The
        protocols hold a body to `limits.max_body_bytes` (413 beyond), which bounds the memory.
        """
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        chunks: list[bytes] = []

        def readable() -> None:
            if answer.done():
                pipe.discard()
                return
            while True:
                data = pipe.read()
                if not data:
                    break
                chunks.append(bytes(data))
            if pipe.error:
                answer.set_result(error_response(400))  # the client's body broke off, as a proxy would say
            elif pipe.eof:
                pipe.on_readable = None
                request.body = b"".join(chunks)
                chunks.clear()
                _settle(answer, self._inspected(request, path))

        pipe.want(readable)
        return answer

    def _inspected(self, request: Request, path: str) -> Outcome:
        body = typing.cast(bytes, request.body)
        verdict = self.engine.inspect_body(request.method, request.headers, body) if body else None
        return self._handle(request, path) if verdict is None else self._found(request, path, verdict)

    def _found(self, request: Request, path: str, verdict: Verdict) -> Outcome:
        prior = request.decision or _NO_DECISION
        key = (verdict.profile, "block" if verdict.block else "shadow", verdict.category)
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
    extra = [(REFERENCE_HEADER, reference.encode("ascii"))]
    if status == 415:
        extra.append((b"Accept-Encoding", b"gzip, deflate"))  # RFC 9110 §12.5.3: the codings that would do
    return error_response(status, extra, f"reference: {reference}")


def _settle(answer: asyncio.Future[Response], outcome: Outcome) -> None:
    """Resolve `answer` with `outcome`, now or when the handler's own Future resolves."""
    if outcome.__class__ is Response:
        answer.set_result(outcome)
        return
    inner = typing.cast("asyncio.Future[Response]", outcome)

    def relay(done: asyncio.Future[Response]) -> None:
        if answer.done():
            return
        if done.cancelled():
            answer.cancel()
        elif done.exception() is not None:
            answer.set_exception(typing.cast(BaseException, done.exception()))
        else:
            answer.set_result(done.result())

    def forward_cancel(mine: asyncio.Future[Response]) -> None:
        if mine.cancelled():
            inner.cancel()  # the client went away: the upstream exchange stops too

    inner.add_done_callback(relay)
    answer.add_done_callback(forward_cancel)
