"""Replay a multi-model trace through the multi-model controller (or a baseline) and bill it.

The control loop runs first on the simulated clock, as `replay.control_pass` does for one
model (the first interval stands in for the history before the trace, and the fleet it plans
starts warm); the data plane then replays the arrivals through the placement timeline
(`multi_dataplane`). `hybrid-per-model` is today's product run once per model: the single-model
`hybrid` policy on each model's own trace, each with its own fleet and Lambda function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hybridserve.config import Scenario
from hybridserve.multimodel.controller import MODES, MultiController
from hybridserve.multimodel.spec import ModelFleet
from hybridserve.multimodel.table import ModelTable, build_table, scenario_for
from simulations.multi_backend import SimPlacementBackend
from simulations.multi_dataplane import replay_multi

POLICIES = (*MODES, "hybrid-per-model")


@dataclass
class MultiResult:
    policy: str
    cost_usd: float
    ec2_usd: float
    lambda_usd: float
    requests: float
    met: float
    slo_target: float
    lambda_fraction: float
    instance_hours: float
    loads: int = 0
    evictions: int = 0
    decisions: int = 0
    solves: int = 0  # decisions that re-planned (the others kept the standing plan)
    plan_s_mean: float = 0.0
    plan_s_max: float = 0.0
    forecast_s_mean: float = 0.0
    forecaster_fallbacks: int = 0
    planner_fallbacks: int = 0
    sim_wall_s: float = 0.0
    models: list[dict] = field(default_factory=list)
    variant_timeline: list[dict] = field(default_factory=list)  # per family, on each change

    @property
    def slo_attainment(self) -> float:
        return self.met / self.requests if self.requests else 1.0

    def as_json(self) -> dict:
        return {
            "policy": self.policy,
            "cost_usd": round(self.cost_usd, 4),
            "ec2_usd": round(self.ec2_usd, 4),
            "lambda_usd": round(self.lambda_usd, 4),
            "requests": int(round(self.requests)),
            "slo_attainment": round(self.slo_attainment, 6),
            "target_met": bool(self.slo_attainment >= self.slo_target),
            "lambda_fraction": round(self.lambda_fraction, 6),
            "instance_hours": round(self.instance_hours, 3),
            "loads": self.loads,
            "evictions": self.evictions,
            "decisions": self.decisions,
            "solves": self.solves,
            "plan_s_mean": round(self.plan_s_mean, 5),
            "plan_s_max": round(self.plan_s_max, 5),
            "forecast_s_mean": round(self.forecast_s_mean, 5),
            "forecaster_fallbacks": self.forecaster_fallbacks,
            "planner_fallbacks": self.planner_fallbacks,
            "sim_wall_s": round(self.sim_wall_s, 3),
            "models": self.models,
            "variant_timeline": self.variant_timeline,
        }


def pinned(fleet: ModelFleet, variant: str) -> ModelFleet:
    """Every model pinned to `variant` (the fixed-variant baselines); its floor is the
    variant's own accuracy, so pinning the reference is always allowed."""
    models = []
    for m in fleet.models:
        acc = fleet.families[m.family].variants[variant].accuracy
        models.append(
            m.model_copy(update={"variant": variant, "accuracy_floor": min(acc, fleet.floor(m))})
        )
    return fleet.model_copy(update={"models": models})


def _model_rows(table: ModelTable, names: list[str], totals) -> list[dict]:
    rows = []
    for m, t in enumerate(totals):
        served = sum(t.served_by.values()) or 1.0
        mix: dict[str, float] = {}
        for (c, where), v in t.served_by.items():
            key = f"{table.choices[c].variant}@{where}"
            mix[key] = mix.get(key, 0.0) + v / served
        rows.append(
            {
                "model": names[m],
                "requests": int(round(t.requests)),
                "slo_attainment": round(float(t.met / t.requests), 6) if t.requests else 1.0,
                "cost_usd": round(t.cost_usd, 5),
                "lambda_fraction": round(t.spilled / t.requests, 6) if t.requests else 0.0,
                "variant_mix": {k: round(v, 4) for k, v in sorted(mix.items()) if v > 0},
            }
        )
    return rows


def run_multi(
    counts: np.ndarray,
    names: list[str],
    sc: Scenario,
    fleet: ModelFleet,
    policy: str,
    *,
    pools: list[str] | None = None,
    forecaster: str = "linear",
    progress=None,
) -> MultiResult:
    """Replay `counts` (models, seconds) under `policy` (`POLICIES`). `pools` restricts the
    hardware (a baseline on fixed hardware); pin variants with `pinned(fleet, v)`."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r}: choose one of {', '.join(POLICIES)}")
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] != len(fleet.models):
        raise ValueError(
            f"counts: expected shape (models={len(fleet.models)}, seconds), got {counts.shape}"
        )
    t0 = time.perf_counter()
    table = build_table(sc, fleet, pools=pools)
    if policy == "hybrid-per-model":
        return _hybrid_per_model(counts, names, sc, table, t0)
    dt = sc.control_interval_s
    backend = SimPlacementBackend(table)
    pop_pool = int(np.argmin([p.usd_per_request for p in table.pools]))
    ctl = MultiController(
        table, backend, interval_s=dt, horizon_steps=sc.horizon_steps, mode=policy,  # type: ignore[arg-type]
        forecaster=forecaster, popularity_pool=pop_pool,
    )  # fmt: skip
    n = counts.shape[1]
    plan_s, fc_s = [], []
    # warm start: the first interval stands in for the history, and its fleet is up at 0
    timeline: list[dict] = []
    d = ctl.step(counts[:, :dt], 0.0)
    _note_variants(timeline, d, table)
    backend.make_ready(0.0)
    plan_s.append(d.plan_s)
    fc_s.append(d.forecast_s)
    for k in range(1, -(-n // dt)):
        t = k * dt
        d = ctl.step(counts[:, t - dt : t], float(t))
        _note_variants(timeline, d, table)
        if d.solved:  # the planning time judged: a solve's (a reused plan costs nothing)
            plan_s.append(d.plan_s)
        fc_s.append(d.forecast_s)
        if progress is not None:
            progress(dt)
    totals, fleet_figs = replay_multi(counts, backend, table)
    lam = sum(t.lambda_usd for t in totals)
    req = float(counts.sum())
    return MultiResult(
        policy=policy,
        cost_usd=fleet_figs["ec2_usd"] + lam,
        ec2_usd=fleet_figs["ec2_usd"],
        lambda_usd=lam,
        requests=req,
        met=sum(t.met for t in totals),
        slo_target=sc.slo.target,
        lambda_fraction=sum(t.spilled for t in totals) / req if req else 0.0,
        instance_hours=fleet_figs["instance_hours"],
        loads=backend.loads,
        evictions=backend.evictions,
        decisions=len(fc_s),
        solves=len(plan_s),
        plan_s_mean=float(np.mean(plan_s)) if plan_s else 0.0,
        plan_s_max=float(np.max(plan_s)) if plan_s else 0.0,
        forecast_s_mean=float(np.mean(fc_s)),
        forecaster_fallbacks=ctl.forecaster_fallbacks,
        planner_fallbacks=ctl.planner_fallbacks,
        sim_wall_s=time.perf_counter() - t0,
        models=_model_rows(table, names, totals),
        variant_timeline=timeline,
    )


def _note_variants(timeline: list[dict], d, table: ModelTable) -> None:
    """Append, per family, how many of its models each variant serves on the fleet whenever
    that changes (what model-less choice picked, and when)."""
    if not d.solved:
        return
    per: dict[str, dict[str, int]] = {f: {} for f in table.fleet.families}
    for sh in d.plan.shards:
        for _, c in sh.members:
            ch = table.choices[c]
            per[ch.family][ch.variant] = per[ch.family].get(ch.variant, 0) + 1
    for fam, mix in per.items():
        last = next((e for e in reversed(timeline) if e["family"] == fam), None)
        if last is None or last["fleet"] != mix:
            timeline.append({"time_s": d.time_s, "family": fam, "fleet": dict(sorted(mix.items()))})


def _hybrid_per_model(counts, names, sc, table: ModelTable, t0: float) -> MultiResult:
    """Today's product once per model: `hybrid` on the model's trace, in its Lambda choice's
    variant (the pinned one for a pinned fleet), on the table's pools."""
    from simulations.replay import run_policy
    from simulations.traces import Trace

    keys = {p.key for p in table.pools}
    rows, cost, ec2, lam, met, spilled, hours = [], 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    fb = pfb = 0
    for m, name in enumerate(names):
        c = table.choices[int(table.lambda_choice[m])]
        vsc = scenario_for(sc, table.fleet.families[c.family].variants[c.variant].profile)
        if keys != {p.key for p in vsc.pools}:
            vsc = scenario_for(
                sc.model_copy(update={"instance_types": sorted({k.split("/")[0] for k in keys})}),
                table.fleet.families[c.family].variants[c.variant].profile,
            )
        r = run_policy(Trace(name, counts[m].astype(np.int64)), vsc, "hybrid", keep_timeline=False)
        n_req = r.requests
        b = r.cost_breakdown
        cost += r.cost_usd
        e = sum(v for k, v in b.items() if k.startswith("ec2"))
        ec2 += e
        lam += r.cost_usd - e
        met += r.slo_attainment * n_req
        spilled += r.lambda_fraction * n_req
        hours += sum(r.instance_hours.values())
        fb += r.forecaster_fallbacks
        pfb += r.planner_fallbacks
        rows.append(
            {
                "model": name,
                "requests": int(n_req),
                "slo_attainment": round(r.slo_attainment, 6),
                "cost_usd": round(r.cost_usd, 5),
                "lambda_fraction": round(r.lambda_fraction, 6),
                "variant_mix": {c.variant: 1.0},
            }
        )
    req = float(counts.sum())
    return MultiResult(
        policy="hybrid-per-model", cost_usd=cost, ec2_usd=ec2, lambda_usd=lam, requests=req,
        met=met, slo_target=sc.slo.target, lambda_fraction=spilled / req if req else 0.0,
        instance_hours=hours, forecaster_fallbacks=fb, planner_fallbacks=pfb,
        sim_wall_s=time.perf_counter() - t0, models=rows,
    )  # fmt: skip
