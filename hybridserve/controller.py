"""The Controller: one loop body shared by the simulator, the local mode and AWS.

Each control interval it hands the interval's arrivals to the forecaster, turns the forecast into
per-second demand and asks the planner for a target fleet, and the keep-warm planner for the
Lambda environments to keep initialised (`decide`: no actuation), then tells the backend to
converge to the fleet (`apply`); whoever holds the spill function sends the warm-up pings. Which request goes to the fleet and which spills to
Lambda is the router's per-request decision.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import replace
from typing import Any

import numpy as np

from hybridserve import controller_state as S
from hybridserve.backends.base import Backend
from hybridserve.config import Pool
from hybridserve.demand import BurstProfile
from hybridserve.fleet import Action, Decision, FleetView
from hybridserve.forecast import Forecaster
from hybridserve.keep_warm import KeepWarmPlanner
from hybridserve.planner.base import PlanInput, Planner
from hybridserve.planner.fallback import HOLD
from hybridserve.planner.limits import limit_target

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
        policy: str = "",
        max_instances: int | None = None,
        budget_usd_per_hour: float | None = None,
        keep_warm: KeepWarmPlanner | None = None,
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
        self.policy = policy
        self.max_instances = max_instances
        self.budget_usd_per_hour = budget_usd_per_hour
        self.keep_warm = keep_warm  # None: this policy keeps no Lambda environment warm
        self.steps = 0  # intervals decided
        # names this controller's decisions (with the step) for the backends' launch tokens;
        # saved with the state, so a restarted controller retrying a step reuses its tokens
        self.run_id = uuid.uuid4().hex[:16]
        self.rates: deque[float] = deque(maxlen=max(1, S.HISTORY_S // interval_s))
        self.target: dict[str, int] | None = None  # the last target applied
        self.notices = 0  # lost-instance events handled between steps

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
        rate = float(np.mean(counts))  # one mean per step: the decision's hot path
        self.rates.append(rate)
        self.steps += 1
        forecast = self.forecaster.forecast(self.horizon)
        fleet = self.backend.observe() if fleet is None else fleet
        now = self.backend.now() if now is None else now
        inp = PlanInput(
            forecast=forecast,
            fleet=fleet,
            pools=self.pools,
            interval_s=self.interval_s,
            lambda_usd_per_request=self.lambda_usd_per_request,
            observed_rate=rate,
            now_s=now,
            burst=self.burst,
            demand_levels=self.demand_levels,
        )
        plan = self.planner.plan(inp)
        if self.max_instances is not None or self.budget_usd_per_hour is not None:
            target = limit_target(
                plan.target, self.pools, self.max_instances, self.budget_usd_per_hour
            )
            if target != plan.target:
                plan = replace(plan, target=target)
        warm, pings = self.decide_keep_warm(counts, fleet, now)
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
            planner_state=S.planner_state(p),
            intent=f"{self.run_id}/{self.steps}",
            keep_warm=warm,
            warm_pings=pings,
        )

    def decide_keep_warm(
        self, counts, fleet: FleetView, now: float, fresh: bool = False
    ) -> tuple[int, int]:
        """(warm environments, pings now) for what spilled past the fleet's ready instances;
        (0, 0) for a policy that keeps none. `fresh` forgets the history first (the simulator's
        warm start recomputes its first step against the warm-start fleet)."""
        if self.keep_warm is None:
            return 0, 0
        if fresh:
            self.keep_warm.restore({})
        return self.keep_warm.decide(counts, fleet.ready_rps(self.pools), now)

    def apply(self, decision: Decision) -> Decision:
        """Have the backend converge to the decision's target; the decision with the actions
        it took. An invalid decision changes nothing."""
        if not decision.valid:
            return decision
        actions = self.backend.converge(decision.plan.target, intent=decision.intent)
        self.target = dict(decision.plan.target)
        return replace(decision, actions=actions)

    def on_notice(self) -> list[Action]:
        """Between steps, an instance is being lost (a spot interruption notice; the backend
        already leaves it out): converge to the last target at once, which launches its
        replacement now rather than at the next step. The simulator calls it at the notice's
        simulated instant, the AWS loop when the notice arrives: the same decision in both."""
        if self.target is None:
            return []
        self.notices += 1
        return self.backend.converge(
            self.target, intent=f"{self.run_id}/{self.steps}/notice-{self.notices}"
        )

    def step(self, counts: np.ndarray) -> Decision:
        """One control interval: decide on `counts` (the arrivals per second of the interval just
        ended), then apply."""
        return self.apply(self.decide(counts))

    def state(self) -> dict[str, Any]:
        """Everything a restarted controller needs to decide as this one would (see
        hybridserve.controller_state); `controller_state.dumps` makes it JSON."""
        return {
            "version": S.STATE_VERSION,
            "policy": self.policy,
            "interval_s": self.interval_s,
            "steps": self.steps,
            "run_id": self.run_id,
            "rates": list(self.rates),
            "burst": self.burst.state(),
            "planner": S.planner_state(self.planner),
            "target": self.target,
            "notices": self.notices,
            "keep_warm": None if self.keep_warm is None else self.keep_warm.state(),
        }

    def restore(self, state: dict[str, Any], source: str = "controller state") -> None:
        """Resume from `state()`: the forecaster replays the saved rates (observe, then
        forecast, as the loop did), the burst profile and the planner take theirs back."""
        S.check_compatible(state, interval_s=self.interval_s, policy=self.policy, source=source)
        # the rate itself where the forecaster takes one: a mean of np.full(n, r) may miss r
        # by an ulp, and a resumed controller must see the very numbers the first one saw
        observe_rate = getattr(self.forecaster, "observe_rate", None)
        for rate in state["rates"]:
            if observe_rate is not None:
                observe_rate(float(rate), self.interval_s)
            else:
                self.forecaster.observe(np.full(self.interval_s, float(rate)))
            self.forecaster.forecast(self.horizon)
        self.rates.extend(float(r) for r in state["rates"])
        self.burst.restore(state["burst"], f"{source}: burst")
        S.restore_planner(self.planner, state["planner"])
        self.steps = int(state["steps"])
        target = state.get("target")  # absent from states saved before notices were handled
        self.target = None if target is None else {str(k): int(v) for k, v in target.items()}
        self.notices = int(state.get("notices", 0))
        warm = state.get("keep_warm")  # absent from states saved before keep-warm was planned
        if self.keep_warm is not None and warm:
            self.keep_warm.restore(warm)
        self.run_id = str(state["run_id"])
