"""Turn a model into ONNX and make its serving variants (build time only; never in the Lambda).

- `export_onnx`: a torch module to fp32 ONNX (TorchScript exporter, opset 17, every batch axis
  and every other -1 dimension dynamic);
- `quantize_int8`: dynamic int8 quantization of the weights (MatMul/Gemm, and Gather so that the
  embedding tables shrink too), activations quantized at run time; by default 7-bit signed
  weights, which cannot saturate onnxruntime's int16 pair sums on any CPU (`INT8_FORMATS`);
- `to_fp16`: float weights and compute in fp16, inputs and outputs kept fp32;
- `load_user_model`: an ONNX file (kept as is), a TorchScript archive or a torch module, as a
  `SourceModel` that knows its tensors and writes its fp32 ONNX.

torch and onnx are imported lazily: importing this module needs neither.
"""

from __future__ import annotations

import logging
import shutil
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predictors.model import V2_TO_NUMPY, TensorSpec, v2_datatype

OPSET = 17
VARIANTS = ("int8", "fp16", "fp32")
INT8_OP_TYPES = ("MatMul", "Gemm", "Gather")
# a dynamic dimension other than the batch gets this size in generated example inputs
DEFAULT_DYNAMIC_DIM = 8


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "exporting a torch model needs torch: pip install 'hybridserve[torch]'"
        ) from e
    return torch


def require_onnx() -> Any:
    """The onnx module, or a RuntimeError naming the extra that installs it."""
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "building an artifact needs onnx: pip install 'hybridserve[predictors]'"
        ) from e
    return onnx


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def _dynamic_axes(specs: Sequence[TensorSpec]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for s in specs:
        dims = {
            i: ("batch" if i == 0 else f"{s.name}_dim{i}") for i, d in enumerate(s.shape) if d == -1
        }
        dims.setdefault(0, "batch")  # the batch axis is always dynamic
        axes[s.name] = dims
    return axes


def export_onnx(
    module: Any,
    example_inputs: dict[str, np.ndarray],
    input_specs: Sequence[TensorSpec],
    output_specs: Sequence[TensorSpec],
    path: str | Path,
    *,
    opset: int = OPSET,
) -> Path:
    """Export `module` (called with the inputs in `input_specs` order) to fp32 ONNX at `path`.

    Uses the TorchScript exporter (``dynamo=False``) with the batch axis of every input and
    output dynamic; checks that the exported graph has exactly the named inputs and outputs.
    """
    torch = _torch()
    path = Path(path)
    missing = [s.name for s in input_specs if s.name not in example_inputs]
    if missing:
        raise ValueError(f"example inputs lack {', '.join(missing)}")
    args = tuple(
        torch.from_numpy(np.ascontiguousarray(example_inputs[s.name], dtype=s.dtype))
        for s in input_specs
    )
    module = module.eval() if hasattr(module, "eval") else module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based export"
        warnings.simplefilter("ignore", FutureWarning)
        # e.g. "_decide_input_format" advice when exporting a ScriptModule
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=[s.name for s in input_specs],
                output_names=[s.name for s in output_specs],
                dynamic_axes=_dynamic_axes([*input_specs, *output_specs]),
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
    got_in, got_out = onnx_specs(path)
    want_in = [s.name for s in input_specs]
    if [s.name for s in got_in] != want_in:
        raise ValueError(
            f"exported graph takes inputs {[s.name for s in got_in]}, expected {want_in} "
            "(the exporter drops inputs the model does not use)"
        )
    if len(got_out) != len(output_specs):
        raise ValueError(
            f"exported graph has {len(got_out)} outputs, expected {len(output_specs)} "
            f"({', '.join(s.name for s in output_specs)})"
        )
    return path


def onnx_specs(path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of an ONNX graph (-1 for a symbolic or unknown dimension)."""
    onnx = require_onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"{path}: not a readable ONNX model ({e})") from None
    init_names = {i.name for i in model.graph.initializer}

    def spec(vi: Any) -> TensorSpec:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"{path}: tensor {vi.name} is not a plain tensor")
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim
        )
        return TensorSpec(vi.name, v2_datatype(np_dtype), dims)

    inputs = [spec(vi) for vi in model.graph.input if vi.name not in init_names]
    outputs = [spec(vi) for vi in model.graph.output]
    return inputs, outputs


# --------------------------------------------------------------------------------------------
# variants
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# sources: reference models and user models
# --------------------------------------------------------------------------------------------


@dataclass
class SourceModel:
    """A model to package: its tensors and how to write its fp32 ONNX."""

    name: str
    kind: str  # reference | onnx | torchscript | module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    module: Any = None
    example_inputs: dict[str, np.ndarray] | None = None
    onnx_path: Path | None = None
    parameters: int | None = None
    # integer inputs: valid values [low, high) for generated inputs (token ids below the vocab)
    input_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)

    def write_onnx(self, path: str | Path) -> Path:
        """Write the fp32 ONNX model to `path`."""
        path = Path(path)
        if self.onnx_path is not None:
            shutil.copyfile(self.onnx_path, path)
            return path
        examples = self.example_inputs or example_inputs(self.inputs, self.input_ranges)
        return export_onnx(self.module, examples, self.inputs, self.outputs, path)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "parameters": self.parameters}


def reference_source(name: str, seed: int = 0) -> SourceModel:
    """The reference model `name` (see `predictors.reference`) as a SourceModel."""
    from predictors.reference import get_reference

    ref = get_reference(name, seed)
    return SourceModel(
        name=ref.name,
        kind="reference",
        inputs=list(ref.inputs),
        outputs=list(ref.outputs),
        module=ref.module,
        example_inputs=ref.example_inputs,
        parameters=ref.parameters,
        input_ranges=dict(ref.input_ranges),
    )


def parse_tensor_spec(text: str) -> TensorSpec:
    """``NAME:DATATYPE:DIMS`` (e.g. ``images:FP32:-1,3,224,224``; -1 = dynamic) as a TensorSpec."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"tensor spec {text!r}: expected NAME:DATATYPE:DIMS, e.g. x:FP32:-1,16")
    name, datatype, dims = parts
    datatype = datatype.upper()
    if datatype not in V2_TO_NUMPY:
        raise ValueError(
            f"tensor spec {text!r}: unknown datatype {datatype!r}; one of {', '.join(V2_TO_NUMPY)}"
        )
    try:
        shape = tuple(int(d) for d in dims.split(",") if d.strip())
    except ValueError:
        raise ValueError(
            f"tensor spec {text!r}: dims must be integers, e.g. -1,3,224,224"
        ) from None
    if not shape or any(d == 0 or d < -1 for d in shape):
        raise ValueError(f"tensor spec {text!r}: dims must be positive or -1 (dynamic)")
    return TensorSpec(name, datatype, shape)


def example_inputs(
    specs: Sequence[TensorSpec],
    ranges: dict[str, tuple[int, int]] | None = None,
    *,
    batch: int = 2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded random inputs fitting `specs`: batch `batch`, other dynamic dims 8.

    Floats are standard normal; integers are drawn from ``ranges[name]`` (default: all ones for
    a name containing "mask", else {0, 1}); booleans are True.
    """
    rng = np.random.default_rng(seed)
    ranges = ranges or {}
    out: dict[str, np.ndarray] = {}
    for s in specs:
        shape = tuple(
            (batch if i == 0 else DEFAULT_DYNAMIC_DIM) if d == -1 else d
            for i, d in enumerate(s.shape)
        )
        dt = s.dtype
        if dt.kind == "f":
            out[s.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            low, high = ranges.get(s.name, (1, 2) if "mask" in s.name.lower() else (0, 2))
            out[s.name] = rng.integers(low, high, size=shape).astype(dt)
        else:
            out[s.name] = np.ones(shape, dtype=dt)
    return out


def _output_specs(
    module: Any, examples: dict[str, np.ndarray], inputs: Sequence[TensorSpec]
) -> list[TensorSpec]:
    """Output specs of a torch module found by running it once (batch axis dynamic)."""
    torch = _torch()
    args = tuple(torch.from_numpy(examples[s.name]) for s in inputs)
    with torch.no_grad():
        out = module(*args)
    if isinstance(out, dict):
        items = list(out.items())
    elif isinstance(out, (tuple, list)):
        items = [(f"output_{i}", t) for i, t in enumerate(out)]
    else:
        items = [("output", out)]
    specs = []
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"model output {name} is a {type(t).__name__}, not a tensor")
        arr = t.detach().cpu().numpy()
        specs.append(TensorSpec(name, v2_datatype(arr.dtype), (-1, *arr.shape[1:])))
    return specs


def load_user_model(
    path_or_module: str | Path | Any,
    *,
    input_specs: Sequence[TensorSpec] | None = None,
    output_specs: Sequence[TensorSpec] | None = None,
    name: str | None = None,
    input_ranges: dict[str, tuple[int, int]] | None = None,
) -> SourceModel:
    """A user's model as a SourceModel.

    - an ONNX file: kept as is; its tensors come from the graph;
    - a TorchScript archive (``torch.jit.save``): loaded on CPU and exported; needs
      `input_specs` (e.g. from ``--input x:FP32:-1,16``);
    - a ``torch.nn.Module``: exported; needs `input_specs`.

    Output specs, when not given, come from one run on generated inputs.
    """
    ranges = dict(input_ranges or {})
    if isinstance(path_or_module, (str, Path)):
        path = Path(path_or_module)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        stem = name or path.name.split(".")[0]
        if not zipfile.is_zipfile(path):  # TorchScript archives are zip files; ONNX is protobuf
            inputs, outputs = onnx_specs(path)
            if input_specs is not None:
                _check_same_names("inputs", path, [s.name for s in input_specs], inputs)
            params = _onnx_parameters(path)
            return SourceModel(
                stem,
                "onnx",
                inputs,
                outputs,
                onnx_path=path,
                parameters=params,
                input_ranges=ranges,
            )
        torch = _torch()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", DeprecationWarning
                )  # "torch.jit.load is deprecated"
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise ValueError(
                f"{path}: not a TorchScript archive ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "save the model with torch.jit.save, or export it to ONNX"
            ) from None
        kind = "torchscript"
    else:
        module = path_or_module
        torch = _torch()
        if not isinstance(module, torch.nn.Module):
            raise ValueError(
                f"a model is a reference name, an .onnx/TorchScript file or a torch.nn.Module, "
                f"not a {type(module).__name__}"
            )
        stem = name or type(module).__name__.lower()
        kind = "module"
    if not input_specs:
        raise ValueError(
            f"a {kind} model needs its input specs (NAME:DATATYPE:DIMS, e.g. x:FP32:-1,16)"
        )
    module = module.eval()
    inputs = list(input_specs)
    examples = example_inputs(inputs, ranges)
    outputs = list(output_specs) if output_specs else _output_specs(module, examples, inputs)
    params = sum(p.numel() for p in module.parameters())
    return SourceModel(
        stem,
        kind,
        inputs,
        outputs,
        module=module,
        example_inputs=examples,
        parameters=params,
        input_ranges=ranges,
    )


def _check_same_names(what: str, path: Path, want: list[str], got: list[TensorSpec]) -> None:
    if want != [s.name for s in got]:
        raise ValueError(f"{path}: the graph's {what} are {[s.name for s in got]}, not {want}")


def _onnx_parameters(path: str | Path) -> int:
    onnx = require_onnx()
    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(i.dims)) for i in model.graph.initializer))


def integer_input_ranges(
    path: str | Path, specs: Sequence[TensorSpec]
) -> dict[str, tuple[int, int]]:
    """Guess valid values of integer inputs of an ONNX graph.

    An input used as the indices of a Gather on a constant table (an embedding) takes values
    below the table's first dimension; one named like a mask is all ones; anything else {0, 1}.
    """
    ints = [s for s in specs if s.dtype.kind in "iu"]
    if not ints:
        return {}
    onnx = require_onnx()
    model = onnx.load(str(path), load_external_data=False)
    tables = {i.name: list(i.dims) for i in model.graph.initializer}
    # follow an input through Cast/Identity to the Gathers that use it as indices
    aliases = {s.name: s.name for s in ints}
    for node in model.graph.node:
        if node.op_type in ("Cast", "Identity") and node.input and node.input[0] in aliases:
            aliases[node.output[0]] = aliases[node.input[0]]
    ranges: dict[str, tuple[int, int]] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in aliases:
            dims = tables.get(node.input[0])
            if dims:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                src = aliases[node.input[1]]
                hi = int(dims[axis])
                ranges[src] = (0, min(hi, ranges.get(src, (0, hi))[1]))
    for s in ints:
        if s.name not in ranges:
            ranges[s.name] = (1, 2) if "mask" in s.name.lower() else (0, 2)
    return ranges
