"""ExactPlanner's decisions: instance types, the Lambda price, launch delays, pending
instances and retirement; and when it solves again rather than reusing its plan."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hybridserve.config import Pool, load_scenario
from hybridserve.planner import ExactPlanner, PlanInput, PoolState
from hybridserve.planner.base import prune_dominated, prune_multiples
from hybridserve.planner.exact import solve_plan
from tests.helpers_planners import DT, constant, make_input, pool


def capacity(pools: list[Pool], target: dict[str, int]) -> float:
    return sum(p.capacity_rps * target.get(p.key, 0) for p in pools)


# --------------------------------------------------------------------------------------------
# exact planner: instance types, Lambda price, launch delay, retirement
# --------------------------------------------------------------------------------------------

SMALL = pool("small", 50, 0.1)  # $0.002 per capacity-hour of 1 rps
BIG = pool("big", 400, 0.6)  # $0.0015: cheaper per request, coarser


def test_exact_uses_big_type_at_high_load() -> None:
    inp = make_input(constant([800] * 4), [SMALL, BIG])
    target = ExactPlanner().plan(inp).target
    assert target.get(BIG.key) == 2
    assert target.get(SMALL.key, 0) == 0


def test_exact_mixes_types_just_above_one_big() -> None:
    # 420 rps: 2 big = $1.2/h, 9 small = $0.9/h, 1 big + 1 small = $0.7/h
    inp = make_input(constant([420] * 4), [SMALL, BIG])
    target = ExactPlanner().plan(inp).target
    assert target == {BIG.key: 1, SMALL.key: 1}


def test_exact_small_load_uses_small_type() -> None:
    inp = make_input(constant([90] * 4), [SMALL, BIG])
    target = ExactPlanner().plan(inp).target
    assert target == {SMALL.key: 2}


def bursty(seed: int, H: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ps = rng.gamma(3.0, 200.0 / 3.0, (H, DT))
    ps[rng.random((H, DT)) < 0.05] *= 3
    return ps


def test_planned_capacity_monotone_in_lambda_price() -> None:
    ps = bursty(7)
    per_req = SMALL.price_usd_s / SMALL.capacity_rps
    prices = per_req * np.geomspace(0.05, 200.0, 25)
    caps = []
    for c_l in prices:
        plan = ExactPlanner().plan(make_input(ps, [SMALL], c_l=float(c_l)))
        caps.append(float(np.sum(plan.counts)) * SMALL.capacity_rps)
    assert all(b >= a for a, b in itertools.pairwise(caps)), caps
    assert caps[0] == 0.0  # Lambda far cheaper than an instance: no fleet
    assert caps[-1] > caps[len(caps) // 2] > 0.0
    levels = make_input(ps, [SMALL]).demand.levels
    # Lambda 10^5 times dearer: capacity covers the top demand level of every step
    plan = ExactPlanner().plan(make_input(ps, [SMALL], c_l=float(per_req * 1e5)))
    assert np.all(plan.counts[0] * SMALL.capacity_rps >= levels.max(axis=1) - 1e-9)


def test_lambda_price_extremes_with_scenario_pools() -> None:
    sc = load_scenario()
    ps = bursty(11)
    inp = make_input(ps, sc.pools, c_l=1e-3)
    lead = inp.lead_steps(sc.pools[0])
    assert lead == 2  # 90 s launch delay, no fleet: nothing can serve steps 0 and 1
    cheap = ExactPlanner().plan(make_input(ps, sc.pools, c_l=1e-9))
    dear = ExactPlanner().plan(inp)
    assert capacity(sc.pools, cheap.target) == 0
    assert np.all(cheap.counts == 0)
    # Lambda dear: the planned fleet covers the top demand level from the first step it can
    mu = np.array([p.capacity_rps for p in prune_multiples(prune_dominated(sc.pools))])
    planned = mu @ dear.counts
    top = inp.demand.levels.max(axis=1)
    assert np.all(planned[lead:] >= top[lead:] - 1e-9)
    assert capacity(sc.pools, dear.target) >= top[lead] - 1e-9


def test_no_lambda_price_is_an_error_for_exact() -> None:
    inp = make_input(constant([100] * 3), [SMALL], c_l=None)
    with pytest.raises(ValueError, match="Lambda"):
        solve_plan(inp, [SMALL])


@pytest.mark.parametrize("delay", [61.0, 90.0, 120.0])
def test_launch_delay_respected(delay: float) -> None:
    p = SMALL.model_copy(update={"launch_delay_s": delay})  # lead 2 steps
    inp = make_input(constant([200] * 6), [p])
    assert inp.lead_steps(p) == 2
    x, _ = solve_plan(inp, [p])
    assert np.all(x[:, :2] == 0)
    assert np.all(x[:, 2:] == 4)
    plan = ExactPlanner().plan(inp)
    assert plan.target == {p.key: 4}  # launched now to serve from step 2


def test_pending_instances_count_from_their_ready_step() -> None:
    p = SMALL.model_copy(update={"launch_delay_s": 120.0})  # lead 2
    fleet = {p.key: PoolState(ready=1, pending_ready_in_s=(30.0,))}  # 2nd serves from step 1
    inp = make_input(constant([100] * 5), [p], fleet)
    np.testing.assert_array_equal(inp.base_counts(), [[1, 2, 2, 2, 2]])
    x, _ = solve_plan(inp, [p])
    np.testing.assert_array_equal(x, [[1, 2, 2, 2, 2]])
    assert ExactPlanner().plan(inp).target == {p.key: 2}


def test_retire_when_demand_gone() -> None:
    p = SMALL.model_copy(update={"launch_delay_s": 600.0})
    inp = make_input(constant([0] * 15), [p], {p.key: PoolState(ready=2)})
    assert ExactPlanner().plan(inp).target == {p.key: 0}


def test_keep_through_a_short_dip_with_long_launch_delay() -> None:
    p = SMALL.model_copy(update={"launch_delay_s": 600.0})  # lead 10
    inp = make_input(constant([0] + [100] * 14), [p], {p.key: PoolState(ready=2)})
    plan = ExactPlanner().plan(inp)
    assert plan.target == {p.key: 2}
    np.testing.assert_array_equal(plan.counts[0, 1:], 2)


def test_retire_through_a_dip_when_relaunch_is_free() -> None:
    p = SMALL.model_copy(update={"launch_delay_s": 0.0})
    inp = make_input(constant([0] + [100] * 14), [p], {p.key: PoolState(ready=2)})
    plan = ExactPlanner().plan(inp)
    assert plan.counts[0, 0] == 0
    np.testing.assert_array_equal(plan.counts[0, 1:], 2)
    assert plan.target == {p.key: 0}


def test_retired_pool_appears_in_target_with_zero() -> None:
    inp = make_input(constant([0] * 4), [SMALL, BIG], {BIG.key: PoolState(ready=1)})
    assert ExactPlanner().plan(inp).target == {BIG.key: 0}


# --------------------------------------------------------------------------------------------
# re-solve gating
# --------------------------------------------------------------------------------------------

GATED = SMALL.model_copy(update={"launch_delay_s": 90.0})  # lead 2


def gated_input(rate: float, ready: int = 2, H: int = 12) -> PlanInput:
    return make_input(constant([rate] * H), [GATED], {GATED.key: PoolState(ready=ready)})


def test_same_input_solves_once() -> None:
    planner = ExactPlanner()
    first = planner.plan(gated_input(100))
    assert first.solved
    assert first.target == {GATED.key: 2}
    second = planner.plan(gated_input(100))
    assert not second.solved
    assert second.target == first.target
    assert planner.solves == 1


def test_small_demand_change_reuses() -> None:
    planner = ExactPlanner()
    planner.plan(gated_input(100))
    planner.plan(gated_input(105))  # moved 5 rps < 0.25 x 50 rps
    assert planner.solves == 1


def test_big_demand_change_resolves() -> None:
    planner = ExactPlanner()
    planner.plan(gated_input(100))
    plan = planner.plan(gated_input(300))
    assert plan.solved
    assert planner.solves == 2
    assert plan.target == {GATED.key: 6}


def test_changed_fleet_resolves() -> None:
    planner = ExactPlanner()
    planner.plan(gated_input(100))
    plan = planner.plan(gated_input(100, ready=1))  # an instance was lost
    assert plan.solved
    assert planner.solves == 2
    assert plan.target == {GATED.key: 2}


def test_old_plan_is_resolved_after_max_age() -> None:
    planner = ExactPlanner()
    age = planner.opt.max_plan_age_steps
    for _ in range(age):
        planner.plan(gated_input(100, H=age + 4))
    assert planner.solves == 1
    planner.plan(gated_input(100, H=age + 4))
    assert planner.solves == 2
