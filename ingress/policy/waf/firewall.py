"""A config's `[waf]` compiled: one engine per profile in use, and which one a route gets.

Engines are built when the config is loaded (an automaton takes
milliseconds to build), never on the request path.
"""

from __future__ import annotations

from ingress.config.waf import RouteWaf, Waf
from ingress.policy.waf.engine import WafEngine


class Firewall:
    def __init__(self, waf: Waf, routes: tuple[RouteWaf, ...] = ()) -> None:
        """Build the engines of the default profile and of every profile `routes` name."""
        self._enabled = waf.enabled
        self._default = waf.profile
        profiles = waf.resolved_profiles()
        wanted = {waf.profile} | {r.profile for r in routes if r.profile}
        self._engines = {name: WafEngine(profiles[name]) for name in sorted(wanted)}

    def engine_for(self, route: RouteWaf | None) -> WafEngine | None:
        """The engine inspecting a route's requests, or None when the firewall is off there."""
        if route is None:
            return self._engines[self._default] if self._enabled else None
        enabled = self._enabled if route.enabled is None else route.enabled
        if not enabled:
            return None
        return self._engines[route.profile or self._default]
