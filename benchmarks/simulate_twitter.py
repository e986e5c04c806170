"""Replay the 22-day twitter trace through every policy; print the table, wall time, peak memory
and the issue's targets. Usage: python benchmarks/simulate_twitter.py [--json] [--duration 2d]"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hybridserve.config import load_scenario  # noqa: E402
from simulations.report import compare, format_table  # noqa: E402
from simulations.traces import load_trace  # noqa: E402

TRACE = ROOT.parent / "shared" / "traces" / "twitter-2021-08.per-second.txt.gz"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--duration", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not Path(args.trace).exists():
        print(f"trace not found: {args.trace} (it lives in ../shared/traces)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    trace = load_trace(args.trace, duration=args.duration)
    load_s = time.perf_counter() - t0
    sc = load_scenario()
    t1 = time.perf_counter()
    cmp = compare(trace, sc)
    wall = time.perf_counter() - t1
    # policies replay in worker processes: the peak is the largest of this process and any worker
    peak_mb = (
        max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
        / 1024
    )
    r = {x.policy: x for x in cmp.results}
    floor = r["oracle"].cost_lower_bound_usd
    target = sc.slo.target
    checks = {
        "six policies <= 120 s wall": wall <= 120,
        "peak RSS <= 2048 MB": peak_mb <= 2048,
        "hybrid <= 1.15x oracle cost": r["hybrid"].cost_usd <= 1.15 * r["oracle"].cost_usd,
        "hybrid meets the SLO target": r["hybrid"].slo_attainment >= target,
        "no policy meeting the SLO below the cost floor": all(
            x.cost_usd >= floor for x in cmp.results if x.slo_attainment >= target
        ),
        "floor <= exact optimum <= oracle (0.5% replay slack)": cmp.optimum is not None
        and floor <= cmp.optimum.cost_usd <= 1.005 * r["oracle"].cost_usd,
        "hybrid <= 0.6x lambda-only": r["hybrid"].cost_usd <= 0.6 * r["lambda-only"].cost_usd,
        "hybrid cheaper than reactive": r["hybrid"].cost_usd < r["reactive"].cost_usd,
        "hybrid attainment > reactive": r["hybrid"].slo_attainment > r["reactive"].slo_attainment,
    }
    if args.json:
        out = cmp.as_json() | {
            "wall_s": round(wall, 2),
            "load_s": round(load_s, 2),
            "peak_rss_mb": round(peak_mb, 1),
            "targets": checks,
        }
        print(json.dumps(out, indent=2))
    else:
        print(format_table(cmp))
        print()
        print(
            f"trace load {load_s:.1f} s; six policies {wall:.1f} s wall; peak RSS {peak_mb:.0f} MB"
        )
        print(
            f"hybrid / oracle = {r['hybrid'].cost_usd / r['oracle'].cost_usd:.3f}; "
            f"hybrid / lambda-only = {r['hybrid'].cost_usd / r['lambda-only'].cost_usd:.3f}; "
            f"oracle / floor = {r['oracle'].cost_usd / floor:.3f}"
        )
        if cmp.optimum is not None:
            opt = cmp.optimum.cost_usd
            print(
                f"floor ${floor:,.2f} <= optimum ${opt:,.2f} <= oracle "
                f"${r['oracle'].cost_usd:,.2f}; hybrid ${r['hybrid'].cost_usd:,.2f} = "
                f"{r['hybrid'].cost_usd / opt:.3f}x the optimum, oracle "
                f"{r['oracle'].cost_usd / opt:.3f}x"
            )
        for k, ok in checks.items():
            print(f"  [{'PASS' if ok else 'FAIL'}] {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
