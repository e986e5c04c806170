"""The one reconcile every backend runs: its properties on random fleets, and the simulated
backend executing exactly the actions it returns."""

from __future__ import annotations

import numpy as np
import pytest

from hybridserve.backends.simulated import SimulatedBackend
from hybridserve.config import Pool
from hybridserve.reconcile import Observed, reconcile

POOLS = [
    Pool(
        instance_type=t,
        market="on_demand",
        price_usd_s=0.1 / 3600,
        capacity_rps=50,
        latency_s=0.1,
        batch=8,
        workers=1,
        launch_delay_s=60,
    )
    for t in ("c5.large", "c5.xlarge")
]
KEYS = [p.key for p in POOLS]


def random_fleet(rng) -> list[Observed]:
    out = []
    for k in range(int(rng.integers(0, 9))):
        out.append(
            Observed(
                f"i-{k}",
                KEYS[int(rng.integers(0, 2))],
                launching=bool(rng.random() < 0.3),
                since=float(rng.integers(0, 5)),
                dead=bool(rng.random() < 0.15),
            )
        )
    return out


def apply(observed: list[Observed], actions) -> list[Observed]:
    gone = {a.instance_id for a in actions if a.kind == "retire"}
    out = [o for o in observed if o.instance_id not in gone]
    out += [
        Observed(f"new-{k}", a.pool, True, 10.0)
        for k, a in enumerate(actions)
        if a.kind == "launch"
    ]
    return out


@pytest.mark.parametrize("seed", range(60))
def test_reconcile_reaches_the_target_and_then_does_nothing(seed: int) -> None:
    rng = np.random.default_rng(seed)
    observed = random_fleet(rng)
    target = {k: int(rng.integers(0, 5)) for k in KEYS if rng.random() < 0.8}
    actions = reconcile(target, observed, 7.0)
    assert all(a.time_s == 7.0 for a in actions)
    dead = {o.instance_id for o in observed if o.dead}
    retired = [a.instance_id for a in actions if a.kind == "retire"]
    assert dead <= set(retired) and len(retired) == len(set(retired))
    after = apply(observed, actions)
    for k in KEYS:
        assert sum(1 for o in after if o.pool == k and not o.dead) == target.get(k, 0)
    assert reconcile(target, after, 8.0) == []  # level-triggered: nothing left to do
    # scale-in never retires a serving instance while a launching one of its pool stays
    for k in KEYS:
        out = {a.instance_id for a in actions if a.kind == "retire" and a.pool == k} - dead
        kept = [o for o in observed if o.pool == k and not o.dead and o.instance_id not in out]
        if any(not o.launching for o in observed if o.instance_id in out):
            assert not any(o.launching for o in kept)


def test_scale_in_retires_launching_then_newest_then_last_observed() -> None:
    fleet = [
        Observed("old", KEYS[0], False, 1.0),
        Observed("new", KEYS[0], False, 3.0),
        Observed("boot", KEYS[0], True, 0.0),
        Observed("new-too", KEYS[0], False, 3.0),
    ]
    ids = [a.instance_id for a in reconcile({KEYS[0]: 1}, fleet)]
    assert ids == ["boot", "new-too", "new"]


def test_counted_pools_only_grow() -> None:
    listed = [Observed("a", KEYS[1], False, 1.0), Observed("b", KEYS[1], False, 2.0)]
    got = reconcile({KEYS[0]: 5, KEYS[1]: 1}, listed, counted={KEYS[0]: 3})
    assert [(a.kind, a.pool, a.instance_id) for a in got] == [
        ("launch", KEYS[0], ""),
        ("launch", KEYS[0], ""),
        ("retire", KEYS[1], "b"),
    ]
    # the same as listing the three instances
    three = [Observed(f"c{k}", KEYS[0], False, 0.0) for k in range(3)]
    assert reconcile({KEYS[0]: 5, KEYS[1]: 1}, three + listed) == got
    with pytest.raises(ValueError, match="shrinks to 2: list its instances"):
        reconcile({KEYS[0]: 2}, [], counted={KEYS[0]: 3})


def test_negative_target_is_refused_before_any_action() -> None:
    with pytest.raises(ValueError, match="c5.large/on_demand is negative"):
        reconcile({KEYS[1]: 2, KEYS[0]: -1}, [])


def test_simulated_backend_executes_what_reconcile_returns() -> None:
    b = SimulatedBackend(POOLS, warm_start=False)
    launched = b.converge({KEYS[0]: 3})
    assert [a.kind for a in launched] == ["launch"] * 3
    assert [a.instance_id for a in launched] == ["0", "1", "2"]
    b.advance(100.0)  # all three ready
    b.converge({KEYS[0]: 4})  # a fourth, still launching at 100 s
    b.advance(110.0)
    seen = [
        Observed(str(i.id), i.pool, i.ready_at > b.now(), i.ready_at)
        for i in b.instances
        if i.ended_at is None
    ]
    want = reconcile({KEYS[0]: 2}, seen, b.now())
    got = b.converge({KEYS[0]: 2})
    assert got == want and [a.instance_id for a in got] == ["3", "2"]
    assert b.converge({KEYS[0]: 2}) == []
    assert [i.end_reason for i in b.instances] == [None, None, "retired", "retired"]
    with pytest.raises(KeyError, match="unknown pool"):
        b.converge({"m5.large/on_demand": 1})
