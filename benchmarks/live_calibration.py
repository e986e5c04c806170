"""What this machine can serve, measured before any load is sized (live_hybrid's calibration):
the model's service time per batch, nominal capacities from that profile, closed-loop probes
of fleet+Lambda and of Lambda alone."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from live_procs import (  # noqa: E402
    answers_by_path,
    closed_loop,
    round_or_none,
    start_serve,
    stop,
    wait_fleet,
)

from hybridserve.serve import ServeConfig, local_scenario  # noqa: E402


def cpu_info() -> dict:
    cores = os.cpu_count() or 1
    affinity = len(os.sched_getaffinity(0))
    model, isa = "?", "?"
    try:
        from predictors.isa import cpu_isa

        i = cpu_isa()
        model, isa = i.cpu_model, f"{i.isa} (int8 path {i.int8_path})"
    except Exception:  # informative only
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": cores,
        "affinity": affinity,
        "cpu_model": model,
        "isa": isa,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def calibrate_model(art: Path, threads: int, max_batch: int, repeats: int, work: Path) -> dict:
    """Wall p50 and CPU ms per forward pass by batch size, now, on this machine; written as a
    profile YAML (`hybridserve profile`'s format) for the serve processes."""
    from predictors.artifact import load_artifact
    from predictors.onnx_model import OnnxModel
    from predictors.profile import BatchTiming, profile_document, sample_inputs

    model = OnnxModel(load_artifact(art), intra_op_num_threads=threads)
    sizes = sorted({1, 2, 4, max_batch} | {b for b in (8, 16) if b <= max_batch})
    rows, cpu_ms = [], {}
    for b in sizes:
        x = sample_inputs(model.inputs, b)
        for _ in range(2):
            model.predict(x)
        wall, cpu = np.empty(repeats), np.empty(repeats)
        for i in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            model.predict(x)
            wall[i], cpu[i] = time.perf_counter() - t0, time.process_time() - c0
        p50 = float(np.median(wall))
        rows.append(BatchTiming(b, p50 * 1e3, float(np.percentile(wall, 99)) * 1e3, b / p50))
        cpu_ms[b] = round(float(np.median(cpu)) * 1e3, 2)
    doc = profile_document(model.name, rows, threads)
    path = work / "profile-calibrated.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return {
        "threads": threads,
        "repeats": repeats,
        "batch_ms": {b: round(float(v), 2) for b, v in doc["reference"]["batch_ms"].items()},
        "cpu_ms": cpu_ms,
        "profile": str(path),
        "reference_machine_batch_ms": _reference_profile(),
    }


def _reference_profile() -> dict | None:
    try:
        doc = yaml.safe_load((REPO / "hybridserve/data/profile-distilbert-int8.yaml").read_text())
        ref = doc["reference"]
        return {"threads": ref.get("threads"), "batch_ms": ref["batch_ms"]}
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def nominal_capacity(cfg: ServeConfig, profile: dict, cpu_ms: dict, cores: int) -> dict:
    """What the profile says one instance and the emulator can serve, each alone on a core."""
    from hybridserve.config import lambda_service_s
    from hybridserve.router.buffer import batch_params

    sc = local_scenario(cfg, profile)
    pool = sc.pools[0]
    lam_ms = [0.0] + [lambda_service_s(sc, b) * 1000.0 for b in range(1, cfg.lambda_.max_batch + 1)]
    slack = (cfg.slo_ms - cfg.router.margin_ms) * sc.batch_latency_fraction
    p = sc.lambda_pricing
    bp = batch_params(
        1e6,  # heavy spill: the buffer fills its batches
        slack,
        lam_ms,
        memory_gb=cfg.lambda_.memory_mb / 1024.0,
        usd_per_gb_s=p.usd_per_gb_s,
        usd_per_request=p.usd_per_request,
    )
    inst = pool.capacity_rps
    lam = cfg.lambda_.concurrency * bp.size / lam_ms[bp.size] * 1000.0
    n_inst = cfg.instances.max_instances
    cpu_b = cpu_ms.get(pool.batch) or min(cpu_ms.values())
    return {
        "instance_batch": pool.batch,
        "instance_batch_ms": round(pool.latency_s * 1000.0, 2),
        "instance_rps": round(inst, 2),
        "instances": n_inst,
        "lambda_environments": cfg.lambda_.concurrency,
        "lambda_batch": bp.size,
        "lambda_batch_ms": round(lam_ms[bp.size], 2),
        "lambda_rps": round(lam, 2),
        "fleet_plus_lambda_rps": round(n_inst * inst + lam, 2),
        "compute_threads": n_inst * cfg.instances.threads + cfg.lambda_.concurrency,
        "compute_bound_rps": round(cores * 1000.0 * pool.batch / cpu_b, 2),
    }


def probe_capacity(
    name: str, cfg: dict, body: bytes, work: Path, concurrency: int, warm_s: float, dur_s: float
) -> dict:
    """Closed-loop throughput of a serve config, everything on this machine's cores."""
    proc, url = start_serve(cfg, work, f"probe-{name}")
    try:
        n = cfg["instances"].get("initial", 0)
        if n:
            wait_fleet(url, n)
        before = answers_by_path(url)
        r = closed_loop(url, body, "distilbert", concurrency, warm_s, dur_s, [proc.pid])
        after = answers_by_path(url)
    finally:
        stop(proc)
    cpu = {("router" if k == "root" else k): v for k, v in r["cpu_s"][proc.pid].items()}
    cpu["generator"] = r["self_cpu_s"]
    ok = max(r["ok"], 1)
    out = {
        "concurrency": concurrency,
        "rps": round(r["rps"], 2),
        "p50_ms": round_or_none(r["p50_ms"], 1),
        "p99_ms": round_or_none(r["p99_ms"], 1),
        "errors": r["errors"],
        "routes_ok": {k: after.get(k, 0) - before.get(k, 0) for k in after},
        "cpu_ms_per_request": {k: round(v / ok * 1000.0, 2) for k, v in sorted(cpu.items())},
        "ours_cores": round(sum(cpu.values()) / r["wall_s"], 2),
        "machine_busy": round(r["machine_busy"], 3),
        "measured_s": round(r["wall_s"], 1),
    }
    print(f"  probe {name}: {out}", file=sys.stderr)
    return out


def calibrate_deployments(args, base: dict, body: bytes, work: Path, nominal: dict) -> dict:
    inst = base["instances"]
    probes = {}
    warm_s, dur_s = (4.0, 6.0) if args.quick else (6.0, 12.0)
    fl_conc = 2 * (nominal["instances"] * nominal["instance_batch"])
    lam_conc = 2 * nominal["lambda_environments"] * nominal["lambda_batch"]
    fl_cfg = {
        **base,
        "deployment": "hybrid",
        "control_interval_s": 3600,  # no control step during the probe: the fleet stays up
        "instances": {**inst, "initial": inst["max_instances"], "launch_delay_s": 0},
        "log_dir": str(work / "logs-probe"),
    }
    probes["fleet_plus_lambda"] = probe_capacity(
        "fleet+lambda", fl_cfg, body, work, fl_conc + lam_conc, warm_s, dur_s
    )
    lam_cfg = {**base, "deployment": "lambda-only", "log_dir": str(work / "logs-probe")}
    probes["lambda_only"] = probe_capacity("lambda", lam_cfg, body, work, lam_conc, warm_s, dur_s)
    return probes


def print_calibration(cal: dict) -> None:
    c = cal["cores"]
    print(
        f"calibration: {c['cpu_count']} CPUs ({c['affinity']} in affinity), {c['cpu_model']}, "
        f"ISA {c['isa']}; load average {c['loadavg_start']} at start, "
        f"{cal.get('loadavg_end')} at end"
    )
    if "sizing" in cal:
        z = cal["sizing"]
        how = "fixed" if z["fixed"] else "sized to the cores"
        print(
            f"  deployments: up to {z['max_instances']} instance(s) and "
            f"{z['lambda_environments']} Lambda environment(s), {z['compute_threads']} compute "
            f"threads on {z['cores']} cores ({how})"
        )
    if "model" in cal:
        m, n = cal["model"], cal["nominal"]
        bm = ", ".join(f"{b}: {v:g}" for b, v in m["batch_ms"].items())
        cm = ", ".join(f"{b}: {v:g}" for b, v in m["cpu_ms"].items())
        print(f"  model, {m['threads']} thread: ms per batch {{{bm}}}; CPU ms {{{cm}}}")
        ref = m.get("reference_machine_batch_ms")
        if ref:
            rb = ", ".join(f"{b}: {v:g}" for b, v in ref["batch_ms"].items())
            print(f"    (earlier machine, {ref['threads']} threads: {{{rb}}})")
        print(
            f"  nominal: instance {n['instance_rps']:g} req/s (batch {n['instance_batch']}, "
            f"{n['instance_batch_ms']:g} ms) x {n['instances']}; Lambda emulator "
            f"{n['lambda_rps']:g} req/s ({n['lambda_environments']} environments, batch "
            f"{n['lambda_batch']}, {n['lambda_batch_ms']:g} ms); sum {n['fleet_plus_lambda_rps']:g}"
            f" req/s if each had a core; {n['compute_threads']} compute threads on "
            f"{c['affinity']} cores: compute bound {n['compute_bound_rps']:g} req/s"
        )
        for k, p in cal["probes"].items():
            print(
                f"  measured ({k}, closed loop x{p['concurrency']}): {p['rps']:g} req/s, p50 "
                f"{p['p50_ms']} / p99 {p['p99_ms']} ms, answers {p['routes_ok']}, errors "
                f"{p['errors']}; our processes {p['ours_cores']:g} cores, machine "
                f"{p['machine_busy']:.0%} busy"
            )
        for k in ("ramp", "warm"):
            r = cal[k]
            b = cal["basis"]
            how = "fixed" if r["fixed"] else f"{r['fraction']:g} x {b['rps']:g} ({b['name']})"
            print(f"  {k}: {r['qps']:g} req/s ({how})")
    if "router" in cal:
        r = cal["router"]
        how = "fixed" if r["fixed"] else f"{r['fraction']:g} x saturation"
        print(
            f"  router: {r['probe_router_cpu_ms_per_request'] * 1000:.0f} us CPU per request "
            f"(closed loop x{r['probe_concurrency']}, {r['probe_rps']:g} req/s, router "
            f"{r['probe_router_cores']:g} cores, machine {r['probe_machine_busy']:.0%} busy): "
            f"saturates one core at {r['router_saturation_rps']:g} req/s; "
            f"load {r['rps']:g} req/s ({how})"
        )
