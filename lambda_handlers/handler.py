"""AWS Lambda entry point of the spill function: V2 inference on an ONNX artifact.

Lean on purpose: onnxruntime, numpy, zstandard and the predictors runtime (no torch, no onnx).
The model is loaded once per container (the only module-level state in the project): the
artifact is verified, decompressed to /tmp and opened with intra-op threads matched to the
function's vCPUs; the cold start logs one JSON line with the CPU's ISA and int8 kernel path.

Events served:
- a V2 inference request (`{"inputs": [...], ...}`), answered with a V2 response;
- a batch (`{"batch": [request, ...]}`, what the router's BATCH-style buffer sends): one forward
  pass over all rows, split back into `{"responses": [...]}` in order;
- API Gateway / function URL proxy events for `/v2/health/*`, `/v2/models/{name}[/ready]` and
  `POST /v2/models/{name}/infer` (JSON or Triton's binary tensor extension).
- a keep-warm ping (`{"warmup": true}`, optionally `"hold_ms"`), answered `{"warm": true}`
  without running the model: it loads the model on a cold start (the point of warming) and may
  hold the environment a few ms so concurrent pings land on distinct environments.
A bad request gets a V2 error object (`{"error": ...}` with its status); it never kills the
container.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

_CACHE: dict[str, Any] = {}  # per container: the loaded model and how long the load took

ARTIFACT_ENV = "HYBRIDSERVE_ARTIFACT"
EXTRACT_DIR = "/tmp/hybridserve"
WARMUP_HOLD_MAX_MS = 1000  # a warm-up may keep its environment busy at most this long


def _threads() -> int:
    """onnxruntime threads from the function's memory (a full vCPU per 1,769 MB)."""
    mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769"))
    return max(1, min(6, round(mb / 1769)))


def _artifact_dir() -> Path:
    loc = os.environ.get(ARTIFACT_ENV) or str(Path(__file__).resolve().parents[1] / "artifact")
    if not loc.startswith("s3://"):
        return Path(loc)
    import boto3  # present in the Lambda runtime

    bucket, _, prefix = loc[5:].partition("/")
    dest = Path(EXTRACT_DIR) / "artifact"
    dest.mkdir(parents=True, exist_ok=True)
    s3 = boto3.client("s3")
    prefix = prefix.rstrip("/") + "/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix) :]
            if not target.exists() or target.stat().st_size != obj["Size"]:
                s3.download_file(bucket, obj["Key"], str(target))
    return dest


def get_plane():
    """The container's data plane and model, loaded on first use (the cold start)."""
    if "plane" not in _CACHE:
        from predictors.dataplane import DataPlane
        from predictors.transformer import load_served

        t0 = time.perf_counter()
        model = load_served(
            _artifact_dir(),
            threads=_threads(),
            extract_dir=os.environ.get("HYBRIDSERVE_EXTRACT_DIR", EXTRACT_DIR),
        )
        _CACHE["plane"] = DataPlane([model], max_delay_ms=0.0)
        _CACHE["model"] = model
        _CACHE["load_s"] = time.perf_counter() - t0
        _log_cold_start(model, _CACHE["load_s"])
    return _CACHE["plane"], _CACHE["model"]


def _log_cold_start(model, load_s: float) -> None:
    """One JSON line (CloudWatch keeps stderr): which CPU this environment got, for latency.

    Lambda runs a function on whichever Intel/AMD (or Graviton) CPU the host has; the int8 path
    (exact-int32 or int16-saturating-pairs) tells which kernels the int8 variant runs on.
    """
    from predictors.isa import cpu_isa

    isa = cpu_isa()
    _CACHE["isa"] = isa
    line = {
        "ts": round(time.time(), 3),
        "level": "info",
        "logger": "hybridserve.lambda",
        "event": "lambda.cold_start",
        "model": model.name,
        "variant": getattr(model, "model", model).artifact.variant,  # behind a transformer
        "isa": isa.isa,
        "int8_path": isa.int8_path,
        "cpu_model": isa.cpu_model,
        "machine": isa.machine,
        "threads": _threads(),
        "load_s": round(load_s, 3),
    }
    print(json.dumps(line), file=sys.stderr, flush=True)


def _error(status: int, message: str) -> dict:
    return {"error": message, "status": status}


def _infer_batch(plane, model, requests: list) -> list[dict]:
    """One forward pass for a list of requests; a bad one gets its own error, the rest run."""
    from predictors.v2_decode import decode_request
    from predictors.v2_encode import encode_response
    from predictors.v2_types import V2Error

    decoded = []
    out: list[dict | None] = [None] * len(requests)
    for i, r in enumerate(requests):
        try:
            req = decode_request(r)
            inputs, rows = plane.prepare(model, req)
            decoded.append((i, req, inputs, rows))
        except V2Error as e:
            out[i] = _error(e.status, e.message)
    if decoded:
        names = list(decoded[0][2])
        batch = {n: np.concatenate([x[n] for _, _, x, _ in decoded]) for n in names}
        results = model.predict(batch)
        bounds = np.cumsum([0, *(rows for *_, rows in decoded)])
        for (i, req, _, _), lo, hi in zip(decoded, bounds[:-1], bounds[1:], strict=True):
            try:
                resp = plane.finish(model, req, {k: v[lo:hi] for k, v in results.items()})
            except V2Error as e:  # its transformer's postprocess: this request alone
                out[i] = _error(e.status, e.message)
                continue
            out[i] = json.loads(encode_response(resp)[0])
    return out  # type: ignore[return-value]


def _proxy(plane, model, event: dict) -> dict:
    """API Gateway (REST/HTTP) or function URL proxy event -> proxy response."""
    method = (
        event.get("requestContext", {}).get("http", {}).get("method")
        or event.get("httpMethod")
        or "GET"
    ).upper()
    path = (event.get("rawPath") or event.get("path") or "/").rstrip("/")
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}

    def reply(status: int, body: dict | bytes, extra: dict | None = None) -> dict:
        if isinstance(body, bytes):
            return {
                "statusCode": status,
                "headers": {"content-type": "application/octet-stream", **(extra or {})},
                "body": base64.b64encode(body).decode(),
                "isBase64Encoded": True,
            }
        return {
            "statusCode": status,
            "headers": {"content-type": "application/json", **(extra or {})},
            "body": json.dumps(body),
            "isBase64Encoded": False,
        }

    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["v2", "health"] and len(parts) == 3:
        return reply(
            200, {"live": plane.live()} if parts[2] == "live" else {"ready": plane.ready()}
        )
    if parts == ["v2"]:
        return reply(200, plane.server_metadata())
    if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
        name, tail, version = parts[2], parts[3:], None
        if len(tail) >= 2 and tail[0] == "versions":
            version, tail = tail[1], tail[2:]
        if not tail and method == "GET":
            return reply(200, plane.model_metadata(name, version))
        if tail == ["ready"]:
            return reply(200, {"name": name, "ready": plane.model_ready(name, version)})
        if tail == ["infer"] and method == "POST":
            raw = event.get("body") or ""
            body = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
            hl = headers.get("inference-header-content-length")
            payload, extra = plane.infer_bytes_sync(name, body, hl, version)
            if any(k.lower() == "inference-header-content-length" for k in extra):
                return reply(200, payload, {k.lower(): v for k, v in extra.items()})
            return reply(200, json.loads(payload))
    return reply(404, {"error": f"no route for {method} {path or '/'}"})


def _warmup(event: dict) -> dict:
    """A keep-warm ping: the model is loaded by now; hold briefly if asked, never infer."""
    try:
        hold_ms = float(event.get("hold_ms") or 0.0)
    except (TypeError, ValueError):
        return _error(400, "'hold_ms' must be a number of milliseconds")
    if hold_ms > 0:
        time.sleep(min(hold_ms, WARMUP_HOLD_MAX_MS) / 1000.0)
    return {"warm": True}


def handler(event: Any, context: Any = None) -> Any:
    """Lambda entry point: never raises; errors come back as V2 error objects."""
    from predictors.v2_types import V2Error

    proxy = isinstance(event, dict) and ("requestContext" in event or "httpMethod" in event)
    try:
        plane, model = get_plane()
        if proxy:
            return _proxy(plane, model, event)
        if isinstance(event, dict) and event.get("warmup") is True:
            return _warmup(event)
        if isinstance(event, dict) and "batch" in event:
            if not isinstance(event["batch"], list):
                return _error(400, "'batch' must be a list of V2 inference requests")
            return {"responses": _infer_batch(plane, model, event["batch"])}
        if not isinstance(event, dict):
            return _error(400, "expected a V2 inference request object, a batch or a proxy event")
        name = event.get("model_name") or model.name
        payload, _ = plane.infer_bytes_sync(
            name, {k: v for k, v in event.items() if k != "model_name"}
        )
        return json.loads(payload)
    except V2Error as e:
        body = _error(e.status, e.message)
    except Exception as e:  # a bug or a broken artifact must not take the container down
        body = _error(500, f"{type(e).__name__}: {e}")
    if proxy:
        return {
            "statusCode": body["status"],
            "headers": {"content-type": "application/json"},
            "body": json.dumps({"error": body["error"]}),
            "isBase64Encoded": False,
        }
    return body
