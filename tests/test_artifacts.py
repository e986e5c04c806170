"""Artifacts: the build/load round trip and the integrity checks, on the tiny `mlp` and
`tinybert` references. The other artifact topics have their own tests/test_artifacts_*.py."""

from __future__ import annotations

import json
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

from predictors.artifact import load_artifact, size_report  # noqa: E402
from predictors.artifact_build import build_artifact  # noqa: E402
from predictors.artifact_io import sha256_file  # noqa: E402
from predictors.artifact_manifest import MANIFEST, ArtifactError, read_manifest  # noqa: E402
from predictors.isa import EXACT, SATURATING  # noqa: E402
from predictors.onnx_model import OnnxModel  # noqa: E402
from predictors.reference import build_reference  # noqa: E402
from tests.artifact_helpers import torch_out  # noqa: E402
from tests.conftest import REPO  # noqa: E402


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------------
# build / load round trip
# --------------------------------------------------------------------------------------------


def test_fp32_round_trip_matches_torch_and_onnx(built, tmp_path):
    art = load_artifact(built["fp32"], extract_dir=tmp_path / "x")
    module, x, ins, _ = build_reference("mlp")
    model = OnnxModel(art, intra_op_num_threads=1)
    got = model.predict(x)["y"]
    np.testing.assert_allclose(got, torch_out(module, x, ins), rtol=1e-5, atol=1e-6)
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
        "for m in ('torch', 'onnx', 'predictors.export', 'predictors.reference',\n"
        "          'predictors.variants', 'predictors.sources'):\n"
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
