"""The network in front of the router replicas (aws/routers.py): their subnets (one per
zone), their security group, and the Network Load Balancer: a TCP target group on router.port
with an HTTP health check, the load balancer, one TCP listener on router.listen_port. Each is
found by name (32 characters at most for the last two), checked to be the deployment's by its
tags, and removed by its tags.

An NLB with instance targets keeps the client's address: the replicas' security group, not the
load balancer, says who may connect: router.client_cidr (else the VPC's CIDRs), and the VPC's
CIDRs for the health checks.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError

from hybridserve.aws import tags as T
from hybridserve.aws.network import vpc_cidrs
from hybridserve.aws.shared import error_code, is_missing, until
from hybridserve.config_base import ConfigError
from hybridserve.deployment import DeploymentConfig

HEALTH_PATH = "/v2/health/live"  # the router answers it; /ready needs the model's fleet
HEALTH = {
    "HealthCheckProtocol": "HTTP",
    "HealthCheckPort": "traffic-port",
    "HealthCheckPath": HEALTH_PATH,
    "HealthCheckIntervalSeconds": 10,
    "HealthCheckTimeoutSeconds": 6,
    "HealthyThresholdCount": 3,
    "UnhealthyThresholdCount": 3,
    "Matcher": {"HttpCode": "200"},
}
# a retiring replica's connections get the router's 30 s upstream timeout and a margin (the
# default is 300 s); fewer replicas than zones still spread evenly across the load balancer
TARGET_ATTRIBUTES = {"deregistration_delay.timeout_seconds": "35"}
BALANCER_ATTRIBUTES = {"load_balancing.cross_zone.enabled": "true"}


def elb_name(deployment: str, kind: str) -> str:
    """The load balancer's (`nlb`) or target group's (`tg`) name: 32 characters at most."""
    name = f"hybridserve-{deployment}-{kind}"
    if len(name) <= 32:
        return name
    digest = hashlib.sha256(deployment.encode()).hexdigest()[:8]
    return f"hs-{deployment[:16]}-{digest}-{kind}"


def router_name(deployment: str) -> str:
    """Security group, role, instance profile, launch template and Auto Scaling group."""
    return f"hybridserve-{deployment}-router"


def _tags(cfg: DeploymentConfig, role: str) -> list[dict[str, str]]:
    return T.tag_list(T.tags_for(cfg.name, role))


def router_subnets(ec2: Any, vpc: str, pinned: str | None) -> list[tuple[str, str]]:
    """(subnet id, CIDR), one per Availability Zone of the VPC: `ec2.subnet_id` in its zone,
    else the zone's default subnet, else its lowest id."""
    pages = ec2.get_paginator("describe_subnets").paginate(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}]
    )
    found = [s for p in pages for s in p["Subnets"] if s.get("State", "available") == "available"]
    by_az: dict[str, tuple[str, str]] = {}
    for s in sorted(
        found, key=lambda s: (s["SubnetId"] != pinned, not s.get("DefaultForAz"), s["SubnetId"])
    ):
        by_az.setdefault(s["AvailabilityZone"], (s["SubnetId"], s.get("CidrBlock", "")))
    if not by_az:
        raise ConfigError(f"ec2.vpc_id: VPC {vpc} has no available subnet for the routers")
    return [by_az[az] for az in sorted(by_az)]


def ensure_router_security_group(ec2: Any, cfg: DeploymentConfig, vpc: str) -> str:
    """Only tcp router.port, from router.client_cidr (else the VPC's CIDRs) and the VPC's
    CIDRs (the NLB's health checks); any other ingress is revoked."""
    port, name = cfg.router.port, router_name(cfg.name)
    vpc_nets = list(vpc_cidrs(ec2, vpc))
    want = list(dict.fromkeys([*filter(None, [cfg.router.client_cidr]), *vpc_nets]))
    found = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}]
    )["SecurityGroups"]
    if found:
        gid, perms = found[0]["GroupId"], found[0].get("IpPermissions", [])
        if T.as_dict(found[0].get("Tags")).get(T.DEPLOYMENT) != cfg.name:
            raise ConfigError(f"security group {name} in {vpc} is not deployment {cfg.name!r}'s")
    else:
        gid = ec2.create_security_group(
            GroupName=name,
            Description=f"hybridserve {cfg.name}: router replicas, router port only",
            VpcId=vpc,
            TagSpecifications=[
                {"ResourceType": "security-group", "Tags": _tags(cfg, T.ROLE_ROUTER_SG)}
            ],
        )["GroupId"]
        perms = []
    have, revoke = set(), []
    for p in perms:
        ours = (p.get("IpProtocol"), p.get("FromPort"), p.get("ToPort")) == ("tcp", port, port)
        for r in p.get("IpRanges") or []:
            if ours and r["CidrIp"] in want:
                have.add(r["CidrIp"])
            else:
                revoke.append(_perm(p, IpRanges=[{"CidrIp": r["CidrIp"]}]))
        for k in ("Ipv6Ranges", "PrefixListIds", "UserIdGroupPairs"):
            for r in p.get(k) or []:
                pair = {x: r[x] for x in ("GroupId", "UserId") if x in r} if "Group" in k else r
                revoke.append(_perm(p, **{k: [pair]}))
    if revoke:
        ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=revoke)
    missing = [c for c in want if c not in have]
    if missing:
        ranges = [
            {"CidrIp": c, "Description": "hybridserve router clients, health checks"}
            for c in missing
        ]
        ec2.authorize_security_group_ingress(
            GroupId=gid,
            IpPermissions=[
                _perm({"IpProtocol": "tcp", "FromPort": port, "ToPort": port}, IpRanges=ranges)
            ],
        )
    return gid


def _perm(p: dict[str, Any], **ranges: Any) -> dict[str, Any]:
    out = {k: p[k] for k in ("IpProtocol", "FromPort", "ToPort") if p.get(k) is not None}
    return {**out, **ranges}


def warn_fleet_admission(cfg: DeploymentConfig, subnets: Iterable[tuple[str, str]], log) -> None:
    """The model servers' group admits `ec2.router_cidr` (default: the VPC's CIDRs, which hold
    every router subnet); a given one that misses a router subnet is worth a warning."""
    if not cfg.ec2.router_cidr:
        return
    net = ipaddress.ip_network(cfg.ec2.router_cidr)
    outside = [s for s, c in subnets if c and not ipaddress.ip_network(c).subnet_of(net)]  # type: ignore[arg-type]
    if outside:
        log(
            f"warning: ec2.router_cidr {net} does not hold router subnets {outside}: "
            "replicas there cannot reach the model servers"
        )


def _elb_tags(elb: Any, arns: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for i in range(0, len(arns), 20):
        for d in elb.describe_tags(ResourceArns=arns[i : i + 20])["TagDescriptions"]:
            out[d["ResourceArn"]] = T.as_dict(d.get("Tags"))
    return out


def _owned(elb: Any, cfg: DeploymentConfig, arn: str, what: str) -> None:
    if _elb_tags(elb, [arn]).get(arn, {}).get(T.DEPLOYMENT) != cfg.name:
        raise ConfigError(f"{what} exists and is not deployment {cfg.name!r}'s: name it apart")


def tagged_elb(elb: Any, kind: str, deployment: str, role: str) -> list[dict[str, Any]]:
    """Load balancers (`kind` load_balancers) or target groups (target_groups) tagged with the
    deployment and `role`."""
    key = {"load_balancers": "LoadBalancers", "target_groups": "TargetGroups"}[kind]
    arn = {"load_balancers": "LoadBalancerArn", "target_groups": "TargetGroupArn"}[kind]
    items = [x for p in elb.get_paginator(f"describe_{kind}").paginate() for x in p[key]]
    tags = _elb_tags(elb, [x[arn] for x in items])
    want = {T.DEPLOYMENT: deployment, T.ROLE: role}
    return [x for x in items if want.items() <= tags.get(x[arn], {}).items()]


def ensure_target_group(elb: Any, cfg: DeploymentConfig, vpc: str) -> str:
    name = elb_name(cfg.name, "tg")
    try:
        (tg,) = elb.describe_target_groups(Names=[name])["TargetGroups"]
    except ClientError as e:
        if not is_missing(e):
            raise
        tg = elb.create_target_group(
            Name=name,
            Protocol="TCP",
            Port=cfg.router.port,
            VpcId=vpc,
            TargetType="instance",
            Tags=_tags(cfg, T.ROLE_ROUTER_TARGETS),
            **HEALTH,
        )["TargetGroups"][0]
        _attributes(elb, "target_group", tg["TargetGroupArn"], TARGET_ATTRIBUTES)
        return tg["TargetGroupArn"]
    arn = tg["TargetGroupArn"]
    _owned(elb, cfg, arn, f"target group {name}")
    if (tg["Protocol"], tg["Port"], tg["VpcId"]) != ("TCP", cfg.router.port, vpc):
        raise ConfigError(
            f"router.port / ec2.vpc_id: target group {name} forwards TCP to port {tg['Port']} "
            f"in {tg['VpcId']}, which AWS cannot change in place; set router.replicas: 0 and "
            "deploy (the router fleet is removed), then deploy with the new value"
        )
    if any(tg.get(k) != v for k, v in HEALTH.items()):
        elb.modify_target_group(TargetGroupArn=arn, **HEALTH)
    _attributes(elb, "target_group", arn, TARGET_ATTRIBUTES)
    return arn


def _attributes(elb: Any, kind: str, arn: str, want: dict[str, str]) -> None:
    """Set the attributes of a `target_group` or `load_balancer` that differ from `want`."""
    key = {"target_group": "TargetGroupArn", "load_balancer": "LoadBalancerArn"}[kind]
    found = getattr(elb, f"describe_{kind}_attributes")(**{key: arn})["Attributes"]
    have = {a["Key"]: a["Value"] for a in found}
    diff = [{"Key": k, "Value": v} for k, v in want.items() if have.get(k) != v]
    if diff:
        getattr(elb, f"modify_{kind}_attributes")(**{key: arn, "Attributes": diff})


def ensure_load_balancer(elb: Any, cfg: DeploymentConfig, subnets: list[str]) -> dict:
    name = elb_name(cfg.name, "nlb")
    try:
        (lb,) = elb.describe_load_balancers(Names=[name])["LoadBalancers"]
    except ClientError as e:
        if not is_missing(e):
            raise
        lb = elb.create_load_balancer(
            Name=name,
            Subnets=subnets,
            Scheme=cfg.router.scheme,
            Type="network",
            IpAddressType="ipv4",
            Tags=_tags(cfg, T.ROLE_ROUTER_BALANCER),
        )["LoadBalancers"][0]
        _attributes(elb, "load_balancer", lb["LoadBalancerArn"], BALANCER_ATTRIBUTES)
        return lb
    _owned(elb, cfg, lb["LoadBalancerArn"], f"load balancer {name}")
    if lb["Scheme"] != cfg.router.scheme:
        raise ConfigError(
            f"router.scheme: load balancer {name} is {lb['Scheme']} and AWS cannot change a "
            "scheme in place; set router.replicas: 0 and deploy (the router fleet is removed), "
            "then deploy with the new scheme"
        )
    if {z["SubnetId"] for z in lb.get("AvailabilityZones", [])} != set(subnets):
        elb.set_subnets(LoadBalancerArn=lb["LoadBalancerArn"], Subnets=subnets)
    _attributes(elb, "load_balancer", lb["LoadBalancerArn"], BALANCER_ATTRIBUTES)
    return lb


def ensure_listener(elb: Any, cfg: DeploymentConfig, lb_arn: str, tg_arn: str) -> str:
    """One TCP listener on router.listen_port forwarding to the target group; others go."""
    port, arn = cfg.router.listen_port, None
    action = [{"Type": "forward", "TargetGroupArn": tg_arn}]
    for ls in elb.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"]:
        if ls["Port"] != port or arn is not None:
            elb.delete_listener(ListenerArn=ls["ListenerArn"])
            continue
        arn = ls["ListenerArn"]
        acts = [{k: a.get(k) for k in ("Type", "TargetGroupArn")} for a in ls["DefaultActions"]]
        if ls["Protocol"] != "TCP" or acts != action:
            elb.modify_listener(ListenerArn=arn, Protocol="TCP", Port=port, DefaultActions=action)
    if arn is None:
        arn = elb.create_listener(
            LoadBalancerArn=lb_arn,
            Protocol="TCP",
            Port=port,
            DefaultActions=action,
            Tags=_tags(cfg, T.ROLE_ROUTER_LISTENER),
        )["Listeners"][0]["ListenerArn"]
    return arn


def healthy_targets(elb: Any, deployment: str) -> int:
    """Targets of the deployment's router target group(s) passing the health check."""
    n = 0
    for tg in tagged_elb(elb, "target_groups", deployment, T.ROLE_ROUTER_TARGETS):
        found = elb.describe_target_health(TargetGroupArn=tg["TargetGroupArn"])
        n += sum(d["TargetHealth"]["State"] == "healthy" for d in found["TargetHealthDescriptions"])
    return n


def remove_balancers(elb: Any, deployment: str, wait_s: float) -> tuple[list, list, list]:
    """(listeners, load balancers, target groups) removed: each load balancer's listeners, the
    load balancer (waited for), then the target group, found by tags. Safe to run twice."""
    listeners, balancers, groups = [], [], []
    lbs = tagged_elb(elb, "load_balancers", deployment, T.ROLE_ROUTER_BALANCER)
    for lb in lbs:
        for ls in elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]:
            elb.delete_listener(ListenerArn=ls["ListenerArn"])
            listeners.append(ls["ListenerArn"])
        elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
        balancers.append(lb["LoadBalancerName"])
    if lbs:
        elb.get_waiter("load_balancers_deleted").wait(
            LoadBalancerArns=[lb["LoadBalancerArn"] for lb in lbs],
            WaiterConfig={"Delay": 5, "MaxAttempts": max(1, int(wait_s // 5))},
        )
    for tg in tagged_elb(elb, "target_groups", deployment, T.ROLE_ROUTER_TARGETS):

        def deleted(arn: str = tg["TargetGroupArn"]) -> bool:
            try:
                elb.delete_target_group(TargetGroupArn=arn)
            except ClientError as e:  # in use until the load balancer is fully gone
                if error_code(e) != "ResourceInUse":
                    raise
                return False
            return True

        if not until(deleted, wait_s):
            raise TimeoutError(f"target group {tg['TargetGroupName']} still in use")
        groups.append(tg["TargetGroupName"])
    return listeners, balancers, groups
