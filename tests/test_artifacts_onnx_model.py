"""`OnnxModel` over an artifact: its metadata and the validation of inputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("zstandard")

from predictors.artifact_build import build_artifact  # noqa: E402
from predictors.artifact_manifest import read_manifest  # noqa: E402
from predictors.model import TensorSpec  # noqa: E402
from predictors.onnx_model import OnnxModel  # noqa: E402


def test_onnx_model_metadata_and_validation(built):
    m = OnnxModel(built["int8"], intra_op_num_threads=1)
    assert m.ready and (m.name, m.version) == ("mlp", "1")
    assert m.inputs == [TensorSpec("x", "FP32", (-1, 16))]
    assert m.outputs == [TensorSpec("y", "FP32", (-1, 4))]
    assert m.max_batch == read_manifest(built["int8"])["max_batch"]
    x = np.zeros((2, 16), np.float32)
    assert m.predict({"x": x})["y"].shape == (2, 4)
    cases = [
        ({"z": x}, r"unknown input 'z'; model mlp takes x"),
        ({}, r"missing input 'x'"),
        ({"x": x.astype(np.float64)}, r"input 'x': datatype FP64, model expects FP32"),
        (
            {"x": np.zeros((2, 15), np.float32)},
            r"input 'x': shape \[2, 15\] does not fit .*\[-1, 16\]",
        ),
        ({"x": np.zeros(16, np.float32)}, r"shape \[16\] does not fit"),
        ({"x": np.zeros((0, 16), np.float32)}, "at least 1"),
        ({"x": np.zeros((m.max_batch + 1, 16), np.float32)}, "exceeds the model's max_batch"),
    ]
    for inputs, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            m.predict(inputs)


def test_onnx_model_rejects_disagreeing_batches(tmp_path):
    d = build_artifact("tinybert", tmp_path, variant="fp32")
    m = OnnxModel(d, extract_dir=tmp_path / "x")
    ids = np.zeros((2, 32), np.int64)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        m.predict({"input_ids": ids, "attention_mask": np.ones((3, 32), np.int64)})
    with pytest.raises(ValueError, match="datatype INT32, model expects INT64"):
        m.predict({"input_ids": ids.astype(np.int32), "attention_mask": np.ones_like(ids)})
