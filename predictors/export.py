"""Turn a torch model into fp32 ONNX (build time only; never in the Lambda).

- `export_onnx`: a torch module to fp32 ONNX (TorchScript exporter, opset 17, every batch axis
  and every other -1 dimension dynamic);
- `onnx_specs`: the input and output tensor specs of an ONNX graph.

Its serving variants are made by `predictors.variants`; the models to export come from
`predictors.sources`. torch and onnx are imported lazily: importing this module needs neither.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predictors.model import TensorSpec, v2_datatype

OPSET = 17


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
