"""Baseline forecasters: last value, EWMA, seasonal naive; quantiles from recent residuals."""

from __future__ import annotations

import numpy as np

from hybridserve.forecast.base import PointForecaster

__all__ = ["EWMA", "LastValue", "PointForecaster", "SeasonalNaive"]


class LastValue(PointForecaster):
    """Persistence: the next steps look like the last one. Strong on bursty, level-shifting load."""

    name = "last-value"


class EWMA(PointForecaster):
    """Exponentially weighted level; smooths noise at the price of lag."""

    name = "ewma"

    def __init__(self, alpha: float = 0.3, **kw) -> None:
        super().__init__(**kw)
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.level: float | None = None

    def _update(self, rate: float) -> None:
        self.level = (
            rate if self.level is None else self.alpha * rate + (1 - self.alpha) * self.level
        )

    def _point(self, horizon: int) -> np.ndarray:
        return np.full(horizon, self.level or 0.0)


class SeasonalNaive(PointForecaster):
    """The same step one season ago (daily by default), scaled by the recent level ratio.

    Until a full season is seen it falls back to the last value.
    """

    name = "seasonal-naive"

    def __init__(self, season_steps: int = 1440, **kw) -> None:
        super().__init__(**kw)
        self.season = season_steps
        self.hist = np.zeros(season_steps)
        self.n = 0

    def _update(self, rate: float) -> None:
        self.hist[self.n % self.season] = rate
        self.n += 1

    def _point(self, horizon: int) -> np.ndarray:
        if self.n < self.season:
            return np.full(horizon, self.last)
        idx = (self.n + np.arange(horizon)) % self.season  # steps n..n+h-1 one season back
        return self.hist[idx].copy()
