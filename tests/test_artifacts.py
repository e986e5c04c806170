"""Artifacts: reference models, export/variants, the accuracy guard, integrity checks, OnnxModel, CLI.

Most tests use the tiny `mlp` and `tinybert` references; one builds the real-size DistilBERT int8.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("zstandard")

from predictors import export  # noqa: E402
from predictors.artifact import (  # noqa: E402
    MANIFEST,
    ArtifactError,
    build_artifact,
    load_artifact,
    read_manifest,
    sha256_file,
    size_report,
)
from predictors.guard import AccuracyError  # noqa: E402
from predictors.isa import EXACT, SATURATING  # noqa: E402
from predictors.model import TensorSpec  # noqa: E402
from predictors.onnx_model import OnnxModel  # noqa: E402
from predictors.reference import build_reference, get_reference, reference_names  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _torch_out(module, inputs: dict[str, np.ndarray], specs) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(inputs[s.name]) for s in specs)).numpy()


def _large_initializer_hashes(model_path: Path, min_elems: int) -> list[str]:
    """Hashes of the weight initializers (quantization zero points, all 0, left out)."""
    m = onnx.load(str(model_path))
    hashes = []
    for init in m.graph.initializer:
        if int(np.prod(init.dims)) >= min_elems and not init.name.endswith("zero_point"):
            arr = onnx.numpy_helper.to_array(init)
            hashes.append(hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
    return hashes


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """mlp fp32 and int8 artifacts, built once."""
    out = tmp_path_factory.mktemp("artifacts")
    return {v: build_artifact("mlp", out, variant=v) for v in ("fp32", "int8")}


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


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
    np.testing.assert_array_equal(_torch_out(a, xa, ins), _torch_out(b, xb, ins))
    assert _torch_out(a, xa, ins).shape == (2, 2) and outs[0].shape == (-1, 2)


def test_unknown_reference_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: distilbert, resnet50"):
        build_reference("gpt5")
    assert {"distilbert", "resnet50", "mlp"} <= set(reference_names())


def test_resnet50_has_resnet50_size_and_sensible_outputs():
    module, x, ins, outs = build_reference("resnet50")
    assert sum(p.numel() for p in module.parameters()) == 25_557_032
    assert ins == [TensorSpec("images", "FP32", (-1, 3, 224, 224))]
    assert outs == [TensorSpec("logits", "FP32", (-1, 1000))]
    y = _torch_out(module, x, ins)
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
# build / load round trip
# --------------------------------------------------------------------------------------------


def test_fp32_round_trip_matches_torch_and_onnx(built, tmp_path):
    art = load_artifact(built["fp32"], extract_dir=tmp_path / "x")
    module, x, ins, _ = build_reference("mlp")
    model = OnnxModel(art, intra_op_num_threads=1)
    got = model.predict(x)["y"]
    np.testing.assert_allclose(got, _torch_out(module, x, ins), rtol=1e-5, atol=1e-6)
    direct = ort.InferenceSession(str(art.model_path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(got, direct.run(["y"], x)[0])
    assert art.model_path.parent == tmp_path / "x"
    assert sha256_file(art.model_path)[0] == art.manifest["model"]["sha256"]


def test_manifest_fields(built):
    m = read_manifest(built["int8"])
    assert built["int8"].name == "mlp-int8"
    assert (m["name"], m["version"], m["variant"], m["compression"]) == ("mlp", "1", "int8", "zstd")
    assert datetime.fromisoformat(m["created"]).tzinfo is not None
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert m["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    assert m["max_batch"] >= 1
    f = m["files"]["model.onnx.zst"]
    assert (f["sha256"], f["bytes"]) == sha256_file(built["int8"] / "model.onnx.zst")
    assert m["sizes"] == {"onnx_bytes": m["model"]["bytes"], "compressed_bytes": f["bytes"]}
    assert m["variant_requested"] == "int8" and m["rejected"] == []
    acc = m["accuracy"]
    assert acc["reference"] == "fp32" and acc["samples"] == 16 and acc["threshold"] == 0.99
    assert acc["metric"] == "pooled-cosine" and acc["seed"] == 0
    assert set(acc["paths"]) == {"native", EXACT, SATURATING}
    for figures in acc["paths"].values():
        assert 0.999 <= figures["cosine"] <= 1.0  # measured >= 0.9999 on every path
        assert 0.99 <= figures["cosine_min_per_sample"] <= figures["cosine"] + 1e-9
    assert acc["cosine"] == min(f["cosine"] for f in acc["paths"].values())
    assert acc["worst_path"] in acc["paths"]
    assert acc["saturation_free"] is True and acc["max_pair_sum"] <= 32640
    assert acc["int8_format"]["name"] == "s8-rr" and acc["int8_format"]["reduce_range"] is True
    on = acc["measured_on"]
    assert set(on) >= {"isa", "int8_path", "cpu_model", "onnxruntime"}
    assert on["onnxruntime"] == ort.__version__
    fp32_acc = read_manifest(built["fp32"])["accuracy"]
    assert set(fp32_acc["paths"]) == {"native"} and "saturation_free" not in fp32_acc
    assert size_report(built["int8"]) == [
        (MANIFEST, (built["int8"] / MANIFEST).stat().st_size),
        ("model.onnx.zst", f["bytes"]),
    ]
    # nothing left behind in the output directory (staging dirs are renamed or removed)
    assert sorted(p.name for p in built["int8"].parent.iterdir()) == ["mlp-fp32", "mlp-int8"]


def test_variants_and_xz_on_a_small_transformer(tmp_path):
    sizes = {}
    for variant, compression in (("fp32", "zstd"), ("fp16", "xz"), ("int8", "zstd")):
        d = build_artifact("tinybert", tmp_path / "out", variant=variant, compression=compression)
        art = load_artifact(d, extract_dir=tmp_path / "x")
        sizes[variant] = art.manifest["sizes"]["onnx_bytes"]
        assert art.manifest["accuracy"]["cosine"] >= 0.99
        assert (d / f"model.onnx.{'xz' if compression == 'xz' else 'zst'}").is_file()
        ids = np.arange(64, dtype=np.int64).reshape(2, 32)
        out = OnnxModel(art).predict({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        assert out["logits"].shape == (2, 2) and out["logits"].dtype == np.float32
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    assert sizes["fp16"] < 0.6 * sizes["fp32"]


def test_rebuild_replaces_the_artifact(tmp_path):
    d1 = build_artifact("mlp", tmp_path, variant="fp32", seed=0)
    sha1 = read_manifest(d1)["model"]["sha256"]
    d2 = build_artifact("mlp", tmp_path, variant="fp32", seed=1)
    assert d1 == d2 and read_manifest(d2)["model"]["sha256"] != sha1
    assert [p.name for p in tmp_path.iterdir()] == ["mlp-fp32"]


def test_extracted_model_is_reused_and_repaired(built, tmp_path):
    a = load_artifact(built["int8"], extract_dir=tmp_path)
    stamp = a.model_path.stat().st_mtime_ns
    b = load_artifact(built["int8"], extract_dir=tmp_path)
    assert b.model_path == a.model_path and b.model_path.stat().st_mtime_ns == stamp
    a.model_path.write_bytes(b"garbage")  # a damaged cache is replaced, not used
    c = load_artifact(built["int8"], extract_dir=tmp_path)
    assert sha256_file(c.model_path)[0] == c.manifest["model"]["sha256"]
    assert [p.name for p in tmp_path.iterdir()] == [a.model_path.name]  # no .part files


# --------------------------------------------------------------------------------------------
# integrity
# --------------------------------------------------------------------------------------------


def test_flipped_byte_is_detected_before_decompressing(built, tmp_path):
    d = _copy(built["int8"], tmp_path)
    f = d / "model.onnx.zst"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.onnx\.zst: sha256 mismatch: expected") as e:
        load_artifact(d, extract_dir=tmp_path / "x")
    assert str(d) in str(e.value)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_truncated_and_missing_files(built, tmp_path):
    d = _copy(built["int8"], tmp_path)
    f = d / "model.onnx.zst"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match=r"model\.onnx\.zst: expected \d+ bytes, found \d+ "):
        load_artifact(d, extract_dir=tmp_path / "x")
    f.unlink()
    with pytest.raises(ArtifactError, match=r"model\.onnx\.zst listed in the manifest is missing"):
        load_artifact(d, extract_dir=tmp_path / "x")
    with pytest.raises(ArtifactError, match="artifact directory not found"):
        load_artifact(tmp_path / "nope")


def test_edited_manifest_is_detected(built, tmp_path):
    d = _copy(built["int8"], tmp_path)
    mpath = d / MANIFEST
    good = json.loads(mpath.read_text())

    def write(m) -> None:
        mpath.write_text(json.dumps(m))

    bad = json.loads(json.dumps(good))
    bad["files"]["model.onnx.zst"]["sha256"] = "0" * 64
    write(bad)
    with pytest.raises(ArtifactError, match="expected 0000"):
        load_artifact(d, extract_dir=tmp_path / "x")

    bad = json.loads(json.dumps(good))
    bad["model"]["sha256"] = "f" * 64  # the compressed file is intact, its content is not this
    write(bad)
    with pytest.raises(ArtifactError, match="decompressed model does not match the manifest"):
        load_artifact(d, extract_dir=tmp_path / "x")
    assert not any(p.suffix == ".part" for p in (tmp_path / "x").iterdir())

    bad = json.loads(json.dumps(good))
    del bad["max_batch"]
    write(bad)
    with pytest.raises(ArtifactError, match="field max_batch missing"):
        load_artifact(d)

    mpath.write_text(mpath.read_text()[:-20])
    with pytest.raises(ArtifactError, match=r"manifest\.json: bad JSON at line"):
        load_artifact(d)
    mpath.unlink()
    with pytest.raises(ArtifactError, match="manifest.json missing"):
        load_artifact(d)


def test_runtime_modules_import_without_torch_or_onnx(built, tmp_path):
    code = (
        "import sys\n"
        "for m in ('torch', 'onnx', 'predictors.export', 'predictors.reference'):\n"
        "    sys.modules[m] = None  # any import of these fails\n"
        "import numpy as np\n"
        "from predictors.artifact import load_artifact\n"
        "from predictors.onnx_model import OnnxModel\n"
        f"m = OnnxModel(load_artifact({str(built['int8'])!r}, extract_dir={str(tmp_path)!r}))\n"
        "print(m.predict({'x': np.ones((3, 16), np.float32)})['y'].shape)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(3, 4)"


# --------------------------------------------------------------------------------------------
# accuracy guard
# --------------------------------------------------------------------------------------------


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

    monkeypatch.setattr(export, "make_variant", broken)
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


# --------------------------------------------------------------------------------------------
# OnnxModel
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# user models
# --------------------------------------------------------------------------------------------


class _TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 3)

    def forward(self, a, b):
        return torch.softmax(self.lin(a) + b.float().sum(1, keepdim=True), -1)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_user_models_onnx_torchscript_and_module(built, tmp_path):
    specs = [export.parse_tensor_spec("a:FP32:-1,8"), export.parse_tensor_spec("b:int64:-1,4")]
    net = _TwoInputs().eval()
    ts_path = tmp_path / "net.pt"
    traced = torch.jit.trace(net, (torch.ones(2, 8), torch.ones(2, 4, dtype=torch.int64)))
    torch.jit.save(traced, str(ts_path))
    a = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    b = np.ones((3, 4), np.int64)
    want = _torch_out(net, {"a": a, "b": b}, specs)
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
        export.parse_tensor_spec(text)


def test_integer_input_ranges_follow_the_embedding(tmp_path):
    ref = get_reference("tinybert")
    path = export.export_onnx(
        ref.module, ref.example_inputs, ref.inputs, ref.outputs, tmp_path / "m.onnx"
    )
    assert export.integer_input_ranges(path, ref.inputs) == {
        "input_ids": (0, 1000),
        "attention_mask": (1, 2),
    }


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from hybridserve.cli.package import package; package()", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_cli_package_artifact_json(tmp_path):
    r = _cli("--model", "mlp", "--variant", "int8", "--output", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["artifact"] == str(tmp_path / "mlp-int8")
    assert {f["file"] for f in out["files"]} == {"manifest.json", "model.onnx.zst"}
    assert out["accuracy"]["cosine"] >= 0.99
    assert (out["variant"], out["variant_requested"], out["rejected"]) == ("int8", "int8", [])
    assert set(out["paths"]) == {"native", EXACT, SATURATING}
    assert out["manifest"] == read_manifest(tmp_path / "mlp-int8")
    assert any("EC2 instance types differ in CPU" in w for w in out["warnings"])


def test_cli_package_errors_are_one_line(tmp_path):
    r = _cli("--model", "nosuch", "--output", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.startswith("error: unknown model 'nosuch'") and "Traceback" not in r.stderr
    r = _cli("--model", "mlp", "--output", str(tmp_path / "o"), "--cosine-threshold", "1.01")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "accuracy guard" in r.stderr and not (tmp_path / "o").exists()


def test_cli_package_auto_falls_back_to_fp32_and_explicit_int8_exits_2(tmp_path):
    # the int8 mlp's pooled cosine is 0.99992-0.99998 on every path: below 0.99999
    r = _cli("--model", "mlp", "--output", str(tmp_path), "--cosine-threshold", "0.99999")
    assert r.returncode == 0, r.stderr
    assert "variant int8 rejected: mlp-int8: the int8 variant fails the accuracy guard" in r.stderr
    assert "using the fp32 variant instead" in r.stderr
    assert "(mlp v1, fp32)" in r.stdout and (tmp_path / "mlp-fp32").is_dir()
    r = _cli(
        "--model", "mlp", "--output", str(tmp_path / "j"), "--int8-format", "s8",
        "--samples", "8", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["variant"], out["variant_requested"]) == ("fp32", "auto")
    assert out["rejected"][0]["worst_path"] == SATURATING and out["paths"] == {"native": 1.0}
    from hybridserve.cli.package import _cpu_warnings

    on = {"isa": "avx2", "cpu_model": "AMD EPYC"}
    [w] = _cpu_warnings({"variant": "int8", "accuracy": {"measured_on": on}}, "lambda")
    assert "Lambda x86_64 functions run on several Intel/AMD CPUs" in w and "Graviton" in w
    assert "every int8 kernel path was checked" in w and "profiled here on avx2 (AMD EPYC)" in w
    r = _cli("--model", "mlp", "--output", str(tmp_path / "x"), "--variant", "int8",
             "--int8-format", "s8", "--samples", "8")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: mlp-int8: the int8 variant fails the accuracy guard on")
    assert SATURATING in r.stderr and "< threshold 0.99" in r.stderr
    assert not (tmp_path / "x").exists()


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
