"""Several models on one model server: the repository (index, load, unload, memory budget) over
real HTTP with tritonclient.http, the load footprint (`predictors.memory`), its record in the
profile and the manifest, and the `model-server --repository` options.

Two models come from the session's mlp fp32 artifact, copied under two manifest names (the
manifest is not covered by any hash). Memory figures in assertions come from footprints written
into the manifests (one test only bounds a measured growth, of a 256 MB allocation against a
64 MB budget); ordering uses events, never sleeps."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from predictors.memory import LoadFootprint, measure_load, write_footprint  # noqa: E402
from predictors.repository import ModelRepository, RepositoryError, onnx_loader  # noqa: E402
from tests.conftest import Scrape, wait_until  # noqa: E402
from tests.model_server_helpers import ServerThread  # noqa: E402

A, B = "mlp-a", "mlp-b"


def _copy_as(src: Path, dst: Path, name: str, resident_mb: float | None = None) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["name"] = name
    (dst / "manifest.json").write_text(json.dumps(m))
    if resident_mb is not None:
        write_footprint(dst, LoadFootprint(resident_mb, 0.5, "test"), threads=2, repeats=1)
    return dst


@pytest.fixture
def repo_dir(tmp_path, mlp_fp32_artifact) -> Path:
    """A repository of two mlp models, 60 MB each by their manifests."""
    root = tmp_path / "repo"
    root.mkdir()
    for n in (A, B):
        _copy_as(mlp_fp32_artifact, root / f"{n}-fp32", n, resident_mb=60.0)
    (root / "notes").mkdir()  # not an artifact: skipped
    return root


class Gate:
    """A loader that holds the load of `name` until `release`, and whose model's predict
    (after the warm-up one) waits at the gate too when `hold_predict` is set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loading = threading.Event()
        self.open = threading.Event()
        self.predicting = threading.Event()
        self.hold_predict = False
        self.loads = 0
        self._load = onnx_loader(threads=1)

    def __call__(self, path: Path):
        model = self._load(path)
        if model.name != self.name:
            return model
        self.loads += 1
        self.loading.set()
        assert self.open.wait(30), "the test never released the load"
        predict, gate = model.predict, self

        def held(inputs):
            if gate.hold_predict:
                gate.predicting.set()
                assert gate.open.wait(30)
            return predict(inputs)

        model.predict = held
        return model


def _client(server: ServerThread):
    return httpclient.InferenceServerClient(url=server.url, network_timeout=30.0)


def _infer(client, name: str, seed: int = 0) -> np.ndarray:
    meta = client.get_model_metadata(name)
    spec = meta["inputs"][0]
    x = np.random.default_rng(seed).standard_normal((2, *spec["shape"][1:])).astype(np.float32)
    inp = httpclient.InferInput(spec["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer(name, [inp])
    return res.as_numpy(meta["outputs"][0]["name"])


def _in_thread(server: ServerThread, call, out: dict, key: str) -> threading.Thread:
    """Run `call(client)` in a thread with its own client (tritonclient's gevent connections
    belong to the thread that made them); its result lands in out[key]."""

    def run() -> None:
        c = _client(server)
        try:
            out[key] = call(c)
        finally:
            c.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _states(client) -> dict[str, str]:
    return {m["name"]: m["state"] for m in client.get_model_repository_index()}


def _serve(repo: ModelRepository) -> ServerThread:
    from predictors.server import create_app

    return ServerThread(create_app(repository=repo, max_batch=8, max_delay_ms=1))


def _error(fn, *args) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as e:
        fn(*args)
    return e.value


# ----------------------------------------------------------------------------- the routes


def test_index_load_infer_unload_and_404_after(repo_dir):
    repo = ModelRepository(repo_dir, memory_mb=1000, threads=1)
    with _serve(repo) as s:
        c = _client(s)
        assert c.is_server_live() and c.is_server_ready()  # empty: live and ready
        assert "model_repository" in c.get_server_metadata()["extensions"]
        index = c.get_model_repository_index()
        assert [(m["name"], m["version"], m["state"]) for m in index] == [
            (A, "1", "UNAVAILABLE"),
            (B, "1", "UNAVAILABLE"),
        ]
        assert not c.is_model_ready(A)

        c.load_model(A)
        c.load_model(A)  # loading a loaded model is a no-op
        assert _states(c) == {A: "READY", B: "UNAVAILABLE"}
        status, _, body = s.request("POST", "/v2/repository/index", b'{"ready": true}')
        assert status == 200 and [m["name"] for m in json.loads(body)] == [A]
        assert c.is_model_ready(A) and not c.is_model_ready(B) and c.is_server_ready()
        y = _infer(c, A)
        assert y.shape[0] == 2 and np.all(np.isfinite(y))

        # B is in the repository but not loaded: 404 naming it and what is loaded
        e = _error(_infer, c, B)
        assert e.status() == "404"
        assert f"model '{B}' not found on this server; loaded: {A}" in e.message()
        assert f"/v2/repository/models/{B}/load" in e.message()

        c.unload_model(A)
        c.unload_model(A)  # unloading an unloaded model is a no-op
        assert _states(c) == {A: "UNAVAILABLE", B: "UNAVAILABLE"}
        assert c.get_model_repository_index()[0]["reason"] == "unloaded"
        assert not c.is_model_ready(A) and c.is_server_ready()
        for method, path in [
            ("POST", f"/v2/models/{A}/infer"),
            ("GET", f"/v2/models/{A}"),
            ("GET", f"/v2/models/{A}/ready"),
        ]:
            status, _, body = s.request(method, path, b"{}" if method == "POST" else None)
            assert status == 404, (path, body)
            assert "not found on this server; loaded: none" in json.loads(body)["error"]
        c.load_model(A)  # and back
        assert _infer(c, A).shape[0] == 2
        c.close()


def test_over_memory_load_is_refused_with_the_figures(repo_dir):
    repo = ModelRepository(repo_dir, memory_mb=100, threads=1)
    with _serve(repo) as s:
        c = _client(s)
        c.load_model(A)
        e = _error(c.load_model, B)
        assert e.status() == "409"
        msg = e.message()
        for part in (
            f"model '{B}' needs 60.0 MB resident (its manifest's footprint)",
            "40.0 MB free of the 100.0 MB memory budget",
            f"loaded: {A} 60.0 MB",
        ):
            assert part in msg, msg
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert index[B]["state"] == "UNAVAILABLE" and "needs 60.0 MB" in index[B]["reason"]
        assert _infer(c, A).shape[0] == 2  # A still serves

        scrape = Scrape(s.request("GET", "/metrics")[2])
        assert scrape.value("hybridserve_models_loaded") == 1
        assert scrape.value("hybridserve_model_resident_mb", model=A) == 60.0
        assert scrape.value("hybridserve_memory_budget_mb") == 100.0
        assert scrape.value("hybridserve_model_load_seconds_count", model=A) == 1
        assert scrape.value("hybridserve_model_loads_total", model=B, result="refused") == 1
        assert scrape.value("hybridserve_requests_total", model=A, code="200") >= 1

        c.unload_model(A)
        c.load_model(B)  # room now
        assert _states(c) == {A: "UNAVAILABLE", B: "READY"}
        c.close()


def test_a_model_without_footprint_is_checked_by_its_size(tmp_path, mlp_fp32_artifact):
    root = tmp_path / "repo"
    root.mkdir()
    _copy_as(mlp_fp32_artifact, root / "a", A)
    onnx_mb = json.loads((root / "a" / "manifest.json").read_text())["model"]["bytes"] / 2**20
    repo = ModelRepository(root, memory_mb=onnx_mb / 2, threads=1)
    with pytest.raises(RepositoryError, match="at least its uncompressed ONNX size"):
        repo.load_now(A)
    # after the load, what the process grew by counts, at least the ONNX size
    repo = ModelRepository(root, memory_mb=1000, threads=1)
    repo.load_now(A)
    x = repo.loaded[A]
    assert x.source == "measured at load" and x.resident_mb >= onnx_mb and x.load_s > 0


def test_a_load_that_grows_past_the_budget_is_dropped(tmp_path, mlp_fp32_artifact):
    root = tmp_path / "repo"
    root.mkdir()
    _copy_as(mlp_fp32_artifact, root / "a", A)  # no footprint: measured at load
    load = onnx_loader(threads=1)

    def heavy(path: Path):
        model = load(path)
        model.ballast = np.ones(256 * 2**20, np.uint8)  # 256 MB, every page touched
        return model

    repo = ModelRepository(root, memory_mb=64, threads=1, loader=heavy)
    with _serve(repo) as s:
        c = _client(s)
        e = _error(c.load_model, A)
        assert e.status() == "409" and "(measured at load)" in e.message()
        assert "of the 64.0 MB memory budget; loaded: nothing" in e.message()
        assert _states(c) == {A: "UNAVAILABLE"} and not repo.loaded
        c.close()


def test_unknown_names_get_404_listing_the_repository(repo_dir):
    with _serve(ModelRepository(repo_dir, memory_mb=1000, threads=1)) as s:
        c = _client(s)
        for fn in (c.load_model, c.unload_model):
            e = _error(fn, "nope")
            assert e.status() == "404"
            assert f"model 'nope' is not in the model repository {repo_dir}" in e.message()
            assert f"it holds: {A}, {B}" in e.message()
        e = _error(c.get_model_metadata, "nope")
        assert e.status() == "404" and "not found on this server" in e.message()
        status, _, body = s.request(
            "POST", f"/v2/repository/models/{A}/load", b'{"parameters": {"config": "{}"}}'
        )
        assert status == 400 and "not supported" in json.loads(body)["error"]
        status, _, body = s.request("POST", "/v2/repository/index", b"[1]")
        assert status == 400 and "JSON object" in json.loads(body)["error"]
        c.close()


def test_a_model_serves_while_another_loads(repo_dir):
    gate = Gate(B)
    repo = ModelRepository(repo_dir, memory_mb=1000, threads=1, loader=gate)
    repo.load_now(A)
    with _serve(repo) as s:
        c = _client(s)
        done: dict[str, object] = {}
        t = _in_thread(s, lambda c2: c2.load_model(B), done, "load")
        try:
            assert gate.loading.wait(30)
            assert _states(c)[B] == "LOADING" and c.is_server_ready()
            for seed in range(3):
                assert _infer(c, A, seed).shape[0] == 2
            e = _error(_infer, c, B)
            assert e.status() == "404" and f"model '{B}' is loading" in e.message()
            assert _states(c)[B] == "LOADING" and not done  # B's load is still held
        finally:
            gate.open.set()
        t.join(30)
        assert done == {"load": None} and _states(c) == {A: "READY", B: "READY"}
        assert _infer(c, B).shape[0] == 2
        c.close()


def test_loads_of_one_model_are_serialized(repo_dir):
    gate = Gate(B)
    repo = ModelRepository(repo_dir, memory_mb=1000, threads=1, loader=gate)
    with _serve(repo) as s:
        done: dict[str, object] = {}
        threads = [_in_thread(s, lambda c: c.load_model(B), done, str(i)) for i in range(3)]
        try:
            assert gate.loading.wait(30)
        finally:
            gate.open.set()
        for t in threads:
            t.join(30)
        assert done == {"0": None, "1": None, "2": None}
        assert gate.loads == 1 and repo.load_results == {(B, "loaded"): 1}
        c = _client(s)
        assert _states(c)[B] == "READY"
        c.close()


def test_unload_waits_for_accepted_requests(repo_dir):
    gate = Gate(A)
    gate.open.set()  # the load itself passes
    repo = ModelRepository(repo_dir, memory_mb=1000, threads=1, loader=gate)
    repo.load_now(A)
    gate.open.clear()
    gate.hold_predict = True
    with _serve(repo) as s:
        c3 = _client(s)
        results: dict[str, object] = {}
        infer = _in_thread(s, lambda c: _infer(c, A), results, "y")
        unload = None
        try:
            assert gate.predicting.wait(30)  # the request is in a batch
            unload = _in_thread(s, lambda c: c.unload_model(A), results, "u")
            wait_until(lambda: _states(c3)[A] == "UNLOADING", what="the unload to start")
            status, _, body = s.request("POST", f"/v2/models/{A}/infer", b"{}")
            assert status == 404 and "is unloading" in json.loads(body)["error"]
            assert "u" not in results  # still waiting for the request in flight
        finally:
            gate.open.set()
        infer.join(30)
        assert unload is not None
        unload.join(30)
        assert results["y"].shape[0] == 2 and results["u"] is None
        assert _states(c3)[A] == "UNAVAILABLE"
        c3.close()


def test_a_single_artifact_server_has_a_fixed_index(mlp_fp32_artifact):
    from predictors.onnx_model import OnnxModel
    from predictors.server import create_app

    model = OnnxModel(mlp_fp32_artifact, intra_op_num_threads=1)
    with ServerThread(create_app([model])) as s:
        c = _client(s)
        assert c.get_model_repository_index() == [
            {"name": "mlp", "version": "1", "state": "READY", "reason": ""}
        ]
        e = _error(c.load_model, "mlp")
        assert e.status() == "400" and "no model repository" in e.message()
        c.close()


# ----------------------------------------------------------------------------- footprint


def test_measure_load_of_the_mlp_artifact(mlp_fp32_artifact):
    from predictors.isa import cpu_isa

    fp = measure_load(mlp_fp32_artifact, threads=1, repeats=1)
    assert fp.resident_mb > 0 and fp.load_s > 0 and fp.isa == cpu_isa().isa


def test_profile_records_the_footprint_in_profile_and_manifest(tmp_path, mlp_fp32_artifact):
    import yaml
    from click.testing import CliRunner

    from hybridserve.catalog import ModelProfile
    from hybridserve.cli.profile import profile
    from hybridserve.config import default_profile, load_scenario
    from predictors.artifact import load_artifact, verify_files

    art = shutil.copytree(mlp_fp32_artifact, tmp_path / "mlp-fp32")
    out = tmp_path / "profile.yaml"
    args = ["--artifact", str(art), "--batch-sizes", "1", "--repeats", "2", "--threads", "1"]
    r = CliRunner().invoke(profile, [*args, "--footprint-repeats", "1", "--output", str(out)])
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(out.read_text())
    fp = doc["footprint"]
    assert set(fp) == {"resident_mb", "load_s", "isa"} and fp["resident_mb"] > 0
    manifest = verify_files(art)  # the hashes still hold
    assert manifest["footprint"]["resident_mb"] == fp["resident_mb"]
    assert manifest["footprint"]["threads"] == 1
    load_artifact(art, extract_dir=tmp_path / "x")
    assert load_scenario(model=doc).model.footprint.resident_mb == fp["resident_mb"]
    assert default_profile().footprint is None  # profiles without it still validate
    bad = {**doc, "footprint": {**fp, "resident_mb": 0}}
    with pytest.raises(ValueError, match="resident_mb"):
        ModelProfile.model_validate({**bad, "lambda": {"cold_start_s": 1, "invoke_overhead_ms": 1}})


# ----------------------------------------------------------------------------- the CLI


def _cli(*args: str):
    from click.testing import CliRunner

    from hybridserve.cli.model_server import model_server

    return CliRunner().invoke(model_server, list(args))


def test_cli_serves_a_repository_with_models_loaded(monkeypatch, repo_dir):
    import predictors.server

    seen: dict = {}
    monkeypatch.setattr(predictors.server, "serve", lambda *a, **kw: seen.update(kw))
    r = _cli("--repository", str(repo_dir), "--load", A, "--memory-mb", "500", "--threads", "1")
    assert r.exit_code == 0, r.output
    repo = seen["repository"]
    assert list(repo.loaded) == [A] and repo.memory_mb == 500 and seen["max_batch"] == 8
    assert f"loaded: {A} 60.0 MB" in r.output


def test_cli_repository_errors_name_the_path_or_field(tmp_path, repo_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    art = repo_dir / f"{A}-fp32"
    cases = [
        (["--repository", str(empty)], "the repository holds no artifact"),
        (["--repository", str(tmp_path / "missing")], "directory not found"),
        (["--repository", str(art)], "this is an artifact, not a repository"),
        (["--repository", str(repo_dir), "--load", "nope"], f"it holds: {A}, {B}"),
        (
            ["--repository", str(repo_dir), "--load", A, "--load", B, "--memory-mb", "100"],
            f"120.0 MB resident ({A} 60.0 MB, {B} 60.0 MB",
        ),
        (["--repository", str(repo_dir), "--memory-mb", "0"], "--memory-mb"),
        (["--artifact", str(art), "--load", A], "--load and --memory-mb need --repository"),
        (["--artifact", str(art), "--repository", str(repo_dir)], "not both"),
        ([], "give --artifact DIR (one model) or --repository DIR"),
    ]
    for args, want in cases:
        r = _cli(*args)
        assert r.exit_code == 2 and "Traceback" not in r.output, (args, r.output)
        assert want in r.output, (args, r.output)


def test_duplicate_model_names_in_a_repository_are_an_error(tmp_path, mlp_fp32_artifact):
    root = tmp_path / "repo"
    root.mkdir()
    _copy_as(mlp_fp32_artifact, root / "one", A)
    _copy_as(mlp_fp32_artifact, root / "two", A)
    with pytest.raises(RepositoryError, match=f"two artifacts are named '{A}'"):
        ModelRepository(root, memory_mb=100)


# ----------------------------------------------------------------------------- the index


@pytest.fixture
def indexed(tmp_path, mlp_fp32_artifact) -> Path:
    """A repository whose repository.yaml serves the mlp as `chat` (variants fp32 and fast, two
    artifacts of one manifest name) and as `other`: names the deployment gives, not manifests'."""
    arts = tmp_path / "arts"
    arts.mkdir()
    fp32 = _copy_as(mlp_fp32_artifact, arts / "fp32", "mlp", resident_mb=60.0)
    fast = _copy_as(mlp_fp32_artifact, arts / "fast", "mlp", resident_mb=30.0)
    root = tmp_path / "repo"
    root.mkdir()
    (root / "repository.yaml").write_text(
        f"models:\n  chat:\n    fp32: ../arts/{fp32.name}\n    fast: {fast}\n"
        f"  other: ../arts/{fp32.name}\n"
    )
    return root


def test_an_index_serves_its_names_and_loads_the_variant_asked_for(indexed):
    repo = ModelRepository(indexed, memory_mb=1000, threads=1)
    assert repo.names() == ["chat", "other"] and list(repo.variants["chat"]) == ["fp32", "fast"]
    with _serve(repo) as s:
        c = _client(s)
        c.load_model("chat")  # no variant: the first listed
        assert c.get_model_metadata("chat")["versions"] == ["fp32"]
        assert _infer(c, "chat").shape[0] == 2
        assert repo.used_mb == 60.0
        # another variant while one is loaded: 409 saying so; unload, then load it
        status, _, body = s.request(
            "POST", "/v2/repository/models/chat/load", b'{"parameters": {"variant": "fast"}}'
        )
        assert status == 409 and "loaded as variant 'fp32'" in json.loads(body)["error"]
        status, _, _ = s.request(  # the loaded variant, named: a no-op
            "POST", "/v2/repository/models/chat/load", b'{"parameters": {"variant": "fp32"}}'
        )
        assert status == 200
        c.unload_model("chat")
        status, _, _ = s.request(
            "POST", "/v2/repository/models/chat/load", b'{"parameters": {"variant": "fast"}}'
        )
        assert status == 200 and c.get_model_metadata("chat")["versions"] == ["fast"]
        assert repo.used_mb == 30.0
        c.load_model("other")  # the same artifact under a second name, beside it
        assert {m["name"]: m["version"] for m in c.get_model_repository_index()} == {
            "chat": "fast",
            "other": "fp32",
        }
        assert _infer(c, "other").shape[0] == 2
        for body, code, want in [
            (b'{"parameters": {"variant": "int4"}}', 404, "its variants: fp32, fast"),
            (b'{"parameters": {"variant": 3}}', 400, "parameters.variant must be"),
        ]:
            status, _, out = s.request("POST", "/v2/repository/models/chat/load", body)
            assert status == code and want in json.loads(out)["error"], out
        c.close()


def test_index_errors_name_the_file_and_field(tmp_path, indexed):
    idx = indexed / "repository.yaml"
    for text, want in [
        ("models: [a]\n", "expected a mapping `models:"),
        ("models:\n  chat:\n    fp32: ../nowhere\n", "models.chat.fp32: "),
        ("models:\n  'bad name': ../arts/fp32\n", "models.bad name: a model name is"),
        ("models:\n  chat: 3\n", "models.chat: expected an artifact path"),
        ("models: {a: [\n", "cannot read the index"),
    ]:
        idx.write_text(text)
        with pytest.raises(RepositoryError) as e:
            ModelRepository(indexed, memory_mb=100)
        assert str(idx) in str(e.value) and want in str(e.value), (text, e.value)


def test_cli_loads_an_indexed_variant(monkeypatch, indexed):
    import predictors.server

    seen: dict = {}
    monkeypatch.setattr(predictors.server, "serve", lambda *a, **kw: seen.update(kw))
    r = _cli("--repository", str(indexed), "--load", "chat:fast", "--load", "other")
    assert r.exit_code == 0, r.output
    repo = seen["repository"]
    assert {n: x.model.version for n, x in repo.loaded.items()} == {"chat": "fast", "other": "fp32"}
    r = _cli("--repository", str(indexed), "--load", "chat:int4")
    assert r.exit_code == 2 and "--load chat:int4: model 'chat' has no variant 'int4'" in r.output


def test_cli_loads_the_models_its_instance_is_tagged_with(monkeypatch, indexed):
    """`--load-tagged`: a shard's instance boots with the models its tags name (read from the
    metadata service, IMDSv2); without model tags, or without tags in the metadata, --load."""
    import predictors.server
    from tests.imds_double import imds_server

    seen: dict = {}
    monkeypatch.setattr(predictors.server, "serve", lambda *a, **kw: seen.update(kw))
    tags = "/latest/meta-data/tags/instance"
    paths: dict[str, str | None] = {
        tags: "hybridserve:deployment\nhybridserve:model:chat\nName",
        f"{tags}/hybridserve:model:chat": "fast",
    }
    with imds_server(paths) as imds:
        args = ["--repository", str(indexed), "--load", "other", "--load-tagged"]
        r = _cli(*args, "--imds-url", imds.url)
        assert r.exit_code == 0, r.output
        loaded = {n: x.model.version for n, x in seen["repository"].loaded.items()}
        assert loaded == {"chat": "fast"} and "shard holds chat:fast" in r.output
        paths[tags] = "hybridserve:deployment\nName"  # a static fleet's instance: --load
        r = _cli(*args, "--imds-url", imds.url)
        assert list(seen["repository"].loaded) == ["other"], r.output
        paths[tags] = None  # tags not enabled in the metadata: --load
        r = _cli(*args, "--imds-url", imds.url)
        assert list(seen["repository"].loaded) == ["other"], r.output
    r = _cli(*args)
    assert r.exit_code == 2 and "--load-tagged needs --repository and --imds-url" in r.output
