"""The router's Prometheus metrics: arrivals, spills, queue depth, latency per path, fleet, cost."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from predictors.prometheus import Histogram, label, number

PATHS = ("fleet", "lambda", "retry", "rejected")


class RouterMetrics:
    """Counters updated on the event loop; `render` writes the text exposition format."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.arrivals = 0
        self.spills = 0
        self.retries = 0
        self.instance_failures = 0
        self.upstream_timeouts = 0  # requests an instance took but did not answer in time
        self.within_slo = 0
        self.slo_counted = 0  # responses that count for attainment (not client errors)
        self.lambda_invocations = 0
        self.lambda_rows = 0
        self.cold_starts = 0
        self.responses: dict[tuple[str, int], int] = {}
        # the control loop's cumulative counts (LiveLoop.stats), when one runs beside the router
        self.controller: dict[str, int] = {}
        self.latency = {p: Histogram() for p in PATHS}
        self._spills_seen = 0

    def request(self, path: str, status: int, seconds: float, slo_ms: float) -> None:
        self.arrivals += 1
        key = (path, status)
        self.responses[key] = self.responses.get(key, 0) + 1
        self.latency[path].observe(seconds)
        if not 400 <= status < 500:
            self.slo_counted += 1
            if status == 200 and seconds * 1000.0 <= slo_ms:
                self.within_slo += 1

    def lambda_invoke(self, rows: int, cold: bool) -> None:
        self.lambda_invocations += 1
        self.lambda_rows += rows
        self.cold_starts += cold

    def take_second_spills(self) -> int:
        """Spills since the last call (the router calls it once a second)."""
        n, self._spills_seen = self.spills - self._spills_seen, self.spills
        return n

    def lambda_usd_rate(self, lambda_usd: float) -> float:
        """Mean Lambda spend per second since the router started."""
        return lambda_usd / max(time.monotonic() - self.started, 1.0)

    @property
    def attainment(self) -> float:
        return self.within_slo / self.slo_counted if self.slo_counted else 1.0

    def render(
        self,
        *,
        ups: Sequence[Any],
        spill_pending: int,
        lambda_in_flight: int,
        usd_per_hour: float,
        batch: Any | None,
    ) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            for labels, v in samples:
                out.append(f"{name}{{{labels}}} {number(v)}" if labels else f"{name} {number(v)}")

        metric(
            "hybridserve_router_arrivals_total",
            "counter",
            "Inference requests received.",
            [("", self.arrivals)],
        )
        metric(
            "hybridserve_router_spills_total",
            "counter",
            "Requests sent to Lambda (spill and retries).",
            [("", self.spills)],
        )
        metric(
            "hybridserve_router_retries_total",
            "counter",
            "Requests retried after their instance failed or shed them.",
            [("", self.retries)],
        )
        metric(
            "hybridserve_router_instance_failures_total",
            "counter",
            "Instances that failed under a request (unreachable, or dropped it).",
            [("", self.instance_failures)],
        )
        metric(
            "hybridserve_router_upstream_timeouts_total",
            "counter",
            "Requests an instance took but did not answer within the upstream timeout (slow, "
            "kept in the fleet; the request is retried).",
            [("", self.upstream_timeouts)],
        )
        metric(
            "hybridserve_router_responses_total",
            "counter",
            "Responses by path (fleet, lambda, retry, rejected) and HTTP status.",
            [(f'path="{p}",code="{c}"', n) for (p, c), n in sorted(self.responses.items())],
        )
        metric(
            "hybridserve_router_slo_attainment",
            "gauge",
            "Share of requests (client errors aside) answered 200 within the SLO.",
            [("", self.attainment)],
        )
        out.append(
            "# HELP hybridserve_router_latency_seconds Request latency in the router, by path."
        )
        out.append("# TYPE hybridserve_router_latency_seconds histogram")
        for p, h in self.latency.items():
            out += h.lines("hybridserve_router_latency_seconds", f'path="{p}"')
        metric(
            "hybridserve_router_queue_depth",
            "gauge",
            "Requests in flight per instance.",
            [
                (
                    f'instance="{label(u.endpoint.instance_id)}",pool="{label(u.endpoint.pool)}"',
                    u.outstanding,
                )
                for u in ups
            ],
        )
        metric(
            "hybridserve_router_latency_correction",
            "gauge",
            "Observed over profiled latency, per instance.",
            [(f'instance="{label(u.endpoint.instance_id)}"', u.ratio) for u in ups],
        )
        pools: dict[str, int] = {}
        for u in ups:
            pools[u.endpoint.pool] = pools.get(u.endpoint.pool, 0) + 1
        metric(
            "hybridserve_fleet_size",
            "gauge",
            "Ready instances by pool.",
            [(f'pool="{label(k)}"', n) for k, n in sorted(pools.items())],
        )
        metric(
            "hybridserve_spill_pending",
            "gauge",
            "Spilled requests buffered or in flight to Lambda.",
            [("", spill_pending)],
        )
        metric(
            "hybridserve_lambda_in_flight",
            "gauge",
            "Lambda invocations in flight.",
            [("", lambda_in_flight)],
        )
        metric(
            "hybridserve_lambda_invocations_total",
            "counter",
            "Lambda invocations (one per batch).",
            [("", self.lambda_invocations)],
        )
        metric(
            "hybridserve_lambda_rows_total",
            "counter",
            "Requests carried by Lambda invocations.",
            [("", self.lambda_rows)],
        )
        metric(
            "hybridserve_lambda_cold_starts_total",
            "counter",
            "Lambda invocations that met a cold start.",
            [("", self.cold_starts)],
        )
        if batch is not None:
            metric(
                "hybridserve_spill_batch_size",
                "gauge",
                "The buffer's current batch size.",
                [("", batch.size)],
            )
            metric(
                "hybridserve_spill_batch_timeout_seconds",
                "gauge",
                "The buffer's current timeout.",
                [("", batch.timeout_ms / 1000.0)],
            )
        for key, help_ in (
            ("forecaster_fallbacks", "Control steps whose forecast came from a fallback model."),
            ("planner_fallbacks", "Control steps the primary planner could not decide."),
            ("step_failures", "Control steps that failed outright (the loop carried on)."),
        ):
            if key in self.controller:
                metric(
                    f"hybridserve_controller_{key}_total",
                    "counter",
                    help_,
                    [("", self.controller[key])],
                )
        metric(
            "hybridserve_cost_usd_per_hour",
            "gauge",
            "Estimated cost rate: fleet now plus Lambda's mean.",
            [("", usd_per_hour)],
        )
        return "\n".join(out) + "\n"
