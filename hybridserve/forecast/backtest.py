"""Rolling-origin backtest of a load forecaster on per-second counts.

The counts are cut into control intervals (a trailing partial interval is dropped) and fed to the
forecaster one interval at a time, exactly as the Controller does. At every *origin* k in the
evaluation window (k = last interval observed) the forecaster is asked for `horizon_steps`
steps and its last step -- lead h = horizon_steps, the step a fleet ordered now must be ready
for -- is scored against the actual mean rate of interval k + h.

Metrics (all over the evaluation origins; y = actual rate at k + h, f = forecast mean of it):

* ``mae``: mean |f - y| (req/s).
* ``baseline_mae``: the same for the last-value forecast at the same lead, y[k] predicting
  y[k + h], computed straight from the rate series.
* ``skill`` = mae / baseline_mae: below 1 beats persistence at this lead.
* ``mase`` = mae / mean |y[t] - y[t-1]|, the scale being the one-step naive error over the
  evaluation span (from the first origin to the last target interval). Using the evaluated
  span rather than the training sample makes the scale independent of how much warm-up the
  model had; MASE > 1 at a long lead is normal (persistence at lead h is worse than at lead 1).
* ``smape``: mean 2|f - y| / (|f| + |y|) in percent (0..200), over points where |f| + |y| > 0.
* ``pinball``: the quantile (pinball) loss averaged over the levels 0.5, 0.9 and 0.99, divided
  by the mean actual rate, so traces of different scale compare (relative pinball).
* ``coverage``: for each level, the fraction of actuals at or below that quantile (a
  calibrated p90 covers 0.9).
* ``step_ms``: mean wall time of observe + forecast per evaluation step, periodic refits
  triggered inside ``observe`` included (amortised); ``step_ms_excl_fit`` leaves out the fit
  time that fell inside those steps; ``fit_s``: the forecaster's cumulative ``fit_seconds``
  (0 if it has none) over the whole run, warm-up included.

Models that calibrate quantiles (or ensemble weights) from their own past forecasts need
forecasts issued before the evaluation starts, as the Controller would have issued them: the
last ``calibration_steps`` warm-up intervals also get a (neither timed nor scored) forecast.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CALIBRATION_STEPS",
    "LEVELS",
    "SEASONAL_MODELS",
    "BacktestResult",
    "backtest",
    "default_eval_start",
    "rates_per_interval",
    "season_steps_of",
]

#: Quantile levels scored by pinball loss and coverage.
LEVELS: tuple[float, ...] = (0.5, 0.9, 0.99)
#: Models that need a full season of history (by registry name).
SEASONAL_MODELS = frozenset({"seasonal-naive", "holt-winters", "sarimax", "auto"})
#: Warm-up intervals right before the evaluation window at which forecasts are issued too:
#: two days at 1-minute intervals, twice the default conformal residual window (1440 steps).
CALIBRATION_STEPS = 2880


def _num(x: float | None, digits: int) -> float | None:
    """Rounded float for JSON, None where undefined (NaN, inf)."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


@dataclass
class BacktestResult:
    """Scores of one model on one trace at one lead (see the module docstring for definitions).

    `targets` (interval indices scored), `actual`, `point` and `quantiles` (level -> array) hold
    the per-origin series for plots; they are not part of `as_json()`.
    """

    trace: str
    model: str
    horizon_s: int
    interval_s: int
    mase: float
    skill: float
    smape: float
    pinball: float
    coverage: dict[str, float]
    fit_s: float
    step_ms: float
    n_origins: int
    mae: float
    baseline_mae: float
    fit_eval_s: float = 0.0  # fit seconds spent inside the timed evaluation steps
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)
    actual: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    point: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    quantiles: dict[float, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def step_ms_excl_fit(self) -> float:
        """Mean ms per evaluation step without the (periodic) fits that fell inside them."""
        return max(0.0, self.step_ms - 1000.0 * self.fit_eval_s / max(self.n_origins, 1))

    def as_json(self) -> dict[str, Any]:
        """The report schema: floats rounded, None where a metric is undefined."""
        return {
            "trace": self.trace,
            "model": self.model,
            "horizon_s": int(self.horizon_s),
            "mase": _num(self.mase, 4),
            "skill": _num(self.skill, 4),
            "smape": _num(self.smape, 3),
            "pinball": _num(self.pinball, 4),
            "coverage": {k: _num(self.coverage.get(k, math.nan), 4) for k in ("p50", "p90", "p99")},
            "fit_s": _num(self.fit_s, 3),
            "step_ms": _num(self.step_ms, 4),
        }


def _check_array(counts: np.ndarray) -> np.ndarray:
    """Per-second counts as float64; NaN, inf or negative values are named with their index."""
    a = np.asarray(counts)
    if a.ndim != 1:
        raise ValueError(
            f"counts: expected a 1-D array of per-second arrivals, got shape {a.shape}"
        )
    if a.dtype.kind not in "iuf" and a.dtype != bool:
        raise ValueError(f"counts: expected numbers, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    nan = np.isnan(a)
    if nan.any():
        i = int(np.argmax(nan))
        raise ValueError(
            f"counts[{i}] (second {i}) is NaN: per-second arrivals must be finite and >= 0 "
            f"({int(nan.sum())} NaN value(s) in all)"
        )
    bad = ~np.isfinite(a) | (a < 0)
    if bad.any():
        i = int(np.argmax(bad))
        what = "infinite" if not np.isfinite(a[i]) else "negative"
        raise ValueError(
            f"counts[{i}] (second {i}) = {a[i]:g} is {what}: per-second arrivals must be finite "
            f"and >= 0 ({int(bad.sum())} bad value(s) in all)"
        )
    return a


def rates_per_interval(counts: np.ndarray, interval_s: int) -> np.ndarray:
    """Mean rate (req/s) of each whole `interval_s`-second interval; a partial tail is dropped."""
    a = _check_array(counts)
    n = len(a) // interval_s
    return a[: n * interval_s].reshape(n, interval_s).sum(axis=1) / interval_s


def season_steps_of(forecaster: Any, model: str, interval_s: int) -> int | None:
    """Season length in intervals that `forecaster` needs before it is fair to score it, or None.

    A `season_steps` attribute (> 1) wins; otherwise models named in SEASONAL_MODELS get the
    daily season `make_forecaster` gives them (86400 / interval_s).
    """
    s = getattr(forecaster, "season_steps", None)
    if isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 1:
        return int(s)
    if model in SEASONAL_MODELS:
        return max(1, 86400 // interval_s)
    return None


def default_eval_start(n_intervals: int, interval_s: int, eval_days: float = 7.0) -> int:
    """First evaluation step (= intervals observed before the first origin).

    Rule: the evaluation window is the last `eval_days` of the trace when the trace is at least
    twice that long (so at least as much warm-up as evaluation); otherwise it is the last third
    of the trace (two thirds warm-up), with at least one interval on each side where possible.
    """
    if n_intervals < 2:
        raise ValueError(
            f"history too short: {n_intervals} interval(s) of {interval_s} s; a backtest needs "
            "at least 2 (one to observe, one to score)"
        )
    if not (math.isfinite(eval_days) and eval_days > 0):
        raise ValueError(f"eval_days must be > 0, got {eval_days!r}")
    eval_steps = max(1, round(eval_days * 86400 / interval_s))
    if n_intervals < 2 * eval_steps:
        eval_steps = max(1, n_intervals // 3)
    return max(1, n_intervals - eval_steps)


def backtest(
    counts: np.ndarray,
    forecaster: Any,
    *,
    interval_s: int = 60,
    horizon_steps: int = 10,
    eval_start_step: int,
    name: str = "trace",
    model: str = "?",
    calibration_steps: int | None = CALIBRATION_STEPS,
    progress: Callable[[int, int], None] | None = None,
) -> BacktestResult:
    """Rolling-origin backtest of `forecaster` on per-second `counts` (see the module docstring).

    `eval_start_step` is the number of intervals observed before the first origin (origins are
    k = eval_start_step - 1 ... n - 1 - horizon_steps). `calibration_steps` warm-up intervals
    before that also issue a forecast (None: every warm-up interval). `progress(done, total)` is
    called every 1000 intervals and at the end.
    """
    if model == "?":
        model = str(getattr(forecaster, "name", "?"))
    if int(interval_s) != interval_s or interval_s < 1:
        raise ValueError(
            f"interval_s must be a positive whole number of seconds, got {interval_s!r}"
        )
    interval_s = int(interval_s)
    if int(horizon_steps) != horizon_steps or horizon_steps < 1:
        raise ValueError(f"horizon_steps must be a whole number >= 1, got {horizon_steps!r}")
    h = int(horizon_steps)
    raw = np.asarray(counts)
    a = _check_array(raw)
    n = len(a) // interval_s
    rates = a[: n * interval_s].reshape(n, interval_s).sum(axis=1) / interval_s
    start = int(eval_start_step)
    if start < 1:
        raise ValueError(f"eval_start_step must be >= 1 (intervals observed first), got {start}")
    if start > n - h:
        raise ValueError(
            f"history too short: {n} whole interval(s) of {interval_s} s with a horizon of {h} "
            f"step(s) leave no forecast origin at eval_start_step {start} (it must be <= {n - h}"
            f"{'' if n - h >= 1 else '; the trace is shorter than the horizon plus one interval'})"
        )
    season = season_steps_of(forecaster, model, interval_s)
    if season is not None and start < season:
        raise ValueError(
            f"history shorter than a season: need {season} intervals before the evaluation "
            f"window, got {start} ({model!r} has a season of {season} x {interval_s} s)"
        )

    first = start - 1  # first origin
    last = n - 1 - h  # last origin
    calib_from = 0 if calibration_steps is None else max(0, first - int(calibration_steps))
    m = last - first + 1
    pts = np.empty(m)
    qs = np.empty((len(LEVELS), m))
    spent = fit_eval = 0.0
    clock = time.perf_counter
    source = raw if raw.dtype.kind in "iu" else a  # hand the forecaster what it was given
    for k in range(n):
        chunk = source[k * interval_s : (k + 1) * interval_s]
        if k < first:
            forecaster.observe(chunk)
            if k >= calib_from:
                forecaster.forecast(h)
        elif k <= last:
            f0 = _fit_seconds(forecaster)
            t0 = clock()
            forecaster.observe(chunk)
            fc = forecaster.forecast(h)
            spent += clock() - t0
            fit_eval += _fit_seconds(forecaster) - f0
            i = k - first
            f = float(fc.mean[h - 1])
            if not math.isfinite(f):
                raise RuntimeError(
                    f"{model}: forecast for interval {k + h} (origin {k}) is {f}, not a finite rate"
                )
            pts[i] = f
            qs[:, i] = fc.quantile(LEVELS)[:, h - 1]
        else:
            break  # no later origin can be scored
        if progress is not None and (k + 1) % 1000 == 0:
            progress(k + 1, last + 1)
    if progress is not None:
        progress(last + 1, last + 1)

    y = rates[first + h : last + h + 1]
    err = np.abs(pts - y)
    mae = float(err.mean())
    baseline_mae = float(np.abs(rates[first : last + 1] - y).mean())
    span = rates[first : last + h + 1]
    scale = float(np.abs(np.diff(span)).mean()) if len(span) > 1 else math.nan
    denom = np.abs(pts) + np.abs(y)
    ok = denom > 0
    smape = float(200.0 * np.mean(err[ok] / denom[ok])) if ok.any() else math.nan
    mean_y = float(y.mean())
    losses = []
    coverage = {}
    for lv, q in zip(LEVELS, qs, strict=True):
        d = y - q
        losses.append(float(np.mean(np.maximum(lv * d, (lv - 1.0) * d))))
        coverage[f"p{round(lv * 100):d}"] = float(np.mean(y <= q))
    pinball = float(np.mean(losses)) / mean_y if mean_y > 0 else math.nan
    return BacktestResult(
        trace=name,
        model=model,
        horizon_s=h * interval_s,
        interval_s=interval_s,
        mase=_ratio(mae, scale),
        skill=_ratio(mae, baseline_mae),
        smape=smape,
        pinball=pinball,
        coverage=coverage,
        fit_s=_fit_seconds(forecaster),
        step_ms=1000.0 * spent / m,
        n_origins=m,
        mae=mae,
        baseline_mae=baseline_mae,
        fit_eval_s=fit_eval,
        targets=np.arange(first + h, last + h + 1),
        actual=y,
        point=pts,
        quantiles={lv: qs[i] for i, lv in enumerate(LEVELS)},
    )


def _ratio(num: float, den: float) -> float:
    """num / den, NaN (reported as None) when the scale is 0 or undefined (a flat series)."""
    return num / den if den > 0 else math.nan


def _fit_seconds(forecaster: Any) -> float:
    """The forecaster's cumulative fit time, 0 where it does not report one."""
    return float(getattr(forecaster, "fit_seconds", 0.0) or 0.0)
