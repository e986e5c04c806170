"""Trace loading (counts / requests / periods), Trace operations, synthetic traces, durations."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from hybridserve.units import format_duration, parse_duration
from simulations.synthetic import synthetic_trace
from simulations.traces import MAX_COUNT_PER_S, Trace, TraceError, load_trace

TWITTER = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "traces"
    / "twitter-2021-08.per-second.txt.gz"
)


def write(path: Path, text: str, *, gz: bool = False) -> Path:
    """Write ``text`` to ``path`` (gzip-compressed when ``gz``) and return the path."""
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def zero_runs(counts: np.ndarray) -> np.ndarray:
    """Lengths of the runs of consecutive zero seconds."""
    edges = np.diff(np.concatenate(([0], (counts == 0).astype(np.int8), [0])))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


# --------------------------------------------------------------------------------------------
# durations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90),
        (90.0, 90),
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("1h30m", 5400),
        ("2d", 172_800),
        ("1w", 604_800),
        ("1.5h", 5400),
        (" 1h 1m ", 3660),
        ("0", 0),
        (np.int64(7), 7),
    ],
)
def test_parse_duration_accepts(value: object, seconds: int) -> None:
    assert parse_duration(value) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", ["", "abc", "-5", -5, 1.5, "1.5s", "5x", "5min", "1m30m", "30m1h", "1h30", True, None]
)
def test_parse_duration_rejects_with_field_value_and_forms(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value, field="warmup")  # type: ignore[arg-type]
    message = str(info.value)
    assert "warmup" in message
    assert repr(value) in message
    assert "1h30m" in message  # the accepted forms are spelled out


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59, "59s"), (3660, "1h1m"), (90_061, "1d1h1m1s")]
)
def test_format_duration_round_trips(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


# --------------------------------------------------------------------------------------------
# counts format
# --------------------------------------------------------------------------------------------


def test_counts_plain_and_gzip(tmp_path: Path) -> None:
    text = "3 0 4\n1 5\n\n9\n"
    plain = load_trace(write(tmp_path / "a.txt", text))
    packed = load_trace(write(tmp_path / "b.txt.gz", text, gz=True))
    assert plain.counts.tolist() == packed.counts.tolist() == [3, 0, 4, 1, 5, 9]
    assert (plain.name, packed.name) == ("a", "b")
    assert plain.counts.dtype == np.int64
    assert (plain.seconds, plain.requests, plain.peak) == (6, 22, 9)
    assert plain.mean_rate == pytest.approx(22 / 6)


def test_counts_gzip_detected_by_magic_not_extension(tmp_path: Path) -> None:
    hidden = load_trace(write(tmp_path / "hidden.dat", "1 2 3", gz=True))
    fake = load_trace(write(tmp_path / "fake.txt.gz", "4 5"))  # named .gz, plain text inside
    assert hidden.counts.tolist() == [1, 2, 3]
    assert fake.counts.tolist() == [4, 5]


def test_counts_bad_token_names_file_line_token_and_expectation(tmp_path: Path) -> None:
    line3 = " ".join(str(i) for i in range(16)) + " abc 5"
    path = write(tmp_path / "twitter.txt.gz", f"1 2 3\n4 5\n{line3}\n", gz=True)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    message = str(info.value)
    assert "twitter.txt.gz" in message
    assert "line 3, token 17" in message
    assert "'abc'" in message
    assert "expected whitespace-separated per-second arrival counts" in message
    assert info.value.line == 3


@pytest.mark.parametrize(("text", "token"), [("1 -2 3", "'-2'"), ("1 2.5", "'2.5'")])
def test_counts_negative_and_fractional_rejected(tmp_path: Path, text: str, token: str) -> None:
    with pytest.raises(TraceError, match=rf"neg\.txt: line 1, token 2: {token} is not a non-neg"):
        load_trace(write(tmp_path / "neg.txt", text))


@pytest.mark.parametrize("big", ["9223372036854775807", "99999999999999999999999", "20000000"])
def test_counts_above_the_per_second_bound_name_line_and_token(tmp_path: Path, big: str) -> None:
    # near the int64 limit the total used to wrap to a negative number and the replay hung
    path = write(tmp_path / "big.txt", f"1 2\n3 {big} 4\n")
    with pytest.raises(TraceError, match=rf"big\.txt: line 2, token 2: '{big}' is above the"):
        load_trace(path)
    assert load_trace(write(tmp_path / "max.txt", f"0 {MAX_COUNT_PER_S}")).peak == MAX_COUNT_PER_S


def test_counts_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"empty\.txt: no counts found.*expected"):
        load_trace(write(tmp_path / "empty.txt", " \n"))


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(TraceError, match="nope.txt: file not found"):
        load_trace(missing)
    with pytest.raises(TraceError, match="auto, counts, requests, periods"):
        load_trace(write(tmp_path / "a.txt", "1"), fmt="parquet")


# --------------------------------------------------------------------------------------------
# requests format
# --------------------------------------------------------------------------------------------


def test_requests_numeric_unsorted_case_insensitive(tmp_path: Path) -> None:
    text = "id,Timestamp,model\n1,100.9,a\n2,100.2,a\n\n3,102.5,b\n4,100.0,a\n"
    trace = load_trace(write(tmp_path / "log.csv", text))
    assert trace.name == "log"
    assert trace.counts.tolist() == [3, 0, 1]
    assert "requests" in trace.source


def test_requests_epoch_milliseconds(tmp_path: Path) -> None:
    text = "TIMESTAMP\n1627776000999\n1627776001000\n1627776000000\n1627776003500\n"
    assert load_trace(write(tmp_path / "ms.csv", text)).counts.tolist() == [2, 1, 0, 1]


def test_requests_iso_timestamps_gzip(tmp_path: Path) -> None:
    text = (
        "timestamp,user\n"
        "2021-08-01T00:00:00.500Z,u\n"
        "2021-08-01 00:00:02,u\n"
        "2021-08-01T02:00:01.700+02:00,u\n"
        "2021-08-01T00:00:01Z,u\n"
    )
    trace = load_trace(write(tmp_path / "iso.csv.gz", text, gz=True))
    assert trace.name == "iso"
    assert trace.counts.tolist() == [2, 2]  # seconds since 00:00:00.500


def test_requests_custom_column(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "when,who\n5,a\n7,b\n")
    assert load_trace(path, "requests", timestamp_column="WHEN").counts.tolist() == [1, 0, 1]


def test_requests_missing_column_lists_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "id,ts,model\n1,2,3\n")
    with pytest.raises(TraceError) as info:
        load_trace(path, "requests")
    message = str(info.value)
    assert "log.csv: line 1:" in message
    assert "'TIMESTAMP'" in message
    assert "'id', 'ts', 'model'" in message
    assert "expected" in message


@pytest.mark.parametrize(
    "bad", ["abc", "2021-13-01T00:00:00Z", "nan", "1627776000", "1627776000123"]
)
def test_requests_bad_timestamp_reports_line(tmp_path: Path, bad: str) -> None:
    first = "2021-08-01T00:00:00Z" if bad == "1627776000" else "1627776000"
    path = write(tmp_path / "log.csv", f"TIMESTAMP\n{first}\n\n{bad}\n")
    with pytest.raises(TraceError) as info:
        load_trace(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 4: ")
    assert repr(bad) in message
    assert "(expected epoch seconds" in message


def test_requests_malformed_row(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "id,TIMESTAMP\n1,5\n2\n")
    with pytest.raises(TraceError, match=r"log\.csv: line 3: row has too few fields.*expected 2"):
        load_trace(path)


# --------------------------------------------------------------------------------------------
# periods format
# --------------------------------------------------------------------------------------------


def test_periods_spread_exactly_and_evenly(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path / "per-minute.csv", "period,count\n0,130\n60,1\n120,0\n"))
    assert trace.seconds == 180
    assert trace.requests == 131
    minutes = trace.counts.reshape(3, 60)
    assert minutes.sum(axis=1).tolist() == [130, 1, 0]
    assert set(minutes[0].tolist()) <= {2, 3}  # within one request of 130/60
    assert minutes[1].tolist().index(1) in (29, 30)  # a lone request lands mid-period


def test_periods_fill_gaps_with_zero_periods_and_sort_rows(tmp_path: Path) -> None:
    text = "Time,Requests\n2021-08-01T00:10:00Z,30\n2021-08-01T00:00:00Z,10\n"
    text += "2021-08-01T00:05:00Z,20\n2021-08-01T00:25:00Z,50\n"
    trace = load_trace(write(tmp_path / "five.csv", text))
    per_period = trace.counts.reshape(-1, 300).sum(axis=1)
    assert per_period.tolist() == [10, 20, 30, 0, 0, 50]
    assert trace.requests == 110


def test_periods_explicit_format_and_float_counts(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", "timestamp,arrivals,extra\n0,6.0,x\n2,4,y\n")
    assert load_trace(path, "periods").counts.tolist() == [3, 3, 2, 2]


def test_periods_off_grid_row_reports_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "irregular.csv", "period,count\n0,1\n60,1\n120,1\n150,1\n180,1\n240,1\n"
    )
    with pytest.raises(TraceError) as info:
        load_trace(path)
    message = str(info.value)
    assert "irregular.csv: line 5:" in message
    assert "'150'" in message
    assert "60 s interval" in message
    assert "expected periods on one fixed interval" in message


def test_periods_duplicate_and_negative(tmp_path: Path) -> None:
    dup = write(tmp_path / "dup.csv", "period,count\n0,1\n60,2\n60,3\n")
    with pytest.raises(TraceError, match=r"dup\.csv: line 4: period '60' repeats .* line 3"):
        load_trace(dup)
    neg = write(tmp_path / "neg.csv", "period,count\n0,1\n60,-2\n")
    with pytest.raises(TraceError, match=r"neg\.csv: line 3: count '-2' is not a non-negative"):
        load_trace(neg)
    frac = write(tmp_path / "frac.csv", "period,count\n0,1\n60,x\n")
    with pytest.raises(TraceError, match=r"frac\.csv: line 3: count 'x' is not a number"):
        load_trace(frac)


@pytest.mark.parametrize(("count", "problem"), [("4e15", "requests per second"), ("1e16", "")])
def test_periods_absurd_count_names_line(tmp_path: Path, count: str, problem: str) -> None:
    # 4e15 per minute used to pass every check and hang the replay
    path = write(tmp_path / "absurd.csv", f"period,count\n0,1\n60,{count}\n120,1\n")
    with pytest.raises(TraceError, match=rf"absurd\.csv: line 3: count '?{count}'? .*{problem}"):
        load_trace(path)
    fine = write(tmp_path / "fine.csv", f"period,count\n0,{60 * MAX_COUNT_PER_S}\n60,1\n")
    assert load_trace(fine).peak == MAX_COUNT_PER_S


def test_periods_spread_stays_exact_over_long_periods(tmp_path: Path) -> None:
    # one-week periods: c * n products would overflow int64; only the remainder is multiplied
    week, count = 7 * 86_400, 10**12 + 7
    trace = load_trace(write(tmp_path / "weekly.csv", f"period,count\n0,{count}\n{week},0\n"))
    first = trace.counts[:week]
    assert int(first.sum()) == count
    assert int(first.max()) - int(first.min()) <= 1


def test_periods_need_two_rows(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="one.csv: 1 period row.*expected at least two"):
        load_trace(write(tmp_path / "one.csv", "period,count\n0,5\n"))


def test_auto_csv_ambiguous_header_explains_choices(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(TraceError) as info:
        load_trace(path)
    message = str(info.value)
    assert "odd.csv: line 1:" in message
    assert "fmt='requests'" in message
    assert "fmt='periods'" in message


# --------------------------------------------------------------------------------------------
# Trace operations and load_trace options
# --------------------------------------------------------------------------------------------


def test_trace_is_read_only_and_validated() -> None:
    trace = Trace("t", np.array([1, 2, 3]))
    with pytest.raises(ValueError):
        trace.counts[0] = 5
    with pytest.raises(ValueError, match="negative"):
        Trace("t", np.array([1, -1]))
    with pytest.raises(ValueError, match="whole numbers"):
        Trace("t", np.array([1.5]))
    with pytest.raises(ValueError, match=r"second 1 is 10000001, above the 10,000,000"):
        Trace("t", np.array([1, MAX_COUNT_PER_S + 1]))


def test_scaled_past_the_per_second_bound_is_an_error() -> None:
    # a factor of 1e300 used to overflow inside numpy with a traceback
    with pytest.raises(ValueError, match=r"rate scale 1e\+300 .* up to 2e\+06"):
        Trace("t", np.array([5, 1])).scaled(1e300)
    with pytest.raises(ValueError, match="rate scale"):
        Trace("t", np.array([0, 0])).scaled(1e300)
    assert Trace("t", np.array([5, 1])).scaled(2e6).peak == MAX_COUNT_PER_S


def test_slice_clips_and_rejects_start_past_end() -> None:
    trace = Trace("t", np.arange(10))
    assert trace.slice(2, 3).counts.tolist() == [2, 3, 4]
    assert trace.slice(8, None).counts.tolist() == [8, 9]
    assert trace.slice(8, 100).seconds == 2
    with pytest.raises(ValueError, match="beyond the end"):
        trace.slice(10, 1)


def test_per_interval_averages_partial_last_interval() -> None:
    rates = Trace("t", np.array([1, 2, 3, 4, 10])).per_interval(2)
    assert rates.tolist() == [1.5, 3.5, 10.0]


@pytest.mark.parametrize("factor", [0.3, 1.0, 2.7])
def test_scaled_keeps_integers_expected_total_and_seed(factor: float) -> None:
    base = Trace("t", np.random.default_rng(1).poisson(50, size=20_000))
    scaled = base.scaled(factor, seed=3)
    assert scaled.counts.dtype == np.int64
    # Binomial thinning: std of the total is below sqrt(total); allow 5 of them.
    assert abs(scaled.requests - factor * base.requests) < 5 * np.sqrt(base.requests)
    assert np.array_equal(scaled.counts, base.scaled(factor, seed=3).counts)
    if factor != 1.0:
        assert not np.array_equal(scaled.counts, base.scaled(factor, seed=4).counts)
    with pytest.raises(ValueError):
        base.scaled(0)


def test_load_trace_window_and_scale(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", " ".join(["10"] * 7200))
    window = load_trace(path, start="30m", duration="1h")
    assert window.seconds == 3600
    scaled = load_trace(path, start=0, duration=600, rate_scale=0.5, seed=1)
    assert scaled.seconds == 600
    assert abs(scaled.requests - 3000) < 5 * np.sqrt(6000)
    with pytest.raises(TraceError, match=r"c\.txt: start 2h .* beyond the end"):
        load_trace(path, start="2h")
    with pytest.raises(ValueError, match="start"):
        load_trace(path, start="soon")


# --------------------------------------------------------------------------------------------
# synthetic traces
# --------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_named() -> None:
    a = synthetic_trace(1.0, seed=7)
    b = synthetic_trace(1.0, seed=7)
    assert np.array_equal(a.counts, b.counts)
    assert not np.array_equal(a.counts, synthetic_trace(1.0, seed=8).counts)
    assert a.name == "synthetic-1.0d-seed7"
    assert "mean_rate=64.0" in a.source


def test_synthetic_properties() -> None:
    trace = synthetic_trace(2.0, seed=0)
    assert trace.seconds == 2 * 86_400
    assert trace.mean_rate == pytest.approx(64.0, rel=0.10)
    assert zero_runs(trace.counts).max() >= 30  # capture gaps
    minutes = trace.per_interval(60)
    assert minutes.max() >= 3 * np.median(minutes)  # a flash crowd
    hours = trace.per_interval(3600)
    assert hours[14:17].mean() > 2 * hours[2:5].mean()  # afternoon peak, night trough


def test_synthetic_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="diurnal_amplitude"):
        synthetic_trace(1.0, diurnal_amplitude=1.5)
    with pytest.raises(ValueError, match="days"):
        synthetic_trace(0)
    with pytest.raises(ValueError, match=r"days=1000000.0 is outside \(0.0, 400.0\)"):
        synthetic_trace(1e6)  # would allocate 644 GiB


# --------------------------------------------------------------------------------------------
# the real trace
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not TWITTER.exists(), reason=f"real trace not present: {TWITTER}")
def test_real_twitter_trace() -> None:
    trace = load_trace(TWITTER)
    assert trace.seconds == 1_899_061
    assert trace.requests == 120_774_326
    assert trace.name == "twitter-2021-08.per-second"
    window = load_trace(TWITTER, start="1d", duration="2h")
    assert window.seconds == 7200
    assert np.array_equal(window.counts, trace.counts[86_400 : 86_400 + 7200])
