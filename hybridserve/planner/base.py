"""Types shared by every planner (the fleet types themselves live in `hybridserve.fleet`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from hybridserve.config import Pool
from hybridserve.demand import BurstProfile, Demand, DemandSketch, build_demand, sketch
from hybridserve.fleet import FleetView
from hybridserve.forecast import Forecast


@dataclass(frozen=True)
class PlanInput:
    """Everything a planner may look at for one decision.

    `demand` (per-second rate levels per step) and its `sketch` are built on first use, once:
    only planners that price the spill need them.
    """

    forecast: Forecast
    fleet: FleetView
    pools: list[Pool]
    interval_s: float
    lambda_usd_per_request: float | None  # None: Lambda not allowed (VM-only policy)
    observed_rate: float = 0.0
    now_s: float = 0.0
    burst: BurstProfile | None = None
    demand_levels: int = 6

    @cached_property
    def sketch(self) -> DemandSketch:
        return sketch(self.forecast, self.burst)

    @cached_property
    def demand(self) -> Demand:
        return build_demand(self.sketch, self.demand_levels)

    @property
    def horizon(self) -> int:
        return self.forecast.horizon

    def lead_steps(self, pool: Pool) -> int:
        """Steps until an instance launched now serves a whole step."""
        return math.ceil(pool.launch_delay_s / self.interval_s - 1e-9)

    def base_counts(self) -> np.ndarray:
        """(pools, horizon): instances serving each step with no new launch and no retirement."""
        h = self.horizon
        out = np.zeros((len(self.pools), h))
        starts = np.arange(h) * self.interval_s
        for i, p in enumerate(self.pools):
            st = self.fleet.get(p.key)
            pend = np.asarray(st.pending_ready_in_s, dtype=float)
            out[i] = st.ready + np.sum(pend[None, :] <= starts[:, None] + 1e-9, axis=1)
        return out


@dataclass(frozen=True)
class Plan:
    """Target instance count per pool (ready plus launching), and the horizon it came from."""

    target: dict[str, int]
    counts: np.ndarray | None = None  # (pools, horizon) planned serving counts
    solved: bool = True  # False when a previous solution was reused
    objective_usd: float | None = None


def retire_unplanned(target: dict[str, int], fleet: FleetView) -> dict[str, int]:
    """Name every pool that has instances: those the plan leaves out get an explicit 0."""
    out = dict(target)
    for key in fleet.totals():
        out.setdefault(key, 0)
    return out


class Planner(Protocol):
    name: str

    def plan(self, inp: PlanInput) -> Plan: ...


def cheapest_pool(pools: list[Pool]) -> Pool:
    """Lowest cost per request; among ties the smallest (finest granularity)."""
    return min(pools, key=lambda p: (round(p.usd_per_request, 15), p.capacity_rps))


def prune_dominated(pools: list[Pool], keep: set[str] | frozenset[str] = frozenset()) -> list[Pool]:
    """Drop pools another pool beats or ties on capacity, price, latency and launch delay.

    Exact for the planners: a dominated pool can always be swapped for its dominator at no loss.
    Pools in `keep` (those with running instances) stay so their instances can be planned.
    """
    out = []
    for i, a in enumerate(pools):
        dominated = False
        for j, b in enumerate(pools):
            if i == j:
                continue
            ge = (
                b.capacity_rps >= a.capacity_rps
                and b.price_usd_s <= a.price_usd_s
                and b.latency_s <= a.latency_s
                and b.launch_delay_s <= a.launch_delay_s
            )
            strict = (
                b.capacity_rps > a.capacity_rps
                or b.price_usd_s < a.price_usd_s
                or b.latency_s < a.latency_s
                or b.launch_delay_s < a.launch_delay_s
            )
            if ge and (strict or j < i):
                dominated = True
                break
        if not dominated or a.key in keep:
            out.append(a)
    return out


def prune_multiples(
    pools: list[Pool], keep: set[str] | frozenset[str] = frozenset(), rel: float = 1e-9
) -> list[Pool]:
    """Drop a pool that k instances of another (k >= 2 an integer) replace at no loss: k times its
    capacity for at least k times its price, no faster, launching no sooner, in the same market.

    Exact for the planners, which see a pool only through capacity, price, latency and launch
    delay: c5.xlarge is two c5.large. The finer pool also retires in smaller steps.
    Pools in `keep` (those with running instances) stay.
    """
    out = []
    for b in pools:
        replaceable = False
        if b.key not in keep:
            for a in pools:
                if a is b or a.market != b.market:
                    continue
                k = b.capacity_rps / a.capacity_rps
                if round(k) < 2 or abs(k - round(k)) > rel * k:
                    continue
                k = round(k)
                if (
                    b.price_usd_s >= k * a.price_usd_s * (1 - rel)
                    and b.latency_s >= a.latency_s
                    and b.launch_delay_s >= a.launch_delay_s
                ):
                    replaceable = True
                    break
        if not replaceable:
            out.append(b)
    return out
