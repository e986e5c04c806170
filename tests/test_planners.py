"""Planners: the exact MILP against brute force, greedy against exact, re-solve gating, the
reactive / static / Lambda-only baselines and dominated-pool pruning."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from hybridserve.config import Pool, ReactiveOptions, load_scenario
from hybridserve.forecast import Forecast
from hybridserve.planner import (
    ExactPlanner,
    FleetView,
    GreedyPlanner,
    NoFleetPlanner,
    PlanInput,
    PoolState,
    ReactivePlanner,
    StaticPlanner,
)
from hybridserve.planner.base import cheapest_pool, prune_dominated, prune_multiples
from hybridserve.planner.exact import evaluate_plan, solve_plan

DT = 60


def pool(
    name: str,
    mu: float,
    usd_h: float,
    delay: float = 0.0,
    latency: float = 0.1,
    market: str = "on_demand",
) -> Pool:
    return Pool(
        instance_type=name,
        market=market,
        price_usd_s=usd_h / 3600,
        capacity_rps=mu,
        latency_s=latency,
        batch=8,
        workers=1,
        launch_delay_s=delay,
    )


def make_input(
    per_second: np.ndarray,
    pools: list[Pool],
    fleet: dict[str, PoolState] | None = None,
    c_l: float | None = 1e-5,
    **kw,
) -> PlanInput:
    """PlanInput whose demand comes straight from per-second rates of shape (H, 60)."""
    ps = np.asarray(per_second, dtype=float)
    mean = ps.mean(axis=1)
    fc = Forecast(mean=mean, quantiles={0.5: mean}, per_second=ps)
    return PlanInput(
        forecast=fc,
        fleet=FleetView(dict(fleet or {})),
        pools=pools,
        interval_s=DT,
        lambda_usd_per_request=c_l,
        **kw,
    )


def constant(levels: list[float]) -> np.ndarray:
    """Per-second demand that is flat within each step."""
    return np.repeat(np.asarray(levels, dtype=float)[:, None], DT, axis=1)


def capacity(pools: list[Pool], target: dict[str, int]) -> float:
    return sum(p.capacity_rps * target.get(p.key, 0) for p in pools)


# --------------------------------------------------------------------------------------------
# exact planner vs brute force
# --------------------------------------------------------------------------------------------

POOL_A = pool("a", 50, 0.1)
POOL_B = pool("b", 80, 0.15)  # slightly cheaper per request, coarser


def brute_force(inp: PlanInput, pools: list[Pool]) -> tuple[float, np.ndarray]:
    """Minimum of evaluate_plan over every integer plan in [0, K_p]^(pools x H)."""
    H = inp.horizon
    peak = float(np.max(inp.forecast.per_second))
    base = np.vstack([inp.base_counts()[[p.key for p in inp.pools].index(q.key)] for q in pools])
    ks = [max(math.ceil(peak / p.capacity_rps), int(base[i].max())) for i, p in enumerate(pools)]
    ranges = [range(k + 1) for k in ks for _ in range(H)]
    best, best_x = math.inf, None
    for flat in itertools.product(*ranges):
        x = np.array(flat, dtype=float).reshape(len(pools), H)
        try:
            v = evaluate_plan(inp, pools, x)
        except ValueError:
            continue
        if v < best:
            best, best_x = v, x
    assert best_x is not None
    return best, best_x


def random_case(seed: int, H: int | None = None) -> tuple[PlanInput, list[Pool]]:
    rng = np.random.default_rng(seed)
    n_pools = 1 + seed % 2
    H = H or (4 if n_pools == 1 else 3)
    delays = rng.choice([0.0, 60.0, 90.0] if n_pools == 1 else [0.0, 60.0], n_pools)
    pools = [
        POOL_A.model_copy(update={"launch_delay_s": float(delays[0])}),
        POOL_B.model_copy(update={"launch_delay_s": float(delays[-1])}),
    ][:n_pools]
    mean = rng.uniform(0, 110, H)
    ps = rng.gamma(4.0, mean[:, None] / 4.0, (H, DT))
    burst = rng.random((H, DT)) < 0.1
    ps = np.minimum(np.where(burst, ps * 2.0, ps), 150.0)
    fleet = {}
    for p in pools:
        ready = int(rng.integers(0, 3))
        pending = (30.0,) if rng.random() < 0.3 else ()
        if ready or pending:
            fleet[p.key] = PoolState(ready=ready, pending_ready_in_s=pending)
    per_req = POOL_A.price_usd_s / POOL_A.capacity_rps
    c_l = float(per_req * rng.uniform(0.8, 6.0))
    return make_input(ps, pools, fleet, c_l), pools


@pytest.mark.parametrize(("seed", "H"), [(s, None) for s in range(16)] + [(21, 4), (23, 4)])
def test_exact_is_optimal_against_brute_force(seed: int, H: int | None) -> None:
    inp, pools = random_case(seed, H)
    x, obj = solve_plan(inp, pools, eps=0.0)
    got = evaluate_plan(inp, pools, x)  # also checks the solution is feasible
    best, best_x = brute_force(inp, pools)
    assert got == pytest.approx(best, rel=1e-9, abs=1e-12), (x, best_x)
    assert obj == pytest.approx(got, rel=1e-9, abs=1e-12)  # the MILP prices plans like evaluate


def test_exact_objective_includes_epsilon() -> None:
    inp, pools = random_case(3)
    eps = 1e-6
    x, obj = solve_plan(inp, pools, eps=eps)
    assert obj == pytest.approx(evaluate_plan(inp, pools, x) + eps * x.sum(), rel=1e-9)


def test_brute_force_helper_sees_infeasible_plans() -> None:
    """Guard for the brute force: evaluate_plan rejects instances before their lead time."""
    p = POOL_A.model_copy(update={"launch_delay_s": 90.0})  # lead 2
    inp = make_input(constant([100, 100, 100]), [p])
    with pytest.raises(ValueError):
        evaluate_plan(inp, [p], np.array([[0.0, 1.0, 1.0]]))
    assert evaluate_plan(inp, [p], np.array([[0.0, 0.0, 1.0]])) > 0


def test_evaluate_plan_by_hand() -> None:
    # one pool, 50 rps, $0.36/h = $1e-4/s, delay 60 s (lead 1), 1 ready; demand 100, 100 rps flat
    p = pool("a", 50, 0.36, delay=60.0)
    c_l = 1e-6
    inp = make_input(constant([100, 100]), [p], {p.key: PoolState(ready=1)}, c_l)
    # x = [1, 2]: EC2 = 1e-4 * 60 * 3 + one launch 1e-4 * 60; spill 50 rps then 0
    expected = 1e-4 * 60 * 3 + 1e-4 * 60 + c_l * 60 * 50
    assert evaluate_plan(inp, [p], np.array([[1.0, 2.0]])) == pytest.approx(expected, rel=1e-12)
    # x = [0, 0]: everything spills
    assert evaluate_plan(inp, [p], np.zeros((1, 2))) == pytest.approx(c_l * 60 * 200, rel=1e-12)


# --------------------------------------------------------------------------------------------
# greedy never beats exact
# --------------------------------------------------------------------------------------------


def greedy_counts(inp: PlanInput, target: dict[str, int]) -> np.ndarray:
    """Greedy's target held over the horizon, limited to what exists before each lead time."""
    base = inp.base_counts()
    x = np.zeros_like(base)
    for i, p in enumerate(inp.pools):
        n = target.get(p.key, 0)
        lead = min(inp.lead_steps(p), inp.horizon)
        x[i] = n
        x[i, :lead] = np.minimum(n, base[i, :lead])
    return x


@pytest.mark.parametrize("seed", range(10))
def test_greedy_never_cheaper_than_exact(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    pools = [
        pool("s", 50, 0.1, delay=90.0),
        pool("m", 110, 0.2, delay=90.0),
        pool("l", 420, 0.75, delay=180.0),
    ]
    H = 10
    level = np.cumsum(rng.normal(0, 60, H)) + rng.uniform(100, 800)
    ps = rng.gamma(6.0, np.maximum(level, 0)[:, None] / 6.0, (H, DT))
    fleet = {p.key: PoolState(ready=int(rng.integers(0, 3))) for p in pools}
    c_l = float(pools[0].price_usd_s / pools[0].capacity_rps * rng.uniform(1.0, 4.0))
    inp = make_input(ps, pools, fleet, c_l)
    x_exact, _ = solve_plan(inp, pools, eps=0.0)
    opt = evaluate_plan(inp, pools, x_exact)
    target = GreedyPlanner().plan(inp).target
    assert set(target) <= {p.key for p in pools}
    cost = evaluate_plan(inp, pools, greedy_counts(inp, target))
    assert cost >= opt - 1e-9


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


# --------------------------------------------------------------------------------------------
# reactive, static, Lambda-only
# --------------------------------------------------------------------------------------------

R = pool("r", 100, 0.1, delay=90.0)
OTHER = pool("o", 100, 0.1)


def reactive_step(planner: ReactivePlanner, now: float, n: int, rate: float) -> int:
    inp = make_input(
        constant([rate]),
        [R],
        {R.key: PoolState(ready=n)} if n else {},
        c_l=None,
        observed_rate=rate,
        now_s=now,
    )
    return planner.plan(inp).target[R.key]


def test_reactive_waits_before_scaling_out() -> None:
    rp = ReactivePlanner(R)
    # utilisation 0.8 > 0.7 with 1 instance; scales after 180 s = 3 intervals above
    assert reactive_step(rp, 0, 1, 80) == 1
    assert reactive_step(rp, 60, 1, 80) == 1
    assert reactive_step(rp, 120, 1, 80) == 2  # ceil(80 / (0.7 x 100))


def test_reactive_dip_resets_the_clock() -> None:
    rp = ReactivePlanner(R)
    assert reactive_step(rp, 0, 1, 80) == 1
    assert reactive_step(rp, 60, 1, 80) == 1
    assert reactive_step(rp, 120, 1, 50) == 1  # below target: back to zero
    assert reactive_step(rp, 180, 1, 80) == 1
    assert reactive_step(rp, 240, 1, 80) == 1
    assert reactive_step(rp, 300, 1, 80) == 2


def test_reactive_scale_out_size() -> None:
    rp = ReactivePlanner(R)
    n = 2
    for k in range(3):
        n = reactive_step(rp, 60 * k, n, 500)
    assert n == math.ceil(500 / 70)  # 8


def test_reactive_cooldown() -> None:
    rp = ReactivePlanner(R)
    n = 1
    for k in range(3):
        n = reactive_step(rp, 60 * k, n, 80)
    assert n == 2  # first scale-out at t = 120
    targets = {}
    for k in range(3, 9):
        n = reactive_step(rp, 60 * k, n, 300)
        targets[60 * k] = n
    # above target from t = 180; 180 s above at t = 300 but the cooldown lasts until t = 420
    assert targets[180] == targets[240] == targets[300] == targets[360] == 2
    assert targets[420] == math.ceil(300 / 70)  # 5


def test_reactive_scale_in_after_15_intervals() -> None:
    rp = ReactivePlanner(R)
    seen = [reactive_step(rp, 60 * k, 4, 100) for k in range(15)]  # util 0.25
    assert seen[:14] == [4] * 14
    assert seen[14] == 2  # ceil(100 / 70)


def test_reactive_never_scales_in_below_one_and_starts_from_zero() -> None:
    rp = ReactivePlanner(R)
    assert reactive_step(rp, 0, 0, 250) == 4  # empty fleet: straight to ceil(250 / 70)
    rp = ReactivePlanner(R)
    seen = [reactive_step(rp, 60 * k, 3, 0.0) for k in range(15)]
    assert seen[-1] == 1


def test_reactive_options_respected() -> None:
    opt = ReactiveOptions(target_utilisation=0.5, scale_out_after_s=60, cooldown_s=0)
    rp = ReactivePlanner(R, opt)
    assert reactive_step(rp, 0, 1, 80) == 2  # ceil(80 / 50) at once


def test_reactive_retires_other_pools() -> None:
    rp = ReactivePlanner(R)
    inp = make_input(
        constant([50]),
        [R, OTHER],
        {R.key: PoolState(ready=1), OTHER.key: PoolState(ready=3)},
        c_l=None,
        observed_rate=50,
    )
    assert rp.plan(inp).target == {R.key: 1, OTHER.key: 0}


def test_static_for_rate() -> None:
    assert StaticPlanner.for_rate(R, 250).target == {R.key: 3}
    assert StaticPlanner.for_rate(R, 200).target == {R.key: 2}  # exact multiple: no extra
    assert StaticPlanner.for_rate(R, 200.001).target == {R.key: 3}
    assert StaticPlanner.for_rate(R, 0).target == {R.key: 1}  # never empty


def test_static_plan_is_fixed_and_retires_others() -> None:
    sp = StaticPlanner({R.key: 3})
    for rate in (0, 1000):
        inp = make_input(
            constant([rate]), [R, OTHER], {OTHER.key: PoolState(ready=2)}, observed_rate=rate
        )
        assert sp.plan(inp).target == {R.key: 3, OTHER.key: 0}


def test_no_fleet_planner_retires_everything() -> None:
    fleet = {R.key: PoolState(ready=2), OTHER.key: PoolState(pending_ready_in_s=(30.0,))}
    inp = make_input(constant([500]), [R, OTHER], fleet)
    assert NoFleetPlanner().plan(inp).target == {R.key: 0, OTHER.key: 0}
    assert NoFleetPlanner().plan(make_input(constant([500]), [R, OTHER])).target == {}


# --------------------------------------------------------------------------------------------
# dominated pools
# --------------------------------------------------------------------------------------------


def test_prune_keeps_first_of_ties() -> None:
    a = pool("c5.large", 50, 0.085)
    b = pool("c6i.large", 50, 0.085)
    assert prune_dominated([a, b]) == [a]
    assert prune_dominated([b, a]) == [b]


def test_prune_drops_pricier_identical_pool() -> None:
    cheap = pool("c5.large", 50, 0.085)
    dear = pool("m5.large", 50, 0.096)
    assert prune_dominated([dear, cheap]) == [cheap]
    assert prune_dominated([cheap, dear]) == [cheap]


def test_prune_drops_slower_or_later_identical_pool() -> None:
    a = pool("a", 50, 0.1, delay=90)
    slow = pool("slow", 50, 0.1, delay=90, latency=0.2)
    late = pool("late", 50, 0.1, delay=180)
    smaller = pool("smaller", 40, 0.1, delay=90)
    assert prune_dominated([slow, late, smaller, a]) == [a]


def test_prune_keeps_non_dominated() -> None:
    small = pool("small", 50, 0.1)
    big = pool("big", 400, 0.6)  # bigger but dearer: neither dominates
    fast = pool("fast", 50, 0.12, delay=0, latency=0.05)  # dearer but faster
    assert prune_dominated([small, big, fast]) == [small, big, fast]


def test_prune_keeps_pools_in_keep() -> None:
    cheap = pool("c5.large", 50, 0.085)
    dear = pool("m5.large", 50, 0.096)
    tie = pool("c6i.large", 50, 0.085)
    out = prune_dominated([cheap, dear, tie], keep={dear.key, tie.key})
    assert out == [cheap, dear, tie]
    assert prune_dominated([cheap, dear, tie], keep={tie.key}) == [cheap, tie]


def test_prune_scenario_pools() -> None:
    sc = load_scenario()
    kept = {p.instance_type for p in prune_dominated(sc.pools)}
    # c5 and c6i tie at every size (first listed kept); c7i and m5 are dearer for the same capacity
    assert kept == {"c5.large", "c5.xlarge", "c5.2xlarge", "c5.4xlarge"}


def test_cheapest_pool_prefers_smallest_among_ties() -> None:
    small = pool("small", 50, 0.1)
    big = pool("big", 400, 0.8)  # same cost per request
    best = pool("best", 100, 0.15)
    assert cheapest_pool([big, small]) == small
    assert cheapest_pool([big, small, best]) == best


# --------------------------------------------------------------------------------------------
# one pool: the DP against the MILP; pools that are integer multiples of another


@pytest.mark.parametrize("seed", range(40))
def test_single_pool_dp_matches_the_milp(seed: int) -> None:
    from hybridserve.planner.exact import _base_for
    from hybridserve.planner.single import solve_single

    rng = np.random.default_rng(seed)
    delay = float(rng.choice([0.0, 45.0, 90.0, 150.0]))
    p = pool("a", float(rng.uniform(20, 120)), float(rng.uniform(0.02, 0.4)), delay=delay)
    H = int(rng.integers(1, 16))
    level = rng.uniform(0, 600)
    ps = rng.poisson(level * rng.uniform(0.2, 2.0, (H, 1)), size=(H, DT))
    pend = tuple(float(t) for t in rng.uniform(0, 200, rng.integers(0, 4)))
    fleet = {p.key: PoolState(int(rng.integers(0, 8)), pend)}
    inp = make_input(ps, [p], fleet, c_l=float(rng.uniform(1e-7, 2e-5)))
    base = _base_for(inp, [p])[0]
    rf = float(rng.choice([0.0, 0.5, 1.0]))  # the retirement charge, as a share of a launch
    x_dp, obj_dp = solve_single(inp, p, base, retire_fraction=rf)
    x_milp, obj_milp = solve_plan(inp, [p], retire_fraction=rf)
    assert obj_dp <= obj_milp * (1 + 1e-9) + 1e-12  # never worse than HiGHS (gap 1e-4)
    assert obj_dp >= obj_milp * (1 - 2e-4) - 1e-12
    # the DP's counts are feasible and cost what it says under the MILP's own evaluation
    got = evaluate_plan(inp, [p], x_dp, retire_fraction=rf)
    assert got == pytest.approx(obj_dp - 1e-6 * x_dp.sum(), rel=1e-9)


def test_exact_planner_uses_the_dp_for_one_pool_and_the_milp_for_two(monkeypatch) -> None:
    import hybridserve.planner.exact as exact

    calls = []
    monkeypatch.setattr(
        exact,
        "solve_single",
        lambda *a, **k: calls.append("dp") or (np.zeros((1, a[0].horizon)), 0.0),
    )
    ps = constant([300.0] * 6)
    ExactPlanner().plan(make_input(ps, [pool("a", 100, 0.1)]))
    assert calls == ["dp"]
    ExactPlanner().plan(make_input(ps, [pool("a", 100, 0.1), pool("b", 210, 0.2)]))
    assert calls == ["dp"]  # two pools: the MILP


def test_prune_multiples_drops_exact_multiples_only() -> None:
    small = pool("s", 100, 0.1)
    double = pool("d", 200, 0.2)  # two smalls
    cheaper = pool("c", 200, 0.19)  # cheaper than two smalls: a real choice
    odd = pool("o", 250, 0.25)  # 2.5 smalls: not replaceable by whole instances
    slow = pool("l", 200, 0.2, delay=30.0)  # launches later: still two smalls
    spot = pool("d", 200, 0.2, market="spot")  # another market
    kept = prune_multiples([small, double, cheaper, odd, slow, spot])
    assert [p.key for p in kept] == [small.key, cheaper.key, odd.key, spot.key]
    # a pool with running instances stays, so its instances can be planned
    assert double.key in {p.key for p in prune_multiples([small, double], keep={double.key})}
    # default catalog: every c5 size is a multiple of c5.large
    sc = load_scenario()
    assert [p.key for p in prune_multiples(prune_dominated(sc.pools))] == ["c5.large/on_demand"]
