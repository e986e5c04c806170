"""Baseline forecasters: last value, EWMA, seasonal naive; quantiles from recent residuals."""

from __future__ import annotations

import numpy as np

from hybridserve.forecast.base import Forecast, ResidualQuantiles, check_counts


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
