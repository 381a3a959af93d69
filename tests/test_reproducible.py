"""`reproducible`: the comparer and its explanations, on real binaries gcc builds in the test.

Two full Nuitka builds take minutes, so `reproducible check` itself is not run here (its real result is in
the issue's report); everything it does after the builds is: the tree comparison, the payload, the byte
ranges and their classification, the report and the exit codes of `reproducible compare`.
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit.errors import AuditError, Finding
from audit.progress import Progress
from reproducible.compare import Side, compare_trees
from reproducible.elf import gnu_build_id, sections
from reproducible.explain import Evidence, explain
from reproducible.layout import constants_chunks
from reproducible.ranges import differing_ranges
from reproducible.rebuild import rebuild
from reproducible.sources import copy_working_tree
from reproducible.variation import FIRST, SECOND
from tests.program import executable

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "reproducible"
NOW = time.time()

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc compiles the binaries compared here")


def _cc(directory: Path, name: str, source: str, *flags: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    c_file = directory / f"{name}.c"
    c_file.write_text(source)
    out = directory / name
    subprocess.run(["gcc", "-O1", "-o", str(out), str(c_file), *flags], check=True, capture_output=True)
    c_file.unlink()
    return out


def _side(label: str, directory: Path, *paths: str) -> Side:
    return Side(label, directory, paths, (NOW - 60, NOW))


def _only(report_regions: tuple[object, ...]) -> object:
    assert len(report_regions) == 1, report_regions
    return report_regions[0]


# --- byte ranges -------------------------------------------------------------------------------------


def test_same_size_changes_are_coalesced_ranges() -> None:
    a = bytes(10000)
    b = bytearray(a)
    b[100] = b[103] = 1  # one value: 100..103
    b[9000] = 7  # far away: its own range
    found = differing_ranges(a, bytes(b))
    assert [(r.offset, r.length) for r in found.listed] == [(100, 4), (9000, 1)]
    assert found.total == 2 and found.bytes_differing == 3


def test_different_sizes_give_one_span_between_common_prefix_and_suffix() -> None:
    found = differing_ranges(b"head-AAAA-tail", b"head-BBBBBB-tail")
    assert [(r.offset, r.length, r.length_b) for r in found.listed] == [(5, 4, 6)]


def test_identical_bytes_have_no_ranges() -> None:
    assert differing_ranges(b"x" * 9000, b"x" * 9000).total == 0


def test_ranges_past_the_limit_are_counted_not_listed() -> None:
    a = bytes(4000)
    b = bytes(1 if i % 100 == 0 else 0 for i in range(4000))
    found = differing_ranges(a, b, limit=5)
    assert len(found.listed) == 5 and found.total == 40


# --- classification on real binaries ------------------------------------------------------------------

HELLO = "int main(void) { return %s; }\n"


def test_build_id_difference_names_both_ids(tmp_path: Path) -> None:
    a = _cc(tmp_path / "a", "p", HELLO % 0, "-Wl,--build-id=0x1111111111111111")
    b = _cc(tmp_path / "b", "p", HELLO % 0, "-Wl,--build-id=0x2222222222222222")
    found = sections(a.read_bytes())
    assert found is not None and gnu_build_id(a.read_bytes(), found) == "1111111111111111"
    report = compare_trees(_side("a", a.parent), _side("b", b.parent), executable="p")
    assert not report.identical
    region = _only(report.differences[0].regions)
    assert region.kind == "build-id"  # type: ignore[attr-defined]
    assert region.detail == "1111111111111111 vs 2222222222222222"  # type: ignore[attr-defined]
    assert region.section == ".note.gnu.build-id"  # type: ignore[attr-defined]


def test_embedded_path_is_named(tmp_path: Path) -> None:
    # Same length, so the bytes differ in place, like a build directory compiled into a string.
    src = 'const char *where = "%s/module.py"; int main(void) { return where[0]; }\n'
    dir_a, dir_b = tmp_path / "aaaa", tmp_path / "bbbb"
    a = _cc(dir_a, "p", src % dir_a, "-Wl,--build-id=none")
    b = _cc(dir_b, "p", src % dir_b, "-Wl,--build-id=none")
    report = compare_trees(_side("a", dir_a, str(dir_a)), _side("b", dir_b, str(dir_b)), executable="p")
    region = _only(report.differences[0].regions)
    assert region.kind == "path"  # type: ignore[attr-defined]
    assert region.detail == f"{dir_a} vs {dir_b}"  # type: ignore[attr-defined]
    assert region.section == ".rodata"  # type: ignore[attr-defined]
    assert a.stat().st_size == b.stat().st_size


def test_timestamp_inside_each_build_window_is_named(tmp_path: Path) -> None:
    src = "__attribute__((used)) const unsigned long long built = %dULL; int main(void) { return 0; }\n"
    a = _cc(tmp_path / "a", "p", src % int(NOW - 30), "-Wl,--build-id=none")
    b = _cc(tmp_path / "b", "p", src % int(NOW - 5), "-Wl,--build-id=none")
    report = compare_trees(_side("a", a.parent), _side("b", b.parent), executable="p")
    region = _only(report.differences[0].regions)
    assert region.kind == "timestamp"  # type: ignore[attr-defined]
    assert f"{int(NOW - 30)} vs {int(NOW - 5)}" in region.detail  # type: ignore[attr-defined]


def test_a_value_far_from_the_build_time_is_not_a_timestamp(tmp_path: Path) -> None:
    src = "__attribute__((used)) const unsigned long long v = %dULL; int main(void) { return 0; }\n"
    a = _cc(tmp_path / "a", "p", src % 1000, "-Wl,--build-id=none")
    b = _cc(tmp_path / "b", "p", src % 2000, "-Wl,--build-id=none")
    region = _only(compare_trees(_side("a", a.parent), _side("b", b.parent), executable="p").differences[0].regions)
    assert region.kind == "unknown"  # type: ignore[attr-defined]
    assert region.detail == "in .rodata"  # type: ignore[attr-defined]


def _blob(chunks: list[tuple[str, bytes]]) -> bytes:
    return b"".join(name.encode() + b"\0" + struct.pack("<I", len(body)) + body for name, body in chunks)


def test_constants_blob_difference_names_the_module(tmp_path: Path) -> None:
    template = (DATA / "constants.c.in").read_text()
    common = [(".bytecode", b"B" * 64), ("", b"G" * 32), ("ingress.config", b"C" * 48)]

    def build(side: str, body: bytes) -> Path:
        blob = _blob([*common, ("ingress.routing", body), ("ingress.zz", b"Z" * 16)])
        return _cc(
            tmp_path / side, "p", template.replace("@BLOB@", ",".join(str(x) for x in blob)), "-Wl,--build-id=none"
        )

    a = build("a", b"\x01first\x02second")
    b = build("b", b"\x01second\x02first")  # the same constants, serialised in another order
    chunks = constants_chunks(a.read_bytes())
    assert [c.name for c in chunks] == [".bytecode", "", "ingress.config", "ingress.routing", "ingress.zz"]
    report = compare_trees(_side("a", a.parent), _side("b", b.parent), executable="p")
    region = _only(report.differences[0].regions)
    assert region.kind == "constants"  # type: ignore[attr-defined]
    assert region.detail.startswith("module ingress.routing (+1 of 13 bytes)")  # type: ignore[attr-defined]


def test_changed_code_is_unknown_in_its_section(tmp_path: Path) -> None:
    a = _cc(tmp_path / "a", "p", HELLO % 3, "-Wl,--build-id=none")
    b = _cc(tmp_path / "b", "p", HELLO % 4, "-Wl,--build-id=none")
    region = _only(compare_trees(_side("a", a.parent), _side("b", b.parent), executable="p").differences[0].regions)
    assert region.kind == "unknown"  # type: ignore[attr-defined]
    assert region.detail == "in .text"  # type: ignore[attr-defined]


def test_time_written_as_text_in_a_record_is_a_timestamp() -> None:
    def record(when: str) -> bytes:
        return b'{"started_on": "' + when.encode() + b'", "version": "1"}'

    a, b = record("2026-11-23T10:00:05Z"), record("2026-11-23T10:04:41Z")
    start = float(calendar.timegm((2026, 11, 23, 10, 0, 0)))
    inside = (start, start + 600)
    view = explain(Evidence(a, (), inside), Evidence(b, (), inside), differing_ranges(a, b))
    assert [(r.kind, r.detail) for r in view] == [
        ("timestamp", "time as text: 2026-11-23T10:00:05+00:00 vs 2026-11-23T10:04:41+00:00")
    ]
    # Far outside both builds' windows the same bytes are not called a build time.
    long_ago = (0.0, 600.0)
    view = explain(Evidence(a, (), long_ago), Evidence(b, (), long_ago), differing_ranges(a, b))
    assert [r.kind for r in view] == ["unknown"]


def test_not_elf_is_said(tmp_path: Path) -> None:
    view = explain(Evidence(b"abc", (), (0, 0)), Evidence(b"abd", (), (0, 0)), differing_ranges(b"abc", b"abd"))
    assert [(r.kind, r.detail) for r in view] == [("unknown", "not ELF")]


# --- trees, verdicts, reports --------------------------------------------------------------------------


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_tree_compare_lists_missing_files_and_ignores_modes_for_the_verdict(tmp_path: Path) -> None:
    a = _tree(
        tmp_path / "a",
        {
            "app": b"same",
            "app.dist/lib.so": b"L",
            "app.dist/only-a": b"x",
            "app.build.json": b'{"started_on": "1", "v": 1}',
        },
    )
    b = _tree(
        tmp_path / "b",
        {
            "app": b"same",
            "app.dist/lib.so": b"L",
            "app.dist/only-b": b"y",
            "app.build.json": b'{"started_on": "2", "v": 1}',
        },
    )
    os.chmod(b / "app", 0o700)
    report = compare_trees(_side("a", a), _side("b", b), executable="app")
    assert report.identical  # the executable's bytes decide
    got = {(d.path, d.role, d.status) for d in report.differences}
    assert got == {
        ("app", "executable", "mode"),
        ("app.build.json", "record", "differs"),
        ("app.dist/only-a", "standalone", "only-a"),
        ("app.dist/only-b", "standalone", "only-b"),
    }
    record = next(d for d in report.differences if d.path == "app.build.json")
    assert record.note == "JSON keys differ: started_on"
    assert report.to_dict()["standalone_tree_identical"] is False


def _compare_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "reproducible", "compare", *args], capture_output=True, text=True, env=env, check=False
    )


def test_compare_cli_exit_codes_and_deterministic_json(tmp_path: Path) -> None:
    _cc(tmp_path / "a", "p", HELLO % 0, "-Wl,--build-id=0x01")
    _cc(tmp_path / "b", "p", HELLO % 0, "-Wl,--build-id=0x02")
    _cc(tmp_path / "c", "p", HELLO % 0, "-Wl,--build-id=0x01")
    different = _compare_cli(
        str(tmp_path / "a"), str(tmp_path / "b"), "--executable", "p", "--output", str(tmp_path / "1.json")
    )
    assert different.returncode == 1, different.stderr
    assert "DIFFERENT" in different.stderr and "build-id: 01 vs 02" in different.stderr
    again = _compare_cli(str(tmp_path / "a"), str(tmp_path / "b"), "--executable", "p", "--json")
    assert again.stdout == (tmp_path / "1.json").read_text()
    assert json.loads(again.stdout)["region_kinds"] == {"build-id": 1}
    same = _compare_cli(str(tmp_path / "a"), str(tmp_path / "c"), "--executable", "p")
    assert same.returncode == 0 and "IDENTICAL" in same.stderr
    missing = _compare_cli(str(tmp_path / "a"), str(tmp_path / "nope"), "--executable", "p")
    assert missing.returncode == 2 and "not a directory" in missing.stderr


def test_payload_entries_are_compared_when_the_executable_is_a_onefile() -> None:
    from reproducible.payload import payload_digests

    entries = payload_digests(executable())
    assert entries is not None and "edgeward.bin" in entries


# --- the build side: variations and source copies -----------------------------------------------------


def test_variations_differ_in_everything_they_claim() -> None:
    base = {f"K{i}": str(i) for i in range(30)}
    first, second = FIRST.environment(base), SECOND.environment(base)
    assert first == {**base, "TZ": "UTC"} and second == {**base, "TZ": "Pacific/Chatham"}
    assert list(first) != list(second)
    assert FIRST.umask != SECOND.umask and len(FIRST.directory) != len(SECOND.directory)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout


def test_source_copy_is_a_clone_with_the_working_tree_changes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _tree(repo, {"kept.py": b"1", "changed.py": b"old", "deleted.py": b"x", ".gitignore": b"ignored.txt\n"})
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    (repo / "changed.py").write_bytes(b"new")
    (repo / "deleted.py").unlink()
    _tree(repo, {"untracked.py": b"u", "ignored.txt": b"i", ".cache/build-env/bin/python": b"#!"})
    copy = tmp_path / "copy"
    copy_working_tree(repo, copy)
    assert (copy / "changed.py").read_bytes() == b"new"
    assert (copy / "untracked.py").read_bytes() == b"u"
    assert not (copy / "deleted.py").exists() and not (copy / "ignored.txt").exists()
    assert (copy / ".cache/build-env/bin/python").is_file()
    assert _git(copy, "rev-parse", "HEAD") == _git(repo, "rev-parse", "HEAD")


# --- rebuild: what it refuses before building ---------------------------------------------------------


def _release(tmp_path: Path, *, digest: str, dirty: bool) -> Path:
    release = tmp_path / "release"
    release.mkdir()
    (release / "edgeward").write_bytes(b"published bytes")
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "edgeward", "digest": {"sha256": digest}}],
        "predicate": {
            "buildDefinition": {
                "externalParameters": {
                    "source": {"repository": "file:///nowhere", "commit": "a" * 40, "dirty": dirty},
                    "build": {"recipe": "build/recipe.toml", "flags": ["--mode=onefile"]},
                }
            }
        },
    }
    (release / "edgeward.intoto.json").write_text(json.dumps(statement))
    return release


def test_rebuild_refuses_a_release_whose_executable_is_not_the_subject(tmp_path: Path) -> None:
    release = _release(tmp_path, digest="0" * 64, dirty=False)
    with pytest.raises(Finding, match="does not match the provenance subject"):
        rebuild(
            release,
            repository="",
            build_env_from=tmp_path,
            work_dir=tmp_path,
            keep=False,
            progress=Progress(quiet=True),
        )


def test_rebuild_refuses_a_dirty_build(tmp_path: Path) -> None:
    from audit.digest import sha256_bytes

    release = _release(tmp_path, digest=sha256_bytes(b"published bytes"), dirty=True)
    with pytest.raises(AuditError, match="dirty tree") as caught:
        rebuild(
            release,
            repository="",
            build_env_from=tmp_path,
            work_dir=tmp_path,
            keep=False,
            progress=Progress(quiet=True),
        )
    assert caught.value.exit_code == 2


def test_rebuild_without_provenance_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="cannot read the provenance") as caught:
        rebuild(
            tmp_path,
            repository="",
            build_env_from=tmp_path,
            work_dir=tmp_path,
            keep=False,
            progress=Progress(quiet=True),
        )
    assert caught.value.exit_code == 2
