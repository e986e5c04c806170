"""Asynchronous inference on AWS, on moto (with the fault layer of tests/aws_faults.py): the
queues and topic made once and torn down by tags, a job submitted through SQS and S3 and run
to a completed status exactly once (a killed worker's job comes back; of two workers racing,
S3's conditional write keeps one result), poison jobs in the dead-letter queue with their
error, bad inputs refused naming the URI, and the IAM statements lint-clean.

SQS's clock (moto's, for visibility timeouts) is moved on by the test instead of slept through:
the behaviour under test is moto's own, only its time is the test's."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import warnings
from types import SimpleNamespace

import pytest

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from hybridserve.asyncjobs.jobs import JobError, result_key, status, submit  # noqa: E402
from hybridserve.asyncjobs.queue import JobQueue  # noqa: E402
from hybridserve.asyncjobs.store import ObjectStore  # noqa: E402
from hybridserve.asyncjobs.worker import run_job  # noqa: E402
from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.aws import tags as T  # noqa: E402
from hybridserve.aws.async_queue import S3Store, SnsNotifier, SqsQueue  # noqa: E402
from hybridserve.aws.async_resources import (  # noqa: E402
    ROLE_DLQ,
    ROLE_QUEUE,
    ROLE_TOPIC,
    async_policy_statements,
    async_prefix,
    ensure_async,
    teardown_async,
)
from hybridserve.aws.iam import least_privilege_problems  # noqa: E402

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
DEP = "demo"
OTHER = "demo-async"  # its names start with DEP's: teardown must go by tags, not prefixes
BUCKET = "hs-demo-artifacts"
PREFIX = "demo/artifact"
MAX_RECEIVES = 3
VISIBILITY_S = 30
REQ = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
OK = (200, b'{"outputs": []}')


def _request(job_id: str, **params) -> bytes:
    return json.dumps({**REQ, "parameters": {"job_id": job_id, **params}}).encode()


@pytest.fixture
def sqs_clock(monkeypatch):
    """Moto's SQS clock (visibility, sent timestamps), `offset_s` ahead of the wall's."""
    import moto.sqs.models as sqs_models

    real = sqs_models.unix_time_millis
    clock = SimpleNamespace(offset_s=0.0)
    monkeypatch.setattr(
        sqs_models, "unix_time_millis", lambda dt=None: real(dt) + clock.offset_s * 1000
    )
    return clock


@pytest.fixture
def env(aws, sqs_clock):
    sqs, sns = boto3.client("sqs", region_name=REGION), boto3.client("sns", region_name=REGION)
    aws.s3.create_bucket(Bucket=BUCKET)
    res = ensure_async(
        (sqs, sns), DEP, visibility_s=VISIBILITY_S, max_receives=MAX_RECEIVES, retention_s=3600
    )
    queue: JobQueue = SqsQueue(sqs, res.queue_url, res.dlq_url, MAX_RECEIVES)
    store: ObjectStore = S3Store(aws.s3, BUCKET, async_prefix(PREFIX))
    return SimpleNamespace(
        sqs=sqs, sns=sns, s3=aws.s3, res=res, queue=queue, store=store, clock=sqs_clock
    )


def _run(env, msg, infer, notifier=None) -> str:
    return asyncio.run(run_job(msg, env.queue, env.store, infer, notifier))


def _answer(code: int, body: bytes):
    async def infer(model: str, data: bytes) -> tuple[int, bytes]:
        return code, body

    return infer


def _keys(env, under: str) -> list[str]:
    pages = env.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=under)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def _dead(env) -> list[tuple[str, str | None]]:
    """(body, error attribute) of each message on the dead-letter queue."""
    got = env.sqs.receive_message(
        QueueUrl=env.res.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", [])
    out = []
    for m in got:
        attrs = m.get("MessageAttributes", {})
        out.append((m["Body"], attrs["error"]["StringValue"] if "error" in attrs else None))
    return out


# --------------------------------------------------------------------------- resources


def _queues(sqs) -> dict[str, dict[str, str]]:
    urls = sqs.list_queues().get("QueueUrls", [])
    return {u.rsplit("/", 1)[1]: sqs.list_queue_tags(QueueUrl=u).get("Tags", {}) for u in urls}


def _topics(sns) -> dict[str, dict[str, str]]:
    arns = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    return {
        a.rsplit(":", 1)[1]: T.as_dict(sns.list_tags_for_resource(ResourceArn=a)["Tags"])
        for a in arns
    }


def test_ensure_async_makes_one_tagged_set_converges_and_teardown_spares_others(aws):
    sqs, sns = boto3.client("sqs", region_name=REGION), boto3.client("sns", region_name=REGION)
    args = {"visibility_s": 30, "max_receives": 3, "retention_s": 3600}
    first = ensure_async((sqs, sns), DEP, **args)
    assert ensure_async((sqs, sns), DEP, **args) == first  # nothing new
    ensure_async(aws, OTHER, **args)  # by `Clients`, too
    assert _queues(sqs) == {
        "hybridserve-demo-async": T.tags_for(DEP, ROLE_QUEUE),
        "hybridserve-demo-async-dlq": T.tags_for(DEP, ROLE_DLQ),
        "hybridserve-demo-async-async": T.tags_for(OTHER, ROLE_QUEUE),
        "hybridserve-demo-async-async-dlq": T.tags_for(OTHER, ROLE_DLQ),
    }
    assert _topics(sns) == {
        "hybridserve-demo-async": T.tags_for(DEP, ROLE_TOPIC),
        "hybridserve-demo-async-async": T.tags_for(OTHER, ROLE_TOPIC),
    }
    attrs = sqs.get_queue_attributes(QueueUrl=first.queue_url, AttributeNames=["All"])
    attrs = attrs["Attributes"]
    assert json.loads(attrs["RedrivePolicy"]) == {
        "deadLetterTargetArn": first.dlq_arn,
        "maxReceiveCount": 3,
    }
    assert (attrs["VisibilityTimeout"], attrs["MessageRetentionPeriod"]) == ("30", "3600")
    assert attrs["SqsManagedSseEnabled"] == "true"
    dlq = sqs.get_queue_attributes(QueueUrl=first.dlq_url, AttributeNames=["All"])["Attributes"]
    assert dlq["SqsManagedSseEnabled"] == "true" and dlq["MessageRetentionPeriod"] == "1209600"

    # level-triggered: a changed setting converges on the same queues
    again = ensure_async((sqs, sns), DEP, visibility_s=60, max_receives=5, retention_s=7200)
    assert again == first and len(_queues(sqs)) == 4 and len(_topics(sns)) == 2
    attrs = sqs.get_queue_attributes(QueueUrl=first.queue_url, AttributeNames=["All"])
    attrs = attrs["Attributes"]
    assert json.loads(attrs["RedrivePolicy"])["maxReceiveCount"] == 5
    assert (attrs["VisibilityTimeout"], attrs["MessageRetentionPeriod"]) == ("60", "7200")

    assert teardown_async((sqs, sns), DEP) == [
        "queue/hybridserve-demo-async",
        "queue/hybridserve-demo-async-dlq",
        "topic/hybridserve-demo-async",
    ]
    assert sorted(_queues(sqs)) == [
        "hybridserve-demo-async-async",
        "hybridserve-demo-async-async-dlq",
    ]
    assert sorted(_topics(sns)) == ["hybridserve-demo-async-async"]
    assert teardown_async((sqs, sns), DEP) == []  # harmless twice

    # `hybridserve teardown` takes them too (listed with the spot notices)
    removed = R.teardown(aws, OTHER, region=REGION, wait_s=5, settle_s=0)
    assert sorted(removed["notices"]) == [
        "queue/hybridserve-demo-async-async",
        "queue/hybridserve-demo-async-async-dlq",
        "topic/hybridserve-demo-async-async",
    ]
    assert _queues(sqs) == {} and _topics(sns) == {}
    assert R.teardown(aws, OTHER, region=REGION, wait_s=5, settle_s=0) == {k: [] for k in R.KINDS}


def test_ensure_async_refuses_settings_sqs_would_not_take(aws):
    sqs, sns = boto3.client("sqs", region_name=REGION), boto3.client("sns", region_name=REGION)
    with pytest.raises(ValueError, match="max_receives"):
        ensure_async((sqs, sns), DEP, visibility_s=30, max_receives=0, retention_s=3600)
    with pytest.raises(ValueError, match="visibility_s"):
        ensure_async((sqs, sns), DEP, visibility_s=43201, max_receives=3, retention_s=3600)
    assert sqs.list_queues().get("QueueUrls", []) == []


# --------------------------------------------------------------------------- jobs


def _watch(env) -> str:
    """An SQS queue subscribed to the jobs topic: what a client would see notified."""
    url = env.sqs.create_queue(QueueName="watcher")["QueueUrl"]
    arn = env.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    env.sns.subscribe(
        TopicArn=env.res.topic_arn, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"]
    )
    return url


def test_a_job_goes_through_sqs_and_s3_to_completed_and_a_duplicate_queues_nothing(env):
    watch = _watch(env)
    first = submit(env.queue, env.store, "m", _request("j-1", notify=True), deadline_s=60, now=1.0)
    again = submit(env.queue, env.store, "m", _request("j-1", notify=True), deadline_s=60, now=2.0)
    assert (first.duplicate, again.duplicate, again.record) == (False, True, first.record)
    assert env.queue.depth() == (1, 0, 0.0)  # queued once
    assert status(env.store, "j-1")["status"] == "pending"

    (msg,) = env.queue.receive(10, visibility_s=VISIBILITY_S)
    assert (json.loads(msg.body)["id"], msg.receives) == ("j-1", 1)
    assert 1e9 < msg.sent_at < 1e11  # seconds since the epoch (SQS gives milliseconds)
    assert env.queue.depth() == (0, 1, 0.0)
    notifier = SnsNotifier(env.sns, env.res.topic_arn)
    assert _run(env, msg, _answer(*OK), notifier) == "completed"

    done = status(env.store, "j-1")
    out_uri = f"s3://{BUCKET}/{PREFIX}/async/results/j-1.json"
    assert (done["status"], done["output_uri"]) == ("completed", out_uri)
    assert env.store.get(result_key("j-1")) == OK[1]
    assert env.queue.depth() == (0, 0, 0.0)
    env.clock.offset_s += VISIBILITY_S + 1
    assert env.queue.receive(10, VISIBILITY_S) == []  # deleted, not merely hidden

    (note,) = env.sqs.receive_message(QueueUrl=watch)["Messages"]
    envelope = json.loads(note["Body"])
    assert json.loads(envelope["Message"]) == {
        "id": "j-1",
        "status": "completed",
        "output_uri": out_uri,
    }
    assert envelope["MessageAttributes"]["status"]["Value"] == "completed"

    # every object the job wrote is one the workers' IAM statement grants, and only those
    statements = async_policy_statements(DEP, REGION, ACCOUNT, BUCKET, PREFIX)
    objects = {st["Sid"]: st for st in statements}["AsyncJobObjects"]
    keys = _keys(env, "")
    assert keys == [
        f"{PREFIX}/async/{k}" for k in ("inputs/j-1.json", "jobs/j-1.json", "results/j-1.json")
    ]
    (pattern,) = objects["Resource"]
    assert all(fnmatch.fnmatchcase(f"arn:aws:s3:::{BUCKET}/{k}", pattern) for k in keys)
    assert not fnmatch.fnmatchcase(f"arn:aws:s3:::{BUCKET}/{PREFIX}/model.onnx", pattern)


def test_a_killed_workers_job_comes_back_and_completes_once(env):
    submit(env.queue, env.store, "m", _request("j-k"), deadline_s=60, now=1.0)
    (killed,) = env.queue.receive(1, visibility_s=1)  # its worker dies: never deleted
    assert env.queue.receive(10, VISIBILITY_S) == []  # hidden for its timeout
    assert env.queue.depth() == (0, 1, 0.0)
    env.clock.offset_s += 2  # the timeout passes

    (back,) = env.queue.receive(10, VISIBILITY_S)
    assert (back.body, back.receives) == (killed.body, 2) and back.receipt != killed.receipt
    assert _run(env, back, _answer(*OK)) == "completed"
    assert _keys(env, f"{PREFIX}/async/results/") == [f"{PREFIX}/async/results/j-k.json"]
    assert status(env.store, "j-k")["status"] == "completed"
    env.clock.offset_s += VISIBILITY_S + 1
    assert env.queue.receive(10, VISIBILITY_S) == [] and env.queue.depth() == (0, 0, 0.0)
    assert _dead(env) == []


def test_two_workers_racing_on_one_job_leave_one_result(env):
    """The first worker was slow, not dead: both pass the "result exists?" check and both run
    the model; S3's If-None-Match keeps the first result written (moto honours it)."""
    submit(env.queue, env.store, "m", _request("j-r"), deadline_s=60, now=1.0)
    (slow,) = env.queue.receive(1, visibility_s=1)
    env.clock.offset_s += 2
    (fast,) = env.queue.receive(1, visibility_s=VISIBILITY_S)
    assert fast.receives == 2

    async def race() -> list[str]:
        arrived, go, answers = [], asyncio.Event(), []

        async def infer(model: str, data: bytes) -> tuple[int, bytes]:
            arrived.append(model)
            if len(arrived) == 2:
                go.set()
            await go.wait()  # both are past the result check and running the model
            answers.append(len(answers))
            return 200, json.dumps({"outputs": [], "worker": answers[-1]}).encode()

        return list(
            await asyncio.gather(
                run_job(fast, env.queue, env.store, infer),
                run_job(slow, env.queue, env.store, infer),
            )
        )

    assert sorted(asyncio.run(race())) == ["completed", "duplicate"]
    # one of the two answers is kept, whole (the first write wins; which one comes first is
    # up to the threads the workers write from)
    assert json.loads(env.store.get(result_key("j-r")) or b"{}")["worker"] in (0, 1)
    assert _keys(env, f"{PREFIX}/async/results/") == [f"{PREFIX}/async/results/j-r.json"]
    assert env.store.put_if_absent(result_key("j-r"), b"late") is False
    assert env.queue.depth() == (0, 0, 0.0)


def test_a_poison_job_goes_to_the_dead_letter_queue_with_its_error(env):
    submit(env.queue, env.store, "m", _request("j-p"), deadline_s=60, now=1.0)
    (msg,) = env.queue.receive(10, VISIBILITY_S)
    bad = _answer(400, b'{"error": "input x: expected FP16, got FP32"}')
    assert _run(env, msg, bad) == "poison"
    why = "HTTP 400: input x: expected FP16, got FP32"
    assert _dead(env) == [(msg.body, why)]
    assert env.queue.depth() == (0, 0, 0.0)
    doc = status(env.store, "j-p")
    assert (doc["status"], doc["error"]) == ("failed", why)
    assert env.store.size(result_key("j-p")) is None


def test_a_failing_job_is_retried_up_to_max_receives_then_dead_lettered(env):
    submit(env.queue, env.store, "m", _request("j-f"), deadline_s=60, now=1.0)
    down = _answer(503, b'{"error": "model server unavailable"}')
    outcomes = []
    for _ in range(MAX_RECEIVES):
        (msg,) = env.queue.receive(10, VISIBILITY_S)
        outcomes.append((msg.receives, _run(env, msg, down)))
        env.clock.offset_s += VISIBILITY_S + 1
    assert outcomes == [(1, "retry"), (2, "retry"), (3, "failed")]
    why = "failed 3 times; last: model server unavailable"
    assert _dead(env) == [(msg.body, why)]
    assert status(env.store, "j-f")["error"] == why
    assert env.queue.receive(10, VISIBILITY_S) == []


def test_a_job_whose_workers_all_die_is_redriven_by_sqs(env):
    """No worker lives to dead-letter it: the queue's RedrivePolicy (ensure_async) does, on the
    receive after the `max_receives`-th, without an error attribute."""
    submit(env.queue, env.store, "m", _request("j-d"), deadline_s=60, now=1.0)
    for n in range(1, MAX_RECEIVES + 1):
        (msg,) = env.queue.receive(10, VISIBILITY_S)
        assert msg.receives == n
        env.clock.offset_s += VISIBILITY_S + 1
    assert env.queue.receive(10, VISIBILITY_S) == []
    assert _dead(env) == [(msg.body, None)] and env.queue.depth() == (0, 0, 0.0)


def test_inputs_by_uri_must_exist_inside_the_store(env):
    env.store.put("inputs/x.json", json.dumps(REQ).encode())
    ok = {"input_uri": env.store.uri("inputs/x.json"), "job_id": "j-u"}
    rec = submit(env.queue, env.store, "m", json.dumps(ok).encode(), deadline_s=60, now=1.0)
    assert rec.record["input_key"] == "inputs/x.json"

    root = f"s3://{BUCKET}/{PREFIX}/async/"
    missing = f"{root}inputs/nope.json"
    refused = {
        missing: "no such object",
        f"s3://other-bucket/{PREFIX}/async/inputs/x.json": root,  # another bucket
        f"s3://{BUCKET}/{PREFIX}/model.onnx": root,  # this bucket, outside the store
        f"{root}../model.onnx": root,
        f"https://{BUCKET}.s3.amazonaws.com/{PREFIX}/async/inputs/x.json": root,
    }
    for uri, names in refused.items():
        body = json.dumps({"input_uri": uri}).encode()
        with pytest.raises(JobError) as e:
            submit(env.queue, env.store, "m", body, deadline_s=60, now=1.0)
        assert e.value.status == 400
        assert names in e.value.message and uri in e.value.message
    assert env.queue.depth() == (1, 0, 0.0)  # only the good one


def test_sqs_limits_are_capped_not_refused(env):
    for i in range(12):
        env.queue.send(f"m{i}")
    got = env.queue.receive(50, visibility_s=10**6)  # SQS: at most 10, at most 12 hours
    assert len(got) == 10 and env.queue.depth() == (2, 10, 0.0)


# --------------------------------------------------------------------------- IAM


def test_policy_statements_are_least_privilege_on_exactly_the_deployments_resources(aws):
    sqs, sns = boto3.client("sqs", region_name=REGION), boto3.client("sns", region_name=REGION)
    res = ensure_async((sqs, sns), DEP, visibility_s=30, max_receives=3, retention_s=3600)
    statements = async_policy_statements(DEP, REGION, ACCOUNT, BUCKET, PREFIX)
    doc = {"Version": "2012-10-17", "Statement": statements}
    assert least_privilege_problems(doc) == []
    actions = [a for st in statements for a in st["Action"]]
    assert not any("*" in a for a in actions)
    by_sid = {st["Sid"]: st for st in statements}
    assert by_sid["AsyncJobQueue"]["Resource"] == [res.queue_arn]  # what moto made
    assert by_sid["AsyncDeadLetter"] == {
        "Sid": "AsyncDeadLetter",
        "Effect": "Allow",
        "Action": ["sqs:SendMessage"],
        "Resource": [res.dlq_arn],
    }
    assert by_sid["AsyncNotify"]["Resource"] == [res.topic_arn]
    assert by_sid["AsyncJobObjects"]["Resource"] == [f"arn:aws:s3:::{BUCKET}/{PREFIX}/async/*"]
    gov = async_policy_statements(DEP, "us-gov-west-1", ACCOUNT, BUCKET, PREFIX, "aws-us-gov")
    assert all(r.startswith("arn:aws-us-gov:") for st in gov for r in st["Resource"])

    with warnings.catch_warnings():  # parliament imports pkg_resources, deprecated
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        parliament = pytest.importorskip("parliament")
    found = parliament.analyze_policy_string(json.dumps(doc), include_community_auditors=True)
    assert [(f.issue, f.detail) for f in found.findings] == []
