"""Metrics: the family model, its Prometheus text and OTLP forms, and the admin /metrics of a real edge.

Prometheus text is checked by `parse_exposition`, a strict reader of the
0.0.4 text format written here (no Prometheus parser is installed): every
line must be a HELP, a TYPE or a well-formed sample; HELP and TYPE come at
most once per family and before its samples; a family's samples are not
interleaved with another's; no series repeats; histogram buckets rise in
`le`, are cumulative, end at +Inf and agree with `_count`. OTLP output is
decoded with opentelemetry-proto's own classes.
"""

from __future__ import annotations

import math
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE

import ingress
from ingress.telemetry.metrics import (
    BOUNDS,
    FOLD_MEMORY,
    LIMIT,
    Counter,
    Gauge,
    Histogram,
    Registry,
    RequestMetrics,
    folded_family,
    prometheus_text,
)
from ingress.telemetry.otlp.metrics import encode_metrics
from ingress.telemetry.record import Pending, columns
from tests.conftest import base_config
from tests.h2client import H2Client, h2_context
from tests.h3client import H3Transport
from tests.origin import Origin
from tests.pki import CA, Issued
from tests.server import Server, wait_for

# --------------------------------------------------------------------------- a strict 0.0.4 reader

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_HELP = re.compile(rf"# HELP ({_NAME}) (.*)")
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)(?: (-?\d+))?")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_VALUE = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Inf)|NaN")
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Labels = tuple[tuple[str, str], ...]


@dataclass
class Parsed:
    name: str
    kind: str = "untyped"
    help: str | None = None
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, **labels: str) -> float:
        """The one plain sample whose labels include `labels`."""
        found = [v for (n, ls), v in self.samples.items() if n == self.name and set(labels.items()) <= set(ls)]
        assert len(found) == 1, (self.name, labels, self.samples)
        return found[0]

    def total(self, suffix: str = "", **labels: str) -> float:
        """The sum over the samples of `name + suffix` whose labels include `labels`."""
        want = self.name + suffix
        return sum(v for (n, ls), v in self.samples.items() if n == want and set(labels.items()) <= set(ls))


def _labels(text: str | None, line: str) -> Labels:
    if not text:
        return ()
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _PAIR.match(text, pos)
        assert m, f"bad labels at {text[pos:]!r} in {line!r}"
        value = re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e.group(0)], m.group(2))
        pairs.append((m.group(1), value))
        pos = m.end()
    names = [k for k, _ in pairs]
    assert len(set(names)) == len(names), f"repeated label in {line!r}"
    assert not any(k.startswith("__") for k in names), line
    return tuple(pairs)


def _float(text: str, line: str) -> float:
    assert _VALUE.fullmatch(text), f"bad value {text!r} in {line!r}"
    return float(text)


def _family_of(sample: str, families: dict[str, Parsed]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample.removesuffix(suffix)
        if base != sample and base in families and families[base].kind in ("histogram", "summary"):
            return base
    return sample


def parse_exposition(text: str) -> dict[str, Parsed]:
    """Families by name; any departure from the text format fails the calling test."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Parsed] = {}
    finished: set[str] = set()
    current: str | None = None
    for line in text[:-1].split("\n"):
        assert line, "blank line in the exposition"
        if line.startswith("#"):
            m = _HELP.fullmatch(line) or _TYPE.fullmatch(line)
            assert m, f"bad comment line {line!r}"
            name = m.group(1)
            fam = families.setdefault(name, Parsed(name))
            assert name not in finished, f"{name} continues after another family"
            if line.startswith("# HELP"):
                assert fam.help is None, f"second HELP for {name}"
                assert "\n" not in m.group(2)
                fam.help = m.group(2)
            else:
                assert fam.kind == "untyped" and not fam.samples, f"TYPE for {name} repeated or after samples"
                fam.kind = m.group(2)
        else:
            m = _SAMPLE.fullmatch(line)
            assert m, f"bad sample line {line!r}"
            name = _family_of(m.group(1), families)
            fam = families.setdefault(name, Parsed(name))
            assert name not in finished, f"{name} continues after another family"
            key = (m.group(1), _labels(m.group(2), line))
            assert key not in fam.samples, f"repeated series {line!r}"
            fam.samples[key] = _float(m.group(3), line)
        if current is not None and current != name:
            finished.add(current)
        current = name
    for fam in families.values():
        _check(fam)
    return families


def _check(fam: Parsed) -> None:
    if fam.kind == "counter":
        for (_, labels), v in fam.samples.items():
            assert v >= 0 or math.isnan(v), (fam.name, labels, v)
    if fam.kind != "histogram":
        assert all(n == fam.name for n, _ in fam.samples), fam.name
        return
    series: dict[Labels, dict[str, Any]] = {}
    for (n, labels), v in fam.samples.items():
        suffix = n[len(fam.name) :]
        assert suffix in ("_bucket", "_sum", "_count"), f"{n} in histogram {fam.name}"
        rest = tuple(p for p in labels if p[0] != "le")
        entry = series.setdefault(rest, {"buckets": []})
        if suffix == "_bucket":
            (le,) = [value for k, value in labels if k == "le"]
            entry["buckets"].append((float(le), v))
        else:
            entry[suffix] = v
    for rest, entry in series.items():
        buckets = entry["buckets"]
        assert buckets and buckets[-1][0] == math.inf, (fam.name, rest, "no +Inf bucket")
        les = [le for le, _ in buckets]
        assert les == sorted(set(les)), (fam.name, rest, "le not rising")
        counts = [n for _, n in buckets]
        assert counts == sorted(counts), (fam.name, rest, "buckets not cumulative")
        assert entry.get("_count") == counts[-1], (fam.name, rest, "count is not the +Inf bucket")
        assert "_sum" in entry, (fam.name, rest, "no _sum")


def test_the_reader_refuses_what_the_format_forbids() -> None:
    good = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n"
    assert parse_exposition(good)["a_total"].value() == 1
    for bad in (
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",  # TYPE twice
        "a 1\n# TYPE a gauge\n",  # TYPE after a sample
        '# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x="1"} 2\n',  # a family split in two
        'a{x="1"} 1\na{x="1"} 2\n',  # a series twice
        'a{x="1",x="2"} 1\n',  # a label twice
        'a{x="\\q"} 1\n',  # an unknown escape
        "a one\n",  # not a number
        "a 1",  # no final newline
        '# TYPE h histogram\nh_bucket{le="1.0"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',  # not cumulative
    ):
        with pytest.raises(AssertionError):
            parse_exposition(bad)


# --------------------------------------------------------------------------- families


def test_counter_and_gauge_record_and_mirror() -> None:
    c = Counter("edgeward_things_total", "Things.", ("kind",))
    c.inc(("a",))
    c.inc(("a",), 2)
    c.set(("b",), 7)
    assert c.samples == {("a",): 3, ("b",): 7}
    g = Gauge("edgeward_level", "Level.")
    g.set((), 5)
    g.add((), -2)
    assert g.samples == {(): 3}
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(("a", "b"))


@pytest.mark.parametrize(
    ("name", "labels"),
    [("9lives", ()), ("has-dash", ()), ("ok", ("bad-label",)), ("ok", ("__reserved",)), ("ok", ("x", "x"))],
)
def test_invalid_names_are_refused(name: str, labels: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"invalid|duplicate"):
        Counter(name, "x", labels)


def test_histogram_le_is_inclusive_and_buckets_are_cumulative() -> None:
    h = Histogram("edgeward_t_seconds", "T.", ("route",))
    for v in (0.0, 0.0005, 0.00050001, 0.003, 10.0, 11.0, 1e9):
        h.observe(("/",), v)
    cell = h.samples[("/",)]
    assert len(cell.counts) == len(BOUNDS) + 1
    assert cell.counts[0] == 2  # 0 and exactly 0.0005 are <= the first bound
    assert cell.counts[1] == 1  # just above it
    assert cell.counts[BOUNDS.index(0.005)] == 1
    assert cell.counts[BOUNDS.index(10.0)] == 1
    assert cell.counts[-1] == 2  # 11 s and beyond: only +Inf
    assert cell.count == 7
    assert cell.cumulative()[-1] == 7
    assert cell.sum == pytest.approx(0.0005 + 0.00050001 + 0.003 + 10.0 + 11.0 + 1e9)
    text = prometheus_text([h])
    fam = parse_exposition(text)["edgeward_t_seconds"]
    assert fam.kind == "histogram"
    assert fam.total("_bucket", le="0.0005") == 2
    assert fam.total("_bucket", le="0.001") == 3
    assert fam.total("_bucket", le="10.0") == 5
    assert fam.total("_bucket", le="+Inf") == 7
    assert fam.total("_count") == 7


def test_label_sets_beyond_the_limit_fold_into_other_and_are_counted() -> None:
    c = Counter("edgeward_hits_total", "Hits.", ("route", "code"))
    for i in range(LIMIT):
        c.inc((f"/r{i}", "200"))
    assert c.folded == 0
    c.inc(("/late", "200"))
    c.inc(("/late", "200"))
    c.inc(("/later", "500"), 3)
    c.inc(("/r0", "200"))  # an existing set keeps its own series
    assert len(c.samples) == LIMIT + 1
    assert c.samples[("other", "other")] == 5
    assert c.samples[("/r0", "200")] == 2
    assert c.folded == 2  # two distinct label sets, however often they were seen
    # A mirrored total folded into "other" adds to what is there rather than replacing it.
    c.set(("/x", "200"), 10)
    assert c.samples[("other", "other")] == 15
    report = folded_family([c, Counter("edgeward_quiet_total", "Quiet.")], (("worker", "0"),))
    assert report.samples == {("edgeward_hits_total",): 3}
    fams = parse_exposition(prometheus_text([c, report]))
    assert fams["edgeward_metrics_folded_label_sets"].value(family="edgeward_hits_total") == 3
    assert fams["edgeward_hits_total"].value(route="other", code="other") == 15


def test_histogram_folds_too() -> None:
    h = Histogram("edgeward_t_seconds", "T.", ("route",))
    for i in range(LIMIT + 10):
        h.observe((f"/r{i}",), 0.01)
    assert len(h.samples) == LIMIT + 1
    assert h.samples[("other",)].count == 10
    assert h.folded == 10


def test_rendering_escapes_and_orders_labels() -> None:
    c = Counter("edgeward_odd_total", 'Help with a \\ backslash\nand a newline and "quotes".', ("path",))
    c.const = (("worker", "3"),)
    c.inc(('a "quoted" \\ path\nwith a newline',), 2)
    c.inc(("plain",), 1.5)
    g = Gauge("edgeward_nolabels", "No labels at all.")
    g.set((), 1)
    text = prometheus_text([c, g])
    lines = text.splitlines()
    assert lines[0] == '# HELP edgeward_odd_total Help with a \\\\ backslash\\nand a newline and "quotes".'
    assert lines[1] == "# TYPE edgeward_odd_total counter"
    assert lines[2] == 'edgeward_odd_total{worker="3",path="a \\"quoted\\" \\\\ path\\nwith a newline"} 2'
    assert lines[3] == 'edgeward_odd_total{worker="3",path="plain"} 1.5'
    assert lines[-1] == "edgeward_nolabels 1"
    fam = parse_exposition(text)["edgeward_odd_total"]
    assert fam.value(path='a "quoted" \\ path\nwith a newline') == 2


def test_special_values_render_as_the_format_spells_them() -> None:
    g = Gauge("edgeward_g", "G.", ("v",))
    for label, value in (("inf", math.inf), ("ninf", -math.inf), ("nan", math.nan), ("small", 1e-7)):
        g.set((label,), value)
    text = prometheus_text([g])
    assert 'edgeward_g{v="inf"} +Inf' in text
    assert 'edgeward_g{v="ninf"} -Inf' in text
    assert 'edgeward_g{v="nan"} NaN' in text
    fam = parse_exposition(text)["edgeward_g"]
    assert fam.value(v="small") == 1e-7


def test_registry_merges_by_name_and_refuses_clashes() -> None:
    reg = Registry()
    reg.counter("edgeward_r_total", "R.", ("listener",)).set(("a",), 1)
    reg.counter("edgeward_r_total", "R.", ("listener",)).set(("b",), 2)
    assert [f.name for f in reg] == ["edgeward_r_total"]
    assert next(iter(reg)).samples == {("a",): 1, ("b",): 2}
    with pytest.raises(ValueError, match="two different"):
        reg.gauge("edgeward_r_total", "R.", ("listener",))
    with pytest.raises(ValueError, match="two different"):
        reg.counter("edgeward_r_total", "R.", ("other",))
    with pytest.raises(ValueError, match="added twice"):
        reg.add(Counter("edgeward_r_total", "R."))


# --------------------------------------------------------------------------- request metrics


def observe(metrics: RequestMetrics, rows: list[Pending]) -> None:
    metrics.observe(columns(rows))


def exchange(route: str, status: int, protocol: str, seconds: float, cache: str = "") -> Pending:
    """What the request path records of an answer (`record.Pending`); metrics read nothing else."""
    start = 1_700_000_000_000_000_000  # time.time_ns()
    return (
        None, "GET", b"/x", route, status, protocol, None, "localhost", b"", None, cache, "", None, 0, "https", "",
        start, start + round(seconds * 1e9),
    )  # fmt: skip


def test_request_metrics_by_route_status_class_and_protocol() -> None:
    metrics = RequestMetrics(worker=2)
    observe(
        metrics,
        [
            exchange("/api", 200, "1.1", 0.0003),
            exchange("/api", 204, "1.1", 0.002),
            exchange("/api", 503, "2", 0.7, cache="miss"),
            exchange("", 404, "3", 0.00001),
            exchange("/static", 304, "1.0", 20.0, cache="hit"),
            exchange("/static", 200, "2", 0.01, cache="hit"),
        ],
    )
    observe(metrics, [exchange("/api", 200, "1.1", 0.0004)])
    reg = Registry()
    metrics.collect(reg)
    fams = parse_exposition(prometheus_text(reg))
    duration = fams["edgeward_http_server_request_duration_seconds"]
    assert duration.kind == "histogram"
    api = {"worker": "2", "route": "/api", "status_class": "2xx", "protocol": "1.1"}
    assert duration.total("_count", **api) == 3
    assert duration.total("_bucket", le="0.0005", **api) == 2
    assert duration.total("_bucket", le="0.0025", **api) == 3
    assert duration.total("_sum", **api) == pytest.approx(0.0027)
    assert duration.total("_count", route="/api", status_class="5xx", protocol="2") == 1
    assert duration.total("_count", route="unmatched", status_class="4xx", protocol="3") == 1
    assert duration.total("_bucket", le="10.0", route="/static", protocol="1.0") == 0
    assert duration.total("_bucket", le="+Inf", route="/static", protocol="1.0") == 1
    assert duration.total("_count") == 7
    cache = fams["edgeward_cache_responses_total"]
    assert cache.value(status="hit") == 2
    assert cache.value(status="miss") == 1
    assert {labels for _, labels in cache.samples} == {
        (("worker", "2"), ("status", "hit")),
        (("worker", "2"), ("status", "miss")),
    }


def test_a_wall_clock_stepped_back_counts_as_a_zero_duration() -> None:
    """Durations are the spans' wall-clock times apart; a step back between the two must not go below zero."""
    metrics = RequestMetrics()
    observe(metrics, [exchange("/api", 200, "1.1", -2.5), exchange("/api", 200, "1.1", 0.002)])
    observe(metrics, [exchange("/api", 200, "1.1", 0.0005), exchange("/api", 200, "1.1", 0.0005001)])  # on a bound
    reg = Registry()
    metrics.collect(reg)
    duration = parse_exposition(prometheus_text(reg))["edgeward_http_server_request_duration_seconds"]
    assert duration.total("_count", route="/api") == 4
    assert duration.total("_bucket", le="0.0005", route="/api") == 2
    assert duration.total("_bucket", le="0.001", route="/api") == 3
    assert duration.total("_sum", route="/api") == pytest.approx(0.0030001)


def test_request_metrics_stay_bounded_under_many_routes_and_statuses() -> None:
    metrics = RequestMetrics()
    batch = [exchange(f"/r{i}", 200 + i % 300, "1.1", 0.001) for i in range(5000)]
    observe(metrics, batch)
    observe(metrics, batch)
    duration = metrics.duration
    limit = duration.limit
    assert limit == 1024  # routes x 5 status classes x 4 protocols, for a config of a few dozen routes
    assert len(duration.samples) == limit + 1
    assert sum(cell.count for cell in duration.samples.values()) == 10000
    assert duration.samples[("other", "other", "other")].count == 2 * (5000 - limit)
    assert duration.folded == FOLD_MEMORY  # the report saturates rather than remembering every label set


def test_observe_is_cheap_per_record() -> None:
    """A loose bound (CI machines vary): per record, microseconds at most, never milliseconds."""
    metrics = RequestMetrics()
    batch = [exchange(f"/r{i % 8}", 200 + (i % 4) * 100, "1.1", i / 1e6, "hit" if i % 3 else "") for i in range(20000)]
    observe(metrics, batch)
    start = time.perf_counter()
    observe(metrics, batch)
    per_record = (time.perf_counter() - start) / len(batch)
    assert per_record < 20e-6, per_record


# --------------------------------------------------------------------------- OTLP


def _attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kv: KeyValue
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        if which == "array_value":
            out[kv.key] = [getattr(v, v.WhichOneof("value")) for v in kv.value.array_value.values]
        else:
            out[kv.key] = getattr(kv.value, which)
    return out


def test_otlp_metrics_decode_with_types_temporality_bounds_and_counts() -> None:
    requests = RequestMetrics(worker=1)
    observe(
        requests,
        [
            exchange("/api", 200, "1.1", 0.0002),
            exchange("/api", 200, "1.1", 0.3),
            exchange("/api", 200, "1.1", 30.0),
            exchange("", 404, "2", 0.001),
        ],
    )
    reg = Registry()
    const = (("worker", "1"),)
    reg.counter("edgeward_connections_total", "Connections.", const=const).set((), 42)
    reg.counter("edgeward_odd_total", "Odd.", ("kind",), const=const).set(("half",), 0.5)
    reg.gauge(
        "edgeward_http_server_active_requests",
        "Active.",
        ("protocol",),
        unit="{request}",
        const=const,
        otlp_name="http.server.active_requests",
    ).set(("2",), 3)
    reg.counter("edgeward_empty_total", "Nothing yet.", ("x",))
    requests.collect(reg)
    start, now = 1_700_000_000_000_000_000, 1_700_000_030_000_000_000
    resource = {"service.name": "edge-test", "service.instance.id": "w1", "host.ports": (443, 8443)}
    payload = encode_metrics(reg, resource, start, now)

    request = ExportMetricsServiceRequest.FromString(payload)
    (rm,) = request.resource_metrics
    assert _attrs(rm.resource.attributes) == {
        "service.name": "edge-test",
        "service.instance.id": "w1",
        "host.ports": [443, 8443],
    }
    (sm,) = rm.scope_metrics
    assert (sm.scope.name, sm.scope.version) == ("edgeward", ingress.__version__)
    metrics = {m.name: m for m in sm.metrics}
    assert "edgeward_empty" not in metrics  # no data points, no metric
    # Families with no data points are left out: nothing counted yet, and no cache status in these records.
    assert set(metrics) == {
        "edgeward_connections",
        "edgeward_odd",
        "http.server.active_requests",
        "http.server.request.duration",
    }

    conns = metrics["edgeward_connections"]
    assert conns.WhichOneof("data") == "sum"
    assert conns.sum.is_monotonic
    assert conns.sum.aggregation_temporality == AGGREGATION_TEMPORALITY_CUMULATIVE
    (point,) = conns.sum.data_points
    assert point.WhichOneof("value") == "as_int" and point.as_int == 42
    assert (point.start_time_unix_nano, point.time_unix_nano) == (start, now)
    assert _attrs(point.attributes) == {"worker": "1"}
    (odd,) = metrics["edgeward_odd"].sum.data_points
    assert odd.WhichOneof("value") == "as_double" and odd.as_double == 0.5
    assert _attrs(odd.attributes) == {"worker": "1", "kind": "half"}

    active = metrics["http.server.active_requests"]
    assert active.WhichOneof("data") == "gauge"
    assert active.unit == "{request}"
    (level,) = active.gauge.data_points
    assert level.as_int == 3 and level.time_unix_nano == now
    assert _attrs(level.attributes) == {"worker": "1", "protocol": "2"}

    duration = metrics["http.server.request.duration"]
    assert duration.WhichOneof("data") == "histogram"
    assert duration.unit == "s"
    assert duration.histogram.aggregation_temporality == AGGREGATION_TEMPORALITY_CUMULATIVE
    points = {_attrs(p.attributes)["route"]: p for p in duration.histogram.data_points}
    api = points["/api"]
    assert _attrs(api.attributes) == {"worker": "1", "route": "/api", "status_class": "2xx", "protocol": "1.1"}
    assert list(api.explicit_bounds) == list(BOUNDS)
    assert len(api.bucket_counts) == len(BOUNDS) + 1
    assert api.count == 3 == sum(api.bucket_counts)
    assert api.bucket_counts[0] == 1  # 0.2 ms
    assert api.bucket_counts[BOUNDS.index(0.5)] == 1  # 300 ms: (0.25, 0.5]
    assert api.bucket_counts[-1] == 1  # 30 s: beyond the last bound
    assert api.sum == pytest.approx(30.3002)
    assert (api.start_time_unix_nano, api.time_unix_nano) == (start, now)
    assert points["unmatched"].count == 1


# --------------------------------------------------------------------------- the real edge


def scrape(server: Server) -> dict[str, Parsed]:
    reply = httpx.get(server.admin_url("/metrics"), timeout=5)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_exposition(reply.text)


def routes_config(site: Path, cert: Issued) -> dict[str, Any]:
    config = base_config(site, cert)
    config["routes"] = [{"path": "/sub", "static": {"root": str(site)}}]
    return config


@pytest.fixture
def edge(start_server: Callable[..., Server], site: Path, localhost_cert: Issued) -> Server:
    return start_server(routes_config(site, localhost_cert))


@pytest.fixture
def https(ca: CA) -> Iterator[Callable[[bool], httpx.Client]]:
    made: list[httpx.Client] = []

    def make(http2: bool = False) -> httpx.Client:
        client = httpx.Client(verify=ssl.create_default_context(cafile=str(ca.pem)), http2=http2, timeout=10)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def tls_url(server: Server, path: str) -> str:
    return server.url("https", path).replace("127.0.0.1", "localhost")


def test_admin_metrics_parse_strictly_and_count_what_was_served(
    edge: Server, https: Callable[[bool], httpx.Client], ca: CA
) -> None:
    before = scrape(edge)
    ok = tls_url(edge, "/sub/index.html")
    h1 = https(False)
    assert [h1.get(ok).status_code for _ in range(3)] == [200, 200, 200]
    h2 = https(True)
    assert [h2.get(ok).http_version for _ in range(2)] == ["HTTP/2", "HTTP/2"]
    with httpx.Client(transport=H3Transport(str(ca.pem)), timeout=10) as h3:
        assert h3.get(ok).http_version == "HTTP/3"
    assert httpx.get(edge.url("http", "/nothing-routes-here"), timeout=5).status_code == 404
    with socket.create_connection(edge.address("https"), timeout=5) as raw:  # plain HTTP to the TLS port
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.recv(100)

    def failures(fams: dict[str, Parsed]) -> float:
        return fams["edgeward_tls_handshake_failures_total"].value(worker="0", reason="not_tls")

    wait_for(lambda: failures(scrape(edge)) == failures(before) + 1, 5, "the not_tls failure counted")
    after = scrape(edge)
    assert after["edgeward_responses_total"].kind == "counter"

    def answered(fams: dict[str, Parsed], cls: str) -> float:
        return fams["edgeward_responses_total"].value(worker="0", **{"class": cls})

    # Ours, plus the admin's answers to the scrapes since `before` (each counted once it is sent).
    assert answered(after, "2xx") - answered(before, "2xx") >= 6 + 1
    assert answered(after, "4xx") - answered(before, "4xx") == 1
    assert after["edgeward_connections_open"].kind == "gauge"
    assert after["edgeward_connections_total"].value(worker="0") >= before["edgeward_connections_total"].value() + 4
    assert after["edgeward_quic_events_total"].value(kind="handshakes") >= 1
    # Two TLS connections over TCP (h1, h2) completed their handshakes; the plain-HTTP probe did not.
    handshakes = after["edgeward_tls_handshakes_total"]
    assert handshakes.value(worker="0") - before["edgeward_tls_handshakes_total"].value(worker="0") == 2
    assert after["edgeward_quic_connections_open"].kind == "gauge"
    reasons = {dict(labels)["reason"] for _, labels in after["edgeward_tls_handshake_failures_total"].samples}
    assert {"not_tls", "no_client_cert", "other"} <= reasons  # every reason is listed, zeros too
    assert after["edgeward_cert_reloads_total"].value(listener="https") == 0
    assert after["edgeward_connections_refused_total"].value(reason="per_ip_cap") == 0
    active = after["edgeward_http_server_active_requests"]
    assert active.kind == "gauge"
    assert {dict(labels)["protocol"] for _, labels in active.samples} == {"1.1", "2", "3"}
    for fam in after.values():
        assert fam.help, f"{fam.name} has no HELP"
        assert fam.kind != "untyped", f"{fam.name} has no TYPE"


def test_active_requests_follow_stalled_downloads(edge: Server, ca: CA, site: Path) -> None:
    """A download the client stops reading stays in flight: one on HTTP/1.1, one stream on HTTP/2."""
    (site / "sub" / "big.bin").write_bytes(bytes(range(256)) * 4096 * 4)  # 4 MiB

    def active() -> dict[str, float]:
        fam = scrape(edge)["edgeward_http_server_active_requests"]
        return {dict(labels)["protocol"]: v for (_, labels), v in fam.samples.items()}

    assert active() == {"1.1": 0, "2": 0, "3": 0}
    h1 = socket.socket()
    h1.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    h1.settimeout(5)
    h1.connect(edge.address("http"))
    h1.sendall(b"GET /sub/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
    h2 = H2Client.tls(edge.address("https"), h2_context(ca.pem), auto_window=False)
    try:
        h2.request("/sub/big.bin")
        wait_for(lambda: active() == {"1.1": 1, "2": 1, "3": 0}, 5, "one stalled request per protocol")
    finally:
        h1.close()
        h2.close()
    wait_for(lambda: active() == {"1.1": 0, "2": 0, "3": 0}, 5, "nothing in flight once the clients left")


def test_request_duration_histogram_counts_by_route_class_and_protocol(
    edge: Server, https: Callable[[bool], httpx.Client], ca: CA
) -> None:
    ok = tls_url(edge, "/sub/index.html")
    h1, h2 = https(False), https(True)
    for _ in range(3):
        assert h1.get(ok).status_code == 200
    for _ in range(2):
        assert h2.get(ok).http_version == "HTTP/2"
    with httpx.Client(transport=H3Transport(str(ca.pem)), timeout=10) as h3:
        assert h3.get(ok).http_version == "HTTP/3"
    assert h2.get(tls_url(edge, "/elsewhere")).status_code == 404

    def duration() -> Parsed:
        return scrape(edge)["edgeward_http_server_request_duration_seconds"]

    def counted() -> bool:
        fam = duration()
        return (
            fam.total("_count", route="/sub", status_class="2xx", protocol="1.1") == 3
            and fam.total("_count", route="/sub", status_class="2xx", protocol="2") == 2
            and fam.total("_count", route="/sub", status_class="2xx", protocol="3") == 1
            and fam.total("_count", route="unmatched", status_class="4xx", protocol="2") == 1
        )

    wait_for(counted, 5, "the requests in the duration histogram")
    fam = duration()
    assert fam.kind == "histogram"
    for protocol, n in (("1.1", 3), ("2", 2), ("3", 1)):
        labels = {"worker": "0", "route": "/sub", "status_class": "2xx", "protocol": protocol}
        assert fam.total("_bucket", le="+Inf", **labels) == n
        assert 0 < fam.total("_sum", **labels) < 10 * n
        assert fam.total("_bucket", le="10.0", **labels) == n  # a local static file takes well under 10 s


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


def test_cache_and_upstream_families(
    start_server: Callable[..., Server], site: Path, localhost_cert: Issued, origin: Origin
) -> None:
    config = base_config(site, localhost_cert)
    config["upstreams"] = [{"name": "app", "origins": [origin.url], "retries": 0}]
    config["routes"] = [{"path": "/", "proxy": {"upstream": "app", "cache": True}}]
    config["cache"] = {"max_bytes": 1 << 20, "max_object_bytes": 64 * 1024}
    edge = start_server(config)
    path = f"/cache?t=metrics-{time.monotonic_ns()}&cc=max-age%3D60"
    for _ in range(2):
        assert httpx.get(edge.url("http", path), timeout=10).status_code == 200

    def fams() -> dict[str, Parsed]:
        return scrape(edge)

    wait_for(lambda: fams()["edgeward_cache_lookups_total"].value(result="hit") >= 1, 5, "a cache hit")
    got = fams()
    assert got["edgeward_cache_lookups_total"].value(worker="0", result="miss") >= 1
    assert got["edgeward_cache_entries"].kind == "gauge"
    assert got["edgeward_upstream_requests_total"].value(worker="0", upstream="app") >= 1
    assert got["edgeward_upstream_origins_healthy"].value(worker="0", upstream="app") == 1
    assert got["edgeward_upstream_origin_up"].value(upstream="app", origin=origin.url) == 1
    assert got["edgeward_upstream_ejections_total"].value(upstream="app", origin=origin.url) == 0
    assert got["edgeward_upstream_ejections_total"].kind == "counter"
    assert got["edgeward_upstream_connections_idle"].kind == "gauge"

    def responses() -> dict[str, float]:
        fam = fams().get("edgeward_cache_responses_total")
        return {dict(labels)["status"]: v for (_, labels), v in fam.samples.items()} if fam else {}

    wait_for(lambda: responses().get("hit") == 1 and responses().get("miss") == 1, 5, "cache statuses counted")


def test_the_start_up_heap_is_frozen_and_collector_passes_are_counted(edge: Server) -> None:
    fams = scrape(edge)
    frozen = fams["edgeward_gc_frozen_objects"]
    assert frozen.kind == "gauge"
    # Modules, config, TLS contexts and routes: about 50,000 objects here, none if nothing froze them.
    assert frozen.value(worker="0") > 20_000
    passes = fams["edgeward_gc_collections_total"]
    assert passes.kind == "counter"
    by_generation = {dict(labels)["generation"]: n for (_, labels), n in passes.samples.items()}
    assert set(by_generation) == {"0", "1", "2"}
    assert by_generation["0"] >= by_generation["1"] >= by_generation["2"]
