"""The build recipe (`build/recipe.toml`), read strictly: a typo in a release recipe must not build silently."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from audit.errors import AuditError

RECIPE = Path("build/recipe.toml")
_SECTIONS = {"program": {"name", "entry"}, "nuitka": {"flags", "onefile_tempdir_spec"}}
# Flags the builder owns: letting the recipe set them would make the record lie about where things went.
_RESERVED = ("--output-dir", "--output-filename", "--report=", "--onefile-tempdir-spec", "--include-module=_edgeward")


@dataclass(frozen=True)
class Recipe:
    name: str
    entry: str
    flags: tuple[str, ...]
    onefile_tempdir_spec: str


def load_recipe(source: Path) -> Recipe:
    path = source / RECIPE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditError(
            f"{path}: no build recipe", hint="run from the edgeward source tree or pass --source DIR"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AuditError(f"{path}: cannot read the recipe: {exc}") from None
    for section, value in data.items():
        if section not in _SECTIONS or not isinstance(value, dict):
            raise AuditError(f"{path}: [{section}]: unknown section", hint=f"sections are {sorted(_SECTIONS)}")
        for key in value:
            if key not in _SECTIONS[section]:
                raise AuditError(
                    f"{path}: {section}.{key}: unknown key",
                    hint=f"keys of [{section}] are {sorted(_SECTIONS[section])}",
                )
    for section, keys in _SECTIONS.items():
        for key in sorted(keys - set(data.get(section, {}))):
            raise AuditError(f"{path}: {section}.{key}: missing", hint="see the comments in the shipped recipe")
    program, nuitka = data["program"], data["nuitka"]
    recipe = Recipe(
        name=str(program["name"]),
        entry=str(program["entry"]),
        flags=tuple(str(flag) for flag in nuitka["flags"]),
        onefile_tempdir_spec=str(nuitka["onefile_tempdir_spec"]),
    )
    for flag in recipe.flags:
        if not flag.startswith("--"):
            raise AuditError(f"{path}: nuitka.flags: {flag!r} is not a --flag")
        if flag.startswith(_RESERVED):
            raise AuditError(
                f"{path}: nuitka.flags: {flag.split('=')[0]} is set by `audit build`", hint="remove it from the recipe"
            )
    if "{BUILD_ID}" not in recipe.onefile_tempdir_spec:
        raise AuditError(
            f"{path}: nuitka.onefile_tempdir_spec must contain {{BUILD_ID}}",
            hint="two builds sharing an extraction directory would run each other's files",
        )
    if not (source / recipe.entry).is_file():
        raise AuditError(f"{path}: program.entry: {recipe.entry} does not exist")
    return recipe
