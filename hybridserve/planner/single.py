"""The exact plan for one pool, by dynamic programming instead of the MILP.

With a single pool (the default catalog reduces to one: every c5 size costs the same per unit of
capacity, see `prune_multiples`) the MILP of `exact` is a shortest path over instance counts per
step: serving cost per (step, count) plus the launch cost of each increase beyond what is
already launching. The DP minimises exactly the MILP's objective, epsilon included.
Measured here: HiGHS takes 7 ms for this one-pool problem (horizon 15, 6 demand levels), the DP
0.1 ms; a replay solves thousands of plans a day, so this is where the planner's time went.
"""

from __future__ import annotations

import numpy as np

from hybridserve.config import Pool
from hybridserve.planner.base import PlanInput

# above this many candidate counts per step the (counts x counts) transition gets costly;
# the MILP takes over
MAX_COUNTS = 400


def counts_bound(inp: PlanInput, pool: Pool, base: np.ndarray) -> int:
    """Largest instance count worth considering: enough for every demand level, or what runs."""
    peak = float(np.max(inp.demand.levels)) if inp.demand.levels.size else 0.0
    return int(max(np.max(base, initial=0), np.ceil(peak / pool.capacity_rps - 1e-9)))


def solve_single(
    inp: PlanInput,
    pool: Pool,
    base: np.ndarray,
    eps: float = 1e-6,
    retire_fraction: float = 0.0,
    tail_steps: int = 0,
) -> tuple[np.ndarray, float]:
    """Serving counts (1, horizon) and objective for one pool; `base` (horizon,) as in the MILP."""
    dem = inp.demand
    H = dem.horizon
    dt = inp.interval_s
    c_l = inp.lambda_usd_per_request
    if c_l is None:
        raise ValueError("the exact planner needs Lambda (lambda_usd_per_request) to price spill")
    xmax = counts_bound(inp, pool, base)
    if xmax + 1 > MAX_COUNTS:
        raise OverflowError(f"{xmax + 1} instance counts per step: too many for the DP")
    xs = np.arange(xmax + 1, dtype=float)
    # serving cost per (step, count): EC2 seconds + epsilon + expected Lambda cost of the excess
    excess = np.maximum(dem.levels[:, :, None] - pool.capacity_rps * xs[None, None, :], 0.0)
    spill = np.einsum("hj,hjx->hx", dem.weights, excess)
    serve = (pool.price_usd_s * dt + eps) * xs[None, :] + c_l * dt * spill
    serve[-1] *= 1 + tail_steps  # the last step also stands for the tail past the horizon
    lead = inp.lead_steps(pool)
    fixed = np.arange(H) < lead
    serve[fixed] = np.where(xs[None, :] <= base[fixed, None] + 1e-9, serve[fixed], np.inf)
    launch_cost = pool.price_usd_s * pool.launch_delay_s
    retire_cost = retire_fraction * launch_cost
    arrivals = np.rint(np.diff(base, prepend=0.0)).astype(np.int64)  # ready at each step
    d0 = xs - arrivals[0]
    value = serve[0] + launch_cost * np.maximum(d0, 0.0) + retire_cost * np.maximum(-d0, 0.0)
    choice = np.zeros((H, xmax + 1), dtype=np.int64)
    for h in range(1, H):
        value, choice[h] = _step(value, launch_cost, retire_cost, int(arrivals[h]))
        value = value + serve[h]
    x = np.empty(H, dtype=np.int64)
    x[-1] = int(np.argmin(value))
    for h in range(H - 1, 0, -1):
        x[h - 1] = choice[h, x[h]]
    return x[None, :].astype(float), float(value[x[-1]])


def _step(
    value: np.ndarray, launch_cost: float, retire_cost: float, arrive: int
) -> tuple[np.ndarray, np.ndarray]:
    """min over prev of value[prev] + f(x - arrive - prev) for every x, with f(d) the cost of
    d launches (d > 0) or -d retirements (d < 0), in O(counts): with launches (prev < x -
    arrive) it is launch_cost * (x - arrive) plus a prefix minimum of value[prev] -
    launch_cost * prev; otherwise -retire_cost * (x - arrive) plus a suffix minimum of
    value[prev] + retire_cost * prev. Returns the minima and the minimising prev."""
    n = len(value)
    idx = np.arange(n)
    u = value + retire_cost * idx
    rev = u[::-1]
    suf_min = np.minimum.accumulate(rev)[::-1]
    suf_arg = (n - 1 - _running_argmin(rev))[::-1]
    start = np.clip(idx - arrive, 0, n - 1)
    best = suf_min[start] - retire_cost * (idx - arrive)
    arg = suf_arg[start]
    w = value - launch_cost * idx
    pre_min = np.minimum.accumulate(w)
    pre_arg = _running_argmin(w)
    last = idx - arrive - 1  # the highest prev that needs launches
    ok = last >= 0
    if ok.any():
        j = last[ok]
        launch = launch_cost * (idx[ok] - arrive) + pre_min[j]
        better = launch < best[ok]
        sel = np.flatnonzero(ok)[better]
        best[sel] = launch[better]
        arg[sel] = pre_arg[j[better]]
    return best, arg


def _running_argmin(a: np.ndarray) -> np.ndarray:
    """Index of the minimum of a[:i+1] for every i (the last index among equal minima)."""
    m = np.minimum.accumulate(a)
    hit = np.where(a <= m, np.arange(len(a)), 0)
    return np.maximum.accumulate(hit)
