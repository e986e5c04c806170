"""A deployment's asynchronous-inference resources on AWS: the job queue, its dead-letter queue
and the notification topic, made level-triggered (run it again and it converges, creating
nothing new), found again by their tags, torn down without touching another deployment's; and
the least-privilege IAM statements the workers and the submitting router need on them.

- `hybridserve-<deployment>-async`: the jobs queue (SQS standard; SSE-SQS), its RedrivePolicy
  sending a message received `max_receives` times to
- `hybridserve-<deployment>-async-dlq`: the dead-letter queue, kept 14 days (SQS's longest)
  so a poison job can be looked at; workers also move poison jobs there themselves, with the
  error (aws/async_queue.py);
- `hybridserve-<deployment>-async`: the SNS topic a job's end is published to, for clients
  that asked (`notify`).

Job inputs, records and results live in the deployment's bucket under `<prefix>/async/`
(`async_prefix`), the only objects the statements grant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from hybridserve.aws import tags as T
from hybridserve.aws.shared import Clients, error_code, service_client

ROLE_QUEUE = "async-queue"
ROLE_DLQ = "async-dead-letter-queue"
ROLE_TOPIC = "async-topic"
DLQ_RETENTION_S = 14 * 24 * 3600  # SQS keeps a message at most 14 days

SqsSns = tuple[Any, Any]  # (sqs client, sns client)


def queue_name(deployment: str) -> str:
    return f"hybridserve-{deployment}-async"


def dlq_name(deployment: str) -> str:
    return f"hybridserve-{deployment}-async-dlq"


def topic_name(deployment: str) -> str:
    return f"hybridserve-{deployment}-async"


def async_prefix(prefix: str) -> str:
    """Where the deployment's async jobs keep their objects: the `S3Store` prefix."""
    return f"{prefix.strip('/')}/async"


@dataclass(frozen=True)
class AsyncResources:
    queue_url: str
    queue_arn: str
    dlq_url: str
    dlq_arn: str
    topic_arn: str


def _sqs_sns(clients: Clients | SqsSns) -> SqsSns:
    if isinstance(clients, Clients):
        return service_client(clients, "sqs"), service_client(clients, "sns")
    sqs, sns = clients
    return sqs, sns


def _check(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: expected a whole number from {low} to {high}, got {value!r}")


def _queue_url(sqs: Any, name: str) -> str | None:
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as e:
        if error_code(e) in {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}:
            return None
        raise


def _redrive(doc: str) -> dict[str, str]:
    return {k: str(v) for k, v in json.loads(doc).items()}


def _same(key: str, have: str | None, want: str) -> bool:
    if key == "RedrivePolicy" and have:  # JSON: compared parsed, numbers as strings
        return _redrive(have) == _redrive(want)
    return have == want


def _ensure_queue(
    sqs: Any, deployment: str, name: str, role: str, attrs: dict[str, str]
) -> tuple[str, str]:
    """The queue `name` with `attrs` and the deployment's tags: created when missing, else its
    differing attributes set and its tags put back. (URL, ARN)."""
    tags = T.tags_for(deployment, role)
    url = _queue_url(sqs, name)
    if url is None:
        url = sqs.create_queue(QueueName=name, Attributes=attrs, tags=tags)["QueueUrl"]
    else:
        owner = sqs.list_queue_tags(QueueUrl=url).get("Tags", {}).get(T.DEPLOYMENT)
        if owner not in (None, deployment):
            raise RuntimeError(f"queue {name} exists, tagged for deployment {owner!r}")
        have = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        diff = {k: v for k, v in attrs.items() if not _same(k, have.get(k), v)}
        if diff:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=diff)
        sqs.tag_queue(QueueUrl=url, Tags=tags)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return url, arn["QueueArn"]


def _ensure_topic(sns: Any, deployment: str) -> str:
    tags = T.tag_list(T.tags_for(deployment, ROLE_TOPIC))
    try:  # CreateTopic is idempotent for the same name, attributes and tags
        return sns.create_topic(Name=topic_name(deployment), Tags=tags)["TopicArn"]
    except ClientError as e:
        if error_code(e) != "InvalidParameter":  # it exists with other tags: put ours back
            raise
    arn = sns.create_topic(Name=topic_name(deployment))["TopicArn"]
    sns.tag_resource(ResourceArn=arn, Tags=tags)
    return arn


def ensure_async(
    clients: Clients | SqsSns,
    deployment: str,
    *,
    visibility_s: int,
    max_receives: int,
    retention_s: int,
) -> AsyncResources:
    """The deployment's dead-letter queue, jobs queue (a job received `max_receives` times goes
    to the dead-letter queue; `visibility_s`: the default visibility timeout, which a worker's
    receive sets for itself; `retention_s`: how long a job waits before SQS drops it) and
    topic, each made or converged to that. `clients`: `Clients`, or (sqs, sns)."""
    _check("visibility_s", visibility_s, 0, 43200)
    _check("max_receives", max_receives, 1, 1000)
    _check("retention_s", retention_s, 60, DLQ_RETENTION_S)
    sqs, sns = _sqs_sns(clients)
    sse = {"SqsManagedSseEnabled": "true"}
    dlq_url, dlq_arn = _ensure_queue(
        sqs,
        deployment,
        dlq_name(deployment),
        ROLE_DLQ,
        {"MessageRetentionPeriod": str(DLQ_RETENTION_S), **sse},
    )
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}
    url, arn = _ensure_queue(
        sqs,
        deployment,
        queue_name(deployment),
        ROLE_QUEUE,
        {
            "VisibilityTimeout": str(visibility_s),
            "MessageRetentionPeriod": str(retention_s),
            "RedrivePolicy": json.dumps(redrive),
            **sse,
        },
    )
    return AsyncResources(url, arn, dlq_url, dlq_arn, _ensure_topic(sns, deployment))


def async_status(clients: Clients | SqsSns, deployment: str) -> dict[str, Any] | None:
    """`hybridserve status`'s async part: the queues' depths (None: not deployed)."""
    sqs, _ = _sqs_sns(clients)
    out: dict[str, Any] = {}
    for key, name in (("queue", queue_name(deployment)), ("dead_letter", dlq_name(deployment))):
        url = _queue_url(sqs, name)
        if url is None:
            return None
        a = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        out[key] = {
            "url": url,
            "visible": int(a.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(a.get("ApproximateNumberOfMessagesNotVisible", 0)),
        }
    return out


def _tagged_for(tags: dict[str, str], deployment: str, roles: tuple[str, ...]) -> bool:
    return tags.get(T.DEPLOYMENT) == deployment and tags.get(T.ROLE) in roles


def _missing(e: ClientError) -> bool:
    code = error_code(e)
    return "NonExistentQueue" in code or code in {"QueueDoesNotExist", "NotFound"}


def teardown_async(clients: Clients | SqsSns, deployment: str) -> list[str]:
    """Delete the deployment's async queues (the jobs queue before its dead-letter queue) and
    topic: those named for it and tagged for it, never another deployment's (whose names may
    start alike). Returns `queue/<name>` and `topic/<name>` for each deleted; safe twice."""
    sqs, sns = _sqs_sns(clients)
    stem = queue_name(deployment)
    urls = []
    for page in sqs.get_paginator("list_queues").paginate(QueueNamePrefix=stem):
        urls += page.get("QueueUrls", [])
    gone = []
    for url in sorted(urls, key=lambda u: u.endswith("-dlq")):  # the jobs queue first
        try:
            tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
            if _tagged_for(tags, deployment, (ROLE_QUEUE, ROLE_DLQ)):
                sqs.delete_queue(QueueUrl=url)
                gone.append(f"queue/{url.rsplit('/', 1)[1]}")
        except ClientError as e:
            if not _missing(e):
                raise
    for page in sns.get_paginator("list_topics").paginate():
        for t in page.get("Topics", []):
            arn = t["TopicArn"]
            if not arn.rsplit(":", 1)[1].startswith(stem):
                continue
            try:
                tags = T.as_dict(sns.list_tags_for_resource(ResourceArn=arn).get("Tags"))
            except ClientError as e:
                if not _missing(e):
                    raise
                continue
            if _tagged_for(tags, deployment, (ROLE_TOPIC,)):
                sns.delete_topic(TopicArn=arn)  # deleting a deleted topic succeeds
                gone.append(f"topic/{arn.rsplit(':', 1)[1]}")
    return gone


def async_policy_statements(
    deployment: str,
    region: str,
    account: str,
    bucket: str,
    prefix: str,
    partition: str = "aws",
) -> list[dict[str, Any]]:
    """What the async workers and the submitting router need, exact actions on exact ARNs:
    send, receive, delete, hide and count jobs on the jobs queue; send to the dead-letter
    queue (a worker moves a poison job there; nothing reads it but the operator); read and
    write the job objects under `<prefix>/async/`; publish to the topic. SSE-SQS needs no KMS
    grant.

    Not granted, and needed on AWS: S3 answers a GET or HEAD of a missing key with 403, not
    404, to a caller without s3:ListBucket on the bucket, and `S3Store` takes only a 404 for
    absence (a new job's record, a pending job's result). Whether to grant ListBucket on the
    bucket (it lists every key's name) is the deployment's call; moto checks no IAM, so the
    tests cannot tell."""
    arn = f"arn:{partition}"
    sqs = f"{arn}:sqs:{region}:{account}"
    topic = f"{arn}:sns:{region}:{account}:{topic_name(deployment)}"
    return [
        {
            "Sid": "AsyncJobQueue",
            "Effect": "Allow",
            "Action": [
                "sqs:ChangeMessageVisibility",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:ReceiveMessage",
                "sqs:SendMessage",
            ],
            "Resource": [f"{sqs}:{queue_name(deployment)}"],
        },
        {
            "Sid": "AsyncDeadLetter",
            "Effect": "Allow",
            "Action": ["sqs:SendMessage"],
            "Resource": [f"{sqs}:{dlq_name(deployment)}"],
        },
        {
            "Sid": "AsyncJobObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": [f"{arn}:s3:::{bucket}/{async_prefix(prefix)}/*"],
        },
        {
            "Sid": "AsyncNotify",
            "Effect": "Allow",
            "Action": ["sns:Publish"],
            "Resource": [topic],
        },
    ]
