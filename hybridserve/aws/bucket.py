"""The artifact bucket (found or created, encrypted, public access blocked, TLS only) and the
artifact's objects in it, uploaded only when their content changed."""

from __future__ import annotations

import json
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
    """The artifact bucket: private, encrypted (SSE-S3), and versioned when created here.
    True when this call created it.

    A bucket that already exists is adopted: it gets the public access block, default
    encryption if it had none (an SSE-KMS bucket keeps its key), the TLS-only statement merged
    into its bucket policy (its other statements kept), and an
    `hybridserve:adopted-by:<deployment>` tag (merged into its tags) so `teardown` can find the
    deployment's objects in it, but it is never tagged as created by the deployment, so
    teardown leaves it in place.
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
    _ensure_encryption(s3, bucket)
    _ensure_tls_only(s3, bucket)
    if created:  # an overwritten or deleted artifact stays recoverable; teardown removes all
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return created


def _ensure_encryption(s3: Any, bucket: str) -> None:
    """SSE-S3 by default, unless the bucket already has default encryption: an adopted
    bucket's SSE-KMS (its owner's key) is never downgraded."""
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
        if rules.get("Rules"):
            return
    except ClientError as e:
        if error_code(e) != "ServerSideEncryptionConfigurationNotFoundError":
            raise
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )


TLS_ONLY_SID = "HybridserveTlsOnly"  # IAM's Sid grammar: letters and digits only


def tls_only_statement(bucket: str, partition: str = "aws") -> dict[str, Any]:
    """Deny every request to the bucket and its objects that did not come over TLS: AWS's
    documented pattern, and the one place a wildcard action belongs (it only takes away)."""
    return {
        "Sid": TLS_ONLY_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:{partition}:s3:::{bucket}", f"arn:{partition}:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def _canonical(statement: dict[str, Any]) -> dict[str, Any]:
    """A statement as S3 may hand it back: one-item lists and the `*` principal spelled out."""
    out = dict(statement)
    for k in ("Action", "Resource"):
        if isinstance(out.get(k), str):
            out[k] = [out[k]]
    if out.get("Principal") == "*":
        out["Principal"] = {"AWS": "*"}
    return out


def _ensure_tls_only(s3: Any, bucket: str) -> None:
    """Our TLS-only statement (found by its Sid) in the bucket policy, merged into the policy an
    adopted bucket already has; put only when it is missing or differs."""
    want = tls_only_statement(bucket)
    try:
        doc = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except ClientError as e:
        if error_code(e) != "NoSuchBucketPolicy":
            raise
        doc = {"Version": "2012-10-17", "Statement": []}
    statements = doc.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    ours = [st for st in statements if st.get("Sid") == TLS_ONLY_SID]
    if [_canonical(st) for st in ours] == [_canonical(want)]:
        return
    others = [st for st in statements if st.get("Sid") != TLS_ONLY_SID]
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({**doc, "Statement": [*others, want]}))


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
    tagging = T.object_tagging(deployment, ROLE_ARTIFACT)
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
