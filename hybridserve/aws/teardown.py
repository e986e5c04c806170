"""Everything a deployment made, found by tags or names and removed in dependency order."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError

from hybridserve.aws import tags as T
from hybridserve.aws.balancer import remove_balancers, router_name
from hybridserve.aws.bucket import bucket_tags
from hybridserve.aws.shared import (
    ADOPTED_BY,
    CREATED_BY,
    KINDS,
    Clients,
    as_clients,
    error_code,
    function_name,
    instance_role_name,
    is_missing,
    lambda_role_name,
    profile_name,
    service_client,
    template_name,
    until,
)

# how long teardown keeps looking for instances a lagging describe did not list yet
SETTLE_S = 5.0


def _live_instances(ec2: Any, deployment: str) -> list[str]:
    ids = []
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": f"tag:{T.DEPLOYMENT}", "Values": [deployment]},
            {
                "Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped", "shutting-down"],
            },
        ]
    )
    for page in pages:
        for res in page["Reservations"]:
            ids += [i["InstanceId"] for i in res["Instances"]]
    return ids


def _teardown_instances(
    ec2: Any, deployment: str, wait_s: float, settle_s: float = 0.0
) -> list[str]:
    """Terminate the deployment's instances and wait for them. DescribeInstances lags
    RunInstances (seconds on AWS), so an instance launched just before the teardown may not be
    listed yet: it looks again until a look `settle_s` after the last terminations (or the
    first look) finds nothing more, and terminates what that finds too."""
    out: list[str] = []
    quiet_since = time.monotonic()
    while True:
        ids = [i for i in _live_instances(ec2, deployment) if i not in out]
        if ids:
            ec2.terminate_instances(InstanceIds=ids)
            delay = 5 if wait_s >= 30 else 1
            ec2.get_waiter("instance_terminated").wait(
                InstanceIds=ids,
                WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(wait_s // delay))},
            )
            out += ids
            quiet_since = time.monotonic()
            continue
        left = settle_s - (time.monotonic() - quiet_since)
        if left <= 0:
            return out
        time.sleep(min(1.0, left))


def _teardown_notices(c: Clients, deployment: str) -> list[str]:
    from hybridserve.aws.spot import teardown_notice_queue

    return teardown_notice_queue(service_client(c, "sqs"), service_client(c, "events"), deployment)


def _teardown_async(c: Clients, deployment: str) -> list[str]:
    from hybridserve.aws.async_resources import teardown_async

    return teardown_async((service_client(c, "sqs"), service_client(c, "sns")), deployment)


def _role_filter(role: str | None) -> list[dict[str, Any]]:
    return [] if role is None else [{"Name": f"tag:{T.ROLE}", "Values": [role]}]


def _teardown_templates(ec2: Any, deployment: str, role: str | None = None) -> list[str]:
    """The deployment's launch templates (only those of `role` when given)."""
    found: dict[str, str] = {}
    flts = [[{"Name": f"tag:{T.DEPLOYMENT}", "Values": [deployment]}, *_role_filter(role)]]
    if role is None:
        flts.append([{"Name": "launch-template-name", "Values": [template_name(deployment)]}])
    for flt in flts:
        for page in ec2.get_paginator("describe_launch_templates").paginate(Filters=flt):
            for lt in page["LaunchTemplates"]:
                found[lt["LaunchTemplateId"]] = lt["LaunchTemplateName"]
    out = []
    for lt_id, name in found.items():
        try:
            ec2.delete_launch_template(LaunchTemplateId=lt_id)
            out.append(name)
        except ClientError as e:
            if not is_missing(e):
                raise
    return out


def _delete_provisioned_configs(lam: Any, name: str) -> None:
    """Release provisioned concurrency explicitly before the function goes: it is billed while
    allocated, and DeleteFunction's documentation does not promise to release it first."""
    try:
        pages = lam.get_paginator("list_provisioned_concurrency_configs").paginate(
            FunctionName=name
        )
        arns = [p["FunctionArn"] for page in pages for p in page["ProvisionedConcurrencyConfigs"]]
    except ClientError as e:
        if is_missing(e):  # no such function (or an emulator without the API)
            return
        raise
    for arn in arns:
        try:
            lam.delete_provisioned_concurrency_config(
                FunctionName=name, Qualifier=arn.rsplit(":", 1)[1]
            )
        except ClientError as e:
            if not is_missing(e):
                raise


def _teardown_functions(lam: Any, deployment: str) -> list[str]:
    names = {function_name(deployment)}
    for page in lam.get_paginator("list_functions").paginate():
        for fn in page["Functions"]:
            if fn["FunctionName"].startswith(f"hybridserve-{deployment}"):
                try:
                    t = lam.list_tags(Resource=fn["FunctionArn"]).get("Tags", {})
                except ClientError:
                    continue
                if t.get(T.DEPLOYMENT) == deployment:
                    names.add(fn["FunctionName"])
    out = []
    for name in sorted(names):
        _delete_provisioned_configs(lam, name)
        try:
            lam.delete_function(FunctionName=name)  # its versions and aliases go with it
            out.append(name)
        except ClientError as e:
            if not is_missing(e):
                raise
    return out


def _teardown_security_groups(
    ec2: Any, deployment: str, wait_s: float, role: str | None = None
) -> list[str]:
    groups = ec2.describe_security_groups(
        Filters=[{"Name": f"tag:{T.DEPLOYMENT}", "Values": [deployment]}, *_role_filter(role)]
    )["SecurityGroups"]
    out = []
    for sg in groups:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                ec2.delete_security_group(GroupId=sg["GroupId"])
                out.append(sg["GroupId"])
                break
            except ClientError as e:
                if is_missing(e):
                    break
                # ENIs of just-terminated instances release the group a little later
                if error_code(e) != "DependencyViolation" or time.monotonic() > deadline:
                    raise
                time.sleep(5)
    return out


def _teardown_iam(
    iam: Any, deployment: str, names: tuple[tuple[str, ...], tuple[str, ...]] | None = None
) -> tuple[list[str], list[str]]:
    """The instance profile(s), then the role(s): `names` ((profiles), (roles)), by default
    the model servers' profile and the Lambda and instance roles."""
    profiles, roles = [], []
    pnames, rnames = names or (
        (profile_name(deployment),),
        (lambda_role_name(deployment), instance_role_name(deployment)),
    )
    for pname in pnames:
        try:
            profile = iam.get_instance_profile(InstanceProfileName=pname)["InstanceProfile"]
        except ClientError as e:
            if not is_missing(e):
                raise
            continue
        for r in profile.get("Roles", []):
            iam.remove_role_from_instance_profile(InstanceProfileName=pname, RoleName=r["RoleName"])
        iam.delete_instance_profile(InstanceProfileName=pname)
        profiles.append(pname)
    for name in rnames:
        try:
            role = iam.get_role(RoleName=name)["Role"]
        except ClientError as e:
            if not is_missing(e):
                raise
            continue
        if T.as_dict(role.get("Tags")).get(T.DEPLOYMENT) not in (None, deployment):
            continue  # same name, someone else's: not ours to delete
        for p in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=p)
        for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=name, PolicyArn=p["PolicyArn"])
        for ip in iam.list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]:
            iam.remove_role_from_instance_profile(
                InstanceProfileName=ip["InstanceProfileName"], RoleName=name
            )
        iam.delete_role(RoleName=name)
        roles.append(name)
    return profiles, roles


def _deployment_buckets(s3: Any, deployment: str, extra: Iterable[str]) -> dict[str, bool]:
    """Buckets the deployment uses -> whether it created them (so may delete them)."""
    out = {b: False for b in extra}
    for b in s3.list_buckets().get("Buckets", []):
        name = b["Name"]
        try:
            tags = bucket_tags(s3, name)
        except ClientError:
            continue  # another region / no permission: not discoverable, pass it explicitly
        if tags.get(CREATED_BY) == deployment:
            out[name] = True
        elif tags.get(f"{ADOPTED_BY}:{deployment}") or tags.get(T.DEPLOYMENT) == deployment:
            out.setdefault(name, False)
    for name in list(out):
        if not out[name]:
            tags = _bucket_tags_or_none(s3, name)
            if tags is None:
                del out[name]
            else:
                out[name] = tags.get(CREATED_BY) == deployment
    return out


def _bucket_tags_or_none(s3: Any, bucket: str) -> dict[str, str] | None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as e:
        if is_missing(e):
            return None
        raise
    return bucket_tags(s3, bucket)


def _delete_keys(s3: Any, bucket: str, objs: list[dict[str, str]]) -> None:
    for i in range(0, len(objs), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": objs[i : i + 1000], "Quiet": True})


def _teardown_bucket(s3: Any, bucket: str, deployment: str, created: bool) -> list[str]:
    removed = []
    if created:  # everything goes, every version, then the bucket
        objs = []
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []):
                objs.append({"Key": v["Key"], "VersionId": v["VersionId"]})
                if v["Key"] not in removed:
                    removed.append(v["Key"])
            for v in page.get("DeleteMarkers", []):
                objs.append({"Key": v["Key"], "VersionId": v["VersionId"]})
        _delete_keys(s3, bucket, objs)
        return removed
    mine = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            try:
                t = T.as_dict(s3.get_object_tagging(Bucket=bucket, Key=o["Key"])["TagSet"])
            except ClientError as e:
                if is_missing(e):
                    continue
                raise
            if t.get(T.DEPLOYMENT) == deployment:
                mine.append(o["Key"])
    _delete_keys(s3, bucket, [{"Key": k} for k in mine])
    tags = bucket_tags(s3, bucket)
    adopted = f"{ADOPTED_BY}:{deployment}"
    if adopted in tags:
        rest = {k: v for k, v in tags.items() if k != adopted}
        if rest:
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": T.tag_list(rest)})
        else:
            s3.delete_bucket_tagging(Bucket=bucket)
    return mine


def _teardown_router_front(c: Clients, deployment: str, wait_s: float) -> dict[str, list[str]]:
    """The group (ForceDelete: its instances with it; waited for), then each load balancer's
    listeners, the load balancer and the target group, found by tags."""
    elb, asg = service_client(c, "elbv2"), service_client(c, "autoscaling")
    out: dict[str, list[str]] = {
        k: [] for k in ("auto_scaling_groups", "listeners", "load_balancers", "target_groups")
    }
    flt = [
        {"Name": f"tag:{T.DEPLOYMENT}", "Values": [deployment]},
        {"Name": f"tag:{T.ROLE}", "Values": [T.ROLE_ROUTER]},
    ]

    def groups() -> list[dict[str, Any]]:
        pages = asg.get_paginator("describe_auto_scaling_groups").paginate(Filters=flt)
        return [g for p in pages for g in p["AutoScalingGroups"]]

    for g in groups():
        if not g.get("Status"):  # not already being deleted
            try:
                asg.delete_auto_scaling_group(
                    AutoScalingGroupName=g["AutoScalingGroupName"], ForceDelete=True
                )
            except ClientError as e:
                if "not found" not in str(e).lower():
                    raise
        out["auto_scaling_groups"].append(g["AutoScalingGroupName"])
    if not until(lambda: not groups(), wait_s):
        raise TimeoutError(f"router group of {deployment} still deleting after {wait_s:g} s")
    out["listeners"], out["load_balancers"], out["target_groups"] = remove_balancers(
        elb, deployment, wait_s
    )
    return out


def teardown_routers(c: Clients, deployment: str, *, wait_s: float = 600) -> dict[str, list[str]]:
    """The router fleet alone (aws/routers.py), dependants first: the Auto Scaling group
    (ForceDelete: its instances go with it; waited for), the listeners, the load balancer, the
    target group, the router template, security group, profile and role. Run by `teardown`
    and by a deploy with `router.replicas: 0`; safe to run twice."""
    out = _teardown_router_front(c, deployment, wait_s)
    out["launch_templates"] = _teardown_templates(c.ec2, deployment, T.ROLE_ROUTER_TEMPLATE)
    out["security_groups"] = _teardown_security_groups(c.ec2, deployment, wait_s, T.ROLE_ROUTER_SG)
    name = router_name(deployment)
    out["instance_profiles"], out["roles"] = _teardown_iam(c.iam, deployment, ((name,), (name,)))
    return out


def teardown(
    session_or_clients: Any,
    deployment: str,
    *,
    region: str,
    buckets: Iterable[str] = (),
    wait_s: float = 600,
    settle_s: float = SETTLE_S,
) -> dict[str, list[str]]:
    """Remove everything of `deployment`, dependants first; returns what was removed per kind.

    Order: the router fleet (`teardown_routers`: its group, listeners, load balancer, target
    group, template, security group, profile and role) -> instances (terminated, waited for)
    -> launch templates -> the spot notice rule and queue, and the async job queues and topic
    (both listed under `notices`) -> Lambda function (its provisioned concurrency released
    first; versions and alias with it) -> security groups -> instance profile -> roles (inline
    and attached policies first) -> the deployment's S3 objects -> buckets it created.
    Instances are looked for until a look `settle_s` after the last finds none (describe lags
    launches; see `_teardown_instances`).
    Buckets are found by tag (`hybridserve:created-by` / `hybridserve:adopted-by:<deployment>`)
    among the account's buckets, plus `buckets` given explicitly. A bucket not created by the
    deployment keeps everything but the deployment's tagged objects. Safe to run twice.
    """
    c = as_clients(session_or_clients, region)
    out: dict[str, list[str]] = {k: [] for k in KINDS}
    for kind, removed in teardown_routers(c, deployment, wait_s=wait_s).items():
        out[kind] += removed
    out["instances"] = _teardown_instances(c.ec2, deployment, wait_s, settle_s)
    out["launch_templates"] += _teardown_templates(c.ec2, deployment)
    out["notices"] = _teardown_notices(c, deployment) + _teardown_async(c, deployment)
    out["functions"] = _teardown_functions(c.lam, deployment)
    out["security_groups"] += _teardown_security_groups(c.ec2, deployment, wait_s)
    profiles, roles = _teardown_iam(c.iam, deployment)
    out["instance_profiles"] += profiles
    out["roles"] += roles
    for bucket, created in sorted(_deployment_buckets(c.s3, deployment, buckets).items()):
        out["objects"] += [
            f"{bucket}/{k}" for k in _teardown_bucket(c.s3, bucket, deployment, created)
        ]
        if created:
            try:
                c.s3.delete_bucket(Bucket=bucket)
                out["buckets"].append(bucket)
            except ClientError as e:
                if not is_missing(e):
                    raise
    return out
