"""Planners of the VM-only and Lambda-only baselines."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hybridserve.config import Pool, ReactiveOptions
from hybridserve.planner.base import Plan, PlanInput, retire_unplanned


class StaticPlanner:
    """A fixed fleet, whatever the load (`static-peak` provisions it for the trace's peak)."""

    name = "static"

    def __init__(self, target: dict[str, int]) -> None:
        self.target = dict(target)

    @classmethod
    def for_rate(cls, pool: Pool, rate: float) -> StaticPlanner:
        return cls({pool.key: max(1, math.ceil(rate / pool.capacity_rps - 1e-9))})

    def plan(self, inp: PlanInput) -> Plan:
        return Plan(target=retire_unplanned(self.target, inp.fleet))


class NoFleetPlanner:
    """Lambda-only: no instances at all."""

    name = "none"

    def plan(self, inp: PlanInput) -> Plan:
        return Plan(target=retire_unplanned({}, inp.fleet))


@dataclass
class ReactiveState:
    above_s: float = 0.0
    below_s: float = 0.0
    last_scale_out_s: float = -math.inf


class ReactivePlanner:
    """EC2 / SageMaker target tracking on one pool: utilisation = arrival rate / fleet capacity.

    Scale out when utilisation stayed above target for `scale_out_after_s` and the cooldown since
    the last scale-out has passed; scale in after `scale_in_after_s` below target. The new count
    brings utilisation back to the target (what target tracking computes).
    """

    name = "reactive"

    def __init__(self, pool: Pool, options: ReactiveOptions | None = None) -> None:
        self.pool = pool
        self.opt = options or ReactiveOptions()
        self.timers = ReactiveState()

    def state(self) -> dict:
        return asdict(self.timers)

    def restore(self, state: dict) -> None:
        self.timers = ReactiveState(**{k: float(v) for k, v in state.items()})

    def plan(self, inp: PlanInput) -> Plan:
        o, s, dt = self.opt, self.timers, inp.interval_s
        n = inp.fleet.get(self.pool.key).total
        want = max(
            1, math.ceil(inp.observed_rate / (o.target_utilisation * self.pool.capacity_rps))
        )
        util = inp.observed_rate / (n * self.pool.capacity_rps) if n else math.inf
        if util > o.target_utilisation:
            s.above_s += dt
            s.below_s = 0.0
        else:
            s.below_s += dt
            s.above_s = 0.0
        target = n
        if n == 0:
            target = want
        elif s.above_s >= o.scale_out_after_s and inp.now_s - s.last_scale_out_s >= o.cooldown_s:
            target = max(n, want)
            s.last_scale_out_s = inp.now_s
            s.above_s = 0.0
        elif s.below_s >= o.scale_in_after_s and want < n:
            target = want
            s.below_s = 0.0
        return Plan(target=retire_unplanned({self.pool.key: target}, inp.fleet))
