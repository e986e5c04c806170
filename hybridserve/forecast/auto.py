"""`auto`: an ensemble chosen by rolling backtest on the history seen so far.

Every candidate observes every interval and forecasts every step; when a forecast matures, its
absolute error per lead goes into an exponentially weighted mean (half-life about a day). The
ensemble's point forecast per lead weights the candidates by inverse squared recent error, so a
model that is better at short leads and another at long leads each win where they are good. The
ensemble's own conformal residuals give its quantiles, so they are calibrated for what it
actually forecasts.
"""

from __future__ import annotations

import numpy as np

from hybridserve.forecast.simple import PointForecaster

DEFAULT_CANDIDATES = ("last-value", "ewma", "seasonal-naive", "holt-winters", "sarimax", "linear")


class Auto(PointForecaster):
    name = "auto"

    def __init__(
        self,
        candidates: list[PointForecaster],
        *,
        half_life: int = 1440,
        power: float = 2.0,
        **kw,
    ) -> None:
        super().__init__(**kw)
        if not candidates:
            raise ValueError("auto needs at least one candidate forecaster")
        self.cands = candidates
        self.H = self.rq.max_horizon
        self.decay = 0.5 ** (1.0 / max(half_life, 1))
        self.power = power
        self._made = np.full((len(candidates), self.H + 1, self.H), np.nan)
        self._err = np.ones((len(candidates), self.H))  # EW mean absolute error
        self._wsum = np.zeros(self.H)
        self.n = 0
        self._cache: np.ndarray | None = None  # candidates' forecasts for the current step

    @property
    def season_steps(self) -> int:
        return max((getattr(c, "season_steps", 0) for c in self.cands), default=0)

    @property
    def fit_seconds(self) -> float:  # type: ignore[override]
        return sum(getattr(c, "fit_seconds", 0.0) for c in self.cands)

    @fit_seconds.setter
    def fit_seconds(self, _v: float) -> None:
        pass  # the candidates keep their own fit time

    def observe(self, counts: np.ndarray) -> None:
        for c in self.cands:
            c.observe(counts)
        super().observe(counts)

    def _update(self, rate: float) -> None:
        t = self.n
        leads = np.arange(self.H)
        issued = t - 1 - leads
        ok = issued >= 0
        if ok.any() and not self.in_gap:
            f = self._made[:, issued[ok] % (self.H + 1), leads[ok]]  # (C, k)
            err = np.abs(rate - f)
            good = ~np.isnan(err)
            d = self.decay
            cur = self._err[:, leads[ok]]
            self._err[:, leads[ok]] = np.where(good, d * cur + (1 - d) * err, cur)
            self._wsum[leads[ok]] = d * self._wsum[leads[ok]] + (1 - d)
        self._made[:, t % (self.H + 1)] = np.nan
        self.n += 1
        self._cache = None

    def weights(self) -> np.ndarray:
        """(candidates, lead) weights: inverse recent error (bias-corrected EW mean) ^ power."""
        err = self._err / np.maximum(self._wsum, 1e-12)[None, :]
        err = np.where(self._wsum[None, :] > 0, err, 1.0)
        w = 1.0 / np.maximum(err, 1e-9) ** self.power
        return w / w.sum(axis=0, keepdims=True)

    def _point(self, horizon: int) -> np.ndarray:
        if self._cache is None:
            self._cache = np.stack([c.forecast(self.H).mean for c in self.cands])  # (C, H)
            self._made[:, (self.n - 1) % (self.H + 1)] = self._cache
        w = self.weights()
        return np.sum(w * self._cache, axis=0)[:horizon]
