"""Direct multi-horizon linear forecaster (median regression on lagged features).

For every lead h = 1..H, the change y[t+h] - y[t] is regressed on features known at t: the last
few rates, local means over 5, 15 and 60 steps (the level that bursts revert to), the rate one
season before the target step, and time-of-day Fourier terms of the target step. The fit is a
ridge least-squares start refined by a few iteratively reweighted steps towards least absolute
deviations: load changes are heavy-tailed (flash crowds), and a squared loss chases them, while
the conditional median is what minimises the absolute error. Refits run on a cadence over a
bounded window; samples touching a capture gap are left out. Cheap: a refit is tens of
milliseconds and a step is one small matrix product.
"""

from __future__ import annotations

import time

import numpy as np

from hybridserve.forecast.base import PointForecaster

_LAGS = 3
_MEANS = (5, 15, 60)


class LinearDirect(PointForecaster):
    name = "linear"

    def __init__(
        self,
        *,
        season_steps: int = 1440,
        fourier: int = 4,
        hourly: int = 0,
        interval_s: int = 60,
        ridge: float = 1.0,
        l1_iterations: int = 4,
        refit_every: int | None = None,
        fit_window: int | None = None,
        **kw,
    ) -> None:
        super().__init__(**kw)
        if season_steps < 2:
            raise ValueError(f"season_steps must be >= 2, got {season_steps}")
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.season_steps = season_steps
        self.K = fourier
        self.hour_steps = max(1, round(3600 / interval_s))
        self.Kh = hourly if self.hour_steps >= 4 else 0
        self.ridge = ridge
        self.l1_iterations = l1_iterations
        self.refit_every = refit_every or season_steps
        self.fit_window = fit_window or 7 * season_steps
        self.H = self.rq.max_horizon
        cap = self.fit_window + season_steps + self.H + max(_MEANS) + 2
        self.hist = np.zeros(cap)
        self.gap = np.zeros(cap, dtype=bool)
        self.n = 0
        self.coef: np.ndarray | None = None  # (features, H)
        self.fitted_at = -1
        self.fits = 0
        self._filled = 0.0

    @property
    def min_fit(self) -> int:
        return self.season_steps + self.H + max(_MEANS) + 2 * self.season_steps // 2

    def _update(self, rate: float) -> None:
        if self.in_gap:
            rate = self._filled  # the last real rate stands in; the step is excluded from fits
        self._filled = rate
        i = self.n % len(self.hist)
        self.hist[i] = rate
        self.gap[i] = self.in_gap
        self.n += 1
        due = self.fitted_at < 0 or self.n - self.fitted_at >= self.refit_every
        if self.n >= self.min_fit and due:
            t0 = time.perf_counter()
            self._fit()
            self.fit_seconds += time.perf_counter() - t0
            self.fits += 1
            self.fitted_at = self.n

    def _series(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.n, len(self.hist))
        idx = np.arange(self.n - k, self.n) % len(self.hist)
        return self.hist[idx], self.gap[idx]

    def _features(self, y: np.ndarray, origins: np.ndarray, step0: int) -> np.ndarray:
        """Features at origins (indices into y, whose index 0 is absolute step step0), per lead.

        Returns (len(origins), H, p): lead-specific columns (season-ago value, Fourier of the
        target step) differ per lead; the rest repeat."""
        cs = np.concatenate([[0.0], np.cumsum(y)])
        last = y[origins]
        cols = [y[origins - j] - last for j in range(1, _LAGS)]
        cols += [(cs[origins + 1] - cs[origins + 1 - w]) / w - last for w in _MEANS]
        common = np.stack([np.ones(len(origins)), *cols], axis=1)  # (n, c)
        leads = np.arange(1, self.H + 1)
        tgt = origins[:, None] + leads[None, :]  # (n, H) target indices
        ago = y[tgt - self.season_steps] - last[:, None]
        steps = (step0 + tgt).ravel()
        ang = 2 * np.pi * np.outer(steps, np.arange(1, self.K + 1)) / self.season_steps
        parts = [np.sin(ang), np.cos(ang)]
        if self.Kh:
            ang_h = 2 * np.pi * np.outer(steps, np.arange(1, self.Kh + 1)) / self.hour_steps
            parts += [np.sin(ang_h), np.cos(ang_h)]
        four = np.concatenate(parts, axis=1).reshape(len(origins), self.H, -1)
        n = len(origins)
        return np.concatenate(
            [
                np.broadcast_to(common[:, None, :], (n, self.H, common.shape[1])),
                ago[:, :, None],
                four,
            ],
            axis=2,
        )

    def _fit(self) -> None:
        y, gap = self._series(self.fit_window + self.season_steps + self.H + max(_MEANS))
        step0 = self.n - len(y)
        lo = max(max(_MEANS), self.season_steps)  # earliest origin with every feature defined
        origins = np.arange(lo, len(y) - self.H)
        if len(origins) < 50:
            return
        # leave out samples whose window or targets touch a gap
        g = np.concatenate([[0], np.cumsum(gap)])
        bad = g[np.minimum(origins + self.H + 1, len(y))] - g[origins - max(_MEANS) + 1] > 0
        origins = origins[~bad]
        if len(origins) < 50:
            return
        X = self._features(y, origins, step0)  # (n, H, p)
        Y = y[origins[:, None] + np.arange(1, self.H + 1)[None, :]] - y[origins][:, None]
        p = X.shape[2]
        coef = np.empty((p, self.H))
        reg = self.ridge * np.eye(p)
        reg[0, 0] = 0.0  # no shrinkage on the intercept
        for h in range(self.H):
            A = X[:, h, :]
            b = np.linalg.solve(A.T @ A + reg, A.T @ Y[:, h])
            for _ in range(self.l1_iterations):  # IRLS towards least absolute deviations
                w = 1.0 / np.maximum(np.abs(Y[:, h] - A @ b), 1e-3 + 0.05 * np.std(Y[:, h]))
                Aw = A * w[:, None]
                b = np.linalg.solve(Aw.T @ A + reg, Aw.T @ Y[:, h])
            coef[:, h] = b
        self.coef = coef

    def _point(self, horizon: int) -> np.ndarray:
        if self.coef is None:
            return np.full(horizon, self.last)
        need = self.season_steps + max(_MEANS) + 2
        y, _ = self._series(need)
        # extend with placeholders so target indices exist; season-ago values are all in the past
        yy = np.concatenate([y, np.zeros(self.H)])
        x = self._features(yy, np.array([len(y) - 1]), self.n - len(y))[0]  # (H, p)
        # a regression can extrapolate below zero near an idle spell; a rate cannot
        return np.maximum(y[-1] + np.einsum("hp,ph->h", x, self.coef)[:horizon], 0.0)
