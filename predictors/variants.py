"""The serving variants of an fp32 ONNX model (build time only; never in the Lambda).

- `quantize_int8`: dynamic int8 quantization of the weights (MatMul/Gemm, and Gather so that the
  embedding tables shrink too), activations quantized at run time; by default 7-bit signed
  weights, which cannot saturate onnxruntime's int16 pair sums on any CPU (`INT8_FORMATS`);
- `to_fp16`: float weights and compute in fp16, inputs and outputs kept fp32;
- `make_variant`: one of them (or a copy for fp32) by name.

onnx and onnxruntime's quantizer are imported lazily: importing this module needs neither.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictors.export import require_onnx

VARIANTS = ("int8", "fp16", "fp32")
INT8_OP_TYPES = ("MatMul", "Gemm", "Gather")


class _DropMessages(logging.Filter):
    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop onnxruntime's advice to run its pre-processing (logged on the root logger)."""
    f = _DropMessages("Please consider to run pre-processing")
    root = logging.getLogger()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


@dataclass(frozen=True)
class Int8Format:
    """How `quantize_int8` stores weights (activations are always uint8, scaled at run time)."""

    weight_type: str  # "int8" or "uint8"
    reduce_range: bool  # 7-bit weights, [-64, 64]
    text: str

    def as_json(self, name: str) -> dict[str, Any]:
        return {"name": name, "weights": self.weight_type, "reduce_range": self.reduce_range,
                "per_channel": True, "activations": "uint8, dynamic per tensor"}  # fmt: skip


# Why s8-rr is the default (AVX2 machine, 2 threads, batch 1; guard figures on every path, seeds
# 0-4, 8/16/32 samples; README "The model side" has the table):
# - int8 weights with reduce_range are at most 64 in magnitude, so a pair of u8 * s8 products is
#   at most 255 * 64 * 2 = 32640 < 32767: saturation-free by construction, on the int16-pair
#   path (AVX2, AVX-512BW without VNNI) as on every exact one, and on VNNI/AMX/arm64 it runs the
#   same fast U8S8 kernels. DistilBERT 40.2 ms (s8 full range 40.2, fp32 78.8).
# - full-range s8 saturates on AVX2/AVX-512BW: mlp pooled cosine 0.976 there (0.99997 exact).
# - u8 weights (U8U8 kernels) are exact everywhere too but slower: DistilBERT 61.8 ms.
INT8_FORMATS: dict[str, Int8Format] = {
    "s8-rr": Int8Format("int8", True, "int8 per channel, 7-bit range: saturation-free, fast"),
    "s8": Int8Format("int8", False, "int8 per channel, full range: saturates on AVX2/AVX-512BW"),
    "u8": Int8Format("uint8", False, "uint8 per channel: exact everywhere, U8U8 kernels, slower"),
}
DEFAULT_INT8_FORMAT = "s8-rr"


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    *,
    op_types: Sequence[str] = INT8_OP_TYPES,
    fmt: str = DEFAULT_INT8_FORMAT,
) -> Path:
    """Dynamic int8 quantization: int8 weights per channel (`fmt`), activations at run time.

    MatMul/Gemm with constant weights become MatMulInteger (the attention score products, which
    have no constant operand, stay fp32) and Gather on constant tables (embeddings) gathers
    int8 and dequantizes. See `INT8_FORMATS` for why the default is 7-bit signed weights.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if fmt not in INT8_FORMATS:
        raise ValueError(f"unknown int8 format {fmt!r}; choose one of {', '.join(INT8_FORMATS)}")
    f = INT8_FORMATS[fmt]
    dst = Path(dst)
    with _quiet_quantizer():
        quantize_dynamic(
            Path(src),
            dst,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            reduce_range=f.reduce_range,
            weight_type=QuantType.QInt8 if f.weight_type == "int8" else QuantType.QUInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    return dst


def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """fp16 weights and compute; graph inputs and outputs stay as they were (fp32)."""
    onnx = require_onnx()
    dst = Path(dst)
    model = onnx.load(str(src))
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:  # pragma: no cover - onnxruntime without its transformers tools
        convert_float_to_float16 = None
    if convert_float_to_float16 is not None:
        model = convert_float_to_float16(model, keep_io_types=True)
    else:  # pragma: no cover
        model = _fp16_weights_only(model)
    onnx.save(model, str(dst))
    return dst


def _fp16_weights_only(model: Any) -> Any:
    """Fallback fp16: store float initializers in fp16, each cast back to fp32 where it is read.

    Halves the weights on disk and in the artifact; compute stays fp32.
    """
    onnx = require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    converted: list[Any] = []
    casts: list[Any] = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            converted.append(init)
            continue
        arr = numpy_helper.to_array(init)
        half = numpy_helper.from_array(
            np.clip(arr, -65504, 65504).astype(np.float16), init.name + "_fp16"
        )
        converted.append(half)
        casts.append(
            helper.make_node(
                "Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}_cast"
            )
        )
    del graph.initializer[:]
    graph.initializer.extend(converted)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    return model


def make_variant(
    src: str | Path, dst: str | Path, variant: str, *, int8_format: str = DEFAULT_INT8_FORMAT
) -> Path:
    """The `variant` (int8, fp16 or fp32) of the fp32 ONNX model `src`, written to `dst`."""
    if variant == "int8":
        return quantize_int8(src, dst, fmt=int8_format)
    if variant == "fp16":
        return to_fp16(src, dst)
    if variant == "fp32":
        if Path(src) != Path(dst):
            shutil.copyfile(src, dst)
        return Path(dst)
    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
