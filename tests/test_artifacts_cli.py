"""`hybridserve package` for artifacts: JSON output, one-line errors, the auto fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("zstandard")

from predictors.artifact_manifest import read_manifest  # noqa: E402
from predictors.isa import EXACT, SATURATING  # noqa: E402
from tests.conftest import REPO  # noqa: E402


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
