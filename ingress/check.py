"""`ingress check`: everything `serve` would load, loaded.

It sits above config and tls because it uses both: the config says which
files to read, tls says whether they are usable. `serve` runs the same
checks, so a config that passes check cannot fail at start for a reason
check could have seen.
"""

from __future__ import annotations

import os

from ingress.config.model import Config
from ingress.errors import Problem, TLSMaterialError
from ingress.tls.material import load_ca_bundle, load_pair


def verify_config(config: Config) -> list[Problem]:
    src = config.source
    problems: list[Problem] = []
    for i, listener in enumerate(config.listeners):
        if listener.tls is None:
            continue
        for j, pair in enumerate(listener.tls.certs):
            try:
                load_pair(pair.cert, pair.key)
            except TLSMaterialError as exc:
                problems.append(Problem(src, f"listeners[{i}].tls.certs[{j}]", str(exc)))
        for j, path in enumerate(listener.tls.client_ca):
            try:
                load_ca_bundle(path)
            except TLSMaterialError as exc:
                problems.append(Problem(src, f"listeners[{i}].tls.client_ca[{j}]", str(exc)))
    for i, route in enumerate(config.routes):
        if route.static is None:
            continue
        root = route.static.root
        if not os.path.isdir(root):
            why = "does not exist" if not os.path.exists(root) else "is not a directory"
            problems.append(Problem(src, f"routes[{i}].static.root", f"{root} {why}"))
        elif not os.access(root, os.R_OK | os.X_OK):
            problems.append(Problem(src, f"routes[{i}].static.root", f"{root} is not readable by this user"))
    return problems
