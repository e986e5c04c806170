"""Rolling-origin backtest: metrics on hand-made series, input errors, and `hybridserve forecast`."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import poisson

from hybridserve.forecast.backtest import (
    BacktestResult,
    backtest,
    default_eval_start,
    rates_per_interval,
)
from hybridserve.forecast.base import Forecast
from hybridserve.forecast.registry import FORECASTERS, make_forecaster

JSON_KEYS = {
    "trace",
    "model",
    "horizon_s",
    "mase",
    "skill",
    "smape",
    "pinball",
    "coverage",
    "fit_s",
    "step_ms",
}


# ------------------------------------------------------------------------------ helpers


def diurnal_counts(seconds: int, *, period_s: int = 3600, base: float = 20.0, seed: int = 0):
    """Poisson arrivals per second around a sine with the given period."""
    t = np.arange(seconds)
    lam = base * (1.0 + 0.6 * np.sin(2 * np.pi * t / period_s))
    return np.random.default_rng(seed).poisson(lam).astype(np.int64)


class Perfect:
    """Knows the future: forecasts the exact mean rate of the coming intervals."""

    name = "perfect"

    def __init__(self, counts: np.ndarray, interval_s: int) -> None:
        self.rates = rates_per_interval(counts, interval_s)
        self.k = 0  # intervals observed

    def observe(self, counts: np.ndarray) -> None:
        self.k += 1

    def forecast(self, horizon: int) -> Forecast:
        m = self.rates[self.k : self.k + horizon]
        return Forecast(mean=m, quantiles={0.5: m, 0.9: m, 0.99: m})


class Constant:
    """Always the same point and quantiles (for metrics computed by hand)."""

    name = "constant"

    def __init__(self, mean: float, q: dict[float, float] | None = None) -> None:
        self.value = mean
        self.q = q or {0.5: mean, 0.9: mean, 0.99: mean}
        self.fit_seconds = 0.25

    def observe(self, counts: np.ndarray) -> None:
        pass

    def forecast(self, horizon: int) -> Forecast:
        qs = {lv: np.full(horizon, v, dtype=float) for lv, v in self.q.items()}
        return Forecast(mean=np.full(horizon, self.value, dtype=float), quantiles=qs)


class KnownPoisson:
    """The true predictive distribution of i.i.d. Poisson(lam) seconds at interval_s = 1."""

    name = "known-poisson"

    def __init__(self, lam: float, shift: float = 0.0) -> None:
        self.qs = {lv: float(poisson.ppf(lv, lam)) + shift for lv in (0.5, 0.9, 0.99)}
        self.lam = lam

    def observe(self, counts: np.ndarray) -> None:
        pass

    def forecast(self, horizon: int) -> Forecast:
        return Forecast(
            mean=np.full(horizon, self.lam),
            quantiles={lv: np.full(horizon, v) for lv, v in self.qs.items()},
        )


class Seasonal(Constant):
    season_steps = 5


# ------------------------------------------------------------------------------ metrics


def test_perfect_forecaster_scores_zero_and_covers_everything():
    counts = diurnal_counts(6 * 3600)
    r = backtest(counts, Perfect(counts, 60), interval_s=60, horizon_steps=10, eval_start_step=240)
    assert r.n_origins == 360 - 10 - 240 + 1
    assert r.mae == 0.0
    assert r.baseline_mae > 0
    assert r.skill == 0.0
    assert r.mase == 0.0
    assert r.smape == 0.0
    assert r.pinball == 0.0
    assert r.coverage == {"p50": 1.0, "p90": 1.0, "p99": 1.0}
    assert r.model == "perfect" and r.horizon_s == 600


def test_last_value_skill_is_exactly_one():
    counts = diurnal_counts(4 * 3600, seed=3)
    fc = make_forecaster("last-value", interval_s=30, max_horizon=4)
    r = backtest(counts, fc, interval_s=30, horizon_steps=4, eval_start_step=300)
    assert r.mae == r.baseline_mae
    assert r.skill == 1.0


def test_metrics_by_hand():
    # interval 1 s: the counts are the rates. h = 2, first origin k = 1: targets 3, 4, 5.
    counts = np.array([1, 3, 2, 5, 4, 6])
    fc = Constant(4.0, {0.5: 4.0, 0.9: 5.0, 0.99: 6.0})
    r = backtest(counts, fc, interval_s=1, horizon_steps=2, eval_start_step=2, model="c")
    y, f = np.array([5.0, 4.0, 6.0]), 4.0
    assert r.n_origins == 3
    assert list(r.targets) == [3, 4, 5]
    assert r.mae == pytest.approx(1.0)
    assert r.baseline_mae == pytest.approx((2 + 2 + 1) / 3)  # rates[1..3] predicting y
    assert r.skill == pytest.approx(1.0 / (5 / 3))
    # MASE scale: one-step naive error over rates[1..5] = 3 2 5 4 6 -> (1 + 3 + 1 + 2) / 4
    assert r.mase == pytest.approx(1.0 / 1.75)
    assert r.smape == pytest.approx(100 * np.mean(2 * np.abs(f - y) / (f + y)))
    pin = [np.mean([0.5, 0.0, 1.0]), np.mean([0.0, 0.1, 0.9]), np.mean([0.01, 0.02, 0.0])]
    assert r.pinball == pytest.approx(np.mean(pin) / y.mean())
    assert r.coverage == pytest.approx({"p50": 1 / 3, "p90": 2 / 3, "p99": 1.0})
    assert r.fit_s == 0.25
    assert r.step_ms >= 0


def test_trailing_partial_interval_is_dropped():
    counts = np.ones(10 * 7 + 3, dtype=int)
    r = backtest(counts, Constant(1.0), interval_s=10, horizon_steps=1, eval_start_step=5)
    assert r.n_origins == 7 - 1 - 5 + 1
    assert r.mae == 0.0
    # flat series: persistence and one-step naive are 0, so the ratios are undefined
    assert math.isnan(r.skill) and math.isnan(r.mase)
    j = r.as_json()
    assert j["skill"] is None and j["mase"] is None
    json.dumps(j, allow_nan=False)


def test_coverage_and_pinball_of_the_true_distribution():
    lam = 50.0
    counts = np.random.default_rng(1).poisson(lam, 8000)
    kw = {"interval_s": 1, "horizon_steps": 1, "eval_start_step": 1}
    true = backtest(counts, KnownPoisson(lam), **kw)
    for key, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        assert p - 0.02 <= true.coverage[key] <= p + 0.04, (key, true.coverage)
    # the true quantiles minimise the pinball loss: shifted ones score worse
    assert true.pinball < backtest(counts, KnownPoisson(lam, shift=5), **kw).pinball
    assert true.pinball < backtest(counts, KnownPoisson(lam, shift=-5), **kw).pinball
    # coverage grows with the level; all in [0, 1]
    c = true.coverage
    assert 0 <= c["p50"] <= c["p90"] <= c["p99"] <= 1


def test_smape_bounds():
    counts = diurnal_counts(3600, seed=2)
    kw = {"interval_s": 10, "horizon_steps": 3, "eval_start_step": 100}
    # predicting 0 for positive load is the worst case: 200 %
    assert backtest(counts, Constant(0.0), **kw).smape == pytest.approx(200.0)
    noisy = backtest(counts, make_forecaster("ewma", interval_s=10, max_horizon=3), **kw)
    assert 0.0 < noisy.smape < 200.0
    # points where forecast and actual are both 0 are left out; none left -> undefined
    zeros = backtest(np.zeros(600, dtype=int), Constant(0.0), **kw | {"eval_start_step": 10})
    assert math.isnan(zeros.smape) and zeros.as_json()["smape"] is None


def test_as_json_schema():
    counts = diurnal_counts(3600)
    r = backtest(counts, Constant(20.0), interval_s=60, horizon_steps=2, eval_start_step=30)
    assert isinstance(r, BacktestResult)
    j = r.as_json()
    assert set(j) == JSON_KEYS
    assert set(j["coverage"]) == {"p50", "p90", "p99"}
    assert j["model"] == "constant" and j["trace"] == "trace" and j["horizon_s"] == 120
    json.dumps(j, allow_nan=False)


def test_progress_callback_reaches_the_end():
    seen = []
    counts = diurnal_counts(3000)
    backtest(
        counts,
        Constant(1.0),
        interval_s=1,
        horizon_steps=2,
        eval_start_step=1500,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1] == (2998, 2998) and (1000, 2998) in seen


# ------------------------------------------------------------------------------ errors


def test_nan_counts_named_with_index():
    counts = np.ones(100)
    counts[42] = np.nan
    with pytest.raises(ValueError, match=r"counts\[42\].*NaN"):
        backtest(counts, Constant(1.0), interval_s=10, horizon_steps=1, eval_start_step=2)


def test_negative_counts_named_with_index():
    counts = np.ones(100, dtype=int)
    counts[[7, 9]] = -3
    with pytest.raises(ValueError, match=r"counts\[7\].*-3 is negative"):
        backtest(counts, Constant(1.0), interval_s=10, horizon_steps=1, eval_start_step=2)


def test_history_too_short():
    counts = np.ones(100, dtype=int)  # 10 intervals
    with pytest.raises(ValueError, match="history too short.*must be <= 7"):
        backtest(counts, Constant(1.0), interval_s=10, horizon_steps=3, eval_start_step=8)
    with pytest.raises(ValueError, match="history too short"):
        backtest(np.ones(25), Constant(1.0), interval_s=10, horizon_steps=2, eval_start_step=1)
    with pytest.raises(ValueError, match="eval_start_step must be >= 1"):
        backtest(counts, Constant(1.0), interval_s=10, horizon_steps=1, eval_start_step=0)
    with pytest.raises(ValueError, match="horizon_steps"):
        backtest(counts, Constant(1.0), interval_s=10, horizon_steps=0, eval_start_step=2)


def test_season_too_short():
    counts = np.ones(100, dtype=int)
    msg = "history shorter than a season: need 5 intervals before the evaluation window, got 3"
    with pytest.raises(ValueError, match=msg):
        backtest(counts, Seasonal(1.0), interval_s=10, horizon_steps=1, eval_start_step=3)
    backtest(counts, Seasonal(1.0), interval_s=10, horizon_steps=1, eval_start_step=5)
    # by name: a daily season at this interval (86400 / 3600 = 24 steps)
    with pytest.raises(ValueError, match="need 24 intervals before the evaluation window, got 20"):
        backtest(
            np.ones(30 * 3600, dtype=int),
            Constant(1.0),
            interval_s=3600,
            horizon_steps=1,
            eval_start_step=20,
            model="holt-winters",
        )
    fc = make_forecaster("seasonal-naive", interval_s=3600, max_horizon=1)
    with pytest.raises(ValueError, match="history shorter than a season"):
        backtest(np.ones(30 * 3600, dtype=int), fc, interval_s=3600, eval_start_step=20)


def test_default_eval_start():
    day = 1440
    assert default_eval_start(22 * day, 60) == 15 * day  # last 7 days
    assert default_eval_start(14 * day, 60) == 7 * day  # exactly twice: still 7 days
    assert default_eval_start(10 * day, 60) == 10 * day - (10 * day) // 3  # last third
    assert default_eval_start(day, 60, eval_days=0.25) == day - 360
    assert default_eval_start(3, 60) == 2
    with pytest.raises(ValueError, match="history too short"):
        default_eval_start(1, 60)
    with pytest.raises(ValueError, match="eval_days"):
        default_eval_start(100, 60, eval_days=0)


# ------------------------------------------------------------------------------ CLI


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridserve.cli", "forecast", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    """Half a day of per-second counts with an hourly cycle (gzip)."""
    path = tmp_path_factory.mktemp("traces") / "cyc.txt.gz"
    counts = diurnal_counts(12 * 3600, seed=5)
    with gzip.open(path, "wt") as f:
        f.write(" ".join(map(str, counts)))
    return path


def assert_user_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert p.stderr.startswith("error: ")
    for needle in needles:
        assert needle in p.stderr, p.stderr


def test_cli_json_one_model(trace_file):
    p = run("--trace", str(trace_file), "--model", "ewma", "--horizon", "5m", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out) == JSON_KEYS
    assert set(out["coverage"]) == {"p50", "p90", "p99"}
    assert out["model"] == "ewma" and out["trace"] == "cyc" and out["horizon_s"] == 300


def test_cli_table_and_plot(trace_file, tmp_path):
    png = tmp_path / "fc.png"
    p = run(
        "--trace",
        str(trace_file),
        "--model",
        "last-value",
        "--eval-days",
        "0.1",
        "--plot",
        str(png),
    )
    assert p.returncode == 0, p.stderr
    assert "last-value" in p.stdout and "MASE" in p.stdout and "skill" in p.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_all_models_skips_what_cannot_run(trace_file):
    # half a day: seasonal models (a daily season) cannot be scored and are skipped on stderr
    p = run("--trace", str(trace_file), "--model", "all", "--json", "--horizon", "2m")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert isinstance(rows, list)
    names = [r["model"] for r in rows]
    assert {"last-value", "ewma"} <= set(names) <= set(FORECASTERS)
    assert all(set(r) == JSON_KEYS for r in rows)
    assert "skipping seasonal-naive: history shorter than a season" in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_bad_trace_path(tmp_path):
    assert_user_error(run("--trace", str(tmp_path / "missing.txt")), "file not found")


def test_cli_bad_model(trace_file):
    p = run("--trace", str(trace_file), "--model", "prophet")
    assert_user_error(p, "unknown model 'prophet'", "last-value", "ewma")


def test_cli_horizon_not_a_multiple_of_the_interval(trace_file):
    p = run("--trace", str(trace_file), "--model", "ewma", "--horizon", "90s")
    assert_user_error(p, "--horizon", "60 s")
    p = run("--trace", str(trace_file), "--model", "ewma", "--horizon", "30s")
    assert_user_error(p, "--horizon")


def test_cli_malformed_trace(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3 x 5\n")
    assert_user_error(run("--trace", str(bad), "--model", "ewma"), "line 1")


# ------------------------------------------------------------------------------ real trace (last)


def test_real_trace_one_day(twitter_trace_path):
    from simulations.traces import load_trace

    trace = load_trace(twitter_trace_path, duration="1d")
    n = trace.seconds // 60
    start = default_eval_start(n, 60, eval_days=0.25)
    assert start == 1440 - 360
    results = {}
    for name in ("last-value", "ewma"):
        fc = make_forecaster(name, interval_s=60, max_horizon=10)
        results[name] = backtest(
            trace.counts,
            fc,
            interval_s=60,
            horizon_steps=10,
            eval_start_step=start,
            name=trace.name,
            model=name,
        )
    lv, ew = results["last-value"], results["ewma"]
    assert lv.n_origins == 1440 - 10 - start + 1
    assert lv.skill == 1.0
    assert 0.5 < ew.skill < 2.0 and ew.baseline_mae == lv.baseline_mae
    for r in results.values():
        assert all(0.0 <= v <= 1.0 for v in r.coverage.values())
        assert 0 < r.smape < 200 and r.mase > 0 and r.pinball > 0
        assert set(r.as_json()) == JSON_KEYS
