"""IAM: the Lambda and instance roles, least privilege, and the instance profile."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from hybridserve.aws import iam as I
from hybridserve.aws import tags as T
from hybridserve.aws.shared import (
    INLINE_POLICY,
    ROLE_INSTANCE_PROFILE,
    ROLE_INSTANCE_ROLE,
    ROLE_LAMBDA_ROLE,
    function_name,
    instance_role_name,
    is_missing,
    lambda_role_name,
    profile_name,
)


def policy_doc(d: Any) -> Any:
    """Policy documents come back URL-encoded JSON strings or already-decoded dicts."""
    if isinstance(d, str):
        return json.loads(urllib.parse.unquote(d))
    return d


def _ensure_role(
    iam: Any, name: str, service: str, policy: dict[str, Any], tags: dict[str, str]
) -> str:
    trust = I.trust_policy(service)
    try:
        role = iam.get_role(RoleName=name)["Role"]
        if policy_doc(role.get("AssumeRolePolicyDocument")) != trust:
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
        if {k: v for k, v in T.as_dict(role.get("Tags")).items() if k in tags} != tags:
            iam.tag_role(RoleName=name, Tags=T.tag_list(tags))
    except ClientError as e:
        if not is_missing(e):
            raise
        role = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description=f"hybridserve {tags[T.DEPLOYMENT]} ({service})",
            Tags=T.tag_list(tags),
        )["Role"]
    current = None
    try:
        current = policy_doc(
            iam.get_role_policy(RoleName=name, PolicyName=INLINE_POLICY)["PolicyDocument"]
        )
    except ClientError as e:
        if not is_missing(e):
            raise
    if current != policy:
        iam.put_role_policy(
            RoleName=name, PolicyName=INLINE_POLICY, PolicyDocument=json.dumps(policy)
        )
    # only our inline policy: anything else on the role is drift from least privilege
    for other in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        if other != INLINE_POLICY:
            iam.delete_role_policy(RoleName=name, PolicyName=other)
    return role["Arn"]


def exact_read(bucket: str, keys: Sequence[str], sid: str = "ReadWheelhouse") -> dict[str, Any]:
    """s3:GetObject on exactly `keys` (no wildcard): what the instances fetch at boot."""
    if any("*" in k or "?" in k for k in keys):
        raise ValueError(f"{sid}: expected exact S3 keys, got a pattern in {list(keys)}")
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/{k}" for k in keys],
    }


def ensure_roles(
    iam: Any,
    deployment: str,
    *,
    bucket: str,
    prefix: str,
    region: str,
    account: str,
    read_keys: Sequence[str] = (),
    functions: Sequence[str] = (),
) -> dict[str, str]:
    """The Lambda role and the instance role (+ instance profile) of the deployment; the
    instance role also reads exactly `read_keys` (the wheelhouse the instances install).
    `functions`: the spill functions sharing the Lambda role (default: the deployment's one)."""
    lambda_arn = _ensure_role(
        iam,
        lambda_role_name(deployment),
        "lambda",
        I.lambda_role_policy(
            function=list(functions) or function_name(deployment),
            bucket=bucket,
            prefix=prefix,
            region=region,
            account=account,
        ),
        T.tags_for(deployment, ROLE_LAMBDA_ROLE),
    )
    instance_role = instance_role_name(deployment)
    instance_policy = I.instance_role_policy(deployment=deployment, bucket=bucket, prefix=prefix)
    if read_keys:
        instance_policy["Statement"] = [
            *instance_policy["Statement"],
            exact_read(bucket, read_keys),
        ]
    instance_arn = _ensure_role(
        iam,
        instance_role,
        "ec2",
        instance_policy,
        T.tags_for(deployment, ROLE_INSTANCE_ROLE),
    )
    profile_arn = ensure_instance_profile(
        iam, profile_name(deployment), instance_role, T.tags_for(deployment, ROLE_INSTANCE_PROFILE)
    )
    return {
        "lambda_role_arn": lambda_arn,
        "instance_role_arn": instance_arn,
        "instance_profile_arn": profile_arn,
    }


def ensure_instance_profile(iam: Any, name: str, role: str, tags: dict[str, str]) -> str:
    """The instance profile `name` holding exactly `role` (a profile holds one); its ARN."""
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except ClientError as e:
        if not is_missing(e):
            raise
        profile = iam.create_instance_profile(InstanceProfileName=name, Tags=T.tag_list(tags))[
            "InstanceProfile"
        ]
    held = [r["RoleName"] for r in profile.get("Roles", [])]
    for other in held:
        if other != role:
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=other)
    if role not in held:
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role)
    return profile["Arn"]
