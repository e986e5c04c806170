"""V2 metadata documents (server and model) and the error body, as the endpoints return them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from predictors.model import TensorSpec

EXTENSIONS = ("binary_tensor_data",)


def server_metadata(
    name: str = "hybridserve", version: str = "0.1.0", extensions: Iterable[str] = EXTENSIONS
) -> dict[str, Any]:
    return {"name": name, "version": version, "extensions": list(extensions)}


def model_metadata(
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": platform,
        "inputs": [s.as_json() for s in inputs],
        "outputs": [s.as_json() for s in outputs],
    }


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
