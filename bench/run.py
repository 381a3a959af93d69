"""edgeward benchmark harness: CLI and orchestration.

    python bench/run.py [--rounds 3] [--duration 8] [--workloads WORKLOAD|GROUP,..]
                        [--peers nginx,granian,...] [--json bench/results/latest.json]
                        [--update-readme]

Design (why it looks like this):

* **Same inputs for everyone**: one temp workdir with the same files and one
  ECDSA P-256 certificate for every server.
* **One worker per server on CPU 0, load generator on CPU 1**: on a 2-core box
  this is the only split where the client does not steal the server's CPU.
  The harness process itself is pinned to CPU 1 too (it runs the idle-
  connection client and the probes).
* **Interleaved rounds, fresh process per measurement**: ``for round: for
  workload: for server: start, warm up, measure, stop``. Slow drift of the
  machine (thermal, noisy neighbours) then hits all servers alike instead of
  whichever happened to run last, and no state carries over between cells.
* **Medians over rounds**, with every raw value kept in the JSON.
* **No fake numbers**: a missing tool, a server that fails to start, a wrong
  status code or too many socket errors becomes an error in that cell.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from certs import make_certs  # noqa: E402
from servers import (  # noqa: E402
    PYTHON_PEERS,
    SERVER_CLASSES,
    BenchEnv,
    Server,
    ServerError,
    stop_all,
)
from workloads import (  # noqa: E402
    CLIENT_CPU,
    H3LOAD,
    WORKLOAD_GROUPS,
    WORKLOADS,
    Metric,
    MetricSpec,
    Workload,
    WorkloadError,
    machine_busy,
    set_client_python,
)

REPO_DIR = BENCH_DIR.parent
DEFAULT_INGRESS = REPO_DIR / ".venv" / "bin" / "ingress"
DEFAULT_PEERS_VENV = BENCH_DIR / ".venv-peers"
README = BENCH_DIR / "README.md"
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
REFERENCE = "edgeward"
BUSY_THRESHOLD = 0.15
"""A core busier than this with nothing of ours running = foreign load."""
FOREIGN_THRESHOLD = 0.25
"""CPU-seconds per second used on the two cores during a measurement by
neither the server nor the load generator, above which the measurement is
reported as shared with foreign load (on a quiet machine it is within ±0.05)."""
CLIENT_BOUND = 0.90
"""A throughput cell whose load generator used at least this much of its core
(CPU-seconds per second) while the server used less of its own is
client-bound: the server can do at least the number shown (rendered "≥N")."""
SERVER_CPU = "0"
"""The core every server is pinned to (BenchEnv.server_cpu); the load
generators use workloads.CLIENT_CPU."""
TARGETS: list[tuple[str, str, float]] = [
    ("h2_1k", "granian", 0.75),
    ("h2_1k", "caddy", 2.0),
    ("h2_1k", "hypercorn", 10.0),
    ("h3_1k", "hypercorn", 3.0),
]
"""(metric, peer, minimum edgeward/peer ratio) the project aims for."""
REPORTED_RATIOS: list[tuple[str, str]] = [("h3_1k", "caddy")]
"""Ratios shown next to the targets without a target of their own."""
DEFAULT_SERVERS = ["edgeward", "nginx", "caddy", "granian", "uvicorn", "hypercorn"]


def log(msg: str) -> None:
    """Progress goes to stderr so stdout stays a clean markdown report."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Environment preparation


def pin_self_to_client_cpu() -> bool:
    """Keep the harness (probes, 1000-connection client) off the server core."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs; server and client will share a core")
        return False
    os.sched_setaffinity(0, {1})
    return True


def raise_nofile() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE to the hard limit; servers inherit it too, so the
    1000-connection workload is never limited by the default 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def make_www(www: Path) -> None:
    """The static files every server serves. Deterministic content (not zeros,
    so nothing can cheat with compression) and world-readable, because
    nginx's worker runs as ``nobody`` when started by root."""
    www.mkdir(parents=True, exist_ok=True)
    pattern = bytes(range(256))
    (www / "1k.bin").write_bytes((pattern * 4)[:1024])
    (www / "100k.bin").write_bytes((pattern * 400)[:102400])
    (www / "index.html").write_text(
        "<!doctype html>\n<html><head><title>edgeward bench</title></head>"
        "<body><p>edgeward benchmark root</p></body></html>\n"
    )
    for path in [www, *www.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def ensure_peers_venv(venv: Path) -> None:
    """Create ``bench/.venv-peers`` from ``bench/requirements-peers.lock`` (hash-pinned).

    Separate from the project's venv so the peers never enter the project's
    lock file. The marker holds the lock's digest: a changed lock, or a
    half-done install, is installed again.
    """
    lock = Path(__file__).resolve().parent / "requirements-peers.lock"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    marker = venv / ".bench-ready"
    if marker.exists() and marker.read_text().strip() == digest:
        return
    log(f"setting up Python peers venv in {venv} from {lock.name} ...")
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--require-hashes", "-r", str(lock)], check=True)
    marker.write_text(digest + "\n")


def wait_quiet(timeout: float) -> dict[str, float]:
    """Wait up to *timeout* s for every core to be below BUSY_THRESHOLD.

    On a shared 2-core box a concurrent test suite or build easily takes a
    whole core, which halves whatever we measure next; waiting a little is
    cheaper than a wrong number. Returns the last per-core sample.
    """
    deadline = time.monotonic() + timeout
    while True:
        busy = machine_busy()
        if max(busy.values(), default=0.0) <= BUSY_THRESHOLD or time.monotonic() >= deadline:
            return busy


def tool_versions(servers: list[Server], client_python: Path | None = None) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return "not installed"
        text = (out.stdout + out.stderr).strip()
        return text.splitlines()[0] if text else "unknown"

    versions = {s.name: s.version() for s in servers}
    versions["wrk"] = first_line(["wrk", "--version"]) if shutil.which("wrk") else "not installed"
    versions["h2load"] = first_line(["h2load", "--version"]) if shutil.which("h2load") else "not installed"
    versions["curl"] = first_line(["curl", "--version"]) if shutil.which("curl") else "not installed"
    versions["openssl"] = first_line(["openssl", "version"])
    if client_python is not None:
        code = "import importlib.metadata as m; print('qh3', m.version('qh3'), '/ aioquic', m.version('aioquic'))"
        versions["h3load"] = f"bench/{H3LOAD.name} on " + first_line([str(client_python), "-c", code])
    versions["python (harness)"] = platform.python_version()
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "no commit"


# --------------------------------------------------------------------------
# Results


@dataclass
class Cell:
    """All rounds of one metric for one server."""

    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


class Results:
    def __init__(self, metrics: list[MetricSpec], servers: list[str]) -> None:
        self.metrics = metrics
        self.servers = servers
        self.cells: dict[tuple[str, str], Cell] = {}
        self.not_applicable: set[tuple[str, str]] = set()
        self.error_summary: dict[tuple[str, str], list[str]] = {}
        """(server, one-line error) -> workloads (one entry per failed round)."""

    def cell(self, metric: str, server: str) -> Cell:
        return self.cells.setdefault((metric, server), Cell())

    def add(self, metrics: list[Metric], server: str) -> None:
        for m in metrics:
            c = self.cell(m.name, server)
            c.values.append(m.value)
            c.details.append(m.detail)

    def add_error(self, workload: Workload, server: str, error: str) -> None:
        for spec in workload.metrics:
            self.cell(spec.name, server).errors.append(error)
        self.error_summary.setdefault((server, short_error(error)), []).append(workload.name)

    def ratio(self, metric: str, peer: str) -> float | None:
        ours = self.cells.get((metric, REFERENCE))
        theirs = self.cells.get((metric, peer))
        if not ours or not theirs or ours.median is None or not theirs.median:
            return None
        return ours.median / theirs.median

    def spec(self, metric: str) -> MetricSpec | None:
        return next((m for m in self.metrics if m.name == metric), None)

    def util(self, metric: str, server: str, key: str) -> float | None:
        """Median over rounds of a CPU-use figure from the details."""
        c = self.cells.get((metric, server))
        vals = [d[key] for d in c.details if key in d] if c else []
        return statistics.median(vals) if vals else None

    def client_bound(self, metric: str, server: str) -> bool:
        """True if the load generator, not the server, was the limit: the
        client process used (nearly) all of its core while the server did
        not. Process CPU, not the cores' busy fractions: those include other
        people's load on a shared machine, which the quiet-machine check
        reports separately. Only for primary throughput metrics; the number
        is then a lower bound of the server's capacity."""
        spec = self.spec(metric)
        if spec is None or not spec.higher_is_better or "." in metric or not spec.unit.endswith("/s"):
            return False
        client = self.util(metric, server, "client_cpu_util")
        srv = self.util(metric, server, "server_cpu_util")
        return client is not None and srv is not None and client >= CLIENT_BOUND and srv < CLIENT_BOUND

    def ratio_text(self, metric: str, peer: str) -> str:
        """Ratio of medians; ≥/≤ when one side is client-bound (then it is a
        bound, not a measurement), * when both are."""
        r = self.ratio(metric, peer)
        if r is None:
            return "—"
        ours, theirs = self.client_bound(metric, REFERENCE), self.client_bound(metric, peer)
        if ours and theirs:
            return f"{r:.2f}*"
        if ours:
            return f"≥{r:.2f}"
        if theirs:
            return f"≤{r:.2f}"
        return f"{r:.2f}"

    def target_status(self, metric: str, peer: str, target: float) -> str:
        r = self.ratio(metric, peer)
        if r is None:
            return "no data"
        ours, theirs = self.client_bound(metric, REFERENCE), self.client_bound(metric, peer)
        if ours and theirs:
            return "inconclusive: both client-bound"
        if ours:  # r is a lower bound
            return "met (edgeward client-bound)" if r >= target else "inconclusive: edgeward client-bound"
        if theirs:  # r is an upper bound
            return "missed" if r < target else f"inconclusive: {peer} client-bound"
        return "met" if r >= target else "missed"

    def to_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for spec in self.metrics:
            for server in self.servers:
                key = (spec.name, server)
                if key in self.not_applicable:
                    continue
                c = self.cells.get(key, Cell())
                rows.append(
                    {
                        "metric": spec.name,
                        "server": server,
                        "unit": spec.unit,
                        "higher_is_better": spec.higher_is_better,
                        "median": c.median,
                        "client_bound": self.client_bound(spec.name, server),
                        "values": c.values,
                        "errors": c.errors,
                        "details": c.details,
                    }
                )
        ratios = (
            {
                spec.name: {peer: self.ratio(spec.name, peer) for peer in self.servers if peer != REFERENCE}
                for spec in self.metrics
            }
            if REFERENCE in self.servers
            else {}
        )
        targets = [
            {
                "metric": metric,
                "peer": peer,
                "target": target,
                "ratio": self.ratio(metric, peer),
                "status": self.target_status(metric, peer, target),
            }
            for metric, peer, target in TARGETS
            if self.spec(metric) and REFERENCE in self.servers and peer in self.servers
        ]
        return {"meta": meta, "results": rows, "ratios": ratios, "targets": targets}


def foreign_load(detail: dict[str, Any]) -> float | None:
    """Busy fraction of the two cores not explained by the server's and the
    client's own CPU use during the measurement: someone else's load (a test
    suite, a build) that took CPU from one of them mid-measurement."""
    cores = detail.get("core_busy")
    if not cores or "server_cpu_util" not in detail or "client_cpu_util" not in detail:
        return None
    ours = [cores.get(f"cpu{SERVER_CPU}"), cores.get(f"cpu{CLIENT_CPU}")]
    if None in ours:
        return None
    return round(sum(ours) - detail["server_cpu_util"] - detail["client_cpu_util"], 3)


def short_error(error: str) -> str:
    """First line of an error plus, if it carries a server log tail, the
    tail's last line (usually the actual reason, e.g. a config error)."""
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    if not lines:
        return error
    first = lines[0]
    if len(lines) > 1 and "log tail" in first:
        first = f"{first} {lines[-1]}"
    return first[:400]


def _fmt(value: float, unit: str) -> str:
    if unit in ("MiB", "KiB"):
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def render_markdown(res: Results, meta: dict[str, Any]) -> str:
    """Medians table, ratio table, raw values and errors as markdown."""
    servers = res.servers
    lines = [
        f"Rounds: {meta['rounds']}, duration {meta['duration']} s, "
        f"{meta['date']}, {meta['cpu']}, git {meta['git_rev']}. "
        "Median of rounds; ↑ higher is better, ↓ lower is better; "
        "— = not applicable, ERR = see errors below.",
    ]
    if meta.get("busy_before"):
        lines += [
            "",
            f"**Warning:** {len(meta['busy_before'])} measurement(s) started while a core was still "
            f">{BUSY_THRESHOLD:.0%} busy with foreign load (see `busy_before` in the JSON); "
            "treat these numbers as noisy and re-run on a quiet machine.",
        ]
    if meta.get("busy_during"):
        cells = ", ".join(f"{b['workload']}/{b['server']} r{b['round']}" for b in meta["busy_during"])
        lines += [
            "",
            f"**Warning:** {len(meta['busy_during'])} measurement(s) shared the cores with foreign load "
            f"(> {FOREIGN_THRESHOLD:.2f} CPU used by neither server nor client; `busy_during` in the JSON): "
            f"{cells}. Those numbers are low by an unknown amount.",
        ]
    lines += [
        "",
        "| metric | unit | " + " | ".join(servers) + " |",
        "|---|---|" + "---:|" * len(servers),
    ]
    for spec in res.metrics:
        row = [spec.name, f"{spec.unit} {'↑' if spec.higher_is_better else '↓'}"]
        for server in servers:
            key = (spec.name, server)
            c = res.cells.get(key)
            if key in res.not_applicable:
                row.append("—")
            elif c is None or (c.median is None and not c.errors):
                row.append("")
            elif c.median is None:
                row.append("ERR")
            else:
                cellv = _fmt(c.median, spec.unit)
                if res.client_bound(spec.name, server):
                    cellv = "≥" + cellv
                if c.errors:
                    cellv += f" ({len(c.errors)} ERR)"
                row.append(cellv)
        lines.append("| " + " | ".join(row) + " |")

    peers = [s for s in servers if s != REFERENCE]
    if REFERENCE in servers and peers:
        lines += [
            "",
            "Ratio edgeward / peer (of medians; for ↑ metrics >1 means edgeward is "
            "better, for ↓ metrics <1 means edgeward is better):",
            "",
            "| metric | " + " | ".join(f"{REFERENCE}/{p}" for p in peers) + " |",
            "|---|" + "---:|" * len(peers),
        ]
        for spec in res.metrics:
            cells = [res.ratio_text(spec.name, peer) for peer in peers]
            lines.append(f"| {spec.name} | " + " | ".join(cells) + " |")
        if any(res.client_bound(spec.name, s) for spec in res.metrics for s in servers):
            lines += [
                "",
                f"≥N in the first table: the load generator used ≥{CLIENT_BOUND:.0%} of its core while the "
                "server used less of its own, so the server can do at least N. Ratios with such a cell are "
                "bounds (≥, ≤); * = both sides client-bound, which compares the load generator, not the servers.",
            ]

    targets = [
        (metric, peer, target)
        for metric, peer, target in TARGETS
        if res.spec(metric) and REFERENCE in servers and peer in servers
    ]
    reported = [(m, p) for m, p in REPORTED_RATIOS if res.spec(m) and REFERENCE in servers and p in servers]
    if targets or reported:
        lines += ["", "Targets (edgeward / peer, ratio of medians):", "", "| metric | peer | target | ratio | status |"]
        lines.append("|---|---|---:|---:|---|")
        for metric, peer, target in targets:
            status = res.target_status(metric, peer, target)
            lines.append(f"| {metric} | {peer} | ≥ {target:g} | {res.ratio_text(metric, peer)} | {status} |")
        for metric, peer in reported:
            lines.append(f"| {metric} | {peer} | (reported) | {res.ratio_text(metric, peer)} | — |")

    tables: list[tuple[str, Callable[[str, str], float | None]]] = [
        (
            "Server CPU use during the measurement (CPU-seconds per second, median; "
            "1.00 = the server's pinned core was saturated, well below = the client "
            "or latency was the limit):",
            lambda metric, server: res.util(metric, server, "server_cpu_util"),
        ),
        (
            f"Load generator CPU use on its own core (CPU {CLIENT_CPU}; same unit, median; near 1.00 "
            "with the server well below = the client was the limit):",
            lambda metric, server: res.util(metric, server, "client_cpu_util"),
        ),
    ]
    for title, get in tables:
        util_rows = []
        for spec in res.metrics:
            utils = []
            for server in servers:
                u = get(spec.name, server)
                utils.append("—" if u is None else f"{u:.2f}")
            if any(u != "—" for u in utils) and "." not in spec.name:
                util_rows.append(f"| {spec.name} | " + " | ".join(utils) + " |")
        if util_rows:
            lines += [
                "",
                title,
                "",
                "| metric | " + " | ".join(servers) + " |",
                "|---|" + "---:|" * len(servers),
                *util_rows,
            ]

    ceilings = {
        server: u
        for server in servers
        if (u := res.util("h3_1k", server, "client_requests_per_cpu_second")) is not None
    }
    if ceilings:
        shown = ", ".join(f"{s} {v:,.0f}" for s, v in ceilings.items())
        lines += [
            "",
            "h3load's ceiling per h3_1k cell: requests per client CPU-second, i.e. the rate its one core "
            f"could sustain at that server's packet pattern (median): {shown}. A cell close to its "
            "ceiling was limited by the client.",
        ]

    if meta["rounds"] > 1:
        lines += ["", "Raw values per round:", ""]
        for spec in res.metrics:
            for server in servers:
                c = res.cells.get((spec.name, server))
                if c and c.values:
                    vals = ", ".join(_fmt(v, spec.unit) for v in c.values)
                    lines.append(f"- {spec.name} / {server}: {vals}")
    if res.error_summary:
        lines += ["", "Errors (server: error — workload (xN = failed N rounds)):", ""]
        for (server, err), wls in res.error_summary.items():
            counts = ", ".join(f"{w} x{wls.count(w)}" if wls.count(w) > 1 else w for w in dict.fromkeys(wls))
            lines.append(f"- **{server}**: {err} — {counts}")
    return "\n".join(lines) + "\n"


def update_readme(markdown: str) -> None:
    text = README.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{README} has no {README_START} ... {README_END} section")
    new = text[: start + len(README_START)] + "\n" + markdown + text[end:]
    README.write_text(new)


# --------------------------------------------------------------------------
# Orchestration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    p.add_argument(
        "--workloads",
        "--only",
        dest="only",
        default="",
        metavar="W,..",
        help=f"comma list of workloads ({','.join(WORKLOADS)}) and/or groups "
        f"({', '.join(g + '=' + '+'.join(ws) for g, ws in WORKLOAD_GROUPS.items())}); default all",
    )
    p.add_argument(
        "--peers",
        default="",
        help="comma list of servers to compare against edgeward "
        f"(default: all of {','.join(DEFAULT_SERVERS[1:])}); edgeward is always included",
    )
    p.add_argument(
        "--no-edgeward",
        action="store_true",
        help="leave edgeward out (e.g. to test the harness on peers only)",
    )
    p.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "latest.json")
    p.add_argument(
        "--update-readme",
        action="store_true",
        help=f"rewrite the {README_START} section of bench/README.md",
    )
    p.add_argument("--ingress", type=Path, default=DEFAULT_INGRESS, help="path of the edgeward console script")
    p.add_argument("--peers-venv", type=Path, default=DEFAULT_PEERS_VENV)
    p.add_argument("--no-setup-peers", action="store_true", help="do not create/install the Python peers venv")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        metavar="S",
        help="before each measurement wait up to S seconds for foreign CPU load to stop (0 = just warn)",
    )
    p.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temp workdir (configs, logs) for inspection",
    )
    args = p.parse_args(argv)

    def split(value: str) -> list[str]:
        return [x.strip() for x in value.split(",") if x.strip()]

    wanted: list[str] = []
    for name in split(args.only) or list(WORKLOADS):
        for w in WORKLOAD_GROUPS.get(name, (name,)):
            if w not in WORKLOADS:
                p.error(f"unknown workload {name!r}; known: {list(WORKLOADS)}, groups: {list(WORKLOAD_GROUPS)}")
            if w not in wanted:
                wanted.append(w)
    # Always in the canonical order, so a subset interleaves like a full run.
    args.workloads = [w for w in WORKLOADS if w in wanted]
    peers = split(args.peers) or DEFAULT_SERVERS[1:]
    bad = [s for s in peers if s not in SERVER_CLASSES]
    if bad:
        p.error(f"unknown server(s) {bad}; known: {list(SERVER_CLASSES)}")
    servers = [] if args.no_edgeward else [REFERENCE]
    servers += [s for s in peers if s not in servers]
    args.servers = servers
    if args.rounds < 1 or args.duration < 1:
        p.error("--rounds and --duration must be >= 1")
    return args


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    for tool in ("taskset",):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (apt-get install -y util-linux)")
    pinned = pin_self_to_client_cpu()
    nofile = raise_nofile()
    # The peers venv also holds the HTTP/3 load generator's QUIC stack (qh3).
    needs_h3_client = any(WORKLOADS[w].http == "h3" for w in args.workloads)
    if (any(s in PYTHON_PEERS for s in args.servers) or needs_h3_client) and not args.no_setup_peers:
        ensure_peers_venv(args.peers_venv)
    client_python = args.peers_venv.resolve() / "bin" / "python"
    set_client_python(client_python)

    workdir = Path(tempfile.mkdtemp(prefix="edgeward-bench-"))
    workdir.chmod(0o755)  # nginx workers (user nobody) must traverse it
    try:
        www = workdir / "www"
        make_www(www)
        certs = make_certs(workdir / "tls")
        env = BenchEnv(
            server_cpu=SERVER_CPU,
            workdir=workdir,
            www=www,
            certs=certs,
            bench_dir=BENCH_DIR,
            peers_venv=args.peers_venv.resolve(),
            ingress_bin=args.ingress,
        )
        servers = [SERVER_CLASSES[name](env) for name in args.servers]
        workloads = [WORKLOADS[w] for w in args.workloads]
        specs = [spec for w in workloads for spec in w.metrics]
        results = Results(specs, args.servers)

        meta: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
            "rounds": args.rounds,
            "duration": args.duration,
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "git_rev": git_rev(),
            "pinned": {"server_cpu": env.server_cpu, "client_cpu": "1" if pinned else None},
            "rlimit_nofile": list(nofile),
            "versions": tool_versions(servers, client_python if needs_h3_client else None),
            "workloads": {w.name: w.description for w in workloads},
            "busy_before": [],
            "busy_during": [],
            "commands": {},
        }
        for name, version in meta["versions"].items():
            log(f"  {name}: {version}")

        total = args.rounds * len(workloads) * len(servers)
        n = 0
        t0 = time.monotonic()
        for rnd in range(1, args.rounds + 1):
            for wl in workloads:
                for server in servers:
                    n += 1
                    prefix = f"[{n}/{total}] round {rnd} {wl.name:<13} {server.name:<10}"
                    if not server.supports(wl.mode, wl.http):
                        for spec in wl.metrics:
                            results.not_applicable.add((spec.name, server.name))
                        continue
                    missing = [t for t in wl.tools if shutil.which(t) is None]
                    if missing:
                        err = f"{', '.join(missing)} not installed"
                        results.add_error(wl, server.name, err)
                        log(f"{prefix} ERROR {err}")
                        continue
                    busy = wait_quiet(args.wait_quiet)
                    if max(busy.values(), default=0.0) > BUSY_THRESHOLD:
                        meta["busy_before"].append(
                            {"round": rnd, "workload": wl.name, "server": server.name, "core_busy": busy}
                        )
                        log(f"{prefix} warning: machine busy before start {busy}")
                    try:
                        with server.start(wl.mode, wl.http) as running:
                            meta["commands"][f"{server.name} {wl.mode}/{wl.http}"] = " ".join(map(str, running.argv))
                            metrics = wl.run(running, args.duration)
                    except (ServerError, WorkloadError, OSError, subprocess.SubprocessError) as exc:
                        err = f"{type(exc).__name__}: {exc}"
                        results.add_error(wl, server.name, err)
                        log(f"{prefix} ERROR {err.splitlines()[0][:200]}")
                        continue
                    results.add(metrics, server.name)
                    shown = ", ".join(f"{m.name}={_fmt(m.value, m.unit)} {m.unit}" for m in metrics)
                    if "server_cpu_util" in metrics[0].detail:
                        shown += f" (server cpu {metrics[0].detail['server_cpu_util']:.2f})"
                    foreign = foreign_load(metrics[0].detail)
                    if foreign is not None:
                        metrics[0].detail["foreign_cpu_util"] = foreign
                        if foreign > FOREIGN_THRESHOLD:
                            meta["busy_during"].append(
                                {"round": rnd, "workload": wl.name, "server": server.name, "foreign_cpu": foreign}
                            )
                            shown += f" warning: foreign load {foreign:.2f} CPU during the measurement"
                    log(f"{prefix} {shown}")
        meta["elapsed_seconds"] = round(time.monotonic() - t0, 1)

        markdown = render_markdown(results, meta)
        print(markdown)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results.to_json(meta), indent=2) + "\n")
        log(f"wrote {args.json}")
        if args.update_readme:
            update_readme(markdown)
            log(f"updated {README}")
    finally:
        stop_all()
        if args.keep_workdir:
            log(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # main()'s finally has already stopped every server.
        log("interrupted")
        sys.exit(130)
