"""The multi-model controller: per-model forecasts, one joint plan, one reconcile.

Each control step it feeds every model's arrivals to that model's forecaster (a declared
fallback chain, as the single-model policies use), turns the forecasts into per-model demand
at the launch lead, asks the packing policy for a plan and has the backend converge to it.
Failures are contained as in the single-model controller: a forecaster that raises or returns
nonsense falls back to the last observed rate; a planner that raises holds the running
placement. The backend is the only part that touches a clock, processes or AWS.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from hybridserve.forecast import chain_for
from hybridserve.multimodel.packing import (
    ModelDemand,
    Packer,
    Packing,
    Shard,
    lambda_only,
    popularity,
)
from hybridserve.multimodel.placement import PlacementAction, reconcile_placement
from hybridserve.multimodel.table import ModelTable

log = logging.getLogger(__name__)

Mode = Literal["joint", "per-model", "popularity", "lambda-only"]
MODES: tuple[str, ...] = ("joint", "per-model", "popularity", "lambda-only")
Z90 = 1.2815515655446004  # the standard normal's 0.9 quantile


class PlacementBackend(Protocol):
    def observe(self) -> tuple[Shard, ...]:
        """Running shards: pool, members loaded or loading, replicas ready or launching."""

    def apply(self, actions: list[PlacementAction], now: float) -> None:
        """Execute the actions (idempotent per step)."""


@dataclass(frozen=True)
class MultiDecision:
    time_s: float
    plan: Packing
    demand: ModelDemand
    actions: list[PlacementAction]
    plan_s: float  # wall seconds the policy took (the 50-model target is judged on it)
    forecast_s: float
    forecaster_fallbacks: int = 0
    planner_fallbacks: int = 0
    solved: bool = True  # False: the last plan still stood


def model_demand(forecasts: list, lead: int, last_counts: np.ndarray) -> tuple[ModelDemand, int]:
    """Per model: the forecast mean at the launch lead, and a per-second spread from Poisson,
    the forecast's own spread (its 0.9 quantile) and the last interval's overdispersion. A
    forecast that is not a finite non-negative number is replaced by the last interval's mean
    (counted as a fallback)."""
    n = len(forecasts)
    rate = np.zeros(n)
    spread = np.zeros(n)
    fallbacks = 0
    obs_mean = last_counts.mean(axis=1) if last_counts.size else np.zeros(n)
    obs_var = last_counts.var(axis=1) if last_counts.size else np.zeros(n)
    for m, fc in enumerate(forecasts):
        try:
            h = min(lead, fc.horizon - 1)
            mu = float(fc.mean[h])
            q9 = float(fc.quantile(0.9)[0, h])
            if not (math.isfinite(mu) and math.isfinite(q9)) or mu < 0:
                raise ValueError(f"forecast {mu}")
            rate[m], spread[m] = mu, max(q9 - mu, 0.0) / Z90
        except Exception:  # noqa: BLE001 - a model's failure must not stop the plan
            fallbacks += 1
            rate[m], spread[m] = obs_mean[m], 0.0
    over = np.maximum(obs_var - obs_mean, 0.0)
    sd = np.sqrt(rate + spread**2 + over)
    return ModelDemand(rate, sd), fallbacks


@dataclass
class MultiController:
    """One controller for every world; `mode` picks the packing policy (the baselines are
    modes of the same loop: one fleet per model, popularity packing, Lambda only)."""

    table: ModelTable
    backend: PlacementBackend
    interval_s: int = 60
    horizon_steps: int = 15
    mode: Mode = "joint"
    forecaster: str = "linear"
    popularity_pool: int = 0
    resolve_tolerance: float = 0.25  # re-plan when demand moved by this many instances' work
    max_plan_age_steps: int = 8
    steps: int = 0
    solves: int = 0
    _last: tuple[np.ndarray, Packing, int] | None = None  # (rates, plan, age) of the last solve
    forecasters: list = field(default_factory=list)
    forecaster_fallbacks: int = 0
    planner_fallbacks: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: choose one of {', '.join(MODES)}")
        self.forecasters = [
            chain_for(self.forecaster, interval_s=self.interval_s, max_horizon=self.horizon_steps)
            for _ in range(self.table.n_models)
        ]
        delay = max((p.launch_delay_s for p in self.table.pools), default=0.0)
        self.lead = math.ceil(delay / self.interval_s - 1e-9)

    def step(self, counts: np.ndarray, now: float) -> MultiDecision:
        """`counts`: (models, seconds) arrivals of the interval that just ended."""
        counts = np.asarray(counts, dtype=float)
        t0 = time.perf_counter()
        fcs = []
        for f, c in zip(self.forecasters, counts, strict=True):
            try:
                f.observe(c)
                fcs.append(f.forecast(self.horizon_steps))
            except Exception as e:  # noqa: BLE001 - contained, counted, logged
                log.warning("forecaster failed (%s); using the last observed rate", e)
                fcs.append(None)
        demand, fb = model_demand(fcs, self.lead, counts)
        t1 = time.perf_counter()
        observed = self.backend.observe()
        solves, pfb = self.solves, 0
        try:
            plan = self.plan(demand, observed)
        except Exception as e:  # noqa: BLE001 - hold the running placement
            log.warning("multi-model planner failed (%s); holding the placement", e)
            pfb = 1
            plan = Packing(observed, float("nan"), "hold")
        t2 = time.perf_counter()
        actions = reconcile_placement(observed, plan)
        self.backend.apply(actions, now)
        if self._last is not None and self._last[1] is plan and actions:
            # what the backend made of a fresh plan (new shards have their ids now) is what a
            # reused plan is compared with
            after = self.backend.observe()
            self._last = (self._last[0], Packing(after, plan.objective_usd_s, plan.source), 1)
        self.steps += 1
        self.forecaster_fallbacks += fb
        self.planner_fallbacks += pfb
        solved = self.solves > solves
        return MultiDecision(now, plan, demand, actions, t2 - t1, t1 - t0, fb, pfb, solved)

    def plan(self, demand: ModelDemand, observed: tuple[Shard, ...]) -> Packing:
        """The policy's plan, or the last one while it still stands: the running placement is
        the one it asked for, demand moved by less than `resolve_tolerance` instances' worth
        of work in all, and it is younger than `max_plan_age_steps` (as the single-model
        planner reuses its plans)."""
        last = self._last
        if last is not None:
            rates, plan, age = last
            work = np.nanmin(np.where(np.isfinite(self.table.s), self.table.s, np.nan), axis=1)
            moved = float(np.sum(np.abs(demand.rate - rates) * work[self.table.lambda_choice]))
            same = not reconcile_placement(observed, plan)
            if same and moved < self.resolve_tolerance and age < self.max_plan_age_steps:
                self._last = (rates, plan, age + 1)
                return plan
        plan = self._solve(demand, observed)
        self.solves += 1
        self._last = (np.array(demand.rate, dtype=float), plan, 1)
        return plan

    def _solve(self, demand: ModelDemand, observed: tuple[Shard, ...]) -> Packing:
        h = self.horizon_steps * self.interval_s
        if self.mode == "lambda-only":
            return lambda_only(self.table, demand)
        if self.mode == "popularity":
            return _sticky(popularity(self.table, demand, self.popularity_pool), observed)
        share = self.mode == "joint"
        return Packer(self.table, demand, observed, horizon_s=h, share=share).solve(
            "greedy" if share else "per-model"
        )


def _sticky(plan: Packing, observed: tuple[Shard, ...]) -> Packing:
    """Give a plan's shards the ids of running shards with the same pool and most members in
    common, so a baseline that plans from scratch does not rebuild its fleet every step."""
    free = {sh.sid: sh for sh in observed}
    out = []
    for sh in plan.shards:
        mine = {m for m, _ in sh.members}
        best = max(
            (s for s in free.values() if s.pool == sh.pool),
            key=lambda s: len(mine & {m for m, _ in s.members}),
            default=None,
        )
        if best is not None:
            free.pop(best.sid)
            sh = Shard(sh.pool, sh.members, sh.replicas, best.sid)
        out.append(sh)
    return Packing(tuple(out), plan.objective_usd_s, plan.source, plan.moves)
