"""Serverless latency of the DistilBERT-sized model at batch 1, sequence 128, on this machine.

Prints artifact and Lambda package sizes, cold start (fresh interpreter until the first
prediction, decompress and verify included; median of 5) with the handler's peak RSS, warm
latency p50/p95/p99 over 200 requests in-process through the Lambda handler and through the V2
model server, next to the seed benchmark's Lambda, Cloud Run and Kubernetes rows.
Usage: python benchmarks/serverless_latency.py [--json] [--work DIR] [--model distilbert]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED_ROWS = [  # serverless benchmark, DistilBERT (~256 MB): warm p50/p95/p99 s, cold first response s
    ("AWS Lambda (seed)", 490, 530, 570, 41.0),
    ("Cloud Run (seed)", 380, 460, 500, 8.2),
    ("Kubernetes (seed)", 260, 280, 290, 0.7),
]
MEMORY_MB = 3538  # a 2-vCPU function: the handler then runs onnxruntime on 2 threads


def request(seq: int = 128) -> dict:
    ids = np.ones((1, seq), dtype=np.int64)
    return {
        "inputs": [
            {
                "name": "input_ids",
                "datatype": "INT64",
                "shape": [1, seq],
                "data": ids.ravel().tolist(),
            },
            {
                "name": "attention_mask",
                "datatype": "INT64",
                "shape": [1, seq],
                "data": ids.ravel().tolist(),
            },
        ]
    }


def cold_start(artifact: Path, work: Path, runs: int = 5) -> tuple[float, float]:
    """Median seconds from interpreter spawn to first prediction, and the max peak RSS (MB)."""
    # peak RSS from VmHWM: it restarts at exec, whereas ru_maxrss would carry over the peak of
    # the process this child was forked from (which built the torch model)
    code = (
        "import json, sys; from lambda_handlers.handler import handler; "
        "r = handler(json.loads(sys.argv[1])); assert 'outputs' in r, r; "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
        "print(int(hwm.split()[1]) / 1024, flush=True)"
    )
    times, rss = [], []
    for i in range(runs):
        env = {
            **os.environ,
            "HYBRIDSERVE_ARTIFACT": str(artifact),
            "HYBRIDSERVE_EXTRACT_DIR": str(work / f"cold-{i}-{time.time_ns()}"),
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(MEMORY_MB),
            "PYTHONPATH": str(ROOT),
        }
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-c", code, json.dumps(request())],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        times.append(time.perf_counter() - t0)
        if p.returncode:
            raise RuntimeError(f"cold start failed: {p.stderr[-2000:]}")
        rss.append(float(p.stdout.strip().splitlines()[-1]))
    return float(np.median(times)), max(rss)


def warm_in_process(artifact: Path, work: Path, n: int = 200) -> np.ndarray:
    os.environ["HYBRIDSERVE_ARTIFACT"] = str(artifact)
    os.environ["HYBRIDSERVE_EXTRACT_DIR"] = str(work / "warm")
    os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = str(MEMORY_MB)
    from lambda_handlers.handler import handler

    req = request()
    for _ in range(5):
        handler(req)
    ms = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        out = handler(req)
        ms[i] = (time.perf_counter() - t0) * 1000
    assert "outputs" in out, out
    return ms


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def through_server(artifact: Path, name: str, n: int = 200) -> np.ndarray:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridserve.cli", "model-server", "--artifact", str(artifact),
         "--port", str(port), "--max-delay-ms", "0", "--threads", "2"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v2/models/{name}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        f"model server did not start: {proc.stderr.read().decode()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        body = json.dumps(request()).encode()
        url = f"{base}/v2/models/{name}/infer"
        ms = np.empty(n + 5)
        for i in range(n + 5):
            t0 = time.perf_counter()
            req = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
            ms[i] = (time.perf_counter() - t0) * 1000
        return ms[5:]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="distilbert")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "hybridserve-bench"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from predictors.artifact import build_artifact
    from predictors.packaging import build_lambda_package

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    artifact = work / f"{args.model}-int8"
    if not (artifact / "manifest.json").exists():
        print(f"building {args.model} int8 artifact ...", file=sys.stderr)
        artifact = build_artifact(args.model, work, variant="int8")
    manifest = json.loads((artifact / "manifest.json").read_text())
    art_mb = sum(f["bytes"] for f in manifest["files"].values()) / 2**20
    pkg = build_lambda_package(artifact, work / "lambda")
    print("measuring cold start ...", file=sys.stderr)
    cold_s, rss_mb = cold_start(artifact, work)
    print("measuring warm latency ...", file=sys.stderr)
    warm = warm_in_process(artifact, work)
    server = through_server(artifact, manifest["name"])
    out = {
        "model": args.model,
        "artifact_mb": round(art_mb, 1),
        "package_unzipped_mb": round(pkg.unzipped_bytes / 2**20, 1),
        "cold_start_s": round(cold_s, 3),
        "warm_p50_ms": round(float(np.percentile(warm, 50)), 2),
        "warm_p95_ms": round(float(np.percentile(warm, 95)), 2),
        "warm_p99_ms": round(float(np.percentile(warm, 99)), 2),
        "server_p50_ms": round(float(np.percentile(server, 50)), 2),
        "server_p99_ms": round(float(np.percentile(server, 99)), 2),
        "handler_peak_rss_mb": round(rss_mb, 1),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.model} int8: artifact {out['artifact_mb']} MB compressed; Lambda {pkg.kind} "
          f"{out['package_unzipped_mb']} MB unzipped (limit 250 MB)")  # fmt: skip
    print(f"{'deployment':22s} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'first response s':>17}")
    print(f"{'hybridserve handler':22s} {out['warm_p50_ms']:8.1f} {out['warm_p95_ms']:8.1f} "
          f"{out['warm_p99_ms']:8.1f} {out['cold_start_s']:17.2f}")  # fmt: skip
    print(
        f"{'hybridserve V2 server':22s} {out['server_p50_ms']:8.1f} {'':>8} {out['server_p99_ms']:8.1f} {'':>17}"
    )
    for name, p50, p95, p99, cold in SEED_ROWS:
        print(f"{name:22s} {p50:8.0f} {p95:8.0f} {p99:8.0f} {cold:17.1f}")
    print(f"handler peak RSS {out['handler_peak_rss_mb']} MB (a 512 MB function needs <= 400)")
    targets = {
        "zip <= 250 MB unzipped": pkg.kind == "zip" and out["package_unzipped_mb"] <= 250,
        "cold start <= 1 s": cold_s <= 1.0,
        "handler peak RSS <= 400 MB": rss_mb <= 400,
        "warm p50 <= 25 ms": out["warm_p50_ms"] <= 25,
        "warm p99 <= 40 ms": out["warm_p99_ms"] <= 40,
        "server p50 <= 35 ms": out["server_p50_ms"] <= 35,
    }
    for k, ok in targets.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
