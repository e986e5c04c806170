"""Metrics on prometheus_client through custom collectors, shared by the model server, the router
and the Lambda emulator.

Why custom collectors: a `prometheus_client.Histogram.observe` takes a lock and walks the
buckets; the servers count on their event loop, so the hot path only adds to plain ints (a
bisect and two adds for a latency) and the metric families are built when `/metrics` is
scraped. Each server has its own registry: nothing lands in the process-global REGISTRY.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
Labels = Sequence[str]


class Histogram:
    """Bucket counts of one series; `observe` is a bisect and two adds (no lock: one loop)."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs ending with +Inf, as HistogramMetricFamily takes them."""
        out, acc = [], 0
        for le, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append((repr(float(le)), acc))
        out.append(("+Inf", self.count))
        return out


def counter(
    name: str, doc: str, samples: Iterable[tuple[Labels, float]], labels: Labels = ()
) -> CounterMetricFamily:
    """A counter family; `name` without `_total` (prometheus_client appends it)."""
    return _filled(CounterMetricFamily(name, doc, labels=labels), samples)


def gauge(
    name: str, doc: str, samples: Iterable[tuple[Labels, float]], labels: Labels = ()
) -> GaugeMetricFamily:
    return _filled(GaugeMetricFamily(name, doc, labels=labels), samples)


def _filled(fam, samples: Iterable[tuple[Labels, float]]):
    for values, v in samples:
        fam.add_metric(values, v)
    return fam


def histogram(
    name: str,
    doc: str,
    series: Iterable[tuple[Labels, list[tuple[str, float]], float]],
    labels: Labels = (),
) -> HistogramMetricFamily:
    """A histogram family from (label values, cumulative buckets, sum) per series."""
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, buckets, total in series:
        fam.add_metric(values, buckets, total)
    return fam


class Exposition:
    """One registry holding one collector: `render()` is the body of a `/metrics` reply."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.collect = collect
