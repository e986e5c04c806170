"""Simulator behaviour: fast vs per-request agreement, policy sanity, backend mechanics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybridserve.backends import SimulatedBackend
from hybridserve.config import lambda_cold_start_s, lambda_usd_per_request, load_scenario
from hybridserve.policies import POLICIES
from simulations.bounds import cost_lower_bound
from simulations.des import simulate_requests
from simulations.replay import run_policy
from simulations.synthetic import synthetic_trace
from simulations.traces import Trace, load_trace

SC = load_scenario()
POOLS = {p.key: p for p in SC.pools}


def _agree(trace: Trace, policy: str) -> tuple[float, float, float, float]:
    r = run_policy(trace, SC, policy)
    d = simulate_requests(
        trace.counts,
        r.instances,
        POOLS,
        SC,
        spill=r.spill,
        seed=1,
        warm_rounds=r.warm_rounds,
    )
    return r.slo_attainment, d.slo_attainment, r.latency_p99_ms, d.percentile_ms(99)


def _check(att_fast: float, att_des: float, p99_fast: float, p99_des: float) -> None:
    assert abs(att_fast - att_des) <= 0.005, (att_fast, att_des)
    assert abs(p99_fast - p99_des) <= 0.10 * p99_des, (p99_fast, p99_des)


@pytest.mark.parametrize("policy", ["reactive", "lambda-only"])
def test_fast_mode_agrees_with_discrete_event_mode_on_synthetic(policy):
    trace = synthetic_trace(days=0.25, seed=3)
    _check(*_agree(trace, policy))


@pytest.mark.parametrize("policy", ["mark", "hybrid", "oracle"])
def test_near_saturation_attainment_agrees_on_synthetic(policy):
    att_fast, att_des, _, _ = _agree(synthetic_trace(days=0.25, seed=3), policy)
    assert abs(att_fast - att_des) <= 0.005, (att_fast, att_des)


@pytest.mark.xfail(
    strict=True,
    reason="known gap: with the measured profile (40.8 ms batches), a fleet run near saturation "
    "puts >1% of requests within a few ms of the SLO in the fluid model (p99 291.8 ms; 297.7 "
    "before the admitted requests at the queue cap were spread over one request's share of an "
    "instance) where the DES spreads them over 250-300 ms (p99 257.4 ms); spill and attainment "
    "agree",
)
@pytest.mark.parametrize("policy", ["mark", "hybrid", "oracle"])
def test_near_saturation_p99_agrees_on_synthetic(policy):
    _, _, p99_fast, p99_des = _agree(synthetic_trace(days=0.25, seed=3), policy)
    assert abs(p99_fast - p99_des) <= 0.10 * p99_des, (p99_fast, p99_des)


@pytest.mark.parametrize(
    ("start", "policies"),
    [
        ("3d", ["hybrid", "oracle"]),  # busy hours: fleet saturated, spill at work
        ("10d12h", ["reactive", "hybrid"]),  # normal load: Poisson queueing below capacity
    ],
)
def test_fast_mode_agrees_with_discrete_event_mode_on_twitter(twitter_trace_path, start, policies):
    trace = load_trace(twitter_trace_path, start=start, duration="2h")
    for policy in policies:
        _check(*_agree(trace, policy))


@pytest.fixture(scope="module")
def half_day():
    trace = synthetic_trace(days=0.5, seed=7)
    return trace, {p: run_policy(trace, SC, p) for p in POLICIES}


def test_no_policy_below_the_cost_floor(half_day):
    trace, res = half_day
    floor = cost_lower_bound(trace.counts, SC)
    assert floor > 0
    for r in res.values():
        assert r.cost_usd >= floor, r.policy


def test_static_peak_bill_is_fleet_times_duration(half_day):
    trace, res = half_day
    r = res["static-peak"]
    pool = min(
        (p for p in SC.pools if p.market == "on_demand"),
        key=lambda p: (p.usd_per_request, p.capacity_rps),
    )
    n = math.ceil(trace.peak / pool.capacity_rps)
    assert r.cost_usd == pytest.approx(n * pool.price_usd_s * trace.seconds, rel=1e-9)
    assert r.lambda_fraction == 0


def test_lambda_only_bill_is_requests_times_price_plus_init(half_day):
    trace, res = half_day
    r = res["lambda-only"]
    gb = SC.lambda_.memory_mb / 1024
    price = SC.lambda_pricing
    init_usd = gb * lambda_cold_start_s(SC) * price.usd_per_gb_s
    init = r.cold_starts * init_usd
    # keep-warm: each ping a request charge and its hold (whole ms), each container it started
    # its init
    ping = price.usd_per_request + gb * SC.lambda_.keep_warm.hold_ms / 1000 * price.usd_per_gb_s
    warm = r.warm_pings * ping + r.ping_cold_starts * init_usd
    assert r.warm_pings > 0 and r.keep_warm_usd == pytest.approx(warm, rel=1e-3)
    assert r.lambda_fraction == pytest.approx(1.0)
    assert r.cost_usd == pytest.approx(
        trace.requests * lambda_usd_per_request(SC) + init + warm, rel=1e-6
    )


def test_vm_only_policies_never_spill_and_spill_policies_meet_the_slo(half_day):
    _, res = half_day
    assert res["reactive"].lambda_fraction == 0
    for name in ("mark", "hybrid", "oracle", "lambda-only"):
        assert res[name].slo_attainment >= SC.slo.target, name


def test_oracle_is_cheapest_of_the_hybrids(half_day):
    _, res = half_day
    assert res["oracle"].cost_usd <= res["hybrid"].cost_usd * 1.001
    assert res["hybrid"].cost_usd < res["lambda-only"].cost_usd


def test_launch_delay_and_warm_start():
    pool = SC.pools[0]
    be = SimulatedBackend([pool], warm_start=True)
    be.converge({pool.key: 2})
    assert [i.ready_at for i in be.instances] == [0.0, 0.0]
    be.advance(60)
    be.converge({pool.key: 3})
    assert be.instances[-1].ready_at == 60 + pool.launch_delay_s
    view = be.observe()
    assert view.get(pool.key).ready == 2 and len(view.get(pool.key).pending_ready_in_s) == 1
    be.converge({pool.key: 1})  # retires the launching one first, then the newest ready one
    ended = [i for i in be.instances if i.ended_at is not None]
    assert len(ended) == 2 and be.instances[2] in ended


def test_spot_interruptions_remove_instances_and_the_controller_replaces_them():
    sc = load_scenario(markets=["spot"], spot={"interruptions_per_hour": 2.0})
    trace = Trace("flat", np.full(6 * 3600, 60, dtype=np.int64), "flat")
    r = run_policy(trace, sc, "hybrid")
    lost = [i for i in r.instances if i.end_reason == "spot-interruption"]
    assert lost, "a high interruption rate must interrupt something"
    assert all(i.ended_at - i.notice_at == pytest.approx(sc.spot.notice_s) for i in lost)
    assert len(r.instances) > len({i.pool for i in r.instances}) + len(lost) - 1
    assert r.cost_breakdown["ec2_spot"] > 0 and r.cost_breakdown["ec2_on_demand"] == 0
    assert r.slo_attainment >= sc.slo.target


def test_replay_is_deterministic():
    trace = synthetic_trace(days=0.2, seed=5)
    a = run_policy(trace, SC, "hybrid").as_json()
    b = run_policy(trace, SC, "hybrid").as_json()
    for timing in ("sim_wall_s", "training_s"):
        a.pop(timing)
        b.pop(timing)
    assert a == b
