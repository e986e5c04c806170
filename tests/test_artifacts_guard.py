"""The accuracy guard at build time: a variant that drifts from fp32 is refused (nothing is
written) and ``auto`` falls back to fp32, saying why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("zstandard")

from predictors import variants  # noqa: E402
from predictors.artifact_build import build_artifact  # noqa: E402
from predictors.artifact_manifest import read_manifest  # noqa: E402
from predictors.guard import AccuracyError  # noqa: E402
from predictors.isa import EXACT, SATURATING  # noqa: E402


def test_guard_refuses_a_broken_variant_and_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"

    def broken(src, dst, variant, **kw):  # a "quantization" that scrambles the weights
        m = onnx.load(str(src))
        rng = np.random.default_rng(0)
        for init in m.graph.initializer:
            arr = onnx.numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.ndim == 2:
                noisy = rng.standard_normal(arr.shape).astype(np.float32)
                init.CopyFrom(onnx.numpy_helper.from_array(noisy, init.name))
        onnx.save(m, str(dst))
        return Path(dst)

    monkeypatch.setattr(variants, "make_variant", broken)
    with pytest.raises(
        AccuracyError,
        match=r"mlp-int8: the int8 variant fails the accuracy guard on the native \(.*\) path: "
        r"pooled-cosine to fp32 0\.\d+ < threshold 0.99 \(16 random samples, seed 0\)",
    ):
        build_artifact("mlp", out, variant="int8")
    assert not out.exists()


def test_guard_threshold_above_one_refuses_and_keeps_the_previous_build(tmp_path):
    d = build_artifact("mlp", tmp_path, variant="int8")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(AccuracyError) as e:
        build_artifact("mlp", tmp_path, variant="int8", cosine_threshold=1.01)
    msg = str(e.value)
    assert "int8" in msg and "threshold 1.01" in msg and "0.99" in msg
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["mlp-int8"]


def test_auto_falls_back_to_fp32_and_says_why(tmp_path):
    # full-range s8 saturates on the int16-pair path (pooled cosine 0.976 with 8 samples, seed 0)
    d = build_artifact("mlp", tmp_path, variant="auto", int8_format="s8", samples=8)
    m = read_manifest(d)
    assert d.name == "mlp-fp32" and (m["variant"], m["variant_requested"]) == ("fp32", "auto")
    [r] = m["rejected"]
    assert r["variant"] == "int8" and r["worst_path"] == SATURATING and r["cosine"] < 0.985
    assert r["paths"][EXACT] > 0.9995
    assert f"on the {SATURATING} path" in r["reason"] and "< threshold 0.99" in r["reason"]
    # the default format passes: auto is int8
    assert read_manifest(build_artifact("mlp", tmp_path, variant="auto"))["variant"] == "int8"
    with pytest.raises(ValueError, match="unknown int8 format 'q4'"):
        build_artifact("mlp", tmp_path, int8_format="q4")
