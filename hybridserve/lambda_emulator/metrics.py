"""The emulator's metrics: invokes, cold starts, throttles, errors, the bill, durations and
environments, as AWS's CloudWatch metrics for a function would show them (Invocations, Errors,
Throttles, Duration, ConcurrentExecutions), plus the billed GB-seconds.

Counted on the emulator's loop in plain ints; families are built at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import Metric

from hybridserve.pricing import lambda_gb_s
from predictors.prometheus import Histogram, counter, gauge, histogram

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COUNTS = ("invocations", "cold_starts", "throttles", "errors")


class EmulatorMetrics:
    """Counters since start; `stats()` is the JSON view, `families()` the Prometheus one."""

    def __init__(self, function_name: str, memory_mb: int) -> None:
        self.function_name = function_name
        self.memory_mb = memory_mb
        self.counts = dict.fromkeys(COUNTS, 0)
        self.billed_ms_total = 0
        self.gb_s_total = 0.0
        self.duration = Histogram(DURATION_BUCKETS)
        self.init_duration = Histogram(DURATION_BUCKETS)

    def invoked(self, duration_ms: float, init_ms: float | None, billed_ms: int, error: bool):
        self.counts["invocations"] += 1
        self.counts["errors"] += error
        self.billed_ms_total += billed_ms
        self.gb_s_total += lambda_gb_s(self.memory_mb, billed_ms)
        self.duration.observe(duration_ms / 1000.0)
        if init_ms is not None:
            self.init_duration.observe(init_ms / 1000.0)

    def stats(self, environments: int, busy: int) -> dict:
        return {
            **self.counts,
            "environments": environments,
            "busy": busy,
            "billed_ms_total": self.billed_ms_total,
            "gb_s_total": self.gb_s_total,
        }

    def families(self, environments: int, busy: int) -> Iterator[Metric]:
        fn = (self.function_name,)
        lab = ("function",)
        for key, doc in (
            ("invocations", "Invokes run (errors included, throttles not)."),
            ("cold_starts", "Invokes that started a new execution environment."),
            ("throttles", "Invokes refused at the concurrency limit (429)."),
            ("errors", "Invokes that ended in a function error."),
        ):
            yield counter(f"hybridserve_emulator_{key}", doc, [(fn, self.counts[key])], lab)
        yield counter(
            "hybridserve_emulator_billed_seconds",
            "Billed duration (1 ms granularity, init included on a cold start).",
            [(fn, self.billed_ms_total / 1000.0)],
            lab,
        )
        yield counter(
            "hybridserve_emulator_gb_seconds",
            "Billed GB-seconds (memory times billed duration).",
            [(fn, self.gb_s_total)],
            lab,
        )
        yield histogram(
            "hybridserve_emulator_duration_seconds",
            "Invoke duration in the handler (init excluded).",
            [(fn, self.duration.cumulative(), self.duration.sum)],
            lab,
        )
        yield histogram(
            "hybridserve_emulator_init_duration_seconds",
            "INIT phase of cold starts.",
            [(fn, self.init_duration.cumulative(), self.init_duration.sum)],
            lab,
        )
        yield gauge(
            "hybridserve_emulator_environments",
            "Execution environments alive or starting.",
            [(fn, environments)],
            lab,
        )
        yield gauge(
            "hybridserve_emulator_concurrent_executions",
            "Environments running an invoke.",
            [(fn, busy)],
            lab,
        )
