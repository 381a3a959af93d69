"""Run Nuitka for the recipe and collect the executable, its report and its build record.

The build runs in a work directory inside the output directory, at a stable path, so compiler caches hit
and no absolute temp path differs between two builds of the same tree.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from audit.build.environment import build_python, installed_archives, installed_version
from audit.build.linkage import check_linkage
from audit.build.recipe import Recipe, load_recipe
from audit.build.source import build_id, describe_source
from audit.build.toolchain import missing_build_tools, toolchain
from audit.buildinfo import BuildInfo, build_info_path, load_build_info, report_path
from audit.digest import sha256_file
from audit.errors import AuditError
from audit.progress import Progress

DEFAULT_BUILDER_ID = "https://edgeward.dev/builders/audit-build/v1"
BUILD_MODULE = "_edgeward_build"
WORK_DIR = ".edgeward-build"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def project_version(source: Path) -> str:
    try:
        return str(tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise AuditError(f"{source / 'pyproject.toml'}: cannot read project.version: {exc}") from None


def _build_module(version: str, ident: str, commit: str) -> str:
    return (
        '"""Written by `audit build`: what `ingress version` prints inside the executable."""\n'
        f"VERSION = {version!r}\nBUILD_ID = {ident!r}\nSOURCE_COMMIT = {commit!r}\n"
    )


def _reusable(executable: Path, ident: str) -> BuildInfo | None:
    record = build_info_path(executable)
    if not (executable.is_file() and record.is_file() and report_path(executable).is_file()):
        return None
    try:
        info = load_build_info(record)
    except AuditError:
        return None
    if info.build_id != ident or sha256_file(executable) != info.executable_sha256:
        return None
    return info


def nuitka_command(python: Path, recipe: Recipe, spec: str, work: Path, *, interactive: bool) -> list[str]:
    return [
        str(python),
        "-m",
        "nuitka",
        *recipe.flags,
        f"--onefile-tempdir-spec={spec}",
        f"--include-module={BUILD_MODULE}",
        f"--report={work / (recipe.name + '.nuitka-report.xml')}",
        f"--output-dir={work}",
        f"--output-filename={recipe.name}",
        f"--progress-bar={'auto' if interactive else 'none'}",
        recipe.entry,
    ]


def _recorded(command: list[str], work: Path) -> tuple[str, ...]:
    """The command line as recorded: no interpreter path, no work directory, no progress-bar choice."""
    kept = []
    for arg in command[3:]:
        if arg.startswith("--progress-bar=") or arg.startswith("--output-dir="):
            continue
        kept.append(arg.replace(f"{work}/", ""))
    return tuple(kept)


def fixed_layout(command: list[str]) -> list[str]:
    """Run `command` with address-space randomisation off, when the machine allows it.

    Nuitka serialises constants in iteration order, and a set of built-in types iterates in
    address order (a type hashes by its address). With randomisation on, two builds of the same
    source order such sets differently and their executables differ in those bytes
    (`attr._funcs._ATOMIC_TYPES` is one). A fixed layout makes that order the same every build.
    """
    setarch = shutil.which("setarch")
    if setarch is None:
        return command
    prefix = [setarch, platform.machine(), "--addr-no-randomize"]
    # A sandbox may refuse personality(2); then build as usual and let `reproducible check` show the cost.
    if subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode != 0:
        return command
    return [*prefix, *command]


def _run(command: list[str], source: Path, env: dict[str, str], progress: Progress, *, interactive: bool) -> None:
    command = fixed_layout(command)
    if interactive:
        done = subprocess.run(command, cwd=source, env=env, check=False)
        if done.returncode != 0:
            raise AuditError(f"nuitka failed with exit code {done.returncode}", hint="its output is above")
        return
    tail: list[str] = []
    with subprocess.Popen(
        command, cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                progress.note(line)
                tail = [*tail[-19:], line]
    if proc.returncode != 0:
        raise AuditError(f"nuitka failed with exit code {proc.returncode}", hint="last lines: " + " | ".join(tail[-5:]))


def build_executable(
    source: Path,
    output: Path,
    *,
    repository: str = "",
    builder_id: str = DEFAULT_BUILDER_ID,
    progress: Progress,
    interactive: bool = False,
    reuse: bool = False,
    keep_dist: Path | None = None,
) -> BuildInfo:
    """Compile, move the executable and report into `output`, check linkage, and write the build record.

    With `reuse`, an executable already in `output` whose record has this build id and whose bytes still
    match the record is kept: the inputs are the same, so compiling again would only cost minutes.
    With `keep_dist`, Nuitka's standalone tree (what the onefile packs) is moved there instead of deleted:
    `reproducible check` compares two builds file by file, which the packed executable alone cannot show.
    """
    source = source.resolve()
    output = output.resolve()
    with progress.step("recipe and toolchain"):
        recipe = load_recipe(source)
        missing = missing_build_tools()
        if missing:
            raise AuditError(f"missing build tools: {', '.join(missing)}", hint="apt-get install gcc patchelf")
        python = build_python(source, progress)
        tools = toolchain(installed_version(python, "nuitka"))
        origin = describe_source(source, repository)
        version = project_version(source)
        ident = build_id(source, version, (*recipe.flags, recipe.onefile_tempdir_spec, recipe.entry), tools)
        dirty = " (dirty)" if origin.dirty else ""
        progress.note(f"edgeward {version}, build id {ident[:16]}, commit {origin.commit[:12] or 'none'}{dirty}")
        progress.note("ccache: " + ("on" if any(t.name == "ccache" for t in tools) else "not found; cold builds only"))
        if reuse:
            kept = _reusable(output / recipe.name, ident)
            if kept is not None:
                progress.note(f"{output / recipe.name} is already build {ident[:16]}; kept")
                return kept
    output.mkdir(parents=True, exist_ok=True)
    work = output / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    stage = work / "stage"
    stage.mkdir()
    (stage / f"{BUILD_MODULE}.py").write_text(_build_module(version, ident, origin.commit), encoding="utf-8")
    spec = recipe.onefile_tempdir_spec.replace("{VERSION}", version).replace("{BUILD_ID}", ident[:16])
    command = nuitka_command(python, recipe, spec, work, interactive=interactive)
    # build/hooks holds a sitecustomize for Nuitka's own processes (canonical constant order); it is
    # not imported by the server, so nothing of it reaches the executable.
    hooks = source / "build" / "hooks"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stage), str(source), str(hooks)])}
    started = _now()
    with progress.step("compile with nuitka"):
        began = time.monotonic()
        _run(command, source, env, progress, interactive=interactive)
        progress.note(f"compiled in {time.monotonic() - began:.0f} s")
    with progress.step("collect and check"):
        executable = output / recipe.name
        built = work / recipe.name
        if not built.is_file():
            raise AuditError(f"nuitka reported success but wrote no {built}")
        os.replace(built, executable)
        os.replace(work / f"{recipe.name}.nuitka-report.xml", report_path(executable))
        linked = check_linkage(executable)
        progress.note("links: " + ", ".join(linked))
        info = BuildInfo(
            version=version,
            build_id=ident,
            executable=recipe.name,
            executable_sha256=sha256_file(executable),
            source_repository=origin.repository,
            source_commit=origin.commit,
            source_dirty=origin.dirty,
            flags=_recorded(command, work),
            recipe="build/recipe.toml",
            lock_file="requirements.lock",
            lock_sha256=sha256_file(source / "requirements.lock"),
            tools=tools,
            started_on=started,
            finished_on=_now(),
            builder_id=builder_id,
            extras={
                "links": " ".join(linked),
                "extraction_dir": spec,
                **{f"wheel-sha256.{name}": digest for name, digest in sorted(installed_archives(python).items())},
            },
        )
        build_info_path(executable).write_text(info.to_json(), encoding="utf-8")
        if keep_dist is not None:
            dist = work / f"{Path(recipe.entry).stem}.dist"
            if not dist.is_dir():
                raise AuditError(f"nuitka left no standalone tree {dist} to keep")
            shutil.rmtree(keep_dist, ignore_errors=True)
            shutil.move(dist, keep_dist)
        shutil.rmtree(work, ignore_errors=True)
        progress.note(f"{executable} sha256 {info.executable_sha256}")
    return info
