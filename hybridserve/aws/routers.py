"""The router fleet: `router.replicas` copies of `hybridserve serve` behind a Network Load
Balancer, kept by an Auto Scaling group (a killed or unhealthy replica is replaced by AWS).

`deploy` with `router.replicas > 0` creates or updates, level-triggered, each resource tagged
`hybridserve:deployment=<name>` with its role (tags.ROLE_ROUTER_*), found again by its name and
checked by its tags:
  security group    hybridserve-<name>-router: router.port from router.client_cidr (the NLB
                    keeps the client's address) and from the VPC's CIDRs (its health checks)
                    (this, the subnets and the load balancer: aws/balancer.py)
  role + profile    hybridserve-<name>-router: the runtime policy (`hybridserve iam-policy`),
                    plus reading exactly the files a replica boots from
  S3 objects        <prefix>/router/deployment.yaml, the config the replicas run with (and the
                    scenario files it names), each with its sha256
  launch template   hybridserve-<name>-router, a new version when its content hash changes
  target group      TCP router.port, HTTP health check on /v2/health/live
  load balancer     network, router.scheme, one subnet per Availability Zone
  listener          TCP router.listen_port -> the target group
  Auto Scaling group  min = max = desired = replicas, on the template's exact version, ELB
                    health checks; a new version rolls the replicas (an instance refresh)
`router.replicas: 0` removes them all (teardown.teardown_routers, which `teardown` runs first).
A replica boots as a model server does (the deployment's wheelhouse, offline: user_data.py,
ec2_images/cloud-init-router.yaml), then runs `hybridserve serve --config <the config fetched
by its sha256>` under systemd, `HYBRIDSERVE_REPLICA_ID` being its instance id.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError

from hybridserve.aws import tags as T
from hybridserve.aws.balancer import (
    ensure_listener,
    ensure_load_balancer,
    ensure_router_security_group,
    ensure_target_group,
    healthy_targets,
    router_name,
    router_subnets,
    tagged_elb,
    warn_fleet_admission,
)
from hybridserve.aws.images import deployment_arch, instance_arch
from hybridserve.aws.roles import _ensure_role, ensure_instance_profile, exact_read
from hybridserve.aws.shared import error_code, is_missing, service_client
from hybridserve.aws.user_data import render_router
from hybridserve.aws.wheelhouse import Supply
from hybridserve.config_base import ConfigError, read_yaml_mapping
from hybridserve.deployment import DeploymentConfig

GRACE_S = 600  # boot, wheelhouse install and start before ELB health counts
CONFIG = "deployment.yaml"


def _tags(cfg: DeploymentConfig, role: str) -> list[dict[str, str]]:
    return T.tag_list(T.tags_for(cfg.name, role))


# ---- what a replica runs with ----------------------------------------------------------------


def router_files(cfg: DeploymentConfig, state_dir: str) -> dict[str, bytes]:
    """File name -> bytes, the deployment config first: the user's config re-serialised (the
    artifact as given: a replica reads the manifest from S3) without `router.replicas` (the
    group's business: a new count must not roll the replicas), its scenario pointed at the
    copy in `state_dir`, and the scenario with the catalog and profile files it names."""
    data = cfg.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["router"].pop("replicas", None)
    files: dict[str, bytes] = {}
    if cfg.scenario:
        scenario = read_yaml_mapping(Path(cfg.scenario), "scenario")
        for key in ("catalog", "model"):
            if isinstance(scenario.get(key), str):
                path = Path(cfg.scenario).parent / scenario[key]
                read_yaml_mapping(path, f"scenario {key}")
                files[f"scenario-{key}.yaml"] = path.read_bytes()
                scenario[key] = f"scenario-{key}.yaml"  # beside the scenario, as loaded
        files["scenario.yaml"] = yaml.safe_dump(scenario, sort_keys=False).encode()
        data["scenario"] = f"{state_dir}/scenario.yaml"
    return {CONFIG: yaml.safe_dump(data, sort_keys=False).encode(), **files}


def sync_router_files(s3: Any, cfg: DeploymentConfig, files: dict[str, bytes]) -> list[tuple]:
    """Put each of `files` at <prefix>/router/<name> unless it is there with its sha256 (kept in
    the object's metadata); remove the others there. Returns [(key, sha256)] in order."""
    prefix = cfg.key("router/")
    pins = []
    for name, body in files.items():
        key, sha = f"{prefix}{name}", hashlib.sha256(body).hexdigest()
        pins.append((key, sha))
        try:
            if s3.head_object(Bucket=cfg.bucket, Key=key).get("Metadata", {}).get("sha256") == sha:
                continue
        except ClientError as e:
            if not is_missing(e):
                raise
        s3.put_object(
            Bucket=cfg.bucket,
            Key=key,
            Body=body,
            Metadata={"sha256": sha},
            ChecksumAlgorithm="SHA256",
            Tagging=T.object_tagging(cfg.name, T.ROLE_ROUTER_CONFIG),
        )
    keep = {k for k, _ in pins}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=prefix)
    stale = [o["Key"] for p in pages for o in p.get("Contents", []) if o["Key"] not in keep]
    if stale:
        s3.delete_objects(
            Bucket=cfg.bucket, Delete={"Objects": [{"Key": k} for k in stale], "Quiet": True}
        )
    return pins


def router_role_policy(runtime: dict[str, Any], bucket: str, keys: Sequence[str]) -> dict:
    """The runtime policy (`hybridserve iam-policy`) and reading exactly `keys`: the files a
    replica boots from (its config, the wheelhouse)."""
    return {**runtime, "Statement": [*runtime["Statement"], exact_read(bucket, keys, "RouterBoot")]}


# ---- launch template ---------------------------------------------------------------------------


def template_data(cfg: DeploymentConfig, image: str, user_data: str, sg: str, profile: str):
    return {
        "ImageId": image,
        "InstanceType": cfg.router.instance_type,
        "UserData": base64.b64encode(user_data.encode()).decode(),
        "SecurityGroupIds": [sg],
        "IamInstanceProfile": {"Arn": profile},
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},  # IMDSv2
        "TagSpecifications": [{"ResourceType": "instance", "Tags": _tags(cfg, T.ROLE_ROUTER)}],
    }


def ensure_router_template(ec2: Any, cfg: DeploymentConfig, data: dict[str, Any]) -> tuple:
    """(template id, version) holding `data`: a new (default) version when its content hash
    changed, as the fleet's template (aws/ec2.py)."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    want, name = f"hybridserve {digest}", router_name(cfg.name)
    try:
        tid = ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"][0][
            "LaunchTemplateId"
        ]
    except ClientError as e:
        if "NotFound" not in error_code(e):
            raise
        lt = ec2.create_launch_template(
            LaunchTemplateName=name,
            VersionDescription=want,
            LaunchTemplateData=data,
            TagSpecifications=[
                {"ResourceType": "launch-template", "Tags": _tags(cfg, T.ROLE_ROUTER_TEMPLATE)}
            ],
        )["LaunchTemplate"]
        return lt["LaunchTemplateId"], str(lt["LatestVersionNumber"])
    latest = ec2.describe_launch_template_versions(LaunchTemplateId=tid, Versions=["$Latest"])[
        "LaunchTemplateVersions"
    ][0]
    if latest.get("VersionDescription") == want:
        return tid, str(latest["VersionNumber"])
    made = ec2.create_launch_template_version(
        LaunchTemplateId=tid,
        VersionDescription=want,
        LaunchTemplateData=data,
        ClientToken=f"{cfg.name}-router-{digest}"[:64],
    )["LaunchTemplateVersion"]
    version = str(made["VersionNumber"])
    ec2.modify_launch_template(LaunchTemplateId=tid, DefaultVersion=version)
    return tid, version


# ---- the group ---------------------------------------------------------------------------------


def ensure_group(asg: Any, cfg: DeploymentConfig, template: tuple, subnets, tg_arn: str, log):
    """The Auto Scaling group: replicas instances of the template's exact version in the
    subnets, in the target group, replaced when ELB health fails. A new template version
    rolls the replicas (an instance refresh, new ones up before old ones go)."""
    name, n = router_name(cfg.name), cfg.router.replicas
    want = {
        "LaunchTemplate": {"LaunchTemplateId": template[0], "Version": template[1]},
        "MinSize": n,
        "MaxSize": n,
        "DesiredCapacity": n,
        "VPCZoneIdentifier": ",".join(subnets),
        "HealthCheckType": "ELB",
        "HealthCheckGracePeriod": GRACE_S,
    }
    found = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    tags = [
        {"ResourceId": name, "ResourceType": "auto-scaling-group", "PropagateAtLaunch": True, **t}
        for t in _tags(cfg, T.ROLE_ROUTER)
    ]
    if not found:
        asg.create_auto_scaling_group(
            AutoScalingGroupName=name, TargetGroupARNs=[tg_arn], Tags=tags, **want
        )
        return
    g = found[0]
    if g.get("Status"):  # "Delete in progress"
        raise ConfigError(f"auto scaling group {name} is being deleted: deploy again once gone")
    lt = g.get("LaunchTemplate") or {}
    have = {
        **{k: g.get(k) for k in want},
        "LaunchTemplate": {k: lt.get(k) for k in ("LaunchTemplateId", "Version")},
        "VPCZoneIdentifier": ",".join(sorted(g.get("VPCZoneIdentifier", "").split(","))),
    }
    if have != {**want, "VPCZoneIdentifier": ",".join(sorted(subnets))}:
        asg.update_auto_scaling_group(AutoScalingGroupName=name, **want)
    for arn in set(g.get("TargetGroupARNs", [])) - {tg_arn}:
        asg.detach_load_balancer_target_groups(AutoScalingGroupName=name, TargetGroupARNs=[arn])
    if tg_arn not in g.get("TargetGroupARNs", []):
        asg.attach_load_balancer_target_groups(AutoScalingGroupName=name, TargetGroupARNs=[tg_arn])
    present = {(t["Key"], t["Value"]) for t in g.get("Tags", [])}
    if any((t["Key"], t["Value"]) not in present for t in tags):
        asg.create_or_update_tags(Tags=tags)
    versions = {str((i.get("LaunchTemplate") or {}).get("Version")) for i in g.get("Instances", [])}
    if lt.get("Version") != template[1] or versions - {template[1]}:
        _refresh(asg, name, log)


def _refresh(asg: Any, name: str, log: Callable[[str], Any]) -> None:
    try:
        asg.start_instance_refresh(
            AutoScalingGroupName=name,
            Preferences={"MinHealthyPercentage": 100, "MaxHealthyPercentage": 200},
        )
        log(f"router group {name}: rolling the replicas onto the new template version")
    except ClientError as e:
        if error_code(e) != "InstanceRefreshInProgress":
            raise
        log(f"router group {name}: a refresh is in progress; the next deploy checks again")


# ---- deploy, status, removal -------------------------------------------------------------------


def router_plan(cfg: DeploymentConfig) -> str:
    """The dry run's line for the router fleet."""
    r = cfg.router
    if r.replicas == 0:
        return "router fleet: none (router.replicas 0; one deployed before is removed)"
    return (
        f"router fleet: {r.replicas} x {r.instance_type} serving on {r.port}, behind an "
        f"{r.scheme} network load balancer listening on {r.listen_port}, open to "
        f"{r.client_cidr or 'the VPC CIDR block(s)'}"
    )


def deploy_routers(
    cfg: DeploymentConfig,
    c: Any,
    supply: Supply,
    *,
    policy: Callable[[], dict[str, Any]],
    vpc: str | None = None,
    image: str | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any] | None:
    """`deploy`'s step for the router fleet, after the fleet's template (which the runtime
    policy, `policy()`, names): every resource of the module doc created or brought to the
    config, in `vpc` on `image`; with `router.replicas: 0`, whatever a deploy made is removed."""
    from ec2_images.render import ROUTER_STATE

    if cfg.router.replicas == 0:
        from hybridserve.aws.teardown import teardown_routers

        gone = {k: v for k, v in teardown_routers(c, cfg.name).items() if v}
        sync_router_files(c.s3, cfg, {})
        if gone:
            log(f"routers: router.replicas is 0; removed {gone}")
        return None
    assert vpc is not None and image is not None, "replicas > 0 needs the VPC and the image"
    if instance_arch(cfg.router.instance_type) != (arch := deployment_arch(cfg)):
        raise ConfigError(
            f"router.instance_type: {cfg.router.instance_type} is not {arch}, the architecture "
            "of the fleet's image and wheelhouse, which the replicas install too"
        )
    elb, asg = service_client(c, "elbv2"), service_client(c, "autoscaling")
    subnets = router_subnets(c.ec2, vpc, cfg.ec2.subnet_id)
    warn_fleet_admission(cfg, subnets, log)
    ids = [s for s, _ in subnets]
    sg = ensure_router_security_group(c.ec2, cfg, vpc)
    pins = sync_router_files(c.s3, cfg, router_files(cfg, f"/var/lib/{ROUTER_STATE}"))
    keys = [k for k, _ in pins] + list(supply.keys)
    name = router_name(cfg.name)
    role_tags = T.tags_for(cfg.name, T.ROLE_ROUTER_ROLE)
    _ensure_role(c.iam, name, "ec2", router_role_policy(policy(), cfg.bucket, keys), role_tags)
    profile = ensure_instance_profile(
        c.iam, router_name(cfg.name), name, T.tags_for(cfg.name, T.ROLE_ROUTER_PROFILE)
    )
    data = template_data(cfg, image, render_router(cfg, supply, pins), sg, profile)
    template = ensure_router_template(c.ec2, cfg, data)
    tg = ensure_target_group(elb, cfg, vpc)
    lb = ensure_load_balancer(elb, cfg, ids)
    ensure_listener(elb, cfg, lb["LoadBalancerArn"], tg)
    ensure_group(asg, cfg, template, ids, tg, log)
    url = f"http://{lb['DNSName']}:{cfg.router.listen_port}"
    log(f"routers: {cfg.router.replicas} x {cfg.router.instance_type} behind {url}")
    return {"url": url, "template_version": template[1], "config_sha256": pins[0][1]}


def router_status(cfg: DeploymentConfig, c: Any) -> dict[str, Any] | None:
    """The router fleet as AWS has it (None when there is none): the group's replicas, the
    load balancer's address and how many targets pass the health check."""
    elb = service_client(c, "elbv2")
    lbs = tagged_elb(elb, "load_balancers", cfg.name, T.ROLE_ROUTER_BALANCER)
    if not lbs:
        return None
    lb = lbs[0]
    ports = [
        x["Port"]
        for x in elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    ]
    groups = service_client(c, "autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[router_name(cfg.name)]
    )["AutoScalingGroups"]
    port = ports[0] if ports else cfg.router.listen_port
    return {
        "replicas": groups[0]["DesiredCapacity"] if groups else 0,
        "dns_name": lb["DNSName"],
        "url": f"http://{lb['DNSName']}:{port}",
        "healthy": healthy_targets(elb, cfg.name),
    }
