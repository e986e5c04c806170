"""The Controller: one loop body shared by the simulator, the local mode and AWS.

Each control interval it hands the interval's arrivals to the forecaster, turns the forecast into
per-second demand and asks the planner for a target fleet (`decide`: no actuation), then tells
the backend to converge to it (`apply`). Which request goes to the fleet and which spills to
Lambda is the router's per-request decision.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hybridserve.backends.base import Backend
from hybridserve.config import Pool
from hybridserve.demand import BurstProfile
from hybridserve.fleet import Decision, FleetView
from hybridserve.forecast import Forecaster
from hybridserve.planner.base import PlanInput, Planner
from hybridserve.planner.fallback import HOLD

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

    def decide(
        self, counts: np.ndarray, *, now: float | None = None, fleet: FleetView | None = None
    ) -> Decision:
        """What to do after an interval whose per-second arrivals were `counts`, without doing
        it: the forecaster and the burst profile learn the interval, the planner plans. `now`
        and `fleet` default to what the backend reports; nothing is launched or retired.

        The decision is `valid` unless every planner of the chain failed and it holds the
        fleet as it is (as Knative's decider flags a result it could not compute)."""
        self.forecaster.observe(counts)
        self.burst.observe(counts)
        forecast = self.forecaster.forecast(self.horizon)
        fleet = self.backend.observe() if fleet is None else fleet
        now = self.backend.now() if now is None else now
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
        f, p = self.forecaster, self.planner
        source = str(getattr(p, "source", p.name))
        return Decision(
            now,
            fleet,
            plan,
            [],
            inp,
            forecast_source=str(getattr(f, "source", f.name)),
            plan_source=source,
            forecaster_fallbacks=int(getattr(f, "fallbacks", 0)),
            planner_fallbacks=int(getattr(p, "fallbacks", 0)),
            valid=source != HOLD,
        )

    def apply(self, decision: Decision) -> Decision:
        """Have the backend converge to the decision's target; the decision with the actions
        it took. An invalid decision changes nothing."""
        if not decision.valid:
            return decision
        return replace(decision, actions=self.backend.converge(decision.plan.target))

    def step(self, counts: np.ndarray) -> Decision:
        """One control interval: decide on `counts` (the arrivals per second of the interval just
        ended), then apply."""
        return self.apply(self.decide(counts))
