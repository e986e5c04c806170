"""`auto`: an ensemble chosen by rolling backtest on the history seen so far.

Every candidate observes every interval and forecasts every step; when a forecast matures, its
absolute error per lead goes into an exponentially weighted mean (half-life about a day). The
ensemble's point forecast per lead weights the candidates by inverse squared recent error, so a
model that is better at short leads and another at long leads each win where they are good. The
ensemble's own conformal residuals give its quantiles, so they are calibrated for what it
actually forecasts.

A candidate that raises or forecasts nonsense (NaN, inf, negative, far beyond the history) is
dropped from the ensemble until its next refit (one season for models that never refit), and
logged once; the others carry on. Only when every candidate is out does `auto` itself fail, which
its fallback chain then contains.
"""

from __future__ import annotations

import logging

import numpy as np

from hybridserve.forecast.base import PointForecaster
from hybridserve.forecast.fallback import FAR_FACTOR, forecast_problem

log = logging.getLogger("hybridserve.forecast")

# Chosen by rolling-origin backtest (1-minute steps, 10-minute lead), skill = MAE / last value's:
#   candidates                        twitter (last 7 d)   synthetic (seed 11, last 3 d)
#   + ewma + holt-winters                   0.897               0.806
#   + ewma                                  0.891               0.794
#   last-value, seasonal-naive, sarimax, linear  0.880          0.786
# Holt-Winters and EWMA only dilute the weights (they are the worst single models on both), and
# Holt-Winters' statsmodels import and daily fit were half of a replay's forecasting time.
DEFAULT_CANDIDATES = ("last-value", "seasonal-naive", "sarimax", "linear")


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
        self.peak = 0.0
        # candidate index -> (refit marker when dropped, step when dropped)
        self.dropped: dict[int, tuple[object, int]] = {}
        self.drops: dict[str, int] = {}
        self._warned: set[str] = set()

    @property
    def season_steps(self) -> int:
        return max((getattr(c, "season_steps", 0) for c in self.cands), default=0)

    @property
    def fit_seconds(self) -> float:  # type: ignore[override]
        return sum(getattr(c, "fit_seconds", 0.0) for c in self.cands)

    @fit_seconds.setter
    def fit_seconds(self, _v: float) -> None:
        pass  # the candidates keep their own fit time

    @staticmethod
    def _refit_marker(c: PointForecaster) -> object:
        return getattr(c, "fit_attempts", getattr(c, "fits", None))

    def _drop(self, i: int, why: str) -> None:
        c = self.cands[i]
        self.dropped[i] = (self._refit_marker(c), self.n)
        self.drops[c.name] = self.drops.get(c.name, 0) + 1
        level = logging.DEBUG if c.name in self._warned else logging.WARNING
        self._warned.add(c.name)
        log.log(level, "auto: candidate %s dropped until its next refit (%s)", c.name, why)

    def _readmit(self) -> None:
        season = max(self.season_steps, 1)
        for i, (marker, at) in list(self.dropped.items()):
            c = self.cands[i]
            refitted = marker is not None and self._refit_marker(c) != marker
            if refitted or (marker is None and self.n - at >= season):
                del self.dropped[i]

    def observe_rate(self, rate: float, seconds: int) -> None:
        self.peak = max(self.peak, rate)
        for i, c in enumerate(self.cands):
            try:
                c.observe_rate(rate, seconds)
            except Exception as e:  # contained: the candidate is out until its next refit
                text = str(e).splitlines()
                self._drop(i, f"observe: {type(e).__name__}: {text[0] if text else ''}")
        super().observe_rate(rate, seconds)
        self._readmit()

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
        """(candidates, lead) weights: inverse recent error (bias-corrected EW mean) ^ power;
        zero for dropped candidates."""
        err = self._err / np.maximum(self._wsum, 1e-12)[None, :]
        err = np.where(self._wsum[None, :] > 0, err, 1.0)
        w = 1.0 / np.maximum(err, 1e-9) ** self.power
        if self.dropped:
            w[list(self.dropped)] = 0.0
        total = w.sum(axis=0, keepdims=True)
        if not np.minimum.reduce(total, axis=None) > 0:  # NaN fails too
            raise RuntimeError("auto: every candidate forecaster is out")
        return w / total

    def _candidate(self, i: int) -> np.ndarray:
        """Candidate i's point forecast over the full horizon; NaN when it is (now) out."""
        if i in self.dropped:
            return np.full(self.H, np.nan)
        c = self.cands[i]
        try:
            mean = np.asarray(c.point(self.H), dtype=float)
        except Exception as e:
            self._drop(
                i, f"forecast: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
            return np.full(self.H, np.nan)
        problem = forecast_problem(mean, self.H, FAR_FACTOR * max(self.peak, 1.0))
        if problem is not None:
            self._drop(i, problem)
            return np.full(self.H, np.nan)
        return mean

    def _point(self, horizon: int) -> np.ndarray:
        if self._cache is None:
            self._cache = np.stack([self._candidate(i) for i in range(len(self.cands))])
            self._made[:, (self.n - 1) % (self.H + 1)] = self._cache
        w = self.weights()
        cache = np.nan_to_num(self._cache) if self.dropped else self._cache
        return np.sum(w * cache, axis=0)[:horizon]
