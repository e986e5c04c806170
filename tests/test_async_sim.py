"""The async-jobs replay (simulations/async_replay.py) runs the real async planner: bursts drain
and the workers go back to zero, the fleet takes backlogs with time to spare and Lambda short
deadlines, long jobs stay off Lambda, the bill adds up, and the loader and CLI fail in one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import simulations.async_replay as ar
from hybridserve.asyncjobs.plan import AsyncPolicy
from hybridserve.cli import main
from hybridserve.pricing import ec2_usd
from simulations.async_jobs import JobsTrace, read_jobs, synthetic_jobs
from simulations.trace_errors import TraceError

PARAMS = ar.default_params()


def burst(n: int, job_s: np.ndarray | None = None, spread_s: float = 10.0) -> JobsTrace:
    submit = np.linspace(0.0, spread_s, n)
    return JobsTrace("burst", submit, np.full(n, 1e6), job_s)


@pytest.fixture(scope="module")
def synthetic_rows() -> dict[str, ar.AsyncResult]:
    jobs = synthetic_jobs(n_bursts=3, jobs_per_burst=120, idle_s=1800, seed=3)
    return {r.policy: r for r in ar.compare_async(jobs, AsyncPolicy(), PARAMS)}


def test_bursts_drain_and_workers_go_to_zero(synthetic_rows) -> None:
    for r in synthetic_rows.values():
        assert r.completed == r.jobs == 360
        assert r.idle_workers_at_end == 0
        assert math.isfinite(r.drain_s) and r.drain_s > 0
    hybrid = synthetic_rows["hybrid"]
    assert hybrid.deadline_attainment == 1.0  # capacity allows: both kinds of worker
    assert 0 < hybrid.lambda_jobs < hybrid.jobs and hybrid.fleet_instance_s > 0
    assert synthetic_rows["lambda-only"].fleet_launches == 0
    assert synthetic_rows["fleet-only"].lambda_jobs == 0
    # 4 instances cannot do 120 x 20 s of work within 600 s of a burst: the plan's fallback
    assert synthetic_rows["fleet-only"].deadline_attainment < 1.0
    assert synthetic_rows["fleet-only"].fallbacks > 0


def test_the_hybrid_costs_less_than_lambda_only_and_always_on(synthetic_rows) -> None:
    hybrid = synthetic_rows["hybrid"]
    assert hybrid.cost_usd < synthetic_rows["lambda-only"].cost_usd
    assert hybrid.cost_usd < hybrid.always_on_cost_usd


def test_costs_add_up(synthetic_rows) -> None:
    for r in synthetic_rows.values():
        assert r.cost_usd == pytest.approx(r.fleet_usd + r.lambda_usd + r.requests_usd, rel=1e-12)
        assert r.cost_per_job_usd == pytest.approx(r.cost_usd / r.jobs)
        per_job = PARAMS.request_usd_submit + PARAMS.request_usd_worker
        assert r.requests_usd == pytest.approx(r.jobs * per_job)
        # every instance billed at least its minute
        assert r.fleet_usd >= r.fleet_launches * ec2_usd(0.0, PARAMS.fleet_usd_h / 3600) - 1e-12
        d = r.to_dict()
        assert d["cost_usd"] == pytest.approx(d["fleet_usd"] + d["lambda_usd"] + d["requests_usd"])


def test_a_backlog_with_time_to_spare_goes_to_the_fleet() -> None:
    # all queued at once (spread over seconds, the first job alone would be cheaper on Lambda)
    r = ar.replay_async(burst(60, spread_s=0), AsyncPolicy(deadline_s=3600, max_fleet=4), PARAMS)
    assert r.completed == 60 and r.deadline_attainment == 1.0
    assert r.lambda_jobs == 0 and r.fleet_launches > 0
    assert r.idle_workers_at_end == 0


def test_a_burst_with_a_short_deadline_goes_to_lambda() -> None:
    # 150 s: no time for an instance to boot (90 s) and do much; Lambda takes it all
    r = ar.replay_async(burst(60, spread_s=0), AsyncPolicy(deadline_s=150, max_fleet=4), PARAMS)
    assert r.completed == 60 and r.deadline_attainment == 1.0
    assert r.lambda_fraction > 0.5 and r.lambda_cold_starts > 0
    assert r.idle_workers_at_end == 0


def test_jobs_over_the_lambda_limit_never_run_on_lambda() -> None:
    # 700 s on the fleet is 1050 s on Lambda (30/20 of it): over the 900 s limit
    job_s = np.where(np.arange(40) % 4 == 0, 700.0, 10.0)
    jobs = burst(40, job_s)
    long = job_s > 600
    r = ar.replay_async(jobs, AsyncPolicy(deadline_s=900, max_fleet=4), PARAMS)
    assert r.completed == 40
    assert not r.on_lambda[long].any() and r.on_lambda[~long].any()
    only = ar.replay_async(jobs, AsyncPolicy(deadline_s=900, max_fleet=0), PARAMS)
    assert only.completed == int((~long).sum())  # the long ones wait for a fleet never allowed
    assert not only.on_lambda[long].any()
    assert only.deadline_attainment < 1.0 and math.isnan(only.drain_s)


def test_no_workers_allowed_ends_with_nothing_completed() -> None:
    r = ar.replay_async(burst(10), AsyncPolicy(max_fleet=0, max_lambda=0), PARAMS)
    assert r.completed == 0 and r.deadline_attainment == 0.0
    assert r.cost_usd == pytest.approx(10 * PARAMS.request_usd_submit)
    assert r.idle_workers_at_end == 0 and r.to_dict()["drain_s"] is None


def test_the_replay_calls_the_real_planner(monkeypatch) -> None:
    calls = []
    real = ar.plan

    def counted(v, p, policy):
        calls.append(v)
        return real(v, p, policy)

    monkeypatch.setattr(ar, "plan", counted)
    ar.replay_async(burst(5), AsyncPolicy(), PARAMS, control_interval_s=10)
    assert calls and calls[0].visible > 0 and calls[-1].visible == calls[-1].in_flight == 0


def test_synthetic_jobs_are_seeded_bursts() -> None:
    a, b = synthetic_jobs(4, 50, 600, seed=7), synthetic_jobs(4, 50, 600, seed=7)
    assert np.array_equal(a.submit_s, b.submit_s) and len(a) == 200
    assert np.all(np.diff(a.submit_s) >= 0) and a.submit_s[0] == 0
    assert np.diff(a.submit_s).max() >= 600  # the idle gaps
    assert a.payload_bytes.min() >= 1e3 and a.payload_bytes.max() <= 50e6
    assert not np.array_equal(a.submit_s, synthetic_jobs(4, 50, 600, seed=8).submit_s)


# ---- the CSV loader ----------------------------------------------------------------------


def test_read_jobs_reads_iso_and_seconds(tmp_path) -> None:
    p = tmp_path / "jobs.csv"
    p.write_text(
        "Timestamp,payload_bytes,job_s\n2026-01-01T00:00:10Z,2000,5\n2026-01-01T00:00:00Z,1000,4\n"
    )
    jobs = read_jobs(p)
    assert jobs.submit_s.tolist() == [0.0, 10.0]
    assert jobs.payload_bytes.tolist() == [1000, 2000] and jobs.job_s.tolist() == [4, 5]
    q = tmp_path / "secs.csv"
    q.write_text("timestamp,payload_bytes\n100.5,10\n101,20\n")
    assert read_jobs(q).submit_s.tolist() == [0.0, 0.5] and read_jobs(q).job_s is None


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("timestamp,payload_bytes\n1,10\n2,ten\n", 3, "payload_bytes"),
        ("timestamp,payload_bytes\n1,10\n2,-5\n", 3, "payload_bytes"),
        ("timestamp,payload_bytes\n1,10\nnoon,5\n", 3, "timestamp"),
        ("timestamp,payload_bytes,job_s\n1,10,0\n", 2, "job_s"),
        ("when,payload_bytes\n1,10\n", 1, "timestamp"),
        ("timestamp,payload_bytes\n1\n", 2, "payload_bytes"),
    ],
)
def test_read_jobs_errors_name_file_line_and_column(tmp_path, text, line, column) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(TraceError) as e:
        read_jobs(p)
    msg = str(e.value)
    assert str(p) in msg and f"line {line}" in msg and column in msg and "expected" in msg
    assert "\n" not in msg


# ---- the CLI -------------------------------------------------------------------------------


def test_cli_prints_json_rows(tmp_path) -> None:
    p = tmp_path / "jobs.csv"
    p.write_text("timestamp,payload_bytes\n" + "".join(f"{i},5000\n" for i in range(30)))
    r = CliRunner().invoke(main, ["simulate-async", "--jobs", str(p), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert [x["policy"] for x in rows] == ["hybrid", "fleet-only", "lambda-only"]
    keys = {
        "jobs", "completed", "deadline_attainment", "p50_completion_s", "p99_completion_s",
        "cost_usd", "cost_per_job_usd", "fleet_instance_s", "lambda_jobs", "lambda_fraction",
        "drain_s", "idle_workers_at_end", "always_on_cost_usd",
    }  # fmt: skip
    assert all(keys <= x.keys() for x in rows) and all(x["jobs"] == 30 for x in rows)


def test_cli_prints_a_table() -> None:
    r = CliRunner().invoke(main, ["simulate-async", "--synthetic", "--max-fleet", "2"])
    assert r.exit_code == 0, r.output
    assert "fleet-only" in r.output and "always-on $" in r.output


@pytest.mark.parametrize(
    "args",
    [
        ["--deadline-s", "0"],
        ["--max-fleet", "-1"],
        ["--job-s", "nan"],
        ["--synthetic", "--jobs", "x.csv"],
        ["--jobs", "no-such-file.csv"],
    ],
)
def test_cli_bad_options_and_files_are_one_line_errors(args) -> None:
    r = CliRunner().invoke(main, ["simulate-async", *args])
    assert r.exit_code == 2
    assert r.output.startswith("error: ") and r.output.count("\n") == 1
