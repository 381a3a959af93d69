"""`audit build`: the recipe is read strictly, and the executable `./dev test` built is what it claims.

The compile itself runs once per test session, before pytest, in `./dev test` (it takes minutes); these
tests examine its output: linkage, the build record, the report, the versioned extraction directory and
reuse of an unchanged build.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from audit.build.linkage import check_linkage
from audit.build.nuitka import build_executable
from audit.build.recipe import load_recipe
from audit.build.source import build_id
from audit.build.toolchain import toolchain
from audit.buildinfo import load_build_info
from audit.digest import sha256_file
from audit.errors import AuditError, Finding
from audit.progress import Progress
from audit.sbom.report import load_report
from tests.program import executable
from tests.server import ROOT


def _recipe_tree(tmp_path: Path, text: str) -> Path:
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "recipe.toml").write_text(text)
    (tmp_path / "build" / "edgeward.py").write_text("")
    return tmp_path


GOOD = """
[program]
name = "edgeward"
entry = "build/edgeward.py"
[nuitka]
flags = ["--mode=onefile"]
onefile_tempdir_spec = "{CACHE_DIR}/edgeward/{VERSION}-{BUILD_ID}"
"""


def test_the_shipped_recipe_loads() -> None:
    recipe = load_recipe(ROOT)
    assert recipe.name == "edgeward"
    assert "--mode=onefile" in recipe.flags
    assert "--static-libpython=yes" in recipe.flags
    assert "--deployment" in recipe.flags


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[nuitka]", "[nuitka]\nflagz = []"), "nuitka.flagz: unknown key"),
        (("[program]", "[programme]"), "[programme]: unknown section"),
        (('["--mode=onefile"]', '["--mode=onefile", "--output-dir=/tmp"]'), "--output-dir is set by `audit build`"),
        (('["--mode=onefile"]', '["mode=onefile"]'), "'mode=onefile' is not a --flag"),
        (("{VERSION}-{BUILD_ID}", "{VERSION}"), "must contain {BUILD_ID}"),
        (('entry = "build/edgeward.py"', 'entry = "build/missing.py"'), "build/missing.py does not exist"),
        (('name = "edgeward"\n', ""), "program.name: missing"),
        (("[nuitka]", "[other]"), "[other]: unknown section"),
    ],
)
def test_recipe_mistakes_name_the_file_and_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    source = _recipe_tree(tmp_path, GOOD.replace(*change))
    with pytest.raises(AuditError) as caught:
        load_recipe(source)
    assert str(caught.value).startswith(f"{source / 'build' / 'recipe.toml'}: ")
    assert message in str(caught.value)


def test_no_recipe_says_where_to_run(tmp_path: Path) -> None:
    with pytest.raises(AuditError) as caught:
        load_recipe(tmp_path)
    assert "no build recipe" in str(caught.value)
    assert "--source" in caught.value.diagnostics()


def test_executable_links_only_libc_libm_and_the_loader() -> None:
    out = subprocess.run(["ldd", str(executable())], capture_output=True, text=True, check=False)
    names = sorted(line.split()[0].rsplit("/", 1)[-1] for line in out.stdout.splitlines() if line.strip())
    allowed = ("linux-vdso.so", "libc.so", "libm.so", "ld-linux")
    assert names, out
    assert all(name.startswith(allowed) for name in names), names
    assert any(name.startswith("libc.so") for name in names)
    assert sorted(check_linkage(executable())) == [n for n in names if not n.startswith("linux-vdso")]


def test_linkage_check_names_a_foreign_library() -> None:
    curl = Path(shutil.which("curl") or "/usr/bin/curl")  # `./dev test` installs curl; it links libcurl
    with pytest.raises(Finding, match=r"^curl links .*libcurl\.so"):
        check_linkage(curl)


def test_build_record_matches_the_executable_and_this_tree() -> None:
    exe = executable()
    info = load_build_info(exe.with_name(exe.name + ".build.json"))
    assert info.executable == exe.name
    assert info.executable_sha256 == sha256_file(exe)
    recipe = load_recipe(ROOT)
    # The id is a digest of every input; recomputing it here proves the executable is this tree's build.
    tools = toolchain(info.tool("nuitka"))  # Nuitka's version is pinned by build/requirements-nuitka.lock, an input
    flags = (*recipe.flags, recipe.onefile_tempdir_spec, recipe.entry)
    assert info.build_id == build_id(ROOT, info.version, flags, tools)
    assert info.lock_sha256 == sha256_file(ROOT / "requirements.lock")
    tools = {tool.name: tool.version for tool in info.tools}
    assert set(tools) >= {"python", "nuitka", "gcc", "glibc", "openssl"}
    assert "--mode=onefile" in info.flags
    assert f"--onefile-tempdir-spec={{CACHE_DIR}}/edgeward/{info.version}-{info.build_id[:16]}" in info.flags
    assert info.extras["links"].split() and "libpython" not in info.extras["links"]
    assert not any("/.edgeward-build/" in flag for flag in info.flags)
    report = exe.with_name(exe.name + ".nuitka-report.xml").read_text()
    assert "<nuitka-compilation-report" in report
    assert 'name="ingress.cli"' in report


def test_the_server_runs_as_bytecode_and_its_dependencies_compiled() -> None:
    # The recipe's ingress:bytecode: the server's code runs on the interpreter's specialising loop, which
    # costs fewer instructions per request than the same code compiled to C. Dependencies stay compiled.
    exe = executable()
    modules = load_report(exe.with_name(exe.name + ".nuitka-report.xml")).modules
    ours = {name: module.kind for name, module in modules.items() if name.partition(".")[0] == "ingress"}
    assert len(ours) > 50, sorted(ours)
    assert set(ours.values()) <= {"UncompiledPythonModule", "UncompiledPythonPackage"}, ours
    assert ours["ingress.protocol.http1"] == "UncompiledPythonModule"
    assert modules["h2.connection"].kind == "CompiledPythonModule"
    assert modules["jwt.api_jwt"].kind == "CompiledPythonModule"


def test_executable_extracts_once_into_a_directory_named_by_version_and_build(tmp_path: Path) -> None:
    exe = executable()
    info = load_build_info(exe.with_name(exe.name + ".build.json"))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    first = subprocess.run([str(exe), "version"], env=env, capture_output=True, text=True, check=False, timeout=120)
    assert first.returncode == 0, first.stderr
    extracted = tmp_path / "edgeward" / f"{info.version}-{info.build_id[:16]}"
    assert extracted.is_dir()
    stamp = {path: path.stat().st_mtime_ns for path in extracted.rglob("*")}
    assert len(stamp) > 10
    second = subprocess.run([str(exe), "version"], env=env, capture_output=True, text=True, check=False, timeout=60)
    assert second.stdout == first.stdout
    assert {path: path.stat().st_mtime_ns for path in extracted.rglob("*")} == stamp
    assert [p.name for p in (tmp_path / "edgeward").iterdir()] == [extracted.name]


def test_reuse_keeps_an_unchanged_build_without_compiling(tmp_path: Path) -> None:
    exe = executable()
    for suffix in ("", ".build.json", ".nuitka-report.xml"):
        shutil.copy2(exe.with_name(exe.name + suffix), tmp_path / f"edgeward{suffix}")
    log = io.StringIO()
    info = build_executable(ROOT, tmp_path, progress=Progress(3, stream=log), reuse=True)
    assert info.executable_sha256 == sha256_file(exe)
    assert "kept" in log.getvalue()
    assert "compile with nuitka" not in log.getvalue()
    # A changed executable is not reused: its bytes no longer match the record. Rather than compile here
    # (minutes), prove the check itself refuses it.
    (tmp_path / "edgeward").write_bytes(b"not the build")
    from audit.build.nuitka import _reusable

    assert _reusable(tmp_path / "edgeward", info.build_id) is None
    assert json.loads((tmp_path / "edgeward.build.json").read_text())["build_id"] == info.build_id
