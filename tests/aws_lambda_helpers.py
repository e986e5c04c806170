"""The demo deployment the Lambda tests share: its names, IAM roles and function arguments
(tests/test_aws_lambda_*.py; they need boto3)."""

from __future__ import annotations

from typing import Any

from hybridserve.aws import resources as R

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
DEP = "demo"
FN = R.function_name(DEP)
BUCKET = "hs-demo-artifacts"
REPO_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/hybridserve-demo"
URI = f"{REPO_URI}:0123456789abcdef"


def demo_roles(c: R.Clients) -> dict[str, str]:
    return R.ensure_roles(
        c.iam, DEP, bucket=BUCKET, prefix="demo/artifact", region=REGION, account=ACCOUNT
    )


def function_args(roles: dict[str, str], **over: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        role_arn=roles["lambda_role_arn"],
        memory_mb=1024,
        timeout_s=30,
        ephemeral_mb=1024,
        reserved_concurrency=10,
        env={"HYBRIDSERVE_MODEL": "m"},
        package_type="Image",
        image_uri=URI,
        role_retry_delays=(),
        wait_s=4,
    )
    args.update(over)
    return args
