"""`evidence pack`: gather the release's evidence, derive the DORA records, sign the manifest, archive.

Order: verify the release first (a release that fails `audit verify` gets no pack), then collect each kind
of evidence; an input that was not given becomes a gap, by name, in the article map and the index, never a
silent omission. Everything written is built in memory as name -> bytes, so the pack directory and the
archive are two renderings of one mapping; the time in the pack is SOURCE_DATE_EPOCH or the build's
finishedOn, never the clock, so the same inputs give the same bytes (with a deterministic signature
scheme such as Ed25519; ECDSA signatures are randomised, so only manifest.dsse.json would differ).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.buildinfo import BuildInfo, load_build_info
from audit.digest import sha256_bytes
from audit.errors import AuditError
from audit.sign.signer import Signer
from audit.verify.policy import Policy
from evidence.pack import manifest as mf
from evidence.pack.archive import archive_bytes
from evidence.pack.articles import article_map
from evidence.pack.asset import asset_record, check_asset_file, exposure_of
from evidence.pack.html import render_index
from evidence.pack.junit import junit_summary
from evidence.pack.redact import redact, secret_paths
from evidence.pack.register import register_csv, register_rows

PACK_JSON = "pack.json"
INDEX = "index.html"
# The release files the pack carries; the executable and the Nuitka report stay out (their digests are in
# SHA256SUMS and the provenance, which are in).
EXCLUDED_FROM_RELEASE = ("edgeward", "edgeward.nuitka-report.xml")

TITLES = {
    "sbom": "SBOM (CycloneDX 1.6)",
    "scan": "vulnerability report with VEX",
    "provenance": "SLSA provenance",
    "signatures": "release signatures and SHA256SUMS",
    "verification": "verification transcript",
    "reproducible": "reproducibility report",
    "tests": "test results (JUnit XML)",
    "tls": "TLS assessment of the running executable",
    "config": "release config snapshot (secrets redacted)",
    "bench": "bench / SLO results",
    "changes": "change summary since the previous release",
    "asset": "ICT asset inventory record",
    "register": "third-party register (Art. 28)",
    "article_map": "DORA article map",
    "trail": "audit-trail report and incident candidates",
}


@dataclass(frozen=True)
class PackInputs:
    release: Path
    policy: Policy
    config: Path | None = None
    junit: Path | None = None
    reproducible: Path | None = None
    bench: Path | None = None
    previous_tag: str | None = None
    source: Path = Path(".")
    asset: Path | None = None
    trail: Sequence[Path] = ()
    tls_assess: bool = False
    tls_report: Path | None = None
    tls_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    root: Path = Path(".")


@dataclass
class Collected:
    files: dict[str, bytes] = field(default_factory=dict)
    present: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, name: str, data: bytes) -> None:
        self.files[name] = data
        self.present.setdefault(key, []).append(name)


@dataclass(frozen=True)
class Pack:
    files: dict[str, bytes]  # every file, manifest and signature included
    mtime: int
    info: dict[str, Any]  # pack.json's content

    def archive(self) -> bytes:
        return archive_bytes(self.files, self.mtime)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AuditError(f"{path}: cannot read {what} ({exc.strerror})") from None


def _json(data: Any) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def pack_time(info: BuildInfo) -> int:
    """SOURCE_DATE_EPOCH if set, else the build's finishedOn: the pack's only notion of time."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return int(epoch)
        except ValueError:
            raise AuditError(f"SOURCE_DATE_EPOCH={epoch!r} is not an integer") from None
    try:
        return int(dt.datetime.fromisoformat(info.finished_on.replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise AuditError(f"build record finishedOn {info.finished_on!r} is not RFC 3339") from None


def _release_files(release: Path, out: Collected) -> None:
    kinds = {
        ".cdx.json": "sbom", ".cdx.dsse.json": "sbom", ".scan.json": "scan", ".scan.md": "scan",
        ".intoto.json": "provenance", ".intoto.dsse.json": "provenance", ".build.json": "provenance",
    }  # fmt: skip
    for path in sorted(release.iterdir()):
        if path.name in EXCLUDED_FROM_RELEASE or not path.is_file() or not mf.is_pack_name(path.name):
            continue
        kind = next((k for suffix, k in kinds.items() if path.name.endswith(suffix)), "signatures")
        if path.name == "SUMMARY.md":
            kind = "verification"
        out.add(kind, f"release/{path.name}", _read(path, "a release file"))
        if path.name.endswith((".sig", ".dsse.json", ".sigstore.json", "SHA256SUMS", ".pem")):
            out.present.setdefault("signatures", []).append(f"release/{path.name}")
    for key in ("sbom", "scan", "provenance", "signatures"):
        out.present[key] = sorted(set(out.present.get(key, [])))


def collect(inputs: PackInputs, step: Callable[[str], None]) -> tuple[Collected, dict[str, Any]]:
    """Every evidence file (name -> bytes) and the summaries pack.json and the index show."""
    from audit.verify.artefacts import verify_release
    from audit.verify.provenance import Expectations

    out = Collected()
    summary: dict[str, Any] = {}
    info = load_build_info(inputs.release / "edgeward.build.json")
    # 1. The release verifies under the operator's policy, or there is no pack (Finding: exit 1).
    step("verify the release")
    expect = Expectations(
        artefact=info.executable,
        builder_id=info.builder_id,
        source_repo=info.source_repository,
        source_commit=info.source_commit or None,
    )
    report = verify_release(inputs.release, inputs.policy, expect)
    out.add("verification", "verification.txt", (report.summary() + "\n").encode("utf-8"))
    out.add("verification", "verification.json", report.to_json().encode("utf-8"))
    summary["verification"] = {"result": "verified", "summary": report.summary(), "policy": report.policy}
    _release_files(inputs.release, out)
    bom = json.loads(out.files["release/edgeward.cdx.json"])
    release = {
        "version": info.version,
        "build_id": info.build_id,
        "executable_sha256": info.executable_sha256,
        "source_repository": info.source_repository,
        "source_commit": info.source_commit,
    }
    summary["release"] = release
    # 2. Third-party register from the SBOM.
    step("third-party register")
    rows = register_rows(bom)
    out.add("register", "third-party-register.csv", register_csv(rows))
    summary["register_rows"] = len(rows)
    # 3. Config snapshot (validated by the server's own loader; secrets redacted; key files never opened).
    exposure = None
    if inputs.config is not None:
        step("config snapshot")
        raw = _load_config(inputs.config)
        from ingress.config.model import Config

        snapshot, redacted = redact(raw, secret_paths(Config))
        out.add("config", "config/release-config.redacted.json", _json(snapshot))
        summary["config"] = {"file": inputs.config.name, "redacted": redacted}
        exposure = exposure_of(raw)
    # 4. Asset record.
    operator = None
    if inputs.asset is not None:
        operator = _load_toml(inputs.asset, "asset file")
        problems = check_asset_file(operator)
        if problems:
            raise AuditError(f"{inputs.asset}: {problems[0]}")
    record = asset_record(operator, release, bom, exposure)
    out.add("asset", "asset-inventory.json", _json(record))
    out.notes += [f"asset inventory: {gap}" for gap in record["gaps"]]
    # 5. Tests, reproducibility, bench, changes, trail: each given or a gap.
    if inputs.junit is not None:
        data = _read(inputs.junit, "the JUnit XML")
        tests = junit_summary(data, str(inputs.junit))
        tests["of_this_build"] = tests["executable_sha256"] == [info.executable_sha256]
        if not tests["of_this_build"]:
            out.notes.append(
                "tests: the JUnit XML does not name this release's executable as the one it tested"
                f" (it names {', '.join(tests['executable_sha256']) or 'none'})"
            )
        summary["tests"] = tests
        out.add("tests", "tests/junit.xml", data)
    if inputs.reproducible is not None:
        data = _read(inputs.reproducible, "the reproducibility report")
        try:
            parsed = json.loads(data)
        except ValueError:
            raise AuditError(f"{inputs.reproducible}: not JSON") from None
        out.add("reproducible", "reproducible.json", data)
        if isinstance(parsed, dict):
            keys = ("reproducible", "identical", "result", "ok", "match")
            summary["reproducible"] = {k: parsed[k] for k in keys if k in parsed} or "recorded"
    if inputs.bench is not None:
        names = sorted(p for p in inputs.bench.glob("*.json") if p.is_file())
        if not names:
            raise AuditError(f"{inputs.bench}: no bench results (*.json)")
        for path in names:
            data = _read(path, "a bench result")
            try:
                json.loads(data)
            except ValueError:
                raise AuditError(f"{path}: not JSON") from None
            if not mf.is_pack_name(path.name):
                raise AuditError(f"{path}: name not usable in a pack")
            out.add("bench", f"bench/{path.name}", data)
        summary["bench"] = [p.name for p in names]
    if inputs.previous_tag:
        step("change summary")
        from evidence.pack.changes import change_summary

        changes = change_summary(inputs.source, inputs.previous_tag, info.source_commit)
        out.add("changes", "changes.json", _json(changes))
        summary["changes"] = changes
    if inputs.trail:
        step("audit trail")
        _trail(inputs.trail, out)
    # 6. TLS: measured now, or a previous assessment of this release handed in.
    if inputs.tls_assess or inputs.tls_report:
        from evidence.tls.assess import assess
        from evidence.tls.assess import summary as tls_summary

        if inputs.tls_report is not None:
            assessment = json.loads(_read(inputs.tls_report, "the TLS assessment"))
        else:
            if inputs.config is None:
                raise AuditError("--tls-assess needs --config (the release config to serve)")
            step("TLS assessment (the released executable on loopback, sslyze)")
            assessment = assess(
                inputs.release / info.executable,
                inputs.config,
                root=inputs.root,
                ca=inputs.tls_ca,
                client_cert=inputs.client_cert,
                client_key=inputs.client_key,
            )
        out.add("tls", "tls-assessment.json", _json(assessment))
        summary["tls"] = tls_summary(assessment)
    return out, summary


def _load_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(_read(path, what).decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AuditError(f"{path}: not a TOML {what} ({exc})") from None


def _load_config(path: Path) -> dict[str, Any]:
    from ingress.config import load_config
    from ingress.errors import ConfigError

    try:
        load_config(path)
    except ConfigError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid"
        raise AuditError(f"{path}: the release config does not load: {first}") from None
    return _load_toml(path, "config")


def _trail(paths: Sequence[Path], out: Collected) -> None:
    from evidence.trail.read import read_trail
    from evidence.trail.report import render_html, render_json

    report, chains = read_trail([str(p) for p in paths])
    out.add("trail", "trail/trail.json", render_json(report))
    out.add("trail", "trail/trail.html", render_html(report))
    out.notes += [f"audit trail: {chain}" for chain in chains if not chain.ok]


def build_pack(inputs: PackInputs, signer: Signer, step: Callable[[str], None]) -> Pack:
    collected, summary = collect(inputs, step)
    info = load_build_info(inputs.release / "edgeward.build.json")
    mtime = pack_time(info)
    step(f"sign the manifest ({signer.description})")
    with tempfile.TemporaryDirectory(prefix="edgeward-pack-sign-") as tmp:
        for path in signer.write_material(Path(tmp)):
            collected.files[path.name] = path.read_bytes()
        collected.present["article_map"] = [PACK_JSON, INDEX]
        rows = article_map(collected.present, TITLES)
        gaps = [f"{row['article']}: {gap}" for row in rows for gap in row["gaps"]] + collected.notes
        evidence_files = {name: sha256_bytes(data) for name, data in sorted(collected.files.items())}
        pack_info: dict[str, Any] = {
            "schema": mf.SCHEMA,
            "generated_at": dt.datetime.fromtimestamp(mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **summary,
            "inputs": {key: sorted(names) for key, names in sorted(collected.present.items())},
            "excluded_release_files": list(EXCLUDED_FROM_RELEASE),
            "article_map": rows,
            "gaps": gaps,
            "files": evidence_files,
        }
        files = dict(collected.files)
        files[PACK_JSON] = _json(pack_info)
        files[INDEX] = render_index(pack_info)
        manifest = mf.manifest_bytes(files)
        files[mf.MANIFEST] = manifest
        written = signer.sign_payload(manifest, mf.PAYLOAD_TYPE, mf.MANIFEST, Path(tmp))
        files[written.name] = written.read_bytes()
    return Pack(files=files, mtime=mtime, info=pack_info)


def write_directory(pack: Mapping[str, bytes], output: Path) -> None:
    """Write the pack into a new (or empty) directory; files 0644, directories created as needed."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise AuditError(f"{output}: exists and is not an empty directory", hint="name a new directory")
    for name, data in sorted(pack.items()):
        path = output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o644)
