"""The Model layer shared by the VM server and the Lambda handler (as in KServe).

A Model knows its tensors and turns inputs into outputs; it knows nothing of HTTP or Lambda
events. The V2 data plane (`predictors.dataplane`) and the codec (`predictors.v2`) sit on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

# KServe V2 / Open Inference Protocol datatypes <-> numpy
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),  # of `bytes` elements (predictors.v2_bytes)
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}


def v2_datatype(dtype: np.dtype | type) -> str:
    """V2 datatype name of a numpy dtype (bytes, str and object arrays are BYTES); ValueError
    for one the protocol lacks."""
    dt = np.dtype(dtype)
    if dt.kind in "SUO":
        return "BYTES"
    if dt not in NUMPY_TO_V2:
        raise ValueError(f"numpy dtype {dt} has no V2 datatype; supported: {sorted(V2_TO_NUMPY)}")
    return NUMPY_TO_V2[dt]


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: V2 datatype and shape, -1 for a dynamic dimension (the batch first)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in V2_TO_NUMPY:
            raise ValueError(f"tensor {self.name}: unknown datatype {self.datatype!r}")

    @property
    def dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    def as_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        return cls(str(d["name"]), str(d["datatype"]), tuple(int(x) for x in d["shape"]))

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether a concrete shape fits this spec (same rank, fixed dims equal)."""
        return len(shape) == len(self.shape) and all(
            want == -1 or want == got for want, got in zip(self.shape, shape, strict=True)
        )


class Model(Protocol):
    """What the data plane serves: metadata plus a batched predict."""

    name: str
    version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch: int  # largest first dimension one predict call takes

    @property
    def ready(self) -> bool: ...

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs by name (first dimension = batch) to outputs by name (same batch)."""
