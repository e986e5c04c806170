"""The live benchmark's verdict and report: its targets judged PASS/FAIL from the router's
overhead and the deployment rows, and the printed tables (calibration, the deployments beside
the seed's rows, the router's overhead)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from live_calibration import print_calibration  # noqa: E402
from live_router import OTHERS_MAX_CORES  # noqa: E402

SEED_ROWS = [  # seeds/: DistilBERT (~256 MB), seconds
    {"deployment": "seed: AWS Lambda", "warm": (0.49, 0.53, 0.57), "first": 41.0, "steady": "79"},
    {"deployment": "seed: Cloud Run", "warm": (0.38, 0.46, 0.50), "first": 8.2, "steady": "33"},
    {
        "deployment": "seed: Kubernetes",
        "warm": (0.26, 0.28, 0.29),
        "first": 0.7,
        "steady": "105-315",
    },
]
# targets
ROUTER_ADDED_P99_MS = 2.0
ROUTER_CPU_MS = 1.0
ROUTER_CPU_VS_SERVER = 1.0
STEADY_MAX_S = 5.0
RSS_GROWTH_MB = 50.0


def judge_targets(args, over: dict | None, rows: list[dict]) -> list[tuple[str, str, bool]]:
    """(name, detail, passed) of every target the run measured; adds the router's CPU ratio to
    `over`."""
    targets = []
    if over is not None:
        ratio = over["router_cpu_ms_per_request"] / max(over["server_cpu_ms_per_request"], 1e-9)
        over["router_vs_server_cpu"] = round(ratio, 3)
        note = (
            ""
            if over["judged"]
            else (
                f"; not judged: {over['clean_pairs']} of {over['pairs']} run pairs had other jobs"
                f" under {OTHERS_MAX_CORES:g} cores"
            )
        )
        targets += [
            (f"router adds <= {ROUTER_ADDED_P99_MS:g} ms p99 at the calibrated load",
             f"(+{over['router_overhead_p99_ms']:.2f} ms at {over['rps']:g} req/s{note})",
             over["judged"] and over["router_overhead_p99_ms"] <= ROUTER_ADDED_P99_MS),
            (f"router CPU per request <= the model server's and <= {ROUTER_CPU_MS:g} ms",
             f"({over['router_cpu_ms_per_request'] * 1000:.0f} us, {ratio:.2f}x the server's)",
             ratio <= ROUTER_CPU_VS_SERVER and over["router_cpu_ms_per_request"] <= ROUTER_CPU_MS),
        ]  # fmt: skip
    if rows:
        hybrid = next(r for r in rows if r["deployment"] == "hybrid")
        steady = hybrid["steady_100qps_s"]
        targets.append(
            (f"hybrid steady from zero VMs in <= {STEADY_MAX_S:g} s at the calibrated ramp",
             f"({'never' if steady is None else f'{steady:.1f} s'} at {args.qps:g} req/s)",
             steady is not None and steady <= STEADY_MAX_S)
        )  # fmt: skip
    if over is not None:
        targets.append(
            (f"router RSS grows <= {RSS_GROWTH_MB:g} MB",
             f"({over['rss_growth_mb']:+.1f} MB over {over['rss_run_s']:.0f} s)",
             over["rss_growth_mb"] <= RSS_GROWTH_MB)
        )  # fmt: skip
    return targets


def print_report(
    args, calibration: dict, rows: list[dict], over: dict | None, targets: list
) -> None:
    """The human-readable report (what `--json` prints as one object instead)."""
    print()
    print_calibration(calibration)
    if rows:
        print(
            f"\nDistilBERT-sized int8, ramp {args.qps:g} req/s from zero (warm {args.warm_qps:g}),"
            f" SLO {args.slo_ms:g} ms"
        )
        print(
            f"{'deployment':<18} {'warm p50/p95/p99 s':>22} {'first resp s':>13} {'steady s':>9}"
            f" {'ramp attain':>12}"
        )
        for r in rows:
            warm = (
                f"{r['warm_p50_ms'] / 1e3:.3f}/{r['warm_p95_ms'] / 1e3:.3f}/"
                f"{r['warm_p99_ms'] / 1e3:.3f}"
            )
            steady = "never" if r["steady_100qps_s"] is None else f"{r['steady_100qps_s']:.1f}"
            first = "none" if r["first_response_s"] is None else f"{r['first_response_s']:.2f}"
            print(
                f"{r['deployment']:<18} {warm:>22} {first:>13} {steady:>9}"
                f" {r['ramp_attainment']:>12.2%}"
            )
        for s in SEED_ROWS:
            warm = "/".join(f"{x:.2f}" for x in s["warm"])
            print(f"{s['deployment']:<18} {warm:>22} {s['first']:>13} {s['steady']:>9}")
    if over is not None:
        print(
            f"\nrouter: p99 {over['router_p99_ms']:.2f} ms vs direct {over['direct_p99_ms']:.2f} ms"
            f" at {over['rps']:g} req/s ({over['router_overhead_p99_ms']:+.2f} ms p99, "
            f"{over['router_overhead_p50_ms']:+.2f} ms p50; median over "
            f"{over['clean_pairs'] if over['judged'] else over['pairs']} of {over['pairs']} run "
            f"pairs, added p99 per pair {over['pair_added_p99_ms']} ms, other jobs' cores per "
            f"pair {over['pair_others_cores']}), {over['router_rps']:.0f} req/s "
            f"achieved; CPU per request: router {over['router_cpu_ms_per_request'] * 1000:.0f} us"
            f", model server {over['server_cpu_ms_per_request'] * 1000:.0f} us, generator "
            f"{over['generator_cpu_ms_per_request'] * 1000:.0f} us ({over['cores_busy_ours']:g} "
            f"cores busy); RSS {over['rss_start_mb']:.0f} -> {over['rss_end_mb']:.0f} MB over "
            f"{over['rss_run_s']:.0f} s"
        )
    for name, detail, ok in targets:
        print(f"  {'PASS' if ok else 'FAIL'}  {name} {detail}")
