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
from ingress.policy.keys import PolicyMaterialError, load_static_keys
from ingress.telemetry.export import otlp_file_problems
from ingress.tls.material import client_material, load_pair
from ingress.tls.origin import origin_context


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
        # Client CAs and CRLs are checked together: a CRL must be signed by one of the CAs, and with any
        # CRL every CA needs one.
        if listener.tls.client_ca or listener.tls.client_crl:
            _, found = client_material(listener.tls.client_ca, listener.tls.client_crl)
            problems.extend(Problem(src, f"listeners[{i}].tls.{key}", message) for key, message in found)
    for i, route in enumerate(config.routes):
        if route.static is None:
            continue
        root = route.static.root
        if not os.path.isdir(root):
            why = "does not exist" if not os.path.exists(root) else "is not a directory"
            problems.append(Problem(src, f"routes[{i}].static.root", f"{root} {why}"))
        elif not os.access(root, os.R_OK | os.X_OK):
            problems.append(Problem(src, f"routes[{i}].static.root", f"{root} is not readable by this user"))
    for upstream in config.upstreams:
        if upstream.ca or upstream.client_cert or any(o.startswith("https://") for o in upstream.origins):
            try:
                origin_context(upstream)
            except TLSMaterialError as exc:  # its message starts with the key, e.g. upstreams[payments].ca
                problems.append(Problem(src, "", str(exc)))
    for i, provider in enumerate(config.policy.jwt):
        at = f"policy.jwt[{i}]"
        try:
            load_static_keys(provider, at)
        except PolicyMaterialError as exc:
            problems.append(Problem(src, exc.path, exc.message))
        jwks = provider.jwks
        if jwks is not None and jwks.ca and not os.path.isfile(jwks.ca):
            problems.append(Problem(src, f"{at}.jwks.ca", f"{jwks.ca} does not exist"))
    problems.extend(_telemetry_file_problems(config))
    return problems


def _telemetry_file_problems(config: Config) -> list[Problem]:
    """Files the server appends to must be creatable; the collector's TLS material must load as `serve` loads it."""
    src = config.source
    problems: list[Problem] = []
    files = config.telemetry.files
    for key, path in (
        ("telemetry.files.traces", files.traces),
        ("audit.file", config.audit.file),
    ):
        if not path:
            continue
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            problems.append(Problem(src, key, f"directory {parent} does not exist; create it or change the path"))
        elif not os.access(parent, os.W_OK | os.X_OK):
            problems.append(Problem(src, key, f"directory {parent} is not writable by this user"))
        elif os.path.exists(path) and not os.access(path, os.W_OK):
            problems.append(Problem(src, key, f"{path} is not writable by this user"))
    problems.extend(otlp_file_problems(config))
    return problems
