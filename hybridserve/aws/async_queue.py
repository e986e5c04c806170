"""The async-inference core's queue, store and notifier on AWS: SQS, S3 and SNS behind the
`JobQueue`, `ObjectStore` and `Notifier` interfaces of hybridserve.asyncjobs, so the workers
and the submit path run unchanged on `LocalQueue`/`LocalStore` locally and on these on AWS.

SQS gives the semantics `LocalQueue` models (visibility timeout, receive count, a redrive
policy to the dead-letter queue; see aws/async_resources.py for the queues themselves). S3's
conditional write (`If-None-Match: *`) is what makes a job's result write-once, so of two
workers that ran the same job exactly one result stays.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from botocore.exceptions import ClientError

from hybridserve.asyncjobs.queue import Message
from hybridserve.asyncjobs.store import InputError
from hybridserve.aws.shared import error_code, http_status

log = logging.getLogger("hybridserve.aws.async")

MAX_BATCH = 10  # SQS's ReceiveMessage returns at most 10 messages
MAX_VISIBILITY_S = 43200  # and hides one for at most 12 hours
MAX_WAIT_S = 20  # its long poll waits at most 20 s
MAX_ERROR_CHARS = 4096  # the dead-letter message's `error` attribute, cut to this
CONFLICT_RETRIES = 3  # S3's 409 ConditionalRequestConflict: a racing write, try again
# what SQS accepts in a message (anything else fails the send with InvalidMessageContents)
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class SqsQueue:
    """`JobQueue` on an SQS standard queue and its dead-letter queue.

    `depth()`'s oldest-message age is always 0.0: SQS reports it only as the CloudWatch metric
    ApproximateAgeOfOldestMessage (minute granularity, minutes late), never as a queue
    attribute (GetQueueAttributes refuses the name, on AWS and on moto), so the planner sees
    an age of 0 on AWS until that metric is read in. `wait_s` > 0 long-polls (fewer empty
    receives, and every SQS server is asked, where a short poll samples some)."""

    def __init__(
        self, sqs: Any, queue_url: str, dlq_url: str, max_receives: int, *, wait_s: int = 0
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        self.max_receives = max_receives  # the queue's RedrivePolicy maxReceiveCount
        self.wait_s = max(0, min(MAX_WAIT_S, int(wait_s)))

    def send(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)

    def receive(self, max_messages: int, visibility_s: float) -> list[Message]:
        """Up to `max_messages` (at most 10), hidden for `visibility_s` (rounded up to whole
        seconds, at most 12 hours)."""
        resp = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(MAX_BATCH, int(max_messages))),
            VisibilityTimeout=max(0, min(MAX_VISIBILITY_S, math.ceil(visibility_s))),
            WaitTimeSeconds=self.wait_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        out = []
        for m in resp.get("Messages", []):
            attrs = m.get("Attributes", {})
            out.append(
                Message(
                    body=m["Body"],
                    receipt=m["ReceiptHandle"],
                    receives=int(attrs.get("ApproximateReceiveCount", 1)),
                    sent_at=int(attrs.get("SentTimestamp", 0)) / 1000.0,
                )
            )
        return out

    def delete(self, receipt: str) -> None:
        """Delete a received message. A stale receipt (the message was received again since)
        is a no-op, as on `LocalQueue`: SQS accepts it without deleting, or refuses it as
        ReceiptHandleIsInvalid, which is logged and dropped."""
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        except ClientError as e:
            if error_code(e) != "ReceiptHandleIsInvalid":
                raise
            log.warning("async queue: delete with a stale receipt handle dropped: %s", e)

    def dead_letter(self, message: Message, error: str) -> None:
        """The body to the dead-letter queue with `error` as its `error` attribute, then the
        original deleted. Not atomic: a worker killed between the two leaves the message to
        come back (and be dead-lettered again), never lost."""
        text = _NOT_SQS_TEXT.sub("?", error)[:MAX_ERROR_CHARS] or "unknown error"
        self.sqs.send_message(
            QueueUrl=self.dlq_url,
            MessageBody=message.body,
            MessageAttributes={"error": {"DataType": "String", "StringValue": text}},
        )
        self.delete(message.receipt)

    def depth(self) -> tuple[int, int, float]:
        """(visible, in flight, 0.0): see the class's note on the oldest message's age."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attrs.get("ApproximateNumberOfMessages", 0)),
            int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
            0.0,
        )


def _missing_key(e: ClientError) -> bool:
    """The object is not there (GET: NoSuchKey; HEAD, which has no body: a bare 404). A
    missing bucket is not absence but a misconfiguration, and raises (GET says NoSuchBucket;
    HEAD cannot tell the two apart)."""
    return error_code(e) in {"NoSuchKey", "404", "NotFound"}


class S3Store:
    """`ObjectStore` on `s3://<bucket>/<prefix>/`: keys are relative to the prefix.

    Build it on `async_resources.async_prefix(<deployment prefix>)` (`<prefix>/async`): the
    workers' and router's IAM statements (`async_policy_statements`) grant exactly that."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = f"s3://{bucket}/{self.prefix + '/' if self.prefix else ''}"

    def _full(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise InputError(f"{key!r}: not a key inside the job store {self.root}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def key_of(self, uri: str) -> str:
        if not uri.startswith(self.root) or len(uri) == len(self.root):
            raise InputError(
                f"input {uri!r}: outside the job store; an input must be under {self.root}"
            )
        key = uri[len(self.root) :]
        if ".." in key.split("/"):
            raise InputError(f"input {uri!r}: '..' in it; an input must be under {self.root}")
        return key

    def get(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except ClientError as e:
            if _missing_key(e):
                return None
            raise

    def size(self, key: str) -> int | None:
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as e:
            if _missing_key(e):
                return None
            raise
        return int(head["ContentLength"])

    def _put_args(self, key: str, data: bytes) -> dict[str, Any]:
        kind = "application/json" if key.endswith(".json") else "application/octet-stream"
        return {"Bucket": self.bucket, "Key": self._full(key), "Body": data, "ContentType": kind}

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(**self._put_args(key, data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """S3's conditional write: `If-None-Match: *` fails with 412 PreconditionFailed when the
        key exists. A 409 ConditionalRequestConflict (a racing write still in progress) is
        tried again, which then answers 412 if the other write won."""
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self.s3.put_object(**self._put_args(key, data), IfNoneMatch="*")
                return True
            except ClientError as e:
                if error_code(e) == "PreconditionFailed" or http_status(e) == 412:
                    return False
                if error_code(e) != "ConditionalRequestConflict" or attempt == CONFLICT_RETRIES:
                    raise
        raise AssertionError("unreachable")


class SnsNotifier:
    """`Notifier` on an SNS topic: each job's end as a JSON message, its `status` also a
    message attribute (subscribers can filter on it)."""

    def __init__(self, sns: Any, topic_arn: str) -> None:
        self.sns = sns
        self.topic_arn = topic_arn

    def publish(self, doc: dict) -> None:
        attrs = {}
        if isinstance(doc.get("status"), str) and doc["status"]:
            attrs["status"] = {"DataType": "String", "StringValue": doc["status"]}
        self.sns.publish(TopicArn=self.topic_arn, Message=json.dumps(doc), MessageAttributes=attrs)
