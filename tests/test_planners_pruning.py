"""Pool pruning before planning: dominated pools, pools that are whole multiples of another,
and the cheapest pool."""

from __future__ import annotations

from hybridserve.config import load_scenario
from hybridserve.planner.base import cheapest_pool, prune_dominated, prune_multiples
from tests.helpers_planners import pool

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
# pools that are whole multiples of another
# --------------------------------------------------------------------------------------------


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
