"""Metric families: one model behind the admin `/metrics` text and the OTLP metrics export.

Counts live where they are bumped (plain ints in `Stats`, the cache, the
upstream pools, the TLS failure table) and cost nothing until someone
asks. A scrape or an OTLP export then gathers them into typed families
here, so both outputs show the same numbers under the same names, and the
text format's rules (HELP and TYPE once, a family's samples together,
label values escaped, cumulative buckets) are kept in one renderer rather
than in every module that has something to count.

Request latency is the exception: it is a distribution, not a count, so
`RequestMetrics` keeps histograms itself, fed from the batches of
request-path tuples the telemetry timer drains, never from the request path.

Every family holds at most `LIMIT` label sets of its own. Label values that
come from traffic or configuration (routes, origins, providers) could
otherwise grow a family without bound; past the limit a new label set is
folded into one set whose values are all "other", and the sets folded are
reported (`edgeward_metrics_folded_label_sets`) so that an operator learns
the limit was reached instead of reading silently merged numbers.
"""

from __future__ import annotations

import collections
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate, compress, repeat
from operator import is_, sub
from typing import Any, ClassVar, Final, Generic, TypeVar, cast

from ingress.telemetry.record import P_CACHE, P_END, P_PROTOCOL, P_ROUTE, P_START, P_STATUS, Columns

# Upper bounds (seconds) of the request-duration buckets; an implicit +Inf bucket follows.
BOUNDS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BOUNDS_NS: Final = tuple(round(bound * 1e9) for bound in BOUNDS)
SORTED_CELLS: Final = 8
LIMIT: Final = 64  # label sets per family with a series of their own
OTHER: Final = "other"
# Distinct folded label sets remembered per family, so the report of them is bounded too.
FOLD_MEMORY: Final = 1024

Number = int | float
Key = tuple[str, ...]
ConstLabels = tuple[tuple[str, str], ...]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

S = TypeVar("S")


class Family(Generic[S]):
    """One metric: its name, what it means, its label names, and a sample per label-value tuple.

    `const` labels (the worker index) are the same on every sample: they are
    written first and are not part of the keys, so recording costs nothing
    for them. `otlp_name` is the OpenTelemetry name where a semantic
    convention defines one; otherwise OTLP uses the Prometheus name.
    """

    kind: ClassVar[str]

    __slots__ = ("_folded", "_overflow", "const", "help", "labels", "limit", "name", "otlp_name", "samples", "unit")

    def __init__(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...] = (),
        *,
        unit: str = "",
        const: ConstLabels = (),
        otlp_name: str = "",
        limit: int = LIMIT,
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in (*labels, *(k for k, _ in const)):
            if not _LABEL.match(label) or label.startswith("__") or (label == "le" and self.kind == "histogram"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len({*labels, *(k for k, _ in const)}) != len(labels) + len(const):
            raise ValueError(f"duplicate label names for {name}")
        self.name = name
        self.help = help
        self.labels = labels
        self.unit = unit
        self.const = const
        self.otlp_name = otlp_name
        self.limit = limit
        self.samples: dict[Key, S] = {}
        self._overflow: Key = (OTHER,) * len(labels)
        self._folded: set[Key] = set()

    @property
    def folded(self) -> int:
        """Distinct label sets folded into "other" (counted up to FOLD_MEMORY)."""
        return len(self._folded)

    @property
    def otlp(self) -> str:
        """The name this family has in OTLP."""
        return self.otlp_name or self.name

    def _key(self, values: Key) -> tuple[Key, bool]:
        """Where a label set not yet in `samples` is stored, and whether that is the folded set."""
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {values}")
        if len(self.samples) < self.limit or values == self._overflow:
            return values, False
        if len(self._folded) < FOLD_MEMORY:
            self._folded.add(values)
        return self._overflow, True


class Counter(Family[Number]):
    """A count that only goes up (until the worker restarts)."""

    kind = "counter"
    __slots__ = ()

    @property
    def otlp(self) -> str:
        # OpenTelemetry names carry no `_total`; a Prometheus receiver adds it back to a monotonic sum.
        return self.otlp_name or self.name.removesuffix("_total")

    def inc(self, values: Key = (), n: Number = 1) -> None:
        samples = self.samples
        if values in samples:
            samples[values] += n
            return
        key, _ = self._key(values)
        samples[key] = samples.get(key, 0) + n

    def set(self, values: Key, total: Number) -> None:
        """Report a total kept elsewhere; in a snapshot, totals folded into "other" add up."""
        samples = self.samples
        if values in samples:
            samples[values] = total
            return
        key, folded = self._key(values)
        samples[key] = samples.get(key, 0) + total if folded else total


class Gauge(Family[Number]):
    """A level that goes up and down: connections open, origins healthy."""

    kind = "gauge"
    __slots__ = ()

    def set(self, values: Key, value: Number) -> None:
        """Report a level; in a snapshot, levels folded into "other" add up."""
        samples = self.samples
        if values in samples:
            samples[values] = value
            return
        key, folded = self._key(values)
        samples[key] = samples.get(key, 0) + value if folded else value

    def add(self, values: Key, delta: Number) -> None:
        samples = self.samples
        if values in samples:
            samples[values] += delta
            return
        key, _ = self._key(values)
        samples[key] = samples.get(key, 0) + delta


def _count_sorted(cell: Buckets, durations: list[int]) -> None:
    """Add ascending durations (nanoseconds) to `cell`: each bucket's count is where its bound cuts them."""
    counts = cell.counts
    done = 0
    for i, bound in enumerate(BOUNDS_NS):
        cut = bisect_right(durations, bound, done)  # a duration on a bound counts in that bound's bucket
        counts[i] += cut - done
        done = cut
    counts[-1] += len(durations) - done
    cell.sum += sum(durations) * 1e-9


class Buckets:
    """One label set's distribution: a count per bucket (not cumulative), and the sum of the values."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        return list(accumulate(self.counts))


class Histogram(Family[Buckets]):
    """Values (seconds) counted into the fixed buckets of BOUNDS, as Prometheus and OTLP both expect."""

    kind = "histogram"
    bounds: ClassVar[tuple[float, ...]] = BOUNDS
    __slots__ = ()

    def cell(self, values: Key) -> Buckets:
        """The buckets of a label set, made (or folded) on first use."""
        found = self.samples.get(values)
        if found is not None:
            return found
        key, _ = self._key(values)
        found = self.samples.get(key)
        if found is None:
            found = self.samples[key] = Buckets()
        return found

    def observe(self, values: Key, value: float) -> None:
        """Count one value; a value on a bound falls in that bound's bucket (`le` is inclusive)."""
        cell = self.samples.get(values)
        if cell is None:
            cell = self.cell(values)
        cell.counts[bisect_left(BOUNDS, value)] += 1
        cell.sum += value


AnyFamily = Family[Any]
F = TypeVar("F", bound=AnyFamily)


class Registry:
    """The families of one collection, by name, in the order they were first asked for.

    Several sources may fill one family (each listener's certificate store
    adds its own series to `edgeward_cert_reloads_total`), so `counter` and
    `gauge` return the family of that name if there is one.
    """

    def __init__(self) -> None:
        self._families: dict[str, AnyFamily] = {}

    def counter(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...] = (),
        *,
        unit: str = "",
        const: ConstLabels = (),
        otlp_name: str = "",
    ) -> Counter:
        return self._get(Counter, name, help, labels, unit, const, otlp_name)

    def gauge(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...] = (),
        *,
        unit: str = "",
        const: ConstLabels = (),
        otlp_name: str = "",
    ) -> Gauge:
        return self._get(Gauge, name, help, labels, unit, const, otlp_name)

    def _get(
        self,
        cls: type[F],
        name: str,
        help: str,
        labels: tuple[str, ...],
        unit: str,
        const: ConstLabels,
        otlp_name: str,
    ) -> F:
        found = self._families.get(name)
        if found is None:
            family = cls(name, help, labels, unit=unit, const=const, otlp_name=otlp_name)
            self._families[name] = family
            return family
        if not isinstance(found, cls) or found.labels != labels or found.const != const:
            raise ValueError(f"metric {name} asked for as two different families")
        return found

    def add(self, family: AnyFamily) -> None:
        """Include a family kept elsewhere (request histograms, exporter counters)."""
        if family.name in self._families:
            raise ValueError(f"metric {family.name} added twice")
        self._families[family.name] = family

    def __iter__(self) -> Iterator[AnyFamily]:
        return iter(self._families.values())

    def __len__(self) -> int:
        return len(self._families)


def folded_family(families: Iterable[AnyFamily], const: ConstLabels = ()) -> Gauge:
    """How many label sets each family folded into "other"; a series only for families that did."""
    gauge = Gauge(
        "edgeward_metrics_folded_label_sets",
        f"Label sets merged into the 'other' series because their family already had {LIMIT} of its own.",
        ("family",),
        const=const,
        limit=1 << 30,  # one series per family at most: bounded by the code, not by traffic
    )
    for family in families:
        if family.folded:
            gauge.set((family.name,), family.folded)
    return gauge


# Prometheus text exposition format 0.0.4 ---------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: Number) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:  # noqa: PLR0124 - NaN is the one value not equal to itself
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


_LE = (*(f'le="{bound!r}"' for bound in BOUNDS), 'le="+Inf"')


def prometheus_text(families: Iterable[AnyFamily]) -> str:
    """The families as Prometheus text (version 0.0.4): HELP and TYPE once each, then every sample."""
    out: list[str] = []
    for family in families:
        name = family.name
        out.append(f"# HELP {name} {_escape_help(family.help)}")
        out.append(f"# TYPE {name} {family.kind}")
        const = [f'{k}="{_escape_label(v)}"' for k, v in family.const]
        names = family.labels
        for key, sample in family.samples.items():
            pairs = const + [f'{k}="{_escape_label(v)}"' for k, v in zip(names, key, strict=True)]
            if isinstance(sample, Buckets):
                for le, n in zip(_LE, sample.cumulative(), strict=True):
                    out.append(f"{name}_bucket{{{','.join([*pairs, le])}}} {n}")
                labels = "{" + ",".join(pairs) + "}" if pairs else ""
                out.append(f"{name}_sum{labels} {_number(sample.sum)}")
                out.append(f"{name}_count{labels} {sample.count}")
            else:
                labels = "{" + ",".join(pairs) + "}" if pairs else ""
                out.append(f"{name}{labels} {_number(sample)}")
    return "\n".join(out) + "\n"


# request metrics -------------------------------------------------------------------------------

_CLASSES = tuple(f"{n}xx" for n in range(10))
MEMO_SIZE: Final = 4096


class RequestMetrics:
    """Request latency by route, status class and protocol, and responses by cache status.

    Fed by `observe` with the batch the telemetry timer drains, so a request
    pays nothing for it; per record it is a few dict lookups and a bisect.
    Auth decisions are not counted here: the gate counts them as it decides
    (`Stats.auth`), and counting them again from the records would say the
    same thing twice.
    """

    def __init__(self, worker: int = 0) -> None:
        const = (("worker", str(worker)),)
        self.duration = Histogram(
            "edgeward_http_server_request_duration_seconds",
            "Time from the first byte of a request to the last byte of its answer.",
            ("route", "status_class", "protocol"),
            unit="s",
            const=const,
            otlp_name="http.server.request.duration",
            # Routes come from the config, times 5 status classes and 4 protocol versions.
            limit=1024,
        )
        self.cache = Counter(
            "edgeward_cache_responses_total",
            "Answers on cached routes by cache status (hit, stale, revalidated, miss, bypass).",
            ("status",),
            const=const,
        )
        # (route, status, protocol) as recorded -> its buckets: one lookup per record instead of
        # working out the status class and the label tuple each time. Cleared if it ever grows large.
        self._memo: dict[tuple[str, int, str], Buckets] = {}

    def observe(self, batch: Columns) -> None:
        """Count one tick's requests, given as columns of their request-path tuples (see `record.columns`).

        Durations come from the request path's own start and end (wall-clock nanoseconds, the
        span's times), so there is no record to build; a clock stepped back counts as zero.
        A tick's requests fall in a few cells (route, status, protocol), so each cell's durations
        are sorted and cut at the bucket bounds, all in C; a tick spread over more cells than
        `SORTED_CELLS` is counted one request at a time instead.
        """
        if not batch:
            return
        routes, statuses, protocols = batch[P_ROUTE], batch[P_STATUS], batch[P_PROTOCOL]
        memo = self._memo
        found = list(map(memo.get, zip(routes, statuses, protocols, strict=True)))
        if None in found:
            for i, cell in enumerate(found):
                if cell is None:
                    found[i] = self._cell(routes[i], statuses[i], protocols[i])
        cells = cast("list[Buckets]", found)
        durations = list(map(sub, batch[P_END], batch[P_START]))
        if min(durations) < 0:  # the wall clock was stepped back meanwhile
            durations = [max(ns, 0) for ns in durations]
        distinct = set(cells)
        if len(distinct) == 1:
            _count_sorted(cells[0], sorted(durations))
        elif len(distinct) <= SORTED_CELLS:
            for cell in distinct:
                _count_sorted(cell, sorted(compress(durations, map(is_, cells, repeat(cell)))))
        else:
            for cell, ns in zip(cells, durations, strict=True):
                cell.counts[bisect_left(BOUNDS_NS, ns)] += 1
                cell.sum += ns * 1e-9
        caches = batch[P_CACHE]
        if caches.count("") != len(caches):
            for status_text, n in collections.Counter(caches).items():
                if status_text:
                    self.cache.inc((status_text,), n)

    def _cell(self, route: str, status: int, protocol: str) -> Buckets:
        memo = self._memo
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        cls = status // 100
        key = (route or "unmatched", _CLASSES[cls] if 0 <= cls < 10 else OTHER, protocol)
        cell = memo[route, status, protocol] = self.duration.cell(key)
        return cell

    def collect(self, into: Registry) -> None:
        into.add(self.duration)
        into.add(self.cache)


# the worker's families ---------------------------------------------------------------------------

Source = Callable[[Registry], None]
