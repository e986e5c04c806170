"""The router's cost in two source trees, measured in one run: before and after a change.

Each round runs `live_hybrid.py --only router` once in each tree (order alternating, so slow
drift of a shared host falls on both), at the same fixed load, and the medians are compared.
Use it for a change on the request path, e.g. a metrics library:

    git worktree add /tmp/before HEAD~1
    python benchmarks/router_ab.py --before /tmp/before --after . --rps 1000 --rounds 3

Prints one row per run and the medians; `--json` prints one object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

KEYS = ("router_overhead_p99_ms", "router_overhead_p50_ms", "router_cpu_ms_per_request")


def run_once(tree: Path, rps: float, seconds: float, pairs: int) -> dict:
    """One `--only router` run with the tree's own code (its benchmark, its package)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(tree / "benchmarks" / "live_hybrid.py"), "--only", "router",
           "--json", "--overhead-rps", str(rps), "--overhead-s", str(seconds),
           "--overhead-pairs", str(pairs), "--rss-minutes", "0.1"]  # fmt: skip
    p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"{tree}: exit {p.returncode}: {p.stderr[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])["router"]
    return {k: r[k] for k in (*KEYS, "clean_pairs", "pairs", "direct_p99_ms")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, type=Path)
    ap.add_argument("--after", required=True, type=Path)
    ap.add_argument("--rps", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each direct/router run")
    ap.add_argument("--pairs", type=int, default=3, help="direct/router pairs per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(args.rounds):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        for name in order:
            r = run_once(getattr(args, name).resolve(), args.rps, args.seconds, args.pairs)
            runs[name].append(r)
            print(f"round {i} {name:6s} {r}", file=sys.stderr)
    med = {n: {k: float(np.median([r[k] for r in rs])) for k in KEYS} for n, rs in runs.items()}
    out = {"rps": args.rps, "rounds": args.rounds, "median": med, "runs": runs}
    if args.json:
        print(json.dumps(out))
        return
    print(f"router at {args.rps:g} req/s, {args.rounds} rounds, medians:")
    for k in KEYS:
        b, a = med["before"][k], med["after"][k]
        print(f"  {k:28s} before {b:8.3f}  after {a:8.3f}  ({a - b:+.3f})")


if __name__ == "__main__":
    main()
