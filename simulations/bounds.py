"""Cost floor: a Lagrangian bound on what any schedule of the scenario's fleet and Lambda costs.

The problem it relaxes. The fleet can change only at pieces of g = gcd(control interval, launch
delays) seconds (the controller acts once per interval and instances become ready a launch delay
later); per piece j it holds an integer fleet, level l, costing F_l $/s with capacity K_l req/s.
A request the fleet serves within the SLO waits at most q = SLO - s_min (s_min: the fastest
pool's service time) before its service starts; any other request goes to Lambda at c_L at
least, or misses the SLO, which at most M = (1 - target) N requests may.

Constraints kept, each true of every schedule the data plane can replay:
1. per second t of a piece, the fleet serves at most a_t, and at most K (capacity over the
   t + 1 + q seconds the second's requests can be served in, inside the piece) plus the
   share of a_t arriving in the piece's last q seconds (what the next piece's fleet may serve);
2. over the whole trace the fleet serves at most sum_j K_j g + q K_max: capacity is spent once,
   so the queue buys one-off slack (its backlog at the trace's end), not a faster fleet. The
   old floor credited the slack in every second (1 + q times the rate, for ever), which put it
   below the one-line bound "every request costs the cheapest price per request";
3. at most M requests miss the SLO.

Relaxed: Lambda at its cheapest price per request (a warm invoke of the largest batch that fits
the SLO, billed for the handler alone; no cold starts), no launch overhead or 60 s minimum, every
pool's slack as large as the fastest pool's, spot at its price without AWS's refund of an
interrupted first hour. Integer fleets are kept per piece.

Proof of validity (weak duality). Put multipliers mu >= 0 on (2) and lambda >= 0 on (3). For any
schedule meeting the SLO target, cost >= cost + mu (sum s_j - capacity) + lambda (misses - M),
and the right side, minimised piece by piece over levels and over how each request is served
(fleet at mu up to constraint (1)'s H_jl, a miss at lambda, Lambda at c_L), is

    L(lambda, mu) = sum_j min_l [F_l g - mu K_l g - (p - mu)+ H_jl] + p N - lambda M - mu q K_max,

p = min(c_L, lambda). So every L is a floor, and the best one, max over (lambda, mu) of a concave
function, is found by nested golden-section search. At mu = lambda = the cheapest fleet price per
request c (when c <= c_L), L = c (N - M) - c q K_max: the one-line bound, less a single backlog.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hybridserve.config import Pool, Scenario, lambda_service_s
from hybridserve.pricing import lambda_invoke_usd

MAX_LEVELS = 400  # fleet levels kept exactly; beyond, capacities are bucketed (still a relaxation)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def lambda_floor_usd(sc: Scenario, max_batch: int = 1024) -> float:
    """The least a request can cost on Lambda: the cheapest share of one invoke over the batch
    sizes whose service fits the SLO (the router's buffer batches spill), each billed for the
    handler's time alone (the invocation overhead is not billed)."""
    p = sc.lambda_pricing
    best = math.inf
    for b in range(1, max_batch + 1):
        s = lambda_service_s(sc, b)
        if s > sc.slo.latency_s and b > 1:
            break
        handler_ms = max(s * 1000.0 - sc.model.lambda_.invoke_overhead_ms, 0.0)
        usd = lambda_invoke_usd(handler_ms, sc.lambda_.memory_mb, p.usd_per_gb_s, p.usd_per_request)
        best = min(best, usd / b)
    return best


def piece_seconds(sc: Scenario) -> int:
    """Seconds over which every fleet is constant; 1 with spot, whose replacements launch at
    the notice, at any second."""
    if "spot" in sc.markets:
        return 1
    g = sc.control_interval_s
    for p in sc.pools:
        g = math.gcd(g, int(round(p.launch_delay_s)))
    return max(1, g)


@dataclass(frozen=True)
class Levels:
    """The integer fleets worth having: (cost $/s, capacity req/s), sorted by capacity, none
    dominated (more capacity for less money)."""

    usd_s: np.ndarray
    rps: np.ndarray


def fleet_levels(pools: Sequence[Pool], k_sat: float, max_levels: int = MAX_LEVELS) -> Levels:
    """Pareto frontier of integer fleets with capacity below `k_sat`, the capacity past which a
    piece gains nothing (it serves every request), plus one level standing for every fleet at or
    above it: cost F*, the cheapest such fleet's, and capacity F* / c (c the cheapest price per
    capacity). For any fleet X at or above k_sat, F_X - mu K_X >= F_X (1 - mu / c) >= F* (1 -
    mu / c) when mu <= c, which is that level's value: it is no dearer than any of them.

    When the frontier is larger than `max_levels`, neighbouring levels are merged into one with
    the larger capacity and the smaller cost: cheaper than any of them, so the floor stays valid."""
    c = min(p.price_usd_s / p.capacity_rps for p in pools)
    # the cheapest fleet at or above k_sat drops below it without any one instance
    limit = k_sat + max(p.capacity_rps for p in pools)
    cost = np.zeros(1)
    cap = np.zeros(1)
    for p in sorted(pools, key=lambda p: p.price_usd_s / p.capacity_rps):
        k = np.arange(int(limit // p.capacity_rps) + 1)
        c2 = (cost[:, None] + k[None, :] * p.price_usd_s).ravel()
        k2 = (cap[:, None] + k[None, :] * p.capacity_rps).ravel()
        keep = k2 < limit
        cost, cap = _pareto(c2[keep], k2[keep])
        if len(cap) > max_levels:
            cost, cap = _bucket(cost, cap, max_levels)
    if k_sat <= 0:
        return Levels(np.zeros(1), np.zeros(1))
    below = cap < k_sat
    f_star = float(cost[~below].min())
    cost, cap = _pareto(np.append(cost[below], f_star), np.append(cap[below], f_star / c))
    return Levels(cost, cap)


def _pareto(cost: np.ndarray, cap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((cost, -cap))  # capacity descending, then cost ascending
    c, k = cost[order], cap[order]
    best = np.minimum.accumulate(c)  # cheapest at this capacity or more
    keep = np.concatenate([[True], c[1:] < best[:-1] - 1e-15])
    c, k = c[keep], k[keep]
    return c[::-1].copy(), k[::-1].copy()


def _bucket(cost: np.ndarray, cap: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge neighbours (the empty fleet stays alone): each group becomes (its cheapest cost, its
    largest capacity)."""
    edges = np.concatenate([[0], np.linspace(1, len(cap), n).astype(int)])
    groups = [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
    return (
        np.array([cost[s].min() for s in groups]),
        np.array([cap[s].max() for s in groups]),
    )


def served_bounds(counts: np.ndarray, g: int, q: float, levels: Levels) -> np.ndarray:
    """H[j, l]: the most the fleet at level l can serve within the SLO of piece j's requests
    (constraint 1 of the module docstring), pieces x levels."""
    a = np.asarray(counts, dtype=float)
    pad = (-len(a)) % g
    if pad:
        a = np.concatenate([a, np.zeros(pad)])
    pieces = a.reshape(-1, g)
    o = np.arange(g, dtype=float)
    w = np.minimum(1.0 + q, g - o)  # capacity-seconds inside the piece per unit of K
    v = np.clip(o + 1.0 - g + q, 0.0, 1.0)  # share of a_t the next piece may serve
    out = np.empty((len(pieces), len(levels.rps)))
    for li, k in enumerate(levels.rps):
        out[:, li] = np.minimum(pieces, k * w[None, :] + pieces * v[None, :]).sum(axis=1)
    return out


@dataclass(frozen=True)
class Floor:
    usd: float
    lam: float  # multiplier of the miss budget, $ per missed request
    mu: float  # multiplier of the capacity constraint, $ per request served by the fleet
    one_line_usd: float  # target x requests x cheapest price per request


class _Dual:
    """L(lambda, mu) of the module docstring, on precomputed per-piece tables."""

    def __init__(self, counts: np.ndarray, sc: Scenario) -> None:
        pools = sc.pools
        self.g = g = piece_seconds(sc)
        s_min = min(p.latency_s for p in pools)
        self.q = q = max(sc.slo.latency_s - s_min, 0.0)
        a = np.asarray(counts, dtype=float)
        self.n = float(a.sum())
        self.m = (1.0 - sc.slo.target) * self.n
        self.c_l = lambda_floor_usd(sc)
        self.c = min(p.price_usd_s / p.capacity_rps for p in pools)
        self.levels = fleet_levels(pools, float(a.max(initial=0.0)))  # K >= max a serves all
        self.h = served_bounds(a, g, q, self.levels)
        self.fixed = (self.levels.usd_s * g)[None, :]
        self.kg = (self.levels.rps * g)[None, :]
        self.tail = q * float(self.levels.rps[-1])

    def value(self, lam: float, mu: float) -> float:
        p = min(self.c_l, lam)
        per_piece = self.fixed - mu * self.kg - max(p - mu, 0.0) * self.h
        return float(per_piece.min(axis=1).sum()) + p * self.n - lam * self.m - mu * self.tail


def _golden_max(f, lo: float, hi: float, iters: int = 28) -> tuple[float, float]:
    """Maximum of a concave function on [lo, hi]: (argmax, value)."""
    a, b = lo, hi
    x1, x2 = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    f1, f2 = f(x1), f(x2)
    for _ in range(iters):
        if f1 >= f2:
            b, x2, f2 = x2, x1, f1
            x1 = b - _GOLDEN * (b - a)
            f1 = f(x1)
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + _GOLDEN * (b - a)
            f2 = f(x2)
    best = max((f(lo), lo), (f(hi), hi), (f1, x1), (f2, x2))
    return best[1], best[0]


def cost_floor(counts: np.ndarray, sc: Scenario) -> Floor:
    """The floor with its multipliers and the one-line bound it must not fall below."""
    if not np.any(np.asarray(counts) > 0):
        return Floor(0.0, 0.0, 0.0, 0.0)
    d = _Dual(counts, sc)
    c_req = min(d.c, d.c_l)
    one_line = sc.slo.target * d.n * c_req

    def best_over_lam(mu: float) -> tuple[float, float]:
        return _golden_max(lambda lam: d.value(lam, mu), 0.0, d.c_l)

    mu, val = _golden_max(lambda mu: best_over_lam(mu)[1], 0.0, d.c)
    lam, val = best_over_lam(mu)
    # the one-line point is a feasible multiplier pair: never report less than it gives
    start = d.value(c_req, min(c_req, d.c))
    if start > val:
        lam, mu, val = c_req, min(c_req, d.c), start
    return Floor(max(val, 0.0), lam, mu, one_line)


def cost_lower_bound(counts: np.ndarray, sc: Scenario) -> float:
    """USD floor for serving `counts` within the SLO target under scenario `sc`."""
    return cost_floor(counts, sc).usd
