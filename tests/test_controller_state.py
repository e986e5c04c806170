"""A restarted controller resumes where it left off: state saved as JSON, restored into a
fresh controller, which then decides exactly as the one that kept running."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybridserve import controller_state as S
from hybridserve.backends.simulated import SimulatedBackend
from hybridserve.config import load_scenario
from hybridserve.policies import build_controller
from simulations.synthetic import synthetic_trace

INTERVAL = 60


def _intervals(n: int, seed: int = 0) -> list[np.ndarray]:
    counts = synthetic_trace(days=n * INTERVAL / 86400 + 0.01, seed=seed, mean_rate=80.0).counts
    return [counts[k * INTERVAL : (k + 1) * INTERVAL] for k in range(n)]


def _controller(policy: str, forecaster: str | None):
    sc = load_scenario()
    backend = SimulatedBackend(sc.pools, warm_start=True)
    ctl, _ = build_controller(policy, sc, backend, forecaster=forecaster)
    return ctl, backend


@pytest.mark.parametrize(
    "policy,forecaster",
    [("hybrid", "holt-winters"), ("hybrid", "auto"), ("reactive", None), ("mark", "linear")],
)
def test_restored_controller_decides_as_the_one_that_kept_running(policy, forecaster):
    steps = _intervals(150)
    a, backend = _controller(policy, forecaster)
    for counts in steps[:100]:
        backend.advance(backend.now() + INTERVAL)
        a.step(counts)
    text = S.dumps(a.state())
    json.loads(text)  # plain JSON, as saved with the deployment
    b, _ = _controller(policy, forecaster)
    b.restore(S.loads(text))
    assert b.steps == a.steps == 100
    assert b.target == a.target is not None  # what a notice before the next step converges to
    for counts in steps[100:]:
        backend.advance(backend.now() + INTERVAL)
        da = a.decide(counts)
        db = b.decide(counts, now=da.time_s, fleet=da.fleet)  # the fleet A's backend reports
        assert db.plan.target == da.plan.target
        assert db.plan.objective_usd == da.plan.objective_usd
        assert db.plan.solved == da.plan.solved  # reuse gating came back too
        np.testing.assert_array_equal(db.inputs.forecast.mean, da.inputs.forecast.mean)
        assert db.planner_state.keys() == da.planner_state.keys()
        assert db.intent == da.intent  # a retried step reuses its launch tokens
        a.apply(da)
    b.target = a.target  # B decides without applying (A's backend is the one fleet)
    assert S.dumps(b.state()) == S.dumps(a.state())


def test_a_fresh_controller_differs_so_the_test_above_can_fail():
    steps = _intervals(130)
    a, backend = _controller("reactive", None)
    for counts in steps[:100]:
        backend.advance(backend.now() + INTERVAL)
        a.step(counts)
    fresh, _ = _controller("reactive", None)
    assert fresh.state()["planner"] != a.state()["planner"]
    assert S.dumps(fresh.state()) != S.dumps(a.state())


def test_state_from_another_policy_or_interval_is_refused():
    a, _ = _controller("reactive", None)
    state = S.loads(S.dumps(a.state()))
    b, _ = _controller("hybrid", "linear")
    with pytest.raises(ValueError, match="saved with policy 'reactive'.*'hybrid'"):
        b.restore(state, source="s3://b/k")
    state["policy"], state["interval_s"] = "hybrid", 600
    with pytest.raises(ValueError, match="s3://b/k: saved with interval_s 600"):
        b.restore(state, source="s3://b/k")


@pytest.mark.parametrize(
    "text,expected",
    [("{", "not valid JSON"), ("[]", "version 1, got 'list'"), ('{"version": 9}', "got 9")],
)
def test_bad_state_names_its_source(text, expected):
    with pytest.raises(ValueError, match=f"state.json: .*{expected}"):
        S.loads(text, source="state.json")


def test_history_is_bounded():
    a, _ = _controller("reactive", None)
    assert a.rates.maxlen == S.HISTORY_S // INTERVAL
