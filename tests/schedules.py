"""Brute force over fleet schedules, replayed and billed as the simulator does: the reference
the cost floor and the exact optimum are checked against on small cases."""

from __future__ import annotations

import itertools

import numpy as np

from hybridserve.backends import SimulatedBackend
from simulations import dataplane, lambda_plane
from simulations.replay import warm_rounds_for


def schedule_cost(
    counts: np.ndarray, sc, targets: tuple[int, ...], batching=None
) -> tuple[float, float]:
    """(bill, attainment) of one fleet schedule of the scenario's first pool, a target per
    control step: the simulated backend's launches and retirements, the fast data plane and
    the bills, with spill to Lambda and the keep-warm rounds planned over the schedule. `batching` (`lambda_plane.spill_batching(sc)`) is shared by
    the schedules of one brute force."""
    dt = sc.control_interval_s
    backend = SimulatedBackend(sc.pools, warm_start=True)
    key = sc.pools[0].key
    for k, n in enumerate(targets):
        backend.advance(k * dt)
        backend.converge({key: n} if n else {})
    pools = {p.key: p for p in sc.pools}
    rounds = warm_rounds_for(counts, backend.instances, sc)
    tot = dataplane.replay(counts, backend.instances, pools, sc, spill=True, batching=batching,
                           warm_rounds=rounds)  # fmt: skip
    ec2, _ = dataplane.ec2_bill(backend.instances, pools, float(len(counts)))
    warm = {"pings": tot.warm_pings, "ping_ms": tot.warm_ping_ms, "ping_cold": tot.ping_cold_starts}
    l_req, l_cmp = dataplane.lambda_bill(tot.lambda_served, tot.cold_starts, sc, **warm)
    return sum(ec2.values()) + l_req + l_cmp, tot.met / tot.requests


def best_schedule_cost(counts: np.ndarray, sc, steps: int, levels: int = 4) -> float:
    """The cheapest bill over every schedule of 0..levels-1 instances per step that meets the
    SLO target (inf when none does)."""
    batching = lambda_plane.spill_batching(sc)
    best = np.inf
    for targets in itertools.product(range(levels), repeat=steps):
        cost, attained = schedule_cost(counts, sc, targets, batching)
        if attained >= sc.slo.target:
            best = min(best, cost)
    return best
