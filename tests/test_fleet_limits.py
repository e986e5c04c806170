"""The fleet cap and the hourly budget: cut by the Controller's plan in every world, checked
again by the reconciler before any launch."""

from __future__ import annotations

import numpy as np
import pytest

from hybridserve.backends.simulated import SimulatedBackend
from hybridserve.config import load_scenario
from hybridserve.planner.limits import limit_target
from hybridserve.policies import build_controller
from hybridserve.reconcile import Observed, reconcile
from simulations.replay import run_policy
from simulations.synthetic import synthetic_trace


def test_limit_keeps_the_cheapest_capacity_within_cap_and_budget():
    sc = load_scenario()
    pools = sorted(sc.pools, key=lambda p: p.usd_per_request)
    cheap, dear = pools[0], pools[-1]
    target = {dear.key: 3, cheap.key: 3}
    assert limit_target(target, sc.pools, None, None) == target
    assert limit_target(target, sc.pools, 4, None) == {dear.key: 1, cheap.key: 3}
    hourly = cheap.price_usd_s * 3600
    assert limit_target({cheap.key: 5}, sc.pools, None, 2.5 * hourly) == {cheap.key: 2}
    assert limit_target(target, sc.pools, 0, None) == {dear.key: 0, cheap.key: 0}


def test_reconcile_never_launches_past_the_cap():
    seen = [
        Observed("i-1", "c5.large/on_demand", False, 0.0),
        Observed("i-2", "x/spot", False, 0.0, True),
    ]
    acts = reconcile({"c5.large/on_demand": 5}, seen, 0.0, max_instances=3)
    # the dead one is retired and not counted: one live, room for two more
    assert [a.kind for a in acts] == ["retire", "launch", "launch"]
    assert reconcile({"c5.large/on_demand": 1}, seen, 0.0, max_instances=0)[-1].kind == "retire"


@pytest.mark.parametrize(
    "limit", [{"planner.max_instances": 1}, {"planner.budget_usd_per_hour": 0.2}]
)
def test_a_replay_under_a_limit_never_holds_more_and_spills_the_rest(limit):
    trace = synthetic_trace(days=0.25, seed=3, mean_rate=400.0)
    free = run_policy(trace, load_scenario(), "hybrid", forecaster="linear")
    sc = load_scenario(**limit)
    capped = run_policy(trace, sc, "hybrid", forecaster="linear")
    backend = SimulatedBackend(sc.pools, warm_start=True)
    ctl, _ = build_controller("hybrid", sc, backend, forecaster="linear")
    price = {p.key: p.price_usd_s * 3600 for p in sc.pools}
    dt = sc.control_interval_s
    for k in range(0, len(trace.counts) - dt + 1, dt):
        backend.advance(backend.now() + dt)
        d = ctl.step(trace.counts[k : k + dt])
        t = d.plan.target
        if "planner.max_instances" in limit:
            assert sum(t.values()) <= 1
        else:
            assert sum(n * price[key] for key, n in t.items()) <= 0.2 + 1e-9
    assert capped.lambda_fraction > free.lambda_fraction  # what the fleet may not serve spills
    assert np.isfinite(capped.cost_usd)


def test_a_deployment_carries_its_cap_and_budget_to_the_planner_and_the_reconciler():
    pytest.importorskip("botocore")
    from hybridserve.aws.deploy import deployment_scenario
    from hybridserve.deployment import DeploymentConfig

    cfg = DeploymentConfig(
        name="demo", artifact="a", bucket="bucket-x", ec2={"max_instances": 2},
        budget_usd_per_hour=1.5,
    )  # fmt: skip
    sc = deployment_scenario(cfg)
    assert (sc.planner.max_instances, sc.planner.budget_usd_per_hour) == (2, 1.5)
    assert (
        deployment_scenario(
            DeploymentConfig(name="d", artifact="a", bucket="bucket-x")
        ).planner.max_instances
        is None
    )
