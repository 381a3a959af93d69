"""PEP 503 project names: lock files, Nuitka reports, pip, purls and OSV spell one project several ways."""

from __future__ import annotations

import re


def normalise_name(name: str) -> str:
    """`Foo.Bar_baz` and `foo-bar-baz` are the same project; this is the form they agree on."""
    return re.sub(r"[-_.]+", "-", name).lower()
