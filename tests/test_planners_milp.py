"""The exact planner's solvers: the MILP against brute force, greedy never cheaper than the
exact plan, and for one pool the DP against the MILP (and the planner choosing between them)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from hybridserve.config import Pool
from hybridserve.planner import ExactPlanner, GreedyPlanner, PlanInput, PoolState
from hybridserve.planner.exact import evaluate_plan, solve_plan
from tests.helpers_planners import DT, constant, make_input, pool

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
# one pool: the DP against the MILP
# --------------------------------------------------------------------------------------------


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
