"""Decoding a V2 inference request: plain JSON, or a JSON header plus binary tensor data.

Every malformed request raises `V2Error` with status 400 and a message that names the tensor and
what was expected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from predictors.model import V2_TO_NUMPY
from predictors.v2_bytes import BYTES, from_json, unpack
from predictors.v2_types import (
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    Tensor,
    bad_request,
)

UNSUPPORTED_DATATYPES = ("BF16",)


def _parse_json(raw: bytes | str, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as e:
        raise bad_request(f"malformed {what}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise bad_request(f"malformed {what}: invalid JSON: {e}") from None
    except RecursionError:
        raise bad_request(f"malformed {what}: JSON nested too deeply") from None


def _as_bytes(body: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise bad_request(
        f"request body must be bytes, str or a JSON object, got {type(body).__name__}"
    )


def _parse_header_length(header_length: int | str | None, body_len: int) -> int | None:
    if header_length is None:
        return None
    try:
        n = int(header_length)
    except (TypeError, ValueError):
        raise bad_request(
            f"{HEADER_LENGTH} must be an integer, got {str(header_length)[:40]!r}"
        ) from None
    if n < 0 or n > body_len:
        raise bad_request(f"{HEADER_LENGTH} is {n} but the request body has {body_len} bytes")
    return n


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _shape(name: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(_is_int(d) for d in raw):
        raise bad_request(f"input '{name}': 'shape' must be a list of integers, got {raw!r:.80}")
    if any(d < 0 for d in raw):
        raise bad_request(f"input '{name}': shape {raw} has a negative dimension")
    return tuple(raw)


def _datatype(name: str, raw: Any) -> str:
    if not isinstance(raw, str):
        raise bad_request(f"input '{name}': 'datatype' must be a string, got {raw!r:.40}")
    if raw in UNSUPPORTED_DATATYPES:
        raise bad_request(
            f"input '{name}': datatype {raw} is not supported by this server; "
            f"supported: {', '.join(V2_TO_NUMPY)}"
        )
    if raw not in V2_TO_NUMPY:
        raise bad_request(
            f"input '{name}': unknown datatype {raw!r}; supported: {', '.join(V2_TO_NUMPY)}"
        )
    return raw


def _json_data(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A V2 ``data`` field (flat or nested lists, row-major) as an array of ``shape``."""
    want = math.prod(shape)
    if not isinstance(data, list):
        data = [data]  # a scalar is one element
    try:
        arr = np.array(data)
    except (ValueError, TypeError):
        raise bad_request(
            f"input '{name}': 'data' is ragged (nested lists of unequal lengths)"
        ) from None
    if arr.size == 0 and want == 0:
        return np.zeros(shape, dtype=V2_TO_NUMPY[datatype])
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise bad_request(
            f"input '{name}': 'data' must hold only {'booleans' if datatype == 'BOOL' else 'numbers'}"
            f" (got {_describe_non_numeric(data)})"
        )
    if arr.size != want:
        raise bad_request(
            f"input '{name}': shape {list(shape)} needs {want} elements, 'data' has {arr.size}"
        )
    dtype = V2_TO_NUMPY[datatype]
    if datatype == "BOOL":
        if kind != "b":
            raise bad_request(f"input '{name}': datatype BOOL needs true/false values in 'data'")
    elif kind == "b":
        raise bad_request(f"input '{name}': datatype {datatype} got booleans in 'data'")
    elif dtype.kind in "iu":
        if kind == "f" and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise bad_request(
                f"input '{name}': datatype {datatype} needs integers, 'data' holds fractions"
            )
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise bad_request(
                f"input '{name}': 'data' has values outside the range of {datatype} "
                f"[{info.min}, {info.max}]"
            )
    return arr.astype(dtype, copy=False).reshape(shape)


def _describe_non_numeric(data: Any) -> str:
    """The first offending value, for the error message."""
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(reversed(x))
        elif not isinstance(x, (int, float, bool)):
            return f"{type(x).__name__} {x!r:.40}"
        elif _is_int(x) and not -(2**64) < x < 2**64:
            return f"integer {x} too large"
    return "mixed or ragged values"


def decode_request(
    body: bytes | bytearray | memoryview | str | Mapping[str, Any],
    header_length: int | str | None = None,
) -> InferRequest:
    """Parse a V2 inference request: a JSON body (or an already parsed dict), or with
    ``header_length`` a JSON header followed by binary tensor data. Raises V2Error(400)."""
    if isinstance(body, Mapping):
        if header_length not in (None, 0) and header_length != "":
            raise bad_request(f"{HEADER_LENGTH} given with an already parsed JSON request")
        doc: Any = body
        tail = b""
        binary_ok = False
    else:
        raw = _as_bytes(body)
        n = _parse_header_length(header_length, len(raw))
        binary_ok = n is not None
        if n is None:
            header, tail = raw, b""
        else:
            header, tail = raw[:n], raw[n:]
        if not header.strip():
            raise bad_request("empty request body: expected a JSON inference request")
        doc = _parse_json(header, "request header" if binary_ok else "request")
    if not isinstance(doc, Mapping):
        raise bad_request(f"request must be a JSON object, got {type(doc).__name__}")

    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise bad_request(f"'id' must be a string, got {req_id!r:.40}")
    parameters = doc.get("parameters", {}) or {}
    if not isinstance(parameters, Mapping):
        raise bad_request("'parameters' must be a JSON object")

    if "inputs" not in doc:
        raise bad_request("request has no 'inputs'")
    raw_inputs = doc["inputs"]
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise bad_request("'inputs' must be a non-empty list of tensors")

    inputs: list[Tensor] = []
    seen: set[str] = set()
    offset = 0
    for i, t in enumerate(raw_inputs):
        if not isinstance(t, Mapping):
            raise bad_request(f"inputs[{i}] must be a JSON object")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request(f"inputs[{i}] has no 'name'")
        if name in seen:
            raise bad_request(f"input '{name}' appears more than once")
        seen.add(name)
        for key in ("datatype", "shape"):
            if key not in t:
                raise bad_request(f"input '{name}' has no '{key}'")
        datatype = _datatype(name, t["datatype"])
        shape = _shape(name, t["shape"])
        params = t.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise bad_request(f"input '{name}': 'parameters' must be a JSON object")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in t:
                raise bad_request(f"input '{name}' has both 'data' and binary_data_size")
            if not binary_ok:
                raise bad_request(
                    f"input '{name}' has binary_data_size but the request has no {HEADER_LENGTH}"
                )
            if not _is_int(size) or size < 0:
                raise bad_request(
                    f"input '{name}': binary_data_size must be a non-negative integer"
                )
            if offset + size > len(tail):
                raise bad_request(
                    f"input '{name}': binary data is short: needs {size} bytes at offset "
                    f"{offset}, the body has {len(tail)} bytes after the header"
                )
            if datatype == BYTES:
                arr = unpack(tail, offset, size, shape, f"input '{name}'")
                offset += size
                inputs.append(Tensor(name, datatype, shape, arr))
                continue
            dtype = V2_TO_NUMPY[datatype]
            want = math.prod(shape) * dtype.itemsize
            if size != want:
                raise bad_request(
                    f"input '{name}': binary_data_size is {size} bytes but {datatype} shape "
                    f"{list(shape)} needs {want}"
                )
            arr = np.frombuffer(
                tail, dtype=dtype.newbyteorder("<"), count=math.prod(shape), offset=offset
            )
            arr = arr.astype(dtype, copy=False).reshape(shape)
            offset += size
        else:
            if "data" not in t:
                raise bad_request(f"input '{name}' has neither 'data' nor binary_data_size")
            data = t["data"]
            arr = (
                from_json(name, shape, data)
                if datatype == BYTES
                else _json_data(name, datatype, shape, data)
            )
        inputs.append(Tensor(name, datatype, shape, arr))
    if offset != len(tail):
        raise bad_request(
            f"request has {len(tail) - offset} bytes of binary data not claimed by any input"
        )

    outputs: list[RequestedOutput] = []
    raw_outputs = doc.get("outputs", []) or []
    if not isinstance(raw_outputs, list):
        raise bad_request("'outputs' must be a list")
    for i, o in enumerate(raw_outputs):
        if not isinstance(o, Mapping) or not isinstance(o.get("name"), str):
            raise bad_request(f"outputs[{i}] must be an object with a 'name'")
        oparams = o.get("parameters") or {}
        if not isinstance(oparams, Mapping):
            raise bad_request(f"output '{o['name']}': 'parameters' must be a JSON object")
        flag = oparams.get("binary_data")
        if flag is not None and not isinstance(flag, bool):
            raise bad_request(f"output '{o['name']}': binary_data must be true or false")
        outputs.append(RequestedOutput(o["name"], flag, dict(oparams)))
    flag = parameters.get("binary_data_output")
    if flag is not None and not isinstance(flag, bool):
        raise bad_request("binary_data_output must be true or false")
    return InferRequest(inputs, req_id, outputs, dict(parameters))
