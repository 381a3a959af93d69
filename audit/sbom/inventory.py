"""What is inside the executable, as plain data: the join of the Nuitka report, the onefile payload, the
lock file, the build environment's distribution metadata and the system package database.

Kept apart from CycloneDX so that each claim has one place where it is checked: a distribution the report
names must be locked at the same version and installed at that version here (else the metadata we read
would describe other bytes); every binary the report lists must be inside the executable, and its hash
is taken from there, as built.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path, PurePosixPath

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement

from audit.buildinfo import BuildInfo
from audit.errors import AuditError, Finding
from audit.pypi import normalise_name
from audit.sbom.licenses import FoundLicense, python_license
from audit.sbom.lock import Lock
from audit.sbom.payload import PayloadFile
from audit.sbom.report import EntryPoint, NuitkaReport, ReportModule
from audit.sbom.system import PackageDatabase

MetadataLookup = Callable[[str], importlib_metadata.Distribution]
OpensslProbe = Callable[[], str]

RUNTIME = "cpython"
_USED_BY = re.compile(r"^Used by '(?P<dest>[^']+)'$")
_SONAME = re.compile(r"^(?P<name>lib[A-Za-z0-9_+]+?)(?:-[0-9a-f]{8})?\.so(?:\.(?P<version>[0-9][0-9.]*))?$")
_OPENSSL_VERSION = re.compile(r"^OpenSSL (?P<version>\d+\.\d+\.\d+[a-z]?)\b")


@dataclass(frozen=True)
class BundledFile:
    """A binary inside the executable: `path` relative to the unpack directory, `module` for extensions."""

    path: str
    sha256: str
    size: int
    kind: str
    module: str = ""


@dataclass(frozen=True)
class PythonDist:
    name: str
    version: str
    lock_hashes: tuple[str, ...]
    license: FoundLicense
    requires: tuple[str, ...]
    direct: bool
    files: tuple[BundledFile, ...] = ()
    embedded: tuple[EmbeddedLibrary, ...] = ()


@dataclass(frozen=True)
class EmbeddedLibrary:
    """A library linked statically into one of a distribution's binaries (cryptography's OpenSSL)."""

    name: str
    version: str
    inside: str
    version_source: str


@dataclass(frozen=True)
class NativeLibrary:
    """A shared library inside the executable: `owner` is the dist name, RUNTIME, or "" when unknown."""

    file: BundledFile
    name: str
    version: str
    purl: str
    license: FoundLicense
    package: str
    version_source: str
    owner: str


@dataclass(frozen=True)
class Executable:
    name: str
    version: str
    sha256: str
    build_id: str
    source_repository: str
    source_commit: str
    source_dirty: bool


@dataclass(frozen=True)
class Inventory:
    executable: Executable
    python_version: str
    runtime_files: tuple[BundledFile, ...]
    dists: tuple[PythonDist, ...]
    native: tuple[NativeLibrary, ...]
    unattributed: tuple[BundledFile, ...]
    app_files: tuple[BundledFile, ...]
    tools: dict[str, str] = field(default_factory=dict)


def _module_of(dest_path: str) -> str:
    """`cryptography/hazmat/bindings/_rust.abi3.so` -> `cryptography.hazmat.bindings._rust`."""
    parts = PurePosixPath(dest_path).parts
    return ".".join((*parts[:-1], parts[-1].split(".", 1)[0]))


def cryptography_openssl() -> str:
    """The OpenSSL cryptography's wheel links statically; only the library itself can say which."""
    from cryptography.hazmat.backends.openssl import backend

    text: str = backend.openssl_version_text()
    return text


class _Ownership:
    """Which distribution (or the runtime, or the application) each included module came from.

    Nuitka gives one candidate for most modules, but every distribution sharing a namespace package
    (`opentelemetry-api`, `-sdk`, `-proto`, and any other one installed) for modules below it; there the
    installed RECORD files decide, so a distribution that merely shares the namespace is not counted.
    """

    def __init__(self, report: NuitkaReport, lookup: MetadataLookup, app: str) -> None:
        self.report = report
        self.lookup = lookup
        self.app = app
        self._records: dict[str, frozenset[str]] = {}
        self.owners: dict[str, str] = {name: self._resolve(module) for name, module in report.modules.items()}

    def _record(self, dist: str) -> frozenset[str]:
        if dist not in self._records:
            try:
                files = self.lookup(dist).files or []
            except importlib_metadata.PackageNotFoundError:
                files = []
            self._records[dist] = frozenset(str(f) for f in files)
        return self._records[dist]

    def _resolve(self, module: ReportModule) -> str:
        if not module.distributions:
            # Not from any distribution: the standard library (from the Python prefix) or the program itself.
            return RUNTIME if "/lib/python" in module.source_path and not module.site_path else ""
        if len(module.distributions) == 1:
            return module.distributions[0]
        if module.namespace:
            return ""
        owners = [d for d in module.distributions if module.site_path in self._record(d)]
        if len(owners) != 1:
            raise AuditError(
                f"{module.name}: cannot tell which of {', '.join(module.distributions)} ships it "
                f"({module.site_path or module.source_path} is in {len(owners)} RECORDs)",
                hint="run `audit sbom` in the build environment",
            )
        return owners[0]

    def bundled(self) -> set[str]:
        return {owner for owner in self.owners.values() if owner not in ("", RUNTIME, self.app)}

    def of_module(self, module: str) -> str:
        while module:
            if module in self.owners:
                return self.owners[module]
            module = module.rpartition(".")[0]
        return ""

    def of_entry(self, entry: EntryPoint) -> str:
        if entry.kind == "extension":
            return self.of_module(_module_of(entry.dest_path))
        return self.of_module(entry.package) if entry.package else ""


def collect(
    exe: Path,
    exe_sha256: str,
    build_info: BuildInfo,
    report: NuitkaReport,
    lock: Lock,
    payload: dict[str, PayloadFile],
    packages: PackageDatabase,
    *,
    lookup: MetadataLookup = importlib_metadata.distribution,
    openssl_probe: OpensslProbe = cryptography_openssl,
) -> Inventory:
    app = normalise_name(exe.name)

    # (1) Distributions: those owning an included module; each must be locked, at the version the report saw.
    ownership = _Ownership(report, lookup, app)
    bundled = {name: report.distributions[name] for name in ownership.bundled() if name in report.distributions}
    unlisted = sorted(ownership.bundled() - set(bundled))
    if unlisted:
        raise AuditError(f"{report.path}: modules of {', '.join(unlisted)} but no <distribution> for them")
    missing = sorted(name for name in bundled if lock.get(name) is None)
    if missing:
        raise AuditError(
            f"{', '.join(missing)}: in the executable but not in the lock file {lock.path}",
            hint="the build used a distribution the lock does not pin; add it to the lock and rebuild",
        )
    for name, dist in sorted(bundled.items()):
        locked = lock.dists[name]
        if dist.version != locked.version:
            raise Finding(f"{name}: executable has {dist.version}, lock pins {locked.version}")

    # (2) Binaries: every one the report lists must be inside the executable; hash them as built.
    owned: dict[str, list[BundledFile]] = {}
    runtime_files: list[BundledFile] = []
    unattributed: list[BundledFile] = []
    native: list[NativeLibrary] = []
    owner_by_path: dict[str, str] = {}

    def inside(path: str, kind: str, module: str = "") -> BundledFile:
        found = _follow(payload, path)
        if found is None:
            raise Finding(f"{path}: listed in {report.path.name} but not inside {exe.name}")
        return BundledFile(path, found.sha256, found.size, kind, module)

    for entry in report.entry_points:
        module = _module_of(entry.dest_path) if entry.kind == "extension" else ""
        bundled_file = inside(entry.dest_path, entry.kind, module)
        owner = ownership.of_entry(entry)
        owner_by_path[entry.dest_path] = owner
        if entry.kind == "extension":
            if owner == RUNTIME:
                runtime_files.append(bundled_file)
            elif owner and owner != app:
                owned.setdefault(owner, []).append(bundled_file)
            else:
                unattributed.append(bundled_file)
    dlls = [entry for entry in report.entry_points if entry.kind == "dll"]
    for _ in dlls:  # a library used by a library belongs where its user does; settle chains of any length
        for entry in dlls:
            used_by = _USED_BY.match(entry.reason)
            owner_by_path[entry.dest_path] = owner_by_path.get(used_by["dest"], "") if used_by else ""
    for entry in dlls:
        native.append(_native(entry, inside(entry.dest_path, "dll"), packages, owner_by_path[entry.dest_path]))
    app_files: list[BundledFile] = []
    for data in report.data_files:
        bundled_file = inside(data.dest_path, "data")
        owner = ownership.of_module(_module_of(data.dest_path).rpartition(".")[0])
        if owner in bundled:
            owned.setdefault(owner, []).append(bundled_file)
        else:
            app_files.append(bundled_file)
    if report.main_binary:
        app_files.append(inside(report.main_binary, "main-binary"))
    # (2b) ... and nothing may be inside that the report does not account for.
    listed = {e.dest_path for e in report.entry_points} | {d.dest_path for d in report.data_files}
    unlisted = sorted(set(payload) - listed - {report.main_binary})
    if unlisted:
        raise Finding(f"{unlisted[0]}: inside {exe.name} but not in {report.path.name} ({len(unlisted)} such files)")

    # (3) Metadata from the build environment: licence and Requires-Dist, for exactly the locked version.
    dists = []
    for name in sorted(bundled):
        locked = lock.dists[name]
        try:
            installed = lookup(name)
        except importlib_metadata.PackageNotFoundError:
            raise AuditError(
                f"{name}: not installed here, so its licence and requirements cannot be read",
                hint="run `audit sbom` in the build environment (the venv the executable was built from)",
            ) from None
        if installed.version != locked.version:
            raise AuditError(
                f"{name}: installed {installed.version} here, the lock pins {locked.version}",
                hint="run `audit sbom` in the build environment, synced to the lock",
            )
        embedded: tuple[EmbeddedLibrary, ...] = ()
        if name == "cryptography":
            embedded = (_cryptography_openssl(owned.get(name, []), openssl_probe),)
        dists.append(
            PythonDist(
                name=name,
                version=locked.version,
                lock_hashes=locked.hashes,
                license=python_license(installed.metadata),
                requires=_requires(installed, set(bundled)),
                direct=locked.direct,
                files=tuple(sorted(owned.get(name, []), key=lambda f: f.path)),
                embedded=embedded,
            )
        )

    return Inventory(
        executable=Executable(
            name=exe.name,
            version=build_info.version,
            sha256=exe_sha256,
            build_id=build_info.build_id,
            source_repository=build_info.source_repository,
            source_commit=build_info.source_commit,
            source_dirty=build_info.source_dirty,
        ),
        python_version=report.python_version,
        runtime_files=tuple(sorted(runtime_files, key=lambda f: f.path)),
        dists=tuple(dists),
        native=tuple(sorted(native, key=lambda n: n.file.path)),
        unattributed=tuple(sorted(unattributed, key=lambda f: f.path)),
        app_files=tuple(sorted(app_files, key=lambda f: f.path)),
        tools={tool.name: tool.version for tool in build_info.tools},
    )


def _requires(installed: importlib_metadata.Distribution, bundled: set[str]) -> tuple[str, ...]:
    """Requires-Dist that apply to this build (markers evaluated without extras), limited to what shipped."""
    environment = {key: str(value) for key, value in default_environment().items()} | {"extra": ""}
    out = set()
    for line in installed.requires or ():
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = normalise_name(requirement.name)
        if name in bundled:
            out.add(name)
    return tuple(sorted(out))


def _cryptography_openssl(files: list[BundledFile], probe: OpensslProbe) -> EmbeddedLibrary:
    text = probe()
    match = _OPENSSL_VERSION.match(text)
    if match is None:
        raise AuditError(f"cryptography reports OpenSSL as {text!r}; expected 'OpenSSL X.Y.Z ...'")
    inside = next((f.path for f in files if "_rust" in f.path), files[0].path if files else "")
    return EmbeddedLibrary("openssl", match["version"], inside, "cryptography openssl_version_text()")


def _follow(payload: dict[str, PayloadFile], path: str) -> PayloadFile | None:
    """The regular file at `path` inside the payload, through symlinks that stay inside it."""
    for _ in range(16):
        found = payload.get(path)
        if found is None or not found.link_target:
            return found
        target = PurePosixPath(found.link_target)
        if target.is_absolute():
            return None
        path = posixpath.normpath(str(PurePosixPath(path).parent / target))
    return None


def _native(entry: EntryPoint, bundled_file: BundledFile, packages: PackageDatabase, owner: str) -> NativeLibrary:
    soname = _SONAME.match(entry.name)
    # (1) A system file (absolute path outside any Python prefix) is asked of the package manager.
    system = entry.source_path.startswith("/") and packages.owner(entry.source_path)
    if system:
        return NativeLibrary(
            bundled_file,
            name=soname["name"] if soname else entry.name,
            version=system.version,
            purl=system.purl,
            license=system.license,
            package=system.name,
            version_source=packages.name,
            owner=owner,
        )
    # (2) Otherwise (a wheel's vendored copy, `foo.libs/libbar-1a2b3c4d.so.1.2`) only the soname is known.
    name = soname["name"] if soname else entry.name
    version = (soname["version"] or "") if soname else ""
    purl = f"pkg:generic/{name}@{version}" if version else f"pkg:generic/{name}"
    return NativeLibrary(
        bundled_file,
        name=name,
        version=version,
        purl=purl,
        license=FoundLicense(),
        package="",
        version_source="soname" if version else "",
        owner=owner,
    )
