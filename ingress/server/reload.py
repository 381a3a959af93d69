"""Live reload: a new config is adopted only if it is entirely valid.

The supervisor vets a reload first (including what only a restart can
change); each worker loads it again before applying it. Both refuse the
same way, so an operator sees one kind of log line whichever refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ingress.config.model import Config, Listener
from ingress.errors import ConfigError, Problem

log = logging.getLogger("edgeward.reload")


def attempt(load: Callable[[], Config], vet: Callable[[Config], list[Problem]] | None = None) -> Config | None:
    """The new config, or None after logging why it was refused (the old one keeps serving)."""
    try:
        config = load()
        problems = vet(config) if vet is not None else []
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        log.error(
            "reload refused; still serving the previous config:\n%s",
            exc,
            extra={"event": "config.reload_refused"},
        )
        return None
    return config


def restart_problems(old: Config, new: Config) -> list[Problem]:
    """Changes a reload cannot apply: ports are reserved by the supervisor before the workers fork.

    Workers would otherwise report the reload as done and keep the old port.
    """
    problems = []
    before = {listener.name: listener.address for listener in old.listeners}
    quic_before = {listener.name for listener in old.listeners if _serves_quic(listener)}
    for i, listener in enumerate(new.listeners):
        was = before.get(listener.name)
        if was is not None and (listener.name in quic_before) != _serves_quic(listener):
            problems.append(
                Problem(new.source, f"listeners[{i}].quic.enabled", "turning HTTP/3 on or off needs a restart")
            )
        if was is None:
            problems.append(Problem(new.source, f"listeners[{i}]", f"new listener {listener.name!r} needs a restart"))
        elif was != listener.address:
            problems.append(
                Problem(
                    new.source,
                    f"listeners[{i}].address",
                    f"changed from {was} to {listener.address}; a new address needs a restart",
                )
            )
    if old.admin != new.admin:
        problems.append(Problem(new.source, "admin", "changing the admin listener needs a restart"))
    return problems


def _serves_quic(listener: Listener) -> bool:
    """Whether the supervisor bound a UDP socket for it: only at start, like every port."""
    return listener.tls is not None and listener.quic.enabled
