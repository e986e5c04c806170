"""The simulator checked against a live run: the same trace slices, served for real and simulated.

For each window (a 15-minute slice of a real trace, by default three: a quiet-to-peak ramp and a
surge of the twitter trace, and a bursty stretch of the mooncake trace):

- calibration, once, first: the model's service time per batch measured now on this machine
  (live_calibration.calibrate_model), written as the profile YAML that both sides use; the
  deployment sized to the cores (one instance and one Lambda environment on 2 cores); the
  nominal capacity of that deployment from the profile (one instance plus the emulator);
- the window's per-second counts, scaled so that its busiest 10 s run at `--fraction` of that
  capacity (binomial thinning, `Trace.scaled`), written as a per-second trace file;
- live: `hybridserve serve` (local backend, the measured profile, `--launch-delay-s`,
  `--interval-s`, the Lambda emulator with `--keep-alive-s`, policy hybrid, the serve default)
  from zero instances and no warm Lambda environment; the trace file replayed open loop by
  `hybridserve bench --trace`'s own code (its schedule and load generator, in this process so
  that every request's latency comes back), starting on an epoch second that begins a control
  interval, so the live controller's intervals are the trace's [k dt, (k+1) dt);
- live figures: cost = EC2 instance-seconds (launch to the end of the drain, from the serve
  log's `backend.instance` events, each billed per second with a minute's minimum,
  `pricing.ec2_billed_s`) x the pool's price, plus Lambda's billed duration x memory and the
  request charges (the emulator's `/emulator/stats`: the sum of its REPORT lines'
  billed durations, through `pricing.lambda_gb_s`); SLO attainment = answered 200 within the
  SLO / sent (the load generator's latencies); spill share = the router's spills / arrivals;
  cold starts = the emulator's;
- sim: the same Controller (policy hybrid, same forecaster and planner) on a simulated clock
  over the same counts, with the same scenario: the measured profile, a launch delay of
  `--launch-delay-s` plus the model server's start time measured in the live run (spawn to
  ready), the same control interval and steps (as many empty intervals before the trace as the
  live loop stepped before the load began), one instance at most, the Lambda emulator's
  memory, keep-alive, concurrency and its measured cold start (init duration); then the fast
  data plane (`simulations.dataplane`) and the bill (`dataplane.ec2_bill`, `lambda_bill`).

Printed side by side with the targets: cost within 2%, attainment within 0.5 percentage
points, spill share within 1 point. `--json` prints one object: {"windows": [{"trace",
"seconds", "requests", "live_cost_usd", "sim_cost_usd", "cost_rel_err", "live_attainment",
"sim_attainment", "attainment_diff_pp", "live_spill", "sim_spill", "spill_diff_pp", ...}],
"calibration": {...}, "targets": {...}}.

    python benchmarks/fidelity.py             # 3 windows x 15 min, ~55 minutes
    python benchmarks/fidelity.py --quick     # 3 windows x 3 min, ~15 minutes
    python benchmarks/fidelity.py --windows mooncake-bursty --minutes 5 --json

A window whose trace is absent (../shared/traces) is skipped with a message. The live figures
depend on the machine being otherwise idle: the load average at the start and the end and the
machine's busy share during each window (every process on it) are reported beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from hybridserve.pricing import ec2_billed_s, lambda_gb_s  # noqa: E402

TRACES = REPO.parent / "shared" / "traces"
TWITTER = TRACES / "twitter-2021-08.per-second.txt.gz"
MOONCAKE = TRACES / "mooncake-conversation-2024.requests.csv"

# targets
COST_REL = 0.02
ATTAINMENT_PP = 0.5
SPILL_PP = 1.0

MAX_JUMP = 0.15  # a ramp's minute-to-minute change at most this share of its mean (no steps)
BURST_BIN_S = 10  # burstiness and the scaling peak are measured on 10 s sums
SURGE_BASE_MIN = 10  # a surge's onset is measured against the median of the minutes before


@dataclass(frozen=True)
class Window:
    """A slice of a real trace picked by its character (`pick_window`)."""

    name: str
    path: Path
    kind: str  # ramp | bursty
    gaps: bool  # zero seconds are capture gaps (twitter), to avoid; else real quiet seconds
    timestamp_column: str | None = None  # per-request CSV


WINDOWS = (
    Window("twitter-ramp", TWITTER, "ramp", gaps=True),
    Window("twitter-surge", TWITTER, "surge", gaps=True),
    Window("mooncake-bursty", MOONCAKE, "bursty", gaps=False, timestamp_column="timestamp_s"),
)


# ------------------------------------------------------------------------------ windows


def pick_window(counts: np.ndarray, kind: str, seconds: int, gaps: bool = True) -> int:
    """Start (s, on a whole minute) of the `seconds`-long slice of `counts` most like `kind`.

    - ramp: the largest rise, the least-squares slope of the per-minute sums over the slice
      relative to their mean, among slices whose minute-to-minute change stays within
      `MAX_JUMP` of the mean (a steady climb, not a step);
    - surge: the sharpest onset, the minute whose sum is the largest multiple of the median
      of the 10 minutes before it, the slice starting a fifth of its length before it (the
      quiet before, the surge, and as much of its decay as fits);
    - bursty: the largest spread of the 10 s sums about their own minute's mean, relative to
      the slice's mean (bursts within minutes; a step from one level to another is not one).

    With `gaps`, slices holding a zero second (a capture gap) are left out, and for a surge
    the 10 minutes before it too. Deterministic: ties go to the earliest."""
    counts = np.asarray(counts, dtype=np.int64)
    if seconds < 60 or seconds % 60:
        raise ValueError(f"window length must be whole minutes, got {seconds} s")
    if counts.size < seconds:
        raise ValueError(f"the trace lasts {counts.size} s, shorter than the window ({seconds} s)")
    n_min = counts.size // 60
    per_min = counts[: n_min * 60].reshape(n_min, 60)
    m = seconds // 60
    n_starts = n_min - m + 1
    zero = np.concatenate([[0], np.cumsum((per_min == 0).sum(axis=1))])
    minutes = per_min.sum(axis=1).astype(float)
    win = np.lib.stride_tricks.sliding_window_view(minutes, m)
    mean = win.mean(axis=1)
    ok = mean > 0
    if gaps:
        ok &= (zero[m:] - zero[:-m]) == 0
    safe = np.where(mean > 0, mean, 1.0)
    if kind == "ramp":
        if m < 2:
            raise ValueError("a ramp needs a window of at least 2 minutes")
        x = np.arange(m) - (m - 1) / 2
        rise = (win * x).sum(axis=1) / (x * x).sum() * (m - 1) / safe
        jump = np.abs(np.diff(win, axis=1)).max(axis=1) / safe
        score = np.where(jump <= MAX_JUMP, rise, -np.inf)
    elif kind == "surge":
        lead, base_n = max(1, m // 5), SURGE_BASE_MIN
        score = np.full(n_starts, -np.inf)
        for s in range(n_starts):
            i = s + lead  # the onset minute
            if i - base_n < 0 or not ok[s]:
                continue
            if gaps and zero[i] - zero[i - base_n] > 0:
                continue
            base = float(np.median(minutes[i - base_n : i]))
            if base > 0:
                score[s] = minutes[i] / base
    elif kind == "bursty":
        per_bin = per_min.reshape(n_min, 60 // BURST_BIN_S, BURST_BIN_S).sum(axis=2)
        bins = np.lib.stride_tricks.sliding_window_view(per_bin, m, axis=0)  # (start, bin, min)
        bins = bins.transpose(0, 2, 1).astype(float)  # (start, minute, bin)
        resid = bins - bins.mean(axis=2, keepdims=True)
        score = resid.reshape(n_starts, -1).std(axis=1) / safe * (60 // BURST_BIN_S)
    else:
        raise ValueError(f"unknown window kind {kind!r}; expected ramp, surge or bursty")
    score = np.where(ok, score, -np.inf)
    if not np.isfinite(score).any():
        raise ValueError(f"no {seconds} s slice qualifies as {kind} (gaps or steps everywhere)")
    return int(np.argmax(score)) * 60


def peak_rate(counts: np.ndarray, bin_s: int = BURST_BIN_S) -> float:
    """Mean rate (req/s) of the busiest `bin_s` seconds, on consecutive bins."""
    c = np.asarray(counts, dtype=float)
    n = c.size // bin_s * bin_s
    if n == 0:
        return float(c.mean()) if c.size else 0.0
    return float(c[:n].reshape(-1, bin_s).sum(axis=1).max() / bin_s)


def scale_factor(counts: np.ndarray, capacity_rps: float, fraction: float) -> float:
    """The rate scale that puts the window's busiest 10 s at `fraction` of `capacity_rps`."""
    peak = peak_rate(counts)
    if peak <= 0:
        raise ValueError("the window has no requests")
    if not (capacity_rps > 0 and fraction > 0):
        raise ValueError("capacity and fraction must be > 0")
    return fraction * capacity_rps / peak


def window_counts(
    counts: np.ndarray, start: int, seconds: int, factor: float, seed: int = 0
) -> np.ndarray:
    """The slice, scaled as `Trace.scaled` does (integers, the expected total exact)."""
    from simulations.traces import Trace

    raw = np.asarray(counts[start : start + seconds], dtype=np.int64)
    return Trace("window", raw).scaled(factor, seed).counts.astype(np.int64)


def scaled_window(
    counts: np.ndarray, start: int, seconds: int, capacity_rps: float, fraction: float, seed: int
) -> tuple[float, np.ndarray]:
    """(rate scale, scaled slice) whose busiest 10 s come out at `fraction` of `capacity_rps`:
    thinning adds noise and the busiest bin after it is above the scaled busiest bin before,
    so the scale is corrected once by what came out (same seed)."""
    raw = np.asarray(counts[start : start + seconds])
    factor = scale_factor(raw, capacity_rps, fraction)
    win = window_counts(counts, start, seconds, factor, seed)
    factor *= fraction * capacity_rps / max(peak_rate(win), 1e-9)
    return factor, window_counts(counts, start, seconds, factor, seed)


def write_counts(path: Path, counts: np.ndarray) -> None:
    """A per-second counts trace file (`load_trace`'s counts format)."""
    path.write_text(" ".join(str(int(c)) for c in counts) + "\n")


def source_counts(w: Window) -> np.ndarray:
    from simulations.traces import load_trace

    if w.timestamp_column:
        return load_trace(w.path, timestamp_column=w.timestamp_column).counts
    return load_trace(w.path).counts


# ------------------------------------------------------------------------------ live cost


def read_log(path: Path) -> list[dict]:
    """The JSON lines of a serve log (other lines, such as warnings, are skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def instance_lives(log: list[dict], t0: float, t1: float) -> list[dict]:
    """Each instance's billed life from a serve log's `backend.instance` events, on the wall
    clock, clipped to the window [t0, t1): launched at its launch, ended when its process is
    told to stop (a retirement's `ends_s` is the drain); one still running at t1 ends there.
    Instances that ended before t0 are left out; one launched before t0 is billed from t0."""
    lives: dict[str, dict] = {}
    for e in log:
        if e.get("event") != "backend.instance":
            continue
        iid, kind, ts = e["instance"], e["kind"], float(e["ts"])
        if kind == "launch":
            lives[iid] = {"instance": iid, "pool": e["pool"], "launch": ts, "ready": None,
                          "end": None, "start_s": None}  # fmt: skip
        elif iid in lives:
            life = lives[iid]
            if kind == "ready":
                life["ready"], life["start_s"] = ts, e.get("start_s")
            elif kind in ("retire", "notice", "lost") and life["end"] is None:
                life["end"] = ts + float(e.get("ends_s") or 0.0)
    out = []
    for life in lives.values():
        end = t1 if life["end"] is None else min(life["end"], t1)
        launch = max(life["launch"], t0)
        if end <= t0 or launch >= t1:
            continue
        out.append({**life, "launch": launch, "end": end, "ran_s": end - launch})
    return sorted(out, key=lambda x: x["launch"])


def ec2_usd(lives: list[dict], price_usd_s: dict[str, float]) -> tuple[float, float]:
    """(USD, billed instance-seconds): each life per second with a minute's minimum."""
    billed = [ec2_billed_s(x["ran_s"]) for x in lives]
    usd = sum(b * price_usd_s[x["pool"]] for b, x in zip(billed, lives, strict=True))
    return usd, float(sum(billed))


def lambda_usd(
    invocations: int, billed_ms: float, memory_mb: int, usd_per_gb_s: float, usd_per_request: float
) -> tuple[float, float]:
    """(request charges, compute charges) of the emulator's invokes: its billed milliseconds
    (the sum of its REPORT lines' Billed Duration, init included) x memory."""
    return invocations * usd_per_request, float(lambda_gb_s(memory_mb, billed_ms)) * usd_per_gb_s


# ------------------------------------------------------------------------------ rows


def compare(name: str, seconds: int, live: dict, sim: dict) -> dict:
    """One row of the JSON's `windows`: both sides and their gaps."""
    lc, sc = live["cost_usd"], sim["cost_usd"]
    return {
        "trace": name,
        "seconds": seconds,
        "requests": live["requests"],
        "live_cost_usd": round(lc, 6),
        "sim_cost_usd": round(sc, 6),
        "cost_rel_err": round((sc - lc) / lc, 4) if lc > 0 else None,
        "live_attainment": round(live["attainment"], 5),
        "sim_attainment": round(sim["attainment"], 5),
        "attainment_diff_pp": round(100.0 * (sim["attainment"] - live["attainment"]), 3),
        "live_spill": round(live["spill"], 5),
        "sim_spill": round(sim["spill"], 5),
        "spill_diff_pp": round(100.0 * (sim["spill"] - live["spill"]), 3),
        "live_cold_starts": live["cold_starts"],
        "sim_cold_starts": sim["cold_starts"],
    }


def judge(row: dict) -> dict[str, bool]:
    rel = row["cost_rel_err"]
    return {
        "cost": rel is not None and abs(rel) <= COST_REL,
        "attainment": abs(row["attainment_diff_pp"]) <= ATTAINMENT_PP,
        "spill": abs(row["spill_diff_pp"]) <= SPILL_PP,
    }


# ------------------------------------------------------------------------------ live run


def http_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def metric_values(text: str, name: str) -> dict[str, float]:
    """label string -> value of one metric in a Prometheus text exposition."""
    out = {}
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+-]+|NaN)$", text, re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def metric_total(text: str, name: str) -> float:
    return sum(metric_values(text, name).values())


class CorrectionWatch:
    """Reads the router's learnt latency correction of each instance (observed over profiled
    completion time, `hybridserve_router_latency_correction`) every `every_s` while the load
    runs: how much slower or faster than the profile each model server really served."""

    def __init__(self, url: str, every_s: float = 2.0) -> None:
        import threading

        self.url, self.every_s = url, every_s
        self.samples: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                text = http_json_text(self.url + "/metrics")
            except OSError:
                continue
            for labels, v in metric_values(text, "hybridserve_router_latency_correction").items():
                m = re.search(r'instance="([^"]+)"', labels)
                if m:
                    self.samples.setdefault(m.group(1), []).append(v)

    def means(self) -> dict[str, dict[str, float]]:
        """Per instance: the mean correction over its readings (the first, still near 1, left
        out when there are more) and their number."""
        out = {}
        for iid, xs in self.samples.items():
            use = xs[1:] if len(xs) > 1 else xs
            out[iid] = {"mean": round(float(np.mean(use)), 4), "readings": len(use)}
        return out


def fleet_speed(corrections: dict[str, dict[str, float]]) -> float:
    """The instances' mean correction, weighted by how long each served (its readings); 1 when
    none was read."""
    n = sum(c["readings"] for c in corrections.values())
    if n == 0:
        return 1.0
    return float(sum(c["mean"] * c["readings"] for c in corrections.values()) / n)


def serve_config(args, profile: str, sizing: dict, log_dir: Path) -> dict:
    """The live side's `serve` config (the sim's scenario is derived from the same values)."""
    return {
        "deployment": "hybrid",
        "slo_ms": args.slo_ms,
        "control_interval_s": args.interval_s,
        "instances": {
            "initial": 0,
            "launch_delay_s": args.launch_delay_s,
            "max_instances": sizing["max_instances"],
        },
        "planner": {"max_instances": sizing["max_instances"]},
        "lambda": {
            "concurrency": sizing["lambda_environments"],
            "keep_alive_s": args.keep_alive_s,
            "memory_mb": args.memory_mb,
        },
        "router": {"port": 0},
        "profile": profile,
        "log_dir": str(log_dir),
    }


def run_live(name: str, trace_file: Path, cfg: dict, args, work: Path) -> dict:
    """Serve `cfg`, replay the trace file through `bench --trace`'s code, read what happened."""
    from live_procs import machine_busy_s, start_serve, stop

    from hybridserve.cli.bench import _schedule
    from hybridserve.live import STEP_AFTER_S
    from hybridserve.loadgen import bench_sync, build_payload, fetch_metadata

    dt = args.interval_s
    proc, url = start_serve(cfg, work, name)
    log_path = work / f"serve-{name}.log"
    try:
        prepared = next(e for e in read_log(log_path) if e.get("event") == "serve.prepared")
        emu = prepared["lambda_url"]
        body = build_payload(fetch_metadata(url, "distilbert"), seed=args.seed)
        trace_kw = {"trace_format": "counts", "timestamp_column": "TIMESTAMP",
                    "rate_scale": 1.0, "start": "0"}  # fmt: skip
        schedule, length = _schedule(None, str(trace_file), None, args.seed, trace_kw)
        # start on an epoch second that begins a control interval, at least 2 s from now
        t0 = (math.floor((time.time() + 2.0) / dt) + 1) * dt
        time.sleep(max(0.0, t0 - time.time() - 0.012))  # run_bench starts 10 ms after its call
        busy0 = machine_busy_s()
        load0 = os.getloadavg()
        watch = CorrectionWatch(url)
        watch.start()
        try:
            res = bench_sync(
                url, schedule, body, timeout_s=args.client_timeout_s, duration_s=length
            )
        finally:
            watch.stop()
        busy1 = machine_busy_s()
        t1 = t0 + length
        router = http_json_text(url + "/metrics")
        stats = http_json(emu + "/emulator/stats")
        emu_metrics = http_json_text(emu + "/metrics")
    finally:
        stop(proc)
    log = read_log(log_path)
    s = res.samples
    np.savez_compressed(work / f"samples-{name}.npz", t0=t0, **s)
    (work / f"router-{name}.prom").write_text(router)
    good = (s["status"] == 200) & (s["latency_ms"] <= args.slo_ms)
    arrivals = metric_total(router, "hybridserve_router_arrivals_total")
    spills = metric_total(router, "hybridserve_router_spills_total")
    lives = instance_lives(log, t0, t1)
    step_events = [e for e in log if e.get("event") == "controller.step"]
    steps = [float(e["ts"]) for e in step_events]
    # what the live controller decided on: the router's counts, by step after the load began
    step_counts = {
        str(round((float(e["ts"]) - t0 - STEP_AFTER_S) / dt)): e["counts"]
        for e in step_events
        if "counts" in e
    }
    # the controller's keep-warm rounds: their invokes and cold starts are the emulator's too
    from hybridserve.keep_warm import KeepWarmOptions, ping_hold_ms

    rounds = [e for e in log if e.get("event") == "lambda.keep_warm"]
    hold_ms = KeepWarmOptions().hold_ms  # local serve plans with the defaults
    init_n = metric_total(emu_metrics, "hybridserve_emulator_init_duration_seconds_count")
    init_sum = metric_total(emu_metrics, "hybridserve_emulator_init_duration_seconds_sum")
    starts = [x["start_s"] for x in lives if x["start_s"] is not None]
    return {
        "t0": t0,
        "requests": int(res.sent),
        "scheduled": int(res.scheduled),
        "ok": int(res.ok),
        "errors": res.errors,
        "attainment": float(good.sum()) / max(res.sent, 1),
        "spill": spills / max(arrivals, 1.0),
        "router_arrivals": int(arrivals),
        "router_spills": int(spills),
        "router_attainment": metric_total(router, "hybridserve_router_slo_attainment"),
        # requests' cold starts and invokes: the keep-warm rounds' taken out
        "cold_starts": int(stats["cold_starts"]) - sum(int(e["cold_starts"]) for e in rounds),
        "invocations": int(stats["invocations"]) - sum(int(e["sent"]) for e in rounds),
        "warm_pings": sum(int(e["sent"]) for e in rounds),
        "ping_cold_starts": sum(int(e["cold_starts"]) for e in rounds),
        # billed: each ping its hold (`keep_warm.ping_hold_ms`), at least a millisecond
        "warm_ping_ms": sum(
            int(e["sent"]) * max(1.0, ping_hold_ms(int(e["sent"]), hold_ms)) for e in rounds
        ),
        "throttles": int(stats["throttles"]),
        "billed_ms": float(stats["billed_ms_total"]),
        "lambda_rows": int(metric_total(router, "hybridserve_lambda_rows_total")),
        "init_s_mean": init_sum / init_n if init_n else None,
        "lives": lives,
        "instance_correction": watch.means(),
        "start_s_mean": float(np.mean(starts)) if starts else None,
        # steps that saw no load: those before it began, and the one at its first second
        "steps_before": sum(1 for t in steps if t < t0 + dt / 2),
        "step_counts": step_counts,
        "step_offsets_s": [round(t - t0, 3) for t in steps if t0 <= t < t1][:3],
        "send_lag_p99_ms": res.send_lag_ms.get("p99"),
        "latency_ms": res.latency_ms,
        "machine_busy": round((busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1e-9), 3),
        "loadavg": [round(x, 2) for x in load0],
    }


def http_json_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def live_cost(live: dict, sc, memory_mb: int) -> dict:
    prices = {p.key: p.price_usd_s for p in sc.pools}
    ec2, inst_s = ec2_usd(live["lives"], prices)
    p = sc.lambda_pricing
    invokes = live["invocations"] + live.get("warm_pings", 0)  # the keep-warm pings too
    req, cmp_ = lambda_usd(invokes, live["billed_ms"], memory_mb, p.usd_per_gb_s, p.usd_per_request)
    return {"ec2": ec2, "instance_s": inst_s, "lambda_requests": req, "lambda_compute": cmp_}


# ------------------------------------------------------------------------------ sim


def sim_scenario(
    cfg: dict,
    profile: dict,
    cold_start_s: float | None,
    lambda_time_scale: float = 1.0,
):
    """The scenario the live controller planned with (`local_scenario` of the serve config and
    the profile), with the emulator's measured cold start and, if given, its measured speed
    (`lambda_time_scale`); the instances' real launch delay goes to `run_sim`."""
    from hybridserve.serve import ServeConfig, local_scenario

    prof = json.loads(json.dumps(profile))
    lam = prof.setdefault("lambda", {})
    lam["time_scale"] = float(lambda_time_scale)
    if cold_start_s:
        lam["cold_start_s"] = float(cold_start_s)
    return local_scenario(ServeConfig.model_validate(cfg), prof)


def lambda_time_scale(live: dict, sc) -> float | None:
    """The emulator's billed milliseconds in the live run (cold starts' init taken out) over
    what the profile bills for the same invokes: with batches of at most 2, n2 = rows -
    invokes of 2 and the rest of 1; else rows at the mean batch size. None without invokes."""
    from hybridserve.config import lambda_service_s
    from hybridserve.pricing import lambda_billed_ms

    inv, rows = live["invocations"], live["lambda_rows"]
    if inv <= 0 or rows <= 0:
        return None
    over = sc.model.lambda_.invoke_overhead_ms

    def billed(b: float) -> float:
        lo, hi = int(math.floor(b)), int(math.ceil(b))
        f = [lambda_billed_ms(lambda_service_s(sc, k) * 1000.0 - over) for k in (lo, hi)]
        return f[0] + (f[1] - f[0]) * (b - lo)

    init_ms = 1000.0 * (live.get("init_s_mean") or 0.0)
    colds = live["cold_starts"] + live.get("ping_cold_starts", 0)
    warm = live["billed_ms"] - colds * init_ms - live.get("warm_ping_ms", 0.0)
    if rows <= 2 * inv:
        n2 = rows - inv
        expected = (inv - n2) * billed(1) + n2 * billed(2)
    else:
        expected = inv * billed(rows / inv)
    return float(np.clip(warm / expected, 0.5, 2.0)) if expected > 0 else None


def run_sim(
    counts: np.ndarray,
    sc,
    policy: str,
    steps_before: int,
    seed: int = 0,
    step_counts: dict[str, list[int]] | None = None,
    des: bool = True,
    fleet_slowdown: float = 1.0,
    launch_delay_s: float | None = None,
    plan_sc=None,
) -> dict:
    """The Controller on a simulated clock, from an empty fleet as the live run starts, with
    `steps_before` empty intervals ahead of the trace (the live loop's steps before the load);
    each step decides on `step_counts[k]` where the live controller logged what it saw at its
    k-th step after the load began (the router's per-second counts: a request sent in the last
    millisecond of a second may be counted in the next, and a decision near a threshold can
    turn on one request), else on the trace's interval,
    then the fast data plane (its instances `fleet_slowdown` times slower than the profile: the
    router's measured correction) and the bill (as `simulations.replay.run_policy`, Lambda billed by
    the batches the router's buffer sends), and the per-request mode (`simulations.des`) on the
    same instance timeline."""
    from hybridserve.backends import SimulatedBackend
    from hybridserve.policies import build_controller
    from simulations import dataplane
    from simulations.des import simulate_requests

    dt = sc.control_interval_s
    pad = steps_before * dt
    padded = np.concatenate([np.zeros(pad, dtype=np.int64), np.asarray(counts, dtype=np.int64)])
    # the controller plans with the configured launch delay, as the live one; the simulated
    # instances take the delay the live ones really took
    real = [
        p if launch_delay_s is None else p.model_copy(update={"launch_delay_s": launch_delay_s})
        for p in sc.pools
    ]
    backend = SimulatedBackend(real, spot=sc.spot, warm_start=False)
    # the controller plans with what the live one knew (`plan_sc`: the profile as calibrated);
    # what the run measured (Lambda's speed) only moves the data plane
    ctl, spec = build_controller(policy, plan_sc if plan_sc is not None else sc, backend)
    n_steps = -(-len(padded) // dt)
    step_counts = step_counts or {}
    differ = 0
    rounds: list[tuple[float, int]] = []  # the keep-warm rounds, as the live loop sent them
    for k in range(n_steps):
        backend.advance(min((k + 1) * dt, len(padded)))
        seg = padded[k * dt : (k + 1) * dt]
        seg = seg if len(seg) == dt else np.concatenate([seg, np.zeros(dt - len(seg))])
        seen = step_counts.get(str(k + 1 - steps_before))
        if seen is not None and len(seen) == dt:
            differ += int(not np.array_equal(seen, seg))
            seg = np.asarray(seen, dtype=float)
        d = ctl.step(seg)
        if d.warm_pings:
            rounds.append((d.time_s, d.warm_pings))
    # the data plane serves at the speed the router measured (the planner planned with the
    # profile, as the live one did)
    f = float(fleet_slowdown)
    pools = {
        p.key: p.model_copy(
            update={"capacity_rps": p.capacity_rps / f, "latency_s": p.latency_s * f}
        )
        for p in sc.pools
    }
    tot = dataplane.replay(
        padded, backend.instances, pools, sc, spill=spec.spill, warm_rounds=rounds
    )
    ec2, _ = dataplane.ec2_bill(backend.instances, pools, float(len(padded)))
    l_req, l_cmp = dataplane.lambda_bill(
        tot.lambda_served,
        tot.cold_starts,
        sc,
        invokes=tot.lambda_invokes,
        billed_ms=tot.lambda_billed_ms,
        pings=tot.warm_pings,
        ping_ms=tot.warm_ping_ms,
        ping_cold=tot.ping_cold_starts,
    )
    inst_s = sum(
        ec2_billed_s(min(i.ended_at if i.ended_at is not None else len(padded), len(padded))
                     - i.launched_at)
        for i in backend.instances
    )  # fmt: skip
    cost = {"ec2": sum(ec2.values()), "instance_s": float(inst_s),
            "lambda_requests": l_req, "lambda_compute": l_cmp}  # fmt: skip
    per_request = None
    if des:
        d = simulate_requests(padded, backend.instances, pools, sc, spill=spec.spill, seed=seed,
                              warm_rounds=rounds)  # fmt: skip
        per_request = {
            "attainment": round(d.slo_attainment, 5),
            "spill": round(d.spilled / max(d.requests, 1), 5),
            "cold_starts": d.cold_starts,
            "invokes": d.invokes,
            "refused": d.throttled,
        }
    return {
        "requests": int(tot.requests),
        "attainment": tot.met / tot.requests if tot.requests else 1.0,
        "steps_on_live_counts": len(step_counts),
        "steps_whose_live_counts_differ": differ,
        "des": per_request,
        "lambda_invokes": round(tot.lambda_invokes, 1),
        "warm_pings": int(tot.warm_pings),
        "spill": tot.spilled / tot.requests if tot.requests else 0.0,
        "cold_starts": int(round(tot.cold_starts)),
        "throttled": float(tot.throttled),
        "lambda_served": float(tot.lambda_served),
        "cost": cost,
        "cost_usd": cost["ec2"] + l_req + l_cmp,
        "instances": [
            {
                "launch": round(i.launched_at - pad, 2),
                "ready": round(i.ready_at - pad, 2),
                "end": None if i.ended_at is None else round(i.ended_at - pad, 2),
            }
            for i in backend.instances
        ],  # fmt: skip
    }


# ------------------------------------------------------------------------------ main


def calibrate_handler(art: Path, sizes: list[int], repeats: int, memory_mb: int) -> dict:
    """The model's time per batch as the spill function runs it: the Lambda emulator's REPORT
    Duration (the handler: the V2 codec and the forward pass, what Lambda bills), the invoke's
    round trip beyond it through the router's own client (`LambdaInvoker`, aiobotocore: the
    invocation overhead) and the first invoke's init (a cold start), now, on this machine."""
    import asyncio

    from hybridserve.aws.invoke import LambdaInvoker
    from hybridserve.lambda_emulator.server import LambdaEmulator
    from hybridserve.loadgen import build_payload
    from predictors.artifact import artifact_metadata

    body = build_payload(artifact_metadata(art), seed=0)

    def payload(n: int) -> bytes:
        return b'{"batch":[' + b",".join([body] * n) + b"]}"

    async def measure(url: str, name: str) -> dict:
        inv = LambdaInvoker(name, endpoint_url=url, local_credentials=True, max_concurrency=1,
                            timeout_s=60.0)  # fmt: skip
        await inv.start()
        try:
            first = await inv.invoke(payload(1))
            batch_ms, over = {}, []
            for b in sizes:
                await inv.invoke(payload(b))
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    r = await inv.invoke(payload(b))
                    over.append((time.perf_counter() - t0) * 1000.0 - r.duration_ms)
                    batch_ms.setdefault(b, []).append(r.duration_ms)
        finally:
            await inv.close()
        return {
            "batch_ms": {b: round(float(np.median(v)), 3) for b, v in batch_ms.items()},
            "invoke_overhead_ms": round(float(np.median(over)), 3),
            "init_ms": first.init_ms,
        }

    emu = LambdaEmulator(art, concurrency=1, keep_alive_s=600.0, memory_mb=memory_mb).start()
    try:
        return asyncio.run(measure(emu.url, emu.function_name))
    finally:
        emu.stop()


def calibrate(args, work: Path) -> dict:
    """The profile both sides use: the handler's time per batch size (`calibrate_handler`), its
    invocation overhead and cold start, in `hybridserve profile`'s format; beside it the bare
    forward pass (live_calibration.calibrate_model) for comparison."""
    from live_calibration import calibrate_model, cpu_info, nominal_capacity
    from live_deployments import deployment_sizing

    from hybridserve.serve import ServeConfig, ensure_artifact, load_serve_config

    cal: dict[str, Any] = {"cores": cpu_info()}
    cfg = load_serve_config(None)
    art = ensure_artifact(cfg)
    m = cal["model"] = calibrate_model(
        art, cfg.instances.threads, cfg.instances.max_batch, args.profile_repeats, work
    )
    sizes = sorted(int(b) for b in m["batch_ms"])
    h = cal["handler"] = calibrate_handler(art, sizes, args.profile_repeats, args.memory_mb)
    doc = yaml.safe_load(Path(m["profile"]).read_text())
    doc["provenance"] = (
        f"{doc.get('provenance', '')}; batch times measured through the Lambda emulator's "
        "handler (REPORT Duration, median), by benchmarks/fidelity.py"
    )
    doc["reference"]["batch_ms"] = h["batch_ms"]
    doc["lambda"] = {"invoke_overhead_ms": h["invoke_overhead_ms"]}
    if h["init_ms"]:
        doc["lambda"]["cold_start_s"] = round(h["init_ms"] / 1000.0, 4)
    m["profile"] = str(work / "profile-handler.yaml")
    Path(m["profile"]).write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"handler calibration: {h}", file=sys.stderr)
    sizing = cal["sizing"] = deployment_sizing(
        cal["cores"]["affinity"], cfg.instances.threads, None, None
    )
    serve = ServeConfig.model_validate(serve_config(args, m["profile"], sizing, work / "logs"))
    profile = yaml.safe_load(Path(m["profile"]).read_text())
    cal["nominal"] = nominal_capacity(serve, profile, m["cpu_ms"], cal["cores"]["affinity"])
    cal["capacity_rps"] = cal["nominal"]["fleet_plus_lambda_rps"]
    cal["fraction"] = args.fraction
    return cal


def run_window(w: Window, args, cal: dict, work: Path) -> dict:
    from hybridserve.config import lambda_cold_start_s

    seconds = 60 * args.minutes
    counts = source_counts(w)
    start = pick_window(counts, w.kind, seconds, gaps=w.gaps)
    factor, win = scaled_window(
        counts, start, seconds, cal["capacity_rps"], args.fraction, args.seed
    )
    trace_file = work / f"{w.name}.txt"
    write_counts(trace_file, win)
    info = {
        "source": w.path.name,
        "kind": w.kind,
        "start_s": start,
        "rate_scale": round(factor, 4),
        "mean_rps": round(float(win.mean()), 2),
        "peak_10s_rps": round(peak_rate(win), 2),
        "peak_1s": int(win.max()),
        "file": str(trace_file),
    }
    print(f"{w.name}: {info}", file=sys.stderr)
    profile_path = cal["model"]["profile"]
    cfg = serve_config(args, profile_path, cal["sizing"], work / f"logs-{w.name}")
    saved = work / f"live-{w.name}.json"
    if args.resim:
        live = json.loads(saved.read_text())
    else:
        live = run_live(w.name, trace_file, cfg, args, work)
        saved.write_text(json.dumps(live))
    profile = yaml.safe_load(Path(profile_path).read_text())
    start_s = live["start_s_mean"] if live["start_s_mean"] is not None else 1.0
    delay = cfg["instances"]["launch_delay_s"] + start_s
    calibrated = sim_scenario(cfg, profile, live["init_s_mean"])
    scale = lambda_time_scale(live, calibrated) or 1.0
    sc = sim_scenario(cfg, profile, live["init_s_mean"], scale)
    live["cost"] = live_cost(live, sc, args.memory_mb)
    live["cost_usd"] = sum(v for k, v in live["cost"].items() if k != "instance_s")
    slow = fleet_speed(live.get("instance_correction") or {})
    sim = run_sim(
        win, sc, "hybrid", live["steps_before"], seed=args.seed,
        step_counts=live.get("step_counts"), fleet_slowdown=slow, launch_delay_s=delay,
        plan_sc=calibrated,
    )  # fmt: skip
    # the same without the run's measured Lambda speed: the profile as calibrated at start
    pure = run_sim(
        win, calibrated, "hybrid", live["steps_before"], seed=args.seed,
        step_counts=live.get("step_counts"), des=False, launch_delay_s=delay,
    )  # fmt: skip
    row = compare(w.name, seconds, live, sim)
    row["targets"] = judge(row)
    row["window"] = info
    row["live"] = {k: v for k, v in live.items() if k not in ("lives",)}
    row["live"]["instances"] = [
        {"launch": round(x["launch"] - live["t0"], 2),
         "ready": None if x["ready"] is None else round(x["ready"] - live["t0"], 2),
         "end": round(x["end"] - live["t0"], 2)}
        for x in live["lives"]
    ]  # fmt: skip
    row["sim"] = sim
    row["sim_at_calibration"] = {
        k: pure[k] for k in ("attainment", "spill", "cost_usd", "cold_starts", "lambda_invokes")
    }
    row["sim_scenario"] = {
        "launch_delay_s": round(delay, 3),
        "planned_launch_delay_s": sc.pools[0].launch_delay_s,
        "lambda_cold_start_s": lambda_cold_start_s(sc),
        "lambda_time_scale": round(scale, 4),
        "fleet_slowdown": round(slow, 4),
        "lambda_invoke_overhead_ms": sc.model.lambda_.invoke_overhead_ms,
        "control_interval_s": sc.control_interval_s,
        "steps_before": live["steps_before"],
    }
    print(f"  {w.name}: {json.dumps(row)}", file=sys.stderr)
    return row


def print_report(cal: dict, rows: list[dict], skipped: list[dict]) -> None:
    c = cal["cores"]
    n = cal["nominal"]
    print(
        f"\ncalibration: {c['cpu_count']} CPUs, {c['cpu_model']}, ISA {c['isa']}; load average "
        f"{c['loadavg_start']} at start, {cal.get('loadavg_end')} at end"
    )
    bm = ", ".join(f"{b}: {v:g}" for b, v in cal["model"]["batch_ms"].items())
    print(
        f"  model: ms per batch {{{bm}}}; deployment: {n['instances']} instance(s) "
        f"({n['instance_rps']:g} req/s) + {n['lambda_environments']} Lambda environment(s) "
        f"({n['lambda_rps']:g} req/s); windows scaled to {cal['fraction']:g} x "
        f"{cal['capacity_rps']:g} req/s at their busiest 10 s"
    )
    head = (
        f"\n{'window':<17} {'req':>7} {'cost live':>10} {'sim':>10} {'err':>7}  "
        f"{'attain live':>11} {'sim':>8} {'diff pp':>8}  {'spill live':>10} {'sim':>7} "
        f"{'diff pp':>8}  {'cold':>9}"
    )
    print(head)
    for r in rows:
        err = "-" if r["cost_rel_err"] is None else f"{r['cost_rel_err']:+.1%}"
        print(
            f"{r['trace']:<17} {r['requests']:>7} {r['live_cost_usd']:>10.5f} "
            f"{r['sim_cost_usd']:>10.5f} {err:>7}  {r['live_attainment']:>11.3%} "
            f"{r['sim_attainment']:>8.3%} {r['attainment_diff_pp']:>+8.2f}  "
            f"{r['live_spill']:>10.2%} {r['sim_spill']:>7.2%} {r['spill_diff_pp']:>+8.2f}  "
            f"{r['live_cold_starts']:>4}/{r['sim_cold_starts']:<4}"
        )
    for s in skipped:
        print(f"{s['trace']:<17} skipped: {s['reason']}")
    print(
        f"\ntargets: cost within {COST_REL:.0%}, attainment within {ATTAINMENT_PP:g} pp, "
        f"spill share within {SPILL_PP:g} pp"
    )
    for r in rows:
        t = r["targets"]
        w = r["window"]
        print(
            f"  {r['trace']}: "
            + ", ".join(f"{'PASS' if ok else 'FAIL'} {k}" for k, ok in t.items())
            + f"  (start {w['start_s']} s of {w['source']}, x{w['rate_scale']:g}, mean "
            f"{w['mean_rps']:g} / peak 10 s {w['peak_10s_rps']:g} req/s; machine "
            f"{r['live']['machine_busy']:.0%} busy)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=int, default=15, help="window length (whole minutes)")
    ap.add_argument(
        "--windows", default=None, help=f"comma-separated subset of {[w.name for w in WINDOWS]}"
    )
    ap.add_argument("--quick", action="store_true", help="3-minute windows (development)")
    ap.add_argument(
        "--fraction",
        type=float,
        default=0.35,
        help="each window's busiest 10 s as a fraction of the deployment's nominal capacity",
    )
    ap.add_argument("--slo-ms", type=float, default=300.0)
    ap.add_argument("--interval-s", type=int, default=5, help="control interval")
    ap.add_argument("--launch-delay-s", type=float, default=5.0)
    ap.add_argument("--keep-alive-s", type=float, default=60.0, help="Lambda keep-alive")
    ap.add_argument("--memory-mb", type=int, default=2048, help="Lambda memory")
    ap.add_argument("--client-timeout-s", type=float, default=30.0)
    ap.add_argument("--profile-repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--resim",
        action="store_true",
        help="no live runs: simulate again against the live results an earlier run saved in "
        "--work (model development)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.minutes = min(args.minutes, 3)
    if args.minutes < 2:
        ap.error("--minutes must be >= 2")
    if not 0 < args.fraction <= 1:
        ap.error("--fraction must be in (0, 1]")
    if args.resim and not args.work:
        ap.error("--resim needs the --work folder of an earlier run")
    chosen = list(WINDOWS)
    if args.windows:
        names = [x.strip() for x in args.windows.split(",") if x.strip()]
        unknown = sorted(set(names) - {w.name for w in WINDOWS})
        if unknown:
            ap.error(f"--windows: unknown {unknown}; choose from {[w.name for w in WINDOWS]}")
        chosen = [w for w in WINDOWS if w.name in names]
    # SIGTERM unwinds like Ctrl-C, so a serve this run started is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # children (serve, model servers, emulator workers) import this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    work = Path(args.work or tempfile.mkdtemp(prefix="fidelity-"))
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "calibration.json"
    if args.resim and saved.exists():
        cal = json.loads(saved.read_text())
    else:
        cal = calibrate(args, work)
        saved.write_text(json.dumps(cal))
    print(f"calibration: {cal}", file=sys.stderr)
    rows, skipped = [], []
    for w in chosen:
        if not w.path.exists():
            msg = f"{w.path} is absent (../shared/traces)"
            print(f"skipping {w.name}: {msg}", file=sys.stderr)
            skipped.append({"trace": w.name, "reason": msg})
            continue
        rows.append(run_window(w, args, cal, work))
    cal["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "windows": rows,
        "skipped": skipped,
        "calibration": cal,
        "targets": {
            "cost_rel": COST_REL,
            "attainment_pp": ATTAINMENT_PP,
            "spill_pp": SPILL_PP,
            "passed": all(all(r["targets"].values()) for r in rows),
        },
    }
    if args.json:
        print(json.dumps(result))
        return
    print_report(cal, rows, skipped)


if __name__ == "__main__":
    main()
