"""The instances' security group: the model server's port, open to the router only.

The router's network is `ec2.router_cidr` when given, else the VPC's own CIDR block(s): the
default VPC is 172.31.0.0/16, which a fixed default such as 10.0.0.0/8 would not cover.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hybridserve.aws import tags as T
from hybridserve.aws.shared import (
    ROLE_SECURITY_GROUP,
    security_group_name,
)
from hybridserve.config_base import ConfigError


def _strip(perm: dict[str, Any]) -> dict[str, Any]:
    """An IpPermission from describe, in the shape revoke accepts (no empty lists)."""
    keys = ("IpProtocol", "FromPort", "ToPort", "IpRanges", "Ipv6Ranges", "PrefixListIds")
    out = {k: perm[k] for k in keys if perm.get(k) not in (None, [])}
    pairs = [
        {
            k: v
            for k, v in p.items()
            if k in ("GroupId", "UserId", "VpcId", "VpcPeeringConnectionId")
        }
        for p in perm.get("UserIdGroupPairs") or []
    ]
    if pairs:
        out["UserIdGroupPairs"] = pairs
    return out


def vpc_cidrs(ec2: Any, vpc_id: str) -> tuple[str, ...]:
    """The VPC's associated IPv4 CIDR blocks (the primary one first)."""
    (vpc,) = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"]
    out = [vpc["CidrBlock"]] if vpc.get("CidrBlock") else []
    for a in vpc.get("CidrBlockAssociationSet") or []:
        state = (a.get("CidrBlockState") or {}).get("State", "associated")
        if state == "associated" and a.get("CidrBlock") and a["CidrBlock"] not in out:
            out.append(a["CidrBlock"])
    return tuple(out)


def router_cidrs(ec2: Any, vpc_id: str, configured: str | None) -> tuple[str, ...]:
    """`ec2.router_cidr` when set, else every CIDR block of the instances' VPC."""
    if configured:
        return (configured,)
    found = vpc_cidrs(ec2, vpc_id)
    if not found:
        raise ConfigError(
            f"ec2.router_cidr: VPC {vpc_id} has no associated IPv4 CIDR block to default to; "
            "expected the router's network, e.g. 10.0.0.0/16"
        )
    return found


def ensure_security_group(
    ec2: Any, deployment: str, *, vpc_id: str, port: int, router_cidr: str | Sequence[str]
) -> str:
    """Group `hybridserve-<deployment>` letting in ONLY tcp `port` from `router_cidr` (one
    CIDR or several).

    Any other ingress found (drift, hand edits) is revoked. Egress is left at the VPC default.
    """
    want = [router_cidr] if isinstance(router_cidr, str) else list(dict.fromkeys(router_cidr))
    name = security_group_name(deployment)
    tags = T.tags_for(deployment, ROLE_SECURITY_GROUP)
    found = ec2.describe_security_groups(
        Filters=[
            {"Name": "group-name", "Values": [name]},
            {"Name": "vpc-id", "Values": [vpc_id]},
        ]
    )["SecurityGroups"]
    if found:
        sg = found[0]
        gid = sg["GroupId"]
        if {k: v for k, v in T.as_dict(sg.get("Tags")).items() if k in tags} != tags:
            ec2.create_tags(Resources=[gid], Tags=T.tag_list(tags))
        perms = sg.get("IpPermissions", [])
    else:
        gid = ec2.create_security_group(
            GroupName=name,
            Description=f"hybridserve {deployment}: model servers, router port only",
            VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": T.tag_list(tags)}],
        )["GroupId"]
        perms = []
    have: set[str] = set()
    revoke = []
    for perm in perms:
        p = _strip(perm)
        ours = (
            p.get("IpProtocol") == "tcp" and p.get("FromPort") == port and p.get("ToPort") == port
        )
        ranges = p.get("IpRanges", [])
        if ours:
            have |= {r["CidrIp"] for r in ranges if r.get("CidrIp") in want}
            extra = [r for r in ranges if r.get("CidrIp") not in want]
            if extra:
                p["IpRanges"] = extra
            else:
                p.pop("IpRanges", None)
        if any(k in p for k in ("IpRanges", "Ipv6Ranges", "PrefixListIds", "UserIdGroupPairs")):
            revoke.append(p)
    if revoke:
        ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=revoke)
    missing = [c for c in want if c not in have]
    if missing:
        ec2.authorize_security_group_ingress(
            GroupId=gid,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": port,
                    "ToPort": port,
                    "IpRanges": [
                        {"CidrIp": c, "Description": "hybridserve router"} for c in missing
                    ],
                }
            ],
        )
    return gid
