"""Explained cost: causes that sum to the bill, each cause answering its own scenario, the
`simulate --explain` CLI, and the live meter behind `serve`'s cost-by-cause counter."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from hybridserve.attribution import (
    CAUSES,
    EC2_CAUSES,
    SPILL_CAUSES,
    Lifetime,
    LiveCostMeter,
    instance_seconds,
    lifetimes_from_events,
    serving_span,
    split_shortfall,
)
from hybridserve.backends.simulated import SimInstance
from hybridserve.config import load_scenario
from hybridserve.pricing import ec2_billed_s
from simulations import dataplane
from simulations.explain import ec2_by_interval, explain, keep_until_replaced, spill_by_interval
from simulations.replay import run_policy
from simulations.synthetic import synthetic_trace

SC = load_scenario()
POOLS = {p.key: p for p in SC.pools}
POOL = SC.pools[0]  # c5.large on demand, ~98 req/s
CAP = POOL.capacity_rps
REL = 1e-9


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b), 1e-12)


# --------------------------------------------------------------------------- EC2 split


def test_instance_seconds_sum_to_the_ec2_bill_and_match_the_data_plane_span():
    cases = [
        (0.0, 0.0, None, None, 600.0),  # warm start, runs to the end
        (30.0, 120.0, 150.5, "retired", 600.0),  # fractional end: an idle tail
        (100.0, 190.0, 130.0, "retired", 600.0),  # retired while booting, under a minute
        (590.0, 680.0, None, None, 600.0),  # launched just before the end: minimum bill
        (10.3, 100.3, 400.7, "spot-interruption", 600.0),  # interrupted in its first hour: free
    ]
    for launched, ready, ended, why, end in cases:
        s = instance_seconds(launched, ready, ended, why, end)
        stop = end if ended is None else min(ended, end)
        billed = 0.0 if why == "spot-interruption" else ec2_billed_s(stop - launched)
        assert s.billed == billed
        parts = s.launch_s + s.serving_s + s.tail_s + s.minimum_s
        assert parts == pytest.approx(billed, abs=1e-6)
        inst = SimInstance(0, POOL.key, launched, ready, ended)
        assert serving_span(ready, ended) == dataplane.serving_span(inst)
    assert instance_seconds(100.0, 190.0, 130.0, "retired", 600.0).minimum_s == 30.0
    assert instance_seconds(590.0, 680.0, None, None, 600.0).minimum_s == 50.0


def test_ec2_causes_sum_to_the_bill_per_instance_mix():
    T = 1800
    counts = np.full(T, 0.6 * CAP)
    insts = [
        SimInstance(0, POOL.key, 0.0, 0.0),
        SimInstance(1, POOL.key, 300.0, 390.0, 1000.5, end_reason="retired"),
        SimInstance(2, POOL.key, 1200.0, 1290.0, 1230.0, end_reason="retired"),
        SimInstance(3, POOL.key, 1790.0, 1880.0),
    ]
    usd = ec2_by_interval(counts, insts, POOLS, 60)
    bill, _ = dataplane.ec2_bill(insts, POOLS, float(T))
    assert _close(sum(float(v.sum()) for v in usd.values()), sum(bill.values()))
    assert all((v >= -1e-15).all() for v in usd.values())
    p = POOL.price_usd_s
    assert _close(float(usd["launch_overhead"].sum()), p * (90 + 30 + 10))
    assert _close(float(usd["minimum_bill"].sum()), p * (30 + 50))
    # one instance alone at 60% load: 60% of its serving seconds are base
    assert usd["base_fleet"][0] == pytest.approx(0.6 * 60 * p)
    assert usd["over_provisioning"][0] == pytest.approx(0.4 * 60 * p)


# --------------------------------------------------------------------------- spill causes


def _spill(counts, insts, forecast):
    n = -(-len(counts) // SC.control_interval_s)
    usd, req = spill_by_interval(counts, insts, POOLS, SC, np.full(n, forecast))
    return {c: float(v.sum()) for c, v in req.items()}, usd


def _lambda_total(counts, insts) -> float:
    tot = dataplane.replay(counts, insts, POOLS, SC, spill=True)
    return sum(dataplane.lambda_bill(tot.lambda_served, tot.cold_starts, SC))


def test_bursts_inside_flat_intervals_are_within_interval_burst():
    counts = np.full(1200, 0.5 * CAP)
    counts[::10] = 3.0 * CAP  # mean 0.75 capacity, every tenth second 3x
    insts = [SimInstance(0, POOL.key, 0.0, 0.0)]
    req, usd = _spill(counts, insts, 0.75 * CAP)
    assert req["spill_burst"] > 0
    assert req["spill_forecast_miss"] == req["spill_planned"] == 0
    assert req["spill_launch_lag"] == req["spill_spot_loss"] == 0
    assert _close(sum(float(v.sum()) for v in usd.values()), _lambda_total(counts, insts))


def test_a_step_in_load_is_launch_lag_when_an_instance_boots_and_a_miss_when_none_came():
    counts = np.concatenate([np.full(600, 0.5 * CAP), np.full(600, 1.6 * CAP)])
    a = SimInstance(0, POOL.key, 0.0, 0.0)
    b = SimInstance(1, POOL.key, 600.0, 690.0)
    req, usd = _spill(counts, [a, b], 0.5 * CAP)
    assert req["spill_launch_lag"] > 0 and req["spill_spot_loss"] == 0
    assert _close(sum(float(v.sum()) for v in usd.values()), _lambda_total(counts, [a, b]))
    req, _ = _spill(counts, [a], 0.5 * CAP)  # nobody launched: the forecast missed the step
    assert req["spill_forecast_miss"] > 0 and req["spill_launch_lag"] == 0
    assert req["spill_forecast_miss"] > 10 * req["spill_planned"]
    req, _ = _spill(counts, [a], 1.6 * CAP)  # foreseen, and left to Lambda: planned
    assert req["spill_planned"] > 0 and req["spill_forecast_miss"] < 0.1 * req["spill_planned"]


def test_a_spot_loss_until_the_replacement_is_ready_is_spot_loss():
    counts = np.full(1200, 1.6 * CAP)
    a = SimInstance(0, POOL.key, 0.0, 0.0)
    lost = SimInstance(1, POOL.key, 0.0, 0.0, 500.0, notice_at=500.0)
    lost.end_reason = "spot-interruption"
    repl = SimInstance(2, POOL.key, 500.0, 590.0)
    req, usd = _spill(counts, [a, lost, repl], 1.6 * CAP)
    assert req["spill_spot_loss"] > 0
    assert req["spill_launch_lag"] < 1e-6 * req["spill_spot_loss"]  # Poisson noise of the overlap
    assert _close(sum(float(v.sum()) for v in usd.values()), _lambda_total(counts, [a, lost, repl]))
    kept = keep_until_replaced([a, lost, repl], POOLS, 60)
    assert kept[1].ended_at == 590.0 and lost.ended_at == 500.0  # copies; the input is kept


def test_split_shortfall_shares_the_mean_shortfall_and_leaves_the_rest_to_burst():
    p, m, b = split_shortfall(100.0, 6000.0, 60.0, 80.0, 60.0)  # A 100/s, C 60, F 80
    assert (float(p), float(m), float(b)) == pytest.approx((100 * 20 / 40, 100 * 20 / 40, 0.0))
    p, m, b = split_shortfall(50.0, 3000.0, 60.0, np.nan, 60.0)  # below capacity: burst
    assert (float(p), float(m), float(b)) == (0.0, 0.0, 50.0)


# --------------------------------------------------------------------------- whole replays


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace(days=0.15, seed=2)


@pytest.mark.parametrize("policy", ["hybrid", "reactive", "lambda-only"])
def test_causes_reconcile_with_the_replay_bill(trace, policy):
    r = run_policy(trace, SC, policy)
    e = explain(trace.counts, SC, r)
    assert set(e.usd) == set(CAUSES)
    assert _close(e.total_usd, r.cost_usd)
    ec2 = r.cost_breakdown["ec2_on_demand"] + r.cost_breakdown["ec2_spot"]
    lam = r.cost_breakdown["lambda_requests"] + r.cost_breakdown["lambda_compute"]
    assert _close(sum(e.totals()[c] for c in EC2_CAUSES), ec2)
    assert _close(sum(e.totals()[c] for c in (*SPILL_CAUSES, "cold_starts", "keep_warm")), lam)
    per_interval = sum(e.usd[c] for c in CAUSES)
    assert len(per_interval) == math.ceil(trace.seconds / SC.control_interval_s)
    assert all((v >= -1e-12).all() for v in e.usd.values())
    if policy == "lambda-only":
        assert e.totals()["spill_planned"] > 0.99 * sum(e.totals()[c] for c in SPILL_CAUSES)
    if policy == "reactive":
        assert sum(e.totals()[c] for c in (*SPILL_CAUSES, "cold_starts", "keep_warm")) == 0


def test_spot_losses_show_up_only_with_spot(trace):
    spot = load_scenario(markets=["spot"], spot={"interruptions_per_hour": 3.0, "notice_s": 0})
    r = run_policy(trace, spot, "hybrid", forecaster="last-value")
    assert any(i.end_reason == "spot-interruption" for i in r.instances)
    e = explain(trace.counts, spot, r)
    assert e.totals()["spill_spot_loss"] > 0
    assert _close(e.total_usd, r.cost_usd)
    r = run_policy(trace, SC, "hybrid", forecaster="last-value")
    assert explain(trace.counts, SC, r).totals()["spill_spot_loss"] == 0


# --------------------------------------------------------------------------- CLI


def test_simulate_explain_json_csv_and_text(tmp_path):
    from hybridserve.cli import main

    out = tmp_path / "cost.csv"
    args = ["simulate", "--days", "0.1", "--policy", "hybrid", "--policy", "reactive"]
    args += ["--workers", "1", "--explain", "--json", "--explain-csv", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for r in doc["results"]:
        ex = r["explain"]
        assert set(ex["by_cause_usd"]) == set(CAUSES)
        assert ex["total_usd"] == pytest.approx(r["cost_usd"], abs=1e-3)
        assert sum(ex["share"].values()) == pytest.approx(1.0, abs=1e-4)
    cf = doc["counterfactuals"]
    assert cf["prices"]["date"] and cf["prices"]["source"]
    names = [a["name"] for a in cf["alternatives"]]
    assert names == [
        "ec2-target-tracking",
        "lambda-only",
        "sagemaker-realtime",
        "sagemaker-serverless",
    ]
    assert all(a["cost_usd"] > 0 and a["x_hybrid"] > 0 for a in cf["alternatives"])
    rows = list(csv.DictReader(out.open()))
    for r in doc["results"]:
        total = sum(float(x["total_usd"]) for x in rows if x["policy"] == r["policy"])
        assert total == pytest.approx(r["explain"]["total_usd"], abs=2e-6)
    text = CliRunner().invoke(main, [*args[:7], "--explain"])
    assert text.exit_code == 0, text.output
    assert "where the money went" in text.stdout and "counterfactuals" in text.stdout


def test_simulate_explain_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from hybridserve.cli import main

    png = tmp_path / "sim.png"
    args = ["simulate", "--days", "0.05", "--policy", "hybrid", "--workers", "1"]
    res = CliRunner().invoke(main, [*args, "--explain", "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sim-cost.png").stat().st_size > 10_000


# --------------------------------------------------------------------------- live meter


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_live_meter_attributes_ec2_and_spill_and_only_grows():
    clock = Clock(1000.0)
    lives = [
        Lifetime("a", POOL.key, 0.0, 0.0),
        Lifetime("b", POOL.key, 1000.0),  # booting from 1000
    ]
    meter = LiveCostMeter(
        {POOL.key: (POOL.price_usd_s, CAP)},
        60,
        lifetimes=lambda: lives,
        forecasts=lambda: [(900.0, 0.5 * CAP)],
        clock=clock,
    )
    seen = []
    for sec in range(960, 1140):
        clock.t = sec + 1.0
        lives[1].ready_at = 1090.0 if sec >= 1090 else math.inf
        spilled = 10 if 1000 <= sec < 1090 else 0  # spill while b boots
        meter.second(sec, [POOL.key], int(0.5 * CAP) if sec < 1000 else int(1.5 * CAP), spilled)
        if spilled:
            meter.lambda_invoke(1e-5, cold_usd=1e-6 if sec == 1000 else 0.0)
        seen.append(meter.totals())
    for before, after in zip(seen, seen[1:], strict=False):
        assert all(after[c] >= before[c] - 1e-15 for c in CAUSES)
    tot = seen[-1]
    assert tot["launch_overhead"] == pytest.approx(90 * POOL.price_usd_s)
    assert tot["base_fleet"] > 0 and tot["over_provisioning"] > 0
    assert tot["spill_launch_lag"] > 0 and tot["cold_starts"] == pytest.approx(1e-6)
    # the intervals closed so far (to 1080) hold 80 spilled seconds, all while b booted
    assert tot["spill_launch_lag"] == pytest.approx(80 * 1e-5 - 1e-6)


def test_lifetimes_from_backend_events():
    ev = [(1.0, "launch", "p", "i0"), (3.0, "ready", "p", "i0"), (9.0, "notice", "p", "i0"),
          (9.0, "launch", "p", "i1"), (10.0, "lost", "p", "i1")]  # fmt: skip
    a, b = lifetimes_from_events(ev, offset_s=100.0)
    assert (a.launched_at, a.ready_at, a.ended_at, a.end_reason) == (
        101.0, 103.0, 109.0, "spot-interruption",
    )  # fmt: skip
    assert (b.ready_at, b.ended_at, b.end_reason) == (math.inf, 110.0, "lost")


def test_router_exports_cost_by_cause():
    pytest.importorskip("prometheus_client")
    from hybridserve.router import Router, RouterConfig
    from tests.conftest import Scrape

    meter = LiveCostMeter({POOL.key: (POOL.price_usd_s, CAP)}, 60)
    router = Router(
        RouterConfig(model_name="m", slo_ms=300.0, batch_ms={1: 10.0}, lambda_ms=(0.0, 20.0)),
        lambda: [],
        None,
        cost_meter=meter,
    )
    meter.second(0, [POOL.key], int(CAP / 2), 0)
    router.tick(router._second + 3)
    m = Scrape(router.render_metrics())
    assert m.type("hybridserve_cost_usd") == "counter"
    base = POOL.price_usd_s * int(CAP / 2) / CAP
    assert m.value("hybridserve_cost_usd_total", cause="base_fleet") == pytest.approx(base)
    for c in CAUSES:
        assert m.value("hybridserve_cost_usd_total", cause=c) >= 0
