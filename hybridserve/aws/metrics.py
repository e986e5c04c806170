"""CloudWatch custom metrics of a deployment, in the namespace its IAM condition allows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridserve.aws.iam import metrics_namespace


def publish(
    cw: Any,
    deployment: str,
    values: Mapping[str, float],
    *,
    dimensions: Mapping[str, str] | None = None,
) -> None:
    """One PutMetricData call: each value as a metric of `hybridserve/<deployment>`."""
    dims = [{"Name": k, "Value": v} for k, v in (dimensions or {}).items()]
    data = [
        {"MetricName": k, "Value": float(v), "Unit": _unit(k), "Dimensions": dims}
        for k, v in values.items()
    ]
    for i in range(0, len(data), 1000):  # the API's batch limit
        cw.put_metric_data(Namespace=metrics_namespace(deployment), MetricData=data[i : i + 1000])


def _unit(name: str) -> str:
    if name.endswith("Rate"):
        return "Count/Second"
    if name.endswith("Attainment") or name.endswith("Fraction"):
        return "None"
    return "Count"


def controller_metrics(decision: Any, observed_rate: float) -> dict[str, float]:
    """What the controller knows after a step: load, fleet, planned capacity and expected spill."""
    inp = decision.inputs
    fleet = sum(s.total for s in decision.fleet.pools.values())
    capacity = 0.0
    for p in inp.pools:
        capacity += p.capacity_rps * decision.plan.target.get(p.key, 0)
    out = {
        "ArrivalRate": observed_rate,
        "FleetSize": float(fleet),
        "PlannedCapacityRate": capacity,
        "ForecastRate": float(inp.forecast.mean[0]),
        "ForecasterFallbacks": float(decision.forecaster_fallbacks),
        "PlannerFallbacks": float(decision.planner_fallbacks),
    }
    try:
        lam = inp.lambda_usd_per_request
        out["ExpectedSpillRate"] = float(inp.demand.expected_excess([capacity])[0]) if lam else 0.0
    except Exception:  # a forecast the planner could not use: no estimate (CloudWatch takes no NaN)
        pass
    return out


# the router's cumulative counters (RouterMetrics attributes) that interval metrics difference
ROUTER_COUNTERS = ("arrivals", "spills", "within_slo", "slo_counted", "cold_starts")


class RouterIntervals:
    """The router's metrics over each control interval, from its cumulative counters.

    RouterMetrics only counts up (as Prometheus wants); CloudWatch wants what happened in the
    interval, so each `take` differences the counters against the previous call's."""

    def __init__(self, counters: Mapping[str, float] | None = None, now: float = 0.0) -> None:
        self.last = {k: float((counters or {}).get(k, 0)) for k in ROUTER_COUNTERS}
        self.last_t = now

    def take(self, counters: Mapping[str, float], now: float) -> dict[str, float]:
        """Arrival rate, spill fraction (spills / arrivals), SLO attainment and cold starts
        since the last call. Attainment is left out of an interval without counted answers
        (no data beats a made-up 100%)."""
        cur = {k: float(counters.get(k, 0)) for k in ROUTER_COUNTERS}
        d = {k: max(0.0, cur[k] - self.last[k]) for k in ROUTER_COUNTERS}
        elapsed = max(now - self.last_t, 1e-9)
        self.last, self.last_t = cur, now
        out = {
            "ArrivalRate": d["arrivals"] / elapsed,
            "SpillFraction": min(1.0, d["spills"] / d["arrivals"]) if d["arrivals"] else 0.0,
            "LambdaColdStarts": d["cold_starts"],
        }
        if d["slo_counted"]:
            out["SloAttainment"] = min(1.0, d["within_slo"] / d["slo_counted"])
        return out


def router_counters(metrics: Any) -> dict[str, float]:
    """The cumulative counters `RouterIntervals.take` differences, read off a RouterMetrics."""
    return {k: float(getattr(metrics, k)) for k in ROUTER_COUNTERS}
