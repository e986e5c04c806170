"""What a transformer adds to a request (issue 15): the shipped text classifier (raw text in,
label and score out) around the DistilBERT-sized int8 model, at batch 1, against the same model
given token ids directly. Both go through the data plane's synchronous path (the Lambda
handler's), timed in interleaved blocks so a drift of the shared host's speed falls on both
alike; the transformer's own steps (tokenize, softmax and label) are also timed alone.

Usage: python benchmarks/transformer_overhead.py [--json] [--requests 300] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOCKS = 6
TEXT = "the service was quick and the food was lovely, would come back again"


def artifact(work: Path) -> Path:
    """The distilbert int8 artifact (built once into `work`)."""
    from predictors.artifact_build import build_artifact

    art = work / "distilbert-int8"
    if not (art / "manifest.json").is_file():
        art = build_artifact("distilbert", work, variant="int8")
    return art


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.array(ms)
    return {k: round(float(np.percentile(a, q)), 3) for k, q in (("p50", 50), ("p99", 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "hybridserve" / "bench"))
    args = ap.parse_args()
    out = measure(args.requests, Path(args.work))
    if args.json:
        print(json.dumps(out))
        return
    ids_p, text_p = out["ids_ms"], out["text_ms"]
    print(f"cpu: {out['cpu']}; distilbert int8, batch 1, sequence 128, 2 threads")
    print(f"token ids in:  p50 {ids_p['p50']:.2f} ms  p99 {ids_p['p99']:.2f} ms")
    print(f"text in:       p50 {text_p['p50']:.2f} ms  p99 {text_p['p99']:.2f} ms")
    print(f"added by the transformer (p50): {out['transformer_added_ms']:.2f} ms")
    print(
        f"  its steps alone: tokenize p50 {out['preprocess_ms']['p50']:.3f} ms, "
        f"softmax and label p50 {out['postprocess_ms']['p50']:.3f} ms"
    )


def measure(requests: int, work: Path) -> dict:
    """The figures `main` prints (benchmarks/rollouts_async.py reports them too)."""
    from predictors.dataplane import DataPlane
    from predictors.isa import cpu_isa
    from predictors.text import encode
    from predictors.transformer import attach_transformer, load_served, parse_source
    from predictors.v2 import decode_request, encode_request

    work.mkdir(parents=True, exist_ok=True)
    art = artifact(work)
    texted = work / "distilbert-int8-text"
    shutil.rmtree(texted, ignore_errors=True)
    shutil.copytree(art, texted)
    attach_transformer(texted, *parse_source("text"))
    bare = load_served(art, threads=2)
    wrapped = load_served(texted, threads=2)
    planes = {"ids": DataPlane([bare]), "text": DataPlane([wrapped])}
    name = bare.name
    ids, mask = encode([TEXT], 128)
    bodies = {
        "ids": encode_request({"input_ids": ids, "attention_mask": mask}),
        "text": encode_request({"text": np.array([TEXT], dtype=object)}),
    }
    for k, plane in planes.items():  # warm up both
        for _ in range(5):
            plane.infer_bytes_sync(name, bodies[k][0], bodies[k][1].get(_HL))
    times: dict[str, list[float]] = {"ids": [], "text": []}
    per_block = max(1, requests // BLOCKS)
    for _ in range(BLOCKS):
        for k, plane in planes.items():
            body, headers = bodies[k]
            for _ in range(per_block):
                t0 = time.perf_counter()
                plane.infer_bytes_sync(name, body, headers.get(_HL))
                times[k].append((time.perf_counter() - t0) * 1000.0)
    # the transformer's steps alone
    t = wrapped.transformer
    req = decode_request(*_args(bodies["text"]))
    pre, post = [], []
    logits = bare.predict({"input_ids": ids, "attention_mask": mask})
    for _ in range(requests):
        t0 = time.perf_counter()
        t.preprocess(req.input_arrays())
        t1 = time.perf_counter()
        t.postprocess(logits)
        t2 = time.perf_counter()
        pre.append((t1 - t0) * 1000.0)
        post.append((t2 - t1) * 1000.0)
    ids_p, text_p = percentiles(times["ids"]), percentiles(times["text"])
    isa = cpu_isa()
    out = {
        "cpu": f"{platform.processor() or isa.cpu_model} ({isa.isa}, int8 {isa.int8_path})",
        "requests_each": len(times["ids"]),
        "ids_ms": ids_p,
        "text_ms": text_p,
        "transformer_added_ms": round(text_p["p50"] - ids_p["p50"], 3),
        "preprocess_ms": percentiles(pre),
        "postprocess_ms": percentiles(post),
    }
    return out


_HL = "Inference-Header-Content-Length"


def _args(encoded: tuple[bytes, dict[str, str]]) -> tuple[bytes, str | None]:
    body, headers = encoded
    return body, headers.get(_HL)


if __name__ == "__main__":
    main()
