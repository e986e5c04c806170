"""MArk's greedy plan (its `proactive_controller`), reproduced as the baseline.

Fill the positive residual of the forecast (demand minus the capacity already there) one instance
at a time, each time with the pool of lowest cost per served request over the stretch of the
horizon it would run, its launch delay charged; stop when Lambda is cheaper per request than the
best instance. With nothing to launch, kill the most expensive-per-request instance whose capacity
the horizon never needs, and repeat.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hybridserve.config import Pool
from hybridserve.planner.base import (
    Plan,
    PlanInput,
    prune_dominated,
    prune_multiples,
    retire_unplanned,
)


class GreedyPlanner:
    name = "greedy"

    def __init__(self, level: str = "mean") -> None:
        self.level = level
        self._pruned: tuple[tuple, list[Pool]] | None = None

    def _pools(self, inp: PlanInput) -> list[Pool]:
        """Pools that can win a fill: a dominated pool or a multiple of another never costs
        less per request, so pruning them changes nothing but ties (memoised)."""
        keep = frozenset(k for k, v in inp.fleet.totals().items() if v)
        key = (tuple(p.key for p in inp.pools), keep)
        if self._pruned is None or self._pruned[0] != key:
            self._pruned = (key, prune_multiples(prune_dominated(inp.pools, keep), keep))
        return self._pruned[1]

    def plan(self, inp: PlanInput) -> Plan:
        pools = self._pools(inp)
        inp = replace(inp, pools=pools)
        dt = inp.interval_s
        H = inp.horizon
        base = inp.base_counts()
        mu = np.array([p.capacity_rps for p in pools])
        demand = np.asarray(inp.forecast.mean, dtype=float)  # MArk plans on the point forecast
        residual = demand - mu @ base
        leads = np.array([min(inp.lead_steps(p), H) for p in pools])
        launches = np.zeros(len(pools), dtype=int)
        c_lambda = inp.lambda_usd_per_request
        while np.max(residual) > 0:
            pos = np.maximum(residual, 0.0)
            best, best_cpr = -1, np.inf
            for i, p in enumerate(pools):
                span = H - leads[i]
                if span <= 0:
                    continue
                served = np.sum(np.minimum(mu[i], pos[leads[i] :])) * dt
                if served <= 0:
                    continue
                cpr = p.price_usd_s * (span * dt + p.launch_delay_s) / served
                if cpr < best_cpr:
                    best, best_cpr = i, cpr
            if best < 0 or (c_lambda is not None and best_cpr >= c_lambda):
                break
            launches[best] += 1
            residual[leads[best] :] -= mu[best]
        totals = np.array([inp.fleet.get(p.key).total for p in pools])
        kills = np.zeros(len(pools), dtype=int)
        if not launches.any():
            order = sorted(range(len(pools)), key=lambda i: -pools[i].usd_per_request)
            changed = True
            while changed:
                changed = False
                for i in order:
                    if totals[i] - kills[i] > 0 and np.all(residual + mu[i] <= 0):
                        kills[i] += 1
                        residual += mu[i]
                        changed = True
                        break
        target = {}
        for i, p in enumerate(pools):
            n = int(totals[i] + launches[i] - kills[i])
            if n:
                target[p.key] = n
        return Plan(target=retire_unplanned(target, inp.fleet))
