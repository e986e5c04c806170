"""Least-privilege IAM documents for a deployment: exact actions on exact resource ARNs.

The `*` resources are cloudwatch:PutMetricData, which AWS does not scope to resources (it is
narrowed by a condition on the metric namespace instead), and the EC2 Describe calls, which AWS
grants on `*` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hybridserve.aws import tags as T
from hybridserve.aws.spot import queue_name

# actions AWS only grants on Resource "*", each with the condition that narrows it (None: AWS
# has no resource or condition for it; the Describe calls read, and only read)
RESOURCE_STAR_ALLOWED: dict[str, str | None] = {
    "cloudwatch:PutMetricData": "cloudwatch:namespace",
    "ec2:DescribeInstances": None,
    "ec2:DescribeLaunchTemplates": None,
    "ec2:DescribeLaunchTemplateVersions": None,
}


# the tags the runtime writes on its own instances, and no others
FLEET_STATE_TAGS = (T.DRAINING, T.INTERRUPTED)


def metrics_namespace(deployment: str) -> str:
    return f"hybridserve/{deployment}"


def trust_policy(service: str) -> dict[str, Any]:
    """Who may assume the role: one AWS service principal (lambda or ec2)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": f"{service}.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def _artifact_read(bucket: str, prefix: str, partition: str) -> list[dict[str, Any]]:
    prefix = prefix.strip("/") + "/"
    return [
        {
            "Sid": "ReadArtifact",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [f"arn:{partition}:s3:::{bucket}/{prefix}*"],
        },
        {
            "Sid": "ListArtifact",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:{partition}:s3:::{bucket}"],
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
        },
    ]


def _names(function: str | Sequence[str]) -> list[str]:
    return [function] if isinstance(function, str) else list(function)


def lambda_role_policy(
    *,
    function: str | Sequence[str],
    bucket: str,
    prefix: str,
    region: str,
    account: str,
    partition: str = "aws",
) -> dict[str, Any]:
    """The spill function(s, one per model of a multi-model deployment): their own log
    groups, and reading the artifact."""
    groups = [
        f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{fn}"
        for fn in _names(function)
    ]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OwnLogGroup",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup"],
                "Resource": groups,
            },
            {
                "Sid": "OwnLogStreams",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [f"{g}:*" for g in groups],
            },
            *_artifact_read(bucket, prefix, partition),
        ],
    }


def instance_role_policy(
    *, deployment: str, bucket: str, prefix: str, partition: str = "aws"
) -> dict[str, Any]:
    """The model-server instances: read the artifact, nothing else (the model server publishes
    no CloudWatch metrics; the router and the controller do, on the runtime policy)."""
    return {"Version": "2012-10-17", "Statement": _artifact_read(bucket, prefix, partition)}


def runtime_policy(
    *,
    deployment: str,
    region: str,
    account: str,
    bucket: str,
    state_key: str,
    lease_key: str,
    function: str | Sequence[str],
    instance_role: str,
    template_id: str = "*",
    partition: str = "aws",
    notice_queue: str | None = None,
    manifest_key: str | None = None,
    arrivals_prefix: str | None = None,
    place_models: bool = False,
) -> dict[str, Any]:
    """What the router and the controller need at run time, and no more: describe the fleet;
    launch only tagged instances from the deployment's launch template and terminate only
    those; pass the instance role; find and invoke the spill function's alias; read and write
    the saved state and the lease; tag its own instances draining or interrupted; take spot
    notices from the deployment's queue; publish metrics in the deployment's namespace. With
    `manifest_key`, read the model's manifest (a router without the artifact at hand); with
    `arrivals_prefix` (`<prefix>/arrivals/`), write, read and list the router replicas'
    per-second arrival counts there. With `place_models` (a multi-model deployment), write
    and remove the model tags of its own instances (aws/placement.py). Nothing rewrites security groups, roles or the function:
    `deploy` does that once, on its own credentials."""
    arn = f"arn:{partition}"
    ec2 = f"{arn}:ec2:{region}:{account}"
    fns = f"{arn}:lambda:{region}:{account}:function"
    notice_queue = notice_queue or queue_name(deployment)
    tag = "aws:RequestTag/hybridserve:deployment"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DescribeFleet",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeInstances",
                    "ec2:DescribeLaunchTemplates",
                    "ec2:DescribeLaunchTemplateVersions",
                ],
                "Resource": ["*"],
            },
            {
                "Sid": "LaunchTagged",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances"],
                "Resource": [f"{ec2}:instance/*"],
                "Condition": {"StringEquals": {tag: deployment}},
            },
            {
                "Sid": "LaunchFromTemplate",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances"],
                "Resource": [
                    f"{ec2}:launch-template/{template_id}",
                    f"{ec2}:subnet/*",
                    f"{ec2}:network-interface/*",
                    f"{ec2}:security-group/*",
                    f"{ec2}:volume/*",
                    f"{arn}:ec2:{region}::image/*",
                ],
            },
            {
                "Sid": "TagAtLaunch",
                "Effect": "Allow",
                "Action": ["ec2:CreateTags"],
                "Resource": [f"{ec2}:instance/*", f"{ec2}:volume/*"],
                "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}},
            },
            {
                "Sid": "TerminateOwn",
                "Effect": "Allow",
                "Action": ["ec2:TerminateInstances"],
                "Resource": [f"{ec2}:instance/*"],
                "Condition": {
                    "StringEquals": {"aws:ResourceTag/hybridserve:deployment": deployment}
                },
            },
            {
                "Sid": "MarkOwnInstances",  # draining, interrupted: the fleet's state in tags
                "Effect": "Allow",
                "Action": ["ec2:CreateTags"],
                "Resource": [f"{ec2}:instance/*"],
                "Condition": {
                    "StringEquals": {"aws:ResourceTag/hybridserve:deployment": deployment},
                    "ForAllValues:StringEquals": {"aws:TagKeys": list(FLEET_STATE_TAGS)},
                },
            },
            *(
                [
                    {
                        "Sid": "PlaceModels",  # each shard's models, in its instances' tags
                        "Effect": "Allow",
                        "Action": ["ec2:CreateTags", "ec2:DeleteTags"],
                        "Resource": [f"{ec2}:instance/*"],
                        "Condition": {
                            "StringEquals": {"aws:ResourceTag/hybridserve:deployment": deployment},
                            "ForAllValues:StringLike": {"aws:TagKeys": [f"{T.MODEL_PREFIX}*"]},
                        },
                    }
                ]
                if place_models
                else []
            ),
            {
                "Sid": "SpotNotices",
                "Effect": "Allow",
                "Action": ["sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:DeleteMessage"],
                "Resource": [f"{arn}:sqs:{region}:{account}:{notice_queue}"],
            },
            {
                "Sid": "PassInstanceRole",
                "Effect": "Allow",
                "Action": ["iam:PassRole"],
                "Resource": [f"{arn}:iam::{account}:role/{instance_role}"],
                "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            },
            {
                "Sid": "InvokeSpill",
                "Effect": "Allow",
                "Action": ["lambda:InvokeFunction"],
                "Resource": [f"{fns}:{fn}:live" for fn in _names(function)],
            },
            {
                "Sid": "FindSpill",  # serve checks the alias is deployed before it starts
                "Effect": "Allow",
                "Action": ["lambda:GetAlias"],
                "Resource": [
                    r for fn in _names(function) for r in (f"{fns}:{fn}", f"{fns}:{fn}:live")
                ],
            },
            {
                "Sid": "ControllerState",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"],
                "Resource": [f"{arn}:s3:::{bucket}/{k}" for k in (state_key, lease_key)],
            },
            *_runtime_reads(arn, bucket, manifest_key, arrivals_prefix),
            {
                "Sid": "PublishMetrics",
                "Effect": "Allow",
                "Action": ["cloudwatch:PutMetricData"],
                "Resource": ["*"],
                "Condition": {
                    "StringEquals": {"cloudwatch:namespace": metrics_namespace(deployment)}
                },
            },
        ],
    }


def _runtime_reads(
    arn: str, bucket: str, manifest_key: str | None, arrivals_prefix: str | None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if manifest_key:
        out.append(
            {
                "Sid": "ReadManifest",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"{arn}:s3:::{bucket}/{manifest_key}"],
            }
        )
    if arrivals_prefix:
        prefix = arrivals_prefix.strip("/") + "/"
        out += [
            {
                # each replica's window, tagged so teardown finds it; the holder deletes a
                # window untouched for a day (aws/arrivals.py)
                "Sid": "ReplicaArrivals",
                "Effect": "Allow",
                "Action": [
                    "s3:DeleteObject",
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:PutObjectTagging",
                ],
                "Resource": [f"{arn}:s3:::{bucket}/{prefix}*"],
            },
            {
                "Sid": "ListArrivals",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"{arn}:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
            },
        ]
    return out


def least_privilege_problems(doc: dict[str, Any]) -> list[str]:
    """Wildcard actions, or `*` resources without the narrowing condition AWS allows."""
    problems = []
    for i, st in enumerate(doc.get("Statement", [])):
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        resources = st.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        for a in actions:
            if "*" in a:
                problems.append(f"statement {i}: wildcard action {a!r}")
        if "*" in resources:
            for a in actions:
                key = RESOURCE_STAR_ALLOWED.get(a, "")
                cond = st.get("Condition", {})
                if key == "":
                    problems.append(
                        f"statement {i}: {a} on Resource '*' (AWS allows a narrower one)"
                    )
                elif key is not None and not any(key in c for c in cond.values()):
                    problems.append(f"statement {i}: {a} on '*' without a {key} condition")
    return problems
