"""What spot saves at the same attainment: the hybrid policy on the twitter trace with its fleet on
on-demand only, on on-demand and spot, and on spot only, spot interrupted as the Spot Instance
Advisor's bands say (hybridserve/data/spot-advisor-us-east-1.yaml, each type at the middle of its
band), then at the top of each band, with correlated pool reclaims, at the old single rate
(0.005 per hour, 97% a month) and at ten times that (a stress test of the notice path) as
sensitivities.

Savings against on-demand count only where both runs meet the SLO target: a cheaper run that
misses it is no saving at the same attainment.

Usage: python benchmarks/spot_savings.py [--days N] [--scale X] [--json] [--trace PATH] [--seed S]
Without the trace (../shared/traces), it runs the embedded synthetic trace (--days, default 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hybridserve.config import load_scenario  # noqa: E402
from simulations.replay import run_policy  # noqa: E402
from simulations.synthetic import synthetic_trace  # noqa: E402
from simulations.traces import Trace, load_trace  # noqa: E402

TRACE = ROOT.parent / "shared" / "traces" / "twitter-2021-08.per-second.txt.gz"
POLICY = "hybrid"

# (name, markets, spot options); the first is the on-demand baseline the others are priced against
RUNS: list[tuple[str, list[str], dict[str, Any]]] = [
    ("on-demand", ["on_demand"], {}),
    ("on-demand + spot (advisor, mid band)", ["on_demand", "spot"], {}),
    ("spot only (advisor, mid band)", ["spot"], {}),
    ("on-demand + spot (advisor, high band)", ["on_demand", "spot"], {"band_position": "high"}),
    ("spot only (advisor, high band)", ["spot"], {"band_position": "high"}),
    (
        "spot only (high band, correlation 0.5)",
        ["spot"],
        {"band_position": "high", "correlation": 0.5},
    ),
    ("spot only (rate 0.005/h, the old default)", ["spot"], {"interruptions_per_hour": 0.005}),
    # a stress test of the notice path, ten times the old default: not a rate AWS publishes
    ("spot only (stress: 0.05/h)", ["spot"], {"interruptions_per_hour": 0.05}),
]


def load(args: argparse.Namespace) -> tuple[Trace, str]:
    if Path(args.trace).exists():
        duration = None if args.days is None else args.days * 86400
        trace = load_trace(args.trace, duration=duration, rate_scale=args.scale)
        return trace, Path(args.trace).name
    days = 2.0 if args.days is None else args.days
    print(
        f"trace not found: {args.trace} (it lives in ../shared/traces); "
        f"running the embedded synthetic trace ({days:g} days)",
        file=sys.stderr,
    )
    trace = synthetic_trace(days=days, seed=args.seed).scaled(args.scale)
    return trace, f"synthetic ({days:g} d)"


def run_one(trace: Trace, markets: list[str], spot: dict[str, Any], seed: int) -> dict[str, Any]:
    sc = load_scenario(None, markets=markets, spot=spot or None)
    t0 = time.perf_counter()
    r = run_policy(trace, sc, POLICY, seed=seed, keep_timeline=False)
    lost = [i for i in r.instances if i.end_reason == "spot-interruption"]
    spot_h = sum(
        (min(i.ended_at, len(trace.counts)) if i.ended_at is not None else len(trace.counts))
        - i.launched_at
        for i in r.instances
        if i.pool.endswith("/spot")
    )
    return {
        "markets": markets,
        "spot": dict(sc.spot.model_dump(exclude_defaults=True)) if "spot" in markets else None,
        "interruptions": sc.spot.interruptions if "spot" in markets else None,
        "cost_usd": round(r.cost_usd, 2),
        "cost_breakdown": {k: round(v, 2) for k, v in r.cost_breakdown.items()},
        "slo_attainment": round(r.slo_attainment, 5),
        "target_met": r.slo_attainment >= sc.slo.target,
        "spot_interruptions": len(lost),
        "spot_instance_hours": round(spot_h / 3600.0, 1),
        "lambda_fraction": round(r.lambda_fraction, 5),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--days", type=float, default=None, help="replay the first N days")
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the load (a larger service: more instances, more of them interrupted)",
    )
    ap.add_argument("--seed", type=int, default=0, help="the interruption draws' seed")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.days is not None and args.days <= 0:
        ap.error("--days must be > 0")
    if args.scale <= 0:
        ap.error("--scale must be > 0")
    trace, name = load(args)
    target = load_scenario().slo.target
    runs: dict[str, dict[str, Any]] = {}
    for label, markets, spot in RUNS:
        runs[label] = run_one(trace, markets, spot, args.seed)
        if not args.json:
            print(f"  ran {label}: {runs[label]['wall_s']} s", file=sys.stderr)
    base = runs[RUNS[0][0]]
    for r in runs.values():
        r["savings_vs_on_demand"] = (
            round(1.0 - r["cost_usd"] / base["cost_usd"], 4)
            if r["target_met"] and base["target_met"] and base["cost_usd"] > 0
            else None  # not at the same attainment: no saving to claim
        )
    out = {
        "trace": name,
        "days": round(len(trace.counts) / 86400, 2),
        "policy": POLICY,
        "slo_target": target,
        "scale": args.scale,
        "seed": args.seed,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"{name} x{args.scale:g}, {out['days']} days, policy {POLICY}, "
        f"SLO target {target:.2%}, seed {args.seed}"
    )
    head = f"{'run':44} {'cost $':>9} {'attain':>8} {'met':>4} {'interr':>6} {'spot h':>8} {'saving':>7}"
    print(head)
    print("-" * len(head))
    for label, r in runs.items():
        saving = "-" if r["savings_vs_on_demand"] is None else f"{r['savings_vs_on_demand']:.1%}"
        if label == RUNS[0][0]:
            saving = "(base)"
        print(
            f"{label:44} {r['cost_usd']:9.2f} {r['slo_attainment']:8.4%} "
            f"{'yes' if r['target_met'] else 'NO':>4} {r['spot_interruptions']:6d} "
            f"{r['spot_instance_hours']:8.1f} {saving:>7}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
