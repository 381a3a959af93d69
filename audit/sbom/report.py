"""The Nuitka compilation report (`--report=FILE.xml`): the builder's own list of what went into the executable.

Only the parts the SBOM relies on are read: which distributions the included modules came from, the
shared libraries and extension modules copied next to the compiled program, the Python it was built with
and the onefile cache mode (which decides the payload layout). Everything else in the report (timings,
plugin decisions) is left alone, so a newer Nuitka that adds elements does not break us.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import Element

from defusedxml import ElementTree

from audit.errors import AuditError
from audit.pypi import normalise_name


@dataclass(frozen=True)
class EntryPoint:
    """A binary Nuitka copied into the bundle: `kind` is "dll" or "extension"; `dest_path` is inside the bundle.

    `package` is the Python package that needed it ("" for the standard library or the main program);
    `source_path` is where it was copied from, with Nuitka's `${sys.prefix}`-style placeholders kept.
    """

    kind: str
    name: str
    dest_path: str
    source_path: str
    package: str
    reason: str


@dataclass(frozen=True)
class ReportModule:
    """An included module. `distributions` are Nuitka's candidates: for a namespace package shared by
    several distributions (`opentelemetry`) it lists all of them, so ownership is settled elsewhere."""

    name: str
    kind: str
    source_path: str
    distributions: tuple[str, ...]

    @property
    def namespace(self) -> bool:
        return self.kind.endswith("NamespacePackage")

    @property
    def site_path(self) -> str:
        """Path below site-packages (`opentelemetry/sdk/trace/__init__.py`), "" when not installed there."""
        _, found, rest = self.source_path.partition("site-packages/")
        return rest if found else ""


@dataclass(frozen=True)
class DataFile:
    """A non-code file Nuitka copied into the bundle (certifi's CA bundle, package data)."""

    dest_path: str
    source_path: str
    reason: str


@dataclass(frozen=True)
class ReportDistribution:
    name: str
    version: str
    installer: str


@dataclass(frozen=True)
class NuitkaReport:
    path: Path
    nuitka_version: str
    python_version: str
    python_flavor: str
    os_release: str
    arch: str
    onefile_cache_mode: str
    modules: dict[str, ReportModule]
    entry_points: tuple[EntryPoint, ...]
    distributions: dict[str, ReportDistribution]
    data_files: tuple[DataFile, ...]
    main_binary: str

    @property
    def payload_has_checksums(self) -> bool:
        """Nuitka writes a CRC32 per payload file exactly when the onefile unpacks to a cached directory."""
        return self.onefile_cache_mode == "cached"


def _required(element: Element, attribute: str, path: Path) -> str:
    value = element.get(attribute)
    if value is None:
        raise AuditError(
            f"{path}: <{element.tag}> without {attribute}=", hint="pass the report Nuitka wrote with --report"
        )
    return value


def parse_report(data: bytes, path: Path) -> NuitkaReport:
    """Read a report; refuse one from an aborted build, because its lists stop wherever Nuitka stopped."""
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise AuditError(f"{path}: not XML: {exc}") from None
    if root.tag != "nuitka-compilation-report":
        raise AuditError(f"{path}: not a Nuitka compilation report (root <{root.tag}>)")
    if root.get("completion") != "yes":
        raise AuditError(
            f"{path}: the build did not complete (completion={root.get('completion')!r})",
            hint="an aborted build's report does not describe a shipped executable",
        )
    modules: dict[str, ReportModule] = {}
    for node in root.iter("module"):
        name = _required(node, "name", path)
        dists = tuple(normalise_name(d) for d in node.get("distribution", "").split(",") if d)
        modules[name] = ReportModule(name, node.get("kind", ""), node.get("source_path", ""), dists)
    entries = []
    for node in root:
        if node.tag not in ("included_dll", "included_extension") or node.get("ignored") == "yes":
            continue
        entries.append(
            EntryPoint(
                kind=node.tag.removeprefix("included_"),
                name=_required(node, "name", path),
                dest_path=_required(node, "dest_path", path),
                source_path=node.get("source_path", ""),
                package=node.get("package", ""),
                reason=node.get("reason", ""),
            )
        )
    distributions: dict[str, ReportDistribution] = {}
    for node in root.iterfind("distributions/distribution"):
        name = _required(node, "name", path)
        distributions[normalise_name(name)] = ReportDistribution(
            name=name, version=_required(node, "version", path), installer=node.get("installer", "")
        )
    data_files = tuple(
        sorted(
            (
                DataFile(_required(node, "name", path), node.get("source", ""), node.get("reason", ""))
                for node in root
                if node.tag in ("data_file", "data_file_generated", "data_blob")
            ),
            key=lambda d: d.dest_path,
        )
    )
    binary = root.find("python_binary")
    python = root.find("python")
    if python is None:
        raise AuditError(f"{path}: no <python> element", hint="pass the report Nuitka wrote with --report")
    onefile = root.find("onefile")
    return NuitkaReport(
        path=path,
        nuitka_version=_required(root, "nuitka_version", path),
        python_version=_required(python, "python_version", path),
        python_flavor=python.get("python_flavor", ""),
        os_release=python.get("os_release", ""),
        arch=python.get("arch_name", ""),
        onefile_cache_mode=onefile.get("cache_mode", "") if onefile is not None else "",
        modules=modules,
        entry_points=tuple(sorted(entries, key=lambda e: e.dest_path)),
        distributions=distributions,
        data_files=data_files,
        main_binary=binary.get("filename", "") if binary is not None else "",
    )


def load_report(path: Path) -> NuitkaReport:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditError(
            f"{path}: cannot read the Nuitka report: {exc.strerror}",
            hint="`audit build` writes it beside the executable as <exe>.nuitka-report.xml",
        ) from None
    return parse_report(data, path)
