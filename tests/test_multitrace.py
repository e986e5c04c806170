"""Multi-model traces: loading (request CSV, one file per model, manifest), their errors, the
MultiTrace operations, the seeded Zipf generator and the composition of real traces."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from simulations.multitrace import (
    MAX_CELLS,
    MultiTrace,
    compose_real,
    load_multi_trace,
    model_name_of,
    synthetic_multi,
    zipf_weights,
)
from simulations.traces import MAX_COUNT_PER_S, Trace, TraceError


def write(path: Path, text: str, *, gz: bool = False) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def leading_zeros(row: np.ndarray) -> int:
    return int(np.argmax(row > 0)) if row.any() else row.size


# --------------------------------------------------------------------------------------------
# per-request CSV with a model column
# --------------------------------------------------------------------------------------------


def test_request_csv_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    models = np.array(["resnet50", "distilbert", "mlp"])
    which = rng.integers(0, 3, 500)
    stamps = [f"{t:.3f}" for t in 1_627_776_000 + rng.uniform(0, 120, 500)]  # unsorted
    rows = "".join(f"{t},{models[m]}\n" for t, m in zip(stamps, which, strict=True))
    times = np.array(stamps, dtype=float)
    mt = load_multi_trace(write(tmp_path / "log.csv", "TIMESTAMP,Model\n" + rows + "\n"))
    assert mt.models == ("distilbert", "mlp", "resnet50")  # sorted by name
    assert mt.name == "log"
    second = np.floor(times - times.min()).astype(int)
    for name in mt.models:
        (k,) = np.flatnonzero(models == name)
        expected = np.bincount(second[which == k], minlength=mt.seconds)
        assert np.array_equal(mt.counts[mt.index(name)], expected)
        assert mt.model_requests()[name] == int((which == k).sum())
    assert mt.requests == 500
    assert np.array_equal(mt.total().counts, np.bincount(second))


def test_request_csv_time_column_found_like_the_corpus(tmp_path: Path) -> None:
    """mooncake's 'timestamp_s': the one column named like a time; or named explicitly."""
    text = "timestamp_s,input_tokens,model\n0.5,10,a\n0.7,3,b\n2.1,4,a\n"
    mt = load_multi_trace(write(tmp_path / "m.csv", text))
    assert np.array_equal(mt.counts, [[1, 1], [1, 0]])  # second 0 at the earliest request
    text = "at,who\n1.0,a\n3.0,b\n"
    mt = load_multi_trace(
        write(tmp_path / "n.csv", text), model_column="who", timestamp_column="at"
    )
    assert mt.models == ("a", "b") and np.array_equal(mt.counts, [[1, 0, 0], [0, 0, 1]])


def test_request_csv_iso_times_and_gzip(tmp_path: Path) -> None:
    text = "time,model\n2021-08-01T00:00:01Z,x\n2021-08-01T00:00:00Z,y\n2021-08-01T00:00:01.5Z,x\n"
    mt = load_multi_trace(write(tmp_path / "iso.csv.gz", text, gz=True))
    assert np.array_equal(mt.counts, [[0, 2], [1, 0]])


def test_model_is_a_single_model_trace_whose_sum_is_its_row(tmp_path: Path) -> None:
    mt = load_multi_trace(write(tmp_path / "l.csv", "TIMESTAMP,model\n0,a\n0,b\n1,a\n5,a\n"))
    a = mt.model("a")
    assert isinstance(a, Trace) and a.name == "a" and a.seconds == mt.seconds
    assert a.requests == int(mt.counts[0].sum()) == 3
    assert a.scaled(2.0).requests == 6 and a.per_interval(3).tolist() == [2 / 3, 1 / 3]
    with pytest.raises(KeyError, match=r"no model 'c' \(2 models: 'a', 'b'\)"):
        mt.model("c")


# --------------------------------------------------------------------------------------------
# one file per model: directory and manifest
# --------------------------------------------------------------------------------------------


def test_directory_of_counts_files_padded_to_the_longest(tmp_path: Path) -> None:
    folder = tmp_path / "fleet"
    folder.mkdir()
    write(folder / "bert.per-second.txt.gz", "1 2 3 4 5", gz=True)
    write(folder / "mlp.txt", "7\n8")
    write(folder / "llm.requests.csv", "timestamp_s,input_tokens\n10.5,1\n10.9,2\n12.0,3\n")
    write(folder / "README.md", "not a trace")
    write(folder / ".hidden", "x")
    mt = load_multi_trace(folder)
    assert mt.models == ("bert", "llm", "mlp") and mt.name == "fleet"
    assert np.array_equal(mt.counts, [[1, 2, 3, 4, 5], [2, 1, 0, 0, 0], [7, 8, 0, 0, 0]])
    assert np.array_equal(mt.model("mlp").counts, [7, 8, 0, 0, 0])


def test_manifest_names_the_models(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "1 1")
    write(tmp_path / "b.txt", "2 2 2")
    man = write(tmp_path / "mix.yaml", "models:\n  resnet50: a.txt\n  distilbert: b.txt\n")
    mt = load_multi_trace(man)
    assert mt.models == ("resnet50", "distilbert") and mt.name == "mix"
    assert np.array_equal(mt.counts, [[1, 1, 0], [2, 2, 2]])
    js = write(tmp_path / "mix.json", '{"models": {"x": "a.txt"}}')
    assert load_multi_trace(js).models == ("x",)


def test_model_name_of_drops_trace_suffixes() -> None:
    assert model_name_of("d/bert.per-second.txt.gz") == "bert"
    assert model_name_of("resnet.requests.csv") == "resnet"
    assert model_name_of("mlp.txt") == "mlp"
    assert model_name_of("x.counts") == "x"


# --------------------------------------------------------------------------------------------
# errors: every one names the file, the line or column, and what was expected
# --------------------------------------------------------------------------------------------


def error(path: Path, **kwargs: str) -> str:
    with pytest.raises(TraceError) as info:
        load_multi_trace(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "expected" in message
    return message


def test_missing_model_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "TIMESTAMP,input_tokens\n1,2\n")
    msg = error(path)
    assert "line 1: no 'model' column; columns found: 'TIMESTAMP', 'input_tokens'" in msg
    assert "model_column=" in msg


def test_empty_model_name_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "TIMESTAMP,model\n1,a\n\n2,  \n")
    assert "line 4: empty model name in column 'model'" in error(path)


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("abc", "TIMESTAMP 'abc' is not a number"),
        ("-5", "TIMESTAMP '-5' is negative"),
        ("inf", "TIMESTAMP 'inf' is not finite"),
    ],
)
def test_bad_timestamp_names_the_line(tmp_path: Path, bad: str, problem: str) -> None:
    path = write(tmp_path / "t.csv", f"TIMESTAMP,model\n1,a\n2,b\n{bad},a\n")
    assert f"line 4: {problem}" in error(path)


def test_timestamp_column_missing_or_ambiguous(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "start_time,end_time,model\n1,2,a\n")
    msg = error(path)
    assert "line 1: cannot tell the timestamp column" in msg and "timestamp_column=" in msg
    assert "'start_time', 'end_time', 'model'" in msg
    assert "no 'ts' column" in error(path, timestamp_column="ts")
    assert "both the model and the timestamp" in error(path, timestamp_column="model")


def test_short_row_and_empty_log(tmp_path: Path) -> None:
    assert "line 3: row has too few fields" in error(
        write(tmp_path / "s.csv", "TIMESTAMP,model\n1,a\n2\n")
    )
    assert "no request rows" in error(write(tmp_path / "e.csv", "TIMESTAMP,model\n"))


def test_directory_with_no_trace_files(tmp_path: Path) -> None:
    write(tmp_path / "README.md", "nothing here")
    assert "the directory holds no trace files" in error(tmp_path)


def test_bad_counts_file_is_prefixed_with_its_model(tmp_path: Path) -> None:
    write(tmp_path / "good.txt", "1 2")
    bad = write(tmp_path / "bert.txt", "1 2\n3 x4")
    with pytest.raises(TraceError) as info:
        load_multi_trace(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"model 'bert': {bad}: line 2, token 2: 'x4' is not a non-negative")
    assert info.value.path == str(bad) and info.value.line == 2


def test_duplicate_model_names(tmp_path: Path) -> None:
    write(tmp_path / "bert.txt", "1")
    write(tmp_path / "bert.per-second.txt.gz", "1", gz=True)
    msg = error(tmp_path)
    assert "files 'bert.per-second.txt.gz' and 'bert.txt' both name model 'bert'" in msg


def test_missing_path_and_bad_manifests(tmp_path: Path) -> None:
    assert "no such file or directory" in error(tmp_path / "nope.csv")
    assert "field 'models' is missing" in error(write(tmp_path / "m.yaml", "model: {}\n"))
    assert "line 2" in error(write(tmp_path / "j.json", '{"models":\n  {"a": }}'))
    manifest = write(tmp_path / "p.yaml", "models:\n  a: missing.txt\n")
    msg = error(manifest)
    assert msg.startswith(f"{manifest}: model 'a': {tmp_path / 'missing.txt'}: file not found")


def test_per_second_total_over_the_bound_is_refused(tmp_path: Path) -> None:
    big = str(MAX_COUNT_PER_S)
    write(tmp_path / "a.txt", big)
    write(tmp_path / "b.txt", big)
    assert "at second 0 the models together receive 20,000,000 requests" in error(tmp_path)


# --------------------------------------------------------------------------------------------
# MultiTrace
# --------------------------------------------------------------------------------------------


def test_counts_near_the_int64_limit_do_not_overflow() -> None:
    near = np.iinfo(np.int64).max // 2 + 1  # two of these wrap a naive int64 sum
    with pytest.raises(ValueError, match="model 'a' at second 0 has 4611686018427387904"):
        MultiTrace("t", ("a", "b"), np.array([[near], [near]]))
    with pytest.raises(ValueError, match="above the 10,000,000 per second"):
        MultiTrace("t", ("a", "b"), np.array([[MAX_COUNT_PER_S], [1]]))
    ok = MultiTrace("t", ("a", "b"), np.array([[MAX_COUNT_PER_S - 1], [1]]))
    assert ok.total().counts.tolist() == [MAX_COUNT_PER_S]


@pytest.mark.parametrize(
    ("models", "counts", "match"),
    [
        ((), np.zeros((0, 3)), "at least one model"),
        (("a", "a"), np.zeros((2, 3), dtype=int), "duplicate model names"),
        (("a", " "), np.zeros((2, 3), dtype=int), "is not a name"),
        (("a",), np.zeros((2, 3), dtype=int), "shape"),
        (("a",), np.zeros((1, 0), dtype=int), "shape"),
        (("a",), [[1.5]], "whole numbers"),
        (("a",), [[-1]], "negative"),
    ],
)
def test_multitrace_validation(models: tuple, counts: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiTrace("t", models, counts)


def test_slice_and_read_only() -> None:
    mt = MultiTrace("t", ["a", "b"], np.arange(20).reshape(2, 10))
    assert mt.models == ("a", "b") and mt.counts.dtype == np.int64
    with pytest.raises(ValueError):
        mt.counts[0, 0] = 5
    part = mt.slice(3, 4)
    assert part.seconds == 4 and part.counts[:, 0].tolist() == [3, 13]
    assert mt.slice(8, 100).seconds == 2 and mt.slice(0) is mt
    with pytest.raises(ValueError, match="at or beyond the end"):
        mt.slice(10)


def test_scaled_thins_each_model_like_trace_scaled() -> None:
    counts = np.random.default_rng(0).poisson([[50.0], [5.0]], size=(2, 20_000))
    mt = MultiTrace("t", ("a", "b"), counts)
    half = mt.scaled(0.5, seed=3)
    assert np.array_equal(half.counts, mt.scaled(0.5, seed=3).counts)
    assert not np.array_equal(half.counts, mt.scaled(0.5, seed=4).counts)
    assert (half.counts <= mt.counts).all()
    ratio = half.counts.sum(axis=1) / mt.counts.sum(axis=1)
    assert np.allclose(ratio, 0.5, atol=0.01)
    assert mt.scaled(1.0) is mt
    with pytest.raises(ValueError, match="busiest second"):
        mt.scaled(MAX_COUNT_PER_S)


# --------------------------------------------------------------------------------------------
# synthetic_multi
# --------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed() -> None:
    a = synthetic_multi(8, 0.1, seed=5)
    b = synthetic_multi(8, 0.1, seed=5)
    c = synthetic_multi(8, 0.1, seed=6)
    assert np.array_equal(a.counts, b.counts) and a.models == b.models
    assert not np.array_equal(a.counts, c.counts)
    assert a.models[0] == "model-00" and a.seconds == 8640


def test_synthetic_zipf_shape_and_total() -> None:
    """Levels follow Zipf exactly, so only Poisson noise separates the top share from the
    formula: over 2 days at 200 req/s, seeds 0-5 measured within 3e-4 of 1/H(20, 1.1) (and
    the mean total within 2e-4 of 200); 2e-3 is about 7 standard deviations."""
    mt = synthetic_multi(20, 2.0, seed=0, total_rps=200.0, appear_fraction=0.0)
    share = mt.counts.sum(axis=1) / mt.requests
    assert share[0] == pytest.approx(zipf_weights(20, 1.1)[0], rel=0.002)
    assert np.all(np.diff(share[:5]) < 0)  # the head is ordered by rank
    assert mt.requests / mt.seconds == pytest.approx(200.0, rel=0.002)


def test_synthetic_appearing_and_disappearing_models() -> None:
    mt = synthetic_multi(20, 0.5, seed=2, appear_fraction=0.25, total_rps=400.0)
    tenth = mt.seconds // 10
    late = [leading_zeros(r) for r in mt.counts]
    early = [leading_zeros(r[::-1]) for r in mt.counts]
    appear = [i for i, z in enumerate(late) if z >= tenth]
    vanish = [i for i, z in enumerate(early) if z >= tenth]
    assert len(appear) == 3 and len(vanish) == 2 and not set(appear) & set(vanish)
    for i in appear:
        assert mt.counts[i, late[i] :].sum() > 0
    # the total still averages total_rps although five models are idle part of the time
    assert mt.requests / mt.seconds == pytest.approx(400.0, rel=0.01)


def test_synthetic_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="n_models=0"):
        synthetic_multi(0)
    with pytest.raises(ValueError, match="appear_fraction=1.5"):
        synthetic_multi(appear_fraction=1.5)
    with pytest.raises(ValueError, match="cells"):
        synthetic_multi(MAX_CELLS, 1.0)


# --------------------------------------------------------------------------------------------
# compose_real
# --------------------------------------------------------------------------------------------


def test_compose_tiles_a_short_trace_and_follows_zipf(tmp_path: Path) -> None:
    path = write(tmp_path / "short.per-second.txt", " ".join(["100"] * 50))
    req = write(tmp_path / "chat.requests.csv", "timestamp_s,n\n" + "0.1,1\n" * 400 + "9.5,1\n")
    mt = compose_real([path, req], 6, seconds=2000, seed=1, total_rps=60.0)
    assert mt.seconds == 2000 and len(mt.models) == 6
    assert [m.split("@")[0] for m in mt.models] == [
        "short-00", "chat-01", "short-02", "chat-03", "short-04", "chat-05",
    ]  # fmt: skip
    offsets = [int(m.split("@")[1].rstrip("s")) for m in mt.models]
    assert len(set(offsets[0::2])) == 3 and len(set(offsets[1::2])) == 3
    rates = mt.counts.sum(axis=1) / mt.seconds
    assert np.allclose(rates, 60.0 * zipf_weights(6, 1.1), rtol=0.05)
    again = compose_real([path, req], 6, seconds=2000, seed=1, total_rps=60.0)
    assert np.array_equal(again.counts, mt.counts) and again.models == mt.models


def test_compose_default_total_is_the_zipf_weighted_natural_rate(tmp_path: Path) -> None:
    path = write(tmp_path / "flat.txt", " ".join(["40"] * 1000))
    mt = compose_real([path], 4, seconds=500, seed=0)
    assert mt.requests / mt.seconds == pytest.approx(40.0, rel=0.02)


def test_compose_errors(tmp_path: Path) -> None:
    zeros = write(tmp_path / "z.txt", "0 0 0 5")
    with pytest.raises(ValueError, match="has no requests"):
        compose_real([zeros], 3, seconds=1, seed=0)
    with pytest.raises(ValueError, match="paths is empty"):
        compose_real([], 3, seconds=10)
    with pytest.raises(TraceError, match="file not found"):
        compose_real([tmp_path / "missing.txt"], 3, seconds=10)


def test_compose_real_twitter(twitter_trace_path: Path) -> None:
    mt = compose_real([twitter_trace_path], 10, seconds=3_600, seed=0, total_rps=200.0)
    assert mt.seconds == 3_600 and mt.models[0].startswith("twitter-00@")
    assert len({m.split("@")[1] for m in mt.models}) == 10  # ten different stretches
    top = mt.model(mt.models[0])
    assert top.requests / top.seconds == pytest.approx(200 * zipf_weights(10, 1.1)[0], rel=0.05)
    assert mt.requests / mt.seconds == pytest.approx(200.0, rel=0.05)
