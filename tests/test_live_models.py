"""Several models served live (issue 14, item 7): `serve` with a `models:` config runs the
simulator's MultiController on the router's per-model arrivals, model-server processes load the
models the plan places, each model spills to its own Lambda function, and the fleet goes when
the load does. Two models from one mlp artifact, under two served names (a repository index)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from hybridserve.config import ConfigError
from hybridserve.serve import load_serve_config
from tests.conftest import mlp_with_profile, wait_until


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    pytest.importorskip("uvicorn")
    pytest.importorskip("aiobotocore")
    from hybridserve.multi_stack import MultiLocalStack

    tmp = tmp_path_factory.mktemp("models")
    art, profile = mlp_with_profile(tmp)
    cfg = load_serve_config(
        None,
        deployment="hybrid",
        forecaster="last-value",
        control_interval_s=2,
        log_dir=tmp / "logs",
        cache_dir=tmp / "cache",
        models=[
            {"name": "alpha", "artifact": str(art), "profile": str(profile)},
            {"name": "beta", "artifact": str(art), "profile": str(profile)},
        ],
        **{
            "router.port": 0,
            "instances.launch_delay_s": 0.5,
            "instances.max_instances": 2,
            "instances.drain_s": 0.5,
            "lambda.concurrency": 2,
        },
    )
    s = MultiLocalStack(cfg)
    s.prepare()
    s.start_background()
    yield s
    s.stop_background()


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_each_model_answers_under_its_name_and_a_cold_one_spills(stack):
    from hybridserve.loadgen import bench_sync, build_payload, poisson_schedule

    for name in ("alpha", "beta"):
        status, meta = _get(f"{stack.url}/v2/models/{name}")
        assert status == 200 and meta["name"] == name
    status, err = _get(f"{stack.url}/v2/models/gamma")
    assert status == 404 and "alpha" in err["error"] and "beta" in err["error"]
    assert stack.backend.endpoints() == []  # no load yet: no instance, beta is cold
    body = build_payload(stack.router.models["beta"].metadata, seed=0)
    r = bench_sync(stack.url, poisson_schedule(5, 1, seed=0), body, model="beta", timeout_s=30)
    assert r.ok == r.sent > 0, r.errors
    assert stack.router.metrics.model_responses.get(("beta", "lambda", 200), 0) >= r.ok
    # a version is a variant: the one beta has (on Lambda now) serves, another is a 404
    for version, want in (("fp32", 200), ("int8", 404)):
        req = urllib.request.Request(
            f"{stack.url}/v2/models/beta/versions/{version}/infer", data=body, method="POST"
        )
        req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == want
        except urllib.error.HTTPError as e:
            assert e.code == want and "has no variant 'int8'" in e.read().decode()


def test_the_plan_places_the_loaded_model_and_retires_it_after(stack):
    from hybridserve.loadgen import bench_sync, build_payload, poisson_schedule

    results: dict = {}

    def load(name: str, rps: float, seed: int) -> None:
        body = build_payload(stack.router.models[name].metadata, seed=seed)
        sched = poisson_schedule(rps, 16, seed=seed)
        results[name] = bench_sync(stack.url, sched, body, model=name, timeout_s=10)

    threads = [
        threading.Thread(target=load, args=("alpha", 80, 1)),
        threading.Thread(target=load, args=("beta", 5, 2)),
    ]
    for t in threads:
        t.start()

    def holds_alpha() -> bool:
        return any(e.models and "alpha" in e.models for e in stack.backend.endpoints())

    wait_until(holds_alpha, 16, "an instance holding alpha under 80 req/s")
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "the load generator did not finish"
    for name, r in results.items():
        assert r.sent == r.scheduled and r.error_count == 0 and r.ok == r.sent, (name, r.errors)
    m = stack.router.metrics.model_responses
    assert m.get(("alpha", "fleet", 200), 0) > 0  # served by the instance the plan placed
    d = stack.loop_.decisions
    assert any(d_.plan.shards for d_ in d) and stack.loop_.stats["step_failures"] == 0
    placed = {
        stack.served.fleet.names[m_] for d_ in d for sh in d_.plan.shards for m_, _ in sh.members
    }
    assert "alpha" in placed
    # the load is gone: the plan empties and every instance is retired
    wait_until(lambda: stack.backend.observe() == (), 40, "the fleet retired after the load")


def test_a_multi_model_config_names_bad_fields(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of model, artifact or family"):
        load_serve_config(None, models=[{"name": "a"}])
    with pytest.raises(ConfigError, match="repeated: a"):
        load_serve_config(None, models=[{"name": "a", "model": "mlp"}] * 2)
    with pytest.raises(ConfigError, match=r"models\.0\.name"):
        load_serve_config(None, models=[{"name": "bad name", "model": "mlp"}])
    with pytest.raises(ConfigError, match="accuracy_floor: only for a family"):
        load_serve_config(None, models=[{"name": "a", "model": "mlp", "accuracy_floor": 0.9}])
    from hybridserve.multi_stack import MultiLocalStack

    cfg = load_serve_config(None, deployment="reactive", models=[{"name": "a", "model": "mlp"}])
    with pytest.raises(ConfigError, match="'reactive' with several models"):
        MultiLocalStack(cfg).prepare()
    cfg = load_serve_config(None, models=[{"name": "a", "family": str(tmp_path)}])
    from hybridserve.multi_fleet import served_fleet

    with pytest.raises(ConfigError, match=r"models\.a\.family: .* has no family\.yaml"):
        served_fleet(cfg)
