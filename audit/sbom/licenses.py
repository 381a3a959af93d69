"""Licences as their authors declared them, turned into SPDX where that is a lookup and not a judgement.

Regulators ask "under which licence did you ship X"; the honest answer is what the distribution's own
metadata (or Debian's machine-readable copyright file) says, so every licence carries where it was found
and nothing is guessed: a declaration with no SPDX form is kept as a name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import PackageMetadata

from cyclonedx.spdx import fixup_id, is_expression

# Trove classifiers with exactly one SPDX meaning ("BSD License" has none: which BSD?).
_CLASSIFIERS = {
    "License :: OSI Approved :: Apache Software License": "Apache-2.0",
    "License :: OSI Approved :: BSD Zero Clause License (0BSD)": "0BSD",
    "License :: OSI Approved :: GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "License :: OSI Approved :: GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "License :: OSI Approved :: GNU Lesser General Public License v2 (LGPLv2)": "LGPL-2.0-only",
    "License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "License :: OSI Approved :: ISC License (ISCL)": "ISC",
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: MIT No Attribution License (MIT-0)": "MIT-0",
    "License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "License :: OSI Approved :: Python Software Foundation License": "PSF-2.0",
    "License :: OSI Approved :: The Unlicense (Unlicense)": "Unlicense",
    "License :: OSI Approved :: zlib/libpng License": "Zlib",
}

# Free-text `License:` values seen in the wild that name exactly one SPDX licence.
_NAMES = {
    "3-clause bsd license": "BSD-3-Clause",
    "apache 2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "bsd-3-clause license": "BSD-3-Clause",
    "mit license": "MIT",
    "the mit license (mit)": "MIT",
}

# Debian copyright-format 1.0 short names that differ from SPDX ids.
_DEBIAN = {
    "expat": "MIT",
    "gpl-2": "GPL-2.0-only",
    "gpl-2+": "GPL-2.0-or-later",
    "gpl-3": "GPL-3.0-only",
    "gpl-3+": "GPL-3.0-or-later",
    "lgpl-2": "LGPL-2.0-only",
    "lgpl-2+": "LGPL-2.0-or-later",
    "lgpl-2.1": "LGPL-2.1-only",
    "lgpl-2.1+": "LGPL-2.1-or-later",
    "lgpl-3": "LGPL-3.0-only",
    "lgpl-3+": "LGPL-3.0-or-later",
}

_DEP5_FORMAT = "copyright-format/1.0"


@dataclass(frozen=True)
class FoundLicense:
    """`expression` (one SPDX expression) or `ids` (several SPDX ids) or `names` (no SPDX form); `source`
    says where it was read: License-Expression, License, Classifier, debian/copyright or "" (nothing found)."""

    source: str = ""
    expression: str = ""
    ids: tuple[str, ...] = ()
    names: tuple[str, ...] = ()


def _spdx_id(value: str) -> str | None:
    fixed: str | None = fixup_id(value)
    return fixed


def _spdx(value: str) -> str | None:
    """SPDX id or expression for `value`, or None."""
    value = value.strip()
    if not value or "\n" in value:
        return None
    if (fixed := _spdx_id(value)) is not None:
        return fixed
    if " " in value and is_expression(value):
        return value
    return None


def _field(metadata: PackageMetadata, name: str) -> str:
    values = metadata.get_all(name) or []
    return str(values[0]).strip() if values else ""


def python_license(metadata: PackageMetadata) -> FoundLicense:
    """Core metadata order: License-Expression (PEP 639), else License, else classifiers."""
    expression = _field(metadata, "License-Expression")
    if expression:
        spdx = _spdx(expression)
        return (
            FoundLicense("License-Expression", expression=spdx)
            if spdx
            else FoundLicense("License-Expression", names=(expression,))
        )
    declared = _field(metadata, "License")
    if spdx := _spdx(declared):
        return FoundLicense("License", expression=spdx)
    ids = sorted({_CLASSIFIERS[c] for c in metadata.get_all("Classifier") or () if c in _CLASSIFIERS})
    if ids:
        return FoundLicense("Classifier", ids=tuple(ids))
    if declared and "\n" not in declared and len(declared) <= 100:
        named = _NAMES.get(declared.lower())
        return FoundLicense("License", ids=(named,)) if named else FoundLicense("License", names=(declared,))
    return FoundLicense()


def _debian_to_spdx(short: str) -> str | None:
    parts = re.split(r"\s+(or|and)\s+", short.strip(), flags=re.IGNORECASE)
    out: list[str] = []
    for index, part in enumerate(parts):
        if index % 2:
            out.append(part.upper())
            continue
        name = part.strip().rstrip(",")
        spdx = _DEBIAN.get(name.lower()) or _spdx_id(name)
        if spdx is None:
            return None
        out.append(spdx)
    return " ".join(out)


def dep5_license(text: str) -> FoundLicense:
    """The licence of the `Files: *` paragraph of a machine-readable debian/copyright; else nothing.

    Older free-form copyright files are not parsed: reading prose is a judgement, not a lookup.
    """
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not paragraphs or not re.search(r"^Format:\s*\S*" + re.escape(_DEP5_FORMAT), paragraphs[0], flags=re.MULTILINE):
        return FoundLicense()
    for paragraph in paragraphs[1:]:
        files = re.search(r"^Files:\s*(.*)$", paragraph, flags=re.MULTILINE)
        licence = re.search(r"^License:[ \t]*(\S.*)$", paragraph, flags=re.MULTILINE)
        if files is None or licence is None or "*" not in files.group(1).split():
            continue
        short = licence.group(1).strip()
        spdx = _debian_to_spdx(short)
        if spdx is None:
            return FoundLicense("debian/copyright", names=(short,))
        if " " in spdx:
            return FoundLicense("debian/copyright", expression=spdx)
        return FoundLicense("debian/copyright", ids=(spdx,))
    return FoundLicense()
