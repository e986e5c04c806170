"""Baseline forecasters: last value, EWMA, seasonal naive; quantiles from recent residuals."""

from __future__ import annotations

import numpy as np

from hybridserve.forecast.base import Forecast, ResidualQuantiles, check_counts


class PointForecaster:
    """Shared bookkeeping: interval rates in, conformal quantiles around a point forecast out.

    Subclasses implement `_update(rate)` (new interval mean rate) and `_point(horizon)`.
    """

    name = "point"

    def __init__(self, max_horizon: int = 60, window: int = 1440) -> None:
        self.rq = ResidualQuantiles(max_horizon=max_horizon, window=window)
        self.last = 0.0
        self.in_gap = False
        self.fit_seconds = 0.0

    def observe(self, counts: np.ndarray) -> None:
        a = check_counts(counts)
        rate = float(a.mean())
        # a whole interval of zeros where the recent level makes that near impossible
        # (P < e^-20 under Poisson) is a capture gap: models may treat it as missing
        level = self.rq.level or 0.0
        self.in_gap = rate == 0.0 and level * len(a) > 20.0
        self.rq.record_actual(rate)
        self._update(rate)
        self.last = rate

    def _update(self, rate: float) -> None:
        pass

    def _point(self, horizon: int) -> np.ndarray:
        return np.full(horizon, self.last)

    def forecast(self, horizon: int) -> Forecast:
        if horizon > self.rq.max_horizon:
            raise ValueError(
                f"horizon {horizon} exceeds this forecaster's max_horizon {self.rq.max_horizon}"
            )
        return self.rq.make(self._point(horizon))


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


FORECASTERS = {
    "last-value": LastValue,
    "ewma": EWMA,
    "seasonal-naive": SeasonalNaive,
    "holt-winters": None,
    "sarimax": None,
    "linear": None,
    "auto": None,
    "lstm": None,
}


def make_forecaster(name: str, *, interval_s: int = 60, max_horizon: int = 60):
    """Forecaster by name; seasonal models get a daily season at this control interval."""
    if name not in FORECASTERS:
        raise ValueError(f"unknown forecaster {name!r}; choose one of {', '.join(FORECASTERS)}")
    season = max(2, 86400 // interval_s)
    kw = {"max_horizon": max_horizon, "window": max(season, 100)}  # a day of residuals
    if name == "seasonal-naive":
        return SeasonalNaive(season_steps=season, **kw)
    if name == "holt-winters":
        from hybridserve.forecast.statistical import HoltWinters

        return HoltWinters(season_steps=season, **kw)
    if name == "sarimax":
        from hybridserve.forecast.statistical import SARIMAX

        return SARIMAX(season_steps=season, **kw)
    if name == "linear":
        from hybridserve.forecast.linear import LinearDirect

        return LinearDirect(season_steps=season, interval_s=interval_s, **kw)
    if name == "lstm":
        from hybridserve.forecast.lstm import LSTMForecaster

        # bounded by epochs, not the clock, so a replay is reproducible on a busy machine too
        return LSTMForecaster(
            season_steps=season, min_history=2 * season, epochs=20, max_fit_s=300.0, **kw
        )
    if name == "auto":
        from hybridserve.forecast.auto import DEFAULT_CANDIDATES, Auto

        cands = [
            make_forecaster(c, interval_s=interval_s, max_horizon=max_horizon)
            for c in DEFAULT_CANDIDATES
        ]
        return Auto(cands, half_life=season, **kw)
    return FORECASTERS[name](**kw)
