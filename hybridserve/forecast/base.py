"""The Forecaster interface, the Forecast it returns, and conformal quantiles from residuals."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Protocol

import numpy as np
from scipy.special import ndtri

# conformal residuals give any level for free; a fine grid keeps the shape of heavy-tailed errors
# (interpolating a few levels in normal-score space fattens the middle of such a distribution)
RESIDUAL_LEVELS: tuple[float, ...] = (
    0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99,
)  # fmt: skip


@dataclass(frozen=True)
class Forecast:
    """Load ahead, one entry per control step: mean and quantiles of the step's mean rate (req/s).

    `per_second` is set only by forecasters that know the future exactly (the oracle): the
    per-second arrivals of each step, shape (horizon, interval_s).
    """

    mean: np.ndarray
    quantiles: dict[float, np.ndarray]
    per_second: np.ndarray | None = field(default=None, compare=False)

    @property
    def horizon(self) -> int:
        return len(self.mean)

    @cached_property
    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Known levels and the (levels, horizon) quantile matrix."""
        if 0.5 not in self.quantiles:
            raise ValueError("a Forecast needs the 0.5 quantile")
        levels = sorted(self.quantiles)
        return np.array(levels), np.stack([self.quantiles[q] for q in levels])

    def quantile(self, p: float | np.ndarray) -> np.ndarray:
        """Quantile(s) at probability p, shape (len(p), horizon): interpolated between the known
        levels in normal-score space; below the median mirrored around it (floored at 0)."""
        ps = np.atleast_1d(np.asarray(p, dtype=float))
        levels, qs = self._grid
        med = self.quantiles[0.5]
        if len(levels) == 1:
            return np.maximum(np.broadcast_to(med, (len(ps), self.horizon)), 0.0)
        j, w, upper = _interpolation(tuple(levels.tolist()), tuple(ps.tolist()))
        rows = qs[j - 1] + w[:, None] * (qs[j] - qs[j - 1])
        out = np.where(upper[:, None], rows, 2 * med[None, :] - rows)
        return np.maximum(out, 0.0)


@lru_cache(maxsize=64)
def _interpolation(
    levels: tuple[float, ...], ps: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where probabilities `ps` fall among known `levels` in normal-score space: upper index,
    weight and side of the median. Depends on the levels only, which rarely change, so it is
    memoised (the planner asks for the same probabilities every step)."""
    z = ndtri(np.asarray(levels))
    p = np.asarray(ps)
    upper = p >= 0.5
    zp = ndtri(np.where(upper, p, 1.0 - p))
    # linear in z between known levels; beyond the last, the last segment's slope goes on
    j = np.clip(np.searchsorted(z, zp), 1, len(z) - 1)
    w = (zp - z[j - 1]) / (z[j] - z[j - 1])
    w = np.where(zp <= z[0], 0.0, w)  # below the first level: the first level
    return j, w, upper


class Forecaster(Protocol):
    """What the Controller needs from a load model."""

    name: str

    def observe(self, counts: np.ndarray) -> None:
        """Arrivals per second of the control interval that just ended."""

    def forecast(self, horizon: int) -> Forecast:
        """Mean and quantiles of the mean rate for each of the next `horizon` intervals."""


class ResidualQuantiles:
    """Split-conformal quantiles from the residuals of the last `window` forecasts, per lead.

    A point forecaster records each forecast it makes; when the actual step arrives, the residual
    `(actual - forecast) / level` of every lead that matured is stored in a ring buffer, `level`
    being a slow EWMA of the rate (about an hour) at the time of the forecast. Scaling by a slow
    level keeps the quantiles proportional to the load without letting a forecast of zero (after
    a capture gap) turn one miss into a ratio of 65x. Quantile = forecast + q(residual) * level.
    Quantiles per lead are refreshed every `refresh` steps (sorting is the only costly part).
    """

    def __init__(
        self,
        max_horizon: int = 60,
        window: int = 1440,
        refresh: int = 30,
        levels: tuple[float, ...] = RESIDUAL_LEVELS,
        min_samples: int = 20,
    ) -> None:
        self.max_horizon = max_horizon
        self.levels = levels
        self.refresh = refresh
        self.min_samples = min_samples
        self._made = np.full((max_horizon + 1, max_horizon), np.nan)  # forecasts by issue step
        self._made_level = np.ones(max_horizon + 1)
        self.level: float | None = None
        self.level_alpha = 1.0 / 60.0
        self._res = np.full((window, max_horizon), np.nan)
        self._n = 0  # residual rows written
        self._step = 0  # actual steps seen
        self._q = np.zeros((len(levels), max_horizon))
        self._ready = False

    def record_actual(self, actual: float) -> None:
        """The actual mean rate of step `self._step`; scores forecasts issued 1..H steps before."""
        t = self._step
        leads = np.arange(self.max_horizon)
        issued = t - 1 - leads
        ok = issued >= 0
        row = np.full(self.max_horizon, np.nan)
        if ok.any():
            slots = issued[ok] % (self.max_horizon + 1)
            f = self._made[slots, leads[ok]]
            row[ok] = (actual - f) / self._made_level[slots]
        a = self.level_alpha
        self.level = actual if self.level is None else (1 - a) * self.level + a * actual
        self._res[self._n % len(self._res)] = row
        self._made[t % (self.max_horizon + 1)] = np.nan  # slot of the forecast issued next
        self._n += 1
        self._step += 1
        if self._n % self.refresh == 0:
            self._refit()

    def record_forecast(self, mean: np.ndarray) -> None:
        """Forecast issued after the latest actual (for steps t+1..t+H)."""
        slot = (self._step - 1) % (self.max_horizon + 1)
        self._made[slot] = np.nan
        self._made[slot, : len(mean)] = mean[: self.max_horizon]
        self._made_level[slot] = max(self.level or 0.0, 1.0)

    def _refit(self) -> None:
        res = np.sort(self._res[: min(self._n, len(self._res))], axis=0)  # NaNs sort last
        counts = np.sum(~np.isnan(res), axis=0)
        if counts[0] < self.min_samples:
            return
        lv = np.asarray(self.levels)[:, None]
        idx = np.clip(np.round(lv * (counts[None, :] - 1)).astype(int), 0, len(res) - 1)
        q = np.take_along_axis(res, idx, axis=0)  # (L, H), nearest-rank quantiles
        # leads without enough samples borrow the deepest lead that has them
        good = counts >= self.min_samples
        last = np.flatnonzero(good)[-1]
        q[:, ~good] = q[:, [last]]
        self._q = np.sort(q, axis=0)  # levels must not cross
        self._ready = True

    def make(self, mean: np.ndarray) -> Forecast:
        """Forecast around `mean` with the residual quantiles (a point forecast until calibrated)."""
        self.record_forecast(mean)
        h = len(mean)
        if not self._ready:
            return Forecast(
                mean=mean, quantiles={lv: mean.copy() for lv in self.levels} | {0.5: mean}
            )
        grid = np.maximum(mean[None, :] + self._q[:, :h] * max(self.level or 0.0, 1.0), 0.0)
        qs = dict(zip(self.levels, grid, strict=True))
        if 0.5 not in qs:
            qs[0.5] = mean
        return Forecast(mean=mean, quantiles=qs)


def check_counts(counts: np.ndarray) -> np.ndarray:
    """Validate one interval of per-second counts: finite and non-negative."""
    a = np.asarray(counts, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"counts: expected a non-empty 1-D array of per-second arrivals, got shape {a.shape}"
        )
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        bad = int(np.flatnonzero(~np.isfinite(a) | (a < 0))[0])
        raise ValueError(f"counts[{bad}] = {a[bad]!r}: arrivals must be finite and >= 0")
    return a


class PointForecaster:
    """Shared bookkeeping: interval rates in, conformal quantiles around a point forecast out.

    Subclasses implement `_update(rate)` (new interval mean rate) and `_point(horizon)`.
    With ``quantiles=False`` the forecaster gives its point forecast only (the 0.5 quantile):
    members of an ensemble or a fallback chain, whose owner calibrates what it emits, skip the
    conformal bookkeeping, which is most of a cheap model's per-step cost.
    """

    name = "point"

    def __init__(self, max_horizon: int = 60, window: int = 1440, quantiles: bool = True) -> None:
        self.rq = ResidualQuantiles(max_horizon=max_horizon, window=window)
        self.max_horizon = max_horizon
        self.quantiles = quantiles
        self.level: float | None = None  # slow EWMA of the rate (about an hour), as rq's
        self.last = 0.0
        self.in_gap = False
        self.fit_seconds = 0.0

    def observe(self, counts: np.ndarray) -> None:
        a = check_counts(counts)
        self.observe_rate(float(a.mean()), len(a))

    def observe_rate(self, rate: float, seconds: int) -> None:
        """The interval's mean rate over `seconds` seconds, already validated (ensembles and
        chains check the counts once and hand every member the rate)."""
        # a whole interval of zeros where the recent level makes that near impossible
        # (P < e^-20 under Poisson) is a capture gap: models may treat it as missing
        level = self.level or 0.0
        self.in_gap = rate == 0.0 and level * seconds > 20.0
        if self.quantiles:
            self.rq.record_actual(rate)
        alpha = self.rq.level_alpha
        self.level = rate if self.level is None else (1 - alpha) * self.level + alpha * rate
        self._update(rate)
        self.last = rate

    def _update(self, rate: float) -> None:
        pass

    def _point(self, horizon: int) -> np.ndarray:
        return np.full(horizon, self.last)

    def point(self, horizon: int) -> np.ndarray:
        """The point forecast alone: what ensembles and chains combine."""
        if horizon > self.max_horizon:
            raise ValueError(
                f"horizon {horizon} exceeds this forecaster's max_horizon {self.max_horizon}"
            )
        return self._point(horizon)

    def forecast(self, horizon: int) -> Forecast:
        mean = self.point(horizon)
        if not self.quantiles:
            return Forecast(mean=mean, quantiles={0.5: mean})
        return self.rq.make(mean)
