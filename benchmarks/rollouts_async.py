"""Issue 15's figures, measured live on this machine (local processes, Lambda emulators):

- **canary**: a model's new version (same weights, version 2) released under 40 req/s Poisson
  with `--canary 5%` (5% -> 25% -> 100%, each step judged by the router): requests sent, lost
  (no 200), and whether it was promoted;
- **bad_canary**: then a bad version 3 (the shipped `fault` transformer: 20% of its requests
  fail) released the same way: sent, lost (the router's guard answers the canary's failures
  from the stable version), rolled back, and the seconds from the start to the rollback;
- **transformer_added_ms**: benchmarks/transformer_overhead.py's p50 difference;
- **async**: `--jobs` jobs submitted at once to a `serve` with `async_jobs.enabled`, then idle:
  completed jobs, the seconds to drain, what the burst cost (async fleet seconds and Lambda),
  what an always-on async fleet sized for the burst's deadline would cost over an hour (one
  burst an hour), and the workers left once idle.

The rollouts run on the mlp reference model (its latency is not the subject: the judge and the
split are); the async burst on distilbert int8 (`--async-model`), a job that takes tens of ms.

Usage: python benchmarks/rollouts_async.py [--json] [--rps 40] [--jobs 1000] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import shutil
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MLP_PROFILE = (
    "name: mlp\ninputs: {x: [1, 32]}\n"
    "reference: {vcpus: 1, threads: 1, batch_ms: {1: 20.0, 2: 38.0, 4: 76.0, 8: 160.0}}\n"
)
HOUR_S = 3600.0


def rollout_stack(work: Path):
    from hybridserve.multi_stack import MultiLocalStack
    from hybridserve.serve import load_serve_config
    from predictors.artifact_build import build_artifact
    from predictors.transformer import attach_transformer, parse_source

    arts = {}
    for name, version in (("alpha", "1"), ("alpha-v2", "2"), ("alpha-v3", "3")):
        d = work / "rollouts" / name
        arts[name] = d / "mlp-fp32" if (d / "mlp-fp32" / "manifest.json").is_file() else None
        if arts[name] is None:
            arts[name] = build_artifact("mlp", d, variant="fp32", version=version)
            if name == "alpha-v3":
                attach_transformer(arts[name], *parse_source("fault"))
    profile = work / "rollouts" / "profile.yaml"
    profile.write_text(MLP_PROFILE)
    cfg = load_serve_config(
        None,
        deployment="hybrid",
        forecaster="last-value",
        control_interval_s=5,
        cache_dir=work / "cache",
        models=[{"name": n, "artifact": str(a), "profile": str(profile)} for n, a in arts.items()],
        **{
            "router.port": 0,
            "instances.launch_delay_s": 2,
            "instances.max_instances": 2,
            "lambda.concurrency": 4,
        },
    )
    return MultiLocalStack(cfg)


def release(stack, rps: float, seconds: float, spec: dict) -> dict:
    """Load at `rps` for `seconds`, start `spec` after 5 s, follow it to its end."""
    from hybridserve.cli.common import call
    from hybridserve.loadgen import bench_sync, build_payload, poisson_schedule

    body = build_payload(stack.router.models["alpha"].metadata, seed=0)
    out: dict = {}
    t = threading.Thread(
        target=lambda: out.update(
            r=bench_sync(stack.url, poisson_schedule(rps, seconds, seed=1), body, model="alpha")
        )
    )
    t.start()
    time.sleep(5)
    call(stack.url, None, "POST", "/rollouts/alpha", spec)
    doc: dict = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        doc = call(stack.url, None, "GET", "/rollouts/alpha")
        if doc["phase"] in ("promoted", "rolled_back"):
            break
        time.sleep(0.5)
    t.join()
    r = out["r"]
    ended = float(doc["history"][-1].split("s:")[0]) if doc.get("history") else None
    return {"sent": r.sent, "lost": r.sent - r.ok, "phase": doc.get("phase"), "end_s": ended,
            "history": doc.get("history", [])}  # fmt: skip


def rollouts(work: Path, rps: float) -> tuple[dict, dict]:
    stack = rollout_stack(work)
    stack.prepare()
    with contextlib.redirect_stdout(sys.stderr):  # `--json` prints one object on stdout
        stack.start_background()
    try:
        good = release(
            stack, rps, 120,
            {"version": "2", "steps": [0.05, 0.25, 1.0], "step_min_s": 5, "bake_s": 10,
             "policy": {"min_requests": 100}},
        )  # fmt: skip
        bad = release(
            stack, rps, 60,
            {"version": "3", "steps": [0.05, 0.25, 1.0], "step_min_s": 5, "bake_s": 10,
             "policy": {"min_requests": 100}},
        )  # fmt: skip
    finally:
        stack.stop_background()
    canary = {"sent": good["sent"], "lost": good["lost"], "promoted": good["phase"] == "promoted",
              "promote_s": good["end_s"], "history": good["history"]}  # fmt: skip
    bad_canary = {"sent": bad["sent"], "lost": bad["lost"],
                  "rolled_back": bad["phase"] == "rolled_back", "detect_s": bad["end_s"],
                  "history": bad["history"]}  # fmt: skip
    return canary, bad_canary


def async_burst(work: Path, jobs: int, model: str, deadline_s: float) -> dict:
    from hybridserve.attribution import lifetimes_from_events
    from hybridserve.loadgen import build_payload
    from hybridserve.local_stack import LocalStack
    from hybridserve.pricing import ec2_usd
    from hybridserve.serve import load_serve_config

    store = work / "async-store"
    shutil.rmtree(store, ignore_errors=True)  # a fresh store: every result is this run's
    cfg = load_serve_config(
        None,
        model=model,
        deployment="fixed",
        cache_dir=work / "cache",
        **{
            "router.port": 0,
            "instances.launch_delay_s": 5,
            "lambda.concurrency": 2,
            "async_jobs.enabled": True,
            "async_jobs.store_dir": str(store),
            "async_jobs.deadline_s": deadline_s,
            "async_jobs.max_fleet": 1,
            "async_jobs.max_lambda": 2,
            "async_jobs.interval_s": 1.0,
        },
    )
    stack = LocalStack(cfg)
    stack.prepare()
    with contextlib.redirect_stdout(sys.stderr):
        stack.start_background()
    a = stack.async_
    try:
        body = build_payload(stack.router.metadata, seed=0)
        u = urlsplit(stack.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        t0 = time.time()
        for _ in range(jobs):
            conn.request("POST", f"/v2/models/{stack.router.cfg.model_name}/async-infer", body,
                         {"content-type": "application/json"})  # fmt: skip
            r = conn.getresponse()
            r.read()
            assert r.status == 202, r.status
        submit_s = time.time() - t0
        while a.queue.depth() != (0, 0, 0.0) and time.time() - t0 < 20 * deadline_s:
            time.sleep(0.2)
        drain_s = time.time() - t0
        idle_until = time.time() + 30
        while time.time() < idle_until and (a.runtime.workers() or a.backend.observe().totals()):
            time.sleep(0.5)
        idle_workers = a.runtime.workers() + sum(a.backend.observe().totals().values())
        completed = len(list((store / "results").glob("*.json")))
        pool = stack.scenario.pools[0]
        lives = lifetimes_from_events(a.backend.events())
        end = a.backend.now()
        fleet_usd = sum(
            ec2_usd((lf.ended_at if lf.ended_at is not None else end) - lf.launched_at,
                    pool.price_usd_s)
            for lf in lives
        )  # fmt: skip
        tally = a.runtime.tally
        need = max(1, math.ceil(jobs * a.runtime.job_s / deadline_s))
        return {
            "jobs": jobs,
            "completed": completed,
            "submit_s": round(submit_s, 2),
            "drain_s": round(drain_s, 2),
            "cost_usd": round(fleet_usd + tally.lambda_usd, 6),
            "fleet_usd": round(fleet_usd, 6),
            "lambda_usd": round(tally.lambda_usd, 6),
            "fleet_jobs": tally.fleet_jobs,
            "lambda_jobs": tally.lambda_jobs,
            "always_on_cost_usd": round(need * pool.price_usd_s * HOUR_S, 6),
            "always_on_instances": need,
            "idle_workers": idle_workers,
            "model": stack.router.cfg.model_name,
            "deadline_s": deadline_s,
        }
    finally:
        stack.stop_background()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rps", type=float, default=40.0)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--async-model", default="distilbert")
    ap.add_argument("--deadline-s", type=float, default=120.0)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "hybridserve" / "bench"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    from transformer_overhead import measure

    from predictors.isa import cpu_isa

    added = measure(300, work)["transformer_added_ms"]  # first, on a quiet machine
    canary, bad = rollouts(work, args.rps)
    burst = async_burst(work, args.jobs, args.async_model, args.deadline_s)
    out = {"canary": canary, "bad_canary": bad, "transformer_added_ms": added, "async": burst,
           "cpu": cpu_isa().cpu_model}  # fmt: skip
    if args.json:
        print(json.dumps(out))
        return
    print(f"cpu: {out['cpu']}")
    print(f"canary at {args.rps:g} req/s: sent {canary['sent']}, lost {canary['lost']}, "
          f"promoted {canary['promoted']} after {canary['promote_s']} s")  # fmt: skip
    print(f"bad canary: sent {bad['sent']}, lost {bad['lost']}, rolled back "
          f"{bad['rolled_back']}, detected after {bad['detect_s']} s")  # fmt: skip
    print(f"transformer added (p50): {added} ms")
    b = burst
    print(f"async: {b['completed']}/{b['jobs']} jobs drained in {b['drain_s']} s "
          f"({b['fleet_jobs']} on the fleet, {b['lambda_jobs']} on Lambda), cost "
          f"${b['cost_usd']:.5f} against ${b['always_on_cost_usd']:.4f} for an always-on "
          f"fleet of {b['always_on_instances']} over an hour; idle workers {b['idle_workers']}")  # fmt: skip


if __name__ == "__main__":
    main()
