"""The cost floor: valid against brute force on small cases, never under the one-line bound."""

from __future__ import annotations

import numpy as np
import pytest

from hybridserve.config import load_scenario
from simulations.bounds import (
    cost_floor,
    cost_lower_bound,
    fleet_levels,
    lambda_floor_usd,
    piece_seconds,
)
from tests.schedules import best_schedule_cost

ONE_POOL = load_scenario(None, instance_types=["c5.large"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_floor_is_below_every_schedule_found_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    sc = ONE_POOL
    steps = 4
    rate = rng.choice([20.0, 90.0, 150.0, 260.0], size=steps)
    counts = rng.poisson(np.repeat(rate, sc.control_interval_s))
    counts[rng.integers(0, len(counts), 5)] += rng.integers(50, 400, 5)  # bursts inside steps
    best = best_schedule_cost(counts, sc, steps)
    assert np.isfinite(best)  # some schedule meets the SLO: the case means something
    floor = cost_lower_bound(counts, sc)
    assert 0 < floor <= best
    # and tight enough to mean something: within a factor of the best schedule here
    assert floor >= 0.5 * best


@pytest.mark.parametrize("mean", [5.0, 64.0, 400.0])
def test_floor_is_at_least_the_one_line_bound(mean):
    sc = load_scenario()
    rng = np.random.default_rng(int(mean))
    counts = rng.poisson(mean * (1.0 + 0.8 * np.sin(np.arange(4 * 3600) / 900.0)).clip(0))
    f = cost_floor(counts, sc)
    c = min(min(p.price_usd_s / p.capacity_rps for p in sc.pools), lambda_floor_usd(sc))
    one_line = sc.slo.target * counts.sum() * c
    assert f.one_line_usd == pytest.approx(one_line)
    # less at most the one backlog a fleet may hold at the trace's end
    slack = c * sc.slo.latency_s * float(fleet_levels(sc.pools, counts.max()).rps[-1])
    assert f.usd >= one_line - slack


def test_the_queue_is_credited_once_not_every_second():
    """Constant load 1.2x one instance: the old floor let one instance serve it all (queue slack
    every second); now the excess must be paid for, by Lambda or a second instance."""
    sc = ONE_POOL
    pool = sc.pools[0]
    counts = np.full(3600, int(1.2 * pool.capacity_rps))
    f = cost_lower_bound(counts, sc)
    one_instance = pool.price_usd_s * 3600
    excess = counts.sum() - pool.capacity_rps * 3600
    cheapest_excess = excess * min(lambda_floor_usd(sc), pool.usd_per_request)
    assert f >= one_instance + 0.9 * cheapest_excess


def test_levels_are_the_pareto_frontier_of_integer_fleets():
    sc = load_scenario()
    lv = fleet_levels(sc.pools, 500.0)
    assert lv.rps[0] == 0 and lv.usd_s[0] == 0
    assert np.all(np.diff(lv.rps) > 0) and np.all(np.diff(lv.usd_s) > 0)
    c5 = next(p for p in sc.pools if p.key == "c5.large/on_demand")
    assert np.any(np.isclose(lv.rps, 3 * c5.capacity_rps))
    # every fleet of 500 req/s or more is one level, at the price of the cheapest of them
    # (six c5.large) and the capacity that price buys at the cheapest price per capacity
    assert lv.usd_s[-1] == pytest.approx(6 * c5.price_usd_s)
    assert lv.rps[-1] == pytest.approx(6 * c5.price_usd_s / c5.usd_per_request)
    # bucketing merges into cheaper, larger levels: never above the exact frontier
    few = fleet_levels(sc.pools, 500.0, max_levels=3)
    # (the last level of each stands for every fleet that serves all: it covers any capacity)
    covers = np.append(few.rps[:-1], np.inf)
    for usd, rps in zip(lv.usd_s, lv.rps, strict=True):
        assert np.min(few.usd_s[covers >= rps - 1e-9]) <= usd + 1e-15


def test_pieces_follow_interval_and_launch_delay_and_shrink_with_spot():
    sc = load_scenario()
    assert piece_seconds(sc) == 30  # gcd(60 s interval, 90 s launch delay)
    spot = load_scenario(None, markets=["on_demand", "spot"])
    assert piece_seconds(spot) == 1


def test_empty_trace_costs_nothing():
    assert cost_lower_bound(np.zeros(120, dtype=int), load_scenario()) == 0.0
