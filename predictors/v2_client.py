"""The client side of the V2 codec: encoding requests and decoding responses (the router's
Lambda invoke path, and tests)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from predictors.model import V2_TO_NUMPY, v2_datatype
from predictors.v2_bytes import BYTES, from_json, pack, to_json, unpack
from predictors.v2_decode import _as_bytes, _parse_header_length, _parse_json
from predictors.v2_encode import _le_bytes
from predictors.v2_types import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    InferResponse,
    Tensor,
    V2Error,
)


def encode_request(
    inputs: Mapping[str, np.ndarray],
    *,
    binary_inputs: bool = True,
    outputs: Sequence[str] = (),
    binary_outputs: bool = True,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A V2 request body and headers for ``inputs`` (what tritonclient.http would send)."""
    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    tails: list[bytes] = []
    ins = []
    for name, value in inputs.items():
        arr = np.asarray(value)
        datatype = v2_datatype(arr.dtype)
        t: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary_inputs:
            raw = pack(arr) if datatype == BYTES else _le_bytes(arr)
            t["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
        else:
            t["data"] = to_json(arr) if datatype == BYTES else arr.ravel().tolist()
        ins.append(t)
    doc["inputs"] = ins
    if outputs:
        doc["outputs"] = [
            {"name": n, "parameters": {"binary_data": binary_outputs}} for n in outputs
        ]
    else:
        doc["parameters"] = {"binary_data_output": binary_outputs}
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not tails:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    return b"".join([header, *tails]), {
        "Content-Type": BINARY_CONTENT_TYPE,
        HEADER_LENGTH: str(len(header)),
    }


def decode_response(
    body: bytes | Mapping[str, Any], header_length: int | str | None = None
) -> InferResponse:
    """Parse a V2 inference response (JSON or JSON header + binary tails); raises V2Error(500)
    when the body is not a well-formed response (it came from a server, not a user)."""
    if isinstance(body, Mapping):
        doc: Any = body
        tail = b""
    else:
        raw = _as_bytes(body)
        try:
            n = _parse_header_length(header_length, len(raw))
            header, tail = (raw, b"") if n is None else (raw[:n], raw[n:])
            doc = _parse_json(header, "response")
        except V2Error as e:
            raise V2Error(500, e.message) from None
    if not isinstance(doc, Mapping):
        raise V2Error(500, "malformed response: not a JSON object")
    if "error" in doc:
        raise V2Error(500, f"server error: {doc['error']}")
    outputs: list[Tensor] = []
    offset = 0
    try:
        for o in doc["outputs"]:
            dtype = V2_TO_NUMPY[o["datatype"]]
            shape = tuple(int(d) for d in o["shape"])
            size = (o.get("parameters") or {}).get("binary_data_size")
            if o["datatype"] == BYTES:
                where = f"output '{o['name']}'"
                if size is not None:
                    arr = unpack(tail, offset, int(size), shape, where)
                    offset += int(size)
                else:
                    arr = from_json(o["name"], shape, o["data"])
            elif size is not None:
                if offset + size > len(tail):
                    raise ValueError(f"binary data of output '{o['name']}' is short")
                arr = np.frombuffer(
                    tail, dtype=dtype.newbyteorder("<"), count=math.prod(shape), offset=offset
                )
                arr = arr.astype(dtype, copy=False).reshape(shape)
                offset += size
            else:
                arr = np.array(o["data"], dtype=dtype).reshape(shape)
            outputs.append(Tensor(o["name"], o["datatype"], shape, arr))
    except V2Error as e:  # a malformed BYTES output: the server's fault, not the caller's
        raise V2Error(500, f"malformed response: {e.message}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise V2Error(500, f"malformed response: {e}") from None
    return InferResponse(
        doc.get("model_name", ""),
        outputs,
        doc.get("model_version"),
        doc.get("id"),
        dict(doc.get("parameters") or {}),
    )
