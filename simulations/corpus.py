"""A trace corpus for generalisation: every real trace on disk plus seeded synthetic families.

The families are the shapes a controller meets in the field and that no single trace has:
steady and near-constant load, diurnal and weekly cycles, flash crowds, ramps, hours of zeros
(scale to zero), heavy-tailed seconds (mostly nothing, sometimes hundreds), level shifts, very
low and very high rates, and traces shorter than a day or than one planning horizon. Each is
fully determined by its seed. Real traces are taken as they are, with no per-trace settings;
one whose mean is below a quarter of one instance's capacity is also replayed scaled up to it
(the scaling the traces' README recommends), so that it exercises the fleet, not only Lambda.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulations.synthetic import synthetic_trace
from simulations.traces import Trace, TraceError, load_trace

DAY = 86_400
HOUR = 3_600
# a real trace lighter than this share of one instance is nearly all Lambda as it is
LIGHT = 0.25


@dataclass(frozen=True)
class Entry:
    """One corpus trace: how to make it, and whether it is a real recording."""

    name: str
    real: bool
    make: Callable[[], Trace]


def _poisson(name: str, rate: np.ndarray, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    return Trace(name, rng.poisson(np.clip(rate, 0.0, None)), f"corpus family {name}")


def steady(seed: int = 1) -> Trace:
    return _poisson("syn-steady", np.full(2 * DAY, 40.0), seed)


def near_constant(seed: int = 2) -> Trace:
    """100 req/s give or take one: far less variance than Poisson."""
    rng = np.random.default_rng(seed)
    return Trace("syn-near-constant", 100 + rng.integers(-1, 2, DAY), "corpus family")


def diurnal(seed: int = 3) -> Trace:
    t = synthetic_trace(
        3.0, seed=seed, mean_rate=60, diurnal_amplitude=0.8, weekly_amplitude=0.0,
        flash_crowds_per_day=0.0, noise_cv=0.1, gaps_per_day=0.0,
    )  # fmt: skip
    return Trace("syn-diurnal", t.counts, t.source)


def weekly(seed: int = 4) -> Trace:
    t = synthetic_trace(
        14.0, seed=seed, mean_rate=50, diurnal_amplitude=0.5, weekly_amplitude=0.4,
        flash_crowds_per_day=1.0, noise_cv=0.15, gaps_per_day=0.5,
    )  # fmt: skip
    return Trace("syn-weekly", t.counts, t.source)


def flash_crowds(seed: int = 5) -> Trace:
    t = synthetic_trace(
        2.0, seed=seed, mean_rate=40, diurnal_amplitude=0.3, weekly_amplitude=0.0,
        flash_crowds_per_day=12.0, flash_peak=8.0, noise_cv=0.2, gaps_per_day=0.0,
    )  # fmt: skip
    return Trace("syn-flash-crowds", t.counts, t.source)


def ramps(seed: int = 6) -> Trace:
    """Triangle ramps between 0 and 400 req/s, each leg 30 min to 3 h."""
    rng = np.random.default_rng(seed)
    rate = np.empty(0)
    lo = True
    while rate.size < DAY:
        leg = int(rng.uniform(0.5, 3.0) * HOUR)
        a, b = (0.0, 400.0) if lo else (400.0, 0.0)
        rate = np.concatenate([rate, np.linspace(a, b, leg, endpoint=False)])
        lo = not lo
    return _poisson("syn-ramps", rate[:DAY], seed)


def scale_to_zero(seed: int = 7) -> Trace:
    """Active stretches of 1-4 h at 20-120 req/s between 2-6 h of nothing at all."""
    rng = np.random.default_rng(seed)
    rate = np.empty(0)
    on = False
    while rate.size < 2 * DAY:
        if on:
            leg = np.full(int(rng.uniform(1, 4) * HOUR), rng.uniform(20, 120))
        else:
            leg = np.zeros(int(rng.uniform(2, 6) * HOUR))
        rate = np.concatenate([rate, leg])
        on = not on
    return _poisson("syn-scale-to-zero", rate[: 2 * DAY], seed)


def heavy_tailed(seed: int = 8) -> Trace:
    """Mostly empty seconds; 3% of seconds carry a Pareto burst (alpha 1.2, from 20, <= 2,000)."""
    rng = np.random.default_rng(seed)
    busy = rng.random(DAY) < 0.03
    size = np.minimum(20 * (1 + rng.pareto(1.2, DAY)), 2000)
    return Trace("syn-heavy-tailed", np.where(busy, rng.poisson(size), 0), "corpus family")


def level_shifts(seed: int = 9) -> Trace:
    """Piecewise-constant load: a new level (log-normal around 80 req/s) every 1-6 hours."""
    rng = np.random.default_rng(seed)
    rate = np.empty(0)
    while rate.size < 2 * DAY:
        rate = np.concatenate(
            [rate, np.full(int(rng.uniform(1, 6) * HOUR), 80 * rng.lognormal(0, 0.8))]
        )
    return _poisson("syn-level-shifts", rate[: 2 * DAY], seed)


def low_rate(seed: int = 10) -> Trace:
    t = synthetic_trace(1.0, seed=seed, mean_rate=0.5, flash_crowds_per_day=2.0)
    return Trace("syn-low-rate", t.counts, t.source)


def high_rate(seed: int = 11) -> Trace:
    t = synthetic_trace(1.0, seed=seed, mean_rate=3000, flash_crowds_per_day=3.0)
    return Trace("syn-high-rate", t.counts, t.source)


def short(seed: int = 12) -> Trace:
    """Six hours: shorter than a day, so seasonal models never fit."""
    t = synthetic_trace(0.25, seed=seed, mean_rate=80, flash_crowds_per_day=8.0)
    return Trace("syn-short", t.counts, t.source)


def shorter_than_horizon(seed: int = 13) -> Trace:
    """Ten minutes, less than one 15-step planning horizon."""
    t = synthetic_trace(600 / DAY, seed=seed, mean_rate=150, flash_crowds_per_day=0.0)
    return Trace("syn-shorter-than-horizon", t.counts, t.source)


FAMILIES: tuple[Callable[[], Trace], ...] = (
    steady, near_constant, diurnal, weekly, flash_crowds, ramps, scale_to_zero, heavy_tailed,
    level_shifts, low_rate, high_rate, short, shorter_than_horizon,
)  # fmt: skip


def real_traces(folder: str | Path) -> Iterator[Path]:
    """Trace files in `folder` (anything but READMEs and hidden files), sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        return
    for p in sorted(root.iterdir()):
        if p.is_file() and not p.name.startswith(".") and not p.name.lower().startswith("readme"):
            yield p


def load_real(path: Path) -> Trace:
    """A real trace with no per-trace settings: the format is detected, and a per-request CSV
    whose timestamp column is not called TIMESTAMP uses its one column named like a time."""
    try:
        return load_trace(path)
    except TraceError as e:
        column = _time_column(path)
        if column is None or "column" not in str(e).lower():
            raise
        return load_trace(path, timestamp_column=column)


def _time_column(path: Path) -> str | None:
    if path.suffix.lower() != ".csv":
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().strip().split(",")
    named = [c.strip() for c in header if "time" in c.strip().lower()]
    return named[0] if len(named) == 1 else None


def corpus(traces_dir: str | Path | None, capacity_rps: float) -> list[Entry]:
    """Real traces (native, and scaled up to `capacity_rps` when lighter), then the families."""
    out: list[Entry] = []
    for path in real_traces(traces_dir) if traces_dir is not None else ():
        trace = load_real(path)
        out.append(Entry(trace.name, True, lambda t=trace: t))
        if trace.mean_rate < LIGHT * capacity_rps:
            k = capacity_rps / max(trace.mean_rate, 1e-9)
            name = f"{trace.name} x{k:.3g}"
            out.append(Entry(name, True, lambda t=trace, k=k, n=name: _renamed(t.scaled(k), n)))
    out += [Entry("syn-" + fam.__name__.replace("_", "-"), False, fam) for fam in FAMILIES]
    return out


def _renamed(t: Trace, name: str) -> Trace:
    return Trace(name, t.counts, t.source)
