"""`hybridserve sweep`: the grid, one cell per replay, the pool and Ray giving the same numbers,
the tidy table's CSV/Parquet/JSON forms, and failures that name themselves or stay in their row."""

from __future__ import annotations

import json
import math
import sys
import types

import pandas as pd
import pytest
from click.testing import CliRunner

from hybridserve.cli import main
from hybridserve.policies import POLICIES
from simulations.sweep import (
    COLUMNS,
    RESULT_COLUMNS,
    SYNTHETIC,
    Cell,
    TraceOptions,
    expand_grid,
    run_pool,
    run_sweep,
    synthetic_days,
    to_frame,
    write_table,
)
from simulations.sweep_plot import pareto_front

TINY = "synthetic:0.05"  # 72 minutes of the embedded trace: a replay takes tens of milliseconds
TWO = ("lambda-only", "oracle")


@pytest.fixture(scope="module")
def pool_rows() -> list[dict]:
    return run_sweep(expand_grid([TINY], TWO, seed=1), workers=2)


def test_grid_is_every_combination_in_a_stable_order():
    cells = expand_grid(
        ["a.txt", "b.txt", "a.txt"], ["oracle", "reactive"], [200.0, 300.0], [], [1.0, 2.0], []
    )
    assert len(cells) == 2 * 2 * 2 * 2  # the repeated trace counts once
    assert [c.policy for c in cells[:2]] == ["oracle", "reactive"]  # policy innermost
    assert {c.trace for c in cells[:8]} == {"a.txt"}  # trace outermost
    assert {(c.slo_target, c.scenario) for c in cells} == {(None, None)}  # the scenario's
    assert cells[0] == Cell("a.txt", "oracle", 200.0, None, 1.0, None, 0, None, TraceOptions())


def test_empty_axes_take_their_defaults():
    cells = expand_grid(seed=7)
    assert [c.policy for c in cells] == list(POLICIES)
    assert {(c.trace, c.rate_scale, c.slo_ms, c.seed) for c in cells} == {(SYNTHETIC, 1.0, None, 7)}


def test_grid_rejects_an_unknown_policy_by_name():
    with pytest.raises(ValueError, match="unknown policy 'magic'"):
        expand_grid(policies=["magic"])


def test_synthetic_trace_names():
    assert synthetic_days("synthetic", 2.0) == 2.0
    assert synthetic_days("synthetic:0.25", 2.0) == 0.25
    assert synthetic_days("traces/synthetic.txt", 2.0) is None
    with pytest.raises(ValueError, match="synthetic:DAYS"):
        synthetic_days("synthetic:-1", 2.0)


def test_rows_carry_costs_and_the_oracle_ratio(pool_rows):
    lam, oracle = pool_rows
    assert (lam["policy"], oracle["policy"]) == TWO
    assert lam["error"] is None and oracle["error"] is None
    assert lam["seconds"] == 4320 and lam["requests"] == oracle["requests"] > 0
    parts = [c for c in COLUMNS if c.startswith("cost_") and c not in ("cost_usd",)]
    parts = [c for c in parts if c not in ("cost_lower_bound_usd", "cost_over_oracle")]
    assert math.isclose(sum(lam[c] for c in parts), lam["cost_usd"])
    assert lam["lambda_fraction"] == 1.0 and lam["cost_ec2_on_demand"] == 0.0
    assert oracle["cost_over_oracle"] == 1.0
    assert lam["cost_over_oracle"] == lam["cost_usd"] / oracle["cost_usd"]
    assert lam["cost_lower_bound_usd"] is None
    assert 0 < oracle["cost_lower_bound_usd"] <= oracle["cost_usd"]
    assert (oracle["slo_ms"], oracle["slo_target"]) == (300.0, 0.99)  # the scenario's, recorded


def test_pool_and_ray_give_the_same_numbers(pool_rows, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    seen: list[int] = []
    rows = run_sweep(
        expand_grid([TINY], TWO, seed=1),
        use_ray=True,
        workers=1,  # one task in flight at a time: the queue refills as tasks finish
        address="local",  # a new instance, never a cluster already running on the machine
        ray_init={"num_cpus": 2},
        on_row=lambda i, _: seen.append(i),
    )
    assert sorted(seen) == [0, 1]
    assert not ray.is_initialized()  # the local instance it started is shut down
    assert [{c: r[c] for c in RESULT_COLUMNS} for r in rows] == [
        {c: r[c] for c in RESULT_COLUMNS} for r in pool_rows
    ]


def test_csv_and_parquet_round_trip(pool_rows, tmp_path):
    csv, parquet = tmp_path / "s.csv", tmp_path / "s.parquet"
    write_table(pool_rows, str(csv), str(parquet))
    want = to_frame(pool_rows)
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), want)
    back = pd.read_csv(csv, dtype={"error": "string"})
    assert list(back.columns) == COLUMNS
    pd.testing.assert_frame_equal(back, want, check_dtype=False)


def test_a_failing_cell_is_recorded_and_the_rest_run(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 three\n")
    cells = expand_grid([TINY, str(bad)], ["lambda-only"])
    good_row, bad_row = run_pool(cells, workers=2)
    assert good_row["error"] is None and good_row["cost_usd"] > 0
    assert bad_row["error"].startswith("TraceError") and bad_row["cost_usd"] is None
    assert (bad_row["trace"], bad_row["policy"]) == (str(bad), "lambda-only")


def test_pareto_front_keeps_what_nothing_beats():
    pts = [(1.0, 0.90), (2.0, 0.99), (1.5, 0.80), (3.0, 0.99), (2.5, 0.999)]
    assert pareto_front(pts) == [0, 1, 4]
    assert pareto_front([]) == []


def _cli(*args: str):
    return CliRunner().invoke(main, ["sweep", *args])


def test_cli_json_and_out_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "out"
    r = _cli("--trace", TINY, "--policy", "lambda-only", "--policy", "oracle", "--rate-scale", "1")
    assert r.exit_code == 0, r.output
    assert "lambda-only" in r.stdout and "x oracle" in r.stdout
    r = _cli(
        "--trace", TINY, *("--policy", "oracle"), "--workers", "1", "--json", "--out", str(out)
    )
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)["rows"]
    assert list(row) == COLUMNS and row["policy"] == "oracle" and row["error"] is None
    assert "[1/1] oracle" in r.stderr
    assert {p.name for p in out.iterdir()} == {"sweep.csv", "sweep.parquet", "frontier.png"}
    assert pd.read_parquet(out / "sweep.parquet")["cost_usd"].tolist() == [row["cost_usd"]]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--rate-scale", "0"), "--rate-scale"),
        (("--slo-target", "1.5"), "--slo-target"),
        (("--policy", "magic"), "--policy"),
        (("--trace", "no-such-trace.txt"), "--trace no-such-trace.txt: no such file"),
        (("--trace", "synthetic:soon"), "--trace 'synthetic:soon'"),
        (("--scenario", "no-such.yaml"), "--scenario no-such.yaml"),
        (("--duration", "forever"), "--duration"),
    ],
)
def test_cli_bad_option_names_itself(args, named):
    r = _cli(*args)
    assert r.exit_code == 2
    assert named in r.output
    assert "Traceback" not in r.output


def test_cli_exits_nonzero_only_when_every_cell_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    bad = tmp_path / "bad.txt"
    bad.write_text("x\n")
    r = _cli("--trace", str(bad), "--trace", TINY, "--policy", "lambda-only", "--workers", "1")
    assert r.exit_code == 0, r.output
    assert "1 failed" in r.stderr and "TraceError" in r.stdout
    r = _cli("--trace", str(bad), "--policy", "lambda-only", "--json", "--workers", "1")
    assert r.exit_code == 1
    assert "all 1 cells failed" in r.stderr
    assert json.loads(r.stdout)["rows"][0]["error"].startswith("TraceError")


def test_cli_ray_without_ray_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    r = _cli("--trace", TINY, "--policy", "lambda-only", "--ray")
    assert r.exit_code == 2
    assert "hybridserve[ray]" in r.stderr


def test_cli_unreachable_ray_cluster_is_a_one_line_error(monkeypatch):
    def refuse(**kw):
        raise ConnectionError(f"Failed to connect to Ray cluster at {kw['address']}")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=refuse)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")  # selects Ray without --ray
    r = _cli("--trace", TINY, "--policy", "lambda-only")
    assert r.exit_code == 2
    assert "10.0.0.9:6379" in r.stderr and "check RAY_ADDRESS" in r.stderr
    assert "Traceback" not in r.output
