"""Request traces: per-second arrival counts, loaded from the file shapes people actually have.

The simulator replays load one second at a time, so every source is reduced to one array of
integer arrivals per second. Three file shapes are read:

* ``counts``   -- whitespace-separated per-second counts (``.txt``, optionally gzip), the shape
  of the shared twitter trace;
* ``requests`` -- a CSV request log with one row per request and a timestamp column;
* ``periods``  -- a CSV of aggregated ``period,count`` rows (per minute, per 5 minutes, ...).

Every problem with a file raises :class:`TraceError`, whose message names the file, the line
(when there is one), what was found and what was expected, so a bad trace is fixed from the
message alone. The CSV shapes are parsed in `simulations.trace_csv`; the limits and
TraceError live in `simulations.trace_errors` (re-exported here).
"""

from __future__ import annotations

import codecs
import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridserve.units import format_duration, parse_duration
from simulations.trace_csv import decode_text, detect_csv, load_periods, load_requests
from simulations.trace_errors import (
    COUNT_COLUMNS,
    COUNTS_EXPECTED,
    EPOCH_MS_THRESHOLD,
    FORMATS,
    GZIP_MAGIC,
    MAX_COUNT_PER_S,
    MAX_SPAN_S,
    PERIOD_COLUMNS,
    TraceError,
    shown,
    trace_error,
)

__all__ = [
    "COUNT_COLUMNS",
    "EPOCH_MS_THRESHOLD",
    "FORMATS",
    "MAX_SPAN_S",
    "MAX_COUNT_PER_S",
    "PERIOD_COLUMNS",
    "Trace",
    "TraceError",
    "load_trace",
]

# --------------------------------------------------------------------------------------------
# Trace
# --------------------------------------------------------------------------------------------


def _as_counts(counts: object, name: str) -> np.ndarray:
    """Validate per-second counts and return them as a read-only int64 array.

    Read-only because a frozen Trace is shared between simulations; a view (not a copy) keeps
    slicing a 1.9 M-second trace free.
    """
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"trace {name!r}: counts must be a non-empty 1-D array, got {arr.shape}")
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr).all() and (arr == np.floor(arr)).all()):
            raise ValueError(f"trace {name!r}: counts must be whole numbers of requests")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"trace {name!r}: counts must be integers, got dtype {arr.dtype}")
    if (arr < 0).any():
        first = int(np.argmax(arr < 0))
        raise ValueError(f"trace {name!r}: count at second {first} is negative ({arr[first]})")
    if (arr > MAX_COUNT_PER_S).any():
        first = int(np.argmax(arr > MAX_COUNT_PER_S))
        raise ValueError(
            f"trace {name!r}: count at second {first} is {arr[first]}, above the "
            f"{MAX_COUNT_PER_S:,} requests per second a trace may have"
        )
    view = arr.astype(np.int64, copy=False).view()
    view.flags.writeable = False
    return view


def slice_bounds(label: str, start_s: int, duration_s: int | None, seconds: int) -> tuple[int, int]:
    """[start, stop) of a slice of a trace `seconds` long: a window past the end is cut at the
    end; a negative start, a start at or past the end and a non-positive duration are errors
    naming the trace (`label`)."""
    start_s = int(start_s)
    if start_s < 0:
        raise ValueError(f"{label}: slice start {start_s} s is negative")
    if start_s >= seconds:
        raise ValueError(
            f"{label}: slice start {format_duration(start_s)} ({start_s} s) is "
            f"at or beyond the end of the trace ({seconds} s)"
        )
    if duration_s is not None and int(duration_s) <= 0:
        raise ValueError(f"{label}: slice duration must be positive")
    return start_s, seconds if duration_s is None else min(seconds, start_s + int(duration_s))


@dataclass(frozen=True, eq=False)
class Trace:
    """Arrivals per second: ``counts[i]`` requests arrive during second ``i`` of the trace.

    ``eq=False`` because equality of large arrays is not a meaningful ``==``; compare
    ``counts`` with ``np.array_equal`` instead. ``counts`` is stored read-only.
    """

    name: str
    counts: np.ndarray
    source: str = "in memory"

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", _as_counts(self.counts, self.name))

    def __repr__(self) -> str:
        return (
            f"Trace(name={self.name!r}, seconds={self.seconds}, requests={self.requests}, "
            f"source={self.source!r})"
        )

    @property
    def seconds(self) -> int:
        """Length of the trace in seconds."""
        return int(self.counts.size)

    @property
    def requests(self) -> int:
        """Total arrivals."""
        return int(self.counts.sum())

    @property
    def peak(self) -> int:
        """Highest arrivals in any one second."""
        return int(self.counts.max())

    @property
    def mean_rate(self) -> float:
        """Mean arrivals per second over the whole trace, gaps included."""
        return self.requests / self.seconds

    def slice(self, start_s: int, duration_s: int | None = None) -> Trace:
        """Seconds ``[start_s, start_s + duration_s)``; ``None`` runs to the end.

        A window reaching past the end is cut at the end (like Python slicing), so check
        ``seconds`` on the result when the exact length matters; a start at or past the end is
        an error because the result would be empty.
        """
        start_s, stop = slice_bounds(f"trace {self.name!r}", start_s, duration_s, self.seconds)
        if start_s == 0 and stop == self.seconds:
            return self
        return Trace(self.name, self.counts[start_s:stop], f"{self.source} [{start_s}s:{stop}s]")

    def scaled(self, factor: float, seed: int = 0) -> Trace:
        """Multiply the load by ``factor`` keeping integer counts and the expected total exact.

        Each second gets ``c * floor(f) + Binomial(c, f - floor(f))`` arrivals: binomial
        thinning for ``f < 1``, whole copies plus a thinned extra copy for ``f >= 1``. This is
        what a proportionally larger or smaller user population would generate, unlike
        rounding ``c * f``, which biases low rates. Same ``seed``, same result.
        """
        factor = float(factor)
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"trace {self.name!r}: scale factor must be > 0, got {factor!r}")
        if factor == 1.0:
            return self
        limit = MAX_COUNT_PER_S / max(self.peak, 1)
        if factor > limit:
            raise ValueError(
                f"trace {self.name!r}: rate scale {factor:g} takes the peak second of "
                f"{self.peak} requests past {MAX_COUNT_PER_S:,} per second (allowed: a factor "
                f"up to {limit:.4g})"
            )
        whole = math.floor(factor)
        rng = np.random.default_rng(seed)
        counts = self.counts * whole + rng.binomial(self.counts, factor - whole)
        return Trace(self.name, counts, f"{self.source} x{factor:g} (seed {seed})")

    def per_interval(self, interval_s: int) -> np.ndarray:
        """Mean arrival rate (req/s, float) in consecutive ``interval_s``-second intervals.

        The last interval may be shorter; it is averaged over its actual length so a partial
        interval does not look like a drop in load.
        """
        if int(interval_s) != interval_s or interval_s < 1:
            raise ValueError(f"interval must be a positive whole number of seconds: {interval_s!r}")
        starts = np.arange(0, self.seconds, int(interval_s))
        sums = np.add.reduceat(self.counts, starts)
        lengths = np.diff(np.append(starts, self.seconds))
        return sums / lengths


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _read_bytes(path: Path, label: str) -> bytes:
    """Whole file, gunzipped when it starts with the gzip magic (whatever its extension)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise trace_error(label, "file not found", f"a trace file at {path.resolve()}") from None
    except OSError as exc:
        raise trace_error(
            label, f"cannot read the file ({exc.strerror or exc})", "a readable file"
        ) from None
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise trace_error(label, f"corrupt gzip data ({exc})", "a complete gzip file") from None
    return data


def _trace_name(path: Path) -> str:
    """File name without ``.gz``/``.txt``/``.csv`` suffixes: 'a.per-second.txt.gz' -> 'a.per-second'."""
    name = path.name
    while True:
        stem, ext = os.path.splitext(name)
        if ext.lower() not in (".gz", ".txt", ".csv") or not stem:
            return name
        name = stem


def _is_csv_name(path: Path) -> bool:
    """``.csv`` or ``.csv.gz``: the extensions that ``fmt='auto'`` treats as CSV."""
    name = path.name.lower()
    return name.removesuffix(".gz").endswith(".csv")


# --------------------------------------------------------------------------------------------
# counts format
# --------------------------------------------------------------------------------------------


def _byte_table(allowed: bytes) -> np.ndarray:
    """Lookup table: ``table[b]`` is True for every byte in ``allowed``."""
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(allowed, dtype=np.uint8)] = True
    return table


_WHITESPACE = b" \t\n\r\v\f"  # exactly what bytes.split() splits on
_DIGITS = b"0123456789"


def _locate_token(data: bytes, offset: int) -> tuple[int, int, str]:
    """(line, token index within the line, token text) of the token covering byte ``offset``."""
    line = data.count(b"\n", 0, offset) + 1
    line_start = data.rfind(b"\n", 0, offset) + 1
    separators = [bytes([b]) for b in _WHITESPACE]
    start = max(line_start, *(data.rfind(sep, 0, offset) + 1 for sep in separators))
    ends = [end for end in (data.find(sep, offset) for sep in separators) if end >= 0]
    end = min(ends, default=len(data))
    token = len(data[line_start:start].split()) + 1
    return line, token, data[start:end].decode("utf-8", "replace")


def _bad_count(data: bytes, offset: int, label: str, problem: str | None = None) -> TraceError:
    """Error for the token at ``offset``, with its line and 1-based position in the line."""
    line, token, text = _locate_token(data, offset)
    if problem is None:
        problem = f"{shown(text)} is not a non-negative integer count"
        if "," in text:
            problem += " (a CSV file? pass fmt='requests' or fmt='periods')"
    return trace_error(label, problem, COUNTS_EXPECTED, line=line, token=token)


def _parse_counts(data: bytes, label: str) -> np.ndarray:
    """Per-second counts from whitespace-separated digits.

    A byte lookup first proves the text is only digits and whitespace (so '-3', '1.5', '+2',
    '1_000' are all rejected, and located precisely); the conversion is then a plain split.
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    buf = np.frombuffer(data, dtype=np.uint8)
    is_digit = _byte_table(_DIGITS)[buf]
    bad = ~(is_digit | _byte_table(_WHITESPACE)[buf])
    if bad.any():
        raise _bad_count(data, int(np.argmax(bad)), label)
    tokens = data.split()
    if not tokens:
        raise trace_error(label, "no counts found (the file is empty or blank)", COUNTS_EXPECTED)
    try:
        counts = np.array(list(map(int, tokens)), dtype=np.int64)
        if not (counts > MAX_COUNT_PER_S).any():
            return counts
        index = int(np.argmax(counts > MAX_COUNT_PER_S))
    except OverflowError:  # beyond int64: find it in Python ints
        index = next(i for i, tok in enumerate(tokens) if int(tok) > MAX_COUNT_PER_S)
    starts = np.flatnonzero(is_digit & ~np.concatenate(([False], is_digit[:-1])))
    text = tokens[index].decode()
    problem = f"{shown(text)} is above the {MAX_COUNT_PER_S:,} requests a second may have"
    raise _bad_count(data, int(starts[index]), label, problem)


# --------------------------------------------------------------------------------------------
# format detection and the public loader
# --------------------------------------------------------------------------------------------


def load_trace(
    path: str | os.PathLike[str],
    fmt: str = "auto",
    *,
    timestamp_column: str = "TIMESTAMP",
    rate_scale: float = 1.0,
    start: str | int | float = 0,
    duration: str | int | float | None = None,
    seed: int = 0,
) -> Trace:
    """Load a trace file as per-second counts, then cut ``[start, start+duration)`` and scale.

    ``fmt`` is one of :data:`FORMATS`. ``auto`` reads ``.csv``/``.csv.gz`` files as
    ``requests`` or ``periods`` by their header (see :func:`detect_csv`) and anything else as
    ``counts``. Gzip is recognised by its magic bytes, whatever the extension.

    * ``counts``: whitespace-separated non-negative integers, one per second.
    * ``requests``: CSV, one row per request, column ``timestamp_column`` (any case) holding
      epoch seconds (fractions allowed), epoch milliseconds (any number > 1e11, i.e. after
      1973-03-03 in ms, is taken as ms; the whole column must agree) or ISO-8601 times (naive
      times are UTC; ``Z`` and ``+hh:mm`` offsets are honoured). Second ``i`` counts the
      requests with ``floor(ts - min_ts) == i``; row order does not matter.
    * ``periods``: CSV ``period,count`` (see :func:`load_periods`): fixed interval inferred,
      missing periods are zero, counts spread evenly over each period's seconds.

    ``start``/``duration`` take anything :func:`hybridserve.units.parse_duration` accepts
    (``"1d"``, ``"2h"``, ``3600``); a window past the end is cut at the end. ``rate_scale``
    applies :meth:`Trace.scaled` with ``seed``. Raises :class:`TraceError` for file problems.
    """
    label = os.fspath(path)
    if fmt not in FORMATS:
        raise trace_error(
            label, f"unknown trace format {fmt!r}", f"fmt one of {', '.join(FORMATS)}"
        )
    start_s = parse_duration(start, field="start")
    duration_s = None if duration is None else parse_duration(duration, field="duration")
    if duration_s == 0:
        raise trace_error(
            label, "duration is 0", "a positive duration, or None for the rest of the trace"
        )
    if not (math.isfinite(float(rate_scale)) and rate_scale > 0):
        raise trace_error(label, f"rate_scale {rate_scale!r} is not positive", "a rate_scale > 0")
    file = Path(path)
    data = _read_bytes(file, label)
    if fmt == "counts" or (fmt == "auto" and not _is_csv_name(file)):
        kind, counts = "counts", _parse_counts(data, label)
    else:
        text = decode_text(data, label)
        kind = detect_csv(text, label, timestamp_column) if fmt == "auto" else fmt
        loader = load_requests if kind == "requests" else load_periods
        counts = loader(text, label, timestamp_column)
    trace = Trace(_trace_name(file), counts, f"{label} ({kind})")
    if start_s >= trace.seconds:
        raise trace_error(
            label,
            f"start {format_duration(start_s)} ({start_s} s) is at or beyond the end of the "
            f"trace, which lasts {format_duration(trace.seconds)} ({trace.seconds} s)",
            f"a start below {trace.seconds} s",
        )
    if start_s or duration_s is not None:
        trace = trace.slice(start_s, duration_s)
    if rate_scale != 1.0:
        trace = trace.scaled(rate_scale, seed)
    return trace
