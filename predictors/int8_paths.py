"""The int8 kernel paths of onnxruntime, checked statically and emulated, on any build machine.

A quantized model computes differently per CPU (see `predictors.isa`): exactly in int32, or with
the products summed in saturating int16 pairs (AVX2, AVX-512BW without VNNI). A build machine
runs only its own path, so the accuracy guard also runs the others by emulation:

- `saturation_report`: is the model saturation-free, i.e. can no pair of weights of any integer
  GEMM leave int16 with u8 activations (255 * (|b[2i, n]| + |b[2i+1, n]|) <= 32767 suffices;
  the check is per sign)? Then both paths compute the same.
- `emulated_model`: the model with every MatMulInteger replaced by the same product computed in
  float64 (exact: the integer sums stay far below 2**53) and cast back to int32, either exactly
  or with the int16 saturation of the dangerous (pair, column) positions applied as a sparse
  correction. onnxruntime runs the rewritten graph, so softmax, layer norm, GELU and the
  activation quantization use the very fp kernels of the native run; only the integer
  semantics differ. The emulation of a CPU's path equals its native run bit for bit
  (tests/test_int8_paths.py; checked on AVX2, and under QEMU on SSE4.2, AVX and AVX2).

Only what `quantize_dynamic` makes is emulated (MatMulInteger, uint8 activations, a constant
2-D int8/uint8 weight); other integer ops are reported and checked statically only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predictors.export import require_onnx
from predictors.isa import EXACT, SATURATING

INT16_MAX = 32767
INT16_MIN = -32768
U8_MAX = 255
INTEGER_GEMMS = ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv")
_WEIGHT_INPUT = {"MatMulInteger": 1, "ConvInteger": 1, "QLinearMatMul": 3, "QLinearConv": 3}


class EmulationError(ValueError):
    """A quantized graph this module cannot emulate (the guard then relies on the static check)."""


def _load(model: Any) -> Any:
    return require_onnx().load(str(model)) if isinstance(model, (str, Path)) else model


def _constants(model: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values of the main graph, by name."""
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _pairs(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two rows of every K pair (2i, 2i+1) of a (K, N) weight; odd K pads a zero row."""
    b = b.astype(np.int64)
    if b.shape[0] % 2:
        b = np.concatenate([b, np.zeros((1, b.shape[1]), np.int64)])
    return b[0::2], b[1::2]


def pair_sums(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Most positive and most negative sum a pair of u8 activations can make with weight `b`.

    Per (pair, column) of a (K, N) int8 weight: 255 * (max(b0, 0) + max(b1, 0)) and
    255 * (min(b0, 0) + min(b1, 0)). A pair of opposite signs lies between its two products,
    each within int16 (255 * 128 = 32640), so only same-sign pairs can saturate.
    """
    b0, b1 = _pairs(b)
    hi = U8_MAX * (np.maximum(b0, 0) + np.maximum(b1, 0))
    lo = U8_MAX * (np.minimum(b0, 0) + np.minimum(b1, 0))
    return hi, lo


def dangerous_pairs(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pair, column) indices of a (K, N) int8 weight where an int16 pair sum can saturate."""
    hi, lo = pair_sums(b)
    return np.nonzero((hi > INT16_MAX) | (lo < INT16_MIN))


@dataclass
class SaturationReport:
    """Whether a quantized model's integer GEMMs can saturate on the int16-pair path."""

    saturation_free: bool
    gemms: int  # integer GEMM nodes found
    max_pair: int  # the largest possible pair sum over all int8 weights (0: none)
    risky: list[str] = field(default_factory=list)  # nodes that may saturate, or unknown weights

    def as_json(self) -> dict[str, Any]:
        return {
            "saturation_free": self.saturation_free,
            "integer_gemms": self.gemms,
            "max_pair_sum": self.max_pair,
            "int16_max": INT16_MAX,
            "risky_nodes": self.risky[:20],
        }


def saturation_report(model: Any) -> SaturationReport:
    """Check every integer GEMM's constant weight against the int16 pair bound.

    uint8 weights run on U8U8 kernels, exact everywhere. For a MatMul-like weight (K, N) the
    pairs are consecutive rows; for a convolution the im2col order of K depends on the kernel,
    so its bound is the conservative 255 * 2 * max|w|. A weight that is not a constant is
    counted as risky.
    """
    model = _load(model)
    consts = _constants(model)
    gemms, worst, risky = 0, 0, []
    for node in model.graph.node:
        if node.op_type not in INTEGER_GEMMS:
            continue
        gemms += 1
        label = node.name or f"{node.op_type}->{node.output[0]}"
        idx = _WEIGHT_INPUT[node.op_type]
        w = consts.get(node.input[idx]) if len(node.input) > idx else None
        if w is None:
            risky.append(f"{label} (weight not a constant)")
            continue
        if w.dtype == np.uint8:
            continue
        if node.op_type in ("MatMulInteger", "QLinearMatMul") and w.ndim == 2:
            hi, lo = pair_sums(w)
            bound = int(max(hi.max(initial=0), -lo.min(initial=0)))
            unsafe = bool((hi > INT16_MAX).any() or (lo < INT16_MIN).any())
        else:
            bound = U8_MAX * 2 * int(np.abs(w.astype(np.int64)).max(initial=0))
            unsafe = bound > INT16_MAX
        worst = max(worst, bound)
        if unsafe:
            risky.append(f"{label} (pair sum up to {bound})")
    return SaturationReport(not risky, gemms, worst, risky)


# --------------------------------------------------------------------------------------------
# emulation by graph rewrite
# --------------------------------------------------------------------------------------------


class _Builder:
    """Appends nodes and constants with unique names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.n = 0

    def name(self, what: str) -> str:
        self.n += 1
        return f"{self.prefix}/{what}_{self.n}"

    def const(self, what: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(what)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = output or self.name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs)
        )
        return out


def _uint8_tensors(model: Any) -> set[str]:
    """Names known to hold uint8: DynamicQuantizeLinear outputs and uint8 graph tensors."""
    from onnx import TensorProto

    out = {n.output[0] for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"}
    for vi in (*model.graph.input, *model.graph.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.UINT8:
            out.add(vi.name)
    return out


def _rewrite(
    node: Any, consts: dict[str, np.ndarray], uint8: set[str], path: str
) -> tuple[list, list]:
    """float64 nodes and constants computing `node` (a MatMulInteger) as `path` does."""
    from onnx import TensorProto

    a_name, b_name = node.input[0], node.input[1]
    if a_name not in uint8:  # MLAS's S8S8 kernels shift the activations: not modelled here
        raise EmulationError(f"{node.name}: activations {a_name} are not known to be uint8")
    za_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    zb_name = node.input[3] if len(node.input) > 3 and node.input[3] else ""
    b = consts.get(b_name)
    if b is None or b.ndim != 2:
        raise EmulationError(f"{node.name}: weight {b_name} is not a constant 2-D tensor")
    zb = consts.get(zb_name) if zb_name else np.zeros((), b.dtype)
    if zb is None:
        raise EmulationError(f"{node.name}: weight zero point {zb_name} is not a constant")
    if za_name in consts and consts[za_name].size != 1:
        raise EmulationError(f"{node.name}: per-row activation zero points are not emulated")
    k, n = b.shape
    bd = b.astype(np.float64)
    zbd = np.broadcast_to(zb.astype(np.float64).reshape(-1), (n,))
    g = _Builder(f"emu/{node.name or node.output[0]}")
    a = g.op("Cast", [a_name], to=TensorProto.DOUBLE)
    # the weight stays int8 in the file (a float64 copy could pass protobuf's 2 GB limit);
    # onnxruntime folds the Cast of a constant once, at session creation
    acc = g.op("MatMul", [a, g.op("Cast", [b_name], to=TensorProto.DOUBLE)])  # raw u8 x b sum
    if path == SATURATING and b.dtype == np.int8:
        b0, b1 = _pairs(b)
        ii, nn = dangerous_pairs(b)
        if ii.size:  # a pair may leave int16 only at these (pair, column) positions
            # odd K: the last pair's partner is zero padding (any index, weight 0)
            a0 = g.op("Gather", [a, g.const("k0", 2 * ii)], axis=-1)
            a1 = g.op("Gather", [a, g.const("k1", np.minimum(2 * ii + 1, k - 1))], axis=-1)
            w1 = np.where(2 * ii + 1 < k, b1[ii, nn], 0).astype(np.float64)
            p = g.op(
                "Add",
                [
                    g.op("Mul", [a0, g.const("w0", b0[ii, nn].astype(np.float64))]),
                    g.op("Mul", [a1, g.const("w1", w1)]),
                ],
            )
            lo, hi = g.const("lo", np.float64(INT16_MIN)), g.const("hi", np.float64(INT16_MAX))
            delta = g.op("Sub", [g.op("Clip", [p, lo, hi]), p])
            cols = g.op("Expand", [g.const("cols", nn.astype(np.int64)), g.op("Shape", [delta])])
            acc = g.op("ScatterElements", [acc, cols, delta], axis=-1, reduction="add")
    # zero points: sum (a - za)(b - zb) = raw - zb * sum(a) - za * sum(b) + K * za * zb
    if za_name:
        za = g.op("Cast", [za_name], to=TensorProto.DOUBLE)
        acc = g.op("Sub", [acc, g.op("Mul", [za, g.const("colsum", bd.sum(axis=0))])])
        if zbd.any():
            acc = g.op("Add", [acc, g.op("Mul", [za, g.const("kzb", k * zbd)])])
    if zbd.any():
        rowsum = g.op("ReduceSum", [a, g.const("axes", np.array([-1], np.int64))], keepdims=1)
        acc = g.op("Sub", [acc, g.op("Mul", [rowsum, g.const("zb", zbd)])])
    g.op("Cast", [acc], node.output[0], to=TensorProto.INT32)
    return g.nodes, g.inits


def emulated_model(model: Any, path: str) -> Any:
    """A copy of the quantized `model` whose MatMulIntegers compute as `path` (EXACT/SATURATING).

    Raises EmulationError for integer ops or operands this cannot emulate.
    """
    onnx = require_onnx()
    if path not in (EXACT, SATURATING):
        raise ValueError(f"unknown int8 path {path!r}; one of {EXACT}, {SATURATING}")
    model = _load(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    consts = _constants(model)
    uint8 = _uint8_tensors(model)
    nodes, inits = [], []
    for node in out.graph.node:
        if node.op_type in INTEGER_GEMMS and node.op_type != "MatMulInteger":
            raise EmulationError(f"{node.name or node.op_type}: {node.op_type} is not emulated")
        if node.op_type != "MatMulInteger":
            nodes.append(node)
            continue
        if not node.name:
            node.name = f"MatMulInteger->{node.output[0]}"
        new_nodes, new_inits = _rewrite(node, consts, uint8, path)
        nodes.extend(new_nodes)
        inits.extend(new_inits)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    return out
