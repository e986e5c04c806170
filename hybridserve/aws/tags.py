"""Tag conventions: every resource a deployment creates carries them, so it can be found again
(after a crash, by `status`, by `teardown`) without local state."""

from __future__ import annotations

import urllib.parse

DEPLOYMENT = "hybridserve:deployment"
ROLE = "hybridserve:role"
POOL = "hybridserve:pool"  # instance type/market, e.g. c5.large/on_demand
MANAGED_BY = "hybridserve:managed-by"
# the instance's state in the fleet, set by the controller (and read back by every observer):
INTERRUPTED = "hybridserve:interrupted"  # "true": a spot notice came; out of routing, replaced
DRAINING = "hybridserve:draining"  # epoch seconds: out of routing since, terminated at its end
TEMPLATE = "hybridserve:template"  # the launch template content it was launched from (a hash)
# a multi-model deployment's placement (aws/placement.py): the pool tag names the shard
# ("<type>/<market>#s<id>") and each model the shard should hold is a tag of its own, name ->
# variant (EC2's 50 tags per instance bound it, as the planner's models per instance do)
MODEL_PREFIX = "hybridserve:model:"

ROLE_INSTANCE = "model-server"
ROLE_TEMPLATE = "launch-template"
ROLE_LAMBDA = "spill-function"
# the router fleet (aws/routers.py): replicas of `serve` in an Auto Scaling group behind an NLB
ROLE_ROUTER = "router"  # its instances and their Auto Scaling group (which tags them)
ROLE_ROUTER_TEMPLATE = "router-launch-template"
ROLE_ROUTER_BALANCER = "router-load-balancer"
ROLE_ROUTER_LISTENER = "router-listener"
ROLE_ROUTER_TARGETS = "router-target-group"
ROLE_ROUTER_SG = "router-security-group"
ROLE_ROUTER_ROLE = "router-role"
ROLE_ROUTER_PROFILE = "router-profile"
ROLE_ROUTER_CONFIG = "router-config"  # the config the replicas run with, in S3


def object_tagging(deployment: str, role: str) -> str:
    """The `Tagging` argument of an S3 put: the deployment's tags, URL-encoded."""
    return urllib.parse.urlencode(tags_for(deployment, role))


def tags_for(deployment: str, role: str, **extra: str) -> dict[str, str]:
    out = {DEPLOYMENT: deployment, ROLE: role, MANAGED_BY: "hybridserve"}
    out.update({k if ":" in k else f"hybridserve:{k}": v for k, v in extra.items()})
    return out


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """boto3's [{'Key', 'Value'}] form."""
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def as_dict(tag_list_: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tag_list_ or []}


def launch_template_name(deployment: str) -> str:
    """The deployment's launch template (looked up by this name before one is created)."""
    return f"hybridserve-{deployment}"
