"""One deployment of the live benchmark, from zero: a `hybridserve serve` process under an
open-loop Poisson ramp and then a warm phase, reduced to its row (first response, steady time,
warm percentiles, attainment, CPU by process); and the deployments' sizing to the cores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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

from hybridserve.loadgen.result import BenchResult  # noqa: E402
from hybridserve.loadgen.run import bench_sync  # noqa: E402
from hybridserve.loadgen.schedules import poisson_schedule  # noqa: E402

STEADY_WINDOW_S = 10.0


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
