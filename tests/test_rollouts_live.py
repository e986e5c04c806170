"""Rollouts served live (issue 15): a multi-model `serve` (model-server processes, a Lambda
emulator per model, the joint plan) with a model's next versions beside it, released through
`hybridserve rollout` under 40 req/s: a shadow, a canary promoted step by step, a bad canary and
a bad blue/green cut-over rolled back, and not one request lost in any of them."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from click.testing import CliRunner

from hybridserve.cli import main
from hybridserve.serve import load_serve_config
from tests.conftest import mlp_with_profile, wait_until

RPS = 40


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    pytest.importorskip("uvicorn")
    pytest.importorskip("aiobotocore")
    from hybridserve.multi_stack import MultiLocalStack
    from predictors.artifact_build import build_artifact
    from predictors.transformer import attach_transformer, parse_source

    tmp = tmp_path_factory.mktemp("rollouts")
    art, profile = mlp_with_profile(tmp)
    good = build_artifact("mlp", tmp / "v2", variant="fp32", version="2")
    bad = build_artifact("mlp", tmp / "v3", variant="fp32", version="3")
    attach_transformer(bad, *parse_source("fault"))
    cfg = load_serve_config(
        None,
        deployment="hybrid",
        forecaster="last-value",
        control_interval_s=2,
        log_dir=tmp / "logs",
        cache_dir=tmp / "cache",
        models=[
            {"name": n, "artifact": str(a), "profile": str(profile)}
            for n, a in (("alpha", art), ("alpha-v2", good), ("alpha-v3", bad))
        ],
        **{
            "router.port": 0,
            "instances.launch_delay_s": 0.5,
            "instances.max_instances": 2,
            "instances.drain_s": 0.5,
            "lambda.concurrency": 4,
        },
    )
    s = MultiLocalStack(cfg)
    s.prepare()
    s.start_background()
    yield s
    s.stop_background()


def cli(*args: str) -> dict:
    r = CliRunner().invoke(main, ["rollout", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def cli_error(*args: str) -> str:
    r = CliRunner().invoke(main, ["rollout", *args])
    assert r.exit_code == 2, r.output
    return r.output


class Load:
    """`RPS` Poisson requests for `alpha` in a thread, for `seconds`."""

    def __init__(self, stack, seconds: float, seed: int) -> None:
        from hybridserve.loadgen import bench_sync, build_payload, poisson_schedule

        body = build_payload(stack.router.models["alpha"].metadata, seed=seed)
        sched = poisson_schedule(RPS, seconds, seed=seed)
        self.result = None

        def run() -> None:
            self.result = bench_sync(stack.url, sched, body, model="alpha", timeout_s=20)

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def finish(self):
        self.thread.join(120)
        assert not self.thread.is_alive(), "the load generator did not finish"
        r = self.result
        assert r.sent == r.scheduled and r.ok == r.sent, r.errors  # nothing lost
        return r


def answered_by(stack, key: str | None = None) -> str:
    """The served name of the version that answered (the router's header during a rollout)."""
    body = stack.router.models["alpha"].metadata
    from hybridserve.loadgen import build_payload

    req = urllib.request.Request(
        f"{stack.url}/v2/models/alpha/infer", data=build_payload(body), method="POST"
    )
    req.add_header("content-type", "application/json")
    if key is not None:
        req.add_header("x-request-key", key)
    with urllib.request.urlopen(req, timeout=20) as r:
        return r.headers["x-hybridserve-model"]


def wait_phase(stack, phase: str, within_s: float) -> dict:
    url = stack.url
    wait_until(
        lambda: cli("status", "--url", url, "--model", "alpha")["phase"] == phase,
        within_s,
        f"the rollout {phase}",
    )
    return cli("status", "--url", url, "--model", "alpha")


def test_api_errors_name_what_is_wrong(stack):
    url = stack.url
    assert "unknown model 'nope'" in cli_error(
        "start", "--url", url, "--model", "nope", "--version", "2"
    )
    out = cli_error("start", "--url", url, "--model", "alpha", "--version", "9")
    assert "served_as: unknown model 'alpha-v9'" in out and "'alpha-v2'" in out
    assert "no rollout of model 'alpha'" in cli_error("promote", "--url", url, "--model", "alpha")
    req = urllib.request.Request(f"{url}/rollouts/alpha", data=b'{"steps": [2]}', method="POST")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("a bad spec was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400
        assert "rollout spec: field version" in json.loads(e.read())["error"]


def test_shadow_mirrors_without_answering_and_compares_outputs(stack):
    url = stack.url
    load = Load(stack, 8, seed=1)
    doc = cli("start", "--url", url, "--model", "alpha", "--version", "2", "--shadow", "50%")
    assert (doc["mode"], doc["phase"], doc["weight"]) == ("shadow", "shadow", 0.0)
    out = cli_error("start", "--url", url, "--model", "alpha", "--version", "3")
    assert "HTTP 409" in out and "shadow of alpha to version 2 is under way" in out
    assert answered_by(stack) == "alpha"  # the shadow never answers
    load.finish()
    doc = cli("status", "--url", url, "--model", "alpha")
    assert doc["shadow"]["compared"] > 20 and doc["shadow"]["agreement"] == 1.0  # same weights
    assert doc["samples"].get("canary/fleet", doc["samples"].get("canary/lambda"))["errors"] == 0
    doc = cli("rollback", "--url", url, "--model", "alpha")
    assert doc["phase"] == "rolled_back" and answered_by(stack) == "alpha"


def test_a_canary_is_promoted_step_by_step_with_nothing_lost(stack):
    url = stack.url
    load = Load(stack, 14, seed=2)
    cli(
        "start", "--url", url, "--model", "alpha", "--version", "2", "--steps", "25%,50%,100%",
        "--step-min-s", "1", "--bake-s", "2", "--min-requests", "20",
    )  # fmt: skip
    doc = wait_phase(stack, "promoted", 30)
    r = load.finish()
    assert [h.split(": ")[1].split(" (")[0] for h in doc["history"][1:]] == [
        "stepping at 50%",
        "baking at 100%",
        "promoted at 100%",
    ]
    assert r.ok > 400
    assert {answered_by(stack, key=f"k{i}") for i in range(5)} == {"alpha-v2"}
    # the plan saw the new version's own arrivals: it is a model of its own to the router
    m = stack.router.metrics.model_responses
    assert sum(v for (name, _, status), v in m.items() if name == "alpha-v2" and status == 200)
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    assert 'hybridserve_rollout_weight{model="alpha",phase="promoted",version="2"} 1.0' in text


@pytest.mark.parametrize("mode", ["canary", "blue-green"])
def test_a_bad_version_is_rolled_back_and_no_client_sees_its_errors(stack, mode):
    url = stack.url
    # after the canary test, alpha answers as alpha-v2: the stable version of this rollout
    assert answered_by(stack) == "alpha-v2"
    load = Load(stack, 14, seed=3)
    t0 = time.monotonic()
    flags = ["--canary", "25%"] if mode == "canary" else ["--blue-green", "--step-min-s", "1"]
    doc = cli(
        "start", "--url", url, "--model", "alpha", "--version", "3", *flags,
        "--min-requests", "20", "--bake-s", "30",
    )  # fmt: skip
    assert doc["stable"] == "alpha-v2"
    doc = wait_phase(stack, "rolled_back", 20)
    detect_s = time.monotonic() - t0
    load.finish()  # every request answered: the guard sent the failed ones to alpha-v2
    assert "error rate" in doc["history"][-1] and "Fisher" in doc["history"][-1]
    assert detect_s < 20 and answered_by(stack) == "alpha-v2"
