"""Request traces: per-second arrival counts, loaded from the file shapes people actually have.

The simulator replays load one second at a time, so every source is reduced to one array of
integer arrivals per second. Three file shapes are read:

* ``counts``   -- whitespace-separated per-second counts (``.txt``, optionally gzip), the shape
  of the shared twitter trace;
* ``requests`` -- a CSV request log with one row per request and a timestamp column;
* ``periods``  -- a CSV of aggregated ``period,count`` rows (per minute, per 5 minutes, ...).

Every problem with a file raises :class:`TraceError`, whose message names the file, the line
(when there is one), what was found and what was expected, so a bad trace is fixed from the
message alone.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import math
import os
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from hybridserve.units import format_duration, parse_duration

__all__ = [
    "COUNT_COLUMNS",
    "EPOCH_MS_THRESHOLD",
    "FORMATS",
    "MAX_COUNT_PER_S",
    "PERIOD_COLUMNS",
    "Trace",
    "TraceError",
    "load_trace",
]

#: Accepted values of ``load_trace(fmt=...)``.
FORMATS = ("auto", "counts", "requests", "periods")
#: Header names (case-insensitive) of the period column of a ``periods`` CSV, in preference order.
PERIOD_COLUMNS = ("period", "timestamp", "time")
#: Header names (case-insensitive) of the count column of a ``periods`` CSV, in preference order.
COUNT_COLUMNS = ("count", "requests", "arrivals", "value")
#: Numeric timestamps above this are epoch milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
EPOCH_MS_THRESHOLD = 1e11
#: Refuse traces longer than this: a stray timestamp years away would allocate gigabytes.
MAX_SPAN_S = 400 * 86_400
#: Refuse more arrivals than this in one second, in a file or after ``rate_scale``. Ten million
#: is 25,000 times the twitter trace's peak second (388) and needs ~10^5 instances of the
#: built-in profile, past any EC2 account's quota; the simulator keeps one object per instance,
#: so far above it a replay runs for hours (1e9/s: 4 GB and 213 s for 5 s of one policy). It
#: also keeps every total exact: 1e7 x MAX_SPAN_S = 3.5e14, far below the int64 limit (9.2e18).
MAX_COUNT_PER_S = 10_000_000

_GZIP_MAGIC = b"\x1f\x8b"
_COUNTS_EXPECTED = "whitespace-separated per-second arrival counts"
_TIMES_EXPECTED = (
    "epoch seconds (e.g. 1627776000.25), epoch milliseconds (numbers > 1e11) or ISO-8601 "
    "times (e.g. 2021-08-01T00:00:00.123Z or 2021-08-01 00:00:00), one kind per column"
)
_MAX_SHOWN = 40  # characters of a bad token quoted in a message


class TraceError(ValueError):
    """A trace file is missing or malformed; the message says where and what was expected.

    ``path`` and ``line`` (1-based, ``None`` when the problem is not on one line) are also set
    as attributes for callers that want to point at the spot programmatically.
    """

    path: str | None = None
    line: int | None = None


def _error(
    label: str, problem: str, expected: str, *, line: int | None = None, token: int | None = None
) -> TraceError:
    """Format the one message shape: ``file: line L, token T: problem (expected ...)``."""
    where = [label]
    if line is not None:
        where.append(f"line {line}" + (f", token {token}" if token is not None else ""))
    err = TraceError(f"{': '.join(where)}: {problem} (expected {expected})")
    err.path = label
    err.line = line
    return err


def _shown(text: str) -> str:
    """Quote a token for a message, cut short so a binary file cannot flood the terminal."""
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return repr(text)


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
        start_s = int(start_s)
        if start_s < 0:
            raise ValueError(f"trace {self.name!r}: slice start {start_s} s is negative")
        if start_s >= self.seconds:
            raise ValueError(
                f"trace {self.name!r}: slice start {format_duration(start_s)} ({start_s} s) is "
                f"at or beyond the end of the trace ({self.seconds} s)"
            )
        if duration_s is not None and int(duration_s) <= 0:
            raise ValueError(f"trace {self.name!r}: slice duration must be positive")
        stop = self.seconds if duration_s is None else min(self.seconds, start_s + int(duration_s))
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
        raise _error(label, "file not found", f"a trace file at {path.resolve()}") from None
    except OSError as exc:
        raise _error(
            label, f"cannot read the file ({exc.strerror or exc})", "a readable file"
        ) from None
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise _error(label, f"corrupt gzip data ({exc})", "a complete gzip file") from None
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
        problem = f"{_shown(text)} is not a non-negative integer count"
        if "," in text:
            problem += " (a CSV file? pass fmt='requests' or fmt='periods')"
    return _error(label, problem, _COUNTS_EXPECTED, line=line, token=token)


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
        raise _error(label, "no counts found (the file is empty or blank)", _COUNTS_EXPECTED)
    try:
        counts = np.array(list(map(int, tokens)), dtype=np.int64)
        if not (counts > MAX_COUNT_PER_S).any():
            return counts
        index = int(np.argmax(counts > MAX_COUNT_PER_S))
    except OverflowError:  # beyond int64: find it in Python ints
        index = next(i for i, tok in enumerate(tokens) if int(tok) > MAX_COUNT_PER_S)
    starts = np.flatnonzero(is_digit & ~np.concatenate(([False], is_digit[:-1])))
    text = tokens[index].decode()
    problem = f"{_shown(text)} is above the {MAX_COUNT_PER_S:,} requests a second may have"
    raise _bad_count(data, int(starts[index]), label, problem)


# --------------------------------------------------------------------------------------------
# CSV helpers
# --------------------------------------------------------------------------------------------


def _decode(data: bytes, label: str) -> str:
    """UTF-8 text (a BOM is dropped); a bad byte is reported with its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        found = f"byte 0x{data[exc.start]:02x} is not UTF-8 text"
        raise _error(label, found, "a UTF-8 CSV file", line=line) from None


def _nonblank(row: list[str]) -> bool:
    """False for empty lines (and whitespace-only ones), which CSV files often end with."""
    return bool(row) and (len(row) > 1 or bool(row[0].strip()))


@contextmanager
def _csv_syntax(label: str, reader: Any) -> Iterator[None]:
    """Turn ``csv.Error`` into a TraceError that carries the reader's current line."""
    try:
        yield
    except csv.Error as exc:
        raise _error(
            label, f"malformed CSV ({exc})", "comma-separated values", line=reader.line_num
        ) from None


@dataclass
class _Csv:
    """A CSV file opened past its header; ``reader`` yields the data rows next."""

    text: str
    label: str
    reader: Any
    header: list[str]
    header_line: int


def _open_csv(text: str, label: str) -> _Csv:
    """Read up to the header (the first non-blank row; names stripped of spaces)."""
    reader = csv.reader(io.StringIO(text))
    with _csv_syntax(label, reader):
        for row in reader:
            if _nonblank(row):
                return _Csv(text, label, reader, [cell.strip() for cell in row], reader.line_num)
    raise _error(label, "the file is empty", "a CSV header row followed by data rows")


class _RowLines(Sequence[int]):
    """Line number of each data row, worked out only when a message needs one.

    Collecting a line number per row would double the cost of reading a million-row log for
    the benefit of the rare bad file, so the CSV is re-read on the first lookup instead.
    """

    def __init__(self, text: str, count: int) -> None:
        self._text = text
        self._count = count
        self._lines: list[int] | None = None

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> int:  # type: ignore[override]
        if self._lines is None:
            table = _open_csv(self._text, "")
            reader = table.reader
            self._lines = [reader.line_num for row in reader if _nonblank(row)]
        return self._lines[index]


def _find_column(header: Sequence[str], names: Sequence[str]) -> int | None:
    """Index of the first of ``names`` (in their order of preference) present, ignoring case."""
    lowered = [h.lower() for h in header]
    for name in names:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    return None


def _columns(table: _Csv, indices: Sequence[int]) -> tuple[list[list[str]], _RowLines]:
    """The wanted columns of every data row, and a lazy map from row index to line number."""
    need = max(indices) + 1
    pick = itemgetter(*indices)
    with _csv_syntax(table.label, table.reader):
        # _nonblank inlined: a function call per row is a fifth of the cost at a million rows.
        picked = [
            pick(row) if len(row) >= need else None
            for row in table.reader
            if row and (len(row) > 1 or row[0].strip())
        ]
    lines = _RowLines(table.text, len(picked))
    if None in picked:
        i = picked.index(None)
        wanted = ", ".join(repr(table.header[k]) for k in indices)
        raise _error(
            table.label,
            f"row has too few fields to reach column(s) {wanted}",
            f"{len(table.header)} comma-separated fields like the header",
            line=lines[i],
        )
    if len(indices) == 1:
        return [picked], lines
    columns = [list(column) for column in zip(*picked, strict=True)] if picked else []
    return columns or [[] for _ in indices], lines


def _iso_shaped(cleaned: np.ndarray) -> np.ndarray:
    """Which strings start 'YYYY-MM-': numpy would otherwise read a bare number as a year.

    Works on the UCS-4 code points of the fixed-width array, so a million rows cost ~10 ms.
    """
    width = cleaned.dtype.itemsize // 4
    if width < 10:
        return np.zeros(cleaned.shape, dtype=bool)
    codes = cleaned.view(np.uint32).reshape(cleaned.size, width)
    year = codes[:, :4]
    dash = ord("-")
    return (
        ((year >= ord("0")) & (year <= ord("9"))).all(axis=1)
        & (codes[:, 4] == dash)
        & (codes[:, 7] == dash)
    )


def _iso_ms(values: list[str], lines: Sequence[int], label: str, column: str) -> np.ndarray:
    """ISO-8601 strings -> int64 epoch milliseconds (UTC; naive times are taken as UTC)."""
    cleaned = np.char.rstrip(np.char.strip(np.array(values, dtype=str)), "Zz")
    shaped = _iso_shaped(cleaned)
    if not shaped.all():
        i = int(np.argmin(shaped))
        raise _bad_time(values[i], lines[i], label, column)
    with warnings.catch_warnings():
        # numpy converts '+02:00' offsets to UTC correctly but warns that it does.
        warnings.simplefilter("ignore", UserWarning)
        try:
            ms = cleaned.astype("datetime64[ms]")
        except ValueError:
            for i, value in enumerate(cleaned):
                try:
                    np.datetime64(value, "ms")
                except ValueError:
                    raise _bad_time(values[i], lines[i], label, column) from None
            raise  # unreachable: the whole array failed, so some single value fails too
    return ms.astype(np.int64)


def _bad_time(value: str, line: int, label: str, column: str) -> TraceError:
    """Error for one unreadable timestamp."""
    return _error(label, f"{column} {_shown(value)} is not a timestamp", _TIMES_EXPECTED, line=line)


def _is_number(value: str) -> bool:
    """Whether ``float`` reads it: the per-row fallback once the vectorised parse has failed."""
    try:
        float(value)
    except ValueError:
        return False
    return True


def _parse_times(
    values: list[str], lines: Sequence[int], label: str, column: str
) -> tuple[np.ndarray, int]:
    """Timestamps as ``(times, units_per_second)``: float seconds or ms, or int64 ms for ISO.

    Numbers above 1e11 are epoch milliseconds; the whole column must agree, since a column
    mixing seconds and milliseconds is a bug upstream rather than something to guess about.
    """
    try:
        numbers = np.array(values, dtype=np.float64)
    except ValueError:
        if not _is_number(values[0]):
            return _iso_ms(values, lines, label, column), 1000
        # The first row decides the column's kind; report the first row that breaks it.
        i = next((i for i, value in enumerate(values) if not _is_number(value)), 0)
        problem = f"{column} {_shown(values[i])} is not a number like the first row's {values[0]!r}"
        raise _error(label, problem, _TIMES_EXPECTED, line=lines[i]) from None
    finite = np.isfinite(numbers)
    if not finite.all():
        i = int(np.argmin(finite))
        raise _error(
            label, f"{column} {_shown(values[i])} is not finite", _TIMES_EXPECTED, line=lines[i]
        )
    is_ms = numbers > EPOCH_MS_THRESHOLD
    if is_ms.any() and not is_ms.all():
        i = int(np.argmax(is_ms != is_ms[0]))
        kinds = ("epoch seconds", "epoch milliseconds")
        raise _error(
            label,
            f"{column} {_shown(values[i])} looks like {kinds[int(is_ms[i])]} but the first row "
            f"({values[0].strip()!r}, line {lines[0]}) looks like {kinds[int(is_ms[0])]}",
            _TIMES_EXPECTED,
            line=lines[i],
        )
    return numbers, (1000 if is_ms[0] else 1)


def _check_span(span_s: float, label: str, what: str) -> None:
    """Refuse absurd spans before allocating one slot per second."""
    if span_s >= MAX_SPAN_S:
        raise _error(
            label,
            f"{what} span {span_s / 86_400:.0f} days",
            f"at most {MAX_SPAN_S // 86_400} days of trace (a stray timestamp?)",
        )


# --------------------------------------------------------------------------------------------
# requests format
# --------------------------------------------------------------------------------------------


def _load_requests(text: str, label: str, timestamp_column: str) -> np.ndarray:
    """Per-second counts from one-row-per-request CSV: second = floor(ts - earliest ts)."""
    table = _open_csv(text, label)
    header = table.header
    index = _find_column(header, (timestamp_column,))
    if index is None:
        raise _error(
            label,
            f"no {timestamp_column!r} column; columns found: {', '.join(map(repr, header))}",
            f"a header with a {timestamp_column!r} column (any case) and one row per request, "
            "or pass timestamp_column=",
            line=table.header_line,
        )
    (values,), lines = _columns(table, [index])
    if not values:
        raise _error(label, "no request rows after the header", "one row per request")
    times, per_second = _parse_times(values, lines, label, header[index])
    earliest = times.min()
    _check_span(float(times.max() - earliest) / per_second, label, "timestamps")
    seconds = np.floor_divide(times - earliest, per_second).astype(np.int64)
    return np.bincount(seconds)


# --------------------------------------------------------------------------------------------
# periods format
# --------------------------------------------------------------------------------------------


def _period_counts(values: list[str], lines: Sequence[int], label: str, column: str) -> np.ndarray:
    """Non-negative whole counts ('12' or '12.0'); anything else is reported with its line."""
    expected = f"non-negative integer request counts in column {column!r}"
    try:
        numbers = np.array(values, dtype=np.float64)
    except ValueError:
        i = next((i for i, value in enumerate(values) if not _is_number(value)), 0)
        raise _error(
            label, f"count {_shown(values[i])} is not a number", expected, line=lines[i]
        ) from None
    good = np.isfinite(numbers) & (numbers >= 0) & (numbers == np.floor(numbers))
    if not good.all():
        i = int(np.argmin(good))
        problem = f"count {_shown(values[i])} is not a non-negative integer"
        raise _error(label, problem, expected, line=lines[i])
    if (numbers >= 2**53).any():  # floats stop being exact; far past the per-second bound too
        i = int(np.argmax(numbers >= 2**53))
        problem = f"count {_shown(values[i])} is too large"
        raise _error(label, problem, f"at most {MAX_COUNT_PER_S:,} per second", line=lines[i])
    return numbers.astype(np.int64)


def _period_ms(times: np.ndarray, per_second: int) -> np.ndarray:
    """Period starts as int64 ms, the exact grid on which spacing is checked."""
    if times.dtype.kind in "iu":
        return times.astype(np.int64)
    return np.round(times * (1000 / per_second)).astype(np.int64)


def _spread(per_period: np.ndarray, n: int) -> np.ndarray:
    """Spread each period's count over its ``n`` seconds: exact, deterministic, evenly spaced.

    Second ``j`` of a period with count ``c`` gets ``round(c*(j+1)/n) - round(c*j/n)`` (halves
    round up), computed in integers. The sums telescope to ``c`` exactly; each second is within
    one request of ``c/n``; arrivals sit centred in the period (a single request lands mid-period,
    not at its start as ``c // n`` plus remainder-first splitting would put it). No randomness is
    used: how bursty the load was inside a period is not in the data, so none is invented.
    Only the remainder ``c % n`` goes through the products, so they stay below ``2 n^2``.
    """
    seconds = np.arange(per_period.size * n, dtype=np.int64) % n
    c = np.repeat(per_period, n)
    r = c % n
    return c // n + (2 * r * (seconds + 1) + n) // (2 * n) - (2 * r * seconds + n) // (2 * n)


def _interval_ms(diffs: np.ndarray) -> int:
    """Most common spacing between consecutive periods (ties: the smallest)."""
    values, freq = np.unique(diffs, return_counts=True)
    return int(values[np.argmax(freq)])


def _load_periods(text: str, label: str, timestamp_column: str) -> np.ndarray:
    """Per-second counts from ``period,count`` rows on a fixed interval.

    The interval is the most common spacing between sorted periods. Rows may come in any
    order. Periods missing between the first and the last become zero-count periods: they are
    gaps in the capture, like the zero seconds of the twitter trace. Duplicated periods and
    periods off the grid are errors. Each period's count is spread over its seconds by
    :func:`_spread`, so the total number of requests is preserved exactly.
    """
    table = _open_csv(text, label)
    header = table.header
    p_index = _find_column(header, ("period", timestamp_column, *PERIOD_COLUMNS[1:]))
    c_index = _find_column(header, COUNT_COLUMNS)
    if p_index is None or c_index is None or p_index == c_index:
        raise _error(
            label,
            f"header {', '.join(map(repr, header))} lacks a period or a count column",
            f"a header like 'period,count': period column one of {PERIOD_COLUMNS}, "
            f"count column one of {COUNT_COLUMNS} (any case)",
            line=table.header_line,
        )
    (p_values, c_values), lines = _columns(table, [p_index, c_index])
    if len(p_values) < 2:
        raise _error(
            label,
            f"{len(p_values)} period row(s); the interval cannot be inferred",
            "at least two period rows",
        )
    times, per_second = _parse_times(p_values, lines, label, header[p_index])
    counts = _period_counts(c_values, lines, label, header[c_index])
    starts = _period_ms(times, per_second)
    order = np.argsort(starts, kind="stable")
    ordered = starts[order]
    diffs = np.diff(ordered)
    if (diffs == 0).any():
        k = int(np.argmax(diffs == 0))
        first, second = sorted((lines[order[k]], lines[order[k + 1]]))
        raise _error(
            label,
            f"period {p_values[order[k + 1]].strip()!r} repeats the period on line {first}",
            "each period at most once",
            line=second,
        )
    interval = _interval_ms(diffs)
    if interval % 1000:
        raise _error(
            label,
            f"the most common spacing between periods is {interval / 1000:g} s",
            "periods a whole number of seconds apart",
        )
    off_grid = (ordered - ordered[0]) % interval != 0
    if off_grid.any():
        rows_off = order[off_grid]
        i = min((int(r) for r in rows_off), key=lines.__getitem__)
        raise _error(
            label,
            f"period {p_values[i].strip()!r} is not a multiple of the {interval // 1000} s "
            f"interval from the first period {p_values[order[0]].strip()!r}",
            "periods on one fixed interval (missing periods are fine: they count as zero)",
            line=lines[i],
        )
    n = interval // 1000
    slots = (ordered - ordered[0]) // interval
    _check_span(float(slots[-1] + 1) * n, label, "periods")
    too_many = counts > MAX_COUNT_PER_S * n
    if too_many.any():
        i = int(np.argmax(too_many))
        raise _error(
            label,
            f"count {c_values[i].strip()} in a {n} s period is {counts[i] / n:.3g} requests per "
            "second",
            f"at most {MAX_COUNT_PER_S:,} requests per second, {MAX_COUNT_PER_S * n:,} per period",
            line=lines[i],
        )
    per_period = np.zeros(int(slots[-1]) + 1, dtype=np.int64)
    per_period[slots] = counts[order]
    return _spread(per_period, n)


# --------------------------------------------------------------------------------------------
# format detection and the public loader
# --------------------------------------------------------------------------------------------


def _detect_csv(text: str, label: str, timestamp_column: str) -> str:
    """Choose 'requests' or 'periods' from the header, or explain why neither fits."""
    # Only the header matters: parse a head of the file rather than copying all of it.
    table = _open_csv(text[: 1 << 16], label)
    header = table.header
    has_count = _find_column(header, COUNT_COLUMNS) is not None
    has_period = _find_column(header, ("period", timestamp_column, *PERIOD_COLUMNS[1:])) is not None
    if has_count and has_period and len(header) == 2:
        return "periods"
    if not has_count and _find_column(header, (timestamp_column,)) is not None:
        return "requests"
    raise _error(
        label,
        f"cannot tell the CSV format from its header {', '.join(map(repr, header))}",
        f"either a request log with a {timestamp_column!r} column and no count column "
        f"(fmt='requests'), or two columns period,count (fmt='periods'; period one of "
        f"{PERIOD_COLUMNS}, count one of {COUNT_COLUMNS}); or pass fmt= explicitly",
        line=table.header_line,
    )


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
    ``requests`` or ``periods`` by their header (see :func:`_detect_csv`) and anything else as
    ``counts``. Gzip is recognised by its magic bytes, whatever the extension.

    * ``counts``: whitespace-separated non-negative integers, one per second.
    * ``requests``: CSV, one row per request, column ``timestamp_column`` (any case) holding
      epoch seconds (fractions allowed), epoch milliseconds (any number > 1e11, i.e. after
      1973-03-03 in ms, is taken as ms; the whole column must agree) or ISO-8601 times (naive
      times are UTC; ``Z`` and ``+hh:mm`` offsets are honoured). Second ``i`` counts the
      requests with ``floor(ts - min_ts) == i``; row order does not matter.
    * ``periods``: CSV ``period,count`` (see :func:`_load_periods`): fixed interval inferred,
      missing periods are zero, counts spread evenly over each period's seconds.

    ``start``/``duration`` take anything :func:`hybridserve.units.parse_duration` accepts
    (``"1d"``, ``"2h"``, ``3600``); a window past the end is cut at the end. ``rate_scale``
    applies :meth:`Trace.scaled` with ``seed``. Raises :class:`TraceError` for file problems.
    """
    label = os.fspath(path)
    if fmt not in FORMATS:
        raise _error(label, f"unknown trace format {fmt!r}", f"fmt one of {', '.join(FORMATS)}")
    start_s = parse_duration(start, field="start")
    duration_s = None if duration is None else parse_duration(duration, field="duration")
    if duration_s == 0:
        raise _error(
            label, "duration is 0", "a positive duration, or None for the rest of the trace"
        )
    if not (math.isfinite(float(rate_scale)) and rate_scale > 0):
        raise _error(label, f"rate_scale {rate_scale!r} is not positive", "a rate_scale > 0")
    file = Path(path)
    data = _read_bytes(file, label)
    if fmt == "counts" or (fmt == "auto" and not _is_csv_name(file)):
        kind, counts = "counts", _parse_counts(data, label)
    else:
        text = _decode(data, label)
        kind = _detect_csv(text, label, timestamp_column) if fmt == "auto" else fmt
        loader = _load_requests if kind == "requests" else _load_periods
        counts = loader(text, label, timestamp_column)
    trace = Trace(_trace_name(file), counts, f"{label} ({kind})")
    if start_s >= trace.seconds:
        raise _error(
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
