"""Regenerate the fixtures in this directory from a real Nuitka report (run once, by hand; tests never run it).

  .venv/bin/python tests/data/nuitka/make_fixture.py /tmp/nb1/report.xml

- report.xml: the real report of a Nuitka 4.3.3 onefile build of the server (2026-11-23), trimmed by
  deleting elements only (per-module timings and usages, plugin and performance sections, most modules).
  Nothing is added or edited. Every included_dll / included_extension / data_file entry is kept.
  idna's modules are dropped: that build picked idna up from a dev-only install (see the report to the lead).
- edgeward: a stand-in onefile executable: a short shell-script "bootstrap" followed by a payload written
  by Nuitka's own writer (nuitka.tools.onefile_compressor.OnefileCompressor.attachOnefilePayload, appended
  layout, zstd, CRC32 per file as for a cached unpack directory). Each bundled file's content is
  `stand-in for <path>\\n`, so tests can recompute every expected hash.
- edgeward.build.json: a build record written with audit.buildinfo.BuildInfo.to_json for that stand-in.
- requirements.lock: a copy of the repository's runtime lock at the time (the build record pins its hash).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from audit.buildinfo import BuildInfo, Tool  # noqa: E402
from audit.digest import sha256_file  # noqa: E402

KEEP_DISTS = {
    "aioquic", "attrs", "certifi", "cffi", "cryptography", "h2", "hpack", "httptools", "hyperframe",
    "opentelemetry-api", "opentelemetry-proto", "opentelemetry-sdk", "opentelemetry-semantic-conventions",
    "protobuf", "pyOpenSSL", "PyJWT", "pylsqpack", "service-identity", "typing_extensions", "uvloop",
}  # fmt: skip
MODULES_PER_DIST = 3
KEEP_TOP = {
    "scons_environment", "module", "data_file", "included_dll", "included_extension", "python_binary",
    "onefile_binary", "onefile", "distributions", "python", "command_line",
}  # fmt: skip


def content(path: str) -> bytes:
    return f"stand-in for {path}\n".encode()


def _keep_key(node: ET.Element) -> str | None:
    """Which per-group quota a module counts against (None: always kept, "": never kept)."""
    name = node.get("name", "")
    dists = [d for d in node.get("distribution", "").split(",") if d]
    if name.startswith("idna"):
        return ""
    if name == "__main__" or node.get("kind", "").endswith(("ExtensionModule", "NamespacePackage")):
        return None
    if not dists:
        return ""  # pure-Python stdlib modules say nothing the SBOM uses
    if len(dists) > 1:
        return ".".join(name.split(".")[:2])  # shared namespace: keep a few per sub-package (api, sdk, proto...)
    return dists[0] if dists[0] in KEEP_DISTS or dists[0] == "edgeward" else ""


def trim(source: Path) -> ET.ElementTree:
    tree = ET.parse(source)
    root = tree.getroot()
    seen: dict[str, int] = {}
    for node in list(root):
        if node.tag not in KEEP_TOP:
            root.remove(node)
            continue
        if node.tag == "module":
            key = _keep_key(node)
            if key is not None:
                seen[key] = seen.get(key, 0) + 1
                if not key or seen[key] > MODULES_PER_DIST:
                    root.remove(node)
                    continue
        if node.tag in ("module", "python"):
            for child in list(node):
                node.remove(child)
    return tree


def main() -> None:
    source = Path(sys.argv[1])
    tree = trim(source)
    root = tree.getroot()
    ET.indent(tree, space="  ")
    report = HERE / "report.xml"
    tree.write(report, encoding="utf-8", xml_declaration=True)

    paths = [e.get("dest_path", "") for e in root if e.tag in ("included_dll", "included_extension")]
    paths += [e.get("name", "") for e in root if e.tag == "data_file"]
    binary = root.find("python_binary")
    assert binary is not None
    paths.append(binary.get("filename", ""))

    from nuitka.tools.onefile_compressor.OnefileCompressor import attachOnefilePayload

    exe = HERE / "edgeward"
    with tempfile.TemporaryDirectory() as tmp:
        dist = Path(tmp) / "edgeward.dist"
        for path in paths:
            target = dist / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content(path))
        exe.write_bytes(b"#!/bin/sh\necho 'edgeward stand-in: not a real build' >&2\nexit 3\n")
        attachOnefilePayload(
            dist_dir=str(dist),
            onefile_output_filename=str(exe),
            start_binary=str(dist / binary.get("filename", "")),
            include_start_binary=True,
            expect_compression=True,
            as_archive=False,
            use_compression_cache=False,
            file_checksums=True,
            win_path_sep=False,
            low_memory=False,
            job_limit=1,
            expected_files=tuple(paths),
        )
    exe.chmod(0o755)

    lock = HERE / "requirements.lock"
    shutil.copyfile(REPO / "requirements.lock", lock)
    info = BuildInfo(
        version="0.1.0",
        build_id="5d0c3f6e9a1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5",
        executable="edgeward",
        executable_sha256=sha256_file(exe),
        source_repository="https://git.example/edgeward",
        source_commit="0123456789abcdef0123456789abcdef01234567",
        source_dirty=False,
        flags=("--mode=onefile", "--static-libpython=yes", "--deployment", "--include-package=ingress"),
        recipe="build/recipe.toml",
        lock_file="requirements.lock",
        lock_sha256=sha256_file(lock),
        tools=(
            Tool("python", "3.11.7"),
            Tool("nuitka", "4.3.3"),
            Tool("gcc", "12.2.0"),
            Tool("glibc", "2.36"),
            Tool("openssl", "3.0.22"),
        ),
        started_on="2026-11-23T08:17:04Z",
        finished_on="2026-11-23T08:26:21Z",
        builder_id="https://edgeward.dev/builders/test-fixture",
    )
    (HERE / "edgeward.build.json").write_text(info.to_json(), encoding="utf-8")


if __name__ == "__main__":
    main()
