"""Cost floor: the LP relaxation of the oracle's plan, solved exactly and vectorised.

Relaxations of the oracle's problem, each of which can only lower its cost:
- fractional instances, all at the lowest price per unit of capacity in the scenario;
- no launch overhead, no 60 s minimum, no cold starts (Lambda at its warm price);
- the fleet's queue credited with the most SLO slack any pool has.

What is kept: capacity is constant over pieces of g = gcd(control interval, launch delays)
seconds, because the controller acts once per interval and instances become ready a launch delay
later, so a fleet can change only at those instants; and in every second the fleet serves at most
kappa * C, kappa = 1 + (SLO - s_min) in seconds (rate C plus a queue of at most C (SLO - s_min)),
the rest going to Lambda. Per piece, cost(C) = c g C + c_L sum_t (a_t - kappa C)+ is convex and
piecewise linear in C with breakpoints a_t / kappa, so its minimum is at one of them (or 0).
"""

from __future__ import annotations

import math

import numpy as np

from hybridserve.config import Scenario, lambda_usd_per_request


def piece_seconds(sc: Scenario) -> int:
    g = sc.control_interval_s
    for p in sc.pools:
        g = math.gcd(g, int(round(p.launch_delay_s)))
    return max(1, g)


def cost_lower_bound(counts: np.ndarray, sc: Scenario) -> float:
    """USD floor for serving `counts` within the SLO under scenario `sc`."""
    pools = sc.pools
    c = min(p.price_usd_s / p.capacity_rps for p in pools)  # $ per (req/s) per second
    s_min = min(p.latency_s for p in pools)
    kappa = 1.0 + max(sc.slo.latency_s - s_min, 0.0)
    c_l = lambda_usd_per_request(sc)
    g = piece_seconds(sc)
    a = np.asarray(counts, dtype=float)
    pad = (-len(a)) % g
    if pad:
        a = np.concatenate([a, np.zeros(pad)])
    total = 0.0
    rows_per_chunk = max(1, 2_000_000 // g)
    pieces = a.reshape(-1, g)
    for i in range(0, len(pieces), rows_per_chunk):
        x = -np.sort(-pieces[i : i + rows_per_chunk], axis=1)  # descending
        k = np.arange(g)[None, :]
        prefix = np.cumsum(x, axis=1) - x  # sum of the k larger values
        # cost at C = x_k / kappa: EC2 for the piece + Lambda for the k seconds above it
        at_break = c * g * x / kappa + c_l * (prefix - k * x)
        lam_only = c_l * x.sum(axis=1)
        total += float(np.sum(np.minimum(at_break.min(axis=1), lam_only)))
    return total
