"""The models to package (build time only; never in the Lambda): a reference model, an ONNX
file (kept as is), a TorchScript archive or a torch module, as a `SourceModel` that knows its
tensors and writes its fp32 ONNX; and the tensor specs and seeded example inputs that go with them.

torch and onnx are imported lazily: importing this module needs neither.
"""

from __future__ import annotations

import shutil
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predictors.export import _torch, export_onnx, onnx_specs, require_onnx
from predictors.model import V2_TO_NUMPY, TensorSpec, v2_datatype

# a dynamic dimension other than the batch gets this size in generated example inputs
DEFAULT_DYNAMIC_DIM = 8


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
