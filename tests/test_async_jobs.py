"""Asynchronous inference's parts without processes: the local queue's SQS semantics, the store's
first-writer-wins write, submitting and status (every refusal naming the field), one job run to
completion exactly once by `run_job`, and the pure plan of fleet and Lambda workers."""

from __future__ import annotations

import asyncio
import json

import pytest

from hybridserve.asyncjobs.jobs import JobError, result_key, status, submit
from hybridserve.asyncjobs.plan import AsyncPolicy, AsyncPrices, AsyncView, plan
from hybridserve.asyncjobs.queue import LocalQueue
from hybridserve.asyncjobs.store import InputError, LocalStore
from hybridserve.asyncjobs.worker import FileNotifier, run_job

REQ = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_received_message_hides_for_its_visibility_and_comes_back_counted():
    clock = Clock()
    q = LocalQueue(max_receives=2, clock=clock)
    q.send("a")
    clock.t += 5
    (m,) = q.receive(10, visibility_s=30)
    assert (m.body, m.receives, q.depth()) == ("a", 1, (0, 1, 5.0))
    assert q.receive(10, 30) == []  # invisible
    clock.t += 31
    (m2,) = q.receive(10, 30)
    assert m2.receives == 2 and m2.receipt != m.receipt
    q.delete(m.receipt)  # a stale receipt (the first worker, late) deletes nothing
    assert q.depth()[1] == 1
    clock.t += 31
    assert q.receive(10, 30) == []  # received max_receives times, never done: redriven
    assert q.dead == [("a", "received 2 times, never done")] and q.depth() == (0, 0, 0.0)


def test_the_store_keeps_the_first_result_and_stays_inside_its_folder(tmp_path):
    s = LocalStore(tmp_path)
    assert s.put_if_absent("results/a.json", b"1") and not s.put_if_absent("results/a.json", b"2")
    assert s.get("results/a.json") == b"1" and s.size("results/b.json") is None
    assert s.key_of(s.uri("inputs/x")) == "inputs/x"
    with pytest.raises(InputError, match="outside the job store"):
        s.key_of("file:///etc/passwd")
    with pytest.raises(InputError, match="outside the job store"):
        s.get("../../etc/passwd")


@pytest.fixture
def jobs_env(tmp_path):
    return LocalQueue(), LocalStore(tmp_path / "store")


def test_submit_is_idempotent_by_job_id_and_status_follows_the_job(jobs_env):
    q, s = jobs_env
    body = json.dumps({**json.loads(REQ), "parameters": {"job_id": "j-1"}}).encode()
    first = submit(q, s, "m", body, deadline_s=60, now=1.0)
    again = submit(q, s, "m", body, deadline_s=60, now=2.0)
    assert (first.duplicate, again.duplicate, again.record["submitted_at"]) == (False, True, 1.0)
    assert q.depth()[0] == 1  # queued once
    assert status(s, "j-1")["status"] == "pending"
    s.put(result_key("j-1"), b"{}")
    doc = status(s, "j-1")
    assert doc["status"] == "completed" and doc["output_uri"].endswith("results/j-1.json")


@pytest.mark.parametrize(
    ("body", "status_", "match"),
    [
        (b"not json", 400, "not valid JSON"),
        (b"[1]", 400, "expected a JSON object"),
        (b"{}", 400, "'inputs' .* or 'input_uri'"),
        (json.dumps({"input_uri": "nope/missing.json"}).encode(), 400, "no such object"),
        (json.dumps({"input_uri": "file:///etc/hosts"}).encode(), 400, "outside the job store"),
        (json.dumps({"input_uri": 3}).encode(), 400, "input_uri: expected a string"),
        (json.dumps({"inputs": [], "parameters": {"job_id": "a b"}}).encode(), 400, "job_id"),
        (json.dumps({"inputs": [], "parameters": {"notify": "yes"}}).encode(), 400, "notify"),
    ],
)
def test_a_bad_submit_names_what_is_wrong(jobs_env, body, status_, match):
    q, s = jobs_env
    with pytest.raises(JobError, match=match) as e:
        submit(q, s, "m", body, deadline_s=60, now=0.0)
    assert e.value.status == status_ and q.depth()[0] == 0


def test_an_oversized_input_uri_is_a_413(jobs_env, monkeypatch):
    q, s = jobs_env
    s.put("inputs/big.json", b"{}")
    monkeypatch.setattr("hybridserve.asyncjobs.jobs.MAX_INPUT_BYTES", 1)
    with pytest.raises(JobError, match="over the 1") as e:
        submit(q, s, "m", json.dumps({"input_uri": s.uri("inputs/big.json")}).encode(),
               deadline_s=60, now=0.0)  # fmt: skip
    assert e.value.status == 413


def test_an_unknown_job_id_is_a_404(jobs_env):
    for job_id in ("nope", "../x"):
        with pytest.raises(JobError, match="unknown job id") as e:
            status(jobs_env[1], job_id)
        assert e.value.status == 404


def _run(q, s, answer, notifier=None):
    calls = []

    async def infer(model: str, body: bytes):
        calls.append(model)
        return answer

    (m,) = q.receive(1, 30)
    return asyncio.run(run_job(m, q, s, infer, notifier)), calls


def test_a_job_completes_once_and_a_duplicate_message_runs_nothing(jobs_env, tmp_path):
    q, s = jobs_env
    body = json.dumps({**json.loads(REQ), "parameters": {"job_id": "j", "notify": True}})
    submit(q, s, "m", body.encode(), deadline_s=60, now=0.0)
    q.send(q.receive(1, 0)[0].body)  # the same job's message twice (a client's racing submits)
    note = tmp_path / "notes.jsonl"
    out, calls = _run(q, s, (200, b'{"outputs":[]}'), FileNotifier(note))
    assert (out, calls, s.get(result_key("j"))) == ("completed", ["m"], b'{"outputs":[]}')
    out, calls = _run(q, s, (200, b"other"))
    assert (out, calls, s.get(result_key("j"))) == ("duplicate", [], b'{"outputs":[]}')
    assert q.depth() == (0, 0, 0.0)
    assert json.loads(note.read_text()) == {
        "id": "j", "status": "completed", "output_uri": s.uri(result_key("j"))
    }  # fmt: skip


def test_a_poison_input_goes_to_the_dead_letter_queue_at_once_with_its_error(jobs_env):
    q, s = jobs_env
    submit(q, s, "m", REQ.encode(), deadline_s=60, now=0.0)
    out, _ = _run(q, s, (400, b'{"error":"input x: expected shape [1, 4]"}'))
    assert out == "poison" and len(q.dead) == 1 and "expected shape [1, 4]" in q.dead[0][1]
    job_id = json.loads(q.dead[0][0])["id"]
    doc = status(s, job_id)
    assert doc["status"] == "failed" and doc["error"].startswith("HTTP 400: input x")


def test_a_failing_worker_is_retried_then_dead_lettered_after_max_receives(tmp_path):
    clock = Clock()
    q, s = LocalQueue(max_receives=2, clock=clock), LocalStore(tmp_path)
    submit(q, s, "m", REQ.encode(), deadline_s=60, now=0.0)
    assert _run(q, s, (503, b'{"error":"shedding"}'))[0] == "retry"
    clock.t += 31
    assert _run(q, s, (503, b'{"error":"shedding"}'))[0] == "failed"
    assert q.dead and "failed 2 times; last: shedding" in q.dead[0][1]


PRICES = AsyncPrices(fleet_usd_s=0.085 / 3600, launch_s=60.0, lambda_usd_job=2e-5)


def view(visible: int, age: float = 0.0, job_s: float = 0.05, lambda_job_s: float = 0.08, ready=0):
    return AsyncView(visible, 0, age, ready, 0, job_s, lambda_job_s)


def test_an_empty_queue_plans_no_worker_of_either_kind():
    p = plan(view(0), PRICES, AsyncPolicy())
    assert (p.fleet, p.lambda_workers) == (0, 0)


def test_a_backlog_with_time_to_spare_goes_to_the_fleet_a_short_deadline_to_lambda():
    big = plan(view(20_000), PRICES, AsyncPolicy(deadline_s=3600))  # 1000 s of work, an hour
    assert big.fleet >= 1 and big.lambda_workers == 0 and big.meets_deadline
    burst = plan(view(2_000), PRICES, AsyncPolicy(deadline_s=30))  # no time to boot
    assert burst.fleet == 0 and burst.lambda_workers >= 1 and burst.meets_deadline
    assert burst.lambda_workers * 30 >= 2_000 * 0.08  # enough concurrency to finish in time


def test_jobs_over_lambdas_15_minutes_run_only_on_the_fleet():
    p = plan(view(10, job_s=1000.0, lambda_job_s=1000.0), PRICES, AsyncPolicy(deadline_s=7200))
    assert p.lambda_workers == 0 and p.fleet >= 1
    stuck = plan(
        view(10, job_s=1000.0, lambda_job_s=1000.0), PRICES, AsyncPolicy(max_fleet=0)
    )  # nowhere to run: every worker allowed, and it says so
    assert (stuck.fleet, stuck.lambda_workers, stuck.meets_deadline) == (0, 0, False)
    assert "run only on the fleet" in stuck.reason


def test_the_example_configs_load():
    from pathlib import Path

    from hybridserve.serve import load_serve_config

    ex = Path(__file__).resolve().parents[1] / "examples"
    a = load_serve_config(ex / "serve-async.yaml").async_jobs
    assert a.enabled and a.deadline_s == 120 and a.max_fleet == 1
    names = [m.name for m in load_serve_config(ex / "serve-rollout.yaml").models]
    assert names == ["alpha", "alpha-v2", "alpha-v3"]
