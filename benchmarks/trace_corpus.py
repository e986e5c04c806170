"""The controller with its defaults over a corpus of traces nobody tuned it for.

Runs `hybrid`, `mark`, `oracle`, `lambda-only` and `static-peak` over every trace in
../shared/traces (native, and scaled up to one instance's capacity when much lighter) and the
seeded synthetic families of `simulations.corpus`, under the default scenario. One row per
trace: hybrid / oracle, hybrid / lambda-only, hybrid / static-peak, hybrid's SLO attainment and
Lambda share, the fallbacks its forecaster and planner took, and the slowest policy's
trace-seconds per wall second (each replay runs on one core: BLAS threads are pinned to 1),
twice: the whole replay in a worker that has already imported what the policies load lazily
(`trace_s_per_wall_s`), and net of the forecaster's training (`steady_trace_s_per_wall_s`).
Training is a one-off that does not grow with the trace: mark's LSTM trains once, 3-5 s here,
when two days of history are in; on a 2-day trace that is half of mark's wall time, on the
58-day trace the issue names a few percent. Then the worst row and the targets, PASS/FAIL:

- no replay crashes;
- hybrid meets the SLO target on every trace;
- hybrid <= 1.15x the oracle on every real trace, <= 1.25x on any trace;
- hybrid <= lambda-only and <= static-peak, within the tolerance (5% + $0.001), on any trace;
- >= 40,000 trace-seconds per wall second per policy, net of one-off costs (imports, training),
  on traces of a day or more (shorter ones are dominated by the first fits of the statistical
  models); both rates are reported for every row;
- the bounds hold: the cost floor is below every schedule meeting the SLO, and the exact offline
  optimum (`simulations/optimum.py`, marked * where it is only a single-pool schedule) is no
  dearer than the receding-horizon oracle. Each row gives floor, optimum, oracle and hybrid in
  USD, and hybrid and the oracle over the optimum.

Usage: python benchmarks/trace_corpus.py [--json] [--traces DIR] [--workers N] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # one core per replay, as the target says (set before numpy loads)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POLICIES = ("hybrid", "mark", "oracle", "lambda-only", "static-peak")
OPTIMUM = "optimum"  # not a policy: the exact offline optimum, replayed like one
# the optimum is exact in its model; the replay adds cold starts and the backlog carried across a
# change of fleet, which the model prices at a constant fleet (measured: within 0.3%)
OPTIMUM_SLACK = 0.005
# What "no dearer than" allows for noise (relative, absolute $). Measured: where one instance
# runs near Lambda's break-even utilisation (the first 6 h of syn-weekly), lambda-only,
# static-peak and even the oracle lie within a few percent of each other, and hybrid's cost
# over the better of the two ranges from 0.96x to 1.04x across six seeds of the same family:
# arrival noise, not a planner error.
TOLERANCE = (0.05, 0.001)
RATE_TARGET = 40_000.0
LONG_S = 86_400  # the speed target applies to traces at least this long


def _warm_imports() -> None:
    """Import in each worker what the policies import lazily (torch for the LSTM, statsmodels
    for SARIMAX and Holt-Winters), so that no replay's time includes a one-off import."""
    import statsmodels.tsa.holtwinters  # noqa: F401
    import statsmodels.tsa.statespace.sarimax  # noqa: F401

    from hybridserve.forecast.torch_support import has_torch
    from simulations import replay  # noqa: F401

    if has_torch():
        import torch  # noqa: F401


def _replay(entry_index: int, policy: str, traces_dir: str | None) -> dict:
    """One (trace, policy) replay in a worker process; errors are returned, not raised. The
    pseudo-policy `optimum` is the exact offline optimum, and brings the cost floor with it."""
    from hybridserve.config import load_scenario
    from simulations.bounds import cost_lower_bound
    from simulations.corpus import corpus
    from simulations.optimum import optimum
    from simulations.replay import run_policy

    sc = load_scenario()
    entry = corpus(traces_dir, min(p.capacity_rps for p in sc.pools))[entry_index]
    t0 = time.perf_counter()
    extra = {}
    try:
        trace = entry.make()
        if policy == OPTIMUM:
            r, _, exact = optimum(trace, sc)
            extra = {"exact": exact, "floor": cost_lower_bound(trace.counts, sc)}
        else:
            r = run_policy(trace, sc, policy, keep_timeline=False)
    except Exception as e:  # a crash is a finding: report it in the row
        return {"policy": policy, "error": f"{type(e).__name__}: {e}"}
    wall = time.perf_counter() - t0
    return extra | {
        "policy": policy,
        "seconds": trace.seconds,
        "cost": r.cost_usd,
        "attainment": r.slo_attainment,
        "lambda_fraction": r.lambda_fraction,
        "forecaster_fallbacks": r.forecaster_fallbacks,
        "planner_fallbacks": r.planner_fallbacks,
        "wall_s": wall,
        "training_s": r.training_s,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (1.0 if a <= 0 else float("inf"))


def _row(name: str, real: bool, res: dict[str, dict], target: float) -> dict:
    errors = {p: r["error"] for p, r in res.items() if "error" in r}
    if errors:
        return {"trace": name, "real": real, "errors": errors}
    h = res["hybrid"]
    opt = res[OPTIMUM]
    pol = {p: r for p, r in res.items() if p != OPTIMUM}
    rates = {p: r["seconds"] / max(r["wall_s"], 1e-9) for p, r in pol.items()}
    steady = {p: r["seconds"] / max(r["wall_s"] - r["training_s"], 1e-9) for p, r in pol.items()}
    meeting = [r["cost"] for r in pol.values() if r["attainment"] >= target]
    return {
        "trace": name,
        "real": real,
        "hybrid_over_oracle": round(_ratio(h["cost"], res["oracle"]["cost"]), 4),
        "hybrid_over_lambda_only": round(_ratio(h["cost"], res["lambda-only"]["cost"]), 4),
        "slo_attainment": round(h["attainment"], 6),
        "target_met": bool(h["attainment"] >= target),
        "lambda_fraction": round(h["lambda_fraction"], 4),
        "forecaster_fallbacks": int(h["forecaster_fallbacks"]),
        "planner_fallbacks": int(h["planner_fallbacks"]),
        "trace_s_per_wall_s": round(min(rates.values())),
        "steady_trace_s_per_wall_s": round(min(steady.values())),
        "training_s": round(sum(r["training_s"] for r in res.values()), 2),
        # not in the key list, used for the targets and the table
        "_hybrid_over_static": round(_ratio(h["cost"], res["static-peak"]["cost"]), 4),
        "_seconds": h["seconds"],
        "_costs": {p: round(r["cost"], 4) for p, r in res.items()},
        "floor_usd": round(opt["floor"], 4),
        "optimum_usd": round(opt["cost"], 4),
        "optimum_exact": bool(opt["exact"]),
        "oracle_usd": round(res["oracle"]["cost"], 4),
        "hybrid_usd": round(h["cost"], 4),
        "hybrid_over_optimum": round(_ratio(h["cost"], opt["cost"]), 4),
        "oracle_over_optimum": round(_ratio(res["oracle"]["cost"], opt["cost"]), 4),
        "_floor_ok": all(c >= opt["floor"] * (1 - 1e-9) for c in meeting + [opt["cost"]]),
        "_optimum_ok": opt["cost"] <= res["oracle"]["cost"] * (1 + OPTIMUM_SLACK) + 1e-6
        or not opt["exact"],
        "_rates": {p: round(v) for p, v in rates.items()},
        "_steady": {p: round(v) for p, v in steady.items()},
    }


def _dearer(a: float, b: float) -> bool:
    rel, absolute = TOLERANCE
    return a > b * (1 + rel) + absolute


def targets(rows: list[dict]) -> dict[str, dict]:
    ok = [r for r in rows if "errors" not in r]
    long_rows = [r for r in ok if r["_seconds"] >= LONG_S]
    dearer = [
        r["trace"]
        for r in ok
        if _dearer(r["_costs"]["hybrid"], r["_costs"]["lambda-only"])
        or _dearer(r["_costs"]["hybrid"], r["_costs"]["static-peak"])
    ]
    real_ratio = max((r["hybrid_over_oracle"] for r in ok if r["real"]), default=1.0)
    any_ratio = max((r["hybrid_over_oracle"] for r in ok), default=1.0)
    slowest = min((r["steady_trace_s_per_wall_s"] for r in long_rows), default=RATE_TARGET)
    return {
        "no_crash": {
            "value": [r["trace"] for r in rows if "errors" in r],
            "pass": len(ok) == len(rows),
        },
        "floor_below_every_schedule_meeting_the_slo": {
            "value": [r["trace"] for r in ok if not r["_floor_ok"]],
            "pass": all(r["_floor_ok"] for r in ok),
        },
        "exact_optimum_no_dearer_than_the_oracle": {
            "value": [r["trace"] for r in ok if not r["_optimum_ok"]],
            "pass": all(r["_optimum_ok"] for r in ok),
        },
        "slo_met_everywhere": {
            "value": [r["trace"] for r in ok if not r["target_met"]],
            "pass": all(r["target_met"] for r in ok),
        },
        "hybrid_over_oracle_real_le_1.15": {"value": real_ratio, "pass": real_ratio <= 1.15},
        "hybrid_over_oracle_any_le_1.25": {"value": any_ratio, "pass": any_ratio <= 1.25},
        "hybrid_no_dearer_than_lambda_only_or_static_peak": {"value": dearer, "pass": not dearer},
        "steady_trace_s_per_wall_s_ge_40000_on_traces_of_a_day": {
            "value": slowest,
            "pass": slowest >= RATE_TARGET,
        },
    }


def public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def table(rows: list[dict]) -> str:
    head = (
        f"{'trace':<38} {'real':>4} {'h/orac':>7} {'h/lamb':>7} {'h/stat':>7} {'attain':>9} "
        f"{'SLO':>4} {'lambda':>7} {'fc fb':>6} {'pl fb':>6} {'trace-s/s':>10} {'steady':>8} "
        f"{'train s':>7} {'slowest':>11} {'floor $':>9} {'optim $':>9} {'oracle $':>9} "
        f"{'hybrid $':>9} {'h/opt':>6} {'o/opt':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "errors" in r:
            lines.append(f"{r['trace']:<38} CRASHED: {r['errors']}")
            continue
        slow = min(r["_steady"], key=r["_steady"].get)
        lines.append(
            f"{r['trace'][:38]:<38} {'yes' if r['real'] else 'no':>4} "
            f"{r['hybrid_over_oracle']:>7.3f} {r['hybrid_over_lambda_only']:>7.3f} "
            f"{r['_hybrid_over_static']:>7.3f} {r['slo_attainment'] * 100:>8.4f}% "
            f"{'met' if r['target_met'] else 'MISS':>4} {r['lambda_fraction'] * 100:>6.2f}% "
            f"{r['forecaster_fallbacks']:>6} {r['planner_fallbacks']:>6} "
            f"{r['trace_s_per_wall_s']:>10,} {r['steady_trace_s_per_wall_s']:>8,} "
            f"{r['training_s']:>7.1f} {slow:>11} {r['floor_usd']:>9.3f} "
            f"{r['optimum_usd']:>9.3f}{'' if r['optimum_exact'] else '*'} {r['oracle_usd']:>9.3f} "
            f"{r['hybrid_usd']:>9.3f} {r['hybrid_over_optimum']:>6.3f} "
            f"{r['oracle_over_optimum']:>6.3f}"
        )
    return "\n".join(lines)


def worst(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if "errors" not in r]
    return max(ok, key=lambda r: r["hybrid_over_oracle"], default=None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help='one JSON object {"rows": [...]}')
    ap.add_argument("--traces", default=str(ROOT.parent / "shared" / "traces"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", action="append", help="run only traces whose name contains this")
    args = ap.parse_args()
    from hybridserve.config import load_scenario
    from simulations.corpus import corpus

    sc = load_scenario()
    traces_dir = args.traces if Path(args.traces).is_dir() else None
    if traces_dir is None:
        print(f"no real traces at {args.traces}: synthetic families only", file=sys.stderr)
    entries = corpus(traces_dir, min(p.capacity_rps for p in sc.pools))
    chosen = [
        i for i, e in enumerate(entries) if not args.only or any(o in e.name for o in args.only)
    ]
    t0 = time.perf_counter()
    results: dict[int, dict[str, dict]] = {i: {} for i in chosen}
    # longest replays first so the pool stays busy to the end
    sizes = {i: entries[i].make().seconds for i in chosen}
    tasks = sorted(
        ((i, p) for i in chosen for p in (*POLICIES, OPTIMUM)), key=lambda t: -sizes[t[0]]
    )
    with ProcessPoolExecutor(max_workers=max(1, args.workers), initializer=_warm_imports) as pool:
        futs = {pool.submit(_replay, i, p, traces_dir): (i, p) for i, p in tasks}
        for fut, (i, p) in futs.items():
            results[i][p] = fut.result()
            print(f"  {entries[i].name} {p}: done", file=sys.stderr, flush=True)
    rows = [_row(entries[i].name, entries[i].real, results[i], sc.slo.target) for i in chosen]
    checks = targets(rows)
    if args.json:
        print(json.dumps({"rows": [public(r) for r in rows], "targets": checks}, indent=2))
        return 0
    print(
        f"corpus: {len(rows)} traces x {len(POLICIES)} policies, default scenario "
        f"(SLO {sc.slo.target:.0%} within {sc.slo.latency_ms:g} ms); "
        f"{time.perf_counter() - t0:.0f} s wall on {args.workers} worker(s)"
    )
    print(table(rows))
    w = worst(rows)
    if w is not None:
        print(f"worst row (hybrid / oracle): {w['trace']} {w['hybrid_over_oracle']:.3f}")
    print("targets")
    for k, v in checks.items():
        print(f"  [{'PASS' if v['pass'] else 'FAIL'}] {k}: {v['value']}")
    long_rows = [r for r in rows if "errors" not in r and r["_seconds"] >= LONG_S]
    if long_rows:
        e2e = min(long_rows, key=lambda r: r["trace_s_per_wall_s"])
        print(
            f"  (not judged) slowest replay with its training, traces of a day: "
            f"{e2e['trace_s_per_wall_s']:,} trace-s/s ({e2e['trace']}, "
            f"{min(e2e['_rates'], key=e2e['_rates'].get)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
