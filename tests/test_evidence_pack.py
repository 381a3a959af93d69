"""`evidence pack` and `evidence verify` end to end: a real release of the real executable, a real TLS
assessment of it (sslyze from its own environment), Chromium rendering the index, and tampering.

Tamper coverage: every single-byte flip of manifest.json, manifest.dsse.json and of every pack file up to
16 KiB goes through the full verifier; larger files (the SBOM and its envelope, ~100 KiB each) and the
archive body are flipped at a stride (every 97th byte, plus first and last 512 bytes), because a full
verification per flip costs ~0.5 ms and 100% of ~330 KB would take minutes (see the final report).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit.verify.keys import TrustedKeys
from evidence.pack.archive import archive_bytes, read_archive
from evidence.verify.check import read_directory, verify_archive, verify_files
from tests.chromium import browse, pixel_variance, png_pixels
from tests.pki import CA
from tests.program import executable
from tests.release_fixture import new_key, write_private, write_public
from tests.server import ROOT, to_toml

DATA = ROOT / "tests" / "data" / "evidence"
SMALL = 16 * 1024


def cli(tool: str, *args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", tool, *map(str, args)], cwd=ROOT, capture_output=True, text=True, check=False,
        timeout=300, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("evpack")
    key = new_key("ed25519")  # deterministic signatures: the golden test needs byte-identical envelopes
    priv, pub = write_private(key, base / "rel.pem"), write_public(key, base / "rel.pub")
    release = base / "release"
    done = cli("audit", "release", "--executable", executable(), "--output", release, "--key", priv,
               "--advisories", ROOT / "tests" / "osv")  # fmt: skip
    assert done.returncode == 0, done.stderr
    ca = CA(base / "pki")
    leaf = ca.issue("localhost", ["localhost", "127.0.0.1"])
    (base / "www").mkdir()
    (base / "www" / "index.html").write_text("hi\n")
    config = {
        "admin": {"enabled": True, "address": "0.0.0.0:9901"},
        "listeners": [
            {"name": "https", "address": "0.0.0.0:443", "tls": {"certs": [{"cert": str(leaf.cert), "key": str(leaf.key)}]}},  # noqa: E501
            {"name": "mtls", "address": "0.0.0.0:8443", "tls": {"certs": [{"cert": str(leaf.cert), "key": str(leaf.key)}],  # noqa: E501
             "client_auth": "required", "client_ca": [str(ca.pem)]}},
            {"name": "http", "address": "0.0.0.0:80"},
        ],
        "routes": [{"path": "/", "static": {"root": str(base / "www")}}],
        "telemetry": {"otlp": {"endpoint": "http://127.0.0.1:4318", "headers": {"authorization": "Bearer s3cr3t-v4lue"}}},  # noqa: E501
    }  # fmt: skip
    (base / "edge.toml").write_text(to_toml(config))
    return {"base": base, "release": release, "priv": priv, "pub": pub, "config": base / "edge.toml", "ca": ca.pem}


def pack_args(world: dict[str, Path], out: Path, *extra: str | Path) -> list[str | Path]:
    return ["pack", world["release"], "--key", world["priv"], "--verify-key", world["pub"], "--output", out / "pack",
            "--archive", out / "pack.tar.gz", "--config", world["config"], "--asset", DATA / "asset.toml",
            "--junit", DATA / "junit.xml", "--reproducible", DATA / "reproducible.json", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def pack(world: dict[str, Path]) -> Path:
    out = world["base"] / "first"
    started = time.monotonic()
    done = cli("evidence", *pack_args(world, out, "--tls-assess", "--tls-ca", world["ca"]))
    print(f"evidence pack with TLS assessment took {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stderr
    return out


def test_pack_holds_the_evidence_and_names_its_gaps(pack: Path) -> None:
    info = json.loads((pack / "pack" / "pack.json").read_text())
    names = set(read_directory(pack / "pack"))
    for needed in ("release/edgeward.cdx.json", "release/edgeward.scan.json", "release/edgeward.intoto.dsse.json",
                   "release/SHA256SUMS.dsse.json", "verification.txt", "tests/junit.xml", "reproducible.json",
                   "tls-assessment.json", "config/release-config.redacted.json", "asset-inventory.json",
                   "third-party-register.csv", "index.html", "pack.json", "manifest.json", "manifest.dsse.json"):  # fmt: skip  # noqa: E501
        assert needed in names, needed
    assert "release/edgeward" not in names
    assert info["tests"]["passed"] == 11 and info["tests"]["ok"] is True
    # This JUnit file names no executable: the pack says its results are not tied to this release.
    assert info["tests"]["of_this_build"] is False
    assert any("JUnit XML does not name this release's executable" in gap for gap in info["gaps"])
    # Missing inputs are gaps by name: no bench, no previous tag, no trail.
    gaps = "\n".join(info["gaps"])
    assert "missing: bench / SLO results" in gaps and "missing: change summary" in gaps
    assert "missing: audit-trail report" in gaps
    assert {row["article"] for row in info["article_map"]} == {
        "Art. 5-6",
        "Art. 8",
        "Art. 9",
        "Art. 10",
        "Art. 11-12",
        "Art. 17-19",
        "Art. 24-25",
        "Art. 28",
    }
    # Secrets never reach the pack; the listeners' exposure does.
    blob = b"".join(read_directory(pack / "pack").values())
    assert b"s3cr3t-v4lue" not in blob and b"BEGIN PRIVATE KEY" not in blob
    asset = json.loads((pack / "pack" / "asset-inventory.json").read_text())
    assert asset["owner"] == "Payments Platform team" and asset["gaps"] == []
    assert any(e["listener"] == "mtls" and e["client_auth"] == "required" for e in asset["external_exposure"])
    rows = (pack / "pack" / "third-party-register.csv").read_text().splitlines()
    assert rows[0].startswith("provider,component,version,purl,licence,criticality,substitutability")
    assert any(r.startswith("PyPI project cryptography,") and ",critical,difficult," in r for r in rows)


def test_tls_assessment_measures_the_running_release(pack: Path) -> None:
    tls = {row["listener"]: row for row in json.loads((pack / "pack" / "pack.json").read_text())["tls"]}
    assert set(tls) == {"https", "mtls"}
    for row in tls.values():
        assert row["versions"] == ["TLS 1.2", "TLS 1.3"]  # TLS 1.2 minimum: nothing older accepted
        assert row["alpn"] == "h2" and row["leaf"] == "CN=localhost"
    assert tls["https"]["client_auth"] == "DISABLED" and tls["https"]["no_cert_refused"] is False
    assert tls["mtls"]["client_auth"] == "REQUIRED" and tls["mtls"]["no_cert_refused"] is True


def test_verify_accepts_the_pack_and_the_archive(pack: Path, world: dict[str, Path]) -> None:
    for target in (pack / "pack", pack / "pack.tar.gz"):
        done = cli("evidence", "verify", target, "--key", world["pub"])
        assert done.returncode == 0, done.stderr
    other = write_public(new_key("ed25519"), world["base"] / "other.pub")
    done = cli("evidence", "verify", pack / "pack.tar.gz", "--key", other)
    assert done.returncode == 1 and "manifest.dsse.json" in done.stderr


def test_added_removed_and_modified_files_are_named(pack: Path, world: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "p"
    shutil.copytree(pack / "pack", copy)
    (copy / "extra.txt").write_text("x")
    (copy / "verification.txt").unlink()
    (copy / "release" / "edgeward.scan.md").write_text("all clean, trust me\n")
    done = cli("evidence", "verify", copy, "--key", world["pub"])
    assert done.returncode == 1
    assert "extra.txt: added" in done.stderr
    assert "verification.txt: missing" in done.stderr
    assert "release/edgeward.scan.md: modified" in done.stderr


def _positions(size: int) -> list[int]:
    if size <= SMALL:
        return list(range(size))
    return sorted(set(range(0, 512)) | set(range(size - 512, size)) | set(range(0, size, 97)))


def test_single_byte_flips_of_every_pack_file_are_reported(pack: Path, world: dict[str, Path]) -> None:
    policy = TrustedKeys.from_files([world["pub"]])
    files = read_directory(pack / "pack")
    assert verify_files(files, policy).ok
    flips = 0
    for name, data in sorted(files.items()):
        for i in _positions(len(data)):
            tampered = bytearray(data)
            tampered[i] ^= 0x01
            try:
                report = verify_files({**files, name: bytes(tampered)}, policy)
            except Exception as exc:  # a Finding (signature or manifest) names the file it is about
                assert name in str(exc) or "manifest" in str(exc), (name, i, exc)
            else:
                assert any(p.startswith(f"{name}: modified") for p in report.problems), (name, i)
            flips += 1
    print(f"{flips} flips over {len(files)} files")


def test_single_byte_flips_of_the_archive_are_reported(pack: Path, world: dict[str, Path]) -> None:
    from audit.errors import Finding

    policy = TrustedKeys.from_files([world["pub"]])
    data = (pack / "pack.tar.gz").read_bytes()
    assert verify_archive(data, "pack.tar.gz", policy).ok
    for i in _positions(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        try:
            report = verify_archive(bytes(tampered), "pack.tar.gz", policy)
        except Finding as exc:
            assert "pack.tar.gz" in str(exc) or "manifest" in str(exc), (i, exc)
        else:
            assert not report.ok, i


def test_archive_is_canonical_and_deterministic(pack: Path, world: dict[str, Path]) -> None:
    # Same inputs, different directories and a different clock: byte-identical pack and archive.
    tls = pack / "pack" / "tls-assessment.json"
    outs = [world["base"] / name for name in ("golden-a", "golden-b")]
    for out in outs:
        done = cli("evidence", *pack_args(world, out, "--tls-report", tls))
        assert done.returncode == 0, done.stderr
    assert (outs[0] / "pack.tar.gz").read_bytes() == (outs[1] / "pack.tar.gz").read_bytes()
    assert read_directory(outs[0] / "pack") == read_directory(outs[1] / "pack")
    # ... and the same bytes as the pack built with the live assessment.
    assert read_directory(outs[0] / "pack") == read_directory(pack / "pack")
    files, mtime = read_archive((outs[0] / "pack.tar.gz").read_bytes(), "a")
    assert archive_bytes(files, mtime) == (outs[0] / "pack.tar.gz").read_bytes()


def test_index_renders_in_chromium(pack: Path, chromium: str) -> None:
    page = pack / "pack" / "index.html"
    html = page.read_text()
    assert "http://" not in html.replace("http-equiv", "") and "<script" not in html and "src=" not in html
    dom = browse(chromium, page, "--dump-dom").stdout.decode()
    info = json.loads((pack / "pack" / "pack.json").read_text())
    for figure in ('id="figures"', "DORA evidence pack: edgeward", "Art. 17-19", "11/12", "tests passed",
                   "gaps listed", f'>{len(info["gaps"])}</div>', "REQUIRED", info["release"]["executable_sha256"]):  # fmt: skip  # noqa: E501
        assert figure in dom, figure
    shot = pack / "shot.png"
    browse(chromium, page, f"--screenshot={shot}")
    assert png_pixels(shot.read_bytes())[:2] == (1100, 1600)
    assert pixel_variance(shot.read_bytes()) > 100


def test_junit_of_this_build_is_tied_to_the_release(world: dict[str, Path], tmp_path: Path) -> None:
    digest = hashlib.sha256(executable().read_bytes()).hexdigest()
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="0"'
        ' skipped="0" tests="2" time="1.0"><properties>'
        f'<property name="edgeward.executable.sha256" value="{digest}"/></properties>'
        '<testcase classname="t" name="a"/><testcase classname="t" name="b"/></testsuite></testsuites>'
    )
    args = [a if a != DATA / "junit.xml" else junit for a in pack_args(world, tmp_path)]
    done = cli("evidence", *args)
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "pack" / "pack.json").read_text())
    assert info["tests"]["executable_sha256"] == [digest] and info["tests"]["of_this_build"] is True
    assert not any("JUnit" in gap for gap in info["gaps"])
