"""What a benchmark sends and where: the server's URL, the headers, the model's metadata and
the one request body reused for every request (built from the metadata, or read from a file)."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


class BenchError(RuntimeError):
    """A benchmark cannot start (bad payload, unreachable server); the message says why."""


def normalize_url(url: str) -> str:
    """``host:port`` or ``http://host:port/`` -> ``http://host:port`` (no trailing slash)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def infer_url(url: str, model: str) -> str:
    return f"{normalize_url(url)}/v2/models/{model}/infer"


def request_headers(api_key: str | None = None) -> dict[str, str]:
    """Headers sent with every request (and the metadata fetch)."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def fetch_metadata(
    url: str, model: str, headers: Mapping[str, str] | None = None, timeout_s: float = 10.0
) -> dict[str, Any]:
    """``GET {url}/v2/models/{model}`` as a dict; BenchError naming the URL on any failure.

    Synchronous (urllib): it runs once before the benchmark, and works inside or outside an
    event loop. Proxy variables are ignored, as the benchmark's aiohttp session ignores them.
    """
    target = f"{normalize_url(url)}/v2/models/{model}"
    req = urllib.request.Request(target, headers={"Accept": "application/json", **(headers or {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # like aiohttp: no proxy
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace").strip()
        raise BenchError(
            f"model metadata {target} answered HTTP {e.code}: {detail or e.reason} "
            f"(is model {model!r} served there?)"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise BenchError(f"cannot reach {target}: {reason} (is the server running?)") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise BenchError(f"model metadata {target} is not JSON: {raw[:80]!r}") from None
    if not isinstance(doc, dict):
        raise BenchError(f"model metadata {target} is not a JSON object")
    return doc


_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64", "BF16"}


def build_payload(metadata: Mapping[str, Any], seed: int = 0) -> bytes:
    """A V2 JSON request matching the model's declared inputs, batch of one.

    Dynamic (-1) dims become 1; integers are 1 (a valid token id for any vocabulary), floats
    seeded standard normals, BOOL false, BYTES ``"x"``. One body is reused for every request.
    """
    name = metadata.get("name", "?")
    inputs = metadata.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BenchError(f"model {name!r} metadata lists no 'inputs' to build a request from")
    rng = np.random.default_rng(seed)
    out = []
    for spec in inputs:
        try:
            tname, datatype = str(spec["name"]), str(spec["datatype"])
            shape = [1 if int(d) == -1 else int(d) for d in spec["shape"]]
        except (KeyError, TypeError, ValueError):
            raise BenchError(
                f"model {name!r} metadata input {spec!r:.80} lacks name, datatype or shape"
            ) from None
        if any(d < 0 for d in shape):
            raise BenchError(f"model {name!r} input {tname!r} has a bad shape {spec['shape']}")
        n = math.prod(shape)
        if datatype in _INT_TYPES:
            data: list[Any] = [1] * n
        elif datatype in _FLOAT_TYPES:
            data = rng.standard_normal(n).astype(np.float32).tolist()
        elif datatype == "BOOL":
            data = [False] * n
        elif datatype == "BYTES":
            data = ["x"] * n
        else:
            raise BenchError(f"model {name!r} input {tname!r} has unknown datatype {datatype!r}")
        out.append({"name": tname, "datatype": datatype, "shape": shape, "data": data})
    return json.dumps({"inputs": out}, separators=(",", ":")).encode()


def load_payload(path: str | Path) -> bytes:
    """A request body file, checked to be a V2 JSON request (sent as is afterwards)."""
    expected = (
        'a V2 JSON inference request like {"inputs": [{"name", "datatype", "shape", "data"}]}'
    )
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise BenchError(f"--payload {path}: cannot read ({e.strerror or e})") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BenchError(f"--payload {path}: not JSON ({e}); expected {expected}") from None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise BenchError(f"--payload {path}: no non-empty 'inputs' list; expected {expected}")
    for i, t in enumerate(inputs):
        if not isinstance(t, dict) or not {"name", "datatype", "shape"} <= t.keys():
            raise BenchError(
                f"--payload {path}: inputs[{i}] lacks name, datatype or shape; expected {expected}"
            )
    return raw
