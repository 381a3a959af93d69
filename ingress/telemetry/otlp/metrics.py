"""A worker's metric families as one OTLP `ExportMetricsServiceRequest`.

Metrics go out every half minute or so, a few hundred data points at a
time, so this uses the opentelemetry-proto classes rather than the
hand-written wire encoders the spans need. Everything is cumulative since
the worker started (`start_ns`): counters become monotonic Sums, request
latency an explicit-bucket Histogram with the same bounds as the
Prometheus one, levels Gauges. A collector that misses an export loses
nothing, the next one carries the totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
)

import ingress
from ingress.telemetry.metrics import AnyFamily, Buckets, Counter, Gauge, Histogram, Number
from ingress.telemetry.otlp.wire import AttributeValue, Scalar

SCOPE = "edgeward"


def encode_metrics(
    families: Iterable[AnyFamily], resource: Mapping[str, AttributeValue], start_ns: int, now_ns: int
) -> bytes:
    """Serialized ExportMetricsServiceRequest for `families` at `now_ns`; families without samples are left out."""
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    _attributes(resource_metrics.resource.attributes, resource.items())
    scope_metrics = resource_metrics.scope_metrics.add()
    scope_metrics.scope.name = SCOPE
    scope_metrics.scope.version = ingress.__version__
    for family in families:
        if family.samples:
            _metric(scope_metrics.metrics.add(), family, start_ns, now_ns)
    payload: bytes = request.SerializeToString()
    return payload


def _metric(metric: Metric, family: AnyFamily, start_ns: int, now_ns: int) -> None:
    metric.name = family.otlp
    metric.description = family.help
    metric.unit = family.unit
    const = family.const
    labels = family.labels
    if isinstance(family, Histogram):
        histogram = metric.histogram
        histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
        for key, buckets in family.samples.items():
            hpoint = histogram.data_points.add()
            _attributes(hpoint.attributes, (*const, *zip(labels, key, strict=True)))
            hpoint.start_time_unix_nano = start_ns
            hpoint.time_unix_nano = now_ns
            _buckets(hpoint, buckets, family.bounds)
        return
    if isinstance(family, Counter):
        total = metric.sum
        total.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
        total.is_monotonic = True
        points, start = total.data_points, start_ns
    elif isinstance(family, Gauge):
        points, start = metric.gauge.data_points, 0  # a level has no start: it is not accumulated
    else:
        raise TypeError(f"no OTLP form for {type(family).__name__}")
    for key, value in family.samples.items():
        point = points.add()
        _attributes(point.attributes, (*const, *zip(labels, key, strict=True)))
        point.start_time_unix_nano = start
        point.time_unix_nano = now_ns
        _number(point, value)


def _buckets(point: HistogramDataPoint, buckets: Buckets, bounds: tuple[float, ...]) -> None:
    point.count = buckets.count
    point.sum = buckets.sum
    point.bucket_counts.extend(buckets.counts)
    point.explicit_bounds.extend(bounds)


def _number(point: NumberDataPoint, value: Number) -> None:
    if isinstance(value, int):
        point.as_int = value
    else:
        point.as_double = value


class _KeyValues(Protocol):
    """A repeated KeyValue field (protobuf's container types come without stubs)."""

    def add(self) -> KeyValue: ...


def _attributes(into: _KeyValues, pairs: Iterable[tuple[str, AttributeValue]]) -> None:
    for key, value in pairs:
        kv = into.add()
        kv.key = key
        _any(kv.value, value)


def _any(into: AnyValue, value: AttributeValue) -> None:
    if isinstance(value, str | bool | int | float):
        _scalar(into, value)
        return
    values = into.array_value.values
    for item in value:
        _scalar(values.add(), item)


def _scalar(into: AnyValue, value: Scalar) -> None:
    # bool before int: True is an int too.
    if isinstance(value, bool):
        into.bool_value = value
    elif isinstance(value, int):
        into.int_value = value
    elif isinstance(value, float):
        into.double_value = value
    else:
        into.string_value = value
