"""Seasonal statistical forecasters: Holt-Winters (ETS) and SARIMAX with time-of-day Fourier terms.

Both fit with statsmodels on a bounded window of recent history at a configurable cadence
(daily by default) and, between fits, run the fitted model's recursion by hand: one step costs
microseconds, so a 22-day replay at 1-minute intervals stays within seconds. Until a full
season (plus the fit's minimum) is seen they forecast the last value. Capture gaps (an interval
of zeros where the level makes that implausible) are treated as missing: states do not move.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from hybridserve.forecast.simple import PointForecaster


class _FittedSeasonal(PointForecaster):
    """History, refit cadence and fit timing shared by the seasonal models."""

    def __init__(
        self,
        *,
        season_steps: int = 1440,
        refit_every: int | None = None,
        fit_window: int | None = None,
        max_history: int | None = None,
        **kw,
    ) -> None:
        super().__init__(**kw)
        if season_steps < 2:
            raise ValueError(f"season_steps must be >= 2, got {season_steps}")
        self.season_steps = season_steps
        self.refit_every = refit_every or season_steps
        self.fit_window = fit_window or 3 * season_steps
        self.hist = np.zeros(max_history or 8 * season_steps)
        self.n = 0  # observed steps
        self.fitted_at = -1
        self.fits = 0
        self._filled = 0.0

    @property
    def min_fit(self) -> int:
        return 2 * self.season_steps

    def _push(self, rate: float) -> None:
        self.hist[self.n % len(self.hist)] = rate
        self.n += 1

    def recent(self, k: int) -> np.ndarray:
        k = min(k, self.n, len(self.hist))
        idx = np.arange(self.n - k, self.n) % len(self.hist)
        return self.hist[idx]

    def _update(self, rate: float) -> None:
        if self.in_gap:
            # missing: the state moves as forecast (before a fit, the last real rate stands in)
            rate = float(self._one_step()) if self.fitted_at >= 0 else self._filled
        self._filled = rate
        self._push(rate)
        if self.fitted_at >= 0:
            self._step(rate)
        due = self.fitted_at < 0 or self.n - self.fitted_at >= self.refit_every
        if self.n >= self.min_fit and due:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._fit(self.recent(self.fit_window))
            self.fit_seconds += time.perf_counter() - t0
            self.fits += 1
            self.fitted_at = self.n

    def _point(self, horizon: int) -> np.ndarray:
        if self.fitted_at < 0:
            return np.full(horizon, self.last)
        return np.maximum(self._ahead(horizon), 0.0)

    # model-specific
    def _fit(self, y: np.ndarray) -> None: ...
    def _step(self, y: float) -> None: ...
    def _ahead(self, horizon: int) -> np.ndarray: ...

    def _one_step(self) -> float:
        return float(self._ahead(1)[0])


class HoltWinters(_FittedSeasonal):
    """Additive Holt-Winters (ETS(A,N,A)) with a daily season.

    statsmodels estimates the smoothing weights and the initial states; the recursion
    `l = a (y - s[t-m]) + (1 - a) l`, `s[t] = g (y - l) + (1 - g) s[t-m]` then runs per step.
    """

    name = "holt-winters"

    def __init__(self, *, smooth_steps: int = 31, **kw) -> None:
        super().__init__(**kw)
        self.smooth_steps = smooth_steps

    def _fit(self, y: np.ndarray) -> None:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        m = self.season_steps
        res = ExponentialSmoothing(
            y, trend=None, seasonal="add", seasonal_periods=m, initialization_method="heuristic"
        ).fit()
        self.alpha = float(res.params["smoothing_level"])
        self.gamma = float(res.params["smoothing_seasonal"])
        self.level = float(res.level[-1])
        # seasonal state for the next m steps, indexed by absolute step modulo m
        season = np.asarray(res.season)[-m:]
        if self.smooth_steps > 1:
            # a few days give noisy per-step seasonal states; the daily profile itself is smooth
            k = min(self.smooth_steps, m)
            pad = np.concatenate([season[-(k // 2) :], season, season[: k - 1 - k // 2]])
            season = np.convolve(pad, np.ones(k) / k, mode="valid")
        self.season = np.empty(m)
        self.season[(self.n - m + np.arange(m)) % m] = season

    def _step(self, y: float) -> None:
        m = self.season_steps
        i = (self.n - 1) % m  # slot of the step just observed
        s_old = self.season[i]
        new_level = self.alpha * (y - s_old) + (1 - self.alpha) * self.level
        self.season[i] = self.gamma * (y - new_level) + (1 - self.gamma) * s_old
        self.level = new_level

    def _ahead(self, horizon: int) -> np.ndarray:
        idx = (self.n + np.arange(horizon)) % self.season_steps
        return self.level + self.season[idx]


class SARIMAX(_FittedSeasonal):
    """Regression on time-of-day Fourier terms with ARMA(p, q) errors (statsmodels).

    y[t] = x[t] b + z[t], z an ARMA process; x = [1, sin/cos(2 pi k t / season), k = 1..K].
    Estimated by default with statsmodels' ARIMA (exogenous Fourier regressors) by Hannan-Rissanen:
    the same model the SARIMAX state-space MLE fits (`method="mle"` runs that, statsmodels'
    SARIMAX class), with parameters within a few percent of it here, in a steady ~0.25 s instead
    of 0.5-6 s. After a fit, z and its innovations are carried by hand:
    forecasts are x[t+h] b + the ARMA forecast of z.
    """

    name = "sarimax"

    def __init__(
        self,
        *,
        order: tuple[int, int] = (2, 1),
        fourier: int = 4,
        integrated: bool = False,
        method: str = "hannan-rissanen",
        **kw,
    ) -> None:
        if method not in ("hannan-rissanen", "mle"):
            raise ValueError(f"method must be 'hannan-rissanen' or 'mle', got {method!r}")
        self.method = method
        kw.setdefault("fit_window", 2 * kw.get("season_steps", 1440))
        super().__init__(**kw)
        self.p, self.q = order
        self.K = fourier
        self.d = 1 if integrated else 0

    def _x(self, steps: np.ndarray) -> np.ndarray:
        ang = 2 * np.pi * np.outer(steps, np.arange(1, self.K + 1)) / self.season_steps
        return np.column_stack([np.ones(len(steps)), np.sin(ang), np.cos(ang)])

    def _fit(self, y: np.ndarray) -> None:
        from statsmodels.tsa.arima.model import ARIMA

        steps = np.arange(self.n - len(y), self.n)
        x = self._x(steps)
        if self.d:  # ARIMA(p,1,q) errors: fit the ARMA on differences, regressors differenced too
            yy, xx = np.diff(y), np.diff(x[:, 1:], axis=0)
            res = ARIMA(yy, exog=xx, order=(self.p, 0, self.q), trend="n").fit(
                method="hannan_rissanen"
            )
            par = np.asarray(res.params)
            self.beta = np.concatenate([[0.0], par[: xx.shape[1]]])
            k = xx.shape[1]
            z = yy - xx @ self.beta[1:]
            self.y_last = float(y[-1])
        elif self.method == "mle":  # the statsmodels SARIMAX state-space MLE itself
            from statsmodels.tsa.statespace.sarimax import SARIMAX as _SARIMAX

            res = _SARIMAX(y, exog=x, order=(self.p, 0, self.q), trend="n").fit(
                disp=False, maxiter=50
            )
            k = x.shape[1]  # exog coefficients first, then AR, MA, sigma2
            par = np.asarray(res.params)
            self.beta = par[:k]
            z = y - x @ self.beta
        else:
            try:
                res = ARIMA(y, exog=x[:, 1:], order=(self.p, 0, self.q), trend="c").fit(
                    method="hannan_rissanen"
                )
            except ValueError:  # non-invertible MA estimate: fall back to pure AR (OLS)
                self.q = 0
                res = ARIMA(y, exog=x[:, 1:], order=(self.p + 1, 0, 0), trend="c").fit(
                    method="hannan_rissanen"
                )
                self.p += 1
            k = x.shape[1]  # const + Fourier terms, in the same order as ARIMA's parameters
            par = np.asarray(res.params)
            self.beta = par[:k]
            z = y - x @ self.beta
        self.phi = par[k : k + self.p]
        self.theta = par[k + self.p : k + self.p + self.q]
        e = np.asarray(res.resid)  # one-step innovations of the modelled series equal those of z
        self.z = list(z[-max(self.p, 1) :])
        self.e = list(e[-max(self.q, 1) :])

    def _step(self, y: float) -> None:
        t = self.n - 1
        if self.d:
            dx = self._x(np.array([t]))[0] - self._x(np.array([t - 1]))[0]
            z = (y - self.y_last) - float(dx @ self.beta)
            self.y_last = y
        else:
            z = y - float(self._x(np.array([t]))[0] @ self.beta)
        pred = self._arma_next(self.z, self.e)
        self.z = (self.z + [z])[-max(self.p, 1) :]
        self.e = (self.e + [z - pred])[-max(self.q, 1) :]

    def _arma_next(self, z: list[float], e: list[float]) -> float:
        ar = sum(self.phi[i] * z[-1 - i] for i in range(self.p) if i < len(z))
        ma = sum(self.theta[j] * e[-1 - j] for j in range(self.q) if j < len(e))
        return float(ar + ma)

    def _ahead(self, horizon: int) -> np.ndarray:
        z, e = list(self.z), list(self.e)
        out = np.empty(horizon)
        for h in range(horizon):
            nxt = self._arma_next(z, e)
            out[h] = nxt
            z.append(nxt)
            e.append(0.0)
        if self.d:
            steps = self.n - 1 + np.arange(horizon + 1)
            dx = np.diff(self._x(steps) @ self.beta)
            return self.y_last + np.cumsum(dx + out)
        return self._x(self.n + np.arange(horizon)) @ self.beta + out
