"""`hybridserve package` on a user's ONNX file, then `hybridserve profile` into a usable scenario."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from hybridserve.config import load_scenario  # noqa: E402


def user_onnx(path):
    """A small user model written with the onnx helpers: y = relu(x @ W + b)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 4)).astype("float32"), "W")
    b = numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "B")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "user",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "hybridserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_package_then_profile_a_users_onnx_model(tmp_path):
    src = user_onnx(tmp_path / "user.onnx")
    p = cli(
        "package",
        "--model",
        str(src),
        "--variant",
        "fp32",
        "--output",
        str(tmp_path / "out"),
        "--json",
    )
    assert p.returncode == 0, p.stderr
    art = next((tmp_path / "out").glob("*-fp32"))
    manifest = json.loads((art / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["x"]
    prof = tmp_path / "profile.yaml"
    p = cli(
        "profile",
        "--artifact",
        str(art),
        "--batch-sizes",
        "1,2,4",
        "--repeats",
        "3",
        "--threads",
        "1",
        "--output",
        str(prof),
        "--json",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [b["batch"] for b in out["batches"]] == [1, 2, 4]
    assert all(b["p50_ms"] > 0 and b["throughput_rps"] > 0 for b in out["batches"])
    doc = yaml.safe_load(prof.read_text())
    assert "measured by `hybridserve profile`" in doc["provenance"]
    from predictors.isa import cpu_isa

    here = cpu_isa()
    assert doc["reference"]["isa"] == here.isa == out["isa"]["isa"]
    assert f"(ISA {here.isa}, int8 path {here.int8_path})" in doc["provenance"]
    sc = load_scenario(model=doc)  # the profile plugs straight into a scenario
    assert sc.model.reference.batch_ms.keys() == {1, 2, 4}
    assert sc.model.reference.isa == here.isa
    assert sc.pools and sc.pools[0].capacity_rps > 0


def test_profile_errors_are_one_line(tmp_path):
    p = cli("profile", "--artifact", str(tmp_path), "--batch-sizes", "1,x")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--batch-sizes" in p.stderr
    p = cli("profile", "--artifact", str(tmp_path / "missing"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
