"""`OnnxModel`: the Model protocol over an onnxruntime session of an artifact's model.

Used by the VM model server and the Lambda handler alike; needs onnxruntime and numpy only.
`predict` checks names, datatypes and shapes against the artifact's tensor specs and raises
ValueError with a message fit for a client (the data plane answers it with a 400).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from predictors.artifact import Artifact, load_artifact
from predictors.model import NUMPY_TO_V2, TensorSpec


class OnnxModel:
    """An artifact's ONNX model on onnxruntime's CPU execution provider."""

    def __init__(
        self,
        artifact: Artifact | str | Path,
        *,
        intra_op_num_threads: int | None = None,
        inter_op_num_threads: int | None = None,
        extract_dir: str | Path | None = None,
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        if not isinstance(artifact, Artifact):
            artifact = load_artifact(artifact, extract_dir=extract_dir)
        self.artifact = artifact
        self.name: str = artifact.name
        self.version: str = artifact.version
        self.inputs: list[TensorSpec] = list(artifact.inputs)
        self.outputs: list[TensorSpec] = list(artifact.outputs)
        self.max_batch: int = artifact.max_batch
        self._inputs_by_name = {s.name: s for s in self.inputs}
        self._output_names = [s.name for s in self.outputs]

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if intra_op_num_threads is not None:
            so.intra_op_num_threads = int(intra_op_num_threads)
        if inter_op_num_threads is not None:
            so.inter_op_num_threads = int(inter_op_num_threads)
        self._session: Any = ort.InferenceSession(
            str(artifact.model_path), so, providers=providers or ["CPUExecutionProvider"]
        )
        got = [i.name for i in self._session.get_inputs()]
        if sorted(got) != sorted(self._inputs_by_name):
            raise ValueError(
                f"{artifact.path}: the model takes inputs {got}, the manifest lists "
                f"{list(self._inputs_by_name)}"
            )

    @property
    def ready(self) -> bool:
        return self._session is not None

    def describe(self) -> dict[str, Any]:
        """V2 model metadata."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [s.as_json() for s in self.inputs],
            "outputs": [s.as_json() for s in self.outputs],
        }

    def validate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feed for onnxruntime; ValueError naming the tensor and what was expected."""
        if not isinstance(inputs, dict):
            raise ValueError(
                f"inputs must be a mapping of name to array, not {type(inputs).__name__}"
            )
        unknown = [k for k in inputs if k not in self._inputs_by_name]
        if unknown:
            raise ValueError(
                f"unknown input {', '.join(map(repr, unknown))}; model {self.name} takes "
                f"{', '.join(self._inputs_by_name)}"
            )
        missing = [k for k in self._inputs_by_name if k not in inputs]
        if missing:
            raise ValueError(f"missing input {', '.join(map(repr, missing))} for model {self.name}")
        feed: dict[str, np.ndarray] = {}
        batch: int | None = None
        first = ""
        for name, spec in self._inputs_by_name.items():
            arr = inputs[name]
            if not isinstance(arr, np.ndarray):
                arr = np.asarray(arr)
            if arr.dtype != spec.dtype:
                got = NUMPY_TO_V2.get(arr.dtype, str(arr.dtype))
                raise ValueError(f"input {name!r}: datatype {got}, model expects {spec.datatype}")
            if not spec.accepts(tuple(arr.shape)):
                raise ValueError(
                    f"input {name!r}: shape {list(arr.shape)} does not fit the model's "
                    f"{list(spec.shape)} (-1 = any size)"
                )
            n = int(arr.shape[0]) if arr.ndim else 1
            if batch is None:
                batch, first = n, name
            elif n != batch:
                raise ValueError(
                    f"inputs disagree on the batch size: {first!r} has {batch}, {name!r} has {n}"
                )
            feed[name] = np.ascontiguousarray(arr)
        if batch is not None and batch < 1:
            raise ValueError("batch size must be at least 1")
        if batch is not None and batch > self.max_batch:
            raise ValueError(f"batch size {batch} exceeds the model's max_batch {self.max_batch}")
        return feed

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self.validate(inputs)
        results = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, results, strict=True))
