"""Synthetic request traces: the embedded default workload when no trace file is given.

The shape mimics the real twitter trace the controller is evaluated on (diurnal and weekly
cycles, flash crowds, slow drift, capture gaps) so that planning, forecasting and spill logic
are exercised the same way, without shipping a data file. Everything is drawn from one
seeded ``numpy`` Generator, so a seed names a workload exactly.
"""

from __future__ import annotations

import math

import numpy as np

from simulations.traces import MAX_SPAN_S, Trace

__all__ = ["synthetic_trace"]

_DAY_S = 86_400
_PEAK_HOUR = 15.0  # mid-afternoon; the trough falls 12 hours later, at 03:00
_NOISE_STEP_S = 10  # the AR(1) noise is drawn every 10 s and interpolated between
_NOISE_TAU_S = 300.0  # correlation time of the noise: drift over minutes, not seconds
_NOISE_BLOCK = 256  # steps per vectorised AR(1) block (phi**-256 stays far from overflow)
_RAMP_S = (10.0, 60.0)  # flash crowd: time to reach its peak
_DECAY_S = (300.0, 1200.0)  # flash crowd: time to fade back to the local level
_GAP_S = (30, 300)  # capture gap lengths, inclusive


def _seasonal(seconds: int, diurnal: float, weekly: float) -> np.ndarray:
    """Relative level from the daily and weekly cycles; second 0 is Monday 00:00.

    Daily peak at 15:00, trough at 03:00; weekly peak Wednesday noon, trough at the
    Saturday/Sunday midnight, so weekends are lower.
    """
    days = np.arange(seconds, dtype=np.float64) / _DAY_S
    daily = 1.0 + diurnal * np.cos(2 * np.pi * (days - _PEAK_HOUR / 24.0))
    week = 1.0 + weekly * np.cos(2 * np.pi * (days - 2.5) / 7.0)
    return daily * week


def _ar1(steps: int, phi: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) ``x[t] = phi*x[t-1] + e[t]`` with marginal std ``sigma``, vectorised.

    Within a block, ``x[k] = phi**(k+1) * x_before + phi**k * cumsum(phi**-j * e[j])``; only the
    hand-over between blocks is sequential, a loop over ``steps / 256`` blocks.
    """
    blocks = -(-steps // _NOISE_BLOCK)
    k = np.arange(_NOISE_BLOCK)
    innovations = rng.standard_normal((blocks, _NOISE_BLOCK)) * sigma * math.sqrt(1 - phi**2)
    partial = phi**k * np.cumsum(innovations * phi**-k, axis=1)
    starts = np.empty(blocks)
    state = rng.standard_normal() * sigma  # drawn from the stationary distribution
    for b in range(blocks):
        starts[b] = state
        state = phi**_NOISE_BLOCK * state + partial[b, -1]
    return (phi ** (k + 1) * starts[:, None] + partial).ravel()[:steps]


def _noise(seconds: int, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Mean-one log-normal multiplicative drift with coefficient of variation ``cv``."""
    if cv == 0:
        return np.ones(seconds)
    sigma = math.sqrt(math.log1p(cv**2))
    steps = seconds // _NOISE_STEP_S + 2
    phi = math.exp(-_NOISE_STEP_S / _NOISE_TAU_S)
    log_level = _ar1(steps, phi, sigma, rng)
    at = np.arange(seconds) / _NOISE_STEP_S
    log_level = np.interp(at, np.arange(steps), log_level)
    return np.exp(log_level - sigma**2 / 2)


def _flash_crowds(
    seconds: int, expected: float, peak: float, rng: np.random.Generator
) -> np.ndarray:
    """Multiplier: 1, rising within a minute to ``peak`` at each crowd, fading over 5-20 min.

    The decay is exponential (time constant a quarter of its length) rebased to reach exactly
    1 at its end; overlapping crowds add their excess load.
    """
    factor = np.ones(seconds)
    count = rng.poisson(expected)
    starts = rng.integers(0, seconds, size=count)
    ramps = rng.uniform(*_RAMP_S, size=count)
    decays = rng.uniform(*_DECAY_S, size=count)
    for start, ramp, decay in zip(starts, ramps, decays, strict=True):
        x = np.arange(min(seconds - start, math.ceil(ramp + decay)), dtype=np.float64)
        tail = math.exp(-4.0)
        fade = (np.exp(-4.0 * (x - ramp) / decay) - tail) / (1 - tail)
        shape = np.where(x < ramp, x / ramp, np.clip(fade, 0.0, 1.0))
        factor[start : start + x.size] += (peak - 1.0) * shape
    return factor


def _gaps(seconds: int, expected: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of capture gaps: runs of 30-300 seconds with no recorded arrivals."""
    mask = np.zeros(seconds, dtype=bool)
    count = rng.poisson(expected)
    starts = rng.integers(0, seconds, size=count)
    lengths = rng.integers(_GAP_S[0], _GAP_S[1] + 1, size=count)
    for start, length in zip(starts, lengths, strict=True):
        mask[start : start + length] = True
    return mask


def _check(
    name: str, value: float, low: float, high: float = math.inf, *, open_low: bool = False
) -> None:
    """Reject a parameter outside its range, naming it."""
    below = value <= low if open_low else value < low
    if not math.isfinite(value) or below or value >= high:
        bracket = "(" if open_low else "["
        raise ValueError(f"synthetic_trace: {name}={value!r} is outside {bracket}{low}, {high})")


def synthetic_trace(
    days: float = 2.0,
    *,
    seed: int = 0,
    mean_rate: float = 64.0,
    diurnal_amplitude: float = 0.6,
    weekly_amplitude: float = 0.15,
    flash_crowds_per_day: float = 3.0,
    flash_peak: float = 5.0,
    noise_cv: float = 0.15,
    gaps_per_day: float = 2.0,
) -> Trace:
    """Per-second arrival counts shaped like a public web service, fully determined by ``seed``.

    Rate = ``mean_rate`` x daily cycle (peak 15:00, trough 03:00, relative amplitude
    ``diurnal_amplitude``) x weekly cycle (weekend lower, ``weekly_amplitude``) x slow
    log-normal AR(1) drift (CV ``noise_cv``, ~5 min correlation) x flash crowds (Poisson number,
    ``flash_crowds_per_day``; each ramps within 10-60 s to ``flash_peak`` x the local level and
    fades over 5-20 min). Capture gaps (Poisson number, ``gaps_per_day``; 30-300 s of zeros)
    are cut out. The rate is then rescaled so its mean over the whole trace is exactly
    ``mean_rate`` and counts are Poisson draws from it, so the trace mean lands within a
    fraction of a percent of ``mean_rate``. Second 0 is Monday 00:00.
    """
    _check("days", days, 0.0, MAX_SPAN_S / _DAY_S, open_low=True)  # as long as a file may be
    _check("mean_rate", mean_rate, 0.0, open_low=True)
    _check("diurnal_amplitude", diurnal_amplitude, 0.0, 1.0)
    _check("weekly_amplitude", weekly_amplitude, 0.0, 1.0)
    _check("flash_crowds_per_day", flash_crowds_per_day, 0.0)
    _check("flash_peak", flash_peak, 1.0)
    _check("noise_cv", noise_cv, 0.0)
    _check("gaps_per_day", gaps_per_day, 0.0)
    seconds = max(1, round(days * _DAY_S))
    rng = np.random.default_rng(seed)
    rate = _seasonal(seconds, diurnal_amplitude, weekly_amplitude)
    rate *= _noise(seconds, noise_cv, rng)
    rate *= _flash_crowds(seconds, flash_crowds_per_day * days, flash_peak, rng)
    rate[_gaps(seconds, gaps_per_day * days, rng)] = 0.0
    total = rate.sum()
    if total > 0:
        rate *= mean_rate * seconds / total
    source = (
        f"synthetic(days={days}, seed={seed}, mean_rate={mean_rate}, "
        f"diurnal_amplitude={diurnal_amplitude}, weekly_amplitude={weekly_amplitude}, "
        f"flash_crowds_per_day={flash_crowds_per_day}, flash_peak={flash_peak}, "
        f"noise_cv={noise_cv}, gaps_per_day={gaps_per_day})"
    )
    return Trace(f"synthetic-{days}d-seed{seed}", rng.poisson(rate), source)
