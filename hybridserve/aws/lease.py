"""One acting controller per deployment: a lease held in S3 with conditional writes.

The lease is one object beside the saved state (`<prefix>/controller-lease.json`: holder and
expiry). A controller takes it when it is absent (`If-None-Match: *`) or expired, and renews
it while it holds it (`If-Match` on the ETag it read), so of two controllers racing for it S3
lets exactly one write win. A controller that does not hold the lease stays passive: it decides
nothing and launches nothing, and when it takes over it reloads the state the holder saved.
Expiry is judged on the controllers' clocks, so the time to live is kept well above any skew
NTP leaves (several control intervals).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from hybridserve.aws import tags as T
from hybridserve.aws.shared import ROLE_CONTROLLER_STATE, error_code, is_missing
from hybridserve.deployment import DeploymentConfig

MIN_TTL_S = 2.0
TTL_INTERVALS = 3  # a holder that missed three control intervals is taken over


def lease_key(cfg: DeploymentConfig) -> str:
    return cfg.key("controller-lease.json")


def lease_ttl_s(interval_s: float) -> float:
    return max(MIN_TTL_S, TTL_INTERVALS * interval_s)


class Lease:
    """`hold()` takes or renews the lease and says whether this controller holds it now."""

    def __init__(
        self,
        s3: Any,
        cfg: DeploymentConfig,
        ttl_s: float,
        *,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.s3, self.bucket, self.key = s3, cfg.bucket, lease_key(cfg)
        self.tagging = T.object_tagging(cfg.name, ROLE_CONTROLLER_STATE)
        self.ttl_s = ttl_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.seen: dict[str, Any] = {}  # the lease as last read (holder, expires)

    def hold(self) -> bool:
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if not is_missing(e):
                raise
            return self._write(IfNoneMatch="*")
        try:
            self.seen = json.loads(obj["Body"].read())
            mine = self.seen.get("holder") == self.holder
            expired = float(self.seen.get("expires", 0.0)) < self.clock()
        except (ValueError, TypeError, AttributeError):  # not ours to parse: take it over
            mine, expired = False, True
        if not (mine or expired):
            return False
        return self._write(IfMatch=obj["ETag"])

    def _write(self, **condition: str) -> bool:
        doc = {"holder": self.holder, "expires": self.clock() + self.ttl_s}
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=json.dumps(doc).encode(),
                ContentType="application/json",
                Tagging=self.tagging,
                **condition,
            )
        except ClientError as e:
            if error_code(e) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False  # another controller wrote first
            raise
        self.seen = doc
        return True

    def release(self) -> None:
        """Let another controller take over at once (expire the lease if still ours)."""
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.key)
            if json.loads(obj["Body"].read()).get("holder") != self.holder:
                return
            doc = {"holder": self.holder, "expires": 0.0}
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=json.dumps(doc).encode(),
                Tagging=self.tagging,
                IfMatch=obj["ETag"],
            )
        except (ClientError, ValueError):
            pass  # it expires by itself
