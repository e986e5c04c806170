"""Encoding a V2 inference response: plain JSON, or a JSON header plus the binary tails of the
outputs asked for as binary (server side)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from predictors.model import v2_datatype
from predictors.v2_bytes import BYTES, as_bytes_array, pack, to_json
from predictors.v2_types import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    InferResponse,
    Tensor,
)


def _le_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def encode_response(
    resp: InferResponse, binary_outputs: set[str] | bool = False
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: plain JSON, or when any output goes as binary
    (``True`` = all of them), a JSON header followed by the binary tails in output order."""
    names = {t.name for t in resp.outputs}
    binary = names if binary_outputs is True else (set(binary_outputs or ()) & names)
    doc: dict[str, Any] = {"model_name": resp.model_name}
    if resp.model_version is not None:
        doc["model_version"] = resp.model_version
    if resp.id is not None:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = resp.parameters
    outs: list[dict[str, Any]] = []
    tails: list[bytes] = []
    for t in resp.outputs:
        o: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if t.name in binary:
            raw = pack(t.data) if t.datatype == BYTES else _le_bytes(t.data)
            o["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
        else:
            o["data"] = to_json(t.data) if t.datatype == BYTES else t.data.ravel().tolist()
        outs.append(o)
    doc["outputs"] = outs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not binary:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    return b"".join([header, *tails]), {
        "Content-Type": BINARY_CONTENT_TYPE,
        HEADER_LENGTH: str(len(header)),
    }


def response_tensor(name: str, arr: np.ndarray) -> Tensor:
    arr = np.asarray(arr)
    datatype = v2_datatype(arr.dtype)
    if datatype == BYTES:
        arr = as_bytes_array(arr)
    return Tensor(name, datatype, tuple(int(d) for d in arr.shape), arr)
