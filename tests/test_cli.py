"""The `hybridserve simulate` command as a user runs it: a subprocess, stdout, stderr, exit code."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from hybridserve.policies import POLICIES

RESULT_KEYS = {
    "policy",
    "cost_usd",
    "warm_pings",
    "ping_cold_starts",
    "keep_warm_usd",
    "cost_lower_bound_usd",
    "cost_breakdown",
    "requests",
    "slo_attainment",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "lambda_fraction",
    "instance_hours",
    "cold_starts",
    "forecaster_fallbacks",
    "planner_fallbacks",
    "sim_wall_s",
    "training_s",
}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def default_json():
    p = run("simulate", "--days", "0.3", "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_json_schema(default_json):
    out = default_json
    assert set(out) == {"trace", "slo", "results", "optimum"}
    opt = out["optimum"]
    assert set(opt) == RESULT_KEYS | {"exact"} and opt["policy"] == "optimum"
    oracle = next(r for r in out["results"] if r["policy"] == "oracle")
    assert oracle["cost_lower_bound_usd"] <= opt["cost_usd"] <= oracle["cost_usd"] * 1.005
    assert set(out["trace"]) == {"name", "seconds", "requests"}
    assert set(out["slo"]) == {"latency_ms", "target"}
    assert [r["policy"] for r in out["results"]] == list(POLICIES)
    for r in out["results"]:
        assert set(r) == RESULT_KEYS
        assert set(r["cost_breakdown"]) == {
            "ec2_on_demand",
            "ec2_spot",
            "lambda_requests",
            "lambda_compute",
        }
        assert r["cost_usd"] == pytest.approx(sum(r["cost_breakdown"].values()), abs=1e-3)
        assert r["requests"] == out["trace"]["requests"]
        assert 0 <= r["slo_attainment"] <= 1 and 0 <= r["lambda_fraction"] <= 1
        assert (r["cost_lower_bound_usd"] is None) == (r["policy"] != "oracle")


def test_table_and_options(tmp_path):
    counts = tmp_path / "tiny.txt.gz"
    with gzip.open(counts, "wt") as f:
        f.write(" ".join(["50"] * 3600 + ["200"] * 600 + ["40"] * 3000))
    plot = tmp_path / "out.png"
    timeline = tmp_path / "tl.csv"
    p = run(
        "simulate", "--trace", str(counts), "--policy", "hybrid", "--policy", "oracle",
        "--slo-ms", "250", "--slo-target", "0.98", "--start", "10m", "--duration", "1h30m",
        "--plot", str(plot), "--timeline", str(timeline),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "hybrid" in p.stdout and "oracle" in p.stdout and "mark" not in p.stdout
    assert "5,400 s" in p.stdout and "98.0% within 250 ms" in p.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = timeline.read_text().splitlines()
    assert lines[0].startswith("policy,interval,start_s,arrivals")
    assert len(lines) == 1 + 2 * 90


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trace", "/nonexistent/trace.txt"], "/nonexistent/trace.txt"),
        (["--scenario", "/nonexistent/s.yaml"], "/nonexistent/s.yaml"),
        (["--slo-target", "1.5"], "slo.target"),
        (["--start", "soon"], "--start"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(args, needle):
    p = run("simulate", "--days", "0.05", *args)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert needle in p.stderr
    assert p.stdout == ""


def test_malformed_trace_names_the_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n4 x 6\n")
    p = run("simulate", "--trace", str(bad))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "bad.txt" in p.stderr and "line 2" in p.stderr


def test_bad_scenario_field_is_named(tmp_path):
    sc = tmp_path / "s.yaml"
    sc.write_text("slo:\n  latency_ms: 300\nlambda:\n  memory_mb: 64\n")
    p = run("simulate", "--days", "0.05", "--scenario", str(sc))
    assert p.returncode == 2
    assert "s.yaml" in p.stderr and "lambda.memory_mb" in p.stderr


def test_unknown_policy_is_a_usage_error():
    p = run("simulate", "--policy", "magic")
    assert p.returncode == 2 and "magic" in p.stderr


def test_example_scenario_runs_with_spot_and_arm_lambda():
    from tests.conftest import REPO

    p = run(
        "simulate",
        "--days",
        "0.2",
        "--scenario",
        str(REPO / "examples" / "scenario.yaml"),
        "--json",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["slo"] == {"latency_ms": 200.0, "target": 0.98}
    hybrid = next(r for r in out["results"] if r["policy"] == "hybrid")
    assert hybrid["cost_breakdown"]["ec2_spot"] > 0
    assert hybrid["slo_attainment"] >= 0.98


# Each bad input of the review, through the real command: one line naming the file and the line
# or field, exit code 2, no traceback, and no hang (the timeout fails the test instead).
BAD_INPUTS = {
    "count-near-int64-limit": (
        {"t.txt": "1 9223372036854775807 1\n"},
        ["--trace", "{t.txt}"],
        ["t.txt: line 1, token 2", "10,000,000"],
    ),
    "absurd-period-count": (
        {"p.csv": "period,count\n0,1\n60,4e15\n"},
        ["--trace", "{p.csv}"],
        ["p.csv: line 3", "per second"],
    ),
    "malformed-catalog-file": (
        {"s.yaml": "catalog: cat.yaml\n", "cat.yaml": "region: [us\n  x: :\n"},
        ["--scenario", "{s.yaml}"],
        ["s.yaml: field catalog", "cat.yaml: line 2"],
    ),
    "infinite-keep-alive": (
        {"s.yaml": "lambda:\n  keep_alive_s: .inf\n"},
        ["--scenario", "{s.yaml}"],
        ["s.yaml: field lambda.keep_alive_s", "finite"],
    ),
    "nan-batch-ms": (
        {"s.yaml": "model:\n  reference: {vcpus: 1, threads: 1, batch_ms: {1: .nan}}\n"},
        ["--scenario", "{s.yaml}"],
        ["s.yaml: field model.reference.batch_ms.1", "finite"],
    ),
    "infinite-price": (
        {"s.yaml": "catalog:\n  instances:\n    c5.large: {on_demand_usd_h: .inf}\n"},
        ["--scenario", "{s.yaml}"],
        ["field catalog.instances.c5.large.on_demand_usd_h", "finite"],
    ),
    "duplicate-yaml-key": (
        {"s.yaml": "slo:\n  latency_ms: 200\n  latency_ms: 300\n"},
        ["--scenario", "{s.yaml}"],
        ["s.yaml: line 3", "duplicate key 'latency_ms', first on line 2"],
    ),
    "rate-scale-overflow": (
        {"t.txt": "5 5\n"},
        ["--trace", "{t.txt}", "--rate-scale", "1e300"],
        ["rate scale 1e+300", "10,000,000"],
    ),
    "synthetic-days-too-long": ({}, ["--days", "1e6"], ["days=1000000.0"]),
    "negative-seed": ({}, ["--seed", "-1"], ["--seed"]),
    "zero-workers": ({}, ["--workers", "0"], ["--workers"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
def test_bad_input_is_one_line_naming_where(tmp_path, case):
    files, args, needles = BAD_INPUTS[case]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    argv = list(args)
    for name in files:
        argv = [a.replace(f"{{{name}}}", str(tmp_path / name)) for a in argv]
    p = subprocess.run(
        [sys.executable, "-m", "hybridserve.cli", "simulate", *argv, "--policy", "static-peak"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    for needle in needles:
        assert needle in p.stderr
