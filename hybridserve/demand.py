"""Demand per plan step as a small discrete distribution of per-second arrival rates.

The planner needs more than the forecast of a step's mean rate: within a minute the per-second
rate varies (bursts), and every second above fleet capacity is spilled to Lambda. So the demand of
step h is the product of (a) the forecast distribution of the step's mean rate and (b) the recent
distribution of per-second rate / interval mean ("burst profile"). The product is compressed to J
levels with probability bins that are finer in the upper tail, where the spill lives. A forecast
that knows the future (the oracle) gives the per-second arrivals directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hybridserve.forecast import Forecast

# Mean-rate discretisation: representative probabilities and the width of their bins.
_RATE_P = np.array([0.1, 0.3, 0.5, 0.7, 0.85, 0.94, 0.99])
_RATE_W = np.array([0.2, 0.2, 0.2, 0.2, 0.1, 0.08, 0.02])
_BURST_GRID = (np.arange(24) + 0.5) / 24  # equal-probability points of the burst profile


@lru_cache(maxsize=32)
def tail_edges(levels: int) -> np.ndarray:
    """Cumulative-probability bin edges, halving the remaining mass towards the upper tail."""
    if levels == 1:
        edges = np.array([0.0, 1.0])
    else:
        upper = 1.0 - 0.5 ** np.arange(1, levels) * 0.9 ** np.arange(levels - 1)
        edges = np.concatenate([[0.0], np.sort(upper)[: levels - 1], [1.0]])
    edges.flags.writeable = False  # shared by every call
    return edges


@dataclass(frozen=True)
class Demand:
    """Per step h: per-second rates `levels[h, j]` with probabilities `weights[h, j]` (rows sum to 1)."""

    levels: np.ndarray
    weights: np.ndarray
    mean: np.ndarray

    @property
    def horizon(self) -> int:
        return self.levels.shape[0]

    def expected_excess(self, capacity: np.ndarray) -> np.ndarray:
        """E[(rate - capacity)+] per step (req/s): the expected spill rate for that capacity."""
        cap = np.asarray(capacity, dtype=float).reshape(-1, 1)
        return np.sum(self.weights * np.maximum(self.levels - cap, 0.0), axis=1)


class BurstProfile:
    """Quantile function of per-second rate / interval mean over the last `window` intervals."""

    def __init__(self, window: int = 30) -> None:
        self.rows = np.ones((window, len(_BURST_GRID)))
        self.n = 0
        self._ratios: np.ndarray | None = None  # until the next observation

    def observe(self, counts: np.ndarray) -> None:
        m = float(np.mean(counts))
        if m <= 0:
            return  # a gap tells nothing about burstiness
        s = np.sort(np.asarray(counts, dtype=float)) / m
        pos = _BURST_GRID * (len(s) - 1)
        self.rows[self.n % len(self.rows)] = np.interp(pos, np.arange(len(s)), s)
        self.n += 1
        self._ratios = None

    def state(self) -> dict:
        return {"rows": self.rows.copy(), "n": self.n}

    def restore(self, state: dict, source: str = "burst profile") -> None:
        rows = np.asarray(state["rows"], dtype=float)
        if rows.shape != self.rows.shape:
            raise ValueError(f"{source}: rows of shape {rows.shape}, expected {self.rows.shape}")
        self.rows[:] = rows
        self.n = int(state["n"])
        self._ratios = None

    def ratios(self) -> np.ndarray:
        if self._ratios is None:
            k = min(self.n, len(self.rows))
            self._ratios = self.rows[:k].mean(axis=0) if k else np.ones(len(_BURST_GRID))
            self._ratios.flags.writeable = False  # shared by every caller until then
        return self._ratios


def _compress(
    values: np.ndarray, probs: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted points per row -> conditional mean and mass in each probability bin.

    The partial mean M(q) = E[X; F(X) <= q] is piecewise linear in q between sorted points; the
    level of bin (e0, e1] is (M(e1) - M(e0)) / (e1 - e0). All rows at once: offsetting row i's
    cumulative probabilities by i makes one sorted array for a single interpolation. `probs`
    is (rows, points), or (points,) when every row has the same weights; they sum to 1.
    """
    rows, n = values.shape
    # the rows are sorted runs here (rate quantile x burst ratio, or sorted arrivals), which the
    # stable sort merges: measured 23 us for 15 x 168 points against 87 us for quicksort
    order = np.argsort(values, axis=1, kind="stable")
    flat = order + np.arange(rows)[:, None] * n
    v = values.take(flat)
    p = probs[order] if probs.ndim == 1 else probs.take(flat)
    cp = np.zeros((rows, n + 1))
    np.cumsum(p, axis=1, out=cp[:, 1:])
    cp[:, -1] = 1.0  # exactly: the last edge must land on the last point
    cv = np.zeros((rows, n + 1))
    np.cumsum(v * p, axis=1, out=cv[:, 1:])
    off = np.arange(rows)[:, None] * 2.0  # rows kept apart: cp spans [0, 1]
    q = (off + edges[None, :]).ravel()
    m_at = np.interp(q, (off + cp).ravel(), cv.ravel()).reshape(rows, len(edges))
    width = np.diff(edges)
    level = np.diff(m_at, axis=1) / np.maximum(width, 1e-12)
    return level, np.broadcast_to(width, (rows, len(width))).copy()


@dataclass(frozen=True)
class DemandSketch:
    """What the demand of each step is made of, before compression: the forecast's mean-rate
    quantiles at `_RATE_P` (rows, weights `_RATE_W`) times the burst ratios, or the sorted
    per-second arrivals of a forecast that knows them. Cheap to build, and enough to bound how
    far the demand moved, which is all plan reuse needs to know."""

    rates: np.ndarray | None  # (H, R)
    ratios: np.ndarray | None  # (K,)
    per_second: np.ndarray | None  # (H, n), sorted per row


def sketch(forecast: Forecast, burst: BurstProfile | None) -> DemandSketch:
    if forecast.per_second is not None:
        return DemandSketch(None, None, np.sort(np.asarray(forecast.per_second, float), axis=1))
    ratios = burst.ratios() if burst is not None else np.ones(1)
    return DemandSketch(forecast.quantile(_RATE_P).T, ratios, None)


def build_demand(sk: DemandSketch, levels: int = 6) -> Demand:
    """Discrete per-second demand per step from its sketch (a forecast and the burst profile)."""
    edges = tail_edges(levels)
    if sk.per_second is not None:
        vals, probs = sk.per_second, np.full(sk.per_second.shape[1], 1.0 / sk.per_second.shape[1])
    else:
        vals = (sk.rates[:, :, None] * sk.ratios[None, None, :]).reshape(len(sk.rates), -1)
        probs = np.repeat(_RATE_W / len(sk.ratios), len(sk.ratios))  # same for every step
    lv, w = _compress(vals, probs, edges)
    mean = np.sum(lv * w, axis=1)
    return Demand(levels=lv, weights=w, mean=mean)


def moved(old: DemandSketch, new: DemandSketch, shift: int) -> np.ndarray:
    """Per overlapping step, an upper bound on the mean absolute change of per-second demand
    (the Wasserstein-1 distance between the old demand `shift` steps ahead and the new), which
    bounds the change of the expected spill at any capacity, (x - c)+ being 1-Lipschitz.

    For rate x ratio, pairing quantile with quantile: E|R'B' - RB| <= E|R' - R| E[B'] +
    E[R] E|B' - B|."""
    if old.per_second is not None or new.per_second is not None:
        if old.per_second is None or new.per_second is None:
            return np.full(1, np.inf)
        a = old.per_second[shift:]
        b = new.per_second[: len(a)]
        if a.shape != b.shape:
            return np.full(1, np.inf)
        return np.mean(np.abs(a - b), axis=1)
    ro, rn = old.rates[shift:], new.rates[: len(old.rates) - shift]
    if old.ratios.shape != new.ratios.shape or ro.shape != rn.shape:
        return np.full(1, np.inf)
    d_rate = (np.abs(rn - ro) @ _RATE_W) * float(np.mean(new.ratios))
    d_ratio = (ro @ _RATE_W) * float(np.mean(np.abs(new.ratios - old.ratios)))
    return d_rate + d_ratio
