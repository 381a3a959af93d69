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
    with_chain,
    write_public,
)

ROOT = Path(__file__).resolve().parent.parent
SIGSTORE = Path(__file__).parent / "vectors" / "sigstore"
GITHUB = "https://github.com/login/oauth"
EXPECT = Expectations(builder_id=BUILDER_ID, source_repo=SOURCE_REPO, source_commit=SOURCE_COMMIT)
_CLI = "import sys, audit.cli as c; c.main(sys.argv[1:])"


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
    # Full digests both sides (finding 9: a truncated pair could print identical prefixes).
    with pytest.raises(
        Finding, match=rf"^edgeward: sha256 [0-9a-f]{{64}} does not match provenance subject 91c{'0' * 61}$"
    ):
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


# --- review findings: one regression test each --------------------------------------------------------------

_STAGING_REPO = "https%3A%2F%2Ftuf-repo-cdn.sigstage.dev"
_PRODUCTION_REPO = "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"


def _attacker_root(tmp_path: Path) -> bytes:
    """The embedded staging trusted root with its Fulcio CAs replaced by a self-made one (finding 1)."""
    import base64

    from cryptography.hazmat.primitives import serialization

    from audit.verify.sigstore_identity import embedded_trusted_root_path

    root = json.loads(Path(embedded_trusted_root_path(staging=True)).read_bytes())
    ca = TestCA("attacker fulcio").root
    der = base64.b64encode(ca.public_bytes(serialization.Encoding.DER)).decode()
    root["certificateAuthorities"] = [
        {
            "subject": {"organization": "attacker", "commonName": "attacker fulcio"},
            "uri": "https://fulcio.attacker.example",
            "certChain": {"certificates": [{"rawBytes": der}]},
            "validFor": {"start": "2020-01-01T00:00:00Z"},
        }
    ]
    return json.dumps(root).encode()


def test_sigstore_offline_ignores_a_poisoned_cache(tmp_path: Path) -> None:
    # Finding 1: offline, sigstore-python read $XDG_CACHE_HOME/.../trusted_root.json unverified.
    poisoned = _attacker_root(tmp_path)
    for repo in (_STAGING_REPO, _PRODUCTION_REPO):
        cache = tmp_path / "xdg-cache" / "sigstore-python" / "tuf" / repo
        cache.mkdir(parents=True)
        (cache / "trusted_root.json").write_bytes(poisoned)
    # The vectors chain to the real staging Fulcio: they verify only if the planted root is ignored.
    for artefact, bundle, identity in VALID:
        _sigstore(tmp_path, artefact, bundle, identity)
    from cryptography import x509 as cx509

    production = SigstoreIdentity("a@b.example", GITHUB, offline=True)._get_verifier()
    subjects = [c.subject.rfc4514_string() for c in production._fulcio_certificate_chain]
    assert subjects and not any("attacker" in s for s in subjects)
    assert isinstance(production._fulcio_certificate_chain[0], cx509.Certificate)


def test_sigstore_pinned_trusted_root(tmp_path: Path) -> None:
    from audit.verify.sigstore_identity import embedded_trusted_root_path

    pinned = tmp_path / "trusted_root.json"
    pinned.write_bytes(Path(embedded_trusted_root_path(staging=True)).read_bytes())
    shutil.copy(SIGSTORE / "bundle_v3.txt", tmp_path / "bundle_v3.txt")
    policy = SigstoreIdentity("william@yossarian.net", GITHUB, trusted_root=pinned)
    verify_artefact(tmp_path / "bundle_v3.txt", policy, Expectations(), bundle=SIGSTORE / "bundle_v3.txt.sigstore")
    pinned.write_bytes(_attacker_root(tmp_path))
    attacker = SigstoreIdentity("william@yossarian.net", GITHUB, trusted_root=pinned)
    with pytest.raises(Finding, match="Sigstore verification failed"):
        verify_artefact(
            tmp_path / "bundle_v3.txt", attacker, Expectations(), bundle=SIGSTORE / "bundle_v3.txt.sigstore"
        )
    pinned.write_text("{}")
    with pytest.raises(AuditError, match="not a Sigstore trusted root"):
        SigstoreIdentity("a@b.example", GITHUB, trusted_root=pinned)._get_verifier()


def test_embedded_trust_root_urls_are_sigstores() -> None:
    from sigstore._internal.tuf import DEFAULT_TUF_URL, STAGING_TUF_URL

    from audit.verify.sigstore_identity import PRODUCTION_TUF_URL
    from audit.verify.sigstore_identity import STAGING_TUF_URL as OURS

    assert (PRODUCTION_TUF_URL, OURS) == (DEFAULT_TUF_URL, STAGING_TUF_URL)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
def test_dsse_signature_does_not_pass_as_a_detached_signature(tmp_path: Path, kind: str) -> None:
    # Finding 2: the "executable" is the PAE of the signed SBOM, its .sig the envelope's signature.
    import base64

    from audit.sign.dsse import parse_envelope

    release, public = key_release(tmp_path / "rel", kind)
    envelope = parse_envelope((release.dir / "edgeward.cdx.dsse.json").read_bytes())
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "tool").write_bytes(envelope.pae())
    (evil / "tool.sig").write_bytes(base64.b64encode(envelope.signatures[0].sig) + b"\n")
    with pytest.raises(Finding, match=r"^tool: starts with b'DSSEv1 '"):
        verify_artefact(evil / "tool", TrustedKeys.from_files([public]), Expectations())
    # Defence in depth: the primitive itself never accepts a detached signature over PAE-like bytes.
    from audit.sign.algorithms import verify_file

    assert not verify_file(TrustedKeys.from_files([public]).keys[0].key, envelope.signatures[0].sig, evil / "tool")


def _forged_name_release(tmp_path: Path, name: str) -> tuple[Release, Path]:
    release, public = key_release(tmp_path / "rel")
    (release.dir / name).write_bytes(b"")
    return release, public


@pytest.mark.parametrize("separator", ["\n", "\u2028", "\r", "\x85", "\x0b", "\x1e"])
def test_failure_is_one_line_whatever_the_file_name(tmp_path: Path, separator: str) -> None:
    # Finding 3: a file name carrying a line break forged a second "OK" line.
    forged = f"x{separator}audit verify: OK: edgeward sha256 {'0' * 64}"
    release, public = _forged_name_release(tmp_path, forged)
    with pytest.raises(Finding) as caught:
        verify_release(release.dir, TrustedKeys.from_files([public]), EXPECT)
    assert len(str(caught.value).splitlines()) == 1
    out = _audit("verify", "--release", str(release.dir), "--key", str(public))
    assert out.returncode == 1
    assert len(out.stderr.splitlines()) == 1 and out.stderr.endswith("\n")
    assert out.stderr.startswith("audit verify: FAIL: x\\x") or out.stderr.startswith("audit verify: FAIL: x\\u")


def test_failure_is_one_line_with_a_newline_in_a_certificate_subject(tmp_path: Path) -> None:
    ca = TestCA()
    key = new_key("ecdsa-p256")
    release = build_release(tmp_path / "rel", KeySigner(key), checksums=False)
    leaf = ca.issue(key, common_name="x\naudit verify: OK: edgeward", not_after=ca.now - dt.timedelta(minutes=1))
    with_chain(release, key, [leaf, ca.intermediate])
    with pytest.raises(Finding, match="does not chain") as caught:
        verify_release(release.dir, CertificateIdentity([ca.root], IDENTITY), EXPECT)
    assert len(str(caught.value).splitlines()) == 1 and "CN=x\\x0aaudit" in str(caught.value)
    root = ca.write_root(tmp_path / "root.pem")
    out = _audit("verify", "--release", str(release.dir), "--ca", str(root), "--cert-identity", IDENTITY)
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1


def test_oneline_escapes_every_line_break_and_control() -> None:
    from audit.verify.oneline import oneline

    breaks = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00\x1b\x7f\x9b\u202e"
    escaped = oneline(f"a{breaks}b\\c")
    assert len(escaped.splitlines()) == 1 and escaped.isprintable()
    assert escaped.startswith("a\\x0d\\x0a") and escaped.endswith("b\\\\c")
    assert oneline("release@bank.example CN=edgeward") == "release@bank.example CN=edgeward"


def test_every_signature_file_is_verified_release(tmp_path: Path) -> None:
    # Finding 4: an unlisted SHA256SUMS.sigstore.json the keys policy cannot check was accepted and reported.
    release, public = key_release(tmp_path / "rel")
    report = verify_release(release.dir, TrustedKeys.from_files([public]), EXPECT)
    assert [c.file for c in report.signatures] == [
        "SHA256SUMS.dsse.json", "edgeward.sig", "edgeward.cdx.dsse.json", "edgeward.intoto.dsse.json",
    ]  # fmt: skip
    (release.dir / "SHA256SUMS.sigstore.json").write_bytes(b"#!/bin/sh\necho unsigned\n")
    with pytest.raises(Finding, match=r"^SHA256SUMS.sigstore.json: not verified by the trust policy"):
        verify_release(release.dir, TrustedKeys.from_files([public]), EXPECT)


def test_every_signature_file_is_verified_single(tmp_path: Path) -> None:
    release, public = key_release(tmp_path / "rel")
    policy = TrustedKeys.from_files([public])
    report = verify_artefact(release.exe, policy, EXPECT)
    assert [c.file for c in report.signatures] == ["edgeward.sig", "edgeward.intoto.dsse.json"]
    (release.dir / "edgeward.sigstore.json").write_bytes(b"not a bundle at all")
    with pytest.raises(Finding, match=r"^edgeward.sigstore.json: not verified by the trust policy"):
        verify_artefact(release.exe, policy, EXPECT)
    out = _audit("verify", str(release.exe), "--key", str(public))
    assert out.returncode == 1 and "edgeward.sigstore.json: not verified" in out.stderr
    # The provenance's second signature file is held to the same rule.
    (release.dir / "edgeward.sigstore.json").unlink()
    (release.dir / "edgeward.intoto.sigstore.json").write_bytes(b"{}")
    with pytest.raises(Finding, match=r"^edgeward.intoto.sigstore.json: not verified by the trust policy"):
        verify_artefact(release.exe, policy, EXPECT)


def test_two_signature_files_of_one_kind_are_refused(tmp_path: Path) -> None:
    # `edgeward.cdx.json.dsse.json` also names edgeward.cdx.json: the second envelope could not be checked.
    from audit.sign.release import write_checksums

    key = new_key()
    public = write_public(key, tmp_path / "k.pub")
    release = build_release(tmp_path / "rel", KeySigner(key))
    shutil.copy(release.dir / "edgeward.cdx.dsse.json", release.dir / "edgeward.cdx.json.dsse.json")
    write_checksums(release.dir, KeySigner(key))
    with pytest.raises(Finding, match="two envelope files"):
        verify_release(release.dir, TrustedKeys.from_files([public]), EXPECT)


def test_provenance_is_required_for_the_executable(tmp_path: Path) -> None:
    # Finding 5: deleting the provenance envelope turned verification into "signed once" (rollback).
    release, public = key_release(tmp_path / "rel")
    (release.dir / "edgeward.intoto.dsse.json").unlink()
    policy = TrustedKeys.from_files([public])
    with pytest.raises(Finding, match=r"^edgeward: no provenance \(edgeward.intoto.dsse.json\) found"):
        verify_artefact(release.exe, policy, Expectations())
    report = verify_artefact(release.exe, policy, Expectations(), no_provenance_unsafe=True)
    assert report.provenance is None and "--no-provenance-unsafe" in report.summary()
    with pytest.raises(AuditError, match="contradicts"):
        verify_artefact(release.exe, policy, EXPECT, no_provenance_unsafe=True)
    # A renamed build is still the executable (ELF), so renaming does not waive provenance.
    elf = tmp_path / "elf"
    key = new_key()
    elf_release = build_release(elf, KeySigner(key), exe=b"\x7fELF" + bytes(64), checksums=False)
    renamed = elf / "edgeward-1.2.3"
    elf_release.exe.rename(renamed)
    (elf / "edgeward.sig").rename(elf / "edgeward-1.2.3.sig")
    with pytest.raises(Finding, match="no provenance"):
        verify_artefact(renamed, TrustedKeys.from_files([write_public(key, tmp_path / "e.pub")]), Expectations())
    bad = _audit("verify", str(release.exe), "--key", str(public))
    assert bad.returncode == 1 and "no provenance" in bad.stderr
    ok = _audit("verify", str(release.exe), "--key", str(public), "--no-provenance-unsafe")
    assert ok.returncode == 0 and "provenance: not checked (--no-provenance-unsafe)" in ok.stderr
    helptext = _audit("verify", "--help").stdout
    assert "--no-provenance-unsafe" in helptext and "ELF" in helptext


def test_x509_intermediate_eku_must_allow_code_signing(tmp_path: Path) -> None:
    # Finding 6a: a serverAuth-only intermediate must not mint code-signing leaves.
    from cryptography.x509.oid import ExtendedKeyUsageOID as Eku

    ca = TestCA()
    for usages, ok in (([Eku.SERVER_AUTH], False), ([Eku.CODE_SIGNING], True), ([Eku.ANY_EXTENDED_KEY_USAGE], True)):
        intermediate = ca.restricted_intermediate(usages)
        key = new_key("ecdsa-p256")
        release = build_release(tmp_path / f"rel-{usages[0].dotted_string}", KeySigner(key), checksums=False)
        with_chain(release, key, [ca.issue(key, issuer=intermediate), intermediate[0]])
        policy = CertificateIdentity([ca.root], IDENTITY)
        if ok:
            verify_release(release.dir, policy, EXPECT)
        else:
            with pytest.raises(Finding, match=r"CA certificate CN=restricted intermediate does not allow codeSigning"):
                verify_release(release.dir, policy, EXPECT)


def test_x509_identity_matches_its_own_san_type(tmp_path: Path) -> None:
    # Finding 6b: a URI SAN spelled like the email identity satisfied it (and the reverse).
    from cryptography import x509 as cx509

    ca = TestCA()
    uri = "https://ci.bank.example/release"
    for san, identity in (
        ([cx509.UniformResourceIdentifier(IDENTITY)], IDENTITY),
        ([cx509.RFC822Name(uri)], uri),
    ):
        key = new_key("ecdsa-p256")
        release = build_release(tmp_path / f"rel-{len(identity)}", KeySigner(key), checksums=False)
        with_chain(release, key, [ca.issue(key, san=san), ca.intermediate])
        with pytest.raises(Finding, match=r"signing certificate identity no (email|URI) SAN is not"):
            verify_release(release.dir, CertificateIdentity([ca.root], identity), EXPECT)


@pytest.mark.parametrize(
    "name", ["a\u0085b", "a\u2028b", "a\x7fb", " edgeward", ".hidden", "-rf", "a b", "é", "..", "a/b", "a\\b"]
)
def test_sums_names_follow_the_shared_rule(name: str) -> None:
    # Finding 7: the verifier's SHA256SUMS grammar is the signer's file-name rule.
    from audit.sign.names import is_release_file_name
    from audit.verify.checksums import parse_sums

    assert not is_release_file_name(name)
    with pytest.raises(Finding, match="line 1 is not"):
        parse_sums(f"{'ab' * 32}  {name}\n".encode())
    assert parse_sums(f"{'ab' * 32}  edgeward.cdx.json\n".encode()) == {"edgeward.cdx.json": "ab" * 32}


def test_unreadable_files_are_one_line_findings(tmp_path: Path) -> None:
    # Finding 8: OSError from hashing a listed file was a traceback. A directory really fails to open()
    # (IsADirectoryError) even for root, so it stands in for an unreadable file here.
    from audit.verify.checksums import check_directory

    (tmp_path / "sub").mkdir()
    with pytest.raises(Finding, match=r"^sub: cannot read \(Is a directory\)$"):
        check_directory(tmp_path, ["sub"], {"sub": "ab" * 32}, frozenset())
    if os.geteuid() != 0:
        release, public = key_release(tmp_path / "rel")
        (release.dir / "edgeward.scan.md").chmod(0)
        with pytest.raises(Finding, match=r"^edgeward.scan.md: cannot read"):
            verify_release(release.dir, TrustedKeys.from_files([public]), EXPECT)


def test_sigstore_bundle_over_a_missing_statement_is_a_finding(tmp_path: Path) -> None:
    # Finding 8: a message-signature bundle for the provenance whose statement file is absent crashed
    # (FileNotFoundError from hashing it).
    shutil.copy(SIGSTORE / "bundle_v3.txt", tmp_path / "bundle_v3.txt")
    shutil.copy(SIGSTORE / "bundle_v3.txt.sigstore", tmp_path / "bundle_v3.txt.intoto.sigstore.json")
    policy = SigstoreIdentity("william@yossarian.net", GITHUB, staging=True, offline=True)
    with pytest.raises(Finding, match=r"^bundle_v3.txt.intoto.json: missing \(bundle_v3.txt.intoto.sigstore.json"):
        verify_artefact(tmp_path / "bundle_v3.txt", policy, Expectations(), bundle=SIGSTORE / "bundle_v3.txt.sigstore")


def test_provenance_subject_digest_must_be_lowercase_hex(tmp_path: Path) -> None:
    # Finding 9: the subject digest was lowercased before comparing; SHA256SUMS accepts lowercase only.
    key = new_key()
    public = write_public(key, tmp_path / "k.pub")
    digest = hashlib.sha256(b"exe").hexdigest()
    release = build_release(tmp_path / "rel", KeySigner(key), exe=b"exe", subject_digest=digest.upper())
    with pytest.raises(Finding, match=r"subject edgeward sha256 [0-9A-F]{64} is not 64 lowercase hex digits"):
        verify_release(release.dir, TrustedKeys.from_files([public]), EXPECT)
    truncated = build_release(tmp_path / "rel2", KeySigner(key), exe=b"exe", subject_digest=digest[:32])
    with pytest.raises(Finding, match=rf"sha256 {digest[:32]} is not 64 lowercase hex digits"):
        verify_artefact(truncated.exe, TrustedKeys.from_files([public]), Expectations())
