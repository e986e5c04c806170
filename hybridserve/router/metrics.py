"""The router's Prometheus metrics: arrivals, spills, queue depth, latency per path, fleet, cost.

Per model (the `model` label): responses, spills, the instances holding it and its buffer's
batch size. The label's values are the router's known models (its config's, and those its
instances hold), never a name a client sent, so the series stay bounded."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.metrics_core import Metric

from predictors.prometheus import Histogram, counter, gauge, histogram

PATHS = ("fleet", "lambda", "retry", "rejected")


class RouterMetrics:
    """Plain counters updated on the event loop; `families` turns them into metric families
    when `/metrics` is scraped (no prometheus_client call on the request path)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.arrivals = 0
        self.spills = 0
        self.retries = 0
        self.instance_failures = 0
        self.upstream_timeouts = 0  # requests an instance took but did not answer in time
        self.unloaded_404s = 0  # (instance, model) pairs dropped after the instance's 404
        self.within_slo = 0
        self.slo_counted = 0  # responses that count for attainment (not client errors)
        self.lambda_invocations = 0
        self.lambda_rows = 0
        self.cold_starts = 0
        # (model, path, status) -> responses: one update a request, the totals summed on read
        self.model_responses: dict[tuple[str, str, int], int] = {}
        # the control loop's cumulative counts (LiveLoop.stats), when one runs beside the router
        self.controller: dict[str, int] = {}
        self.latency = {p: Histogram() for p in PATHS}
        self._spills_seen = 0

    def request(
        self, path: str, status: int, seconds: float, slo_ms: float, model: str = ""
    ) -> None:
        self.arrivals += 1
        key = (model, path, status)
        self.model_responses[key] = self.model_responses.get(key, 0) + 1
        self.latency[path].observe(seconds)
        if not 400 <= status < 500:
            self.slo_counted += 1
            if status == 200 and seconds * 1000.0 <= slo_ms:
                self.within_slo += 1

    @property
    def responses(self) -> dict[tuple[str, int], int]:
        """Responses by (path, status), every model's."""
        out: dict[tuple[str, int], int] = {}
        for (_, path, status), n in list(self.model_responses.items()):
            out[(path, status)] = out.get((path, status), 0) + n
        return out

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

    def _model_families(self, models: Sequence[Any]) -> Iterator[Metric]:
        """The per-model families: one series per known model (and path and code)."""
        yield counter(
            "hybridserve_router_model_responses",
            "Responses by model, path (fleet, lambda, retry, rejected) and HTTP status.",
            [((m, p, str(c)), n) for (m, p, c), n in sorted(self.model_responses.items())],
            labels=("model", "path", "code"),
        )
        yield counter(
            "hybridserve_router_model_spills",
            "Requests sent to the model's Lambda function (spill and retries).",
            [((m.name,), m.spills) for m in models],
            labels=("model",),
        )
        yield gauge(
            "hybridserve_router_model_instances",
            "Ready instances the router sends the model to.",
            [((m.name,), len(m.solo) + len(m.shared)) for m in models],
            labels=("model",),
        )
        yield gauge(
            "hybridserve_router_model_spill_batch_size",
            "The model's buffer's current batch size (models with a Lambda function).",
            [((m.name,), m.buffer.params.size) for m in models if m.buffer is not None],
            labels=("model",),
        )

    def families(
        self,
        *,
        ups: Sequence[Any],
        spill_pending: int,
        lambda_in_flight: int,
        usd_per_hour: float,
        batch: Any | None,
        cost_by_cause: dict[str, float] | None = None,
        models: Sequence[Any] = (),
    ) -> Iterator[Metric]:
        """The metric families at scrape time (the router's collector calls this)."""
        yield counter(
            "hybridserve_router_arrivals", "Inference requests received.", [((), self.arrivals)]
        )
        yield counter(
            "hybridserve_router_spills",
            "Requests sent to Lambda (spill and retries).",
            [((), self.spills)],
        )
        yield counter(
            "hybridserve_router_retries",
            "Requests retried after their instance failed or shed them.",
            [((), self.retries)],
        )
        yield counter(
            "hybridserve_router_instance_failures",
            "Instances that failed under a request (unreachable, or dropped it).",
            [((), self.instance_failures)],
        )
        yield counter(
            "hybridserve_router_upstream_timeouts",
            "Requests an instance took but did not answer within the upstream timeout (slow, "
            "kept in the fleet; the request is retried).",
            [((), self.upstream_timeouts)],
        )
        yield counter(
            "hybridserve_router_responses",
            "Responses by path (fleet, lambda, retry, rejected) and HTTP status.",
            [((p, str(c)), n) for (p, c), n in sorted(self.responses.items())],
            labels=("path", "code"),
        )
        yield counter(
            "hybridserve_router_unloaded_404s",
            "Instance-model pairs dropped until the next refresh after the instance answered "
            "404 (the model was unloaded there); each request was retried elsewhere.",
            [((), self.unloaded_404s)],
        )
        yield from self._model_families(models)
        yield gauge(
            "hybridserve_router_slo_attainment",
            "Share of requests (client errors aside) answered 200 within the SLO.",
            [((), self.attainment)],
        )
        yield histogram(
            "hybridserve_router_latency_seconds",
            "Request latency in the router, by path.",
            [((p,), h.cumulative(), h.sum) for p, h in self.latency.items()],
            labels=("path",),
        )
        yield gauge(
            "hybridserve_router_queue_depth",
            "Requests in flight per instance.",
            [((u.endpoint.instance_id, u.endpoint.pool), u.outstanding) for u in ups],
            labels=("instance", "pool"),
        )
        yield gauge(
            "hybridserve_router_latency_correction",
            "Observed over profiled latency, per instance.",
            [((u.endpoint.instance_id,), u.ratio) for u in ups],
            labels=("instance",),
        )
        pools = Counter(u.endpoint.pool for u in ups)
        yield gauge(
            "hybridserve_fleet_size",
            "Ready instances by pool.",
            [((k,), n) for k, n in sorted(pools.items())],
            labels=("pool",),
        )
        yield gauge(
            "hybridserve_spill_pending",
            "Spilled requests buffered or in flight to Lambda (every model's).",
            [((), spill_pending)],
        )
        yield gauge(
            "hybridserve_lambda_in_flight",
            "Lambda invocations in flight.",
            [((), lambda_in_flight)],
        )
        yield counter(
            "hybridserve_lambda_invocations",
            "Lambda invocations (one per batch).",
            [((), self.lambda_invocations)],
        )
        yield counter(
            "hybridserve_lambda_rows",
            "Requests carried by Lambda invocations.",
            [((), self.lambda_rows)],
        )
        yield counter(
            "hybridserve_lambda_cold_starts",
            "Lambda invocations that met a cold start.",
            [((), self.cold_starts)],
        )
        if batch is not None:
            yield gauge(
                "hybridserve_spill_batch_size",
                "The buffer's current batch size (the router's model_name's).",
                [((), batch.size)],
            )
            yield gauge(
                "hybridserve_spill_batch_timeout_seconds",
                "The buffer's current timeout (the router's model_name's).",
                [((), batch.timeout_ms / 1000.0)],
            )
        for key, help_ in (
            ("forecaster_fallbacks", "Control steps whose forecast came from a fallback model."),
            ("planner_fallbacks", "Control steps the primary planner could not decide."),
            ("step_failures", "Control steps that failed outright (the loop carried on)."),
            ("warm_pings", "Keep-warm pings the controller's rounds sent."),
            ("warm_failures", "Keep-warm pings that failed or were skipped."),
        ):
            if key in self.controller:
                yield counter(f"hybridserve_controller_{key}", help_, [((), self.controller[key])])
        yield gauge(
            "hybridserve_cost_usd_per_hour",
            "Estimated cost rate: fleet now plus Lambda's mean.",
            [((), usd_per_hour)],
        )
        if cost_by_cause is not None:
            yield counter(
                "hybridserve_cost_usd",
                "Cost so far by cause, at the scenario's prices (hybridserve.attribution): "
                "base_fleet, over_provisioning, launch_overhead, minimum_bill, spill_planned, "
                "spill_forecast_miss, spill_burst, spill_launch_lag, spill_spot_loss, cold_starts.",
                [((c,), v) for c, v in cost_by_cause.items()],
                labels=("cause",),
            )
