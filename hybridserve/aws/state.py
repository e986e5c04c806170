"""The controller's state saved with the deployment: one S3 object beside the artifact.

Written after every applied step (a put of the whole state: rerunning it is harmless, the last
write is the state), read when `controller run` or `plan` starts, tagged with the deployment
so `teardown` removes it with the rest.
"""

from __future__ import annotations

from typing import Any

from hybridserve import controller_state as S
from hybridserve.aws import tags as T
from hybridserve.aws.shared import ROLE_CONTROLLER_STATE, read_object
from hybridserve.deployment import DeploymentConfig


def state_key(cfg: DeploymentConfig) -> str:
    return cfg.key("controller-state.json")


def state_url(cfg: DeploymentConfig) -> str:
    return f"s3://{cfg.bucket}/{state_key(cfg)}"


def load_state(s3: Any, cfg: DeploymentConfig) -> dict[str, Any] | None:
    """The saved state, or None when the deployment has none yet (ValueError if corrupt)."""
    body = read_object(s3, cfg.bucket, state_key(cfg))
    return None if body is None else S.loads(body, source=state_url(cfg))


def save_state(s3: Any, cfg: DeploymentConfig, state: dict[str, Any]) -> None:
    s3.put_object(
        Bucket=cfg.bucket,
        Key=state_key(cfg),
        Body=S.dumps(state).encode(),
        ContentType="application/json",
        Tagging=T.object_tagging(cfg.name, ROLE_CONTROLLER_STATE),
    )
