"""The one pricing module, pinned to bills computed by hand, and every caller agreeing with it:
the planner's Lambda price, the simulator's bill, the BATCH buffer's cost, the router's cost
metric and the emulator's billed duration."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hybridserve import pricing
from hybridserve.config import lambda_service_s, lambda_usd_per_request, load_scenario
from hybridserve.router.buffer import batch_params
from simulations.dataplane import lambda_bill

GB_S = 0.0000166667  # x86_64, us-east-1
REQ = 0.0000002


@pytest.mark.parametrize(
    ("ms", "billed"),
    [(0.0, 1), (0.2, 1), (1.0, 1), (28.13, 29), (40.0, 40), (40.0000000001, 40), (40.001, 41)],
)
def test_lambda_billed_ms_rounds_up_to_whole_ms(ms: float, billed: int) -> None:
    assert pricing.lambda_billed_ms(ms) == billed
    assert pricing.lambda_billed_ms_array(np.array([ms]))[0] == billed


def test_lambda_invoke_by_hand() -> None:
    # 2048 MB, 28.13 ms -> 29 ms: 2 GB x 0.029 s x $0.0000166667 + $0.0000002
    assert pricing.lambda_invoke_usd(28.13, 2048, GB_S, REQ) == pytest.approx(
        2 * 0.029 * GB_S + REQ, rel=1e-12
    )
    # a cold start: 28.13 ms + 950.4 ms init, one rounding -> 979 ms
    assert pricing.lambda_invoke_usd(28.13, 2048, GB_S, REQ, init_ms=950.4) == pytest.approx(
        2 * 0.979 * GB_S + REQ, rel=1e-12
    )
    assert pricing.lambda_init_usd(28.13, 950.4, 2048, GB_S) == pytest.approx(
        2 * 0.950 * GB_S, rel=1e-9
    )
    assert pricing.lambda_gb_s(512, 1000) == 0.5


def test_ec2_by_hand() -> None:
    per_s = 0.085 / 3600
    assert pricing.ec2_usd(10.0, per_s) == pytest.approx(60 * per_s)  # the 60 s minimum
    assert pricing.ec2_usd(3600.0, per_s) == pytest.approx(0.085)
    assert pricing.ec2_billed_s(61.5) == 61.5  # per second beyond it


def test_planner_price_and_simulator_bill_agree() -> None:
    sc = load_scenario(**{"lambda": {"memory_mb": 2048, "bill_init": True, "cold_start_s": 0.9504}})
    ms = lambda_service_s(sc) * 1000.0
    per_invoke = pricing.lambda_invoke_usd(ms, 2048, GB_S, REQ)
    assert lambda_usd_per_request(sc) == pytest.approx(per_invoke, rel=1e-12)
    requests, compute = lambda_bill(1000.0, 10.0, sc)
    cold = pricing.lambda_invoke_usd(ms, 2048, GB_S, REQ, init_ms=950.4)
    assert requests + compute == pytest.approx(990 * per_invoke + 10 * cold, rel=1e-12)


def test_batch_buffer_prices_an_invoke_like_the_bill() -> None:
    svc = [0.0, 28.13, 40.2, 55.0]
    one = batch_params(0.0, 100.0, svc, memory_gb=2.0, usd_per_gb_s=GB_S, usd_per_request=REQ)
    assert one.size == 1  # no arrivals: nothing to share an invoke with
    assert one.usd_per_request == pytest.approx(
        pricing.lambda_invoke_usd(28.13, 2048, GB_S, REQ), rel=1e-12
    )


def test_router_cost_metric_prices_what_lambda_billed() -> None:
    from hybridserve.router.app import Router, RouterConfig

    cfg = RouterConfig(model_name="m", slo_ms=300.0, batch_ms={1: 1.0}, lambda_ms=(0.0, 30.0))
    r = Router(cfg, lambda: [], None)
    r._on_lambda(SimpleNamespace(billed_ms=979, init_ms=950.4, duration_ms=28.13), 1)
    r._on_lambda(SimpleNamespace(billed_ms=29, init_ms=None, duration_ms=28.13), 1)
    want = pricing.lambda_invoke_usd(28.13, 2048, GB_S, REQ, init_ms=950.4)
    want += pricing.lambda_invoke_usd(28.13, 2048, GB_S, REQ)
    assert r._lambda_usd == pytest.approx(want, rel=1e-12)
