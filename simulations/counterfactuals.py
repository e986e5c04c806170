"""What the alternatives would have cost on the same trace and scenario.

- EC2 target tracking: on-demand instances only, scaled by target tracking (the `reactive`
  policy, VM-only);
- Lambda only: every request its own invocation (the `lambda-only` policy);
- SageMaker real-time endpoint: the same target tracking on the same instance types, at
  SageMaker's ML-instance prices and scale-out time, billed per second with SageMaker's
  minimum (none) from launch, plus data processing per GB in and out;
- SageMaker Serverless Inference: every request an invocation of a serverless endpoint at its
  price per GB-second (the scenario's Lambda memory, rounded up to a size it offers, at most
  6 GB), its concurrency limit (throttled requests fail) and data processing per GB; service
  time and cold starts as the scenario's Lambda function (no GPU is offered).
Each is a replay of the same Controller and data plane (`run_policy`); the SageMaker prices
come from `hybridserve/data/alternatives-us-east-1.yaml`, with their date, source and basis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from hybridserve.config import ConfigError, Scenario, Strict, format_validation_error
from hybridserve.config_base import Provenance, load_data_model
from hybridserve.pricing import ec2_billed_s
from simulations.replay import PolicyResult, run_policy
from simulations.traces import Trace

DATA_FILE = "alternatives-us-east-1.yaml"
GIB = 1024.0**3


class MlInstance(Strict):
    usd_h: float = Field(gt=0)
    basis: Literal["published", "estimate"]


class RealtimePrices(Strict):
    """SageMaker real-time endpoints: ML-instance prices per EC2 type, billing and scale-out."""

    min_bill_s: float = Field(ge=0)
    launch_delay_s: float = Field(ge=0)
    usd_per_gb_data: float = Field(ge=0)
    instances: dict[str, MlInstance]


class ServerlessPrices(Strict):
    """SageMaker Serverless Inference: compute per GB-second, data, memory sizes and limits."""

    usd_per_gb_s: float = Field(gt=0)
    usd_per_gb_data: float = Field(ge=0)
    memory_mb: list[int] = Field(min_length=1)
    max_concurrency: int = Field(ge=1)
    bills_cold_start: bool

    @field_validator("memory_mb")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(m < 128 or m > 10240 for m in v):
            raise ValueError("memory sizes are MB between 128 and 10240")
        return sorted(v)


class Alternatives(Provenance):
    """The alternatives' prices, with the date and source they come from."""

    payload_in_bytes: int = Field(ge=0)
    payload_out_bytes: int = Field(ge=0)
    sagemaker_realtime: RealtimePrices
    sagemaker_serverless: ServerlessPrices

    @property
    def data_gb_per_request(self) -> float:
        return (self.payload_in_bytes + self.payload_out_bytes) / GIB


def load_alternatives(path: str | Path | None = None) -> Alternatives:
    """The built-in price file, or `path`; errors name the file and the field."""
    return load_data_model(Alternatives, DATA_FILE, path)


@dataclass
class Counterfactual:
    """One alternative's cost and attainment on the same trace."""

    name: str
    description: str
    cost_usd: float
    slo_attainment: float
    breakdown: dict[str, float] = field(default_factory=dict)
    throttled: int = 0

    def as_json(self, hybrid_usd: float | None) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "cost_usd": round(self.cost_usd, 4),
            "slo_attainment": round(self.slo_attainment, 6),
            "x_hybrid": round(self.cost_usd / hybrid_usd, 4) if hybrid_usd else None,
            "breakdown": {k: round(v, 4) for k, v in self.breakdown.items()},
            "throttled": self.throttled,
        }


def _rebuilt(sc: Scenario, **changes) -> Scenario:
    data = sc.model_dump(by_alias=True, exclude_unset=True)
    data.update(changes)
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "counterfactual scenario")) from None


def sagemaker_scenario(sc: Scenario, alt: Alternatives) -> Scenario:
    """`sc` with its instance types at SageMaker's ML-instance prices and scale-out time
    (on-demand only; types without an ML price are left out)."""
    rt = alt.sagemaker_realtime
    types = [t for t in sc.instance_types if t in rt.instances]
    if not types:
        raise ConfigError(f"no instance type of the scenario has a SageMaker price ({DATA_FILE})")
    cat = sc.catalog.model_dump(by_alias=True)
    for t in types:
        cat["instances"][t].update(
            on_demand_usd_h=rt.instances[t].usd_h, spot_usd_h=None, launch_delay_s=rt.launch_delay_s
        )
    cat["source"] = f"SageMaker real-time prices: {alt.source}"
    cat["prices_date"] = alt.date
    return _rebuilt(sc, catalog=cat, instance_types=types, markets=["on_demand"])


def serverless_scenario(sc: Scenario, alt: Alternatives) -> Scenario:
    """`sc` whose "Lambda" is a SageMaker Serverless endpoint: its memory (the scenario's
    rounded up to an offered size, at most the largest), price, data charge and concurrency."""
    sv = alt.sagemaker_serverless
    mem = next((m for m in sv.memory_mb if m >= sc.lambda_.memory_mb), sv.memory_mb[-1])
    cat = sc.catalog.model_dump(by_alias=True)
    cat["lambda"]["x86_64"] = {
        "usd_per_gb_s": sv.usd_per_gb_s,
        "usd_per_request": alt.data_gb_per_request * sv.usd_per_gb_data,
    }
    fn = sc.lambda_.model_dump()
    fn.update(
        arch="x86_64",
        memory_mb=mem,
        concurrency_limit=sv.max_concurrency,
        bill_init=sv.bills_cold_start,
    )
    return _rebuilt(sc, catalog=cat, **{"lambda": fn})


def sagemaker_bill(result: PolicyResult, sm: Scenario, alt: Alternatives, end_s: float) -> dict:
    """Instance-seconds from launch at the ML price with SageMaker's minimum, and data."""
    rt = alt.sagemaker_realtime
    pools = {p.key: p for p in sm.pools}
    inst = 0.0
    for i in result.instances:
        stop = end_s if i.ended_at is None else min(i.ended_at, end_s)
        inst += (
            ec2_billed_s(stop - i.launched_at, minimum_s=rt.min_bill_s) * pools[i.pool].price_usd_s
        )
    data = result.requests * alt.data_gb_per_request * rt.usd_per_gb_data
    return {"instances": inst, "data_processing": data}


def counterfactuals(
    trace: Trace,
    sc: Scenario,
    results: dict[str, PolicyResult] | None = None,
    *,
    seed: int = 0,
    alt: Alternatives | None = None,
) -> list[Counterfactual]:
    """The four alternatives on `trace`; policies already replayed (`results`) are reused."""
    alt = alt or load_alternatives()
    results = results or {}

    def policy(name: str, scenario: Scenario = sc) -> PolicyResult:
        if scenario is sc and name in results:
            return results[name]
        return run_policy(trace, scenario, name, seed=seed, keep_timeline=False)

    out = []
    r = policy("reactive")
    out.append(
        Counterfactual(
            "ec2-target-tracking",
            "EC2 on-demand only, target tracking (reactive)",
            r.cost_usd,
            r.slo_attainment,
            dict(r.cost_breakdown),
        )
    )
    r = policy("lambda-only")
    out.append(
        Counterfactual(
            "lambda-only",
            "every request a Lambda invocation",
            r.cost_usd,
            r.slo_attainment,
            dict(r.cost_breakdown),
            r.throttled,
        )
    )
    sm = sagemaker_scenario(sc, alt)
    r = policy("reactive", sm)
    bill = sagemaker_bill(r, sm, alt, float(trace.seconds))
    out.append(
        Counterfactual(
            "sagemaker-realtime",
            "SageMaker real-time endpoint, target tracking at ML-instance prices",
            sum(bill.values()),
            r.slo_attainment,
            bill,
        )
    )
    sv = serverless_scenario(sc, alt)
    r = policy("lambda-only", sv)
    out.append(
        Counterfactual(
            "sagemaker-serverless",
            f"SageMaker Serverless Inference, {sv.lambda_.memory_mb} MB, "
            f"max concurrency {sv.lambda_.concurrency_limit}",
            r.cost_usd,
            r.slo_attainment,
            {
                "compute": r.cost_breakdown["lambda_compute"],
                "data_processing": r.cost_breakdown["lambda_requests"],
            },
            r.throttled,
        )
    )
    return out


def format_counterfactuals(
    cfs: list[Counterfactual], hybrid: PolicyResult | None, slo: float
) -> str:
    """The alternatives' table: cost, attainment, SLO met, cost relative to the hybrid."""
    rows = []
    if hybrid is not None:
        rows.append(["hybrid (this system)", f"{hybrid.cost_usd:,.2f}", f"{hybrid.slo_attainment:.4%}",
                     "met" if hybrid.slo_attainment >= slo else "MISSED", "1.000"])  # fmt: skip
    for c in cfs:
        rel = f"{c.cost_usd / hybrid.cost_usd:.3f}" if hybrid and hybrid.cost_usd > 0 else "-"
        rows.append([c.description, f"{c.cost_usd:,.2f}", f"{c.slo_attainment:.4%}",
                     "met" if c.slo_attainment >= slo else "MISSED", rel])  # fmt: skip
    head = ["alternative (same trace)", "cost $", "attain", "SLO", "x hybrid"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = ["counterfactuals:", "", line(head), "-" * len(line(head))]
    return "\n".join(out + [line(r) for r in rows])
