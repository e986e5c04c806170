"""Bills (EC2 per second with a 60 s minimum, Lambda GB-s and requests) and the fluid data plane."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from hybridserve.backends.simulated import SimInstance
from hybridserve.config import Pool, lambda_service_s, lambda_usd_per_request, load_scenario
from simulations import dataplane
from simulations.dataplane import ec2_bill, lambda_bill
from simulations.queueing import clamp_scan

SMALL_OD = Pool(
    instance_type="c5.large",
    market="on_demand",
    price_usd_s=0.085 / 3600,
    capacity_rps=50,
    latency_s=0.1,
    batch=8,
    workers=1,
    launch_delay_s=90,
)
SMALL_SPOT = SMALL_OD.model_copy(update={"market": "spot", "price_usd_s": 0.034 / 3600})
BIG_OD = Pool(
    instance_type="c5.4xlarge",
    market="on_demand",
    price_usd_s=0.68 / 3600,
    capacity_rps=400,
    latency_s=0.1,
    batch=8,
    workers=8,
    launch_delay_s=90,
)
POOLS = {p.key: p for p in (SMALL_OD, SMALL_SPOT, BIG_OD)}


def inst(i: int, pool: Pool, launched: float, ended: float | None) -> SimInstance:
    return SimInstance(
        id=i, pool=pool.key, launched_at=launched, ready_at=launched + 90, ended_at=ended
    )


# --------------------------------------------------------------------------------------------
# EC2
# --------------------------------------------------------------------------------------------


def test_ec2_minimum_bill_60s() -> None:
    usd, hours = ec2_bill([inst(0, SMALL_OD, 0.0, 30.0)], POOLS, end_s=1000.0)
    assert usd["on_demand"] == pytest.approx(60 * 0.085 / 3600, rel=1e-12)
    assert usd["spot"] == 0.0
    assert hours == {"c5.large": pytest.approx(60 / 3600, rel=1e-12)}


def test_ec2_per_second_beyond_minimum() -> None:
    usd, hours = ec2_bill([inst(0, SMALL_OD, 0.0, 125.5)], POOLS, end_s=1000.0)
    assert usd["on_demand"] == pytest.approx(125.5 * 0.085 / 3600, rel=1e-12)
    assert hours["c5.large"] == pytest.approx(125.5 / 3600, rel=1e-12)


def test_ec2_running_instance_billed_until_end() -> None:
    usd, hours = ec2_bill([inst(0, SMALL_OD, 100.0, None)], POOLS, end_s=3700.0)
    assert usd["on_demand"] == pytest.approx(3600 * 0.085 / 3600, rel=1e-12)
    assert hours["c5.large"] == pytest.approx(1.0, rel=1e-12)


def test_ec2_ended_after_end_is_cut_at_end() -> None:
    usd, _ = ec2_bill([inst(0, SMALL_OD, 0.0, 5000.0)], POOLS, end_s=1800.0)
    assert usd["on_demand"] == pytest.approx(1800 * 0.085 / 3600, rel=1e-12)


def test_ec2_spot_on_demand_split_and_hours_per_type() -> None:
    instances = [
        inst(0, SMALL_OD, 0.0, 3600.0),  # 1 h on-demand c5.large
        inst(1, SMALL_SPOT, 0.0, 1800.0),  # 0.5 h spot c5.large
        inst(2, SMALL_SPOT, 600.0, 620.0),  # 20 s -> 60 s minimum, spot c5.large
        inst(3, BIG_OD, 0.0, None),  # running to end: 2 h on-demand c5.4xlarge
    ]
    usd, hours = ec2_bill(instances, POOLS, end_s=7200.0)
    od = 3600 * 0.085 / 3600 + 7200 * 0.68 / 3600  # 0.085 + 1.36
    spot = 1800 * 0.034 / 3600 + 60 * 0.034 / 3600  # 0.017 + 0.000566...
    assert usd["on_demand"] == pytest.approx(od, rel=1e-12)
    assert usd["spot"] == pytest.approx(spot, rel=1e-12)
    assert set(hours) == {"c5.large", "c5.4xlarge"}
    assert hours["c5.large"] == pytest.approx((3600 + 1800 + 60) / 3600, rel=1e-12)
    assert hours["c5.4xlarge"] == pytest.approx(2.0, rel=1e-12)


def test_ec2_no_instances() -> None:
    usd, hours = ec2_bill([], POOLS, end_s=100.0)
    assert usd == {"on_demand": 0.0, "spot": 0.0}
    assert hours == {}


# --------------------------------------------------------------------------------------------
# Lambda
# --------------------------------------------------------------------------------------------

X86_GB_S = 0.0000166667
REQ = 0.0000002


def test_default_lambda_service_time_by_hand() -> None:
    sc = load_scenario()
    # 2048 MB = 2048/1769 = 1.158 vCPU for a 2-thread worker: 11.65 ms x 2/1.158 + 8 ms overhead
    vcpus = 2048 / 1769
    ms = 11.65 * (2 / vcpus) + 8.0
    assert lambda_service_s(sc) == pytest.approx(ms / 1000.0, rel=1e-12)
    assert 28.1 < ms < 28.2  # billed as 29 ms


def test_lambda_bill_with_init() -> None:
    sc = load_scenario(**{"lambda": {"memory_mb": 2048, "bill_init": True}})
    served, cold = 1_000_000.0, 250.0
    requests, compute = lambda_bill(served, cold, sc)
    gb = 2048 / 1024  # 2 GB
    warm_per_req = gb * 29 / 1000 * X86_GB_S  # 28.13 ms billed as 29 ms
    init = cold * gb * 950 / 1000 * X86_GB_S  # cold start 0.95 s = 950 ms
    assert requests == pytest.approx(served * REQ, rel=1e-9)  # $0.20
    assert compute == pytest.approx(served * warm_per_req + init, rel=1e-9)
    assert compute == pytest.approx(1_000_000 * 2 * 0.029 * X86_GB_S + 250 * 2 * 0.95 * X86_GB_S)


def test_lambda_bill_without_init() -> None:
    sc = load_scenario(**{"lambda": {"memory_mb": 2048, "bill_init": False}})
    requests, compute = lambda_bill(1000.0, 999.0, sc)
    assert requests == pytest.approx(1000 * REQ, rel=1e-9)
    assert compute == pytest.approx(1000 * 2 * 29 / 1000 * X86_GB_S, rel=1e-9)


def test_lambda_bill_init_scales_with_memory_and_cold_start() -> None:
    sc = load_scenario(**{"lambda": {"memory_mb": 4096, "cold_start_s": 0.5, "bill_init": True}})
    # 4096 MB = 4 GB; 4096/1769 = 2.3 vCPU >= 2 threads: 11.65 ms + 8 ms = 19.65 -> 20 ms billed
    assert lambda_service_s(sc) == pytest.approx(0.01965, rel=1e-12)
    _, compute = lambda_bill(100.0, 10.0, sc)
    assert compute == pytest.approx(100 * 4 * 0.020 * X86_GB_S + 10 * 4 * 0.5 * X86_GB_S, rel=1e-9)


def test_lambda_bill_arm64_price() -> None:
    sc = load_scenario(**{"lambda": {"arch": "arm64", "bill_init": False}})
    requests, compute = lambda_bill(1000.0, 0.0, sc)
    assert requests == pytest.approx(1000 * REQ, rel=1e-9)
    # default warm service: 11.65 ms x (2 threads / 1.158 vCPU at 2048 MB) + 8 ms = 28.13 -> 29 ms
    assert compute == pytest.approx(1000 * 2 * 0.029 * 0.0000133334, rel=1e-9)


def test_lambda_bill_zero() -> None:
    assert lambda_bill(0.0, 0.0, load_scenario()) == (0.0, 0.0)


def test_lambda_bill_init_whole_ms_is_not_rounded_up() -> None:
    sc = load_scenario(**{"lambda": {"memory_mb": 1024, "cold_start_s": 2.007, "bill_init": True}})
    _, with_init = lambda_bill(0.0, 1000.0, sc)
    assert with_init == pytest.approx(1000 * 1 * 2007 / 1000 * X86_GB_S, rel=1e-9)


def test_lambda_usd_per_request_rounds_up_to_whole_ms() -> None:
    sc = load_scenario()
    gb = 2048 / 1024
    assert lambda_usd_per_request(sc, 0.034) == pytest.approx(
        gb * 0.034 * X86_GB_S + REQ, rel=1e-12
    )
    assert lambda_usd_per_request(sc, 0.0340001) == pytest.approx(
        gb * 0.035 * X86_GB_S + REQ, rel=1e-12
    )
    assert lambda_usd_per_request(sc, 0.0339) == lambda_usd_per_request(sc, 0.034)
    # default service time is 11.65 ms x 2 / (2048 / 1769) + 8 ms = 28.13 ms -> billed 29 ms
    assert lambda_usd_per_request(sc) == lambda_usd_per_request(sc, 0.029)


@pytest.mark.parametrize("ms", [1, 7, 29, 34, 57, 100, 2007, 4001])
def test_lambda_usd_per_request_exact_ms_not_rounded_up(ms: int) -> None:
    sc = load_scenario()
    expected = 2 * ms / 1000 * X86_GB_S + REQ
    assert lambda_usd_per_request(sc, ms / 1000) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------------
# clamp_scan: the Lindley recursion with a cap
# --------------------------------------------------------------------------------------------


def lindley(d: np.ndarray, hi: np.ndarray, x0: float) -> np.ndarray:
    out = np.empty(len(d))
    x = x0
    for t in range(len(d)):
        x = min(hi[t], max(0.0, x + d[t]))
        out[t] = x
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 1000])
@pytest.mark.parametrize("caps", ["inf", "finite", "mixed"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clamp_scan_matches_loop(n: int, caps: str, seed: int) -> None:
    rng = np.random.default_rng(seed * 1000 + n)
    d = rng.normal(0.0, 10.0, n)
    if caps == "inf":
        hi = np.full(n, np.inf)
    elif caps == "finite":
        hi = rng.uniform(0.0, 30.0, n)
    else:
        hi = np.where(rng.random(n) < 0.5, np.inf, rng.uniform(0.0, 30.0, n))
    for x0 in (0.0, 5.0, 50.0):
        got = clamp_scan(d, hi, x0)
        np.testing.assert_allclose(got, lindley(d, hi, x0), rtol=1e-9, atol=1e-9)


def test_clamp_scan_integer_input_and_hand_case() -> None:
    d = np.array([3, -1, 5, -10, 2])
    hi = np.array([np.inf, np.inf, 4.0, np.inf, 1.0])
    # x: 3, 2, min(4, 7)=4, max(0, -6)=0, min(1, 2)=1
    np.testing.assert_array_equal(clamp_scan(d, hi, 0.0), [3.0, 2.0, 4.0, 0.0, 1.0])


# --------------------------------------------------------------------------------------------
# fleet_seconds: every arrival is admitted or spilled
# --------------------------------------------------------------------------------------------


def fleet_seconds(a, mu, mus, *, slo_s, spill, b0, servers=None):
    """Call dataplane.fleet_seconds with or without the per-second instance count (`servers`,
    added with the Poisson-wait model); `servers` defaults to instances of 50 req/s."""
    if "servers" in inspect.signature(dataplane.fleet_seconds).parameters:
        n = np.ceil(np.asarray(mu) / 50.0) if servers is None else servers
        return dataplane.fleet_seconds(a, mu, mus, n, slo_s, spill, b0)
    return dataplane.fleet_seconds(a, mu, mus, slo_s, spill, b0)


def random_fleet(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.poisson(rng.uniform(20, 200), n).astype(float)
    a[rng.random(n) < 0.05] *= 5  # bursts
    mu = rng.choice([0.0, 50.0, 100.0, 150.0], n, p=[0.1, 0.3, 0.3, 0.3])
    mu = np.repeat(mu[::30], 30)[:n]  # capacity changes in blocks, like a fleet
    mus = mu * 0.1
    return a, mu, mus


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("b0", [0.0, 25.0])
def test_fleet_seconds_conservation_with_spill(seed: int, b0: float) -> None:
    a, mu, mus = random_fleet(seed)
    fs = fleet_seconds(a, mu, mus, slo_s=0.3, spill=True, b0=b0)
    np.testing.assert_allclose(fs.admitted + fs.spill, a, rtol=1e-9, atol=1e-9)
    assert np.all(fs.spill >= -1e-9)
    assert np.all(fs.admitted >= -1e-9)
    assert np.all(fs.met <= fs.admitted + 1e-9)
    assert np.all(fs.met >= -1e-9)
    assert fs.spill.sum() > 0  # the random fleet is short some of the time


@pytest.mark.parametrize("seed", range(5))
def test_fleet_seconds_no_spill(seed: int) -> None:
    a, mu, mus = random_fleet(seed)
    fs = fleet_seconds(a, mu, mus, slo_s=0.3, spill=False, b0=0.0)
    assert np.all(fs.spill == 0.0)
    np.testing.assert_allclose(fs.admitted, a, rtol=1e-9, atol=1e-9)


def test_fleet_seconds_no_capacity_spills_everything() -> None:
    a = np.array([0.0, 10.0, 3.0, 100.0])
    z = np.zeros(4)
    fs = fleet_seconds(a, z, z, slo_s=0.3, spill=True, b0=0.0)
    np.testing.assert_array_equal(fs.spill, a)
    np.testing.assert_array_equal(fs.admitted, z)
    np.testing.assert_array_equal(fs.met, z)


def test_fleet_seconds_underloaded_all_met() -> None:
    # 40% load, 0.2 s of slack after the 0.1 s service: (practically) nothing waits past the SLO
    a = np.full(10, 40.0)
    mu = np.full(10, 100.0)
    fs = fleet_seconds(a, mu, mu * 0.1, slo_s=0.3, spill=True, b0=0.0, servers=np.full(10, 2.0))
    np.testing.assert_allclose(fs.spill, 0.0, atol=1e-6)
    np.testing.assert_allclose(fs.admitted, a, rtol=1e-6)
    np.testing.assert_allclose(fs.met, a, rtol=1e-6)
    np.testing.assert_allclose(fs.b_end, 0.0)


def test_fleet_seconds_overload_spills_at_least_the_excess_beyond_queue_cap() -> None:
    # mu = 100, s = 0.1, SLO 0.3: queue cap Q = 100 * 0.3 - 10 = 20 requests
    a = np.full(5, 150.0)
    mu = np.full(5, 100.0)
    fs = fleet_seconds(a, mu, mu * 0.1, slo_s=0.3, spill=True, b0=0.0, servers=np.full(5, 2.0))
    np.testing.assert_allclose(fs.b_end, 20.0)
    # fluid part: the first second fills the queue (20 of the 50 excess), later ones spill all 50
    assert np.all(fs.spill >= np.array([30.0, 50.0, 50.0, 50.0, 50.0]) - 1e-9)
    np.testing.assert_allclose(fs.admitted + fs.spill, a)
    # admitted = served in the second (mu) + growth of the queue (20 in the first second)
    assert np.all(fs.admitted <= mu + np.array([20.0, 0.0, 0.0, 0.0, 0.0]) + 1e-9)
