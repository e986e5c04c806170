"""The fast data plane against the per-request discrete-event mode, on the same fleet timelines.

Each row replays a window with a policy (the fast mode: `run_policy`), then sends every request
of the same window through the same instance timeline in `simulations.des` (Poisson arrival
times within each second, a FIFO queue per instance behind the predicted-latency router, the
router's Lambda buffer request by request, containers with keep-alive). It prints attainment,
p99, spill share and Lambda cold starts side by side: the windows of `tests/test_simulate.py`,
plus a VM-only overload on twitter.

Usage: python benchmarks/fast_vs_des.py [--json]
Rows on twitter are skipped when ../shared/traces is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hybridserve.config import load_scenario  # noqa: E402
from simulations.des import simulate_requests  # noqa: E402
from simulations.replay import run_policy  # noqa: E402
from simulations.synthetic import synthetic_trace  # noqa: E402
from simulations.traces import Trace, load_trace  # noqa: E402

TWITTER = ROOT.parent / "shared" / "traces" / "twitter-2021-08.per-second.txt.gz"

# (label, how to load the window, policies)
WINDOWS = [
    ("twitter day 3, 00:00-02:00", ("twitter", "3d"), ["hybrid", "oracle", "reactive"]),
    ("twitter day 10, 12:00-14:00", ("twitter", "10d12h"), ["reactive", "hybrid"]),
    ("synthetic, 6 h (seed 3)", ("synthetic", 0.25), ["reactive", "lambda-only", "hybrid"]),
]


def window(spec: tuple[str, object]) -> Trace | None:
    kind, arg = spec
    if kind == "synthetic":
        return synthetic_trace(days=float(arg), seed=3)
    if not TWITTER.exists():
        return None
    return load_trace(TWITTER, start=str(arg), duration="2h")


def row(label: str, trace: Trace, policy: str) -> dict:
    sc = load_scenario()
    pools = {p.key: p for p in sc.pools}
    r = run_policy(trace, sc, policy)
    d = simulate_requests(trace.counts, r.instances, pools, sc, spill=r.spill, seed=1,
                          warm_rounds=r.warm_rounds)  # fmt: skip
    return {
        "window": label,
        "policy": policy,
        "attainment": [r.slo_attainment, d.slo_attainment],
        "p99_ms": [r.latency_p99_ms, d.percentile_ms(99)],
        "spill": [r.lambda_fraction, d.spilled / d.requests if d.requests else 0.0],
        "cold_starts": [r.cold_starts, d.cold_starts],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    rows = []
    for label, spec, policies in WINDOWS:
        trace = window(spec)
        if trace is None:
            print(f"skipping {label}: {TWITTER} is absent", file=sys.stderr)
            continue
        rows.extend(row(label, trace, p) for p in policies)
    if args.json:
        print(json.dumps({"rows": rows}))
        return 0
    head = (
        f"{'window':28} {'policy':12} {'attain fast / DES':>21} {'p99 ms fast / DES':>21} "
        f"{'spill fast / DES':>17} {'cold fast / DES':>16}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        a, p, s, c = r["attainment"], r["p99_ms"], r["spill"], r["cold_starts"]
        print(
            f"{r['window']:28} {r['policy']:12} {a[0]:9.3%} / {a[1]:8.3%} "
            f"{p[0]:9.1f} / {p[1]:9.1f} {s[0]:7.2%} / {s[1]:7.2%} {c[0]:7d} / {c[1]:6d}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
