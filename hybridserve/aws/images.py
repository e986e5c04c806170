"""The instances' machine image and architecture.

`ec2.image: auto` must pick exactly the standard Amazon Linux 2023 AMI (kernel-default name,
owned by Amazon, EBS root, HVM) of the fleet's architecture: a name prefix alone also matches
the minimal and ECS-optimised images and the other architecture, and an x86_64 AMI on a
Graviton instance does not boot. One launch template serves every pool, so the fleet's
instance types (the initial fleet and every pool the planner may launch) must share one
architecture; so must the wheelhouse the instances install from (aws/wheelhouse.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from hybridserve.config_base import ConfigError
from hybridserve.deployment import DeploymentConfig

# the standard AL2023 image, kernel-default flavour: al2023-ami-2023.6.20241212.0-kernel-6.1-x86_64
AL2023_NAME = re.compile(r"^al2023-ami-2023\.[0-9.]+-kernel-[0-9.]+-(x86_64|arm64)$")
AL2023_OWNER = "amazon"
ARCHITECTURES = ("x86_64", "arm64")

# a Graviton family: digits then `g` (c7g, m6gd, t4g, c7gn, g5g, hpc7g), or the first one, a1
_GRAVITON = re.compile(r"^(a1|[a-z]+[0-9]+g[a-z]*)$")


def instance_arch(instance_type: str) -> str:
    """EC2's architecture name (x86_64 or arm64) of an instance type such as c5.large."""
    family = instance_type.split(".", 1)[0].lower()
    return "arm64" if _GRAVITON.match(family) else "x86_64"


def fleet_arch(instance_types: Iterable[str]) -> str:
    """The one architecture of the instance types (x86_64 when there are none)."""
    by_arch: dict[str, list[str]] = {}
    for t in sorted(set(instance_types)):
        by_arch.setdefault(instance_arch(t), []).append(t)
    if len(by_arch) > 1:
        detail = "; ".join(f"{a}: {', '.join(ts)}" for a, ts in sorted(by_arch.items()))
        raise ConfigError(
            "ec2.image / fleet: the fleet's instance types mix architectures "
            f"({detail}); one launch template and one AMI serve them all, so expected instance "
            "types of one architecture (in `fleet` and the scenario's instance_types)"
        )
    return next(iter(by_arch), "x86_64")


def deployment_arch(cfg: DeploymentConfig) -> str:
    """The architecture of every instance type the deployment may run: its initial fleet's
    and each pool of its scenario (what the planner may launch)."""
    from hybridserve.config import load_scenario

    types = [pool.split("/", 1)[0] for pool in cfg.fleet]
    types += [p.instance_type for p in load_scenario(cfg.scenario).pools]
    return fleet_arch(types)


def _standard(img: dict[str, Any], arch: str) -> bool:
    return (
        bool(AL2023_NAME.match(img.get("Name") or ""))
        and img.get("Architecture") == arch
        and (img.get("Name") or "").endswith(f"-{arch}")
        and img.get("ImageOwnerAlias") == AL2023_OWNER
        and img.get("State") == "available"
        and img.get("RootDeviceType") == "ebs"
        and img.get("VirtualizationType") == "hvm"
        and img.get("ImageType", "machine") == "machine"
    )


def latest_al2023(ec2: Any, arch: str) -> str:
    """The id of the newest (by CreationDate) standard AL2023 AMI of `arch` in the region.

    The server-side filters narrow the listing; every condition is checked again here, exactly,
    since a filter value is a glob and some are not applied by every endpoint."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"architecture {arch!r}: expected one of {ARCHITECTURES}")
    imgs = ec2.describe_images(
        Owners=[AL2023_OWNER],
        Filters=[
            {"Name": "name", "Values": [f"al2023-ami-2023.*-kernel-*-{arch}"]},
            {"Name": "architecture", "Values": [arch]},
            {"Name": "state", "Values": ["available"]},
        ],
    )["Images"]
    found = [i for i in imgs if _standard(i, arch)]
    if not found:
        raise ConfigError(
            f"ec2.image: no standard Amazon Linux 2023 {arch} image (owner amazon, name like "
            f"al2023-ami-2023.x-kernel-y-{arch}, EBS, HVM) in this region; give an AMI id"
        )
    return max(found, key=lambda i: (i.get("CreationDate", ""), i["ImageId"]))["ImageId"]
