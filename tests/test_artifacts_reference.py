"""Reference models and their ONNX export, and the real-size DistilBERT int8 artifact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("zstandard")

from predictors import export  # noqa: E402
from predictors.artifact import load_artifact  # noqa: E402
from predictors.artifact_build import build_artifact  # noqa: E402
from predictors.artifact_manifest import read_manifest  # noqa: E402
from predictors.model import TensorSpec  # noqa: E402
from predictors.onnx_model import OnnxModel  # noqa: E402
from predictors.reference import build_reference, get_reference, reference_names  # noqa: E402
from tests.artifact_helpers import torch_out  # noqa: E402


def _large_initializer_hashes(model_path: Path, min_elems: int) -> list[str]:
    """Hashes of the weight initializers (quantization zero points, all 0, left out)."""
    m = onnx.load(str(model_path))
    hashes = []
    for init in m.graph.initializer:
        if int(np.prod(init.dims)) >= min_elems and not init.name.endswith("zero_point"):
            arr = onnx.numpy_helper.to_array(init)
            hashes.append(hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
    return hashes


# --------------------------------------------------------------------------------------------
# reference models
# --------------------------------------------------------------------------------------------


def test_reference_models_are_deterministic_per_seed_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, xa, ins, outs = build_reference("tinybert", seed=0)
    assert torch.equal(torch.rand(3), expected_next)  # global RNG untouched
    b, xb, _, _ = build_reference("tinybert", seed=0)
    c, _, _, _ = build_reference("tinybert", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["word_embeddings.weight"], sc["word_embeddings.weight"])
    assert all(np.array_equal(xa[k], xb[k]) for k in xa)
    assert [s.name for s in ins] == ["input_ids", "attention_mask"]
    assert not a.training
    np.testing.assert_array_equal(torch_out(a, xa, ins), torch_out(b, xb, ins))
    assert torch_out(a, xa, ins).shape == (2, 2) and outs[0].shape == (-1, 2)


def test_unknown_reference_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: distilbert, resnet50"):
        build_reference("gpt5")
    assert {"distilbert", "resnet50", "mlp"} <= set(reference_names())


def test_resnet50_has_resnet50_size_and_sensible_outputs():
    module, x, ins, outs = build_reference("resnet50")
    assert sum(p.numel() for p in module.parameters()) == 25_557_032
    assert ins == [TensorSpec("images", "FP32", (-1, 3, 224, 224))]
    assert outs == [TensorSpec("logits", "FP32", (-1, 1000))]
    y = torch_out(module, x, ins)
    assert y.shape == (1, 1000) and np.isfinite(y).all() and 0 < np.abs(y).max() < 100


def test_exported_layers_have_distinct_weights(tmp_path):
    # exporters merge equal initializers: every layer (biases, norms too) must differ
    for name in ("mlp", "tinybert"):
        ref = get_reference(name)
        path = export.export_onnx(
            ref.module, ref.example_inputs, ref.inputs, ref.outputs, tmp_path / f"{name}.onnx"
        )
        hashes = _large_initializer_hashes(path, min_elems=4)
        assert len(hashes) == len(set(hashes)), name
        n_params = sum(p.numel() for p in ref.module.parameters())
        # every parameter made it to the graph (no dedup, nothing dropped)
        total = sum(int(np.prod(i.dims)) for i in onnx.load(str(path)).graph.initializer)
        assert total >= n_params, name
        ins, outs = export.onnx_specs(path)
        assert [s.shape[0] for s in ins + outs] == [-1] * (len(ins) + len(outs))  # dynamic batch


# --------------------------------------------------------------------------------------------
# the real-size model
# --------------------------------------------------------------------------------------------


def test_distilbert_int8_artifact(tmp_path):
    module, _, ins, outs = build_reference("distilbert")
    n_params = sum(p.numel() for p in module.parameters())
    assert 65e6 < n_params < 68e6  # DistilBERT-base + classification head: 66.96 M
    assert ins == [
        TensorSpec("input_ids", "INT64", (-1, 128)),
        TensorSpec("attention_mask", "INT64", (-1, 128)),
    ]
    assert outs == [TensorSpec("logits", "FP32", (-1, 2))]
    del module

    d = build_artifact("distilbert", tmp_path / "out", variant="int8")
    m = read_manifest(d)
    compressed = m["sizes"]["compressed_bytes"]
    assert 40e6 < compressed < 90e6, compressed
    acc = m["accuracy"]
    assert acc["saturation_free"] is True
    # measured pooled cosine >= 0.9976 on every path (seeds 0-4, 8-32 samples)
    assert all(f["cosine"] >= 0.995 for f in acc["paths"].values()), acc["paths"]
    assert m["source"]["parameters"] == n_params

    art = load_artifact(d, extract_dir=tmp_path / "x")
    model = OnnxModel(art, intra_op_num_threads=2)
    ids = np.random.default_rng(1).integers(0, 30_522, (2, 128), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 64:] = 0
    logits = model.predict({"input_ids": ids, "attention_mask": mask})["logits"]
    assert logits.shape == (2, 2) and np.isfinite(logits).all()
    # the quantized weights are all distinct too (no layer shared or deduplicated)
    hashes = _large_initializer_hashes(art.model_path, min_elems=1024)
    assert len(hashes) >= 6 * 6 + 2 and len(hashes) == len(set(hashes))
