"""decide / apply: deciding never touches the fleet; applying converges to exactly what was
decided; step is the two in order."""

from __future__ import annotations

import numpy as np

from hybridserve.backends.simulated import SimulatedBackend
from hybridserve.config import load_scenario
from hybridserve.fleet import FleetView, PoolState
from hybridserve.policies import build_controller


class Spy(SimulatedBackend):
    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.targets: list[dict] = []

    def converge(self, target, *, intent=None):
        self.targets.append(dict(target))
        return super().converge(target, intent=intent)


def counts(rate: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(rate, 60)


def test_decide_does_not_act_and_apply_converges_to_the_decision() -> None:
    sc = load_scenario()
    backend = Spy(sc.pools, warm_start=False)
    ctl, _ = build_controller("hybrid", sc, backend, forecaster="last-value")
    d = ctl.decide(counts(800.0))
    assert backend.targets == [] and backend.instances == [] and d.actions == []
    assert d.valid and sum(d.plan.target.values()) > 0  # 800 req/s needs instances
    done = ctl.apply(d)
    assert backend.targets == [d.plan.target]
    assert [a.kind for a in done.actions] == ["launch"] * sum(d.plan.target.values())
    assert done.plan is d.plan and done.inputs is d.inputs


def test_decide_takes_the_fleet_and_time_it_is_given() -> None:
    sc = load_scenario()
    backend = Spy(sc.pools)
    ctl, _ = build_controller("hybrid", sc, backend, forecaster="last-value")
    key = sc.pools[0].key
    fleet = FleetView({key: PoolState(ready=3)})
    d = ctl.decide(counts(5.0), now=1234.0, fleet=fleet)
    assert d.time_s == 1234.0 and d.fleet is fleet and d.inputs.now_s == 1234.0
    assert backend.targets == []


def test_step_is_decide_then_apply() -> None:
    sc = load_scenario()
    a, b = Spy(sc.pools), Spy(sc.pools)
    ca, _ = build_controller("hybrid", sc, a, forecaster="last-value")
    cb, _ = build_controller("hybrid", sc, b, forecaster="last-value")
    for k in range(5):
        c = counts(300.0 + 200.0 * k, seed=k)
        a.advance(60.0 * k)
        b.advance(60.0 * k)
        da = ca.step(c)
        db = cb.apply(cb.decide(c))
        assert da.plan.target == db.plan.target and da.actions == db.actions
    assert a.targets == b.targets
