"""The baseline planners: reactive (target tracking with its waits and cooldown), static and
Lambda-only (no fleet)."""

from __future__ import annotations

import math

from hybridserve.config import ReactiveOptions
from hybridserve.planner import NoFleetPlanner, PoolState, ReactivePlanner, StaticPlanner
from tests.helpers_planners import constant, make_input, pool

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
