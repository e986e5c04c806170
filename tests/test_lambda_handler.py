"""The Lambda handler on a real artifact: direct, batch and proxy events, errors, cold path."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # to build the test artifact; the handler itself never imports it

from lambda_handlers import handler as lam  # noqa: E402
from predictors.artifact import load_artifact  # noqa: E402
from predictors.artifact_build import build_artifact  # noqa: E402
from predictors.onnx_model import OnnxModel  # noqa: E402
from predictors.v2_client import encode_request  # noqa: E402
from tests.conftest import REPO  # noqa: E402


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return build_artifact("mlp", tmp_path_factory.mktemp("art"), variant="fp32")


@pytest.fixture
def env(artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDSERVE_ARTIFACT", str(artifact))
    monkeypatch.setenv("HYBRIDSERVE_EXTRACT_DIR", str(tmp_path / "extract"))
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
    lam._CACHE.clear()
    yield artifact
    lam._CACHE.clear()


def request(x: np.ndarray, rid: str = "r") -> dict:
    return {
        "id": rid,
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ],
    }


def expected(artifact, x: np.ndarray) -> np.ndarray:
    return OnnxModel(load_artifact(artifact))._session.run(None, {"x": x})[0]


def test_direct_invoke_returns_a_v2_response(env):
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    out = lam.handler(request(x))
    assert out["model_name"] == "mlp" and out["id"] == "r"
    y = np.array(out["outputs"][0]["data"], dtype=np.float32).reshape(out["outputs"][0]["shape"])
    np.testing.assert_allclose(y, expected(env, x), rtol=1e-5, atol=1e-6)
    assert lam._CACHE["model"]._session.get_session_options().intra_op_num_threads == 1


def test_batch_invoke_runs_one_pass_and_isolates_a_bad_request(env, monkeypatch):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 2, 3)]
    lam.get_plane()
    calls = []
    model = lam._CACHE["model"]
    real = model.predict
    monkeypatch.setattr(
        model, "predict", lambda inputs: calls.append(len(inputs["x"])) or real(inputs)
    )
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 15], "data": [0.0] * 15}]}
    out = lam.handler(
        {"batch": [request(xs[0], "a"), bad, request(xs[1], "b"), request(xs[2], "c")]}
    )
    res = out["responses"]
    assert calls == [6]  # one forward pass for the three good requests
    assert res[1]["status"] == 400 and "shape" in res[1]["error"]
    for r, x in zip([res[0], res[2], res[3]], xs, strict=True):
        y = np.array(r["outputs"][0]["data"], dtype=np.float32).reshape(r["outputs"][0]["shape"])
        np.testing.assert_allclose(y, expected(env, x), rtol=1e-5, atol=1e-6)
    assert [res[0]["id"], res[2]["id"], res[3]["id"]] == ["a", "b", "c"]


def proxy(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> dict:
    return {
        "version": "2.0",
        "rawPath": path,
        "headers": headers or {},
        "requestContext": {"http": {"method": method}},
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }


def test_function_url_events_json_binary_health_and_errors(env):
    x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
    r = lam.handler(proxy("POST", "/v2/models/mlp/infer", json.dumps(request(x)).encode()))
    assert r["statusCode"] == 200
    y = json.loads(r["body"])["outputs"][0]
    np.testing.assert_allclose(
        np.array(y["data"], dtype=np.float32).reshape(y["shape"]),
        expected(env, x),
        rtol=1e-5,
        atol=1e-6,
    )
    # Triton binary tensor extension both ways
    body, hdrs = encode_request({"x": x}, binary_inputs=True, outputs=["y"], binary_outputs=True)
    r = lam.handler(proxy("POST", "/v2/models/mlp/infer", body, hdrs))
    assert r["statusCode"] == 200 and r["isBase64Encoded"]
    raw = base64.b64decode(r["body"])
    n = int(r["headers"]["inference-header-content-length"])
    tail = np.frombuffer(raw[n:], dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(tail, expected(env, x), rtol=1e-5, atol=1e-6)
    assert lam.handler(proxy("GET", "/v2/health/ready"))["statusCode"] == 200
    assert json.loads(lam.handler(proxy("GET", "/v2/models/mlp"))["body"])["name"] == "mlp"
    nf = lam.handler(proxy("POST", "/v2/models/other/infer", json.dumps(request(x)).encode()))
    assert nf["statusCode"] == 404 and "error" in json.loads(nf["body"])
    bad = lam.handler(proxy("POST", "/v2/models/mlp/infer", b"{not json"))
    assert bad["statusCode"] == 400 and "error" in json.loads(bad["body"])
    # the container keeps serving
    assert (
        lam.handler(proxy("POST", "/v2/models/mlp/infer", json.dumps(request(x)).encode()))[
            "statusCode"
        ]
        == 200
    )


def test_bad_direct_events_are_errors_not_crashes(env):
    assert lam.handler("hello")["status"] == 400
    assert lam.handler({"batch": "nope"})["status"] == 400
    out = lam.handler(
        {"inputs": [{"name": "y", "datatype": "FP32", "shape": [1, 16], "data": [0] * 16}]}
    )
    assert out["status"] == 400 and "'y'" in out["error"]


def test_a_tampered_artifact_is_refused_with_an_error_object(artifact, tmp_path, monkeypatch):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    blob = next(p for p in broken.iterdir() if p.name.startswith("model.onnx"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    monkeypatch.setenv("HYBRIDSERVE_ARTIFACT", str(broken))
    monkeypatch.setenv("HYBRIDSERVE_EXTRACT_DIR", str(tmp_path / "x"))
    lam._CACHE.clear()
    out = lam.handler(request(np.zeros((1, 16), np.float32)))
    lam._CACHE.clear()
    assert out["status"] == 500 and "sha256" in out["error"].lower()


def test_cold_path_in_a_fresh_interpreter(artifact, tmp_path):
    code = (
        "import json, sys; from lambda_handlers.handler import handler, _CACHE; "
        "r = handler(json.loads(sys.argv[1])); handler(json.loads(sys.argv[1])); "
        "print(json.dumps({'r': r, 'load_s': _CACHE['load_s'], 'onnx': 'onnx' in sys.modules}))"
    )
    env = {
        **os.environ,
        "HYBRIDSERVE_ARTIFACT": str(artifact),
        "HYBRIDSERVE_EXTRACT_DIR": str(tmp_path / "cold"),
        "PYTHONPATH": str(REPO),
    }
    x = np.ones((1, 16), np.float32)
    p = subprocess.run(
        [sys.executable, "-c", code, json.dumps(request(x))],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert "torch" not in p.stderr
    assert out["r"]["outputs"][0]["shape"] == [1, 4] and out["load_s"] > 0
    assert (tmp_path / "cold").exists()
    assert out["onnx"] is False  # the handler needs onnxruntime, never onnx
    # one structured line at cold start (not per request) naming the CPU's int8 kernel path
    [line] = [json.loads(x) for x in p.stderr.splitlines() if '"lambda.cold_start"' in x]
    assert line["level"] == "info" and line["model"] == "mlp" and line["variant"] == "fp32"
    assert line["int8_path"] in ("exact-int32", "int16-saturating-pairs", "unknown")
    assert line["isa"] and line["cpu_model"] and line["load_s"] > 0


def test_warmup_loads_the_model_but_never_infers(env, monkeypatch):
    import time

    from predictors.onnx_model import OnnxModel

    def no_inference(self, inputs):
        raise AssertionError("a warm-up must not run the model")

    monkeypatch.setattr(OnnxModel, "predict", no_inference)
    assert "plane" not in lam._CACHE
    assert lam.handler({"warmup": True}) == {"warm": True}
    assert "plane" in lam._CACHE and lam._CACHE["load_s"] > 0  # the cold start was paid now
    t0 = time.perf_counter()
    assert lam.handler({"warmup": True, "hold_ms": 60}) == {"warm": True}
    assert time.perf_counter() - t0 >= 0.055  # held so concurrent pings take distinct envs
    t0 = time.perf_counter()
    assert lam.handler({"warmup": True, "hold_ms": 10**9}) == {"warm": True}
    assert time.perf_counter() - t0 < lam.WARMUP_HOLD_MAX_MS / 1000 + 0.5  # capped
    bad = lam.handler({"warmup": True, "hold_ms": "soon"})
    assert bad["status"] == 400 and "hold_ms" in bad["error"]
    # "warmup" must be exactly true: anything else is an inference request as before
    assert lam.handler({"warmup": "yes"})["status"] == 400


def test_warmup_on_a_broken_artifact_reports_the_error(artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDSERVE_ARTIFACT", str(tmp_path / "missing"))
    monkeypatch.setenv("HYBRIDSERVE_EXTRACT_DIR", str(tmp_path / "x"))
    lam._CACHE.clear()
    out = lam.handler({"warmup": True})
    lam._CACHE.clear()
    assert out["status"] == 500 and "warm" not in out
