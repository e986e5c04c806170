"""The scenario a deployment plans with: its scenario file, with the deployment's limits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybridserve.deployment import DeploymentConfig

if TYPE_CHECKING:
    from hybridserve.config import Scenario


def deployment_scenario(cfg: DeploymentConfig) -> Scenario:
    """The deployment's scenario, with its fleet cap, budget and the function's reserved
    concurrency as the planner's limits."""
    from hybridserve.config import load_scenario

    return load_scenario(
        cfg.scenario,
        **{
            "planner.max_instances": cfg.ec2.max_instances,
            "planner.budget_usd_per_hour": cfg.budget_usd_per_hour,
            # the reserved concurrency caps the function: spill and keep-warm plan within it
            "lambda.concurrency_limit": max(1, cfg.lambda_.reserved_concurrency),
        },
    )
