"""Asynchronous inference live (issue 15): the runtime's workers on real model-server processes
(one killed mid-burst: every job still completes, exactly once), and a local `serve` with
`async_jobs.enabled` driven through `hybridserve async` and the router's HTTP endpoints."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from hybridserve.cli import main
from hybridserve.serve import load_serve_config
from tests.conftest import mlp_with_profile, wait_until

REQ = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": [0.5] * 32}]}


def _mlp_request(metadata: dict) -> dict:
    from hybridserve.loadgen import build_payload

    return json.loads(build_payload(metadata, seed=0))


def test_a_killed_fleet_instance_loses_no_job_and_runs_none_twice(mlp_fp32_artifact, tmp_path):
    from hybridserve.asyncjobs.jobs import result_key, submit
    from hybridserve.asyncjobs.plan import AsyncPolicy, AsyncPrices
    from hybridserve.asyncjobs.queue import LocalQueue
    from hybridserve.asyncjobs.runtime import AsyncRuntime
    from hybridserve.asyncjobs.store import LocalStore
    from hybridserve.backends.local import LocalBackend
    from hybridserve.config import Pool
    from predictors.artifact import artifact_metadata

    pool = Pool(instance_type="c5.large", market="on_demand", price_usd_s=0.085 / 3600,
                capacity_rps=200, latency_s=0.01, batch=8, workers=1, launch_delay_s=0)  # fmt: skip
    body = json.dumps(_mlp_request(artifact_metadata(mlp_fp32_artifact))).encode()
    q, store = LocalQueue(max_receives=3), LocalStore(tmp_path / "store")
    n = 1500
    with LocalBackend(mlp_fp32_artifact, [pool], launch_delay_s=0, drain_s=0.2) as backend:
        rt = AsyncRuntime(
            q, store, "mlp", backend=backend, pool=pool.key, invoker_factory=None,
            policy=AsyncPolicy(deadline_s=3600, max_fleet=1, max_lambda=0),
            prices=AsyncPrices(pool.price_usd_s, 1.0, 1e-5), job_s=0.005, lambda_job_s=0.01,
            lambda_usd=lambda r: 0.0, interval_s=0.2, per_instance=4, visibility_s=2.0,
        )  # fmt: skip

        async def scenario() -> None:
            for _ in range(n):
                submit(q, store, "mlp", body, deadline_s=3600, now=time.time())
            task = asyncio.get_running_loop().create_task(rt.run())
            while rt.tally.outcomes["completed"] < 100:
                await asyncio.sleep(0.01)
            (iid,) = [e.instance_id for e in backend.endpoints()]
            backend.kill(iid)  # jobs in flight on it die with it
            for _ in range(1200):
                if q.depth() == (0, 0, 0.0) and rt.workers() == 0 and not backend.endpoints():
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        asyncio.run(scenario())
        events = [kind for _, kind, _, _ in backend.events()]
    results = list((tmp_path / "store" / "results").iterdir())
    assert len(results) == n and q.dead == []
    assert rt.tally.outcomes["completed"] == n  # each job's result written once
    assert rt.tally.redelivered >= 1  # the killed instance's jobs came back and ran
    assert events.count("lost") == 1 and events.count("launch") == 2  # replaced
    assert rt.last.fleet == 0 and rt.workers() == 0  # idle: nothing left running
    assert all(store.size(result_key(p.stem)) for p in results[:5])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    pytest.importorskip("uvicorn")
    pytest.importorskip("aiobotocore")
    from hybridserve.local_stack import LocalStack

    tmp = tmp_path_factory.mktemp("async")
    art, profile = mlp_with_profile(tmp)
    cfg = load_serve_config(
        None,
        artifact=str(art),
        profile=str(profile),
        deployment="hybrid",
        forecaster="last-value",
        control_interval_s=2,
        log_dir=tmp / "logs",
        cache_dir=tmp / "cache",
        **{
            "router.port": 0,
            "router.max_body_bytes": 65536,
            "instances.launch_delay_s": 0.5,
            "instances.max_instances": 1,
            "lambda.concurrency": 2,
            "async_jobs.enabled": True,
            "async_jobs.deadline_s": 60,
            "async_jobs.max_fleet": 1,
            "async_jobs.max_lambda": 2,
            "async_jobs.interval_s": 0.5,
            "async_jobs.notify_file": str(tmp / "notes.jsonl"),
        },
    )
    s = LocalStack(cfg)
    s.prepare()
    s.start_background()
    s.tmp = tmp
    yield s
    s.stop_background()


def cli(*args: str, code: int = 0) -> str:
    r = CliRunner().invoke(main, ["async", *args])
    assert r.exit_code == code, r.output
    return r.stdout if code == 0 else r.output


def post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_job_through_the_cli_ends_with_its_result_and_a_notification(stack):
    req = stack.tmp / "req.json"
    req.write_text(json.dumps(_mlp_request(stack.router.metadata)))
    args = ["submit", "--url", stack.url, "--model", "mlp", "--input", str(req)]
    doc = json.loads(cli(*args, "--job-id", "first", "--notify", "--wait", "30"))
    assert doc["status"] == "completed" and doc["id"] == "first"
    out = json.loads(Path(doc["output_uri"][len("file://") :]).read_text())
    assert out["outputs"][0]["name"] and out["model_name"] == "mlp"
    again = json.loads(cli(*args, "--job-id", "first"))
    assert again["duplicate"] is True and again["id"] == "first"
    notes = [json.loads(x) for x in (stack.tmp / "notes.jsonl").read_text().splitlines()]
    assert notes == [{"id": "first", "status": "completed", "output_uri": doc["output_uri"]}]


def test_bad_jobs_get_clean_errors(stack):
    url = stack.url
    assert "HTTP 404: unknown job id 'nope'" in cli("status", "--url", url, "nope", code=2)
    out = cli("submit", "--url", url, "--model", "mlp", "--input-uri", "missing.json", code=2)
    assert "HTTP 400" in out and "'missing.json': no such object" in out
    code, doc = post(f"{url}/v2/models/mlp/async-infer", b'{"inputs": [' + b"0," * 40000 + b"0]}")
    assert code == 413 and "request body over 65536 bytes" in doc["error"]
    code, doc = post(f"{url}/v2/models/other/async-infer", json.dumps(REQ).encode())
    assert code == 404 and "unknown model 'other'" in doc["error"]
    # a poison input: the model refuses it, the job fails with the model's error, once
    bad = json.dumps({**REQ, "parameters": {"job_id": "poison"}}).encode()
    code, doc = post(f"{url}/v2/models/mlp/async-infer", bad)
    assert code == 202
    wait_until(
        lambda: json.loads(cli("status", "--url", url, "poison"))["status"] == "failed",
        20,
        "the poison job failed",
    )
    doc = json.loads(cli("status", "--url", url, "poison"))
    assert doc["error"].startswith("HTTP 400") and "x" in doc["error"]
    assert len(stack.async_.queue.dead) == 1


def test_a_burst_drains_and_leaves_no_worker_when_idle(stack):
    body = json.dumps(_mlp_request(stack.router.metadata)).encode()
    ids = [post(f"{stack.url}/v2/models/mlp/async-infer", body)[1]["id"] for _ in range(300)]
    rt = stack.async_.runtime

    def done() -> bool:
        return all(
            json.loads(cli("status", "--url", stack.url, i))["status"] == "completed"
            for i in ids[-5:]
        ) and stack.async_.queue.depth() == (0, 0, 0.0)

    wait_until(done, 60, "the burst drained")
    assert rt.tally.outcomes["completed"] >= 300
    assert max(row["workers"] for row in rt.tally.timeline) >= 1
    wait_until(lambda: rt.workers() == 0 and rt.last.fleet == 0, 20, "no worker when idle")
