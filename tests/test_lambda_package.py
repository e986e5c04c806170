"""Lambda packaging: within the limits, self-contained, and a container context when too big."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

pytest.importorskip("onnxruntime")
from predictors.packaging import LAMBDA_UNZIPPED_LIMIT, build_lambda_package  # noqa: E402


@pytest.fixture
def fake_artifact(tmp_path):
    d = tmp_path / "art"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"name": "x"}))
    (d / "model.onnx.zst").write_bytes(b"\0" * 1024)
    return d


def test_zip_within_the_limit_holds_only_the_lambda_path(fake_artifact, tmp_path):
    pkg = build_lambda_package(fake_artifact, tmp_path / "out")
    assert pkg.kind == "zip" and pkg.path.name == "lambda.zip"
    assert pkg.unzipped_bytes < LAMBDA_UNZIPPED_LIMIT
    names = zipfile.ZipFile(pkg.path).namelist()
    assert "lambda_handlers/handler.py" in names
    assert "predictors/v2.py" in names and "predictors/artifact.py" in names
    assert "predictors/isa.py" in names  # the handler logs the CPU's int8 path at cold start
    assert "predictors/int8_paths.py" not in names and "predictors/guard.py" not in names
    assert "artifact/manifest.json" in names
    assert any(n.startswith("onnxruntime/") for n in names)
    assert any(n.startswith("numpy/") for n in names)
    assert not any(n.startswith("torch/") or n == "predictors/reference.py" for n in names)
    assert not any("/tests/" in n or n.endswith(".pyc") for n in names)
    report = dict(pkg.sizes)
    assert set(report) >= {"onnxruntime", "numpy", "zstandard", "artifact", "lambda_handlers"}
    assert pkg.as_json()["limit_mb"] == 250


def test_zip_is_self_contained(fake_artifact, tmp_path):
    pkg = build_lambda_package(fake_artifact, tmp_path / "out")
    root = tmp_path / "task"
    zipfile.ZipFile(pkg.path).extractall(root)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import numpy, onnxruntime, zstandard; "
        "import lambda_handlers.handler as h; import predictors.v2, predictors.onnx_model; "
        "from predictors.isa import cpu_isa; cpu_isa(); "
        "assert numpy.__file__.startswith(sys.argv[1]), numpy.__file__; print('ok')"
    )
    # -S: no site-packages, as in the Lambda runtime (only the task root and the runtime's own)
    p = subprocess.run(
        [sys.executable, "-S", "-c", code, str(root)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_too_big_writes_a_container_context_and_says_why(fake_artifact, tmp_path):
    pkg = build_lambda_package(fake_artifact, tmp_path / "out", limit_bytes=10 * 2**20)
    assert pkg.kind == "container"
    docker = (pkg.path / "Dockerfile").read_text()
    assert docker.startswith("# AWS Lambda container image")
    assert "FROM public.ecr.aws/lambda/python:3.11" in docker
    assert 'CMD ["lambda_handlers.handler.handler"]' in docker
    assert "exceeds Lambda's 10 MB" in pkg.reason and (pkg.path / "WHY.txt").exists()
    assert (pkg.path / "artifact" / "manifest.json").exists()


def test_not_an_artifact_is_refused(tmp_path):
    with pytest.raises(ValueError, match="manifest.json"):
        build_lambda_package(tmp_path, tmp_path / "out")
