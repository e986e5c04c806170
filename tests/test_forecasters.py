"""Forecasters: seasonality recovered, calibrated quantiles, gaps, ensemble weighting, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from hybridserve.forecast import LastValue, make_forecaster
from hybridserve.forecast.auto import Auto
from hybridserve.forecast.linear import LinearDirect
from hybridserve.forecast.registry import FORECASTERS
from hybridserve.forecast.simple import EWMA
from hybridserve.forecast.statistical import SARIMAX, HoltWinters

SEASON = 240  # a short "day" keeps the tests fast


def seasonal_rates(days: int, seed: int = 0, level: float = 60.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(days * SEASON)
    rng = np.random.default_rng(seed)
    slow = np.exp(np.cumsum(rng.normal(0, 0.01, len(t))) * 0.3)
    return level * (1 + amp * np.sin(2 * np.pi * t / SEASON)) * slow


def feed(f, rates: np.ndarray, seed: int = 1, horizon: int = 10, observed: list | None = None):
    """Observe Poisson per-second counts of each interval; collect lead-`horizon` forecasts."""
    rng = np.random.default_rng(seed)
    out = []
    for r in rates:
        counts = rng.poisson(r, 60)
        if observed is not None:
            observed.append(counts.mean())
        f.observe(counts)
        out.append(f.forecast(horizon))
    return out


def lead_mae(forecasts, rates, start: int, h: int = 10) -> float:
    return float(
        np.mean(
            [abs(forecasts[k].mean[h - 1] - rates[k + h]) for k in range(start, len(rates) - h)]
        )
    )


@pytest.mark.parametrize("cls", [HoltWinters, SARIMAX, LinearDirect])
def test_seasonal_models_recover_the_season_and_beat_last_value(cls):
    rates = seasonal_rates(6)
    f = cls(season_steps=SEASON, max_horizon=SEASON)
    fc = feed(f, rates, horizon=10)
    assert f.fits >= 1
    lv = feed(LastValue(max_horizon=10), rates, horizon=10)
    start = 4 * SEASON
    assert lead_mae(fc, rates, start) < 0.8 * lead_mae(lv, rates, start)
    # a whole season ahead follows the true shape
    ahead = f.forecast(SEASON).mean
    truth = np.sin(2 * np.pi * (len(rates) + np.arange(SEASON)) / SEASON)
    assert np.corrcoef(ahead, truth)[0, 1] > 0.9


@pytest.mark.parametrize("name", ["last-value", "holt-winters", "auto"])
def test_quantiles_are_calibrated(name):
    rates = seasonal_rates(8, seed=3)
    f = make_forecaster(name, interval_s=86400 // SEASON, max_horizon=10)
    seen: list[float] = []
    fc = feed(f, rates, seed=4, horizon=5, observed=seen)
    start = 4 * SEASON
    y = np.array(seen)[start + 5 :]  # what the forecaster forecasts: the observed interval mean
    q90 = np.array([x.quantiles[0.9][4] for x in fc[start : len(rates) - 5]])
    q50 = np.array([x.quantiles[0.5][4] for x in fc[start : len(rates) - 5]])
    assert 0.85 <= np.mean(y <= q90) <= 0.95
    assert 0.40 <= np.mean(y <= q50) <= 0.60
    assert all(np.all(x.quantiles[0.5] <= x.quantiles[0.9] + 1e-9) for x in fc[start:])
    assert all(np.all(x.quantiles[0.9] <= x.quantiles[0.99] + 1e-9) for x in fc[start:])


def test_sarimax_mle_and_hannan_rissanen_agree():
    rates = seasonal_rates(3, seed=12)
    fcs = []
    for method in ("hannan-rissanen", "mle"):
        f = SARIMAX(season_steps=SEASON, max_horizon=10, method=method)
        feed(f, rates)
        assert f.fits >= 1
        fcs.append(f.forecast(10).mean)
    assert np.allclose(fcs[0], fcs[1], rtol=0.1)
    with pytest.raises(ValueError, match="method"):
        SARIMAX(season_steps=SEASON, method="magic")


def test_capture_gap_does_not_collapse_the_level():
    rates = seasonal_rates(4, seed=5)
    f = HoltWinters(season_steps=SEASON, max_horizon=10)
    rng = np.random.default_rng(0)
    for r in rates:
        f.observe(rng.poisson(r, 60))
    before = f.forecast(1).mean[0]
    for _ in range(5):  # five minutes of capture gap
        f.observe(np.zeros(60, dtype=int))
    after = f.forecast(1).mean[0]
    assert after > 0.7 * before
    lv = LastValue()
    lv.observe(np.full(60, 50))
    lv.observe(np.zeros(60, dtype=int))
    assert lv.forecast(1).mean[0] == 0  # the baseline stays pure persistence


def test_auto_weights_follow_the_better_candidate():
    class Wrong(EWMA):
        name = "wrong"

        def _point(self, horizon):
            return np.full(horizon, 1000.0)

    rates = seasonal_rates(2, seed=6)
    auto = Auto([LastValue(max_horizon=10), Wrong(max_horizon=10)], max_horizon=10, half_life=50)
    feed(auto, rates)
    w = auto.weights()
    assert np.all(w[0] > 0.99)
    fc = auto.forecast(10).mean
    assert np.all(fc < 200)


def test_auto_ensemble_is_no_worse_than_its_best_candidate_by_much():
    rates = seasonal_rates(6, seed=8)
    auto = make_forecaster("auto", interval_s=86400 // SEASON, max_horizon=10)
    fa = feed(auto, rates)
    fl = feed(LastValue(max_horizon=10), rates)
    start = 4 * SEASON
    assert lead_mae(fa, rates, start) < lead_mae(fl, rates, start)


@pytest.mark.parametrize("bad", [np.array([1.0, np.nan]), np.array([3, -1]), np.array([])])
def test_bad_counts_are_refused_with_the_position(bad):
    with pytest.raises(ValueError, match="counts"):
        LastValue().observe(bad)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="holt-winters"):
        make_forecaster("prophet")
    assert {
        "last-value",
        "ewma",
        "seasonal-naive",
        "holt-winters",
        "sarimax",
        "auto",
        "lstm",
    } <= set(FORECASTERS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="season_steps"):
        HoltWinters(season_steps=1)
    with pytest.raises(ValueError, match="ridge"):
        LinearDirect(season_steps=SEASON, ridge=-1)
    with pytest.raises(ValueError, match="horizon"):
        LastValue(max_horizon=5).forecast(6)


def test_linear_leaves_capture_gaps_out_and_keeps_forecasting_the_level():
    rates = seasonal_rates(5, seed=9)
    f = LinearDirect(season_steps=SEASON, max_horizon=10)
    rng = np.random.default_rng(2)
    for k, r in enumerate(rates):
        gap = 3 * SEASON <= k < 3 * SEASON + 20  # twenty minutes of capture gap mid-history
        f.observe(np.zeros(60, dtype=int) if gap else rng.poisson(r, 60))
    assert f.fits >= 2 and f.gap.any()
    fc = f.forecast(10).mean
    assert np.all(np.abs(fc - rates[-1]) < 0.3 * rates[-1])
