"""CSV traces: a request log (one row per timestamp) or aggregated ``period,count`` rows, reduced
to per-second counts; every problem raises TraceError naming the file, line and column."""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from simulations.trace_errors import (
    COUNT_COLUMNS,
    EPOCH_MS_THRESHOLD,
    MAX_COUNT_PER_S,
    MAX_SPAN_S,
    PERIOD_COLUMNS,
    TIMES_EXPECTED,
    TraceError,
    shown,
    trace_error,
)

# --------------------------------------------------------------------------------------------
# CSV helpers
# --------------------------------------------------------------------------------------------


def decode_text(data: bytes, label: str) -> str:
    """UTF-8 text (a BOM is dropped); a bad byte is reported with its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        found = f"byte 0x{data[exc.start]:02x} is not UTF-8 text"
        raise trace_error(label, found, "a UTF-8 CSV file", line=line) from None


def _nonblank(row: list[str]) -> bool:
    """False for empty lines (and whitespace-only ones), which CSV files often end with."""
    return bool(row) and (len(row) > 1 or bool(row[0].strip()))


@contextmanager
def _csv_syntax(label: str, reader: Any) -> Iterator[None]:
    """Turn ``csv.Error`` into a TraceError that carries the reader's current line."""
    try:
        yield
    except csv.Error as exc:
        raise trace_error(
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
    raise trace_error(label, "the file is empty", "a CSV header row followed by data rows")


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
        raise trace_error(
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
    return trace_error(
        label, f"{column} {shown(value)} is not a timestamp", TIMES_EXPECTED, line=line
    )


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
        problem = f"{column} {shown(values[i])} is not a number like the first row's {values[0]!r}"
        raise trace_error(label, problem, TIMES_EXPECTED, line=lines[i]) from None
    finite = np.isfinite(numbers)
    if not finite.all():
        i = int(np.argmin(finite))
        raise trace_error(
            label, f"{column} {shown(values[i])} is not finite", TIMES_EXPECTED, line=lines[i]
        )
    is_ms = numbers > EPOCH_MS_THRESHOLD
    if is_ms.any() and not is_ms.all():
        i = int(np.argmax(is_ms != is_ms[0]))
        kinds = ("epoch seconds", "epoch milliseconds")
        raise trace_error(
            label,
            f"{column} {shown(values[i])} looks like {kinds[int(is_ms[i])]} but the first row "
            f"({values[0].strip()!r}, line {lines[0]}) looks like {kinds[int(is_ms[0])]}",
            TIMES_EXPECTED,
            line=lines[i],
        )
    return numbers, (1000 if is_ms[0] else 1)


def _check_span(span_s: float, label: str, what: str) -> None:
    """Refuse absurd spans before allocating one slot per second."""
    if span_s >= MAX_SPAN_S:
        raise trace_error(
            label,
            f"{what} span {span_s / 86_400:.0f} days",
            f"at most {MAX_SPAN_S // 86_400} days of trace (a stray timestamp?)",
        )


# --------------------------------------------------------------------------------------------
# requests format
# --------------------------------------------------------------------------------------------


def load_requests(text: str, label: str, timestamp_column: str) -> np.ndarray:
    """Per-second counts from one-row-per-request CSV: second = floor(ts - earliest ts)."""
    table = _open_csv(text, label)
    header = table.header
    index = _find_column(header, (timestamp_column,))
    if index is None:
        raise trace_error(
            label,
            f"no {timestamp_column!r} column; columns found: {', '.join(map(repr, header))}",
            f"a header with a {timestamp_column!r} column (any case) and one row per request, "
            "or pass timestamp_column=",
            line=table.header_line,
        )
    (values,), lines = _columns(table, [index])
    if not values:
        raise trace_error(label, "no request rows after the header", "one row per request")
    times, per_second = _parse_times(values, lines, label, header[index])
    earliest = times.min()
    _check_span(float(times.max() - earliest) / per_second, label, "timestamps")
    seconds = np.floor_divide(times - earliest, per_second).astype(np.int64)
    return np.bincount(seconds)


# --------------------------------------------------------------------------------------------
# periods format
# --------------------------------------------------------------------------------------------


def checked_numbers(
    values: list[str],
    lines: Sequence[int],
    label: str,
    expected: str,
    what: str,
    good: Callable[[np.ndarray], np.ndarray],
    bad: str,
) -> np.ndarray:
    """A column's values as floats, vectorised; the first that is not a number, or fails
    `good`, is a TraceError naming its line: "`what` VALUE is not a number" or "... `bad`"."""
    try:
        numbers = np.array(values, dtype=np.float64)
    except ValueError:
        i = next((i for i, value in enumerate(values) if not _is_number(value)), 0)
        raise trace_error(
            label, f"{what} {shown(values[i])} is not a number", expected, line=lines[i]
        ) from None
    ok = good(numbers)
    if not ok.all():
        i = int(np.argmin(ok))
        raise trace_error(label, f"{what} {shown(values[i])} {bad}", expected, line=lines[i])
    return numbers


def _period_counts(values: list[str], lines: Sequence[int], label: str, column: str) -> np.ndarray:
    """Non-negative whole counts ('12' or '12.0'); anything else is reported with its line."""
    expected = f"non-negative integer request counts in column {column!r}"
    numbers = checked_numbers(
        values, lines, label, expected, "count",
        lambda x: np.isfinite(x) & (x >= 0) & (x == np.floor(x)),
        "is not a non-negative integer",
    )  # fmt: skip
    if (numbers >= 2**53).any():  # floats stop being exact; far past the per-second bound too
        i = int(np.argmax(numbers >= 2**53))
        problem = f"count {shown(values[i])} is too large"
        raise trace_error(label, problem, f"at most {MAX_COUNT_PER_S:,} per second", line=lines[i])
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


def load_periods(text: str, label: str, timestamp_column: str) -> np.ndarray:
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
        raise trace_error(
            label,
            f"header {', '.join(map(repr, header))} lacks a period or a count column",
            f"a header like 'period,count': period column one of {PERIOD_COLUMNS}, "
            f"count column one of {COUNT_COLUMNS} (any case)",
            line=table.header_line,
        )
    (p_values, c_values), lines = _columns(table, [p_index, c_index])
    if len(p_values) < 2:
        raise trace_error(
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
        raise trace_error(
            label,
            f"period {p_values[order[k + 1]].strip()!r} repeats the period on line {first}",
            "each period at most once",
            line=second,
        )
    interval = _interval_ms(diffs)
    if interval % 1000:
        raise trace_error(
            label,
            f"the most common spacing between periods is {interval / 1000:g} s",
            "periods a whole number of seconds apart",
        )
    off_grid = (ordered - ordered[0]) % interval != 0
    if off_grid.any():
        rows_off = order[off_grid]
        i = min((int(r) for r in rows_off), key=lines.__getitem__)
        raise trace_error(
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
        raise trace_error(
            label,
            f"count {c_values[i].strip()} in a {n} s period is {counts[i] / n:.3g} requests per "
            "second",
            f"at most {MAX_COUNT_PER_S:,} requests per second, {MAX_COUNT_PER_S * n:,} per period",
            line=lines[i],
        )
    per_period = np.zeros(int(slots[-1]) + 1, dtype=np.int64)
    per_period[slots] = counts[order]
    return _spread(per_period, n)


def detect_csv(text: str, label: str, timestamp_column: str) -> str:
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
    raise trace_error(
        label,
        f"cannot tell the CSV format from its header {', '.join(map(repr, header))}",
        f"either a request log with a {timestamp_column!r} column and no count column "
        f"(fmt='requests'), or two columns period,count (fmt='periods'; period one of "
        f"{PERIOD_COLUMNS}, count one of {COUNT_COLUMNS}); or pass fmt= explicitly",
        line=table.header_line,
    )
