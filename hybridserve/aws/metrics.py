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
    spill = float(inp.demand.expected_excess([capacity])[0]) if inp.lambda_usd_per_request else 0.0
    return {
        "ArrivalRate": observed_rate,
        "FleetSize": float(fleet),
        "PlannedCapacityRate": capacity,
        "ExpectedSpillRate": spill,
        "ForecastRate": float(inp.forecast.mean[0]),
    }
