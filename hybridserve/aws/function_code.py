"""The spill function's code, as `ensure_function` takes it: the ECR image the config names, or
the zip built from the model's artifact (packaging decides whether it fits a zip), uploaded once
under a content-addressed key.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from hybridserve.aws import resources as R
from hybridserve.aws import tags as T
from hybridserve.config_base import ConfigError
from hybridserve.deployment import DeploymentConfig


def lambda_code(cfg: DeploymentConfig, c: R.Clients, account: str, artifact: str) -> dict[str, Any]:
    """ensure_function's code arguments: the ECR image, or the zip (of `artifact`'s runtime),
    uploaded to S3 under a content-addressed key (a new zip is a new key, so ensure_function
    sees the change; the same zip serving several models is uploaded once)."""
    lam = cfg.lambda_
    if lam.image_uri:
        if R.ecr_region(lam.image_uri) != cfg.region:
            raise ConfigError(
                f"lambda.image_uri: the image is in {R.ecr_region(lam.image_uri)} but the "
                f"function in {cfg.region}: Lambda pulls only from ECR in its own region"
            )
        return {
            "package_type": "Image",
            "image_uri": lam.image_uri,
            "image_command": lam.image_command,
        }
    zpath = lam.prebuilt_zip
    if zpath is None:
        from predictors.packaging import build_lambda_package

        out = Path(tempfile.mkdtemp(prefix="hybridserve-lambda-"))
        # image: a limit of 0 makes packaging write the container build context at any size
        force = {"limit_bytes": 0} if lam.package == "image" else {}
        pkg = build_lambda_package(artifact, out, include_artifact=False, **force)
        if pkg.kind != "zip":
            if lam.package == "zip":
                raise ConfigError(
                    f"lambda.package: zip, but the package does not fit a zip ({pkg.reason}); "
                    "set lambda.package to image or auto and give lambda.image_uri"
                )
            raise ConfigError(image_uri_missing(cfg, account, pkg.path, pkg.reason))
        zpath = pkg.path
    key = cfg.key(f"lambda-{R.file_sha256(zpath)[:16]}.zip")
    try:
        c.s3.head_object(Bucket=cfg.bucket, Key=key)  # content-addressed: present is current
    except ClientError as e:
        if not R.is_missing(e):
            raise
        tagging = T.object_tagging(cfg.name, R.ROLE_ARTIFACT)
        c.s3.upload_file(
            str(zpath),
            cfg.bucket,
            key,
            ExtraArgs={"ChecksumAlgorithm": "SHA256", "Tagging": tagging},
        )
    return {"package_type": "Zip", "bucket": cfg.bucket, "key": key}


def image_uri_missing(cfg: DeploymentConfig, account: str, context: Path, reason: str) -> str:
    """The error for an image function without lambda.image_uri: how to build and push it."""
    suffix = ".amazonaws.com.cn" if cfg.region.startswith("cn-") else ".amazonaws.com"
    uri = (
        f"{account}.dkr.ecr.{cfg.region}{suffix}/{R.image_repository(cfg.name)}"
        f":{R.context_tag(context)}"
    )
    why = (
        "lambda.package is image"
        if cfg.lambda_.package == "image"
        else f"lambda.package is auto and {reason}"
    )
    steps = "\n".join(f"  {cmd}" for cmd in R.image_build_commands(context, uri, region=cfg.region))
    return (
        f"lambda.image_uri: required for a container-image function ({why}). hybridserve does "
        f"not run Docker: build and push the image from the context written to {context}:\n"
        f"{steps}\nthen set `lambda.image_uri: {uri}` in the deployment config and deploy again"
    )
