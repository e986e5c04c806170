"""A forecaster that is handed the future: what the oracle policy plans with."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hybridserve.forecast.base import Forecast, check_counts


class HindsightForecaster:
    """Returns the true arrivals ahead of the clock, per second (simulation only)."""

    name = "hindsight"

    def __init__(self, counts: np.ndarray, interval_s: int, clock: Callable[[], float]) -> None:
        self.counts = np.asarray(counts)
        self.interval_s = interval_s
        self.clock = clock

    def observe(self, counts: np.ndarray) -> None:
        check_counts(counts)

    def forecast(self, horizon: int) -> Forecast:
        start = int(self.clock())
        n = horizon * self.interval_s
        window = self.counts[start : start + n].astype(float)
        if len(window) < n:  # past the end of the trace: the load stops
            window = np.concatenate([window, np.zeros(n - len(window))])
        per_second = window.reshape(horizon, self.interval_s)
        mean = per_second.mean(axis=1)
        return Forecast(
            mean=mean, quantiles={0.5: mean, 0.9: mean, 0.99: mean}, per_second=per_second
        )
