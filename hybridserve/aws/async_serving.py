"""Async jobs on an AWS deployment's router (issue 15): the router's async endpoints on the
deployment's SQS queue and S3 prefix (`async_jobs.enabled`, made by `deploy`), and Lambda
workers that invoke the deployment's function, planned against the jobs' deadline.

Fleet workers are not run on AWS yet: the plan here has `max_fleet` 0, so every job runs on
Lambda (the one kind of worker the router host can start without instances of its own). Jobs
over Lambda's 15 minutes therefore wait; the local serve runs both kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybridserve.asyncjobs.front import AsyncFront
from hybridserve.asyncjobs.lambda_job import LambdaJob
from hybridserve.asyncjobs.plan import AsyncPolicy, AsyncPrices
from hybridserve.asyncjobs.runtime import AsyncRuntime
from hybridserve.aws.async_queue import S3Store, SnsNotifier, SqsQueue
from hybridserve.aws.async_resources import async_prefix, dlq_name, queue_name, topic_name
from hybridserve.aws.shared import Clients, account_id, service_client
from hybridserve.config import (
    Scenario,
)
from hybridserve.config_base import ConfigError
from hybridserve.deployment import DeploymentConfig


@dataclass
class AwsAsync:
    """What the AWS serve stack runs for async jobs (the router takes `front`)."""

    front: AsyncFront
    runtime: AsyncRuntime

    def close(self) -> None:
        """Nothing of its own to stop: the runtime closes its invoker when cancelled."""


def aws_async(
    cfg: DeploymentConfig,
    c: Clients,
    sc: Scenario,
    model: str,
    invoker_factory: Any,
) -> AwsAsync:
    """The front and the runtime of a deployment's async jobs (`invoker_factory`: new invokers
    of its function); ConfigError when `deploy` has not made its queues."""
    a = cfg.async_jobs
    sqs = service_client(c, "sqs")
    urls = {}
    for name in (queue_name(cfg.name), dlq_name(cfg.name)):
        try:
            urls[name] = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        except sqs.exceptions.QueueDoesNotExist:
            raise ConfigError(
                f"async_jobs.enabled: queue {name} not found; run `hybridserve deploy` first"
            ) from None
    queue = SqsQueue(sqs, urls[queue_name(cfg.name)], urls[dlq_name(cfg.name)], a.max_receives)
    store = S3Store(c.s3, cfg.bucket, async_prefix(cfg.prefix_root))
    topic = f"arn:aws:sns:{cfg.region}:{account_id(c)}:{topic_name(cfg.name)}"
    lj = LambdaJob.of(sc)
    runtime = AsyncRuntime(
        queue,
        store,
        model,
        backend=None,
        pool="",
        invoker_factory=invoker_factory if a.max_lambda > 0 else None,
        policy=AsyncPolicy(deadline_s=a.deadline_s, max_fleet=0, max_lambda=a.max_lambda),
        prices=AsyncPrices(0.0, 0.0, lj.usd, lj.cold_s),
        job_s=lj.seconds,
        lambda_job_s=lj.seconds,
        lambda_usd=lj.billed_usd,
        visibility_s=float(a.visibility_s),
        notifier=SnsNotifier(service_client(c, "sns"), topic),
    )
    return AwsAsync(AsyncFront(queue, store, frozenset([model]), a.deadline_s), runtime)
