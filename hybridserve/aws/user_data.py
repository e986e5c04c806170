"""The instances' user data, rendered from the deployment config and the wheelhouse pins that
`deploy` left in S3 (aws/wheelhouse.py), so it is the same wherever it is rendered (deploy,
scale): the launch template's content, and so a rollout, follows from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hybridserve.aws.wheelhouse import Supply, load_supply, pointer_key
from hybridserve.config_base import ConfigError
from hybridserve.deployment import DeploymentConfig


def _params(cfg: DeploymentConfig, supply: Supply) -> Any:
    from ec2_images.render import ImageParams

    def uri(key: str) -> str:
        return f"s3://{cfg.bucket}/{key}"

    return ImageParams(
        deployment=cfg.name,
        artifact_uri=uri(f"{cfg.artifact_prefix}/"),
        wheel_uri=uri(supply.wheel.key),
        wheel_sha256=supply.wheel.sha256,
        dependencies_uri=uri(supply.dependencies.key),
        dependencies_sha256=supply.dependencies.sha256,
        requirements_uri=uri(supply.requirements.key),
        requirements_sha256=supply.requirements.sha256,
        port=cfg.ec2.port,
        max_batch=cfg.ec2.max_batch,
        max_delay_ms=cfg.ec2.max_delay_ms,
        region=cfg.region,
        models=tuple(m.name for m in cfg.models),
    )


def render(cfg: DeploymentConfig, supply: Supply) -> str:
    """cloud-init that installs exactly `supply` and serves the deployment's artifact."""
    from ec2_images.render import render_user_data

    return render_user_data(_params(cfg, supply))


def render_router(cfg: DeploymentConfig, supply: Supply, pins: Sequence[tuple[str, str]]) -> str:
    """cloud-init of a router replica: installs exactly `supply`, as the model servers do, and
    runs `hybridserve serve` on port `router.port` with the files `pins` names ((key, sha256),
    the deployment config first), each fetched and checked against its sha256."""
    from ec2_images.render import RouterParams, render_router_user_data

    router = RouterParams(
        pins=tuple((f"s3://{cfg.bucket}/{key}", sha) for key, sha in pins), port=cfg.router.port
    )
    return render_router_user_data(_params(cfg, supply), router)


def deployed_user_data(cfg: DeploymentConfig, s3: Any) -> str:
    """The user data of the wheelhouse `deploy` uploaded last (a ConfigError before any).
    Only deploy and scale render it: the runtime launches from the template as deployed."""
    supply = load_supply(s3, cfg)
    if supply is None:
        raise ConfigError(
            f"ec2.wheel: deployment {cfg.name!r} has no wheelhouse (no "
            f"s3://{cfg.bucket}/{pointer_key(cfg)}): run `hybridserve deploy` first"
        )
    return render(cfg, supply)
