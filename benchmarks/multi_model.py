"""Many models on one fleet: packing and model-less variant choice against one fleet per model.

Two multi-model traces of 50 models: the seeded Zipf synthetic trace (`synthetic_multi`:
independent diurnal phases, per-model flash crowds, models that appear and disappear) and a
composition of the real traces in ../shared/traces (slices at different offsets as different
models, Zipf-scaled; skipped without the folder). The fleet is `--models` (default: the
embedded fleet-default.yaml, whose family file holds variants measured here). Per trace:

- `hybrid-per-model fp32`: today's product, the single-model hybrid policy once per model, fp32
  (the baseline of `packing_saving`);
- `per-model fp32 fixed`: one fleet per model, fp32, on the one pool cheapest per fp32 request
  (the baseline of `modelless_saving`); `per-model model-less`: the same with the planner
  choosing variant and hardware per model;
- `joint fp32` (packing alone), `joint` (packing and model-less choice), `popularity fp32`
  (greedy packing by popularity) and `lambda-only`.

packing_saving = 1 - joint fp32 / hybrid-per-model fp32; modelless_saving = 1 - per-model
model-less / per-model fp32 fixed (each the least over the traces); min_accuracy_margin: the
least accuracy over its floor of any variant that served; plan_s_per_decision: the mean time
of a joint solve on 50 models (the most over the traces; `plan_s_max` the slowest one). The
greedy packer's gap to the exact set-partitioning MILP on small seeded cases is printed too.

Usage: python benchmarks/multi_model.py [--json] [--days D] [--workers N] [--models FLEET]
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
    os.environ[var] = "1"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRACES = ROOT.parent / "shared" / "traces"
N_MODELS = 50
TARGETS = {"packing_saving": 0.30, "modelless_saving": 0.20, "plan_s_per_decision": 1.0}
# (label, policy, pin fp32, fixed pool)
RUNS = (
    ("hybrid-per-model fp32", "hybrid-per-model", True, False),
    ("per-model fp32 fixed", "per-model", True, True),
    ("per-model model-less", "per-model", False, False),
    ("joint fp32", "joint", True, False),
    ("joint", "joint", False, False),
    ("popularity fp32", "popularity", True, False),
    ("lambda-only", "lambda-only", False, False),
)


def _fleet(path: str | None):
    from hybridserve.cli.simulate_models import default_fleet_path
    from hybridserve.multimodel.spec import load_model_fleet

    return load_model_fleet(path or default_fleet_path())


def _traces(days: float, seed: int, names: list[str]):
    from simulations.multitrace import MultiTrace, compose_real, synthetic_multi

    out = [synthetic_multi(N_MODELS, days, seed=seed)]
    paths = sorted(p for p in TRACES.glob("*") if p.is_file() and p.suffix != ".md")
    if paths:
        mt = compose_real(paths, N_MODELS, seconds=int(days * 86400), seed=seed, total_rps=200.0)
        # the composition names its models by source; the fleet's are by rank, as are these
        out.append(MultiTrace(f"real-composition-{N_MODELS}", tuple(names), mt.counts, mt.source))
    else:
        print(f"note: {TRACES} not found: the real-trace composition is skipped", file=sys.stderr)
    return out


def _fixed_pool(sc, fleet) -> str:
    from hybridserve.multimodel.table import build_table
    from simulations.multi_replay import pinned

    t = build_table(sc, pinned(fleet, "fp32"))
    c = t.model_choices[0][0]
    return t.pools[int(min(range(len(t.pools)), key=lambda p: t.s[c, p] * t.price[p]))].key


def _one(args):
    label, policy, pin, fixed, models_path, days, seed, trace_idx = args
    from hybridserve.config import load_scenario
    from simulations.multi_replay import pinned, run_multi
    from simulations.multi_report import accuracy_margin, align, variant_choice

    sc = load_scenario()
    fleet = _fleet(models_path)
    trace = _traces(days, seed, fleet.names)[trace_idx]
    fl = pinned(fleet, "fp32") if pin else fleet
    pools = [_fixed_pool(sc, fleet)] if fixed else None
    r = run_multi(align(trace, fleet.names), fleet.names, sc, fl, policy, pools=pools)
    return {
        "trace": trace.name,
        "label": label,
        "policy": label,
        "cost_usd": round(r.cost_usd, 4),
        "slo_attainment": round(r.slo_attainment, 6),
        "target_met": r.slo_attainment >= sc.slo.target,
        "lambda_fraction": round(r.lambda_fraction, 5),
        "instance_hours": round(r.instance_hours, 2),
        "loads": r.loads,
        "evictions": r.evictions,
        "solves": r.solves,
        "plan_s_mean": r.plan_s_mean,
        "plan_s_max": r.plan_s_max,
        "wall_s": round(r.sim_wall_s, 1),
        "variant_choice": variant_choice(r, fleet),
        "min_accuracy_margin": accuracy_margin(r, fleet),
        "pools": pools,
    }


def greedy_gap(models_path: str | None, n_cases: int = 40) -> dict:
    """The greedy packer against the exact MILP on small seeded cases of the default fleet's
    first family (3-6 models, both floors)."""
    import numpy as np

    from hybridserve.config import load_scenario
    from hybridserve.multimodel.exact import exact
    from hybridserve.multimodel.packing import ModelDemand, greedy
    from hybridserve.multimodel.spec import ModelFleet
    from hybridserve.multimodel.table import build_table

    sc = load_scenario()
    base = _fleet(models_path)
    rng = np.random.default_rng(7)
    gaps = []
    for _ in range(n_cases):
        n = int(rng.integers(3, 7))
        fl = ModelFleet.model_validate(
            {**base.model_dump(by_alias=True), "models": base.model_dump()["models"][:n]}
        )
        t = build_table(sc, fl)
        r = rng.uniform(0, 1, n) ** 3 * 60
        d = ModelDemand(r, np.sqrt(r + (0.2 * r) ** 2))
        gaps.append(greedy(t, d).objective_usd_s / exact(t, d).objective_usd_s - 1)
    g = np.array(gaps)
    return {"cases": n_cases, "median": float(np.median(g)), "mean": float(g.mean()),
            "max": float(g.max())}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--days", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--models", default=None, help="fleet YAML (default: fleet-default.yaml)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    fleet = _fleet(args.models)
    n_traces = len(_traces(min(args.days, 0.01), args.seed, fleet.names))
    jobs = [
        (label, pol, pin, fixed, args.models, args.days, args.seed, k)
        for k in range(n_traces)
        for label, pol, pin, fixed in RUNS
    ]
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        rows = list(pool.map(_one, jobs))
    gap = greedy_gap(args.models)
    by = {(r["trace"], r["label"]): r for r in rows}
    traces = list(dict.fromkeys(r["trace"] for r in rows))

    def saving(new: str, base: str) -> float:
        return min(1 - by[(t, new)]["cost_usd"] / by[(t, base)]["cost_usd"] for t in traces)

    summary = {
        "packing_saving": round(saving("joint fp32", "hybrid-per-model fp32"), 4),
        "modelless_saving": round(saving("per-model model-less", "per-model fp32 fixed"), 4),
        "combined_saving": round(saving("joint", "hybrid-per-model fp32"), 4),
        "min_accuracy_margin": round(
            min(
                r["min_accuracy_margin"]
                for r in rows
                if not r["label"].endswith("fp32") and r["label"] != "per-model fp32 fixed"
            ),
            4,
        ),  # fmt: skip
        "plan_s_per_decision": round(max(by[(t, "joint")]["plan_s_mean"] for t in traces), 4),
        "plan_s_max": round(max(by[(t, "joint")]["plan_s_max"] for t in traces), 4),
        "greedy_vs_exact": {k: round(v, 5) if isinstance(v, float) else v for k, v in gap.items()},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    attain_ok = all(
        by[(t, a)]["target_met"] and by[(t, b)]["target_met"]
        for t in traces
        for a, b in (("joint fp32", "hybrid-per-model fp32"),
                     ("per-model model-less", "per-model fp32 fixed"))
    )  # fmt: skip
    checks = {
        "packing_saving_ge_0.30": summary["packing_saving"] >= TARGETS["packing_saving"],
        "modelless_saving_ge_0.20": summary["modelless_saving"] >= TARGETS["modelless_saving"],
        "every_family_above_its_floor": summary["min_accuracy_margin"] >= 0,
        "plan_50_models_le_1s": summary["plan_s_max"] <= TARGETS["plan_s_per_decision"],
        "same_or_better_attainment": attain_ok,  # both meet the SLO target
    }
    if args.json:
        print(json.dumps({"rows": [{k: r[k] for k in ("trace", "policy", "cost_usd",
                                                        "slo_attainment")} for r in rows],
                          **summary, "targets": checks, "details": rows}, indent=2))  # fmt: skip
        return 0
    head = (
        f"{'trace':28s} {'policy':24s} {'cost $':>9s} {'attain':>9s} {'lambda':>7s} "
        f"{'inst-h':>7s} {'loads':>6s} {'evict':>6s} {'plan ms':>8s} {'wall s':>7s}  variants"
    )
    print(f"{N_MODELS} models, {args.days:g} day(s), seed {args.seed}; default scenario")
    print(head)
    print("-" * len(head))
    for r in rows:
        var = "; ".join(
            f"{f}: " + ", ".join(f"{v} {s:.0%}" for v, s in d.items())
            for f, d in r["variant_choice"].items()
        )
        print(
            f"{r['trace']:28s} {r['label']:24s} {r['cost_usd']:9.3f} {r['slo_attainment']:9.4%} "
            f"{r['lambda_fraction']:7.2%} {r['instance_hours']:7.1f} {r['loads']:6d} "
            f"{r['evictions']:6d} {r['plan_s_mean'] * 1e3:8.1f} {r['wall_s']:7.1f}  {var}"
        )
    print("")
    for k, v in summary.items():
        print(f"{k}: {v}")
    for k, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
