"""Exact offline optimum: the cheapest integer fleet schedule over the whole trace, by dynamic
programming, replayed through the same data plane and bills as every policy.

The oracle is receding-horizon (the planner's MILP over 15 steps with perfect knowledge); this is
the best schedule of the whole trace under the same rules, so `hybrid / optimum` says how far a
policy is from the best it could be, and `oracle / optimum` what the finite horizon costs.

Model (what "exact" assumes):
- one pool, on-demand (spot interruptions are not modelled): the scenario's pools after the planners' exact pruning (dominated pools, and types
  that are integer multiples of another at no lower price: c5.xlarge is two c5.large). With the
  default catalog one remains. When several remain (spot beside on-demand, mixed prices per
  capacity), each is solved alone and the cheapest is reported, with `exact` False: an upper
  bound on the optimum, not the optimum;
- the controller acts at control instants: it launches instances (ready a launch delay later,
  billed from launch) or retires serving ones (billed to the instant); launches are not
  cancelled; at time 0 any fleet is already serving (the replay's warm start);
- per piece of g = gcd(interval, launch delay) seconds, the cost of n serving instances is the
  Lambda warm price of what the fluid data plane spills at a constant n (per-second spill from
  `dataplane.fleet_seconds`, the backlog carried along the trace at that n);
- fleets small enough for the state space (MAX_STATES per instant): a larger one is scheduled in
  blocks of instances, a feasible schedule reported as not exact;
- the 60 s minimum bill never binds when the launch delay or the control interval is at least
  60 s (an instance then lives at least that long); it is left out otherwise.

State at an instant: (instances serving, instances launched at each of the last P instants and
still not ready), P = ceil(delay / interval) - 1. Value iteration runs backwards over the
instants; the schedule it picks is then replayed, so cold starts, backlog carried across a
change of fleet and the per-second noise are billed as for any policy, with the keep-warm
rounds the controller's planner would send over that schedule (`replay.warm_rounds_for`).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np

from hybridserve.backends.simulated import SimInstance
from hybridserve.config import Pool, Scenario, lambda_usd_per_request
from hybridserve.planner.base import prune_dominated, prune_multiples
from simulations import dataplane
from simulations.replay import PolicyResult, replay_timeline, warm_rounds_for
from simulations.traces import Trace

MAX_STATES = 4096  # per instant; beyond, the DP would be slower than it is worth


@dataclass
class Schedule:
    pool: Pool
    objective_usd: float  # the DP's own cost (before the replay)
    launches: list[tuple[float, int]]  # (time s, instances)
    retires: list[tuple[float, int]]
    initial: int
    block: int = 1  # instances per DP unit: 1 is exact; more, a coarser (dearer) schedule


def spill_per_second(
    counts: np.ndarray, pool: Pool, sc: Scenario, n_max: int, block: int = 1
) -> np.ndarray:
    """Requests the fluid data plane spills each second at a constant fleet of n blocks of
    `block` instances, (n_max+1, T)."""
    a = np.asarray(counts, dtype=float)
    out = np.empty((n_max + 1, len(a)))
    out[0] = a
    slo = sc.slo.latency_s
    day = 86_400
    for n in range(1, n_max + 1):
        b = 0.0
        for s in range(0, len(a), day):
            x = a[s : s + day]
            ones = np.ones(len(x))
            mu = n * block * pool.capacity_rps * ones
            fs = dataplane.fleet_seconds(
                x, mu, mu * pool.latency_s, n * block * ones, slo, True, b, hist=None
            )
            out[n, s : s + day] = fs.spill
            b = float(fs.b_end[-1])
    return out


def _states(n_max: int, p: int) -> list[tuple[int, ...]]:
    """(serving, pending cohorts newest first) with at most n_max instances in all."""
    return [s for s in itertools.product(range(n_max + 1), repeat=p + 1) if sum(s) <= n_max]


def solve_pool(counts: np.ndarray, pool: Pool, sc: Scenario) -> Schedule:
    """The DP of the module docstring for one pool."""
    dt = sc.control_interval_s
    delay = int(round(pool.launch_delay_s))
    g = math.gcd(dt, delay) if delay else dt
    per = dt // g  # pieces per interval
    d_p = delay // g  # pieces from launch to ready
    p_cohorts = max(0, -(-delay // dt) - 1)
    a = np.asarray(counts, dtype=float)
    need = int(math.ceil(a.max(initial=0.0) / pool.capacity_rps)) + 1
    block = 1
    while len(_states(-(-need // block), p_cohorts)) > MAX_STATES:
        block += 1  # very large fleets: whole blocks of instances (a schedule, not the optimum)
    n_max = -(-need // block)
    price_s = pool.price_usd_s * block
    steps = -(-len(a) // dt)
    pad = steps * dt - len(a)
    spill = spill_per_second(np.concatenate([a, np.zeros(pad)]), pool, sc, n_max, block)
    c_l = lambda_usd_per_request(sc)
    s_cost = c_l * spill.reshape(n_max + 1, -1, g).sum(axis=2)  # (levels, pieces)
    live_s = np.minimum(np.maximum(len(a) - np.arange(steps * per) * g, 0), g)  # billed s/piece
    states = _states(n_max, p_cohorts)
    index = {s: i for i, s in enumerate(states)}

    # transitions: for each state and action (launch m >= 0 or retire r <= serving), the serving
    # count in each piece of the interval, the instances billed, and the next state
    src, act, nxt, billed, serve = [], [], [], [], []
    for si, s in enumerate(states):
        n, cohorts = s[0], s[1:]
        total = sum(s)
        for change in range(-n, n_max - total + 1):
            m = max(change, 0)
            n0 = n + min(change, 0)
            ready_at = [d_p - (i + 1) * per for i in range(len(cohorts))]  # piece offsets
            row = []
            for o in range(per):
                row.append(
                    n0
                    + sum(c for c, r in zip(cohorts, ready_at, strict=True) if r <= o)
                    + (m if d_p <= o else 0)
                )
            k_next = n0 + sum(c for c, r in zip(cohorts, ready_at, strict=True) if r <= per)
            k_next += m if d_p <= per else 0
            left = tuple(c for c, r in zip(cohorts, ready_at, strict=True) if r > per)
            new = ((m,) if d_p > per else ()) + left
            new = (new + (0,) * p_cohorts)[:p_cohorts]
            src.append(si)
            act.append(change)
            nxt.append(index[(k_next, *new)])
            billed.append(n0 + sum(cohorts) + m)
            serve.append(row)
    src_a, act_a, nxt_a = np.array(src), np.array(act), np.array(nxt)
    billed_a = np.array(billed, dtype=float)
    serve_a = np.array(serve)
    bounds = np.flatnonzero(np.diff(src_a, prepend=-1))  # pairs are grouped by state
    group = src_a  # states are numbered in the order their pairs were made
    cols = np.arange(per)

    value = np.zeros(len(states))
    choice = np.zeros((steps, len(states)), dtype=np.int32)
    for k in range(steps - 1, -1, -1):
        sl = slice(k * per, (k + 1) * per)
        ec2 = billed_a * price_s * float(live_s[sl].sum())
        lam = s_cost[:, sl][serve_a, cols[None, :]].sum(axis=1)
        total = ec2 + lam + value[nxt_a]
        best = np.minimum.reduceat(total, bounds)
        arg = _argmin_per_group(total, group, best)
        choice[k] = arg
        value = best
    # warm start: any fleet serving at once, nothing pending
    starts = [index[(n,) + (0,) * p_cohorts] for n in range(n_max + 1)]
    s0 = min(starts, key=lambda i: value[i])
    return _walk(pool, states, s0, choice, act_a, nxt_a, dt, float(value[s0]), block)


def _argmin_per_group(total: np.ndarray, group: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Index (into the pairs) of each group's minimum: the first pair reaching it."""
    hit = np.flatnonzero(total <= best[group])
    first = np.full(len(best), -1)
    g_hit = group[hit]
    keep = np.concatenate([[True], g_hit[1:] != g_hit[:-1]])
    first[g_hit[keep]] = hit[keep]
    return first


def _walk(pool, states, s0, choice, act, nxt, dt, objective, block) -> Schedule:
    launches, retires = [], []
    s = s0
    for k in range(choice.shape[0]):
        pair = choice[k, s]
        change = int(act[pair])
        if change > 0:
            launches.append((float(k * dt), change * block))
        elif change < 0:
            retires.append((float(k * dt), -change * block))
        s = int(nxt[pair])
    return Schedule(pool, objective, launches, retires, states[s0][0] * block, block)


def instances_of(schedule: Schedule) -> list[SimInstance]:
    """The schedule as instance lives, the simulated backend's record (retire the newest
    serving first; with per-second billing, which one does not change the bill)."""
    pool = schedule.pool
    live: list[SimInstance] = []
    out: list[SimInstance] = []
    for _ in range(schedule.initial):
        inst = SimInstance(len(out), pool.key, 0.0, 0.0)
        out.append(inst)
        live.append(inst)
    events = [(t, n) for t, n in schedule.launches] + [(t, -n) for t, n in schedule.retires]
    for t, n in sorted(events):
        if n > 0:
            for _ in range(n):
                inst = SimInstance(len(out), pool.key, t, t + pool.launch_delay_s)
                out.append(inst)
                live.append(inst)
        else:
            serving = sorted((i for i in live if i.ready_at <= t), key=lambda i: -i.ready_at)
            for inst in serving[:-n]:
                inst.ended_at, inst.end_reason = t, "retired"
                live.remove(inst)
    return out


def candidate_pools(sc: Scenario) -> list[Pool]:
    return prune_multiples(prune_dominated(sc.pools))


def optimum(trace: Trace, sc: Scenario) -> tuple[PolicyResult, Schedule, bool]:
    """The best schedule (exact when one pool remains after pruning), replayed and billed."""
    t0 = time.perf_counter()
    pools = candidate_pools(sc)
    best = None
    for pool in pools:
        sched = solve_pool(trace.counts, pool, sc)
        if best is None or sched.objective_usd < best.objective_usd:
            best = sched
    assert best is not None
    insts = instances_of(best)
    rounds = warm_rounds_for(trace.counts, insts, sc)  # keep-warm as the controller plans it
    result = replay_timeline(trace, sc, "optimum", insts, spill=True, warm_rounds=rounds)
    result.sim_wall_s = time.perf_counter() - t0
    # spot interruptions are not in the model: a spot schedule is a bound, not the optimum
    exact = len(pools) == 1 and pools[0].market == "on_demand" and best.block == 1
    return result, best, exact
