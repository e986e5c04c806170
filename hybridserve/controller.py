"""The Controller: one loop body shared by the simulator, the local mode and AWS.

Each control interval it hands the interval's arrivals to the forecaster, turns the forecast into
per-second demand, asks the planner for a target fleet and tells the backend to converge. Which
request goes to the fleet and which spills to Lambda is the router's per-request decision.
"""

from __future__ import annotations

import numpy as np

from hybridserve.backends.base import Backend
from hybridserve.config import Pool
from hybridserve.demand import BurstProfile
from hybridserve.fleet import Decision
from hybridserve.forecast import Forecaster
from hybridserve.planner.base import PlanInput, Planner

__all__ = ["Controller", "Decision"]


class Controller:
    def __init__(
        self,
        forecaster: Forecaster,
        planner: Planner,
        backend: Backend,
        pools: list[Pool],
        *,
        interval_s: int = 60,
        horizon: int = 15,
        lambda_usd_per_request: float | None = None,
        demand_levels: int = 6,
    ) -> None:
        self.forecaster = forecaster
        self.planner = planner
        self.backend = backend
        self.pools = pools
        self.interval_s = interval_s
        self.horizon = horizon
        self.lambda_usd_per_request = lambda_usd_per_request
        self.demand_levels = demand_levels
        self.burst = BurstProfile()

    def step(self, counts: np.ndarray) -> Decision:
        """One control interval: `counts` are the arrivals per second of the interval just ended."""
        self.forecaster.observe(counts)
        self.burst.observe(counts)
        forecast = self.forecaster.forecast(self.horizon)
        fleet = self.backend.observe()
        now = self.backend.now()
        inp = PlanInput(
            forecast=forecast,
            fleet=fleet,
            pools=self.pools,
            interval_s=self.interval_s,
            lambda_usd_per_request=self.lambda_usd_per_request,
            observed_rate=float(np.mean(counts)),
            now_s=now,
            burst=self.burst,
            demand_levels=self.demand_levels,
        )
        plan = self.planner.plan(inp)
        actions = self.backend.converge(plan.target)
        f, p = self.forecaster, self.planner
        return Decision(
            now,
            fleet,
            plan,
            actions,
            inp,
            forecast_source=str(getattr(f, "source", f.name)),
            plan_source=str(getattr(p, "source", p.name)),
            forecaster_fallbacks=int(getattr(f, "fallbacks", 0)),
            planner_fallbacks=int(getattr(p, "fallbacks", 0)),
        )
