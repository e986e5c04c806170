"""Idempotent, level-triggered managers for the AWS resources of one deployment.

Every `ensure_*` finds its resource first (by name, or by tags), creates it only when missing,
updates it when its configuration differs, and tags it with `tags_for(deployment, role)`, so each
is safe to run twice and after a crash. `teardown` finds everything tagged (or named) for the
deployment and removes it in dependency order; a second run removes nothing and raises nothing.

Resource names:
  bucket                 given by the caller; `hybridserve:created-by=<deployment>` if created here
  IAM roles              hybridserve-<deployment>-lambda, hybridserve-<deployment>-instance
  instance profile       hybridserve-<deployment>
  security group         hybridserve-<deployment>
  Lambda function        hybridserve-<deployment>-spill (alias `live`)
  ECR repository         hybridserve-<deployment> (image functions; made and pushed by the
                         user from the printed commands, never created nor removed here)
  launch template        hybridserve-<deployment> (made by `hybridserve.aws.ec2.Ec2Fleet`)
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from hybridserve.aws import iam as I
from hybridserve.aws import tags as T
from predictors.artifact import sha256_file


def _file_sha256(path: Path) -> str:
    return sha256_file(path)[0]


ROLE_BUCKET = "artifact-bucket"
ROLE_ARTIFACT = "artifact"
ROLE_LAMBDA_ROLE = "lambda-role"
ROLE_INSTANCE_ROLE = "instance-role"
ROLE_INSTANCE_PROFILE = "instance-profile"
ROLE_SECURITY_GROUP = "security-group"

CREATED_BY = "hybridserve:created-by"
ADOPTED_BY = "hybridserve:adopted-by"  # key suffix `:<deployment>`, on buckets adopted, not made
INLINE_POLICY = "hybridserve-inline"
ALIAS = "live"
RUNTIME = "python3.11"
HANDLER = "lambda_handlers.handler.handler"
CODE_KEY_ENV = "HYBRIDSERVE_CODE_KEY"

KINDS = (
    "instances",
    "launch_templates",
    "functions",
    "security_groups",
    "instance_profiles",
    "roles",
    "objects",
    "buckets",
)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _missing(e: ClientError) -> bool:
    code = _code(e)
    return (
        "NotFound" in code
        or code in {"NoSuchEntity", "NoSuchBucket", "NoSuchKey", "404", "NoSuchTagSet"}
        or _status(e) == 404
    )


def lambda_role_name(deployment: str) -> str:
    return f"hybridserve-{deployment}-lambda"


def instance_role_name(deployment: str) -> str:
    return f"hybridserve-{deployment}-instance"


def profile_name(deployment: str) -> str:
    return f"hybridserve-{deployment}"


def security_group_name(deployment: str) -> str:
    return f"hybridserve-{deployment}"


def function_name(deployment: str) -> str:
    return f"hybridserve-{deployment}-spill"


template_name = T.launch_template_name


# --------------------------------------------------------------------------- clients


@dataclass
class Clients:
    ec2: Any
    s3: Any
    iam: Any
    lam: Any


def client_config(region: str) -> Any:
    """botocore's adaptive retries with backoff and jitter (throttling, eventual consistency)."""
    from botocore.config import Config

    return Config(region_name=region, retries={"mode": "adaptive", "max_attempts": 10})


def clients(region: str, endpoint_url: str | None = None, session: Any = None) -> Clients:
    """boto3 clients of every service a deployment uses, with adaptive retries."""
    import boto3

    cfg = client_config(region)
    src = session or boto3

    def make(name: str) -> Any:
        return src.client(name, endpoint_url=endpoint_url, config=cfg)

    return Clients(ec2=make("ec2"), s3=make("s3"), iam=make("iam"), lam=make("lambda"))


# --------------------------------------------------------------------------- S3


def _bucket_tags(s3: Any, bucket: str) -> dict[str, str]:
    try:
        return T.as_dict(s3.get_bucket_tagging(Bucket=bucket).get("TagSet"))
    except ClientError as e:
        if _missing(e):
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
        if not _missing(e):
            raise  # 403: exists, owned by someone else
        args: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            s3.create_bucket(**args)
            created = True
        except ClientError as e2:
            if _code(e2) != "BucketAlreadyOwnedByYou":
                raise
        s3.get_waiter("bucket_exists").wait(
            Bucket=bucket, WaiterConfig={"Delay": 2, "MaxAttempts": 30}
        )
    tags = _bucket_tags(s3, bucket)
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
        digest = _file_sha256(path)
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            if head.get("Metadata", {}).get("sha256") == digest:
                continue
        except ClientError as e:
            if not _missing(e):
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


# --------------------------------------------------------------------------- IAM


def _doc(d: Any) -> Any:
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
        if _doc(role.get("AssumeRolePolicyDocument")) != trust:
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
        if {k: v for k, v in T.as_dict(role.get("Tags")).items() if k in tags} != tags:
            iam.tag_role(RoleName=name, Tags=T.tag_list(tags))
    except ClientError as e:
        if not _missing(e):
            raise
        role = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description=f"hybridserve {tags[T.DEPLOYMENT]} ({service})",
            Tags=T.tag_list(tags),
        )["Role"]
    current = None
    try:
        current = _doc(
            iam.get_role_policy(RoleName=name, PolicyName=INLINE_POLICY)["PolicyDocument"]
        )
    except ClientError as e:
        if not _missing(e):
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


def ensure_roles(
    iam: Any, deployment: str, *, bucket: str, prefix: str, region: str, account: str
) -> dict[str, str]:
    """The Lambda role and the instance role (+ instance profile) of the deployment."""
    lambda_arn = _ensure_role(
        iam,
        lambda_role_name(deployment),
        "lambda",
        I.lambda_role_policy(
            function=function_name(deployment),
            bucket=bucket,
            prefix=prefix,
            region=region,
            account=account,
        ),
        T.tags_for(deployment, ROLE_LAMBDA_ROLE),
    )
    instance_role = instance_role_name(deployment)
    instance_arn = _ensure_role(
        iam,
        instance_role,
        "ec2",
        I.instance_role_policy(deployment=deployment, bucket=bucket, prefix=prefix),
        T.tags_for(deployment, ROLE_INSTANCE_ROLE),
    )
    name = profile_name(deployment)
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except ClientError as e:
        if not _missing(e):
            raise
        profile = iam.create_instance_profile(
            InstanceProfileName=name,
            Tags=T.tag_list(T.tags_for(deployment, ROLE_INSTANCE_PROFILE)),
        )["InstanceProfile"]
    names = [r["RoleName"] for r in profile.get("Roles", [])]
    for other in names:
        if other != instance_role:  # a profile holds one role
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=other)
    if instance_role not in names:
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=instance_role)
    return {
        "lambda_role_arn": lambda_arn,
        "instance_role_arn": instance_arn,
        "instance_profile_arn": profile["Arn"],
    }


# --------------------------------------------------------------------------- security group


def _strip(perm: dict[str, Any]) -> dict[str, Any]:
    """An IpPermission from describe, in the shape revoke accepts (no empty lists)."""
    keys = ("IpProtocol", "FromPort", "ToPort", "IpRanges", "Ipv6Ranges", "PrefixListIds")
    out = {k: perm[k] for k in keys if perm.get(k) not in (None, [])}
    pairs = [
        {
            k: v
            for k, v in p.items()
            if k in ("GroupId", "UserId", "VpcId", "VpcPeeringConnectionId")
        }
        for p in perm.get("UserIdGroupPairs") or []
    ]
    if pairs:
        out["UserIdGroupPairs"] = pairs
    return out


def ensure_security_group(
    ec2: Any, deployment: str, *, vpc_id: str, port: int, router_cidr: str
) -> str:
    """Group `hybridserve-<deployment>` letting in ONLY tcp `port` from `router_cidr`.

    Any other ingress found (drift, hand edits) is revoked. Egress is left at the VPC default.
    """
    name = security_group_name(deployment)
    tags = T.tags_for(deployment, ROLE_SECURITY_GROUP)
    found = ec2.describe_security_groups(
        Filters=[
            {"Name": "group-name", "Values": [name]},
            {"Name": "vpc-id", "Values": [vpc_id]},
        ]
    )["SecurityGroups"]
    if found:
        sg = found[0]
        gid = sg["GroupId"]
        if {k: v for k, v in T.as_dict(sg.get("Tags")).items() if k in tags} != tags:
            ec2.create_tags(Resources=[gid], Tags=T.tag_list(tags))
        perms = sg.get("IpPermissions", [])
    else:
        gid = ec2.create_security_group(
            GroupName=name,
            Description=f"hybridserve {deployment}: model servers, router port only",
            VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": T.tag_list(tags)}],
        )["GroupId"]
        perms = []
    have = False
    revoke = []
    for perm in perms:
        p = _strip(perm)
        ours = (
            p.get("IpProtocol") == "tcp" and p.get("FromPort") == port and p.get("ToPort") == port
        )
        ranges = p.get("IpRanges", [])
        if ours and any(r.get("CidrIp") == router_cidr for r in ranges):
            have = True
            extra = [r for r in ranges if r.get("CidrIp") != router_cidr]
            if extra:
                p["IpRanges"] = extra
            else:
                p.pop("IpRanges", None)
        if any(k in p for k in ("IpRanges", "Ipv6Ranges", "PrefixListIds", "UserIdGroupPairs")):
            revoke.append(p)
    if revoke:
        ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=revoke)
    if not have:
        ec2.authorize_security_group_ingress(
            GroupId=gid,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": port,
                    "ToPort": port,
                    "IpRanges": [{"CidrIp": router_cidr, "Description": "hybridserve router"}],
                }
            ],
        )
    return gid


# --------------------------------------------------------------------------- Lambda


def _wait_updated(lam: Any, name: str, max_wait_s: float) -> None:
    attempts = max(1, int(max_wait_s // 2))
    # on timeout, let the next call fail loudly (ResourceConflictException) if not ready
    with contextlib.suppress(WaiterError):
        lam.get_waiter("function_updated_v2").wait(
            FunctionName=name, WaiterConfig={"Delay": 2, "MaxAttempts": attempts}
        )


def _retry_role_propagation(fn: Callable[[], Any], delays: Sequence[float]) -> Any:
    """A just-created IAM role takes seconds before Lambda may assume it."""
    for delay in (*delays, None):
        try:
            return fn()
        except ClientError as e:
            msg = str(e.response.get("Error", {}).get("Message", ""))
            if delay is None or not (
                _code(e) == "InvalidParameterValueException" and "assume" in msg.lower()
            ):
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


class PackageTypeChangeError(RuntimeError):
    """The function exists with the other package type (Zip vs Image): AWS cannot convert it."""


PACKAGE_TYPES = ("Zip", "Image")
ECR_URI_PATTERN = (
    r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[a-z0-9][a-z0-9._/-]*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$"
)


def ecr_region(image_uri: str) -> str:
    """The region of an ECR image URI (Lambda only pulls from its own region)."""
    return image_uri.split(".dkr.ecr.", 1)[1].split(".", 1)[0]


def image_repository(deployment: str) -> str:
    """The ECR repository the printed build commands push to."""
    return f"hybridserve-{deployment}"


def context_tag(context: str | Path) -> str:
    """A content hash of a container build context: a new image gets a new tag, so a changed
    image is a changed `Code.ImageUri` (a re-pushed `:latest` would not be seen)."""
    import hashlib

    root = Path(context)
    h = hashlib.sha256()
    for f in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(_file_sha256(f).encode() + b"\0")
    return h.hexdigest()[:16]


def image_build_commands(
    context: str | Path, image_uri: str, *, region: str, arch: str = "x86_64"
) -> list[str]:
    """The shell commands that build `context` (from predictors.packaging) and push it as
    `image_uri`. hybridserve never runs them: Docker is the user's tool, not a dependency."""
    registry, _, rest = image_uri.partition("/")
    repo = rest.split("@", 1)[0].split(":", 1)[0]
    platform = "linux/amd64" if arch == "x86_64" else "linux/arm64"
    return [
        f"aws ecr create-repository --repository-name {repo} --region {region}"
        "  # once; skip if it exists",
        f"aws ecr get-login-password --region {region} | "
        f"docker login --username AWS --password-stdin {registry}",
        # Lambda rejects the multi-manifest index that buildx writes with provenance on
        f"docker build --platform {platform} --provenance=false -t {image_uri} {context}",
        f"docker push {image_uri}",
    ]


def _provisioned(lam: Any, name: str, qualifier: str) -> dict[str, Any] | None:
    """The provisioned concurrency config of `name:qualifier`, None when there is none."""
    try:
        return lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier=qualifier)
    except ClientError as e:
        if _missing(e):  # ProvisionedConcurrencyConfigNotFoundException (404)
            return None
        raise


def ensure_provisioned_concurrency(
    lam: Any, name: str, count: int, *, qualifier: str = ALIAS
) -> bool:
    """Provisioned concurrency of `count` environments on `name:qualifier`; 0 removes it.

    Level-triggered: nothing is sent when the requested count already matches (a FAILED
    allocation is requested again). Allocation then takes minutes on AWS (Status IN_PROGRESS ->
    READY); that is not waited for. Returns whether anything was changed.
    """
    if count < 0:
        raise ValueError(f"provisioned concurrency must be >= 0 (got {count})")
    current = _provisioned(lam, name, qualifier)
    if count == 0:
        if current is None:
            return False
        try:
            lam.delete_provisioned_concurrency_config(FunctionName=name, Qualifier=qualifier)
        except ClientError as e:
            if not _missing(e):
                raise
        return True
    if (
        current is not None
        and current.get("RequestedProvisionedConcurrentExecutions") == count
        and current.get("Status") != "FAILED"
    ):
        return False
    lam.put_provisioned_concurrency_config(
        FunctionName=name, Qualifier=qualifier, ProvisionedConcurrentExecutions=count
    )
    return True


def ensure_function(
    lam: Any,
    deployment: str,
    *,
    role_arn: str,
    bucket: str | None = None,
    key: str | None = None,
    memory_mb: int,
    timeout_s: int,
    ephemeral_mb: int,
    reserved_concurrency: int,
    env: Mapping[str, str],
    package_type: str = "Zip",
    image_uri: str | None = None,
    image_command: Sequence[str] | None = None,
    provisioned_concurrency: int = 0,
    role_retry_delays: Sequence[float] = (2, 4, 8, 8, 8),
    wait_s: float = 120,
) -> dict[str, str]:
    """The spill function, at `live` alias -> a published version of the desired config.

    Zip: code from `s3://bucket/key`, compared through the `HYBRIDSERVE_CODE_KEY` env var (the
    artifact key, which is content-addressed by the caller), not CodeSha256: a new zip under the
    SAME key is not seen. Image: code is `image_uri` (an ECR image in the function's region; no
    Runtime/Handler, the image's CMD is the handler unless `image_command` overrides it),
    compared with the function's `Code.ImageUri`: likewise, re-push under a new tag or use a
    digest. The execution role needs no ECR permission: Lambda pulls the image with the
    repository policy and the deployer's rights, at create/update time.
    An existing function of the other package type raises `PackageTypeChangeError`: AWS cannot
    change a function's package type, and deleting it here would drop traffic silently.
    Provisioned concurrency goes on the alias (0: none), reserved concurrency on the function.
    """
    if package_type not in PACKAGE_TYPES:
        raise ValueError(f"package_type must be Zip or Image (got {package_type!r})")
    image = package_type == "Image"
    if image and not image_uri:
        raise ValueError("an Image function needs image_uri (an ECR image URI)")
    if not image and not (bucket and key):
        raise ValueError("a Zip function needs bucket and key (its code in S3)")
    name = function_name(deployment)
    variables = {k: str(v) for k, v in env.items()}
    if not image:
        variables[CODE_KEY_ENV] = str(key)
    config: dict[str, Any] = {
        "Role": role_arn,
        "MemorySize": memory_mb,
        "Timeout": timeout_s,
        "EphemeralStorage": {"Size": ephemeral_mb},
        "Environment": {"Variables": variables},
    }
    if not image:
        config.update({"Handler": HANDLER, "Runtime": RUNTIME})
    elif image_command:
        config["ImageConfig"] = {"Command": list(image_command)}
    code: dict[str, str] = (
        {"ImageUri": str(image_uri)} if image else {"S3Bucket": str(bucket), "S3Key": str(key)}
    )
    tags = T.tags_for(deployment, T.ROLE_LAMBDA)
    changed = False
    try:
        current = lam.get_function(FunctionName=name)
    except ClientError as e:
        if not _missing(e):
            raise
        current = None
    if current is None:
        created = _retry_role_propagation(
            lambda: lam.create_function(
                FunctionName=name,
                PackageType=package_type,
                Code=code,
                Description=f"hybridserve {deployment} spill",
                Tags=tags,
                Publish=False,
                **config,
            ),
            role_retry_delays,
        )
        arn = created["FunctionArn"]
        changed = True
        with contextlib.suppress(WaiterError):
            lam.get_waiter("function_active_v2").wait(
                FunctionName=name,
                WaiterConfig={"Delay": 2, "MaxAttempts": max(1, int(wait_s // 2))},
            )
    else:
        cfg = current["Configuration"]
        arn = cfg["FunctionArn"]
        have_type = cfg.get("PackageType") or "Zip"
        if have_type != package_type:
            raise PackageTypeChangeError(
                f"function {name} exists as a {have_type} function and the deployment now asks "
                f"for {package_type} (lambda.package); AWS cannot change a function's package "
                f"type. Run `hybridserve teardown` for deployment {deployment!r} first, or "
                "deploy under another name"
            )
        have_vars = (cfg.get("Environment") or {}).get("Variables") or {}
        if image:
            if (current.get("Code") or {}).get("ImageUri") != image_uri:
                _wait_updated(lam, name, wait_s)
                lam.update_function_code(FunctionName=name, ImageUri=image_uri)
                changed = True
        elif have_vars.get(CODE_KEY_ENV) != key:
            _wait_updated(lam, name, wait_s)
            lam.update_function_code(FunctionName=name, S3Bucket=bucket, S3Key=key)
            changed = True
        have: dict[str, Any] = {
            "Role": cfg.get("Role"),
            "MemorySize": cfg.get("MemorySize"),
            "Timeout": cfg.get("Timeout"),
            "EphemeralStorage": {"Size": (cfg.get("EphemeralStorage") or {}).get("Size", 512)},
            "Environment": {"Variables": have_vars},
        }
        if not image:
            have.update({"Handler": cfg.get("Handler"), "Runtime": cfg.get("Runtime")})
        elif "ImageConfig" in config:
            image_cfg = (cfg.get("ImageConfigResponse") or {}).get("ImageConfig") or {}
            have["ImageConfig"] = {"Command": list(image_cfg.get("Command") or [])}
        if have != config:
            _wait_updated(lam, name, wait_s)
            _retry_role_propagation(
                lambda: lam.update_function_configuration(FunctionName=name, **config),
                role_retry_delays,
            )
            changed = True
        have_tags = current.get("Tags") or {}
        if {k: v for k, v in have_tags.items() if k in tags} != tags:
            lam.tag_resource(Resource=arn, Tags=tags)
    arn = arn.split(":function:")[0] + f":function:{name}"  # unqualified

    alias = None
    try:
        alias = lam.get_alias(FunctionName=name, Name=ALIAS)
    except ClientError as e:
        if not _missing(e):
            raise
    if changed or alias is None:
        _wait_updated(lam, name, wait_s)
        version = lam.publish_version(FunctionName=name)["Version"]
    else:
        version = alias["FunctionVersion"]
    if alias is None:
        alias = lam.create_alias(
            FunctionName=name,
            Name=ALIAS,
            FunctionVersion=version,
            Description="hybridserve: current spill version",
        )
    elif alias["FunctionVersion"] != version:
        alias = lam.update_alias(FunctionName=name, Name=ALIAS, FunctionVersion=version)

    # AWS keeps provisioned <= reserved concurrency: lower provisioned before changing
    # reserved, raise it after
    have_pc = (_provisioned(lam, name, ALIAS) or {}).get(
        "RequestedProvisionedConcurrentExecutions", 0
    )
    lower_first = provisioned_concurrency < have_pc
    if lower_first:
        ensure_provisioned_concurrency(lam, name, provisioned_concurrency)
    try:
        conc = lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
    except ClientError as e:
        if not _missing(e):
            raise
        conc = None
    if conc != reserved_concurrency:
        lam.put_function_concurrency(
            FunctionName=name, ReservedConcurrentExecutions=reserved_concurrency
        )
    if not lower_first:
        ensure_provisioned_concurrency(lam, name, provisioned_concurrency)
    return {
        "function_arn": arn,
        "version": str(version),
        "alias_arn": alias["AliasArn"],
        "package_type": package_type,
        "provisioned_concurrency": str(provisioned_concurrency),
    }


# --------------------------------------------------------------------------- teardown


def _as_clients(session_or_clients: Any, region: str) -> Clients:
    if isinstance(session_or_clients, Clients):
        return session_or_clients
    if all(hasattr(session_or_clients, k) for k in ("ec2", "s3", "iam", "lam")):
        c = session_or_clients
        return Clients(ec2=c.ec2, s3=c.s3, iam=c.iam, lam=c.lam)
    return clients(region, session=session_or_clients)  # a boto3.Session (or None)


def _teardown_instances(ec2: Any, deployment: str, wait_s: float) -> list[str]:
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
    if not ids:
        return []
    ec2.terminate_instances(InstanceIds=ids)
    delay = 5 if wait_s >= 30 else 1
    ec2.get_waiter("instance_terminated").wait(
        InstanceIds=ids,
        WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(wait_s // delay))},
    )
    return ids


def _teardown_templates(ec2: Any, deployment: str) -> list[str]:
    found: dict[str, str] = {}
    for flt in (
        {"Name": f"tag:{T.DEPLOYMENT}", "Values": [deployment]},
        {"Name": "launch-template-name", "Values": [template_name(deployment)]},
    ):
        for page in ec2.get_paginator("describe_launch_templates").paginate(Filters=[flt]):
            for lt in page["LaunchTemplates"]:
                found[lt["LaunchTemplateId"]] = lt["LaunchTemplateName"]
    out = []
    for lt_id, name in found.items():
        try:
            ec2.delete_launch_template(LaunchTemplateId=lt_id)
            out.append(name)
        except ClientError as e:
            if not _missing(e):
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
        if _missing(e):  # no such function (or an emulator without the API)
            return
        raise
    for arn in arns:
        try:
            lam.delete_provisioned_concurrency_config(
                FunctionName=name, Qualifier=arn.rsplit(":", 1)[1]
            )
        except ClientError as e:
            if not _missing(e):
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
            if not _missing(e):
                raise
    return out


def _teardown_security_groups(ec2: Any, deployment: str, wait_s: float) -> list[str]:
    groups = ec2.describe_security_groups(
        Filters=[{"Name": f"tag:{T.DEPLOYMENT}", "Values": [deployment]}]
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
                if _missing(e):
                    break
                # ENIs of just-terminated instances release the group a little later
                if _code(e) != "DependencyViolation" or time.monotonic() > deadline:
                    raise
                time.sleep(5)
    return out


def _teardown_iam(iam: Any, deployment: str) -> tuple[list[str], list[str]]:
    profiles, roles = [], []
    pname = profile_name(deployment)
    try:
        profile = iam.get_instance_profile(InstanceProfileName=pname)["InstanceProfile"]
    except ClientError as e:
        if not _missing(e):
            raise
        profile = None
    if profile is not None:
        for r in profile.get("Roles", []):
            iam.remove_role_from_instance_profile(InstanceProfileName=pname, RoleName=r["RoleName"])
        iam.delete_instance_profile(InstanceProfileName=pname)
        profiles.append(pname)
    for name in (lambda_role_name(deployment), instance_role_name(deployment)):
        try:
            role = iam.get_role(RoleName=name)["Role"]
        except ClientError as e:
            if not _missing(e):
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
            tags = _bucket_tags(s3, name)
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
        if _missing(e):
            return None
        raise
    return _bucket_tags(s3, bucket)


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
                if _missing(e):
                    continue
                raise
            if t.get(T.DEPLOYMENT) == deployment:
                mine.append(o["Key"])
    _delete_keys(s3, bucket, [{"Key": k} for k in mine])
    tags = _bucket_tags(s3, bucket)
    adopted = f"{ADOPTED_BY}:{deployment}"
    if adopted in tags:
        rest = {k: v for k, v in tags.items() if k != adopted}
        if rest:
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": T.tag_list(rest)})
        else:
            s3.delete_bucket_tagging(Bucket=bucket)
    return mine


def teardown(
    session_or_clients: Any,
    deployment: str,
    *,
    region: str,
    buckets: Iterable[str] = (),
    wait_s: float = 600,
) -> dict[str, list[str]]:
    """Remove everything of `deployment`, dependants first; returns what was removed per kind.

    Order: instances (terminated, waited for) -> launch templates -> Lambda function (its
    provisioned concurrency released first; versions and alias with it) -> security groups -> instance profile -> roles (inline and
    attached policies first) -> the deployment's S3 objects -> buckets it created.
    Buckets are found by tag (`hybridserve:created-by` / `hybridserve:adopted-by:<deployment>`)
    among the account's buckets, plus `buckets` given explicitly. A bucket not created by the
    deployment keeps everything but the deployment's tagged objects. Safe to run twice.
    """
    c = _as_clients(session_or_clients, region)
    out: dict[str, list[str]] = {k: [] for k in KINDS}
    out["instances"] = _teardown_instances(c.ec2, deployment, wait_s)
    out["launch_templates"] = _teardown_templates(c.ec2, deployment)
    out["functions"] = _teardown_functions(c.lam, deployment)
    out["security_groups"] = _teardown_security_groups(c.ec2, deployment, wait_s)
    out["instance_profiles"], out["roles"] = _teardown_iam(c.iam, deployment)
    for bucket, created in sorted(_deployment_buckets(c.s3, deployment, buckets).items()):
        out["objects"] += [
            f"{bucket}/{k}" for k in _teardown_bucket(c.s3, bucket, deployment, created)
        ]
        if created:
            try:
                c.s3.delete_bucket(Bucket=bucket)
                out["buckets"].append(bucket)
            except ClientError as e:
                if not _missing(e):
                    raise
    return out
