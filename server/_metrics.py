"""A small Prometheus registry: counters, gauges and histograms with labels, rendered
in the text exposition format 0.0.4 for ``GET /metrics``.

There is deliberately no module-level default registry: the application creates one
`Registry` and passes it to every component, so tests get a fresh one each. Hot paths
resolve a labelled child once (``child = counter.labels("h2")``) and then call
``child.inc()``, which is one attribute addition: trio runs one task at a time, so no
lock is needed.
"""

from __future__ import annotations

import abc
import bisect
import math
import re
from typing import TypeVar
from collections.abc import Callable, Iterable, Mapping, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

_MetricT = TypeVar("_MetricT", bound="_Metric")
SampleCallback = Callable[[], float | Mapping[tuple[str, ...], float]]


def _format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{n}="{_escape_label_value(v)}"' for n, v in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Metric(abc.ABC):
    """What every metric shares: a name, a help text and label names."""

    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str]) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_RE.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for metric {name!r}")
        self.name = name
        self.help_text = help_text
        self.labelnames = tuple(labelnames)

    def _key(self, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(values) != len(self.labelnames):
            raise ValueError(
                f"metric {self.name!r} takes labels {self.labelnames}, got {len(values)} values"
            )
        return tuple(str(v) for v in values)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help_text)}", f"# TYPE {self.name} {self.kind}"]

    @abc.abstractmethod
    def render_lines(self) -> list[str]:
        """The HELP and TYPE lines and one line per sample."""


def _sample(metric: _Metric, callback: SampleCallback) -> list[tuple[tuple[str, ...], float]]:
    result = callback()
    if isinstance(result, Mapping):
        return [(metric._key(tuple(key)), value) for key, value in result.items()]
    return [(metric._key(()), result)]


def _value_of(
    metric: _Metric, series: Iterable[tuple[tuple[str, ...], float]], values: tuple[str, ...]
) -> float:
    wanted = metric._key(values)
    for key, value in series:
        if key == wanted:
            return value
    return 0


def _render_series(metric: _Metric, series: Iterable[tuple[tuple[str, ...], float]]) -> list[str]:
    lines = metric._header()
    for key, value in series:
        lines.append(f"{metric.name}{_label_text(metric.labelnames, key)} {_format_value(value)}")
    return lines


class CounterChild:
    """One labelled series of a counter; ``inc`` is the hot-path operation."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (never negative: a counter only goes up)."""
        self.value += amount


class Counter(_Metric):
    """A value that only goes up, such as requests served or bytes sent.

    With a ``callback`` the counter holds no state: the callback reads a total kept
    elsewhere (a protocol object's statistics) at render time, returning a number (no
    labels) or a mapping from label-value tuples to numbers.
    """

    kind = "counter"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str],
        callback: SampleCallback | None = None,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.callback = callback
        self._children: dict[tuple[str, ...], CounterChild] = {}

    def labels(self, *values: str) -> CounterChild:
        """The series for these label values (in the order of ``labelnames``), created
        on first use; cache it on hot paths."""
        if self.callback is not None:
            raise TypeError(f"counter {self.name!r} is computed by a callback")
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = CounterChild()
        return child

    def inc(self, amount: float = 1) -> None:
        """Increment the series of a counter that has no labels."""
        self.labels().inc(amount)

    def _series(self) -> Iterable[tuple[tuple[str, ...], float]]:
        if self.callback is None:
            return ((key, child.value) for key, child in self._children.items())
        return _sample(self, self.callback)

    def value(self, *values: str) -> float:
        """The current value of one series (0 when it was never incremented)."""
        return _value_of(self, self._series(), values)

    def render_lines(self) -> list[str]:
        return _render_series(self, self._series())


class GaugeChild:
    """One labelled series of a gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class Gauge(_Metric):
    """A value that goes up and down, such as open connections.

    With a ``callback`` the gauge holds no state: the callback is evaluated at render
    time and returns a number (no labels) or a mapping from label-value tuples to numbers.
    """

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str],
        callback: SampleCallback | None = None,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.callback = callback
        self._children: dict[tuple[str, ...], GaugeChild] = {}

    def labels(self, *values: str) -> GaugeChild:
        """The series for these label values, created on first use."""
        if self.callback is not None:
            raise TypeError(f"gauge {self.name!r} is computed by a callback")
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = GaugeChild()
        return child

    def set(self, value: float) -> None:
        self.labels().set(value)

    def inc(self, amount: float = 1) -> None:
        self.labels().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self.labels().dec(amount)

    def _series(self) -> Iterable[tuple[tuple[str, ...], float]]:
        if self.callback is None:
            return ((key, child.value) for key, child in self._children.items())
        return _sample(self, self.callback)

    def value(self, *values: str) -> float:
        """The current value of one series (0 when it was never set)."""
        return _value_of(self, self._series(), values)

    def render_lines(self) -> list[str]:
        return _render_series(self, self._series())


class HistogramChild:
    """One labelled series of a histogram; counts are kept per bucket and made
    cumulative only when rendered, so ``observe`` is a bisect and two additions."""

    __slots__ = ("_upper_bounds", "bucket_counts", "count", "sum")

    def __init__(self, upper_bounds: tuple[float, ...]) -> None:
        self._upper_bounds = upper_bounds
        # One slot per bound plus the implicit +Inf bucket.
        self.bucket_counts = [0] * (len(upper_bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le is inclusive).
        self.bucket_counts[bisect.bisect_left(self._upper_bounds, value)] += 1
        self.count += 1
        self.sum += value


class Histogram(_Metric):
    """A distribution, such as request latency, counted into fixed buckets."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help_text, labelnames)
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise ValueError(f"histogram {name!r} needs strictly increasing buckets, got {buckets!r}")
        if math.isinf(bounds[-1]):
            bounds = bounds[:-1]
        self.buckets = bounds
        self._children: dict[tuple[str, ...], HistogramChild] = {}

    def labels(self, *values: str) -> HistogramChild:
        """The series for these label values, created on first use."""
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = HistogramChild(self.buckets)
        return child

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def render_lines(self) -> list[str]:
        lines = self._header()
        for key, child in self._children.items():
            cumulative = 0
            for bound, bucket_count in zip((*self.buckets, math.inf), child.bucket_counts):
                cumulative += bucket_count
                le = f'le="{_format_value(bound)}"'
                lines.append(f"{self.name}_bucket{_label_text(self.labelnames, key, le)} {cumulative}")
            labels = _label_text(self.labelnames, key)
            lines.append(f"{self.name}_sum{labels} {_format_value(child.sum)}")
            lines.append(f"{self.name}_count{labels} {child.count}")
        return lines


class Registry:
    """The metrics of one server process, in registration order.

    ``counter``, ``gauge`` and ``histogram`` return the existing metric when asked again
    for the same name with the same kind and labels, so two components (or two listeners
    started in one test) can share a series; a clash in kind or labels is a ValueError.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _register(self, metric: _MetricT) -> _MetricT:
        existing = self._metrics.get(metric.name)
        if existing is None:
            self._metrics[metric.name] = metric
            return metric
        if not isinstance(existing, type(metric)) or existing.labelnames != metric.labelnames:
            raise ValueError(f"metric {metric.name!r} is already registered differently")
        if isinstance(existing, Histogram) and existing.buckets != metric.buckets:  # type: ignore[attr-defined]
            raise ValueError(f"histogram {metric.name!r} is already registered with other buckets")
        if isinstance(existing, (Counter, Gauge)) and (existing.callback or metric.callback):  # type: ignore[attr-defined]
            # Two callbacks for one series cannot both be right.
            raise ValueError(f"{metric.kind} {metric.name!r} with a callback can be registered only once")
        return existing

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        """A counter; by Prometheus convention its name ends in ``_total``."""
        return self._register(Counter(name, help_text, labelnames))

    def counter_callback(
        self, name: str, help_text: str, labelnames: Sequence[str] = (), *, callback: SampleCallback
    ) -> Counter:
        """A counter whose total is kept elsewhere and read by ``callback`` at render time."""
        return self._register(Counter(name, help_text, labelnames, callback))

    def gauge(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        *,
        callback: SampleCallback | None = None,
    ) -> Gauge:
        """A gauge, set by the caller or computed by ``callback`` at render time."""
        return self._register(Gauge(name, help_text, labelnames, callback))

    def histogram(
        self, name: str, help_text: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> Histogram:
        """A histogram with these upper bounds; the +Inf bucket is implicit."""
        return self._register(Histogram(name, help_text, labelnames, buckets))

    def get(self, name: str) -> _Metric | None:
        """The metric registered under ``name``, for tests and status pages."""
        return self._metrics.get(name)

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format 0.0.4 (serve it with
        `CONTENT_TYPE`)."""
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render_lines())
        return "\n".join(lines) + "\n"
