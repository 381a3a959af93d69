"""The embedded default: what `ingress serve` runs with no config.

It is built as plain data and goes through the same loader as a TOML file,
so the default can never hold a value a user's file could not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ingress.config.loader import parse_config
from ingress.config.model import Config
from ingress.demo import SITE

DEFAULT_SOURCE = "<embedded default>"


def edgeward_home() -> Path:
    env = os.environ.get("EDGEWARD_HOME")
    return Path(env) if env else Path.home() / ".local" / "state" / "edgeward"


def default_config(home: Path, cert: Path, key: Path) -> Config:
    """The default for this home, serving `cert`/`key` (the dev PKI the CLI created)."""
    acme = home / "acme"
    (acme / ".well-known" / "acme-challenge").mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "listeners": [
            {
                "name": "https",
                "address": "127.0.0.1:8443",
                "tls": {"certs": [{"cert": str(cert), "key": str(key)}]},
            },
            {"name": "http", "address": "127.0.0.1:8080"},
        ],
        "routes": [
            {"listeners": ["https"], "path": "/", "static": {"root": str(SITE)}},
            {"listeners": ["http"], "path": "/", "redirect": {"scheme": "https", "port": 8443}},
            {
                "listeners": ["http"],
                "path": "/.well-known/acme-challenge/",
                "static": {"root": str(acme), "precompressed": False},
            },
        ],
        "admin": {"enabled": True, "address": "127.0.0.1:9901"},
    }
    return parse_config(data, DEFAULT_SOURCE)
