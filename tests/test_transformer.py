"""Transformers (issue 15): pre/post-processing packaged with the artifact, hashed in its
manifest, run per request around the batcher by the model server's data plane and the Lambda
handler alike; a transformer that raises or returns something malformed is a clean 4xx/5xx
naming the step, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from predictors.dataplane import DataPlane  # noqa: E402
from predictors.model import TensorSpec  # noqa: E402
from predictors.text import CLS, PAD, SEP, encode  # noqa: E402
from predictors.transformer import (  # noqa: E402
    TransformedModel,
    attach_transformer,
    load_served,
    parse_source,
)
from predictors.v2 import HEADER_LENGTH, V2Error, decode_response, encode_request  # noqa: E402

CSV = '''
import numpy as np
from predictors.model import TensorSpec
from predictors.transformer import Transformer


class Csv(Transformer):
    """Rows of comma-separated numbers in; the best of the model's outputs and all of them out."""

    inputs = [TensorSpec("row", "BYTES", (-1,))]
    outputs = [TensorSpec("best", "INT64", (-1,)), TensorSpec("all", "BYTES", (-1,))]

    def preprocess(self, inputs):
        width = self.model_inputs[0].shape[1]
        rows = [[float(v) for v in r.decode().split(",")] for r in inputs["row"]]
        bad = [len(r) for r in rows if len(r) != width]
        if bad:
            raise ValueError(f"a row has {bad[0]} values, the model takes {width}")
        return {self.model_inputs[0].name: np.array(rows, dtype=np.float32)}

    def postprocess(self, outputs):
        y = outputs[self.model_outputs[0].name]
        text = [",".join(f"{v:.3f}" for v in r) for r in y]
        return {"best": y.argmax(axis=1), "all": np.array(text, dtype=object)}


class Broken(Csv):
    def postprocess(self, outputs):
        return {"best": np.zeros(3)}  # no "all", and the wrong rows
'''


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("src") / "csv_transformer.py"
    p.write_text(CSV)
    return p


@pytest.fixture
def artifact(mlp_fp32_artifact, source, tmp_path) -> Path:
    """A copy of the mlp artifact with the Csv transformer attached."""
    art = tmp_path / "mlp"
    shutil.copytree(mlp_fp32_artifact, art)
    attach_transformer(art, source, "Csv")
    return art


def rows(n: int, width: int = 16, seed: int = 0) -> list[str]:
    x = np.random.default_rng(seed).standard_normal((n, width))
    return [",".join(f"{v:.4f}" for v in r) for r in x]


def call(plane: DataPlane, name: str, inputs: dict, binary: bool = True):
    body, headers = encode_request(inputs, binary_inputs=binary, binary_outputs=binary)

    async def go():
        return await plane.infer_bytes(name, body, headers.get(HEADER_LENGTH))

    out, h = asyncio.run(go())
    return decode_response(out, h.get(HEADER_LENGTH))


def test_the_manifest_lists_the_transformer_and_its_sha256(artifact, source):
    from predictors.artifact_manifest import artifact_metadata, read_manifest

    m = read_manifest(artifact)
    assert m["transformer"]["file"] == "transformer.py" and m["transformer"]["class"] == "Csv"
    assert "transformer.py" in m["files"] and len(m["files"]["transformer.py"]["sha256"]) == 64
    meta = artifact_metadata(artifact)  # what a router answers: the client's tensors
    assert [i["name"] for i in meta["inputs"]] == ["row"]
    assert [o["name"] for o in meta["outputs"]] == ["best", "all"]
    # a changed transformer is refused at load, as a changed model would be
    (artifact / "transformer.py").write_text(source.read_text() + "\n# edited\n")
    with pytest.raises(Exception, match="transformer.py"):
        load_served(artifact, threads=1)


def test_text_in_numbers_out_through_the_batcher_json_and_binary(artifact, mlp_fp32_artifact):
    from predictors.artifact import load_artifact
    from predictors.onnx_model import OnnxModel

    model = load_served(artifact, threads=1)
    assert isinstance(model, TransformedModel)
    plane = DataPlane([model], max_delay_ms=1)
    text = rows(3)
    x = np.array([[float(v) for v in r.split(",")] for r in text], dtype=np.float32)
    want = OnnxModel(load_artifact(mlp_fp32_artifact)).predict({"x": x})["y"]
    for binary in (False, True):
        resp = call(plane, "mlp", {"row": np.array(text, dtype=object)}, binary)
        best, all_ = (o.data for o in resp.outputs)
        np.testing.assert_array_equal(best, want.argmax(axis=1))
        assert len(all_) == 3 and all_[0].decode().count(",") == 3
    sync = plane.infer_sync("mlp", *_decoded({"row": np.array(text[:1], dtype=object)}))
    assert sync.outputs[0].data.tolist() == [int(want[0].argmax())]


def _decoded(inputs):
    from predictors.v2 import decode_request

    body, headers = encode_request(inputs)
    return (decode_request(body, headers.get(HEADER_LENGTH)),)


def test_a_bad_request_is_a_400_naming_the_step_and_the_server_keeps_serving(artifact):
    plane = DataPlane([load_served(artifact, threads=1)], max_delay_ms=1)
    with pytest.raises(V2Error) as e:
        call(plane, "mlp", {"row": np.array(["1,2,3"], dtype=object)})
    assert e.value.status == 400
    assert "transformer Csv preprocess: ValueError: a row has 3 values" in e.value.message
    assert call(plane, "mlp", {"row": np.array(rows(1), dtype=object)}).outputs  # still serving


def test_a_malformed_postprocess_is_a_500_naming_the_step(mlp_fp32_artifact, source, tmp_path):
    art = tmp_path / "broken"
    shutil.copytree(mlp_fp32_artifact, art)
    attach_transformer(art, source, "Broken")
    plane = DataPlane([load_served(art, threads=1)], max_delay_ms=1)
    with pytest.raises(V2Error) as e:
        call(plane, "mlp", {"row": np.array(rows(2), dtype=object)})
    assert e.value.status == 500
    assert "transformer Broken postprocess returned no 'all'" in e.value.message


def test_attaching_names_the_file_and_class_when_it_cannot_be_built(
    mlp_fp32_artifact, source, tmp_path
):
    art = tmp_path / "a"
    shutil.copytree(mlp_fp32_artifact, art)
    with pytest.raises(ValueError, match=r"--transformer .*csv_transformer.py:Nope: ImportError"):
        attach_transformer(art, source, "Nope")
    assert not (art / "transformer.py").exists()  # the artifact is left as it was
    with pytest.raises(ValueError, match="expected FILE:CLASS"):
        parse_source("no-class-here")
    # the shipped text example refuses a model that does not take token ids
    file, cls = parse_source("text")
    with pytest.raises(ValueError, match="expects input_ids and attention_mask"):
        attach_transformer(art, file, cls)


def test_the_lambda_handler_runs_the_same_transformer(artifact, tmp_path, monkeypatch):
    from lambda_handlers import handler as lam

    monkeypatch.setenv("HYBRIDSERVE_ARTIFACT", str(artifact))
    monkeypatch.setenv("HYBRIDSERVE_EXTRACT_DIR", str(tmp_path / "extract"))
    lam._CACHE.clear()
    try:
        good = {"inputs": [{"name": "row", "datatype": "BYTES", "shape": [1], "data": rows(1)}]}
        out = lam.handler(good)
        assert [o["name"] for o in out["outputs"]] == ["best", "all"]
        bad = {"inputs": [{"name": "row", "datatype": "BYTES", "shape": [1], "data": ["1"]}]}
        both = lam.handler({"batch": [good, bad]})["responses"]  # the BATCH buffer's path
        assert both[0]["outputs"][0]["data"] == out["outputs"][0]["data"]
        assert both[1]["status"] == 400 and "transformer Csv preprocess" in both[1]["error"]
    finally:
        lam._CACHE.clear()


def test_package_attaches_a_transformer_from_the_cli(source, tmp_path):
    from click.testing import CliRunner

    from hybridserve.cli.package import package

    args = ["--model", "mlp", "--variant", "fp32", "--output", str(tmp_path)]
    r = CliRunner().invoke(package, [*args, "--transformer", f"{source}:Csv", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{") :])
    assert doc["manifest"]["transformer"]["class"] == "Csv"
    r = CliRunner().invoke(package, [*args, "--transformer", f"{source}"])
    assert r.exit_code != 0 and "expected FILE:CLASS" in r.output


# --- the shipped text example, on a DistilBERT-shaped stand-in --------------------------


class _Logits:
    """input_ids and attention_mask in, two logits out: more tokens, more "positive"."""

    name, version, max_batch, ready = "clf", "1", 8, True
    inputs = [TensorSpec("input_ids", "INT64", (-1, 16)), TensorSpec("attention_mask", "INT64", (-1, 16))]  # fmt: skip
    outputs = [TensorSpec("logits", "FP32", (-1, 2))]

    def predict(self, inputs):
        n = inputs["attention_mask"].sum(axis=1).astype(np.float32)
        return {"logits": np.stack([8.0 - n, n - 8.0], axis=1)}


def test_the_text_example_tokenizes_and_labels():
    from predictors.transformers.text_classifier import TextClassifier

    model = _Logits()
    plane = DataPlane([TransformedModel(model, TextClassifier(model.inputs, model.outputs))])
    texts = ["short", "a much longer review, with many words in it: twelve or more!"]
    resp = call(plane, "clf", {"text": np.array(texts, dtype=object)})
    label, score = (o.data for o in resp.outputs)
    assert label.tolist() == [b"negative", b"positive"]
    assert np.all((score > 0.5) & (score <= 1.0))
    ids, mask = encode(texts, 16)
    assert ids.shape == (2, 16) and ids[0, 0] == CLS and ids[0, 2] == SEP and ids[0, 3] == PAD
    assert mask[1].sum() == 16  # cut to the sequence length
    assert encode(texts, 16)[0].tolist() == ids.tolist()  # deterministic (no hash())
    with pytest.raises(V2Error, match="UnicodeDecodeError"):
        call(plane, "clf", {"text": np.array([b"\xff"], dtype=object)})
