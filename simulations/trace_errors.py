"""What every trace module shares: the limits a trace must keep, and TraceError, whose message
names the file, the line and what was expected."""

from __future__ import annotations

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

GZIP_MAGIC = b"\x1f\x8b"
COUNTS_EXPECTED = "whitespace-separated per-second arrival counts"
TIMES_EXPECTED = (
    "epoch seconds (e.g. 1627776000.25), epoch milliseconds (numbers > 1e11) or ISO-8601 "
    "times (e.g. 2021-08-01T00:00:00.123Z or 2021-08-01 00:00:00), one kind per column"
)
MAX_SHOWN = 40  # characters of a bad token quoted in a message


class TraceError(ValueError):
    """A trace file is missing or malformed; the message says where and what was expected.

    ``path`` and ``line`` (1-based, ``None`` when the problem is not on one line) are also set
    as attributes for callers that want to point at the spot programmatically.
    """

    path: str | None = None
    line: int | None = None


def trace_error(
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


def shown(text: str) -> str:
    """Quote a token for a message, cut short so a binary file cannot flood the terminal."""
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN] + "..."
    return repr(text)
