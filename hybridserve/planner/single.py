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
    inp: PlanInput, pool: Pool, base: np.ndarray, eps: float = 1e-6
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
    lead = inp.lead_steps(pool)
    fixed = np.arange(H) < lead
    serve[fixed] = np.where(xs[None, :] <= base[fixed, None] + 1e-9, serve[fixed], np.inf)
    launch_cost = pool.price_usd_s * pool.launch_delay_s
    arrivals = np.diff(base, prepend=0.0)  # instances that become ready at each step
    value = serve[0] + launch_cost * np.maximum(xs - arrivals[0], 0.0)
    choice = np.zeros((H, xmax + 1), dtype=np.int64)
    for h in range(1, H):
        # trans[prev, x]: launches to go from prev to x beyond what arrives anyway
        trans = launch_cost * np.maximum(xs[None, :] - xs[:, None] - arrivals[h], 0.0)
        total = value[:, None] + trans
        choice[h] = np.argmin(total, axis=0)
        value = serve[h] + total[choice[h], np.arange(xmax + 1)]
    x = np.empty(H, dtype=np.int64)
    x[-1] = int(np.argmin(value))
    for h in range(H - 1, 0, -1):
        x[h - 1] = choice[h, x[h]]
    return x[None, :].astype(float), float(value[x[-1]])
