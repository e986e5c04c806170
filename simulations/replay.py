"""Trace replay: drive the real Controller on a simulated clock, then the data plane.

The Controller acts on arrivals only (what the router measures), never on the data plane's
outcome, so the control pass runs first over the whole trace and records every instance's life in
the simulated backend; the data plane then replays the arrivals through that timeline in
vectorised day-sized chunks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from hybridserve.backends import SimulatedBackend
from hybridserve.config import Scenario
from hybridserve.policies import build_controller
from simulations import dataplane
from simulations.traces import Trace


@dataclass
class Timeline:
    """Per control interval: arrivals, mean fleet capacity (req/s), spilled and SLO-met requests."""

    interval_s: int
    arrivals: np.ndarray
    capacity_rps: np.ndarray
    spilled: np.ndarray
    met: np.ndarray
    fleet_size: np.ndarray


@dataclass
class PolicyResult:
    policy: str
    cost_usd: float
    cost_breakdown: dict[str, float]
    requests: int
    slo_attainment: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    lambda_fraction: float
    instance_hours: dict[str, float]
    cold_starts: int
    sim_wall_s: float
    cost_lower_bound_usd: float | None = None
    throttled: int = 0
    plans_solved: int | None = None
    forecaster_fallbacks: int = 0  # steps the forecast came from a fallback of the chain
    planner_fallbacks: int = 0  # decisions the primary planner could not take
    training_s: float = 0.0  # of sim_wall_s, what the forecaster spent training
    timeline: Timeline | None = field(default=None, repr=False)
    instances: list = field(default_factory=list, repr=False)
    spill: bool = False  # may the router send requests to Lambda (the policy's)?
    warm_pings: int = 0  # keep-warm pings the controller sent
    ping_cold_starts: int = 0  # containers they started
    keep_warm_usd: float = 0.0  # of the bill, the pings and the containers they started
    warm_rounds: list = field(default_factory=list, repr=False)  # (time s, pings) per round
    # per control interval, the forecast mean (req/s) the controller planned it with
    forecast_rps: np.ndarray | None = field(default=None, repr=False)

    def as_json(self) -> dict:
        def num(x: float) -> float | None:
            return None if x is None or not np.isfinite(x) else round(float(x), 6)

        return {
            "policy": self.policy,
            "cost_usd": round(self.cost_usd, 4),
            "cost_lower_bound_usd": None
            if self.cost_lower_bound_usd is None
            else round(self.cost_lower_bound_usd, 4),
            "cost_breakdown": {k: round(v, 4) for k, v in self.cost_breakdown.items()},
            "requests": self.requests,
            "slo_attainment": round(self.slo_attainment, 6),
            "latency_p50_ms": num(self.latency_p50_ms),
            "latency_p95_ms": num(self.latency_p95_ms),
            "latency_p99_ms": num(self.latency_p99_ms),
            "lambda_fraction": round(self.lambda_fraction, 6),
            "instance_hours": {k: round(v, 3) for k, v in sorted(self.instance_hours.items())},
            "cold_starts": self.cold_starts,
            "warm_pings": self.warm_pings,
            "ping_cold_starts": self.ping_cold_starts,
            "keep_warm_usd": round(self.keep_warm_usd, 4),
            "forecaster_fallbacks": self.forecaster_fallbacks,
            "planner_fallbacks": self.planner_fallbacks,
            "sim_wall_s": round(self.sim_wall_s, 3),
            "training_s": round(self.training_s, 3),
        }


def control_pass(
    trace: Trace,
    sc: Scenario,
    policy: str,
    *,
    seed: int = 0,
    forecaster: str | None = None,
    progress=None,
    forecasts: list[float] | None = None,
    warm_rounds: list[tuple[float, int]] | None = None,
):
    """Run the Controller over the trace; returns (backend with the instance timeline, spec, fleet sizes).

    `forecasts`, when given, receives per interval the forecast mean the interval was planned
    with (the decision before it: the warm start's for the first); `warm_rounds` the keep-warm
    rounds the decisions sent, (time s, pings)."""
    counts = trace.counts
    dt = sc.control_interval_s
    pools = sc.pools
    backend = SimulatedBackend(pools, spot=sc.spot, seed=seed, warm_start=True)
    ctl, spec = build_controller(policy, sc, backend, forecaster=forecaster, hindsight=counts)
    n_steps = -(-len(counts) // dt)
    sizes = np.zeros(n_steps, dtype=np.int32)
    # warm start: the first interval stands in for the history before the trace
    d = ctl.step(_interval(counts, 0, dt))
    if ctl.keep_warm is not None:  # ... and its fleet served then: keep warm what spilled past it
        first = _interval(counts, 0, dt)
        warm, pings = ctl.decide_keep_warm(first, backend.observe(), 0.0, fresh=True)
        d = replace(d, keep_warm=warm, warm_pings=pings)
    for k in range(n_steps):
        if forecasts is not None:
            forecasts.append(float(d.inputs.forecast.mean[0]))
        if warm_rounds is not None and d.warm_pings:
            warm_rounds.append((d.time_s, d.warm_pings))
        sizes[k] = sum(s.total for s in backend.observe().pools.values())
        backend.advance(min((k + 1) * dt, len(counts)), on_notice=ctl.on_notice)
        d = ctl.step(_interval(counts, k, dt))
        if progress is not None and (k + 1) % 1440 == 0:
            progress(1440 * dt)
    if progress is not None:
        progress(len(counts) - (n_steps // 1440) * 1440 * dt)
    return backend, spec, sizes


def _interval(counts: np.ndarray, k: int, dt: int) -> np.ndarray:
    seg = counts[k * dt : (k + 1) * dt]
    return seg if len(seg) else np.zeros(1)


def run_policy(
    trace: Trace,
    sc: Scenario,
    policy: str,
    *,
    seed: int = 0,
    forecaster: str | None = None,
    progress=None,
    keep_timeline: bool = True,
) -> PolicyResult:
    """Replay `trace` under `policy`: cost, attainment, latency and Lambda figures."""
    t0 = time.perf_counter()
    forecasts: list[float] = []
    rounds: list[tuple[float, int]] = []
    backend, spec, sizes = control_pass(
        trace, sc, policy, seed=seed, forecaster=forecaster, progress=progress,
        forecasts=forecasts, warm_rounds=rounds,
    )  # fmt: skip
    planner = spec.planner
    r = replay_timeline(
        trace,
        sc,
        policy,
        backend.instances,
        spill=spec.spill,
        progress=progress,
        sizes=sizes if keep_timeline else None,
        warm_rounds=rounds,
    )
    r.sim_wall_s = time.perf_counter() - t0
    r.plans_solved = getattr(planner, "solves", None)
    r.forecaster_fallbacks = spec.forecaster_fallbacks
    r.planner_fallbacks = spec.planner_fallbacks
    r.training_s = spec.training_s
    r.forecast_rps = np.asarray(forecasts)
    return r


def replay_timeline(
    trace: Trace,
    sc: Scenario,
    name: str,
    instances: list,
    *,
    spill: bool,
    progress=None,
    sizes: np.ndarray | None = None,
    warm_rounds: list[tuple[float, int]] | None = None,
) -> PolicyResult:
    """Replay the arrivals through a fixed instance timeline and bill it: what every policy and
    the exact optimum are measured by. `sizes` (fleet size per interval) keeps the timeline;
    `warm_rounds` are the keep-warm rounds, (time s, pings)."""
    t0 = time.perf_counter()
    pools = {p.key: p for p in sc.pools}
    tot = dataplane.replay(
        trace.counts, instances, pools, sc, spill=spill, progress=progress, warm_rounds=warm_rounds
    )
    ec2, hours = dataplane.ec2_bill(instances, pools, float(len(trace.counts)))
    warm = {"pings": tot.warm_pings, "ping_ms": tot.warm_ping_ms, "ping_cold": tot.ping_cold_starts}
    l_req, l_cmp = dataplane.lambda_bill(tot.lambda_served, tot.cold_starts, sc, **warm)
    breakdown = {
        "ec2_on_demand": ec2["on_demand"],
        "ec2_spot": ec2["spot"],
        "lambda_requests": l_req,
        "lambda_compute": l_cmp,
    }
    timeline = None
    if sizes is not None:
        timeline = Timeline(
            interval_s=sc.control_interval_s,
            arrivals=np.concatenate(tot.interval_arrivals),
            capacity_rps=np.concatenate(tot.interval_capacity),
            spilled=np.concatenate(tot.interval_spill),
            met=np.concatenate(tot.interval_met),
            fleet_size=sizes,
        )
    return PolicyResult(
        policy=name,
        cost_usd=sum(breakdown.values()),
        cost_breakdown=breakdown,
        requests=int(trace.requests),
        slo_attainment=tot.met / tot.requests if tot.requests else 1.0,
        latency_p50_ms=tot.hist.percentile(50) * 1000,
        latency_p95_ms=tot.hist.percentile(95) * 1000,
        latency_p99_ms=tot.hist.percentile(99) * 1000,
        lambda_fraction=tot.spilled / tot.requests if tot.requests else 0.0,
        instance_hours=hours,
        cold_starts=int(round(tot.cold_starts)),
        throttled=int(round(tot.throttled)),
        sim_wall_s=time.perf_counter() - t0,
        timeline=timeline,
        instances=instances,
        spill=spill,
        warm_pings=int(round(tot.warm_pings)),
        ping_cold_starts=int(round(tot.ping_cold_starts)),
        keep_warm_usd=sum(dataplane.lambda_bill(0.0, 0.0, sc, **warm)),
        warm_rounds=list(warm_rounds or ()),
    )


def warm_rounds_for(counts: np.ndarray, instances: list, sc: Scenario) -> list[tuple[float, int]]:
    """The keep-warm rounds a controller would send over a fixed instance timeline (the exact
    optimum's, a brute force's): the same `KeepWarmPlanner` at each control instant, given the
    interval's arrivals and the capacity ready as the controller observes it (before its own
    launches and retirements of that instant; at 0, the warm start's fleet, as `control_pass`)."""
    from hybridserve.policies import keep_warm_planner

    planner = keep_warm_planner(sc)
    pools = {p.key: p for p in sc.pools}
    ready_at = np.array([i.ready_at for i in instances], dtype=float)
    gone = np.array([np.inf if i.gone_at() is None else i.gone_at() for i in instances])
    cap = np.array([pools[i.pool].capacity_rps for i in instances], dtype=float)
    dt = sc.control_interval_s
    rounds = []
    for k in range(-(-len(counts) // dt) or 1):
        now = float(k * dt)
        serving = (ready_at <= now) & ((gone > now) if k == 0 else (gone >= now))
        seg = _interval(counts, max(k - 1, 0), dt)  # at 0: the warm start's first interval
        _, pings = planner.decide(seg, float(cap[serving].sum()), now)
        if pings:
            rounds.append((now, pings))
    return rounds
