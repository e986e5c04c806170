"""The instances' security group: the model server's port, open to the router only."""

from __future__ import annotations

from typing import Any

from hybridserve.aws import tags as T
from hybridserve.aws.shared import (
    ROLE_SECURITY_GROUP,
    security_group_name,
)


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


def ensure_security_group(
    ec2: Any, deployment: str, *, vpc_id: str, port: int, router_cidr: str
) -> str:
    """Group `hybridserve-<deployment>` letting in ONLY tcp `port` from `router_cidr`.

    Any other ingress found (drift, hand edits) is revoked. Egress is left at the VPC default.
    """
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
    have = False
    revoke = []
    for perm in perms:
        p = _strip(perm)
        ours = (
            p.get("IpProtocol") == "tcp" and p.get("FromPort") == port and p.get("ToPort") == port
        )
        ranges = p.get("IpRanges", [])
        if ours and any(r.get("CidrIp") == router_cidr for r in ranges):
            have = True
            extra = [r for r in ranges if r.get("CidrIp") != router_cidr]
            if extra:
                p["IpRanges"] = extra
            else:
                p.pop("IpRanges", None)
        if any(k in p for k in ("IpRanges", "Ipv6Ranges", "PrefixListIds", "UserIdGroupPairs")):
            revoke.append(p)
    if revoke:
        ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=revoke)
    if not have:
        ec2.authorize_security_group_ingress(
            GroupId=gid,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": port,
                    "ToPort": port,
                    "IpRanges": [{"CidrIp": router_cidr, "Description": "hybridserve router"}],
                }
            ],
        )
    return gid
