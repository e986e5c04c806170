"""The seed's serverless benchmark, reproduced locally: lambda-only, reactive (VMs only) and
hybrid.

Every load is sized from what this machine measures it can do, so the figures mean the same on
any CPU: a slower one gets a lower rate, not an overload.

Calibration, measured first and printed beside the results (the JSON's "calibration" object):

- cores: os.cpu_count(), the scheduler affinity, the load average before and after;
- model: the DistilBERT-sized int8 model's service time per batch size, measured now at the
  instances' thread count (wall p50 and process CPU per forward pass). It is written to a
  profile YAML that every `hybridserve serve` below plans and routes with, rather than a cached
  measurement taken under other conditions;
- nominal capacities from that profile: one instance (the planner's operating point: the batch
  of highest throughput within half the SLO), the Lambda emulator (its environments at the batch
  the spill buffer picks under heavy spill), their sum as if each had a core of its own, and
  the compute bound of these cores (cores / CPU per request at the instance batch);
- measured capacities: a closed-loop probe (each client sends its next request when the last
  one is answered, enough clients to fill every queue) of `hybridserve serve` with both
  instances up and Lambda warm ("fleet+Lambda"), and of Lambda alone. The model servers, the
  emulator's workers, the router and this load generator share the cores there exactly as in the
  benchmark, so it is what the machine sustains, not what its parts could do one core each.

The deployments are sized to the cores too: on AWS an instance and a Lambda environment each
bring their own CPU, so here the instances' threads plus the Lambda environments do not exceed
the cores (`--max-instances`, `--lambda-environments`; by default up to 2 of each, 1 instance
and 1 environment on 2 cores). More compute threads than cores would have a booting instance
slow down the Lambda environments it is meant to relieve, which no real deployment sees.

Each deployment of the model then starts from zero (no instance, no warm Lambda environment) as
a `hybridserve serve` process; an open-loop Poisson ramp starts at once at `--ramp-fraction`
(0.5) of the binding measured capacity: the smaller of the fleet+Lambda and Lambda-alone probes,
since lambda-only, and hybrid until its first instance is up, serve on Lambda alone
(`--ramp-basis fleet+lambda` takes the fleet+Lambda probe; `--qps` fixes the rate instead).
Half, because "steady" below allows no miss at all over 10 s while a model server boots on the
same cores, and on a slow CPU one forward pass is a quarter of the SLO (about 78 ms of 300 on
an AVX2-only EPYC). Reported per deployment, next to the seed's Lambda, Cloud Run and
Kubernetes rows:

- first response: from the first request's send to the first 200 answer;
- steady: the first moment after which every request sent over a 10 s window is answered 200
  within the SLO (the seed's "steady 100 qps", at the rate this machine can serve);
- warm p50/p95/p99: a low-rate phase after the ramp at `--warm-fraction` (0.1) of the same
  capacity (`--warm-qps` fixes it), every request served warm;
- attainment over the ramp, the ramp seconds with a miss, the answers by path, and CPU per
  answered request by process (router, model servers, emulator, Lambda workers, generator).

Then the router's own cost, against a no-op-sized model (the 16->4 MLP, `--max-delay-ms 0`),
called directly and through the router (`deployment: fixed`): `--overhead-pairs` (3) pairs of
open-loop runs, interleaved in alternating order, the added latency being the median of the
pairs' differences. A p99 of a few ms is decided by CPU contention, so each run also records
the cores other jobs on the machine used (/proc/stat minus our processes); the added p99 is
judged over the pairs where that stayed under 0.25 cores, and only with two such pairs (else
the target prints FAIL, "not judged"). Calibration: a closed-loop probe through the router gives its CPU per request
(user+sys of the router process from /proc/<pid>/stat over the requests answered), hence the
rate at which it would saturate one core; the load is `--overhead-fraction` (0.15) of that rate
(`--overhead-rps` fixes it). 0.15 because the original target's 1,000 req/s was 15% of that
rate on the machine it was set on (about 150 us of router CPU per request there). Reported: p99
and p50 through the router minus direct, CPU per request of the router, the model server and
the load generator at that load, and the router process's resident memory over `--rss-minutes`.

    python benchmarks/live_hybrid.py            # ~16 minutes
    python benchmarks/live_hybrid.py --quick    # ~6 minutes, shorter phases
    python benchmarks/live_hybrid.py --json

Targets (printed PASS/FAIL), all at the calibrated loads:
- the router adds at most 2 ms p99 at `--overhead-fraction` of its one-core saturation rate;
- the router spends at most as much CPU per request as the model server it fronts (the MLP
  server: both are the same Python HTTP stack on the same CPU, and the router, which parses one
  request and makes one upstream call, decodes no tensor and runs no model; the ratio, unlike
  an absolute CPU time, does not depend on the machine), and at most 1 ms (one core routes
  1,000 req/s, the original target's rate);
- hybrid is steady within 5 s from zero VMs;
- the router's RSS grows at most 50 MB over the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from live_calibration import (  # noqa: E402
    calibrate_deployments,
    calibrate_model,
    cpu_info,
    nominal_capacity,
    print_calibration,
)
from live_procs import (  # noqa: E402
    answers_by_path,
    cpu_by_component,
    machine_busy_s,
    round_or_none,
    self_cpu_s,
    start_serve,
    stop,
    tree_cpu,
)
from live_router import OTHERS_MAX_CORES, router_overhead  # noqa: E402

from hybridserve.loadgen import BenchResult, bench_sync, build_payload, poisson_schedule  # noqa: E402
from hybridserve.serve import (  # noqa: E402
    ServeConfig,
    ensure_artifact,
    load_serve_config,
)
from predictors.artifact import artifact_metadata  # noqa: E402

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
DEPLOYMENTS = ("lambda-only", "reactive", "hybrid")  # reactive: VMs only (was vm-only)
STEADY_WINDOW_S = 10.0
# targets
ROUTER_ADDED_P99_MS = 2.0
ROUTER_CPU_MS = 1.0
ROUTER_CPU_VS_SERVER = 1.0
STEADY_MAX_S = 5.0
RSS_GROWTH_MB = 50.0


# ------------------------------------------------------------------------ processes and /proc


# ------------------------------------------------------------------------------- metrics


def first_response_s(r: BenchResult) -> float | None:
    s = r.samples
    ok = s["status"] == 200
    if not ok.any():
        return None
    done = s["send_s"][ok] + s["latency_ms"][ok] / 1000.0
    return float(done.min() - s["send_s"][0])


def steady_s(r: BenchResult, slo_ms: float, window_s: float = STEADY_WINDOW_S) -> float | None:
    """Earliest t such that every request sent in [t, t + window) got a 200 within the SLO."""
    s = r.samples
    send, good = s["send_s"], (s["status"] == 200) & (s["latency_ms"] <= slo_ms)
    if send.size == 0:
        return None
    bad_times = send[~good]
    end = send[-1]
    # candidates: the start, and just after each bad request
    for t in np.concatenate([[send[0]], bad_times + 1e-6]):
        if t + window_s > end:
            return None
        if not ((bad_times >= t) & (bad_times < t + window_s)).any():
            return float(t - send[0])
    return None


def pct(r: BenchResult) -> tuple[float, float, float]:
    s = r.samples
    ok = s["latency_ms"][s["status"] == 200]
    if ok.size == 0:
        return (float("nan"),) * 3
    p = np.percentile(ok, [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


# ----------------------------------------------------------------------------- closed loop


# ----------------------------------------------------------------------------- calibration


# ------------------------------------------------------------------------------ deployments


def deployment_row(name: str, base: dict, body: bytes, args, work: Path) -> dict:
    cfg = {**base, "deployment": name}
    proc, url = start_serve(cfg, work, name)
    try:
        cpu0, self0, busy0 = tree_cpu(proc.pid), self_cpu_s(), machine_busy_s()
        ramp = bench_sync(url, poisson_schedule(args.qps, args.ramp_s, seed=1), body, timeout_s=30)
        cpu1, self1, busy1 = tree_cpu(proc.pid), self_cpu_s(), machine_busy_s()
        paths = answers_by_path(url)
        warm = bench_sync(
            url, poisson_schedule(args.warm_qps, args.warm_s, seed=2), body, timeout_s=30
        )
    finally:
        stop(proc)
    (work / f"ramp-{name}.json").write_text(json.dumps(ramp.to_dict()))
    p50, p95, p99 = pct(warm)
    s = ramp.samples
    good = (s["status"] == 200) & (s["latency_ms"] <= args.slo_ms)
    cpu = {("router" if k == "root" else k): v for k, v in cpu_by_component(cpu0, cpu1).items()}
    cpu["generator"] = self1 - self0
    n = max(int((s["status"] == 200).sum()), 1)
    span = max(busy1[1] - busy0[1], 1e-9)
    row = {
        "deployment": name,
        "warm_p50_ms": round(p50, 2),
        "warm_p95_ms": round(p95, 2),
        "warm_p99_ms": round(p99, 2),
        "first_response_s": round_or_none(first_response_s(ramp)),
        "steady_100qps_s": round_or_none(steady_s(ramp, args.slo_ms)),
        "ramp_errors": ramp.error_count,
        "ramp_attainment": round(float(np.mean(good)), 4),
        "ramp_bad_seconds": _ranges(np.unique(np.floor(s["send_s"][~good]).astype(int))),
        "ramp_answers": paths,
        "ramp_cpu_ms_per_request": {k: round(v / n * 1000.0, 2) for k, v in sorted(cpu.items())},
        "ramp_machine_busy": round((busy1[0] - busy0[0]) / span, 3),
        "ramp_send_lag_p99_ms": ramp.send_lag_ms.get("p99"),
        "warm_errors": warm.error_count,
    }
    print(f"  {name}: {row}", file=sys.stderr)
    return row


def _ranges(xs: np.ndarray) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8" (the seconds of the ramp that had a miss)."""
    out: list[str] = []
    for x in xs.tolist():
        if out and out[-1].split("-")[-1] == str(x - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{x}"
        else:
            out.append(str(x))
    return ",".join(out)


# --------------------------------------------------------------------------- router overhead


def deployment_sizing(
    cores: int, threads: int, instances: int | None, environments: int | None
) -> dict:
    """Instances and Lambda environments whose compute threads fit the cores (up to 2 each)."""
    lam = environments or max(1, min(2, cores // 2))
    inst = instances or max(1, min(2, (cores - lam) // max(threads, 1)))
    return {
        "max_instances": inst,
        "lambda_environments": lam,
        "compute_threads": inst * threads + lam,
        "cores": cores,
        "fixed": instances is not None or environments is not None,
    }


# ---------------------------------------------------------------------------------- report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qps", type=float, default=None, help="fixed ramp rate (default: sized)")
    ap.add_argument(
        "--ramp-fraction",
        type=float,
        default=0.5,
        help="ramp rate as a fraction of the measured capacity (--ramp-basis)",
    )
    ap.add_argument(
        "--ramp-basis",
        choices=("binding", "fleet+lambda"),
        default="binding",
        help="the capacity the ramp and warm rates are fractions of: the smaller of the "
        "fleet+Lambda and Lambda-alone probes (default), or fleet+Lambda",
    )
    ap.add_argument("--slo-ms", type=float, default=300.0)
    ap.add_argument("--ramp-s", type=float, default=60.0)
    ap.add_argument("--warm-qps", type=float, default=None, help="fixed warm-phase rate")
    ap.add_argument(
        "--warm-fraction", type=float, default=0.1, help="warm rate as a fraction of the capacity"
    )
    ap.add_argument("--warm-s", type=float, default=30.0)
    ap.add_argument("--overhead-rps", type=float, default=None, help="fixed router-overhead rate")
    ap.add_argument(
        "--overhead-fraction",
        type=float,
        default=0.15,
        help="router-overhead load as a fraction of the router's one-core saturation rate",
    )
    ap.add_argument("--overhead-s", type=float, default=20.0, help="length of each run")
    ap.add_argument("--overhead-pairs", type=int, default=3, help="direct/router run pairs")
    ap.add_argument("--rss-minutes", type=float, default=5.0)
    ap.add_argument("--launch-delay-s", type=float, default=5.0)
    ap.add_argument(
        "--max-instances", type=int, default=None, help="default: sized to the cores (<= 2)"
    )
    ap.add_argument(
        "--lambda-environments", type=int, default=None, help="default: sized to the cores (<= 2)"
    )
    ap.add_argument("--profile-repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="shorter phases (about 6 minutes)")
    ap.add_argument(
        "--only", choices=("deployments", "router"), default=None, help="run one part only"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.ramp_s, args.warm_s, args.overhead_s, args.rss_minutes = 30.0, 15.0, 10.0, 1.0
        args.profile_repeats = min(args.profile_repeats, 5)
    for name in ("ramp_fraction", "warm_fraction", "overhead_fraction"):
        if not 0 < getattr(args, name) <= 1:
            ap.error(f"--{name.replace('_', '-')} must be in (0, 1]")
    work = Path(args.work or tempfile.mkdtemp(prefix="live-hybrid-"))
    work.mkdir(parents=True, exist_ok=True)

    calibration: dict = {"cores": cpu_info()}
    cores = calibration["cores"]["affinity"]
    rows: list[dict] = []
    if args.only != "router":
        cfg = load_serve_config(None)
        art = ensure_artifact(cfg)
        m = calibration["model"] = calibrate_model(
            art, cfg.instances.threads, cfg.instances.max_batch, args.profile_repeats, work
        )
        print(f"model calibration: {m}", file=sys.stderr)
        body = build_payload(artifact_metadata(art), seed=0)
        sizing = calibration["sizing"] = deployment_sizing(
            cores, cfg.instances.threads, args.max_instances, args.lambda_environments
        )
        base = {
            "slo_ms": args.slo_ms,
            "control_interval_s": 5,
            "instances": {
                "initial": 0,
                "launch_delay_s": args.launch_delay_s,
                "max_instances": sizing["max_instances"],
            },
            "lambda": {"concurrency": sizing["lambda_environments"], "keep_alive_s": 120},
            "router": {"port": 0},
            "profile": m["profile"],
            "log_dir": str(work / "logs"),
        }
        serve_cfg = ServeConfig.model_validate({**base, "deployment": "hybrid"})
        profile = yaml.safe_load(Path(m["profile"]).read_text())
        calibration["nominal"] = nominal_capacity(serve_cfg, profile, m["cpu_ms"], cores)
        probes = calibration["probes"] = calibrate_deployments(
            args, base, body, work, calibration["nominal"]
        )
        fl, lam = probes["fleet_plus_lambda"]["rps"], probes["lambda_only"]["rps"]
        # lambda-only, and hybrid until its first instance is up, serve on Lambda alone
        cap = fl if args.ramp_basis == "fleet+lambda" else min(fl, lam)
        calibration["basis"] = {"name": args.ramp_basis, "rps": cap}
        calibration["ramp"] = {
            "fraction": args.ramp_fraction,
            "qps": round(args.qps or args.ramp_fraction * cap, 1),
            "fixed": args.qps is not None,
        }
        calibration["warm"] = {
            "fraction": args.warm_fraction,
            "qps": round(args.warm_qps or max(1.0, args.warm_fraction * cap), 1),
            "fixed": args.warm_qps is not None,
        }
        args.qps, args.warm_qps = calibration["ramp"]["qps"], calibration["warm"]["qps"]
        rows = [deployment_row(d, base, body, args, work) for d in DEPLOYMENTS]
    over = None
    if args.only != "deployments":
        over, calibration["router"] = router_overhead(args, work)
    calibration["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

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
    result = {
        "calibration": calibration,
        "rows": rows,
        "router_overhead_p99_ms": over and over["router_overhead_p99_ms"],
        "router_rps": over and over["router_rps"],
        "router": over,
        "qps": args.qps,
        "warm_qps": args.warm_qps,
        "slo_ms": args.slo_ms,
        "launch_delay_s": args.launch_delay_s,
        "targets": {name: ok for name, _, ok in targets},
    }
    if args.json:
        print(json.dumps(result))
        return
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


if __name__ == "__main__":
    main()
