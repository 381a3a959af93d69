"""A config's `[waf]` compiled: one engine per profile in use, and the stage a route gets.

Engines are built when the config is loaded (an automaton takes
milliseconds to build), never on the request path. A worker keeps one
Firewall per config, so routes sharing a profile share its engine and its
memory of clean values.
"""

from __future__ import annotations

from collections.abc import Callable

from ingress.config.waf import RouteWaf, Waf
from ingress.policy.waf.engine import WafEngine
from ingress.policy.waf.stage import WafStage
from ingress.protocol.events import Request
from ingress.routing import Handler


class Firewall:
    def __init__(
        self,
        waf: Waf,
        routes: tuple[RouteWaf, ...] = (),
        decisions: dict[str, int] | None = None,
        matches: dict[tuple[str, str, str], int] | None = None,
    ) -> None:
        """Build the engines of the default profile and of every profile `routes` name.

        `decisions` and `matches` are the worker's counters (access decisions by outcome,
        firewall matches by profile, action and category), kept across reloads by the caller.
        """
        self._enabled = waf.enabled
        self._default = waf.profile
        profiles = waf.resolved_profiles()
        wanted = {waf.profile} | {r.profile for r in routes if r.profile}
        self._engines = {name: WafEngine(profiles[name]) for name in sorted(wanted)}
        self.decisions = decisions if decisions is not None else {}
        self.matches = matches if matches is not None else {}

    @classmethod
    def needed(cls, waf: Waf, routes: tuple[RouteWaf, ...]) -> bool:
        """Whether any route is inspected at all; without, a worker builds no engine."""
        return waf.enabled or any(r.enabled for r in routes)

    def engine_for(self, route: RouteWaf | None) -> WafEngine | None:
        """The engine inspecting a route's requests, or None when the firewall is off there."""
        if route is None:
            return self._engines[self._default] if self._enabled else None
        enabled = self._enabled if route.enabled is None else route.enabled
        if not enabled:
            return None
        return self._engines[route.profile or self._default]

    def stage(self, route: RouteWaf, handle: Handler, span_id: Callable[[Request], bytes]) -> WafStage | None:
        """`handle` behind the route's firewall, or None when the firewall is off on the route."""
        engine = self.engine_for(route)
        if engine is None:
            return None
        return WafStage(engine, handle, self.decisions, self.matches, span_id)
