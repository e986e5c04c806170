"""The V2 BYTES datatype (strings and raw bytes: text in, labels out), as KServe V2 and
Triton's binary extension carry it.

In numpy a BYTES tensor is an object array of `bytes`, row-major. In JSON each element is a
string (UTF-8). In binary each element is its length as a 4-byte little-endian unsigned integer
followed by its bytes, and ``binary_data_size`` counts them all (tritonclient's
`serialize_byte_tensor`). Malformed data raises `V2Error` naming the tensor.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from predictors.v2_types import bad_request

BYTES = "BYTES"
_LEN = struct.Struct("<I")


def is_bytes_dtype(dtype: np.dtype) -> bool:
    """Whether arrays of this dtype travel as BYTES: bytes, str or objects holding them."""
    return np.dtype(dtype).kind in "SUO"


def as_bytes_array(arr: Any) -> np.ndarray:
    """An object array of `bytes` with `arr`'s shape (str elements UTF-8 encoded); TypeError
    for an element that is neither bytes nor str."""
    a = np.asarray(arr, dtype=object)
    out = np.empty(a.shape, dtype=object)
    flat = out.reshape(-1)
    for i, x in enumerate(a.reshape(-1)):
        if isinstance(x, str):
            flat[i] = x.encode("utf-8")
        elif isinstance(x, (bytes, bytearray, memoryview, np.bytes_)):
            flat[i] = bytes(x)
        else:
            raise TypeError(f"a BYTES element must be bytes or str, got {type(x).__name__}")
    return out


def pack(arr: np.ndarray) -> bytes:
    """The binary form: each element's 4-byte little-endian length, then its bytes."""
    parts = []
    for x in as_bytes_array(arr).reshape(-1):
        parts += [_LEN.pack(len(x)), x]
    return b"".join(parts)


def unpack(buf: bytes, offset: int, size: int, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The `size` bytes at `offset` as a BYTES tensor of `shape`; V2Error(400) naming `where`
    when they do not hold exactly that many length-prefixed elements."""
    want = math.prod(shape)
    end = offset + size
    if end > len(buf):
        raise bad_request(
            f"{where}: binary data is short: needs {size} bytes at offset {offset}, "
            f"{len(buf)} bytes follow the header"
        )
    out = np.empty(want, dtype=object)
    pos = offset
    for i in range(want):
        if pos + 4 > end:
            raise bad_request(
                f"{where}: BYTES binary data ends after {i} of {want} elements "
                f"(a 4-byte length is missing at byte {pos - offset})"
            )
        (n,) = _LEN.unpack_from(buf, pos)
        pos += 4
        if pos + n > end:
            raise bad_request(
                f"{where}: BYTES element {i} claims {n} bytes, {end - pos} remain in "
                f"binary_data_size"
            )
        out[i] = bytes(buf[pos : pos + n])
        pos += n
    if pos != end:
        raise bad_request(
            f"{where}: binary_data_size is {size} bytes but {want} BYTES elements of shape "
            f"{list(shape)} take {pos - offset}"
        )
    return out.reshape(shape)


def from_json(name: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A JSON ``data`` field of strings (flat or nested, row-major) as a BYTES tensor."""
    flat: list[Any] = []
    stack = [data if isinstance(data, list) else [data]]
    while stack:  # depth-first, left to right: row-major
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(reversed(x))
        else:
            flat.append(x)
    bad = next((x for x in flat if not isinstance(x, str)), None)
    if bad is not None:
        raise bad_request(
            f"input '{name}': datatype BYTES needs strings in 'data', got "
            f"{type(bad).__name__} {bad!r:.40}"
        )
    want = math.prod(shape)
    if len(flat) != want:
        raise bad_request(
            f"input '{name}': shape {list(shape)} needs {want} elements, 'data' has {len(flat)}"
        )
    out = np.empty(want, dtype=object)
    for i, s in enumerate(flat):
        out[i] = s.encode("utf-8")
    return out.reshape(shape)


def to_json(arr: np.ndarray) -> list[str]:
    """A BYTES tensor's elements as JSON strings (row-major); bytes that are not UTF-8 are
    replaced (U+FFFD): ask for the output as binary to get them exactly."""
    return [x.decode("utf-8", "replace") for x in as_bytes_array(arr).reshape(-1)]
