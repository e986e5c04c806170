"""benchmarks/fidelity.py's pure parts: window picking and scaling, the live bill from a serve
log's instance events and the emulator's billed duration (through hybridserve.pricing), the
row and its JSON schema, the simulated side; and what the live side relies on (the control
loop's cadence, the backend's logged instance events)."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

from hybridserve.pricing import ec2_billed_s, lambda_gb_s
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import fidelity as F  # noqa: E402

ROW_KEYS = {
    "trace",
    "seconds",
    "requests",
    "live_cost_usd",
    "sim_cost_usd",
    "cost_rel_err",
    "live_attainment",
    "sim_attainment",
    "attainment_diff_pp",
    "live_spill",
    "sim_spill",
    "spill_diff_pp",
}


# ------------------------------------------------------------------------------ windows


def _flat(minutes: int, per_s: int = 10) -> np.ndarray:
    return np.full(minutes * 60, per_s, dtype=np.int64)


def test_ramp_is_the_steady_climb_not_the_step():
    c = _flat(60)
    c[600:1200] = np.repeat(np.linspace(10, 20, 10).astype(int), 60)  # minutes 10-19: a climb
    c[2400:] = 40  # minute 40 on: a step, larger but not a ramp
    start = F.pick_window(c, "ramp", 600, gaps=True)
    assert start == 600


def test_surge_starts_a_fifth_of_the_window_before_the_onset():
    c = _flat(60)
    c[30 * 60 : 37 * 60] = 60  # a 6x surge from minute 30
    assert F.pick_window(c, "surge", 15 * 60, gaps=True) == (30 - 3) * 60
    assert F.pick_window(c, "surge", 5 * 60, gaps=True) == (30 - 1) * 60


def test_bursty_is_bursts_within_minutes_and_gaps_are_avoided():
    rng = np.random.default_rng(0)
    c = rng.poisson(10, 60 * 60)
    for m in range(20, 25):  # bursty minutes: all of a minute's load in one 10 s bin
        c[m * 60 : m * 60 + 60] = 0
        c[m * 60 + 20 : m * 60 + 30] = 60
    start = F.pick_window(c, "bursty", 300, gaps=False)
    assert start == 20 * 60
    # as a capture gap (twitter), the zero seconds rule those minutes out
    assert not 16 * 60 <= F.pick_window(c, "bursty", 300, gaps=True) <= 24 * 60


def test_pick_window_errors():
    with pytest.raises(ValueError, match="whole minutes"):
        F.pick_window(_flat(10), "ramp", 90)
    with pytest.raises(ValueError, match="shorter than the window"):
        F.pick_window(_flat(2), "ramp", 600)
    with pytest.raises(ValueError, match="unknown window kind"):
        F.pick_window(_flat(10), "calm", 120)
    with pytest.raises(ValueError, match="qualifies"):
        F.pick_window(np.zeros(600, dtype=np.int64), "bursty", 120)


def test_scaling_puts_the_busiest_10_s_at_the_fraction_of_capacity():
    c = np.arange(100, dtype=np.int64) % 20  # busiest 10 s: 10..19, mean 14.5/s
    assert F.peak_rate(c) == pytest.approx(14.5)
    f = F.scale_factor(c, capacity_rps=58.0, fraction=0.5)
    assert f == pytest.approx(2.0)
    w = F.window_counts(c, 0, 100, f, seed=1)
    assert np.array_equal(w, 2 * c)  # a whole factor copies exactly
    thinned = F.window_counts(np.full(10_000, 10), 0, 10_000, 0.3, seed=1)
    assert thinned.mean() == pytest.approx(3.0, rel=0.02)  # binomial thinning keeps the mean
    assert np.array_equal(thinned, F.window_counts(np.full(10_000, 10), 0, 10_000, 0.3, seed=1))
    with pytest.raises(ValueError, match="no requests"):
        F.scale_factor(np.zeros(20), 10.0, 0.5)


def test_window_file_is_what_bench_replays(tmp_path):
    from hybridserve.cli.bench import _schedule

    counts = np.array([3, 0, 2, 5], dtype=np.int64)
    path = tmp_path / "w.txt"
    F.write_counts(path, counts)
    kw = {"trace_format": "counts", "timestamp_column": "TIMESTAMP", "rate_scale": 1.0}
    schedule, length = _schedule(None, str(path), None, 0, {**kw, "start": "0"})
    assert length == 4.0
    assert np.array_equal(np.bincount(np.floor(schedule).astype(int), minlength=4), counts)


@pytest.mark.parametrize("w", F.WINDOWS, ids=lambda w: w.name)
def test_real_windows_are_picked_and_scaled(w):
    if not w.path.exists():
        pytest.skip(f"real trace not present: {w.path}")
    counts = F.source_counts(w)
    start = F.pick_window(counts, w.kind, 900, gaps=w.gaps)
    raw = counts[start : start + 900]
    _, win = F.scaled_window(counts, start, 900, 45.0, 0.35, seed=0)
    assert start % 60 == 0 and len(win) == 900
    assert F.peak_rate(win) == pytest.approx(0.35 * 45.0, rel=0.1)
    if w.gaps:
        assert (raw > 0).all()


# ------------------------------------------------------------------------------ live bill


def _ev(ts: float, kind: str, iid: str, **kw) -> dict:
    return {"ts": ts, "event": "backend.instance", "kind": kind, "instance": iid,
            "pool": "c5.large/on_demand", **kw}  # fmt: skip


def test_instance_lives_from_the_serve_log():
    log = [
        {"ts": 995.0, "event": "controller.step"},
        _ev(1005.0, "launch", "local-0"),
        _ev(1012.2, "ready", "local-0", start_s=2.2),
        _ev(1100.0, "retire", "local-0", ends_s=2.0),  # drains 2 s
        _ev(1200.0, "launch", "local-1"),
        _ev(1203.0, "retire", "local-1", ends_s=0.0),  # retired before it was ready
        _ev(1850.0, "launch", "local-2"),
        _ev(1857.0, "ready", "local-2", start_s=2.0),  # still running at the end
        _ev(900.0, "launch", "local-9"),
        _ev(950.0, "lost", "local-9", ends_s=0.0),  # before the window
    ]
    lives = F.instance_lives(log, t0=1000.0, t1=1900.0)
    assert [x["instance"] for x in lives] == ["local-0", "local-1", "local-2"]
    assert [round(x["ran_s"], 6) for x in lives] == [97.0, 3.0, 50.0]
    assert lives[0]["start_s"] == 2.2 and lives[1]["ready"] is None
    price = 0.085 / 3600
    usd, billed = F.ec2_usd(lives, {"c5.large/on_demand": price})
    assert billed == pytest.approx(97.0 + 60.0 + 60.0)  # a minute's minimum each
    assert usd == pytest.approx(sum(ec2_billed_s(x) for x in (97.0, 3.0, 50.0)) * price)


def test_lambda_bill_from_the_emulators_billed_duration():
    req, compute = F.lambda_usd(1774, 164_952.0, 2048, 0.0000166667, 0.0000002)
    assert req == pytest.approx(1774 * 0.0000002)
    assert compute == pytest.approx(lambda_gb_s(2048, 164_952.0) * 0.0000166667)
    assert compute == pytest.approx(2.0 * 164.952 * 0.0000166667)


def test_metric_values_read_the_exposition():
    text = (
        "# HELP x\nhybridserve_router_spills_total 12.0\n"
        'hybridserve_router_responses_total{code="200",path="fleet"} 3.0\n'
        'hybridserve_router_responses_total{code="200",path="lambda"} 4.0\n'
    )
    assert F.metric_total(text, "hybridserve_router_spills_total") == 12.0
    assert F.metric_total(text, "hybridserve_router_responses_total") == 7.0
    assert F.metric_total(text, "hybridserve_router_arrivals_total") == 0.0


def test_row_schema_and_targets():
    live = {"requests": 1000, "cost_usd": 0.0100, "attainment": 0.995, "spill": 0.20,
            "cold_starts": 3}  # fmt: skip
    sim = {"cost_usd": 0.0101, "attainment": 0.998, "spill": 0.205, "cold_starts": 2}
    row = F.compare("twitter-ramp", 900, live, sim)
    assert set(row) >= ROW_KEYS
    assert row["cost_rel_err"] == pytest.approx(0.01)
    assert row["attainment_diff_pp"] == pytest.approx(0.3)
    assert row["spill_diff_pp"] == pytest.approx(0.5)
    assert F.judge(row) == {"cost": True, "attainment": True, "spill": True}
    worse = F.compare("x", 900, live, {**sim, "cost_usd": 0.0103, "spill": 0.22})
    assert F.judge(worse) == {"cost": False, "attainment": True, "spill": False}
    json.dumps(row)  # plain JSON


def test_lambda_time_scale_from_the_emulators_billed_duration():
    cfg, profile = _scenario()
    sc = F.sim_scenario(cfg, profile, cold_start_s=0.5)
    # profile bills 40 ms (batch 1) and 77 ms (batch 2); 100 invokes of 160 rows: 40 + 60
    live = {"invocations": 100, "lambda_rows": 160, "cold_starts": 1, "init_s_mean": 0.5,
            "billed_ms": 1.1 * (40 * 40 + 60 * 77) + 500.0}  # fmt: skip
    assert F.lambda_time_scale(live, sc) == pytest.approx(1.1)
    assert F.lambda_time_scale({**live, "invocations": 0}, sc) is None


def test_fleet_speed_weights_instances_by_their_readings():
    assert F.fleet_speed({}) == 1.0
    c = {"local-0": {"mean": 1.2, "readings": 30}, "local-1": {"mean": 1.0, "readings": 10}}
    assert F.fleet_speed(c) == pytest.approx(1.15)


# ------------------------------------------------------------------------------ sim side


def _scenario():
    import argparse

    import yaml

    args = argparse.Namespace(slo_ms=300.0, interval_s=5, launch_delay_s=5.0, keep_alive_s=60.0,
                              memory_mb=2048)  # fmt: skip
    profile = {"name": "m", "provenance": "test", "reference": {
        "vcpus": 1, "threads": 1, "batch_ms": {1: 40.0, 2: 77.0, 4: 150.0, 8: 305.0}}}  # fmt: skip
    cfg = F.serve_config(args, "p.yaml", {"max_instances": 1, "lambda_environments": 1}, "logs")
    assert yaml.safe_dump(cfg)  # the serve config is plain YAML
    return cfg, profile


def test_sim_scenario_takes_the_measured_cold_start_and_lambda_speed():
    cfg, profile = _scenario()
    from hybridserve.config import lambda_cold_start_s, lambda_service_s

    sc = F.sim_scenario(cfg, profile, cold_start_s=0.45, lambda_time_scale=1.1)
    assert sc.pools[0].launch_delay_s == 5.0  # what the live controller planned with
    assert lambda_cold_start_s(sc) == 0.45
    assert lambda_service_s(sc, 1) == pytest.approx((40.0 * 1.1 + 8.0) / 1000.0)
    assert sc.pools[0].latency_s == pytest.approx(0.150)  # the instances keep the profile
    assert sc.lambda_.concurrency_limit == 1 and sc.lambda_.keep_alive_s == 60.0
    assert sc.control_interval_s == 5 and sc.planner.max_instances == 1
    assert cfg["instances"]["launch_delay_s"] == 5.0  # the live config is left as it was


def test_run_sim_bills_batches_and_runs_the_per_request_mode():
    cfg, profile = _scenario()
    sc = F.sim_scenario(cfg, profile, cold_start_s=0.5)
    counts = np.concatenate([np.full(60, 4), np.full(120, 20), np.full(60, 4)])
    r = F.run_sim(counts, sc, "hybrid", steps_before=1, launch_delay_s=7.0)
    assert r["requests"] == int(counts.sum())
    assert 0 < r["spill"] <= 1 and 0 < r["attainment"] <= 1
    assert r["lambda_invokes"] < r["lambda_served"]  # the buffer batches
    assert r["cost_usd"] == pytest.approx(
        r["cost"]["ec2"] + r["cost"]["lambda_requests"] + r["cost"]["lambda_compute"]
    )
    # each batch the buffer sends and each keep-warm ping is one billed request
    assert r["cost"]["lambda_requests"] == pytest.approx(
        (r["lambda_invokes"] + r["warm_pings"]) * sc.lambda_pricing.usd_per_request, rel=1e-3
    )
    assert r["instances"] and all(i["launch"] >= 0 for i in r["instances"])
    assert all(i["ready"] - i["launch"] == pytest.approx(7.0) for i in r["instances"])
    slow = F.run_sim(counts, sc, "hybrid", 1, launch_delay_s=7.0, fleet_slowdown=1.3, des=False)
    assert slow["des"] is None and slow["spill"] > r["spill"]
    assert abs(r["des"]["attainment"] - r["attainment"]) < 0.05
    assert abs(r["des"]["spill"] - r["spill"]) < 0.05


def test_what_the_run_measured_moves_the_data_plane_not_the_plan():
    cfg, profile = _scenario()
    plan = F.sim_scenario(cfg, profile, cold_start_s=0.5)
    slow = F.sim_scenario(cfg, profile, cold_start_s=0.5, lambda_time_scale=1.6)
    counts = np.concatenate([np.full(60, 4), np.full(120, 16), np.full(60, 4)])
    a = F.run_sim(counts, plan, "hybrid", 1, launch_delay_s=6.0, des=False)
    b = F.run_sim(counts, slow, "hybrid", 1, launch_delay_s=6.0, des=False, plan_sc=plan)
    assert a["instances"] == b["instances"]  # the same decisions
    assert b["cost"]["lambda_compute"] > a["cost"]["lambda_compute"]  # a slower function


# ------------------------------------------------------------------------------ live side


def test_control_steps_fall_on_interval_boundaries_and_never_drift():
    from hybridserve.live import STEP_AFTER_S, next_step_at

    dt = 5
    assert next_step_at(100.0, dt) == 100.0 + STEP_AFTER_S
    assert next_step_at(100.0 + STEP_AFTER_S, dt) == 105.0 + STEP_AFTER_S
    assert next_step_at(104.9, dt) == 105.0 + STEP_AFTER_S
    t, steps = 1000.37, []
    for _ in range(200):  # each step takes 40 ms: the boundaries stay where they are
        t = next_step_at(t, dt)
        steps.append(t)
        t += 0.04
    assert np.allclose(np.diff(steps), dt)
    assert all(round(s - STEP_AFTER_S) % dt == 0 for s in steps)


def test_local_backend_logs_each_instance_event(tmp_path, caplog):
    from hybridserve.backends.local import LocalBackend
    from hybridserve.config import load_scenario

    (tmp_path / "manifest.json").write_text("{}")
    pool = load_scenario(None, instance_types=["c5.large"]).pools[0]
    caplog.set_level(logging.INFO, logger="hybridserve.backends.local")
    with LocalBackend(tmp_path, [pool], launch_delay_s=60.0) as b:
        b.converge({pool.key: 1})
        b.converge({pool.key: 0})  # retired before its process started: no drain
        events = b.events()
    got = [r.fields for r in caplog.records if getattr(r, "event", None) == "backend.instance"]
    assert [(f["kind"], f["instance"]) for f in got] == [("launch", "local-0"),
                                                         ("retire", "local-0")]  # fmt: skip
    assert got[1]["ends_s"] == 0.0
    assert [k for _, k, _, _ in events] == ["launch", "retire"]
