"""Policies: each is a Controller configuration (forecaster + planner + whether Lambda may take
spill), never a second simulator. `oracle` and `static-peak` need hindsight of the trace and so
exist only offline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hybridserve.backends.base import Backend
from hybridserve.config import Scenario, lambda_service_s, lambda_usd_per_request
from hybridserve.controller import Controller
from hybridserve.forecast import Forecaster, chain_for, make_forecaster
from hybridserve.forecast.hindsight import HindsightForecaster
from hybridserve.keep_warm import KeepWarmPlanner
from hybridserve.planner import (
    ExactPlanner,
    GreedyPlanner,
    NoFleetPlanner,
    ReactivePlanner,
    StaticPlanner,
)
from hybridserve.planner.base import cheapest_pool, prune_dominated
from hybridserve.planner.fallback import FallbackPlanner

POLICIES: dict[str, str] = {
    "static-peak": "VM-only fleet sized for the trace's peak second, never changed",
    "reactive": "VM-only target tracking (scale out after 3 min above target, 300 s cooldown, in after 15 min)",
    "lambda-only": "every request its own Lambda invocation",
    "mark": "MArk: point forecast + greedy cheapest-per-request fill + spill to Lambda",
    "hybrid": "quantile forecast + exact MILP planner + spill to Lambda (the default)",
    "oracle": "exact planner fed the true future arrivals: the best a controller could do",
}
HINDSIGHT = {"static-peak", "oracle"}


@dataclass
class PolicySpec:
    """A policy's forecaster (a fallback chain where it can fail) and planner (with its
    fallback: the MILP falls back to greedy, every planner to holding the fleet)."""

    name: str
    forecaster: Forecaster
    planner: FallbackPlanner
    spill: bool  # may the router send requests to Lambda?

    @property
    def keeps_warm(self) -> bool:
        """Plans warm Lambda environments: every spilling policy but `mark`, which reproduces
        MArk as published (no keep-warm)."""
        return self.spill and self.name != "mark"

    def lambda_usd_per_request(self, sc: Scenario) -> float | None:
        return lambda_usd_per_request(sc) if self.spill else None

    @property
    def forecaster_fallbacks(self) -> int:
        return int(getattr(self.forecaster, "fallbacks", 0))

    @property
    def planner_fallbacks(self) -> int:
        return self.planner.fallbacks

    @property
    def training_s(self) -> float:
        """Wall seconds the forecaster spent training (models that report it: the LSTM)."""
        return float(getattr(self.forecaster, "fit_seconds", 0.0) or 0.0)


def default_forecaster(policy: str) -> str:
    """mark forecasts with an LSTM as MArk did (when torch is installed); hybrid picks by backtest."""
    if policy == "mark":
        from hybridserve.forecast.torch_support import has_torch

        return "lstm" if has_torch() else "last-value"
    if policy == "hybrid":
        return "auto"
    return "last-value"


def make_policy(
    name: str,
    sc: Scenario,
    *,
    forecaster: str | None = None,
    hindsight: np.ndarray | None = None,
    clock: Callable[[], float] | None = None,
) -> PolicySpec:
    """Build a policy by name; hindsight policies need the trace's counts and the backend clock."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    if name in HINDSIGHT and hindsight is None:
        raise ValueError(f"policy {name!r} needs the whole trace in advance (offline only)")
    on_demand = [p for p in sc.pools if p.market == "on_demand"] or sc.pools
    fc_name = forecaster or default_forecaster(name)
    kw = {"interval_s": sc.control_interval_s, "max_horizon": sc.horizon_steps}
    uses_forecast = name in ("mark", "hybrid")
    fc = chain_for(fc_name, **kw) if uses_forecast else make_forecaster(fc_name, **kw)
    if name == "static-peak":
        pool = cheapest_pool(prune_dominated(on_demand))
        planner = StaticPlanner.for_rate(pool, float(np.max(hindsight)))
        return PolicySpec(name, fc, FallbackPlanner(planner), False)
    if name == "reactive":
        pool = cheapest_pool(prune_dominated(on_demand))
        return PolicySpec(name, fc, FallbackPlanner(ReactivePlanner(pool, sc.reactive)), False)
    if name == "lambda-only":
        return PolicySpec(name, fc, FallbackPlanner(NoFleetPlanner()), True)
    if name == "mark":
        return PolicySpec(name, fc, FallbackPlanner(GreedyPlanner()), True)
    exact = FallbackPlanner(ExactPlanner(sc.planner), GreedyPlanner())
    if name == "hybrid":
        return PolicySpec(name, fc, exact, True)
    assert clock is not None, "oracle needs the backend clock"
    oracle_fc = HindsightForecaster(hindsight, sc.control_interval_s, clock)
    return PolicySpec(name, oracle_fc, exact, True)


def build_controller(
    policy: str,
    sc: Scenario,
    backend: Backend,
    *,
    forecaster: str | None = None,
    hindsight: np.ndarray | None = None,
) -> tuple[Controller, PolicySpec]:
    """The one place a Controller is assembled, for the simulator, local serving and AWS alike."""
    spec = make_policy(policy, sc, forecaster=forecaster, hindsight=hindsight, clock=backend.now)
    ctl = Controller(
        spec.forecaster,
        spec.planner,
        backend,
        sc.pools,
        interval_s=sc.control_interval_s,
        horizon=sc.horizon_steps,
        lambda_usd_per_request=spec.lambda_usd_per_request(sc),
        demand_levels=sc.planner.lambda_levels,
        policy=spec.name,
        max_instances=sc.planner.max_instances,
        budget_usd_per_hour=sc.planner.budget_usd_per_hour,
        keep_warm=keep_warm_planner(sc) if spec.keeps_warm else None,
    )
    return ctl, spec


def keep_warm_planner(sc: Scenario) -> KeepWarmPlanner:
    """The scenario's keep-warm decision (`lambda.keep_warm`), at one request's Lambda time."""
    lam = sc.lambda_
    return KeepWarmPlanner(
        lam.keep_warm,
        service_s=lambda_service_s(sc),
        interval_s=sc.control_interval_s,
        keep_alive_s=lam.keep_alive_s,
        concurrency_limit=lam.concurrency_limit,
    )
