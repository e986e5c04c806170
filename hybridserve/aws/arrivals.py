"""Every router's arrivals in S3, for the one controller that holds the lease.

Each router of a deployment (one `serve`, or the replicas behind the load balancer) publishes
its window of per-second counts (hybridserve/arrivals.py) to `<prefix>/arrivals/<replica>.json`
every few seconds; the lease holder lists that prefix once per control interval and sums the
windows, each (replica, second) once. S3 is strongly consistent for these reads, a lost or
repeated put is harmless (the next one carries the whole window again), and at one put every
5 s a router costs about $0.09 a day in requests. A window untouched for a day is deleted by
whoever reads it, so replicas that are gone leave nothing behind for long.
"""

from __future__ import annotations

import json
import os
import re
import socket
from typing import Any

from hybridserve.arrivals import parse_document
from hybridserve.aws import tags as T
from hybridserve.aws.shared import ROLE_CONTROLLER_STATE
from hybridserve.deployment import DeploymentConfig

PUBLISH_EVERY_S = 5.0
FORGET_AFTER_S = 86400.0


def arrivals_prefix(cfg: DeploymentConfig) -> str:
    return cfg.key("arrivals/")


def replica_id() -> str:
    """This router's name among the deployment's: `HYBRIDSERVE_REPLICA_ID` (the instance id on
    the deployment's router instances), else host and process."""
    given = os.environ.get("HYBRIDSERVE_REPLICA_ID")
    if given:
        return given
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", f"{socket.gethostname()}-{os.getpid()}")[:128]


class S3Arrivals:
    """`publish` a window, `read_all` every router's: the same calls as `DirArrivals`."""

    def __init__(self, s3: Any, cfg: DeploymentConfig) -> None:
        self.s3, self.bucket, self.prefix = s3, cfg.bucket, arrivals_prefix(cfg)
        self.tagging = T.object_tagging(cfg.name, ROLE_CONTROLLER_STATE)

    def publish(self, doc: dict[str, Any]) -> None:
        self.s3.put_object(
            Bucket=self.bucket,
            Key=f"{self.prefix}{doc['replica']}.json",
            Body=json.dumps(doc).encode(),
            ContentType="application/json",
            Tagging=self.tagging,
        )

    def read_all(self, now: float | None = None) -> list[dict[str, Any]]:
        out = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                age = None if now is None else now - obj["LastModified"].timestamp()
                if age is not None and age > FORGET_AFTER_S:  # a router long gone: no GET
                    self.s3.delete_object(Bucket=self.bucket, Key=key)
                    continue
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                out.append(parse_document(body, f"s3://{self.bucket}/{key}"))
        return out
