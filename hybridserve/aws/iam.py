"""Least-privilege IAM documents for a deployment: exact actions on exact resource ARNs.

The one `*` resource is cloudwatch:PutMetricData, which AWS does not scope to resources; it is
narrowed by a condition on the metric namespace instead.
"""

from __future__ import annotations

from typing import Any

# actions AWS only grants on Resource "*", each with the condition that narrows it
RESOURCE_STAR_ALLOWED = {"cloudwatch:PutMetricData": "cloudwatch:namespace"}


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


def lambda_role_policy(
    *, function: str, bucket: str, prefix: str, region: str, account: str, partition: str = "aws"
) -> dict[str, Any]:
    """The spill function: its own log group, and reading its artifact."""
    group = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{function}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OwnLogGroup",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup"],
                "Resource": [group],
            },
            {
                "Sid": "OwnLogStreams",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [f"{group}:*"],
            },
            *_artifact_read(bucket, prefix, partition),
        ],
    }


def instance_role_policy(
    *, deployment: str, bucket: str, prefix: str, partition: str = "aws"
) -> dict[str, Any]:
    """The model-server instances: read the artifact, publish metrics in their own namespace."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            *_artifact_read(bucket, prefix, partition),
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
                key = RESOURCE_STAR_ALLOWED.get(a)
                cond = st.get("Condition", {})
                if key is None:
                    problems.append(
                        f"statement {i}: {a} on Resource '*' (AWS allows a narrower one)"
                    )
                elif not any(key in c for c in cond.values()):
                    problems.append(f"statement {i}: {a} on '*' without a {key} condition")
    return problems
