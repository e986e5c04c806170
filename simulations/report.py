"""Run several policies on one trace and present the results (table, JSON, timeline CSV)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass

from hybridserve.config import Scenario
from hybridserve.policies import POLICIES
from simulations.bounds import cost_lower_bound
from simulations.optimum import optimum
from simulations.processes import process_pool
from simulations.replay import PolicyResult, run_policy
from simulations.traces import Trace

OPTIMUM = "optimum"


@dataclass
class Comparison:
    trace: Trace
    scenario: Scenario
    results: list[PolicyResult]
    # the exact offline optimum (simulations/optimum.py), beside the oracle; `optimum_exact`
    # False where the model's assumptions do not hold and it is only a schedule (an upper bound)
    optimum: PolicyResult | None = None
    optimum_exact: bool = False

    def as_json(self) -> dict:
        out = {
            "trace": {
                "name": self.trace.name,
                "seconds": self.trace.seconds,
                "requests": self.trace.requests,
            },
            "slo": {"latency_ms": self.scenario.slo.latency_ms, "target": self.scenario.slo.target},
            "results": [r.as_json() for r in self.results],
        }
        if self.optimum is not None:
            out["optimum"] = self.optimum.as_json() | {"exact": self.optimum_exact}
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_json(), indent=2, allow_nan=False)

    def by_policy(self, name: str) -> PolicyResult | None:
        return next((r for r in self.results if r.policy == name), None)


def _run_one(
    trace: Trace, sc: Scenario, name: str, seed: int, forecaster: str | None
) -> tuple[PolicyResult, bool]:
    if name == OPTIMUM:
        r, _, exact = optimum(trace, sc)
        return r, exact
    r = run_policy(trace, sc, name, seed=seed, forecaster=forecaster)
    if name == "oracle":
        r.cost_lower_bound_usd = cost_lower_bound(trace.counts, sc)
    return r, True


def compare(
    trace: Trace,
    sc: Scenario,
    policies: Sequence[str] = tuple(POLICIES),
    *,
    seed: int = 0,
    forecaster: str | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> Comparison:
    """Replay the trace under each policy (in parallel processes, one per core by default; each
    replay is independent and deterministic); with the oracle come the cost floor and the exact
    optimum, so the oracle's and every policy's distance from the best is measured."""
    names = list(policies)
    jobs = names + ([OPTIMUM] if "oracle" in names else [])
    n = min(len(jobs), workers or os.cpu_count() or 1)
    per_policy = 2 * trace.seconds
    done: dict[str, tuple[PolicyResult, bool]] = {}
    if n <= 1:
        for name in jobs:
            done[name] = _run_one(trace, sc, name, seed, forecaster)
            if progress is not None and name != OPTIMUM:
                progress(per_policy)
        return _assemble(trace, sc, names, done)
    # slowest first, so the pool is not left waiting on one long replay at the end
    order = sorted(jobs, key=lambda p: -_COST_RANK.get(p, 0))
    with process_pool(n) as pool:
        futs = {pool.submit(_run_one, trace, sc, p, seed, forecaster): p for p in order}
        for f in as_completed(futs):
            done[futs[f]] = f.result()
            if progress is not None and futs[f] != OPTIMUM:
                progress(per_policy)
    return _assemble(trace, sc, names, done)


def _assemble(
    trace: Trace, sc: Scenario, names: list[str], done: dict[str, tuple[PolicyResult, bool]]
) -> Comparison:
    opt = done.get(OPTIMUM)
    return Comparison(
        trace,
        sc,
        [done[p][0] for p in names],
        optimum=None if opt is None else opt[0],
        optimum_exact=bool(opt and opt[1]),
    )


_COST_RANK = {"hybrid": 5, "oracle": 4, "mark": 3}


def _ms(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "inf"
    return f"{x:,.0f}" if x >= 1000 else f"{x:.1f}"


def format_table(cmp: Comparison) -> str:
    """Human table: one row per policy, with cost relative to the oracle when it ran."""
    sc = cmp.scenario
    oracle = cmp.by_policy("oracle")
    head = (
        f"trace {cmp.trace.name}: {cmp.trace.seconds:,} s, {cmp.trace.requests:,} requests, "
        f"mean {cmp.trace.mean_rate:.1f}/s, peak {cmp.trace.peak}/s   "
        f"SLO: {sc.slo.target:.1%} within {sc.slo.latency_ms:g} ms"
    )
    cols = [
        "policy",
        "cost $",
        "x oracle",
        "attain",
        "SLO",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "lambda",
        "cold",
        "inst-h",
        "wall s",
    ]
    rows = []
    for r in cmp.results:
        rel = f"{r.cost_usd / oracle.cost_usd:.3f}" if oracle and oracle.cost_usd > 0 else "-"
        rows.append(
            [
                r.policy,
                f"{r.cost_usd:,.2f}",
                rel,
                f"{r.slo_attainment:.4%}",
                "met" if r.slo_attainment >= sc.slo.target else "MISSED",
                _ms(r.latency_p50_ms),
                _ms(r.latency_p95_ms),
                _ms(r.latency_p99_ms),
                f"{r.lambda_fraction:.2%}",
                f"{r.cold_starts:,}",
                f"{sum(r.instance_hours.values()):,.0f}",
                f"{r.sim_wall_s:.1f}",
            ]
        )
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cols, widths, strict=True))
    )
    out = [head, "", line, "-" * len(line)]
    for row in rows:
        out.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    out += _bounds_lines(cmp)
    return "\n".join(out)


def _bounds_lines(cmp: Comparison) -> list[str]:
    """Floor, exact optimum, oracle and each policy against the optimum."""
    oracle, opt = cmp.by_policy("oracle"), cmp.optimum
    out = []
    if oracle and oracle.cost_lower_bound_usd is not None:
        out += [
            "",
            f"cost floor (Lagrangian bound, integer fleets): ${oracle.cost_lower_bound_usd:,.2f}"
            " - no schedule meeting the SLO target costs less",
        ]
    if opt is not None and opt.cost_usd > 0:
        kind = "exact offline optimum" if cmp.optimum_exact else "best single-pool schedule"
        out.append(
            f"{kind} (DP over the whole trace): ${opt.cost_usd:,.2f}, "
            f"attainment {opt.slo_attainment:.4%}"
        )
        rel = ", ".join(
            f"{r.policy} {r.cost_usd / opt.cost_usd:.3f}x"
            for r in cmp.results
            if r.slo_attainment >= cmp.scenario.slo.target
        )
        if rel:
            out.append(f"against it (policies meeting the SLO): {rel}")
    return out


def write_timeline(cmp: Comparison, path: str) -> None:
    """Per control interval and policy: arrivals, capacity, spill, SLO-met requests, fleet size."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "policy",
                "interval",
                "start_s",
                "arrivals",
                "capacity_rps",
                "spilled",
                "met",
                "fleet_size",
            ]
        )
        for r in cmp.results:
            tl = r.timeline
            if tl is None:
                continue
            for k in range(len(tl.arrivals)):
                size = int(tl.fleet_size[k]) if k < len(tl.fleet_size) else 0
                w.writerow(
                    [
                        r.policy,
                        k,
                        k * tl.interval_s,
                        int(round(tl.arrivals[k])),
                        round(float(tl.capacity_rps[k]), 3),
                        round(float(tl.spilled[k]), 3),
                        round(float(tl.met[k]), 3),
                        size,
                    ]
                )
