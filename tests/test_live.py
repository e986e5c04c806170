"""Live mode: the control loop's inputs, the serve config, and the whole local stack end to end
(router + Controller + model-server processes + the Lambda emulator) under real load."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from hybridserve.config import ConfigError
from hybridserve.live import CappedBackend, interval_counts
from hybridserve.serve import load_serve_config
from predictors.prometheus import CONTENT_TYPE
from tests.conftest import Scrape, mlp_with_profile, wait_until


def test_interval_counts_aligns_to_the_last_second_and_pads_with_zeros():
    closed = [(100, 3), (101, 4), (103, 5)]
    np.testing.assert_array_equal(interval_counts(closed, 5), [0, 3, 4, 0, 5])
    np.testing.assert_array_equal(interval_counts(closed, 2), [0, 5])
    np.testing.assert_array_equal(interval_counts([], 3), [0, 0, 0])


class _Recorder:
    def __init__(self) -> None:
        self.targets: list[dict] = []

    def now(self) -> float:
        return 0.0

    def observe(self):
        from hybridserve.fleet import FleetView

        return FleetView()

    def converge(self, target, *, intent=None):
        self.targets.append(dict(target))
        return []


def test_capped_backend_trims_the_total_in_pool_order():
    rec = _Recorder()
    capped = CappedBackend(rec, 3)
    capped.converge({"a": 2, "b": 5})
    capped.converge({"a": 1})
    assert rec.targets == [{"a": 2, "b": 1}, {"a": 1}]
    with pytest.raises(ValueError):
        CappedBackend(rec, -1)


def test_serve_config_errors_name_the_field(tmp_path):
    p = tmp_path / "serve.yaml"
    p.write_text("deployment: hybrid\ninstances:\n  launch_delay_s: -1\n")
    with pytest.raises(ConfigError, match=r"serve.yaml: field instances.launch_delay_s"):
        load_serve_config(p)
    p.write_text("deployment: sometimes\n")
    with pytest.raises(ConfigError, match="field deployment"):
        load_serve_config(p)
    p.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_serve_config(p)
    cfg = load_serve_config(None, **{"router.port": 9000, "deployment": "reactive"})
    assert cfg.router.port == 9000 and cfg.deployment == "reactive" and cfg.model == "distilbert"
    with pytest.warns(DeprecationWarning, match="'vm-only' is deprecated"):
        old = load_serve_config(None, deployment="vm-only")  # the old name, one policy vocabulary
    assert old.deployment == "reactive"


# ------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """hybridserve serve in this process: router on a thread, real servers and emulator workers.

    The profile claims 20 ms per request (about 50 req/s per instance) so that a stepped load
    of 120 req/s needs two instances; the tiny mlp model keeps the machine idle meanwhile."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("aiobotocore")
    from hybridserve.serve import LocalStack

    tmp = tmp_path_factory.mktemp("stack")
    art, profile = mlp_with_profile(tmp)
    cfg = load_serve_config(
        None,
        artifact=art,
        profile=profile,
        deployment="hybrid",
        forecaster="last-value",
        control_interval_s=2,
        log_dir=tmp / "logs",
        **{
            "router.port": 0,
            "instances.launch_delay_s": 0.5,
            "instances.max_instances": 2,
            "instances.drain_s": 0.5,
            "lambda.concurrency": 2,
            "planner.lambda_levels": 4,  # not the default: it must reach the live planner
        },
    )
    s = LocalStack(cfg)
    s.prepare()
    s.start_background()
    yield s
    s.stop_background()


def test_stepped_load_scales_the_fleet_and_a_killed_instance_loses_nothing(stack):
    from hybridserve.loadgen import bench_sync, build_payload, poisson_schedule

    body = build_payload(stack.router.metadata, seed=0)
    backend = stack.backend
    result = {}

    def load() -> None:
        result["r"] = bench_sync(
            stack.url, poisson_schedule(120, 16, seed=1), body, model="mlp", timeout_s=10
        )

    t = threading.Thread(target=load)
    t.start()
    wait_until(lambda: len(backend.endpoints()) == 2, 14, "two ready instances under 120 req/s")
    victim = backend.endpoints()[0].instance_id
    backend.kill(victim)  # under load: its in-flight requests go to Lambda
    t.join(60)
    assert not t.is_alive(), "the load generator did not finish"
    r = result["r"]
    assert r.sent == r.scheduled and r.error_count == 0 and r.ok == r.sent, r.errors
    kinds = [(k, i) for _, k, _, i in backend.events()]
    assert ("lost", victim) in kinds
    m = stack.router.metrics
    assert m.spills > 0 and m.responses.get(("fleet", 200), 0) > 0
    # the lost instance is replaced, then load stops and the fleet is retired
    wait_until(lambda: backend.observe().totals() == {}, 40, "scale-in to zero after the load")
    assert any(k == "retire" for _, k, _, _ in backend.events())


def test_lambda_levels_reach_the_live_planner(stack):
    ctl = stack.loop_.controller
    assert stack.scenario.planner.lambda_levels == 4
    assert ctl.demand_levels == 4
    assert ctl.planner.primary.opt.lambda_levels == 4  # the exact planner's own options


def test_router_metrics_and_health_through_the_stack(stack):
    import urllib.request

    with urllib.request.urlopen(stack.url + "/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as r:
        assert r.headers["content-type"] == CONTENT_TYPE
        m = Scrape(r.read())
    for name in (
        "hybridserve_router_arrivals_total",
        "hybridserve_router_spills_total",
        "hybridserve_lambda_cold_starts_total",
        "hybridserve_cost_usd_per_hour",
    ):
        assert m.value(name) >= 0, name
    from hybridserve.attribution import CAUSES

    for cause in CAUSES:  # the cost so far by cause (hybridserve.attribution.LiveCostMeter)
        assert m.value("hybridserve_cost_usd_total", cause=cause) >= 0, cause
    assert m.type("hybridserve_router_latency_seconds") == "histogram"
    with urllib.request.urlopen(stack.url + "/v2/models/mlp", timeout=5) as r:
        assert json.loads(r.read())["name"] == "mlp"


def test_example_serve_config_loads():
    from pathlib import Path

    cfg = load_serve_config(Path(__file__).resolve().parents[1] / "examples" / "serve.yaml")
    assert cfg.deployment == "hybrid" and cfg.router.port == 8080 and cfg.lambda_.concurrency == 2


def test_spawn_listening_gives_up_on_a_silent_or_dead_child():
    """A child that never prints (a plain readline would block forever) or that exits."""
    import sys

    from hybridserve.spawn import spawn_listening

    silent = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(RuntimeError, match="silent did not start: it was silent for 0.5 s"):
        spawn_listening(silent, None, "silent", 0.5)
    with pytest.raises(RuntimeError, match="dead did not start: it exited with code 3"):
        spawn_listening([sys.executable, "-c", "raise SystemExit(3)"], None, "dead", 30)
    talks = "print('warming up'); print('listening on http://127.0.0.1:1', flush=True); input()"
    proc, url = spawn_listening([sys.executable, "-c", talks], None, "ok", 30)
    proc.kill()
    proc.wait()
    assert url == "http://127.0.0.1:1"
