"""Artifacts of user models (ONNX files, TorchScript archives, torch modules), tensor specs and
the guessed ranges of integer inputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("zstandard")

from predictors import export, sources  # noqa: E402
from predictors.artifact import load_artifact  # noqa: E402
from predictors.artifact_build import build_artifact  # noqa: E402
from predictors.artifact_manifest import read_manifest  # noqa: E402
from predictors.model import TensorSpec  # noqa: E402
from predictors.onnx_model import OnnxModel  # noqa: E402
from predictors.reference import get_reference  # noqa: E402
from tests.artifact_helpers import torch_out  # noqa: E402


class _TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 3)

    def forward(self, a, b):
        return torch.softmax(self.lin(a) + b.float().sum(1, keepdim=True), -1)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_user_models_onnx_torchscript_and_module(built, tmp_path):
    specs = [sources.parse_tensor_spec("a:FP32:-1,8"), sources.parse_tensor_spec("b:int64:-1,4")]
    net = _TwoInputs().eval()
    ts_path = tmp_path / "net.pt"
    traced = torch.jit.trace(net, (torch.ones(2, 8), torch.ones(2, 4, dtype=torch.int64)))
    torch.jit.save(traced, str(ts_path))
    a = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    b = np.ones((3, 4), np.int64)
    want = torch_out(net, {"a": a, "b": b}, specs)
    for model, kind in ((ts_path, "torchscript"), (net, "module")):
        d = build_artifact(model, tmp_path / kind, variant="fp16", input_specs=specs, name="net")
        art = load_artifact(d, extract_dir=tmp_path / "x")
        assert art.manifest["source"]["kind"] == kind
        assert art.inputs == [TensorSpec("a", "FP32", (-1, 8)), TensorSpec("b", "INT64", (-1, 4))]
        got = OnnxModel(art).predict({"a": a, "b": b})["output"]
        np.testing.assert_allclose(got, want, atol=2e-3)
    # an ONNX file is kept as is: its tensors come from the graph
    fp32_onnx = load_artifact(built["fp32"], extract_dir=tmp_path / "x").model_path
    d = build_artifact(fp32_onnx, tmp_path / "onnx", variant="int8", name="mine")
    m = read_manifest(d)
    assert d.name == "mine-int8" and m["source"]["kind"] == "onnx"
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    with pytest.raises(ValueError, match="needs its input specs"):
        build_artifact(ts_path, tmp_path / "bad")
    pickled = tmp_path / "pickled.pt"
    torch.save(net, str(pickled))
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        build_artifact(pickled, tmp_path / "bad", input_specs=specs)
    with pytest.raises(ValueError, match="unknown model 'nosuch'"):
        build_artifact("nosuch", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("text", ["x", "x:FP99:-1,3", "x:FP32:a,b", "x:FP32:0,3", ":FP32:1"])
def test_bad_tensor_specs(text):
    with pytest.raises(ValueError, match="tensor spec"):
        sources.parse_tensor_spec(text)


def test_integer_input_ranges_follow_the_embedding(tmp_path):
    ref = get_reference("tinybert")
    path = export.export_onnx(
        ref.module, ref.example_inputs, ref.inputs, ref.outputs, tmp_path / "m.onnx"
    )
    assert sources.integer_input_ranges(path, ref.inputs) == {
        "input_ids": (0, 1000),
        "attention_mask": (1, 2),
    }
