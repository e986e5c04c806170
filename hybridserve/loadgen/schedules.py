"""Send times of a benchmark: a Poisson process at a fixed rate, or a replay of per-second
counts (a trace)."""

from __future__ import annotations

import math

import numpy as np


def poisson_schedule(qps: float, duration_s: float, seed: int = 0) -> np.ndarray:
    """Send times (s, sorted, in ``[0, duration_s)``) of a Poisson process at ``qps``.

    Exponential gaps drawn in one vectorised batch sized a few standard deviations above the
    expected count, topped up in the (vanishingly rare) case that is not enough.
    """
    if not (math.isfinite(qps) and qps > 0):
        raise ValueError(f"--qps must be > 0, got {qps!r}")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"--duration must be > 0, got {duration_s!r}")
    rng = np.random.default_rng(seed)
    mean = qps * duration_s
    n = int(mean + 6 * math.sqrt(mean) + 16)
    times = np.cumsum(rng.exponential(1.0 / qps, n))
    while times[-1] < duration_s:
        more = np.cumsum(rng.exponential(1.0 / qps, n)) + times[-1]
        times = np.concatenate([times, more])
    return times[: int(np.searchsorted(times, duration_s, side="left"))]


def trace_schedule(
    counts: np.ndarray, seed: int = 0, duration_s: float | None = None
) -> np.ndarray:
    """Send times replaying per-second ``counts``: second ``i``'s requests spread uniformly at
    random within ``[i, i+1)``, sorted; ``duration_s`` cuts the replay short.

    Uniform placement is what a Poisson process conditioned on the count would give, and the
    counts per second are reproduced exactly.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("trace counts must be a 1-D array of non-negative integers")
    if duration_s is not None:
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"--duration must be > 0, got {duration_s!r}")
        counts = counts[: math.ceil(duration_s)]
    rng = np.random.default_rng(seed)
    seconds = np.repeat(np.arange(counts.size, dtype=np.float64), counts)
    times = np.sort(seconds + rng.random(seconds.size))
    if duration_s is not None:
        times = times[: int(np.searchsorted(times, duration_s, side="left"))]
    return times
