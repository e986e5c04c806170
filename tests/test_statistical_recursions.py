"""The hand-run recursions of the statistical forecasters against statsmodels itself, on the same
parameters: Holt-Winters' level and season updates, and the regression + ARMA errors' one-step
predictions carried between fits."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("statsmodels")

from hybridserve.forecast.statistical import SARIMAX, HoltWinters  # noqa: E402

M = 48  # season steps


def seasonal(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (
        100 + 30 * np.sin(2 * np.pi * t / M) + 10 * np.cos(4 * np.pi * t / M) + rng.normal(0, 3, n)
    )


def _hw(y, alpha=None, gamma=None, **init):
    """statsmodels' additive Holt-Winters on y: estimated (heuristic start), or with the given
    smoothing weights from the given initial states."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    kw = {"trend": None, "seasonal": "add", "seasonal_periods": M}
    if alpha is None:
        return ExponentialSmoothing(y, initialization_method="heuristic", **kw).fit()
    model = ExponentialSmoothing(y, initialization_method="known", **kw, **init)
    return model.fit(smoothing_level=alpha, smoothing_seasonal=gamma, optimized=False)


@pytest.mark.parametrize(
    ("seed", "alpha", "gamma"), [(0, None, None), (1, 0.3, 0.2), (2, 0.05, 0.6)]
)
def test_holt_winters_steps_like_statsmodels(seed: int, alpha, gamma) -> None:
    """Fitted at 2 seasons, then stepped by hand for 2 more: every one-step forecast equals
    statsmodels' own on the whole series from the same start. The estimated weights come out
    near 0 on this series, so two cases fix them, to exercise both updates."""
    y = seasonal(4 * M, seed)
    fit_n, k = 2 * M, 2 * M
    start = _hw(y[:fit_n]).params
    init = {"initial_level": start["initial_level"], "initial_seasonal": start["initial_seasons"]}
    a = start["smoothing_level"] if alpha is None else alpha
    g = start["smoothing_seasonal"] if gamma is None else gamma

    class Fixed(HoltWinters):
        def _fit(self, y_fit):
            self._adopt(_hw(y_fit, a, g, **init))

    hw = Fixed(season_steps=M, smooth_steps=1, refit_every=10**9, quantiles=False)
    ours = []
    for t in range(fit_n + k - 1):
        hw.observe_rate(float(y[t]), 60)
        if t + 1 >= fit_n:
            ours.append(float(hw._ahead(1)[0]))  # forecast of y[t + 1]
    assert (hw.alpha, hw.gamma) == (pytest.approx(a), pytest.approx(g))
    ref = _hw(y[: fit_n + k], a, g, **init)
    want = np.asarray(ref.fittedvalues)[fit_n : fit_n + k]  # one step ahead, after y[:t]
    np.testing.assert_allclose(ours, want, rtol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_regression_with_arma_errors_predicts_like_statsmodels(seed: int) -> None:
    from scipy.signal import lfilter
    from statsmodels.tsa.statespace.sarimax import SARIMAX as SmSARIMAX

    rng = np.random.default_rng(seed)
    n = 5 * M
    e = rng.normal(0, 2, n)
    z = lfilter([1.0, 0.4], [1.0, -0.5, 0.2], e)  # ARMA(2, 1) errors
    y = seasonal(n, seed + 10) + z
    fit_n = 2 * M
    model = SARIMAX(season_steps=M, order=(2, 1), fourier=2, refit_every=10**9, quantiles=False)
    ours = []
    for t in range(n - 1):
        model.observe_rate(float(y[t]), 60)
        if t + 1 >= fit_n:
            ours.append(float(model._ahead(1)[0]))  # forecast of y[t + 1]
    assert model.fits == 1 and model.q == 1 and model.p == 2
    x = model._x(np.arange(n))
    params = np.r_[model.beta, model.phi, model.theta, 1.0]
    ref = SmSARIMAX(y, exog=x, order=(2, 0, 1), trend="n").filter(params)
    want = np.asarray(ref.predict())[fit_n:n]  # E[y_t | y_<t], same parameters
    # the Kalman filter starts from the stationary state, the recursion from zero innovations;
    # the two agree once the MA part has forgotten its start (|theta|^t)
    np.testing.assert_allclose(ours[M:], want[M:], rtol=1e-7)
    assert np.max(np.abs(np.array(ours) - want)) < 0.5  # and are close from the first step
