"""The ``hybridserve model-server`` command: its options reach the server, and a missing
artifact runtime is a clear error rather than a traceback."""

from __future__ import annotations

import pytest

from tests.model_server_helpers import LinearModel


def test_cli_model_server_wires_the_artifact_into_the_server(monkeypatch, tmp_path):
    import sys
    import types

    from click.testing import CliRunner

    pytest.importorskip("starlette")
    import predictors.server
    from hybridserve.cli.model_server import model_server

    seen = {}

    class FakeOnnx(LinearModel):
        def __init__(self, artifact, *, intra_op_num_threads=None):
            super().__init__(name=artifact["name"])
            seen["threads"] = intra_op_num_threads

    class Art(dict):  # what load_artifact returns: the manifest (no transformer), the path
        manifest: dict = {}

        @property
        def path(self):
            return self["path"]

    monkeypatch.setitem(
        sys.modules,
        "predictors.artifact",
        types.SimpleNamespace(load_artifact=lambda p: Art(name="distil", path=p)),
    )
    monkeypatch.setitem(
        sys.modules, "predictors.onnx_model", types.SimpleNamespace(OnnxModel=FakeOnnx)
    )
    monkeypatch.setattr(
        predictors.server, "serve", lambda models, **kw: seen.update(models=models, **kw)
    )
    args = ["--artifact", str(tmp_path), "--port", "8123", "--max-batch", "4", "--threads", "3"]
    r = CliRunner().invoke(model_server, args)
    assert r.exit_code == 0, r.output
    assert [m.name for m in seen["models"]] == ["distil"] and seen["threads"] == 3
    assert (seen["port"], seen["max_batch"], seen["max_delay_ms"]) == (8123, 4, 5.0)


def test_cli_model_server_without_the_artifact_modules_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    from click.testing import CliRunner

    from hybridserve.cli.model_server import model_server

    monkeypatch.setitem(sys.modules, "predictors.onnx_model", None)
    r = CliRunner().invoke(model_server, ["--artifact", str(tmp_path)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "error: model-server cannot load artifacts here" in r.output
    r = CliRunner().invoke(model_server, ["--artifact", str(tmp_path), "--max-batch", "0"])
    assert r.exit_code == 2 and "--max-batch" in r.output
