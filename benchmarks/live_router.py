"""The router's own cost: a no-op-sized model called directly and through the router, in
interleaved open-loop pairs at a load sized from the router's measured CPU per request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from live_procs import (  # noqa: E402
    closed_loop,
    cpu_by_component,
    free_port,
    http_get,
    machine_busy_s,
    proc_cpu_s,
    rss_mb,
    self_cpu_s,
    start_serve,
    stop,
    tree_cpu,
    wait_fleet,
    wait_ready,
)

from hybridserve.loadgen.payload import build_payload  # noqa: E402
from hybridserve.loadgen.run import bench_sync  # noqa: E402
from hybridserve.loadgen.schedules import poisson_schedule  # noqa: E402

# the router's added p99 is judged only over pairs of runs during which other jobs on the
# machine used at most this many cores, and only with this many such pairs
OTHERS_MAX_CORES = 0.25


MIN_CLEAN_PAIRS = 2


def router_overhead(args, work: Path) -> tuple[dict, dict]:
    """p99 via the router minus p99 direct, same model server settings, same load; the load is
    sized from the router's measured CPU per request. Returns (results, calibration)."""
    from predictors.artifact import build_artifact

    mlp = work / "mlp-fp32"
    if not (mlp / "manifest.json").exists():
        mlp = build_artifact("mlp", work, variant="fp32")
    port = free_port()
    direct = subprocess.Popen(
        [sys.executable, "-m", "hybridserve", "model-server", "--artifact", str(mlp),
         "--port", str(port), "--max-delay-ms", "0", "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    cfg = {
        "artifact": str(mlp),
        "deployment": "fixed",
        "slo_ms": args.slo_ms,
        "instances": {"initial": 1, "launch_delay_s": 0, "max_delay_ms": 0, "max_batch": 8},
        "router": {"port": 0, "max_queue": 1024},
        "log_dir": str(work / "logs-overhead"),
    }
    proc, url = start_serve(cfg, work, "fixed")
    direct_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(direct_url)
        wait_fleet(url, 1, timeout_s=60)
        meta = json.loads(http_get(f"{url}/v2/models/mlp"))
        body = build_payload(meta, seed=0)
        # calibration: CPU per request of the router process, closed loop through it
        probe_s = 4.0 if args.quick else 8.0
        c = closed_loop(url, body, "mlp", 8, 2.0, probe_s, [proc.pid, direct.pid])
        router_cpu_s = c["cpu_s"][proc.pid]["root"]
        router_cpu_ms = router_cpu_s / max(c["ok"], 1) * 1000.0
        sat_rps = 1000.0 / router_cpu_ms
        cal = {
            "probe_concurrency": 8,
            "probe_rps": round(c["rps"], 1),
            "probe_router_cpu_ms_per_request": round(router_cpu_ms, 4),
            "probe_router_cores": round(router_cpu_s / c["wall_s"], 2),
            "probe_machine_busy": round(c["machine_busy"], 3),
            "router_saturation_rps": round(sat_rps, 1),
            "fraction": args.overhead_fraction,
            "rps": round(args.overhead_rps or args.overhead_fraction * sat_rps, 1),
            "fixed": args.overhead_rps is not None,
        }
        rate = cal["rps"]
        print(f"  router calibration: {cal}", file=sys.stderr)
        sched = poisson_schedule(rate, args.overhead_s, seed=3)
        cores = os.cpu_count() or 1  # /proc/stat sums every CPU
        pairs = []
        for i in range(args.overhead_pairs):  # interleaved, order alternating, to share drift
            order = [("direct", direct_url), ("router", url)]
            pair = {}
            for kind, u in order if i % 2 == 0 else order[::-1]:
                pair[kind] = _overhead_run(u, sched, body, proc.pid, direct.pid, cores)
            pair["others_cores"] = max(
                pair["direct"]["others_cores"], pair["router"]["others_cores"]
            )
            pair["clean"] = pair["others_cores"] <= OTHERS_MAX_CORES
            pair["added_p99_ms"] = pair["router"]["p99_ms"] - pair["direct"]["p99_ms"]
            pair["added_p50_ms"] = pair["router"]["p50_ms"] - pair["direct"]["p50_ms"]
            pairs.append(pair)
            print(f"  router pair {i}: {pair}", file=sys.stderr)
        clean = [p for p in pairs if p["clean"]]
        used = clean if len(clean) >= MIN_CLEAN_PAIRS else pairs

        def med(f) -> float:
            return float(np.median([f(p) for p in used]))

        runs = [p[k] for p in pairs for k in ("direct", "router")]
        lag = max(r["send_lag_p99_ms"] for r in runs)
        rps = float(np.median([p["router"]["rps"] for p in pairs]))
        errors = sum(r["errors"] for r in runs)
        cpu_ms = {
            "router": float(np.median([p["router"]["router_cpu_ms"] for p in pairs])),
            "server": float(np.median([p["direct"]["server_cpu_ms"] for p in pairs])),
            "generator": float(np.median([r["generator_cpu_ms"] for r in runs])),
        }
        # memory: the serve process (router, controller, backend thread) over a long run
        rss0 = rss_mb(proc.pid)
        cpu0 = proc_cpu_s(proc.pid)
        long = poisson_schedule(rate, args.rss_minutes * 60.0, seed=4)
        r = bench_sync(url, long, body, model="mlp", timeout_s=10)
        rss_cpu_ms = (proc_cpu_s(proc.pid) - cpu0) / max(r.ok, 1) * 1000.0
        rss1 = rss_mb(proc.pid)
    finally:
        stop(proc)
        direct.terminate()
        direct.wait(10)
    out = {
        "rps": rate,
        "router_overhead_p99_ms": round(med(lambda p: p["added_p99_ms"]), 3),
        "router_overhead_p50_ms": round(med(lambda p: p["added_p50_ms"]), 3),
        "direct_p99_ms": round(med(lambda p: p["direct"]["p99_ms"]), 3),
        "router_p99_ms": round(med(lambda p: p["router"]["p99_ms"]), 3),
        "pairs": len(pairs),
        "clean_pairs": len(clean),
        "judged": len(clean) >= MIN_CLEAN_PAIRS,
        "pair_added_p99_ms": [round(p["added_p99_ms"], 2) for p in pairs],
        "pair_others_cores": [round(p["others_cores"], 2) for p in pairs],
        "router_rps": round(rps, 1),
        "send_lag_p99_ms": lag,
        "overhead_errors": errors,
        "router_cpu_ms_per_request": round(cpu_ms["router"], 4),
        "server_cpu_ms_per_request": round(cpu_ms["server"], 4),
        "generator_cpu_ms_per_request": round(cpu_ms["generator"], 4),
        "cores_busy_ours": round(
            rate * (cpu_ms["router"] + cpu_ms["server"] + cpu_ms["generator"]) / 1000.0, 2
        ),
        "rss_start_mb": round(rss0, 1),
        "rss_end_mb": round(rss1, 1),
        "rss_growth_mb": round(rss1 - rss0, 1),
        "rss_run_s": args.rss_minutes * 60.0,
        "rss_run_rps": round(r.achieved_rps, 1),
        "rss_run_errors": r.error_count,
        "rss_run_p99_ms": r.latency_ms["p99"],
        "rss_run_router_cpu_ms_per_request": round(rss_cpu_ms, 4),
    }
    print(f"  router: {out}", file=sys.stderr)
    return out, cal


def _overhead_run(url: str, sched, body: bytes, serve_pid: int, direct_pid: int, cores: int):
    """One open-loop run of the overhead phase: latency, CPU per request of the router (the
    serve process), the direct model server and this generator, and the CPU other jobs took."""
    t0, b0 = time.perf_counter(), machine_busy_s()
    s0, d0, g0 = tree_cpu(serve_pid), proc_cpu_s(direct_pid), self_cpu_s()
    r = bench_sync(url, sched, body, model="mlp", warmup_s=2.0, timeout_s=10)
    s1, d1, g1 = tree_cpu(serve_pid), proc_cpu_s(direct_pid), self_cpu_s()
    wall, b1 = time.perf_counter() - t0, machine_busy_s()
    serve = cpu_by_component(s0, s1)
    ours = sum(serve.values()) + (d1 - d0) + (g1 - g0)
    busy = (b1[0] - b0[0]) / max(b1[1] - b0[1], 1e-9) * cores  # cores busy, every job
    n = max(r.ok + r.warmup_requests, 1)  # the CPU covers the warm-up requests too
    return {
        "p50_ms": r.latency_ms["p50"],
        "p99_ms": r.latency_ms["p99"],
        "rps": r.achieved_rps,
        "errors": r.error_count,
        "send_lag_p99_ms": r.send_lag_ms["p99"] or 0.0,
        "router_cpu_ms": serve.get("root", 0.0) / n * 1000.0,
        "server_cpu_ms": (d1 - d0) / n * 1000.0,
        "generator_cpu_ms": (g1 - g0) / n * 1000.0,
        "others_cores": round(max(busy - ours / wall, 0.0), 3),
    }
