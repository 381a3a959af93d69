"""`audit verify`: real releases (keys and X.509), every-byte tamper tests, and real Sigstore bundles offline."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.errors import AuditError, Finding
from audit.sign.keys import KeySigner
from audit.verify.artefacts import verify_artefact, verify_release
from audit.verify.keys import TrustedKeys
from audit.verify.policy import AllOf, AnyOf, Policy
from audit.verify.provenance import Expectations
from audit.verify.sigstore_identity import SigstoreIdentity
from audit.verify.x509 import CertificateIdentity
from tests.release_fixture import (
    BUILDER_ID,
    IDENTITY,
    SOURCE_COMMIT,
    SOURCE_REPO,
    Release,
    TestCA,
    build_release,
    key_release,
    new_key,
    write_public,
)

ROOT = Path(__file__).resolve().parent.parent
SIGSTORE = Path(__file__).parent / "vectors" / "sigstore"
GITHUB = "https://github.com/login/oauth"
EXPECT = Expectations(builder_id=BUILDER_ID, source_repo=SOURCE_REPO, source_commit=SOURCE_COMMIT)
_CLI = "import sys, audit.cli as c; c.COMMANDS = ('sign', 'verify'); c.main(sys.argv[1:])"


@pytest.fixture(autouse=True)
def _xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # sigstore-python writes its TUF cache under the XDG dirs even offline.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


def _audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args], check=False, capture_output=True, text=True, cwd=ROOT, env=os.environ
    )


def _flip(path: Path, position: int) -> Iterator[None]:
    original = path.read_bytes()
    changed = bytearray(original)
    changed[position] ^= 0x01
    path.write_bytes(bytes(changed))
    try:
        yield
    finally:
        path.write_bytes(original)


def _fails(release: Release, policy: Policy) -> bool:
    try:
        verify_release(release.dir, policy, EXPECT)
    except Finding:
        return True
    return False


# --- releases that verify -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
def test_key_release_verifies(tmp_path: Path, kind: str) -> None:
    release, public = key_release(tmp_path / "rel", kind)
    report = verify_release(release.dir, TrustedKeys.from_files([public]), EXPECT)
    assert report.sha256 == hashlib.sha256(release.exe.read_bytes()).hexdigest()
    assert report.provenance is not None and report.provenance.checked == (
        "subject", "builder", "source repository", "source commit",
    )  # fmt: skip
    assert set(report.files) == {p.name for p in release.dir.iterdir()} - {"SHA256SUMS", "SHA256SUMS.dsse.json"}
    assert json.loads(report.to_json())["result"] == "ok"


def test_x509_release_verifies_and_pins_identity(tmp_path: Path) -> None:
    ca = TestCA()
    release = build_release(tmp_path / "rel", ca.x509_signer())
    verify_release(release.dir, CertificateIdentity([ca.root], IDENTITY), EXPECT)
    with pytest.raises(Finding, match=r"identity release@bank\.example is not someone@bank\.example"):
        verify_release(release.dir, CertificateIdentity([ca.root], "someone@bank.example"), EXPECT)
    with pytest.raises(Finding, match="does not chain"):
        verify_release(release.dir, CertificateIdentity([TestCA("other root").root], IDENTITY), EXPECT)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=90)
    with pytest.raises(Finding, match="does not chain"):
        verify_release(release.dir, CertificateIdentity([ca.root], IDENTITY, at=later), EXPECT)


def test_x509_uri_identity(tmp_path: Path) -> None:
    ca = TestCA()
    uri = "https://ci.bank.example/pipelines/edgeward-release"
    release = build_release(tmp_path / "rel", ca.x509_signer(identity=uri))
    verify_release(release.dir, CertificateIdentity([ca.root], uri), EXPECT)


def test_x509_leaf_without_code_signing_is_refused(tmp_path: Path) -> None:
    # The signer refuses such a certificate, so build the release with a good one and swap the chain's leaf.
    ca = TestCA()
    key = new_key("ecdsa-p256")
    release = build_release(tmp_path / "rel", KeySigner(key), checksums=False)
    from cryptography.hazmat.primitives import serialization

    pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (ca.issue(key, code_signing=False), ca.intermediate)
    )
    (release.dir / "signing-chain.pem").write_bytes(pem)
    with pytest.raises(Finding, match="codeSigning"):
        verify_artefact(release.exe, CertificateIdentity([ca.root], IDENTITY), EXPECT)


def test_cli_release_ok_json_and_one_line_failure(tmp_path: Path) -> None:
    release, public = key_release(tmp_path / "rel")
    ok = _audit("verify", "--release", str(release.dir), "--key", str(public), "--builder-id", BUILDER_ID, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sha256"] == hashlib.sha256(release.exe.read_bytes()).hexdigest()
    assert "OK" in ok.stderr
    bad = _audit("verify", "--release", str(release.dir), "--key", str(public), "--builder-id", "https://evil")
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("audit verify: FAIL: edgeward.intoto.json: builder id")
    usage = _audit("verify", "--release", str(release.dir))
    assert usage.returncode == 2 and "no trust policy" in usage.stderr


def test_cli_single_executable_with_provenance(tmp_path: Path) -> None:
    release, public = key_release(tmp_path / "rel", "ecdsa-p256")
    ok = _audit("verify", str(release.exe), "--key", str(public), "--source-commit", SOURCE_COMMIT)
    assert ok.returncode == 0, ok.stderr
    (release.dir / "edgeward.intoto.dsse.json").unlink()
    missing = _audit("verify", str(release.exe), "--key", str(public), "--source-commit", SOURCE_COMMIT)
    assert missing.returncode == 1 and "no provenance" in missing.stderr


# --- what must fail ---------------------------------------------------------------------------------------


def test_wrong_key_fails(tmp_path: Path) -> None:
    release, _ = key_release(tmp_path / "rel")
    other = write_public(new_key(), tmp_path / "other.pub")
    with pytest.raises(Finding, match=r"SHA256SUMS.dsse.json: no signature verifies"):
        verify_release(release.dir, TrustedKeys.from_files([other]), EXPECT)
    with pytest.raises(Finding, match=r"edgeward.sig: signature over edgeward does not verify"):
        verify_artefact(release.exe, TrustedKeys.from_files([other]), Expectations())


def test_provenance_for_another_digest_fails(tmp_path: Path) -> None:
    key = new_key()
    public = write_public(key, tmp_path / "k.pub")
    release = build_release(tmp_path / "rel", KeySigner(key), subject_digest="91c" + "0" * 61)
    with pytest.raises(Finding, match=r"^edgeward: sha256 [0-9a-f]{16}… does not match provenance subject 91c0"):
        verify_release(release.dir, TrustedKeys.from_files([public]), EXPECT)
    with pytest.raises(Finding, match="does not match provenance subject"):
        verify_artefact(release.exe, TrustedKeys.from_files([public]), Expectations())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("builder_id", "https://other-builder", "builder id"),
        ("source_repo", "https://git.example/fork", "source repository"),
        ("source_commit", "f" * 40, "source commit"),
    ],
)
def test_provenance_expectations(tmp_path: Path, field: str, value: str, message: str) -> None:
    release, public = key_release(tmp_path / "rel")
    expect = Expectations(**{field: value})
    with pytest.raises(Finding, match=message):
        verify_release(release.dir, TrustedKeys.from_files([public]), expect)


def test_extra_and_missing_files_fail(tmp_path: Path) -> None:
    release, public = key_release(tmp_path / "rel")
    policy = TrustedKeys.from_files([public])
    (release.dir / "notes.txt").write_text("unlisted\n")
    with pytest.raises(Finding, match=r"^notes.txt: not listed in SHA256SUMS$"):
        verify_release(release.dir, policy, EXPECT)
    (release.dir / "notes.txt").unlink()
    moved = release.dir / "SUMMARY.md"
    data = moved.read_bytes()
    moved.unlink()
    with pytest.raises(Finding, match=r"^SUMMARY.md: listed in SHA256SUMS but missing$"):
        verify_release(release.dir, policy, EXPECT)
    moved.write_bytes(data)
    (release.dir / "sub").mkdir()
    with pytest.raises(Finding, match="not a regular file"):
        verify_release(release.dir, policy, EXPECT)


def test_signed_sums_cannot_be_replaced_by_unsigned_ones(tmp_path: Path) -> None:
    release, public = key_release(tmp_path / "rel")
    # An attacker swaps the executable and rewrites SHA256SUMS consistently: the signed statement still binds
    # the old SHA256SUMS bytes.
    release.exe.write_bytes(b"evil")
    sums = (release.dir / "SHA256SUMS").read_text().splitlines(keepends=True)
    sums = [
        f"{hashlib.sha256(b'evil').hexdigest()}  edgeward\n" if line.endswith("  edgeward\n") else line for line in sums
    ]
    (release.dir / "SHA256SUMS").write_text("".join(sums))
    with pytest.raises(Finding, match=r"SHA256SUMS: sha256 .* does not match the signed statement"):
        verify_release(release.dir, TrustedKeys.from_files([public]), EXPECT)


# --- tamper: every byte of every small file, a sample of the executable ------------------------------------


@pytest.fixture(scope="module")
def key_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Release, TrustedKeys]:
    base = tmp_path_factory.mktemp("tamper-key")
    release, public = key_release(base / "rel", "ed25519")
    return release, TrustedKeys.from_files([public])


@pytest.fixture(scope="module")
def x509_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Release, CertificateIdentity]:
    ca = TestCA()
    release = build_release(tmp_path_factory.mktemp("tamper-x509") / "rel", ca.x509_signer())
    return release, CertificateIdentity([ca.root], IDENTITY)


def _every_byte(release: Release, policy: Policy) -> list[str]:
    assert not _fails(release, policy), "the untampered release must verify"
    survivors = []
    files = release.small_files()
    assert len(files) >= 11
    for path in files:
        for position in range(path.stat().st_size):
            with _flip_ctx(path, position):
                if not _fails(release, policy):
                    survivors.append(f"{path.name}@{position}")
    return survivors


def _flip_ctx(path: Path, position: int) -> Iterator[None]:
    from contextlib import contextmanager

    return contextmanager(_flip)(path, position)


def test_tamper_every_byte_key_release(key_fixture: tuple[Release, TrustedKeys]) -> None:
    release, policy = key_fixture
    assert _every_byte(release, policy) == []


def test_tamper_every_byte_x509_release(x509_fixture: tuple[Release, CertificateIdentity]) -> None:
    release, policy = x509_fixture
    assert (release.dir / "signing-chain.pem") in release.small_files()
    assert _every_byte(release, policy) == []


def test_tamper_executable_samples(key_fixture: tuple[Release, TrustedKeys]) -> None:
    release, policy = key_fixture
    size = release.exe.stat().st_size
    positions = {0, size - 1, size // 2, *random.Random(1).sample(range(size), 16)}
    for position in sorted(positions):
        with _flip_ctx(release.exe, position):
            with pytest.raises(Finding, match=r"^edgeward: sha256 .* does not match SHA256SUMS"):
                verify_release(release.dir, policy, EXPECT)
            # Without SHA256SUMS, the detached signature alone catches it.
            with pytest.raises(Finding, match=r"edgeward.sig: signature over edgeward does not verify"):
                verify_artefact(release.exe, policy, Expectations())


def test_tamper_every_byte_single_mode(tmp_path: Path) -> None:
    # verify_artefact has no SHA256SUMS to fall back on: the signature and the provenance envelope themselves
    # must reject every flipped byte.
    release, public = key_release(tmp_path / "rel", "ecdsa-p256")
    policy = TrustedKeys.from_files([public])
    verify_artefact(release.exe, policy, EXPECT)
    for name in ("edgeward.sig", "edgeward.intoto.dsse.json"):
        path = release.dir / name
        for position in range(path.stat().st_size):
            with _flip_ctx(path, position), pytest.raises(Finding):
                verify_artefact(release.exe, policy, EXPECT)


# --- policies ------------------------------------------------------------------------------------------------


def test_policy_composition(tmp_path: Path) -> None:
    release, public = key_release(tmp_path / "rel")
    good = TrustedKeys.from_files([public])
    bad = TrustedKeys.from_files([write_public(new_key(), tmp_path / "o.pub")])
    verify_release(release.dir, AnyOf([bad, good]), EXPECT)
    verify_release(release.dir, AllOf([good, good]), EXPECT)
    with pytest.raises(Finding):
        verify_release(release.dir, AllOf([good, bad]), EXPECT)
    for empty in (AllOf([]), AnyOf([]), TrustedKeys([])):
        with pytest.raises(Finding, match="empty"):
            verify_release(release.dir, empty, EXPECT)
    with pytest.raises(AuditError):
        TrustedKeys([], threshold=0)
    with pytest.raises(Finding, match="threshold of 2"):
        verify_artefact(release.exe, TrustedKeys.from_files([public], threshold=2), Expectations())


def test_keys_policy_refuses_a_sigstore_only_artefact(tmp_path: Path) -> None:
    artefact = tmp_path / "bundle.txt"
    shutil.copy(SIGSTORE / "bundle.txt", artefact)
    public = write_public(new_key(), tmp_path / "k.pub")
    with pytest.raises(Finding, match="signed keyless"):
        verify_artefact(
            artefact, TrustedKeys.from_files([public]), Expectations(), bundle=SIGSTORE / "bundle.txt.sigstore"
        )


# --- real Sigstore bundles (staging), offline -------------------------------------------------------------------

VALID = [
    ("bundle.txt", "bundle.txt.sigstore", "a@tny.town"),
    ("bundle_v3.txt", "bundle_v3.txt.sigstore", "william@yossarian.net"),
    ("staging-rekor-v2.txt", "staging-rekor-v2.txt.sigstore.json", "jku@goto.fi"),
]


def _sigstore(tmp_path: Path, artefact: str, bundle: str, identity: str, issuer: str = GITHUB) -> None:
    shutil.copy(SIGSTORE / artefact, tmp_path / artefact)
    policy = SigstoreIdentity(identity, issuer, staging=True, offline=True)
    verify_artefact(tmp_path / artefact, policy, Expectations(), bundle=SIGSTORE / bundle)


@pytest.mark.parametrize(("artefact", "bundle", "identity"), VALID)
def test_sigstore_vector_valid(tmp_path: Path, artefact: str, bundle: str, identity: str) -> None:
    _sigstore(tmp_path, artefact, bundle, identity)


@pytest.mark.parametrize(("artefact", "bundle", "identity"), VALID)
def test_sigstore_vector_one_byte_change_is_a_digest_mismatch(
    tmp_path: Path, artefact: str, bundle: str, identity: str
) -> None:
    data = bytearray((SIGSTORE / artefact).read_bytes())
    for position in (0, len(data) // 2, len(data) - 1):
        changed = bytearray(data)
        changed[position] ^= 0x01
        (tmp_path / artefact).write_bytes(bytes(changed))
        policy = SigstoreIdentity(identity, GITHUB, staging=True, offline=True)
        with pytest.raises(Finding, match=rf"^{artefact}: sha256 .* does not match the digest signed in"):
            verify_artefact(tmp_path / artefact, policy, Expectations(), bundle=SIGSTORE / bundle)


@pytest.mark.parametrize(("artefact", "bundle", "identity"), VALID)
def test_sigstore_vector_wrong_identity_and_issuer(tmp_path: Path, artefact: str, bundle: str, identity: str) -> None:
    with pytest.raises(Finding, match="SANs do not match"):
        _sigstore(tmp_path, artefact, bundle, "mallory@example.com")
    with pytest.raises(Finding, match="OIDCIssuer does not match"):
        _sigstore(tmp_path, artefact, bundle, identity, "https://accounts.google.com")


@pytest.mark.parametrize(
    ("artefact", "bundle", "reason"),
    [
        ("bundle_no_cert_v1.txt", "bundle_no_cert_v1.txt.sigstore", "certificate"),
        ("bundle_invalid_version.txt", "bundle_invalid_version.txt.sigstore", "mediaType"),
    ],
)
def test_sigstore_vector_invalid_bundles(tmp_path: Path, artefact: str, bundle: str, reason: str) -> None:
    with pytest.raises(Finding, match=rf"invalid Sigstore bundle: .*{reason}"):
        _sigstore(tmp_path, artefact, bundle, "a@tny.town")


def test_sigstore_cli_offline(tmp_path: Path) -> None:
    shutil.copy(SIGSTORE / "bundle_v3.txt", tmp_path / "bundle_v3.txt")
    args = [
        "verify", str(tmp_path / "bundle_v3.txt"), "--bundle", str(SIGSTORE / "bundle_v3.txt.sigstore"),
        "--sigstore-identity", "william@yossarian.net", "--sigstore-issuer", GITHUB, "--staging", "--offline",
    ]  # fmt: skip
    ok = _audit(*args)
    assert ok.returncode == 0, ok.stderr
    args[args.index("william@yossarian.net")] = "mallory@example.com"
    bad = _audit(*args)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "FAIL" in bad.stderr
