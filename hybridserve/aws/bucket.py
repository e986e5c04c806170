"""The artifact bucket (found or created, encrypted, public access blocked) and the artifact's
objects in it, uploaded only when their content changed."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from hybridserve.aws import tags as T
from hybridserve.aws.shared import (
    ADOPTED_BY,
    CREATED_BY,
    ROLE_ARTIFACT,
    ROLE_BUCKET,
    error_code,
    is_missing,
)
from predictors.artifact import sha256_file


def file_sha256(path: Path) -> str:
    return sha256_file(path)[0]


def bucket_tags(s3: Any, bucket: str) -> dict[str, str]:
    try:
        return T.as_dict(s3.get_bucket_tagging(Bucket=bucket).get("TagSet"))
    except ClientError as e:
        if is_missing(e):
            return {}
        raise


def ensure_bucket(s3: Any, bucket: str, deployment: str, region: str) -> bool:
    """The artifact bucket: private, encrypted (SSE-S3). True when this call created it.

    A bucket that already exists is adopted: it gets the public access block and default
    encryption, and an `hybridserve:adopted-by:<deployment>` tag (merged into its tags) so
    `teardown` can find the deployment's objects in it, but it is never tagged as created by
    the deployment, so teardown leaves it in place.
    """
    created = False
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as e:
        if not is_missing(e):
            raise  # 403: exists, owned by someone else
        args: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            s3.create_bucket(**args)
            created = True
        except ClientError as e2:
            if error_code(e2) != "BucketAlreadyOwnedByYou":
                raise
        s3.get_waiter("bucket_exists").wait(
            Bucket=bucket, WaiterConfig={"Delay": 2, "MaxAttempts": 30}
        )
    tags = bucket_tags(s3, bucket)
    if created or tags.get(CREATED_BY) == deployment:
        want = {**tags, **T.tags_for(deployment, ROLE_BUCKET, **{"created-by": deployment})}
    else:
        want = {**tags, f"{ADOPTED_BY}:{deployment}": "true"}
    if want != tags:
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": T.tag_list(want)})
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    return created


def artifact_key(prefix: str, rel: str) -> str:
    p = prefix.strip("/")
    return f"{p}/{rel}" if p else rel


def upload_artifact(
    s3: Any, bucket: str, prefix: str, artifact_dir: str | Path, deployment: str
) -> list[str]:
    """Upload every file under `artifact_dir` to `<prefix>/<relative path>`; returns the keys
    uploaded by this call. A file whose object already carries the same `sha256` metadata is
    skipped. Objects get an S3-verified SHA-256 checksum and the deployment's tags.

    Uses single-request put_object: each file must be under 5 GB.
    """
    root = Path(artifact_dir)
    if not root.is_dir():
        raise NotADirectoryError(str(root))
    tagging = urllib.parse.urlencode(T.tags_for(deployment, ROLE_ARTIFACT))
    uploaded = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = artifact_key(prefix, path.relative_to(root).as_posix())
        digest = file_sha256(path)
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            if head.get("Metadata", {}).get("sha256") == digest:
                continue
        except ClientError as e:
            if not is_missing(e):
                raise
        with path.open("rb") as body:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ChecksumAlgorithm="SHA256",
                Metadata={"sha256": digest},
                Tagging=tagging,
            )
        uploaded.append(key)
    return uploaded
