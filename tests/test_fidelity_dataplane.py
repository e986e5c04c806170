"""The fast data plane's Lambda side as the router's BATCH buffer drives it (the fidelity
benchmark's findings): batches billed per invoke, the router's concurrency slots with a backlog
instead of throttling, cold containers busy through their start; and the per-request mode
doing the same, request by request."""

from __future__ import annotations

import numpy as np
import pytest

from hybridserve.config import lambda_service_s, load_scenario
from hybridserve.pricing import lambda_billed_ms, lambda_gb_s
from hybridserve.router.buffer import batch_params
from simulations import dataplane, lambda_plane
from simulations.des import simulate_requests

SC = load_scenario()


def _small(limit: int = 1, keep: float = 60.0, cold: float = 0.5):
    """A scenario like the local emulator's: few environments, a short keep-alive."""
    return load_scenario(
        None,
        instance_types=["c5.large"],
        **{"lambda": {"concurrency_limit": limit, "keep_alive_s": keep, "cold_start_s": cold}},
    )


def test_batching_table_is_the_routers_choice():
    sc = SC
    t = lambda_plane.spill_batching(sc)
    ms = [0.0] + [lambda_service_s(sc, b) * 1000.0 for b in range(1, 9)]
    slack = (sc.slo.latency_ms - 10.0) * sc.batch_latency_fraction
    p = sc.lambda_pricing
    for rate in (0.0, 3.0, 40.0, 500.0):
        bp = batch_params(rate, slack, ms, memory_gb=sc.lambda_.memory_mb / 1024.0,
                          usd_per_gb_s=p.usd_per_gb_s, usd_per_request=p.usd_per_request)  # fmt: skip
        at = t.at(np.array([rate]))
        assert at["size"][0] == bp.size
        assert at["timeout_s"][0] == pytest.approx(bp.timeout_ms / 1000.0)
        assert at["e_size"][0] == pytest.approx(bp.expected_size, rel=1e-3)
    # billed: the handler's duration, without the invocation overhead
    one = lambda_billed_ms(ms[1] - sc.model.lambda_.invoke_overhead_ms)
    assert t.billed_ms[1] == one
    close = t.closing(np.array([1, 4]), np.array([0.0, 0.05]), np.array([10.0, 1e6]))
    assert close["e_size"] == pytest.approx([1.0, 4.0])


def test_lambda_bill_per_invoke():
    sc = SC
    p = sc.lambda_pricing
    req, compute = dataplane.lambda_bill(100.0, 0.0, sc, invokes=40.0, billed_ms=2000.0)
    assert req == pytest.approx(40 * p.usd_per_request)
    assert compute == pytest.approx(lambda_gb_s(sc.lambda_.memory_mb, 2000.0) * p.usd_per_gb_s)
    # without invokes: one invoke per request, as before
    per_req = dataplane.lambda_bill(100.0, 0.0, sc)
    assert per_req[0] == pytest.approx(100 * p.usd_per_request)


def test_a_steady_spill_is_batched_served_and_met():
    sc = SC
    spill = np.full(600, 200.0)
    ls = lambda_plane.lambda_seconds(spill, sc)
    assert ls.served.sum() == spill.sum() and ls.throttled.sum() == 0
    assert ls.invokes.sum() < 0.5 * spill.sum()  # batches of several
    assert ls.met.sum() == pytest.approx(spill.sum(), rel=1e-3)  # cold starts aside
    assert (ls.wait_hi == 0).all()


def test_past_the_concurrency_the_router_queues_and_then_refuses():
    sc = _small(limit=1)
    b = lambda_plane.spill_batching(sc)
    cap = b.at(np.array([150.0]))
    # one slot: about size / service per second (some 50/s here); 150/s is well past it
    spill = np.concatenate([np.full(20, 150.0), np.zeros(40)])
    ls = lambda_plane.lambda_seconds(spill, sc)
    assert ls.wait_hi.max() > 1.0  # a backlog builds and drains
    assert ls.met.sum() < 0.7 * spill.sum()
    assert ls.served.sum() + ls.throttled.sum() == pytest.approx(spill.sum())
    assert ls.throttled.sum() > 0  # past the buffer's 256 pending requests
    assert cap["size"][0] >= 1
    # a short burst queues, nothing is refused
    short = lambda_plane.lambda_seconds(np.array([150.0, 0.0, 0.0, 0.0, 0.0]), sc)
    assert short.throttled.sum() == 0 and short.served.sum() == 150.0
    assert 0 < short.met.sum() < 150.0


def test_a_cold_container_is_busy_through_its_start():
    sc = load_scenario(None, **{"lambda": {"cold_start_s": 2.0}})
    spill = np.full(30, 100.0)
    ls = lambda_plane.lambda_seconds(spill, sc)
    busy_only = lambda_plane.lambda_seconds(
        spill, load_scenario(None, **{"lambda": {"cold_start_s": 0.01}})
    )
    assert ls.cold.sum() > 2 * busy_only.cold.sum()  # arrivals during the starts need others


def test_state_carries_across_chunks():
    sc = _small(limit=2)
    rng = np.random.default_rng(0)
    spill = rng.poisson(8, 400).astype(float)
    spill[100:110] = 80
    whole = lambda_plane.lambda_seconds(spill, sc)
    a = lambda_plane.lambda_seconds(spill[:105], sc)
    b = lambda_plane.lambda_seconds(spill[105:], sc, a.state)
    for k in ("served", "cold", "met", "invokes"):
        got = np.concatenate([getattr(a, k), getattr(b, k)])
        assert np.allclose(got, getattr(whole, k)), k


@pytest.mark.parametrize("rate", [6.0, 15.0])
def test_fast_and_per_request_modes_agree_on_a_one_slot_lambda(rate):
    """Lambda only, one concurrency slot, bursty arrivals (three seconds in one, as mooncake's):
    attainment within 2 points, invokes within 5%."""
    sc = _small(limit=1)
    rng = np.random.default_rng(3)
    counts = np.zeros(600, dtype=np.int64)
    counts[::3] = rng.poisson(3 * rate, 200)
    pools = {p.key: p for p in sc.pools}
    tot = dataplane.replay(counts, [], pools, sc, spill=True)
    des = simulate_requests(counts, [], pools, sc, spill=True, seed=1)
    att = tot.met / tot.requests
    assert abs(att - des.slo_attainment) <= 0.02, (att, des.slo_attainment)
    assert tot.lambda_invokes == pytest.approx(des.invokes, rel=0.05)
    assert tot.spilled == des.spilled == counts.sum()
