"""`audit sign`: key generation, key loading, signature formats other tools read, X.509 and the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from audit.errors import AuditError
from audit.sign.algorithms import keyid, load_private_key, load_public_key
from audit.sign.keygen import generate_key
from audit.sign.keys import KeySigner
from audit.sign.load import load_signer
from audit.sign.names import bundle_name, envelope_name, signature_name
from audit.sign.x509 import X509Signer
from tests.release_fixture import TestCA, new_key, write_private

ROOT = Path(__file__).resolve().parent.parent
PASS = "correct horse battery staple"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_DATA_HOME=str(tmp_path / "data"))
    env.update(extra)
    return env


# The real `audit` CLI, restricted to the commands that exist while the other release commands are written
# in parallel (audit.cli imports every command module to build its parser).
_CLI = "import sys, audit.cli as c; c.main(sys.argv[1:])"


def _audit(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(tmp_path, **env),
    )


def test_contract_names() -> None:
    assert signature_name("edgeward") == "edgeward.sig"
    assert envelope_name("edgeward.intoto.json") == "edgeward.intoto.dsse.json"
    assert envelope_name("SHA256SUMS") == "SHA256SUMS.dsse.json"
    assert bundle_name("edgeward") == "edgeward.sigstore.json"
    assert bundle_name("edgeward.cdx.json") == "edgeward.cdx.sigstore.json"


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
def test_generated_key_is_encrypted_0600_with_pub_beside(tmp_path: Path, kind: str) -> None:
    private, public = generate_key(kind, tmp_path / "release.pem", passphrase=PASS.encode())
    assert public == tmp_path / "release.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    with pytest.raises(AuditError, match="encrypted"):
        load_private_key(private, None)
    with pytest.raises(AuditError, match="wrong passphrase") as wrong:
        load_private_key(private, b"nope")
    assert "nope" not in wrong.value.diagnostics()
    key = load_private_key(private, PASS.encode())
    assert keyid(key.public_key()) == keyid(load_public_key(public))


def test_unencrypted_key_needs_the_unsafe_flag_and_keys_are_never_overwritten(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="unencrypted"):
        generate_key("ed25519", tmp_path / "k.pem", passphrase=None)
    assert not (tmp_path / "k.pem").exists()
    private, _ = generate_key("ed25519", tmp_path / "k.pem", passphrase=None, unencrypted_unsafe=True)
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    before = private.read_bytes()
    with pytest.raises(AuditError, match="already exists"):
        generate_key("ed25519", tmp_path / "k.pem", passphrase=b"x")
    assert private.read_bytes() == before


def test_keyid_matches_openssl_spki_digest(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    _, public = generate_key("ecdsa-p256", tmp_path / "k.pem", passphrase=b"x")
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(public), "-outform", "DER"], capture_output=True, check=True
    ).stdout
    assert hashlib.sha256(der).hexdigest() == keyid(load_public_key(public))


def test_ecdsa_detached_signature_verifies_with_openssl(tmp_path: Path) -> None:
    # Deterministic: the tamper step used to set the last byte to 0x00, which left the file unchanged (and
    # openssl rightly said "Verified OK") whenever os.urandom had already put 0x00 there, 1 run in 256.
    # Now the content is fixed and the tamper is an XOR, which always changes the byte.
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key = new_key("ecdsa-p256")
    public = tmp_path / "k.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    exe = tmp_path / "edgeward"
    exe.write_bytes(b"\x7fELF" + random.Random(10).randbytes(3 << 20))  # > one read chunk: the digest is streamed
    sig = KeySigner(key).sign_artefact(exe)
    assert sig == tmp_path / "edgeward.sig"
    raw = tmp_path / "sig.der"
    raw.write_bytes(base64.b64decode(sig.read_bytes()))
    ok = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(public), "-signature", str(raw), str(exe)],
        check=False,
        capture_output=True,
    )
    assert ok.returncode == 0, ok.stderr
    data = exe.read_bytes()
    exe.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    bad = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(public), "-signature", str(raw), str(exe)],
        check=False,
        capture_output=True,
    )
    assert bad.returncode != 0


def test_x509_signer_refuses_what_verifiers_refuse(tmp_path: Path) -> None:
    ca = TestCA()
    key = new_key("ecdsa-p256")
    with pytest.raises(AuditError, match="codeSigning"):
        X509Signer(key, ca.issue(key, code_signing=False), [ca.intermediate])
    with pytest.raises(AuditError, match="does not match"):
        X509Signer(new_key("ecdsa-p256"), ca.issue(key), [ca.intermediate])
    signer = X509Signer(key, ca.issue(key), [ca.intermediate])
    (chain,) = signer.write_material(tmp_path)
    assert chain.name == "signing-chain.pem"
    assert chain.read_bytes().count(b"BEGIN CERTIFICATE") == 2


def test_load_signer_combinations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = write_private(new_key(), tmp_path / "k.pem", b"pw")
    with pytest.raises(AuditError, match="no signing key"):
        load_signer()
    with pytest.raises(AuditError, match="not set"):
        load_signer(key=key, passphrase_env="EDGEWARD_TEST_UNSET_VAR")
    monkeypatch.setenv("EDGEWARD_TEST_PASS", "pw")
    assert isinstance(load_signer(key=key, passphrase_env="EDGEWARD_TEST_PASS"), KeySigner)
    with pytest.raises(AuditError, match="--chain needs --cert"):
        load_signer(key=key, passphrase_env="EDGEWARD_TEST_PASS", chain=tmp_path / "c.pem")
    with pytest.raises(AuditError, match="keyless"):
        load_signer(key=key, sigstore=True)


def test_cli_generate_sign_verify(tmp_path: Path) -> None:
    out = _audit(
        tmp_path, "sign", "--generate-key", "ed25519", "--output", str(tmp_path / "r.pem"),
        "--key-passphrase-env", "RELEASE_PASS", RELEASE_PASS=PASS,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert PASS not in out.stderr + out.stdout
    refused = _audit(tmp_path, "sign", "--generate-key", "ed25519", "--output", str(tmp_path / "u.pem"))
    assert refused.returncode == 2 and "unencrypted" in refused.stderr
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "edgeward").write_bytes(b"\x7fELF fake executable")
    signed = _audit(
        tmp_path, "sign", str(dist / "edgeward"), "--key", str(tmp_path / "r.pem"),
        "--key-passphrase-env", "RELEASE_PASS", "--checksums", "--json", RELEASE_PASS=PASS,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    written = {Path(p).name for p in json.loads(signed.stdout)["written"]}
    assert written == {"edgeward.sig", "SHA256SUMS", "SHA256SUMS.dsse.json"}
    # No provenance was signed: the executable verifies only when the operator waives it by name.
    refused = _audit(tmp_path, "verify", str(dist / "edgeward"), "--key", str(tmp_path / "r.pub"))
    assert refused.returncode == 1 and "no provenance" in refused.stderr
    ok = _audit(tmp_path, "verify", str(dist / "edgeward"), "--key", str(tmp_path / "r.pub"), "--no-provenance-unsafe")
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stderr


def test_help_documents_every_mode(tmp_path: Path) -> None:
    out = _audit(tmp_path, "sign", "--help")
    assert out.returncode == 0
    for flag in ("--sigstore", "--identity-token", "--staging", "--key-passphrase-env", "--cert", "--chain",
                 "--generate-key", "--unencrypted-key-unsafe"):  # fmt: skip
        assert flag in out.stdout


@pytest.mark.online
def test_sigstore_keyless_sign_and_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Needs Fulcio/Rekor staging and an OIDC token (SIGSTORE_IDENTITY_TOKEN or ambient CI credentials)."""
    from audit.sign.release import sign_release_files, write_checksums
    from audit.sign.sigstore_keyless import SigstoreSigner
    from audit.verify.artefacts import verify_release
    from audit.verify.provenance import Expectations
    from audit.verify.sigstore_identity import SigstoreIdentity
    from tests.release_fixture import build_release

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with SigstoreSigner(os.environ.get("SIGSTORE_IDENTITY_TOKEN"), staging=True) as signer:
        release = build_release(tmp_path / "rel", signer)
        assert (release.dir / "edgeward.sigstore.json").is_file()
        assert (release.dir / "edgeward.intoto.sigstore.json").is_file()
        identity = signer._identity  # the token's own identity, so the test pins what it signed with
        policy = SigstoreIdentity(identity.identity, identity.issuer, staging=True)
        verify_release(release.dir, policy, Expectations())
    del sign_release_files, write_checksums


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
def test_signer_refuses_pae_bytes_as_an_artefact(tmp_path: Path, kind: str) -> None:
    # Finding 2 (signer side): a detached signature over PAE bytes would double as an envelope signature.
    from audit.sign.dsse import pae

    exe = tmp_path / "edgeward"
    exe.write_bytes(pae("application/vnd.cyclonedx+json", b"{}"))
    with pytest.raises(AuditError, match="DSSEv1"):
        KeySigner(new_key(kind)).sign_artefact(exe)
    assert not (tmp_path / "edgeward.sig").exists()


@pytest.mark.parametrize("name", ["a\u0085b", "a\u2028b", "a\rb", "a\tb", "a b", ".hidden", "-x", "é"])
def test_signer_refuses_bad_names_before_writing_sums(tmp_path: Path, name: str) -> None:
    # Finding 7: such names crashed checksums_statement (splitlines) after SHA256SUMS was already written.
    from audit.sign.release import checksums_statement, write_checksums

    (tmp_path / "edgeward").write_bytes(b"x")
    (tmp_path / name).write_bytes(b"y")
    with pytest.raises(AuditError, match="cannot be listed in SHA256SUMS"):
        write_checksums(tmp_path, KeySigner(new_key()))
    assert not (tmp_path / "SHA256SUMS").exists()
    (tmp_path / name).unlink()
    (tmp_path / "ok_name-1.2+x.json").write_bytes(b"z")
    write_checksums(tmp_path, KeySigner(new_key()))
    sums = (tmp_path / "SHA256SUMS").read_bytes()
    subjects = json.loads(checksums_statement(sums))["subject"]
    assert [s["name"] for s in subjects] == ["edgeward", "ok_name-1.2+x.json"]
