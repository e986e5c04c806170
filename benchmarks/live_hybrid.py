"""The seed's serverless benchmark, reproduced locally: lambda-only, vm-only and hybrid.

Each deployment of the DistilBERT-sized model starts from zero (no instance, no warm Lambda
environment) as a `hybridserve serve` process; an open-loop Poisson load at `--qps` starts at
once. Reported per deployment, next to the seed's Lambda, Cloud Run and Kubernetes rows:

- first response: from the first request's send to the first 200 answer;
- steady: the first moment after which every request sent over a 10 s window is answered 200
  within the SLO (the seed's "steady 100 qps", at the rate this machine can serve);
- warm p50/p95/p99: a low-rate phase after the ramp, every request served warm.

Then the router's own cost: p99 latency through the router minus calling the model server
directly, at `--overhead-rps` against a no-op-sized model (the 16->4 MLP), and the router
process's resident memory growth over `--rss-minutes` at that rate.

    python benchmarks/live_hybrid.py            # ~12 minutes
    python benchmarks/live_hybrid.py --quick    # ~4 minutes, shorter phases
    python benchmarks/live_hybrid.py --json

Targets (printed PASS/FAIL): the router adds at most 2 ms p99 at 1,000 req/s; hybrid is steady
within 5 s from zero VMs; the router's RSS grows at most 50 MB over the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hybridserve.loadgen import BenchResult, bench_sync, build_payload, poisson_schedule  # noqa: E402
from hybridserve.serve import (  # noqa: E402
    ensure_artifact,
    load_serve_config,
    measured_profile,
    spawn_listening,
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
DEPLOYMENTS = ("lambda-only", "vm-only", "hybrid")
STEADY_WINDOW_S = 10.0


def start_serve(cfg: dict, work: Path, name: str) -> tuple[subprocess.Popen, str]:
    path = work / f"serve-{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    err = open(work / f"serve-{name}.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "hybridserve", "serve", "--config", str(path)]
    return spawn_listening(cmd, err, f"serve {name} (see {work / f'serve-{name}.log'})", 120.0)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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


def deployment_row(name: str, base: dict, body: bytes, args, work: Path) -> dict:
    cfg = {**base, "deployment": name}
    proc, url = start_serve(cfg, work, name)
    try:
        ramp = bench_sync(url, poisson_schedule(args.qps, args.ramp_s, seed=1), body, timeout_s=30)
        warm = bench_sync(
            url, poisson_schedule(args.warm_qps, args.warm_s, seed=2), body, timeout_s=30
        )
    finally:
        stop(proc)
    p50, p95, p99 = pct(warm)
    row = {
        "deployment": name,
        "warm_p50_ms": round(p50, 2),
        "warm_p95_ms": round(p95, 2),
        "warm_p99_ms": round(p99, 2),
        "first_response_s": _round(first_response_s(ramp)),
        "steady_100qps_s": _round(steady_s(ramp, args.slo_ms)),
        "ramp_errors": ramp.error_count,
        "ramp_attainment": round(
            float(
                np.mean(
                    (ramp.samples["status"] == 200) & (ramp.samples["latency_ms"] <= args.slo_ms)
                )
            ),
            4,
        ),
        "warm_errors": warm.error_count,
    }
    print(f"  {name}: {row}", file=sys.stderr)
    return row


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def router_overhead(args, work: Path) -> dict:
    """p99 via the router minus p99 direct, same model server settings, same load."""
    from predictors.artifact import build_artifact

    mlp = work / "mlp-fp32"
    if not (mlp / "manifest.json").exists():
        mlp = build_artifact("mlp", work, variant="fp32")
    port = _free_port()
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
    try:
        _wait_ready(f"http://127.0.0.1:{port}")
        _wait_infer(url, "mlp")
        meta = json.loads(_get(f"{url}/v2/models/mlp"))
        body = build_payload(meta, seed=0)
        sched = poisson_schedule(args.overhead_rps, args.overhead_s, seed=3)
        warm = 2.0
        runs = {"direct": [], "router": []}
        for _ in range(2):  # interleaved, to share whatever else the machine does
            for kind, u in (("direct", f"http://127.0.0.1:{port}"), ("router", url)):
                r = bench_sync(u, sched, body, model="mlp", warmup_s=warm, timeout_s=10)
                runs[kind].append(r)
        p99 = {k: float(np.median([r.latency_ms["p99"] for r in v])) for k, v in runs.items()}
        p50 = {k: float(np.median([r.latency_ms["p50"] for r in v])) for k, v in runs.items()}
        rps = float(np.median([r.achieved_rps for r in runs["router"]]))
        errors = sum(r.error_count for v in runs.values() for r in v)
        # memory: the serve process (router, controller, backend thread) over a long run
        rss0 = rss_mb(proc.pid)
        long = poisson_schedule(args.overhead_rps, args.rss_minutes * 60.0, seed=4)
        r = bench_sync(url, long, body, model="mlp", timeout_s=10)
        rss1 = rss_mb(proc.pid)
    finally:
        stop(proc)
        direct.terminate()
        direct.wait(10)
    out = {
        "router_overhead_p99_ms": round(p99["router"] - p99["direct"], 3),
        "router_overhead_p50_ms": round(p50["router"] - p50["direct"], 3),
        "direct_p99_ms": round(p99["direct"], 3),
        "router_p99_ms": round(p99["router"], 3),
        "router_rps": round(rps, 1),
        "overhead_errors": errors,
        "rss_start_mb": round(rss0, 1),
        "rss_end_mb": round(rss1, 1),
        "rss_growth_mb": round(rss1 - rss0, 1),
        "rss_run_s": args.rss_minutes * 60.0,
        "rss_run_rps": round(r.achieved_rps, 1),
        "rss_run_errors": r.error_count,
        "rss_run_p99_ms": r.latency_ms["p99"],
    }
    print(f"  router: {out}", file=sys.stderr)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


def _wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _get(url + "/v2/health/ready")
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} never became ready")


def _wait_infer(url: str, model: str, timeout_s: float = 60) -> None:
    """Until the router has a ready instance (its health is ready before that)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = _get(url + "/metrics").decode()
        if re.search(r"hybridserve_fleet_size\{[^}]*\} [1-9]", text):
            return
        time.sleep(0.1)
    raise SystemExit(f"{url}: no instance became ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qps", type=float, default=40.0, help="ramp rate (this machine's scale)")
    ap.add_argument("--slo-ms", type=float, default=300.0)
    ap.add_argument("--ramp-s", type=float, default=60.0)
    ap.add_argument("--warm-qps", type=float, default=5.0)
    ap.add_argument("--warm-s", type=float, default=30.0)
    ap.add_argument("--overhead-rps", type=float, default=1000.0)
    ap.add_argument("--overhead-s", type=float, default=20.0)
    ap.add_argument("--rss-minutes", type=float, default=5.0)
    ap.add_argument("--launch-delay-s", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="shorter phases (about 4 minutes)")
    ap.add_argument(
        "--only", choices=("deployments", "router"), default=None, help="run one part only"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.ramp_s, args.warm_s, args.overhead_s, args.rss_minutes = 30.0, 15.0, 10.0, 1.0
    work = Path(args.work or tempfile.mkdtemp(prefix="live-hybrid-"))
    work.mkdir(parents=True, exist_ok=True)

    cfg = load_serve_config(None)
    art = ensure_artifact(cfg)
    profile = measured_profile(art, cfg.instances.threads, cfg.instances.max_batch)
    print(f"profile (1 thread): {profile['reference']['batch_ms']}", file=sys.stderr)
    body = build_payload(artifact_metadata(art), seed=0)
    base = {
        "slo_ms": args.slo_ms,
        "control_interval_s": 5,
        "instances": {"initial": 0, "launch_delay_s": args.launch_delay_s, "max_instances": 2},
        "lambda": {"concurrency": 2, "keep_alive_s": 120},
        "router": {"port": 0},
        "log_dir": str(work / "logs"),
    }
    rows = (
        []
        if args.only == "router"
        else [deployment_row(d, base, body, args, work) for d in DEPLOYMENTS]
    )
    over = router_overhead(args, work) if args.only != "deployments" else None
    if over is None or not rows:
        print(json.dumps({"rows": rows, "router": over}))
        return
    hybrid = next(r for r in rows if r["deployment"] == "hybrid")
    targets = [
        ("router adds <= 2 ms p99 at 1,000 req/s", over["router_overhead_p99_ms"] <= 2.0),
        ("hybrid steady from zero VMs in <= 5 s",
         hybrid["steady_100qps_s"] is not None and hybrid["steady_100qps_s"] <= 5.0),
        ("router RSS grows <= 50 MB", over["rss_growth_mb"] <= 50.0),
    ]  # fmt: skip
    result = {
        "rows": rows,
        "router_overhead_p99_ms": over["router_overhead_p99_ms"],
        "router_rps": over["router_rps"],
        "router": over,
        "qps": args.qps,
        "slo_ms": args.slo_ms,
        "launch_delay_s": args.launch_delay_s,
        "targets": {name: ok for name, ok in targets},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"\nDistilBERT-sized int8, ramp {args.qps:g} req/s from zero, SLO {args.slo_ms:g} ms")
    print(f"{'deployment':<18} {'warm p50/p95/p99 s':>22} {'first resp s':>13} {'steady s':>9}")
    for r in rows:
        warm = f"{r['warm_p50_ms'] / 1e3:.3f}/{r['warm_p95_ms'] / 1e3:.3f}/{r['warm_p99_ms'] / 1e3:.3f}"
        steady = "never" if r["steady_100qps_s"] is None else f"{r['steady_100qps_s']:.1f}"
        print(f"{r['deployment']:<18} {warm:>22} {r['first_response_s']:>13} {steady:>9}")
    for s in SEED_ROWS:
        warm = "/".join(f"{x:.2f}" for x in s["warm"])
        print(f"{s['deployment']:<18} {warm:>22} {s['first']:>13} {s['steady']:>9}")
    print(
        f"\nrouter: p99 {over['router_p99_ms']:.2f} ms vs direct {over['direct_p99_ms']:.2f} ms "
        f"at {args.overhead_rps:g} req/s (+{over['router_overhead_p99_ms']:.2f} ms), "
        f"{over['router_rps']:.0f} req/s achieved; RSS {over['rss_start_mb']:.0f} -> "
        f"{over['rss_end_mb']:.0f} MB over {over['rss_run_s']:.0f} s"
    )
    for name, ok in targets:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")


if __name__ == "__main__":
    main()
