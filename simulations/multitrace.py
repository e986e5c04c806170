"""Multi-model traces: per-second arrivals for each of several models sharing one fleet.

A :class:`MultiTrace` is a ``(models, seconds)`` array of counts; each row is a single-model
:class:`~simulations.traces.Trace` (``model(name)``) and their sum is the fleet's load
(``total()``). :func:`load_multi_trace` reads the shapes multi-model logs come in: a
per-request CSV with a model column, a directory of one trace file per model, or a YAML/JSON
manifest naming one file per model. Every file problem is a :class:`TraceError` naming the file,
the line or field, and what was expected, exactly like the single-model loader. The files are
parsed in `simulations.multitrace_files`.

Two seeded generators make multi-model workloads without a log: :func:`synthetic_multi` (a
Zipf mix of models with their own rhythms and bursts, some arriving or retired mid-trace; it
reuses the single-model generator's seasonal and noise helpers) and :func:`compose_real`
(each model a different stretch of a real trace, rescaled to its Zipf share, keeping the real
traces' texture).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulations.corpus import load_real
from simulations.multitrace_files import MAX_CELLS, model_name_of, read_multi_trace, total_problem
from simulations.synthetic import _noise, _seasonal
from simulations.trace_errors import MAX_COUNT_PER_S, MAX_SPAN_S, TraceError
from simulations.traces import Trace, slice_bounds

__all__ = [
    "MAX_CELLS",
    "MultiTrace",
    "TraceError",
    "compose_real",
    "load_multi_trace",
    "model_name_of",
    "synthetic_multi",
    "zipf_weights",
]

# --------------------------------------------------------------------------------------------
# MultiTrace
# --------------------------------------------------------------------------------------------


def _as_matrix(counts: object, name: str, models: tuple[str, ...]) -> np.ndarray:
    """Validate a (models, seconds) count array and return it read-only int64 (a view if it can)."""
    arr = np.asarray(counts)
    if arr.ndim != 2 or arr.shape[0] != len(models) or arr.shape[1] == 0:
        raise ValueError(
            f"multi-trace {name!r}: counts must have shape ({len(models)} models, seconds >= 1), "
            f"got {arr.shape}"
        )
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr).all() and (arr == np.floor(arr)).all()):
            raise ValueError(f"multi-trace {name!r}: counts must be whole numbers of requests")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"multi-trace {name!r}: counts must be integers, got dtype {arr.dtype}")
    # Cell bounds before any sum: two cells near 2**63 would wrap the total to a negative.
    for bad, what in ((arr < 0, "negative"), (arr > MAX_COUNT_PER_S, "too many")):
        if bad.any():
            row, second = np.unravel_index(int(np.argmax(bad)), arr.shape)
            raise ValueError(
                f"multi-trace {name!r}: model {models[row]!r} at second {second} has "
                f"{arr[row, second]} requests, {what} (expected 0 to {MAX_COUNT_PER_S:,} a second)"
            )
    view = arr.astype(np.int64, copy=False).view()
    problem = total_problem(view, models)
    if problem:
        raise ValueError(f"multi-trace {name!r}: {problem}")
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class MultiTrace:
    """Arrivals per second per model: ``counts[m, i]`` requests for ``models[m]`` in second ``i``.

    All models share second 0, so a column is what the fleet receives at once. ``eq=False`` as
    for Trace (array equality is not a bool; compare ``counts`` with ``np.array_equal``), which
    also keeps the frozen dataclass from trying to hash an array. ``counts`` is read-only.
    """

    name: str
    models: tuple[str, ...]
    counts: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        models = tuple(self.models)
        if not models:
            raise ValueError(f"multi-trace {self.name!r}: needs at least one model")
        for m in models:
            if not isinstance(m, str) or not m.strip():
                raise ValueError(f"multi-trace {self.name!r}: model name {m!r} is not a name")
        if len(set(models)) != len(models):
            dup = sorted({m for m in models if models.count(m) > 1})
            raise ValueError(f"multi-trace {self.name!r}: duplicate model names {dup}")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "counts", _as_matrix(self.counts, self.name, models))

    def __repr__(self) -> str:
        return (
            f"MultiTrace(name={self.name!r}, models={len(self.models)}, seconds={self.seconds}, "
            f"requests={self.requests}, source={self.source!r})"
        )

    @property
    def seconds(self) -> int:
        """Length of the trace in seconds (every model has this length)."""
        return int(self.counts.shape[1])

    @property
    def requests(self) -> int:
        """Total arrivals over all models."""
        return int(self.counts.sum())

    def model_requests(self) -> dict[str, int]:
        """Arrivals of each model, in ``models`` order."""
        return dict(zip(self.models, map(int, self.counts.sum(axis=1)), strict=True))

    def index(self, name: str) -> int:
        """Row of model ``name``; an unknown name is a KeyError listing some known ones."""
        try:
            return self.models.index(name)
        except ValueError:
            known = ", ".join(map(repr, self.models[:8])) + (
                ", ..." if len(self.models) > 8 else ""
            )
            raise KeyError(
                f"multi-trace {self.name!r} has no model {name!r} ({len(self.models)} models: "
                f"{known})"
            ) from None

    def model(self, name: str) -> Trace:
        """One model's arrivals as a single-model Trace (a view: no copy of the row)."""
        row = self.counts[self.index(name)]
        return Trace(name, row, f"{self.source or self.name} [model {name}]")

    def total(self) -> Trace:
        """All models summed: the load one shared fleet receives."""
        return Trace(self.name, self.counts.sum(axis=0), f"{self.source or self.name} [total]")

    def slice(self, start_s: int, duration_s: int | None = None) -> MultiTrace:
        """Seconds ``[start_s, start_s + duration_s)`` of every model, as :meth:`Trace.slice`.

        A window past the end is cut at the end; a start at or past the end is an error.
        """
        label = f"multi-trace {self.name!r}"
        start_s, stop = slice_bounds(label, start_s, duration_s, self.seconds)
        if start_s == 0 and stop == self.seconds:
            return self
        source = f"{self.source or self.name} [{start_s}s:{stop}s]"
        return MultiTrace(self.name, self.models, self.counts[:, start_s:stop], source)

    def scaled(self, factor: float, seed: int = 0) -> MultiTrace:
        """Each model's load times ``factor``, by :meth:`Trace.scaled` (binomial thinning).

        Each model is thinned with its own stream drawn from ``seed`` (independent thinning,
        as separate user populations would give); the same seed gives the same result. The
        factor is bounded by the busiest second of the *total*, which the fleet must absorb.
        """
        factor = float(factor)
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"multi-trace {self.name!r}: scale factor must be > 0, got {factor!r}")
        if factor == 1.0:
            return self
        peak = int(self.counts.sum(axis=0).max())
        limit = MAX_COUNT_PER_S / max(peak, 1)
        if factor > limit:
            raise ValueError(
                f"multi-trace {self.name!r}: rate scale {factor:g} takes the busiest second of "
                f"{peak} requests (all models) past {MAX_COUNT_PER_S:,} per second (allowed: a "
                f"factor up to {limit:.4g})"
            )
        seeds = np.random.SeedSequence(seed).generate_state(len(self.models), dtype=np.uint64)
        rows = [
            Trace(m, row).scaled(factor, int(s)).counts
            for m, row, s in zip(self.models, self.counts, seeds, strict=True)
        ]
        source = f"{self.source or self.name} x{factor:g} (seed {seed})"
        return MultiTrace(self.name, self.models, np.stack(rows), source)


def load_multi_trace(
    path: str | os.PathLike[str],
    *,
    model_column: str = "model",
    timestamp_column: str | None = None,
) -> MultiTrace:
    """Load per-second arrivals per model from a CSV, a directory or a manifest.

    * A CSV file: one row per request, a ``model_column`` (any case) and a timestamp column
      (``timestamp_column``, else ``TIMESTAMP``, else the one column named like a time);
      timestamps as in :func:`~simulations.traces.load_trace`, unsorted rows fine, second 0
      at the earliest request of any model. Models are sorted by name.
    * A directory: one file per model in any shape ``load_trace`` reads; the model is the file
      name without its trace suffixes (:func:`model_name_of`). Files are aligned at second 0
      and the shorter ones padded with zeros to the longest.
    * A ``.yaml``/``.yml``/``.json`` manifest ``{models: {name: path}}`` (paths relative to
      it): the same as a directory, with the names chosen.

    Raises :class:`TraceError` naming the file, the line or column, and what was expected.
    """
    return MultiTrace(*read_multi_trace(path, model_column, timestamp_column))


# --------------------------------------------------------------------------------------------
# seeded generators
# --------------------------------------------------------------------------------------------

_DAY_S = 86_400
_DIURNAL = (0.3, 0.8)  # per-model relative amplitude of the daily cycle
_WEEKLY = (0.1, 0.3)  # per-model weekly amplitude, only for traces of a week or more
_NOISE_CV = (0.1, 0.3)  # per-model CV of the slow log-normal drift
_BURST_PEAK = (3.0, 10.0)  # flash crowd: multiplier on the model's local level
_BURST_S = (60, 600)  # flash crowd: total length, ramps included
_BURST_RAMP_S = 30.0  # longest ramp up (and down) of a flash crowd
_CHANGE_AT = (0.1, 0.9)  # where in the trace an appearing/disappearing model changes


def zipf_weights(n: int, s: float) -> np.ndarray:
    """Popularity shares of ranks 1..n: ``r**-s`` normalised to sum to one."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -float(s)
    return w / w.sum()


def _check(fn: str, name: str, value: float, low: float, high: float = math.inf) -> None:
    """Reject a parameter outside ``[low, high]``, naming the function and the parameter."""
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{fn}: {name}={value!r} is outside [{low}, {high}]")


def _check_models(fn: str, n_models: int, seconds: int) -> None:
    if int(n_models) != n_models or n_models < 1:
        raise ValueError(f"{fn}: n_models={n_models!r} must be a whole number >= 1")
    if n_models * seconds > MAX_CELLS:
        raise ValueError(
            f"{fn}: {n_models} models x {seconds:,} s = {n_models * seconds:,} cells, above "
            f"{MAX_CELLS:,} (fewer models or a shorter trace)"
        )


def _width(n: int) -> int:
    """Digits of a rank index, so that model names sort in popularity order."""
    return max(2, len(str(n - 1)))


def _bursts(seconds: int, expected: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplier with flash crowds: Poisson(``expected``) bursts of 3-10x lasting 1-10 min.

    Each is a plateau with linear ramps of up to 30 s each side (a quarter of its length at
    most); overlapping bursts add their excess. The loop is over bursts, a handful per day.
    """
    factor = np.ones(seconds)
    count = rng.poisson(expected)
    starts = rng.integers(0, seconds, size=count)
    lengths = rng.integers(_BURST_S[0], _BURST_S[1] + 1, size=count)
    peaks = rng.uniform(*_BURST_PEAK, size=count)
    for start, length, peak in zip(starts, lengths, peaks, strict=True):
        x = np.arange(length, dtype=np.float64) + 0.5
        ramp = min(_BURST_RAMP_S, length / 4)
        shape = np.minimum(1.0, np.minimum(x, length - x) / ramp)[: seconds - start]
        factor[start : start + shape.size] += (peak - 1.0) * shape
    return factor


def _model_shape(
    seconds: int, weekly: bool, flashes: float, rng: np.random.Generator
) -> np.ndarray:
    """One model's relative rate: its own diurnal phase and amplitude, drift and bursts."""
    phase = int(rng.integers(0, _DAY_S))  # this model's clock runs ``phase`` seconds ahead
    diurnal = rng.uniform(*_DIURNAL)
    week = rng.uniform(*_WEEKLY) if weekly else 0.0
    rate = _seasonal(seconds + phase, diurnal, week)[phase:]
    rate *= _noise(seconds, rng.uniform(*_NOISE_CV), rng)
    rate *= _bursts(seconds, flashes, rng)
    return rate


def synthetic_multi(
    n_models: int = 50,
    days: float = 1.0,
    *,
    seed: int = 0,
    zipf_s: float = 1.1,
    total_rps: float = 200.0,
    appear_fraction: float = 0.1,
    flash_rate_per_day: float = 1.0,
) -> MultiTrace:
    """``n_models`` models with Zipf popularity and their own rhythms, fully determined by ``seed``.

    Model ``model-k`` has popularity rank ``k+1``: while active its mean rate is proportional
    to ``(k+1)**-zipf_s``, the levels scaled so the mean total over the trace is
    ``total_rps``. Each model has an independent diurnal phase (uniform over the day) and
    amplitude (0.3-0.8), a weekly cycle (amplitude 0.1-0.3) when ``days >= 7``, slow log-normal
    drift (CV 0.1-0.3) and flash crowds (Poisson, ``flash_rate_per_day``; 3-10x for 1-10 min).
    ``round(appear_fraction * n_models)`` models, drawn at random, either appear after the
    start or disappear before the end (alternately, so both kinds occur), changing between
    10% and 90% of the trace; they have no arrivals outside their active span. Counts are
    Poisson draws from the rates. Each model has its own random stream, so a model's shape does
    not change when ``n_models`` does. Second 0 is Monday 00:00 of the base calendar.
    """
    fn = "synthetic_multi"
    _check(fn, "days", days, 1 / _DAY_S, MAX_SPAN_S / _DAY_S)
    _check(fn, "zipf_s", zipf_s, 0.0, 10.0)
    _check(fn, "total_rps", total_rps, 1e-9, 1e6)
    _check(fn, "appear_fraction", appear_fraction, 0.0, 1.0)
    _check(fn, "flash_rate_per_day", flash_rate_per_day, 0.0, 1e4)
    seconds = max(1, round(days * _DAY_S))
    _check_models(fn, n_models, seconds)
    n = int(n_models)
    streams = np.random.SeedSequence(seed).spawn(n + 1)
    pick = np.random.default_rng(streams[0])
    changing = pick.permutation(n)[: round(appear_fraction * n)]
    at = (pick.uniform(*_CHANGE_AT, size=changing.size) * seconds).astype(np.int64)
    start = np.zeros(n, dtype=np.int64)
    stop = np.full(n, seconds, dtype=np.int64)
    start[changing[0::2]] = np.minimum(at[0::2], seconds - 1)  # appear
    stop[changing[1::2]] = np.maximum(at[1::2], 1)  # disappear
    active = stop - start
    weights = zipf_weights(n, zipf_s)
    # Levels while active follow Zipf exactly; the common factor makes the mean total exact.
    level = weights * (total_rps * seconds / float(np.dot(weights, active)))
    counts = np.zeros((n, seconds), dtype=np.int64)
    for i in range(n):  # a loop over models; each model's work is vectorised over seconds
        rng = np.random.default_rng(streams[i + 1])
        rate = _model_shape(seconds, days >= 7, flash_rate_per_day * days, rng)
        rate[: start[i]] = 0.0
        rate[stop[i] :] = 0.0
        rate *= level[i] * active[i] / rate.sum()
        counts[i] = rng.poisson(rate)
    source = (
        f"synthetic_multi(n_models={n}, days={days}, seed={seed}, zipf_s={zipf_s}, "
        f"total_rps={total_rps}, appear_fraction={appear_fraction}, "
        f"flash_rate_per_day={flash_rate_per_day})"
    )
    names = tuple(f"model-{i:0{_width(n)}d}" for i in range(n))
    return MultiTrace(f"synthetic-{n}models-{days}d-seed{seed}", names, counts, source)


def _short(name: str) -> str:
    """'twitter-2021-08.per-second' -> 'twitter': the part of a trace name before '-' or '.'."""
    return re.split(r"[-.]", name, maxsplit=1)[0] or name


def _offsets(count: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` start seconds in ``[0, length)``, one per equal stratum in random order, so
    models on the same trace start apart (distinct whenever ``length >= count``)."""
    strata = rng.permutation(count) + rng.random(count)
    return np.minimum((strata / count * length).astype(np.int64), length - 1)


def compose_real(
    paths: Sequence[str | Path],
    n_models: int,
    *,
    seconds: int,
    seed: int = 0,
    zipf_s: float = 1.1,
    total_rps: float | None = None,
) -> MultiTrace:
    """``n_models`` models cut from real traces, rescaled so their mean rates follow Zipf.

    Model of rank ``k+1`` takes ``paths[k % len(paths)]`` (round-robin) from a seeded start:
    the models on one trace start in different equal strata of it, so they see different
    days and bursts. A window running past the end wraps to the start, so a trace shorter
    than ``seconds`` is tiled. Each window is then scaled with :meth:`Trace.scaled` (binomial
    thinning, or copies plus thinning) to a mean of ``T * zipf_weights(n, zipf_s)[k]``,
    where ``T`` is ``total_rps`` if given, else the Zipf-weighted mean of the windows' own
    rates (about one real trace's worth of load, shared out by popularity). Files are read
    as the corpus reads them (:func:`simulations.corpus.load_real`): a request CSV whose time
    column is not TIMESTAMP, like mooncake's ``timestamp_s``, is found by name.
    """
    fn = "compose_real"
    if not paths:
        raise ValueError(f"{fn}: paths is empty (expected at least one trace file)")
    if int(seconds) != seconds or not 1 <= seconds <= MAX_SPAN_S:
        raise ValueError(f"{fn}: seconds={seconds!r} must be a whole number in [1, {MAX_SPAN_S}]")
    seconds = int(seconds)
    _check(fn, "zipf_s", zipf_s, 0.0, 10.0)
    if total_rps is not None:
        _check(fn, "total_rps", total_rps, 1e-9, 1e6)
    _check_models(fn, n_models, seconds)
    n = int(n_models)
    loaded: dict[Path, Trace] = {}
    for p in map(Path, paths):  # a path listed twice is read once
        if p not in loaded:
            loaded[p] = load_real(p)
    traces = [loaded[Path(p)] for p in paths]
    streams = np.random.SeedSequence(seed).spawn(n + 1)
    pick = np.random.default_rng(streams[0])
    source_of = np.arange(n) % len(traces)
    offsets = np.zeros(n, dtype=np.int64)
    for j, trace in enumerate(traces):
        members = np.flatnonzero(source_of == j)
        offsets[members] = _offsets(members.size, trace.seconds, pick)
    window = np.arange(seconds, dtype=np.int64)
    rows = [
        np.take(traces[j].counts, window + offsets[i], mode="wrap") for i, j in enumerate(source_of)
    ]
    natural = np.array([row.sum() for row in rows], dtype=np.float64) / seconds
    if (natural == 0).any():
        i = int(np.argmax(natural == 0))
        raise ValueError(
            f"{fn}: the {seconds} s window of {traces[source_of[i]].source} from second "
            f"{offsets[i]} has no requests, so it cannot be scaled to a Zipf share (expected "
            "a longer window, or another seed)"
        )
    weights = zipf_weights(n, zipf_s)
    total = float(total_rps) if total_rps is not None else float(np.dot(natural, weights))
    factors = total * weights / natural
    width = _width(n)
    names = tuple(
        f"{_short(traces[j].name)}-{i:0{width}d}@{offsets[i]}s" for i, j in enumerate(source_of)
    )
    scaled = [  # each model thinned with its own stream, as MultiTrace.scaled does
        Trace(name, row).scaled(f, int(stream.generate_state(1, dtype=np.uint64)[0])).counts
        for name, row, f, stream in zip(names, rows, factors, streams[1:], strict=True)
    ]
    source = (
        f"compose_real(paths=[{', '.join(t.name for t in traces)}], n_models={n}, "
        f"seconds={seconds}, seed={seed}, zipf_s={zipf_s}, total_rps={total_rps})"
    )
    return MultiTrace(f"composed-{n}models-seed{seed}", names, np.stack(scaled), source)
