"""Spot interruption notices: EC2's two-minute warning, delivered to the controller in seconds.

EC2 publishes an "EC2 Spot Instance Interruption Warning" event to EventBridge two minutes
before it reclaims a spot instance. `deploy` makes a rule that forwards those events into an
SQS queue of the deployment (EventBridge cannot filter on the instance's tags, so the queue gets
every spot warning of the account and region; the controller keeps its own by instance id).
The controller long-polls the queue between steps (`NoticeQueue.poll`), tags each of its
instances the notice names as interrupted, so every router drains it on its next refresh (about
a second), and converges at once, which launches the replacement at the notice rather than at
the next control step. The simulator replays the same thing: both go through
`hybridserve.spot_interruptions.take_notices` (the backend's `notice`, then
`Controller.on_notice`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hybridserve.aws import tags as T
from hybridserve.spot_interruptions import take_notices

DETAIL_TYPE = "EC2 Spot Instance Interruption Warning"
ROLE_QUEUE = "spot-notices"
ROLE_RULE = "spot-rule"
RETENTION_S = 600  # a notice older than its two minutes is history; ten keeps a restart's worth
log = logging.getLogger("hybridserve.aws.spot")


def queue_name(deployment: str) -> str:
    return f"hybridserve-{deployment}-spot-notices"


def rule_name(deployment: str) -> str:
    return f"hybridserve-{deployment}-spot"


def event_pattern() -> dict[str, Any]:
    return {"source": ["aws.ec2"], "detail-type": [DETAIL_TYPE]}


def ensure_notice_queue(sqs: Any, events: Any, deployment: str) -> tuple[str, str]:
    """The deployment's notice queue and the rule feeding it (idempotent): (queue URL, rule
    ARN). The queue lets in only EventBridge, and only from this rule."""
    tags = T.tags_for(deployment, ROLE_QUEUE)
    url = sqs.create_queue(
        QueueName=queue_name(deployment),
        Attributes={"MessageRetentionPeriod": str(RETENTION_S), "SqsManagedSseEnabled": "true"},
        tags=tags,
    )["QueueUrl"]
    qarn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    rule = events.put_rule(
        Name=rule_name(deployment),
        EventPattern=json.dumps(event_pattern()),
        State="ENABLED",
        Description=f"hybridserve {deployment}: spot interruption warnings to {queue_name(deployment)}",
        Tags=T.tag_list(T.tags_for(deployment, ROLE_RULE)),
    )["RuleArn"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "EventBridgeSpotRule",
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": qarn,
                "Condition": {"ArnEquals": {"aws:SourceArn": rule}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    events.put_targets(Rule=rule_name(deployment), Targets=[{"Id": "notices", "Arn": qarn}])
    return url, rule


def teardown_notice_queue(sqs: Any, events: Any, deployment: str) -> list[str]:
    """Remove the rule (its target first) and the queue; what was removed (safe twice)."""
    gone = []
    name = rule_name(deployment)
    try:
        events.remove_targets(Rule=name, Ids=["notices"])
        events.delete_rule(Name=name)
        gone.append(f"rule/{name}")
    except events.exceptions.ResourceNotFoundException:
        pass
    try:
        url = sqs.get_queue_url(QueueName=queue_name(deployment))["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        return gone
    sqs.delete_queue(QueueUrl=url)
    return [*gone, f"queue/{queue_name(deployment)}"]


def notice_instance(body: str) -> str | None:
    """The instance id a queued EventBridge event warns about (None: not a spot warning)."""
    try:
        ev = json.loads(body)
        if ev.get("detail-type") != DETAIL_TYPE:
            return None
        iid = ev["detail"]["instance-id"]
        return iid if isinstance(iid, str) and iid.startswith("i-") else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def find_notice_queue(sqs: Any, deployment: str) -> NoticeQueue | None:
    """The deployment's queue (None for a deployment made before notices were handled)."""
    try:
        return NoticeQueue(sqs, sqs.get_queue_url(QueueName=queue_name(deployment))["QueueUrl"])
    except sqs.exceptions.QueueDoesNotExist:
        return None


@dataclass
class NoticeQueue:
    """Polls the deployment's notice queue; every message is deleted once read (a notice for
    another deployment's instance, or a malformed one, is logged and dropped)."""

    sqs: Any
    url: str

    def poll(self, wait_s: float) -> list[str]:
        """Instance ids warned about, waiting up to `wait_s` (at most 20, SQS's long poll)."""
        resp = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=max(0, min(20, int(wait_s))),
        )
        out, handles = [], []
        for m in resp.get("Messages", []):
            handles.append({"Id": str(len(handles)), "ReceiptHandle": m["ReceiptHandle"]})
            iid = notice_instance(m.get("Body", ""))
            if iid is None:
                log.warning("dropped a message on the notice queue that is no spot warning")
            else:
                out.append(iid)
        if handles:
            self.sqs.delete_message_batch(QueueUrl=self.url, Entries=handles)
        return out


def await_notices(
    queue: NoticeQueue | None,
    notice: Callable[[list[str]], list[str]],
    on_notice: Callable[[], list],
    wait_s: float,
    log: Callable[[str], None] = print,
) -> int:
    """Spend `wait_s` (the rest of a control interval) taking notices in: each batch for this
    fleet goes to `notice` (`AwsBackend.notice`: tag, leave out) and then `on_notice`
    (`Controller.on_notice`: replace now), through `take_notices`, as the simulator's notices
    do. Without a queue, only waits. Returns the instances noticed."""
    deadline = time.monotonic() + max(0.0, wait_s)
    n = 0
    while (left := deadline - time.monotonic()) > 0:
        if queue is None or left < 1.0:  # SQS waits whole seconds
            time.sleep(left)
            break
        ours, acts = take_notices(queue.poll(left), notice, on_notice)
        if ours:
            n += len(ours)
            launched = [a.pool for a in acts if a.kind == "launch"]
            log(f"spot notice for {', '.join(ours)}: draining; replacements {launched}")
    return n
