"""`hybridserve bench --model-mix`: parsing, the seeded per-request draw, each request on its
model's route with its model's body (real local HTTP servers), the per-model breakdown, and the
usage errors. Behaviour only, never wall-clock times."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from hybridserve.cli.bench import bench
from hybridserve.loadgen import (
    assign_models,
    bench_sync,
    build_payload,
    draw_models,
    fetch_metadata,
    parse_model_mix,
    poisson_schedule,
)
from predictors.model import TensorSpec

pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")
pytest.importorskip("starlette")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from tests.model_server_helpers import ServerThread  # noqa: E402  (uvicorn on a free port)

MODEL_KEYS = {
    "model",
    "scheduled",
    "sent",
    "ok",
    "errors",
    "error_count",
    "offered_rps",
    "achieved_rps",
    "latency_ms",
}
#: Two models with different inputs, so a body sent to the wrong model is told apart.
SPECS = {
    "ids8": [{"name": "ids", "datatype": "INT64", "shape": [-1, 8]}],
    "vec3": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
}


def recording_app(failing: frozenset[str] = frozenset()):
    """V2 metadata for SPECS's models; each infer recorded as (model, body) and answered 200,
    or 503 for a model in ``failing``."""
    seen: list[tuple[str, bytes]] = []

    async def meta(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in SPECS:
            return JSONResponse({"error": f"no model {name}"}, status_code=404)
        return JSONResponse({"name": name, "inputs": SPECS[name]})

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        seen.append((name, await request.body()))
        if name in failing:
            return JSONResponse({"error": "overloaded"}, status_code=503)
        return JSONResponse({"model_name": name, "outputs": []})

    app = Starlette(
        routes=[
            Route("/v2/models/{name}", meta, methods=["GET"]),
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        ]
    )
    app.state.seen = seen
    return app


# ------------------------------------------------------------------------ parse and draw


def test_parse_model_mix_normalises_the_weights_in_the_given_order():
    mix = parse_model_mix(" b = 3 , a=1")
    assert list(mix) == ["b", "a"] and mix == pytest.approx({"b": 0.75, "a": 0.25})
    assert parse_model_mix("distilbert-int8=2") == {"distilbert-int8": 1.0}
    assert parse_model_mix("x.v1=0.7,y_2=0.3") == pytest.approx({"x.v1": 0.7, "y_2": 0.3})


def test_the_draw_is_seeded():
    w = {"a": 0.5, "b": 0.3, "c": 0.2}
    one, again = assign_models(w, 3000, seed=7), assign_models(w, 3000, seed=7)
    assert np.array_equal(one, again)
    other = assign_models(w, 3000, seed=8)
    assert not np.array_equal(one, other)
    assert draw_models(w, 3000, seed=7) == [list(w)[k] for k in one.tolist()]
    # a prefix of a longer draw is the shorter draw: the count does not reshuffle the models
    assert np.array_equal(assign_models(w, 100, seed=7), one[:100])


def test_the_draw_follows_the_weights():
    w = {"a": 0.7, "b": 0.2, "c": 0.1}
    n = 5000
    counts = np.bincount(assign_models(w, n, seed=3), minlength=3)
    for k, p in enumerate(w.values()):
        assert abs(counts[k] / n - p) < 4 * np.sqrt(p * (1 - p) / n)  # 4 sigma


# ----------------------------------------------------------------------------- the run


def test_each_request_goes_to_its_models_route_with_its_models_body():
    app = recording_app(failing=frozenset({"vec3"}))
    with ServerThread(app) as s:
        bodies = {m: build_payload(fetch_metadata(s.url, m), seed=0) for m in SPECS}
        schedule = poisson_schedule(150, 1.0, seed=4)
        models = draw_models({"ids8": 0.6, "vec3": 0.4}, schedule.size, seed=4)
        r = bench_sync(s.url, schedule, b"", models=models, bodies=bodies, duration_s=1.0)
    seen = app.state.seen
    assert len(seen) == schedule.size == r.sent
    assert all(body == bodies[name] for name, body in seen)
    assert Counter(name for name, _ in seen) == Counter(models)
    counts = Counter(models)
    assert r.model == "ids8,vec3" and [m["model"] for m in r.models] == ["ids8", "vec3"]
    ids8, vec3 = r.models
    assert all(set(m) == MODEL_KEYS for m in r.models)
    assert ids8["sent"] == ids8["ok"] == counts["ids8"] and ids8["error_count"] == 0
    assert ids8["latency_ms"]["p50"] is not None and ids8["latency_ms"]["p99"] is not None
    assert vec3["sent"] == counts["vec3"] and vec3["ok"] == 0
    assert vec3["errors"] == {"http_503": counts["vec3"]} == r.errors
    assert vec3["latency_ms"]["p50"] is None  # no OK answer: no percentile
    assert ids8["sent"] + vec3["sent"] == r.sent and ids8["ok"] == r.ok
    assert r.samples is not None and np.bincount(r.samples["model"]).tolist() == [
        counts["ids8"],
        counts["vec3"],
    ]
    d = r.to_dict()
    assert [m["model"] for m in d["models"]] == ["ids8", "vec3"]
    json.dumps(d)


def test_a_model_without_a_body_of_its_own_gets_the_shared_body_and_unused_ones_report_zero():
    app = recording_app()
    with ServerThread(app) as s:
        schedule = np.linspace(0.0, 0.2, 12, endpoint=False)
        models = ["ids8", "vec3"] * 6
        r = bench_sync(
            s.url,
            schedule,
            b"shared",
            models=models,
            bodies={"idle": b"never", "ids8": b"own"},
            duration_s=0.2,
        )
    assert sorted(app.state.seen) == sorted([("ids8", b"own")] * 6 + [("vec3", b"shared")] * 6)
    assert [(m["model"], m["sent"]) for m in r.models] == [("idle", 0), ("ids8", 6), ("vec3", 6)]


def test_a_mix_against_the_v2_model_server_with_two_models():
    """The project's server decodes each body against its model's declared inputs (a body
    built for the other model would be a 400), so every request OK means every body matched."""
    from predictors.server import create_app

    class Tiny:
        version, platform, max_batch, ready = "1", "numpy", 64, True
        outputs = [TensorSpec("y", "FP32", (-1,))]

        def __init__(self, name: str, spec: TensorSpec):
            self.name, self.inputs = name, [spec]

        def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            x = next(iter(inputs.values()))
            return {"y": x.reshape(x.shape[0], -1).sum(axis=1).astype(np.float32)}

    served = [
        Tiny("ids8", TensorSpec("ids", "INT64", (-1, 8))),
        Tiny("vec3", TensorSpec("x", "FP32", (-1, 3))),
    ]
    with ServerThread(create_app(served, max_batch=8, max_delay_ms=1)) as s:
        bodies = {m: build_payload(fetch_metadata(s.url, m), seed=0) for m in SPECS}
        wrong = s.request("POST", "/v2/models/vec3/infer", bodies["ids8"])
        schedule = poisson_schedule(100, 1.0, seed=1)
        models = draw_models({"ids8": 0.5, "vec3": 0.5}, schedule.size, seed=1)
        r = bench_sync(s.url, schedule, b"", models=models, bodies=bodies, duration_s=1.0)
    assert wrong[0] == 400
    assert r.ok == r.sent == schedule.size and r.errors == {}
    assert [m["ok"] for m in r.models] == [models.count("ids8"), models.count("vec3")]


def test_models_must_name_every_scheduled_request():
    with pytest.raises(ValueError, match="models has 2 names for a schedule of 3"):
        bench_sync("127.0.0.1:9", np.array([0.0, 0.1, 0.2]), b"", models=["a", "b"])


# -------------------------------------------------------------------------------- CLI


def _cli_mix(url: str, *extra: str) -> dict:
    args = ["--url", url, "--model-mix", "ids8=0.7,vec3=0.3", "--qps", "60", "--duration", "1"]
    res = CliRunner().invoke(bench, [*args, "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_cli_model_mix_json_text_and_the_seed():
    app = recording_app()
    with ServerThread(app) as s:
        doc = _cli_mix(s.url, "--seed", "5")
        seen = list(app.state.seen)
        again = _cli_mix(s.url, "--seed", "5")
        human = CliRunner().invoke(
            bench,
            ["--url", s.url, "--model-mix", "ids8=1,vec3=1", "--qps", "40", "--duration", "0.5"],
        )
        bodies = {m: build_payload(fetch_metadata(s.url, m), seed=5) for m in SPECS}
    assert doc["model"] == "ids8,vec3"
    assert [m["model"] for m in doc["models"]] == ["ids8", "vec3"]
    assert all(set(m) == MODEL_KEYS for m in doc["models"])
    assert set(doc["models"][0]["latency_ms"]) == set(doc["latency_ms"])
    assert sum(m["sent"] for m in doc["models"]) == doc["sent"] == doc["ok"] == len(seen)
    assert all(body == bodies[name] for name, body in seen)  # built from each model's metadata
    counts = Counter(name for name, _ in seen)
    assert [m["sent"] for m in doc["models"]] == [counts["ids8"], counts["vec3"]]
    # the same seed: the same schedule and the same draw
    assert [m["sent"] for m in again["models"]] == [m["sent"] for m in doc["models"]]
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    assert lines[0].startswith(f"bench http://{s.url} models ids8, vec3:")
    assert [ln.split()[1] for ln in lines if ln.startswith("model ")] == ["ids8", "vec3"]


def test_cli_model_mix_with_a_payload_sends_it_to_every_model(tmp_path):
    path = tmp_path / "body.json"
    path.write_text('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}')
    app = recording_app()
    with ServerThread(app) as s:
        doc = _cli_mix(s.url, "--payload", str(path))
    assert {body for _, body in app.state.seen} == {path.read_bytes()}
    assert {name for name, _ in app.state.seen} == {"ids8", "vec3"}
    assert doc["ok"] == doc["sent"] > 0


@pytest.mark.parametrize(
    "mix, named",
    [
        ("a", "'a'"),
        ("a=0", "'a=0'"),
        ("a=-1", "'a=-1'"),
        ("a=x", "'a=x'"),
        ("=1", "'=1'"),
        ("a=1,a=2", "'a=2'"),
        ("a=inf", "'a=inf'"),
        ("a=nan", "'a=nan'"),
        ("a b=1", "'a b=1'"),
        ("-a=1", "'-a=1'"),
        ("a=1,", "''"),
        ("", "--model-mix is empty"),
    ],
)
def test_cli_bad_model_mix_is_a_usage_error_naming_the_entry(mix, named):
    res = CliRunner().invoke(
        bench, ["--url", "http://127.0.0.1:9", "--qps", "10", "--model-mix", mix]
    )
    assert res.exit_code == 2, res.output
    assert named in res.output and "expected NAME=WEIGHT" in res.output
    assert "Traceback" not in res.output


def test_cli_model_mix_with_model_is_a_usage_error():
    args = ["--url", "http://127.0.0.1:9", "--qps", "10", "--model", "m", "--model-mix", "a=1"]
    res = CliRunner().invoke(bench, args)
    assert res.exit_code == 2
    assert "--model 'm'" in res.output and "--model-mix 'a=1'" in res.output
    assert "not both" in res.output and "Traceback" not in res.output
