"""The spill function: zip or container image, its alias, and provisioned concurrency."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from hybridserve.aws import tags as T
from hybridserve.aws.bucket import file_sha256
from hybridserve.aws.shared import (
    ALIAS,
    CODE_KEY_ENV,
    HANDLER,
    RUNTIME,
    error_code,
    function_name,
    is_missing,
    retry_while_propagating,
)


def _wait_updated(lam: Any, name: str, max_wait_s: float) -> None:
    attempts = max(1, int(max_wait_s // 2))
    # on timeout, let the next call fail loudly (ResourceConflictException) if not ready
    with contextlib.suppress(WaiterError):
        lam.get_waiter("function_updated_v2").wait(
            FunctionName=name, WaiterConfig={"Delay": 2, "MaxAttempts": attempts}
        )


def _role_not_assumable_yet(e: ClientError) -> bool:
    """A just-created IAM role takes seconds before Lambda may assume it."""
    msg = str(e.response.get("Error", {}).get("Message", ""))
    return error_code(e) == "InvalidParameterValueException" and "assume" in msg.lower()


def _retry_role_propagation(fn: Callable[[], Any], delays: Sequence[float]) -> Any:
    return retry_while_propagating(fn, delays, _role_not_assumable_yet)


class PackageTypeChangeError(RuntimeError):
    """The function exists with the other package type (Zip vs Image): AWS cannot convert it."""


PACKAGE_TYPES = ("Zip", "Image")


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
        h.update(file_sha256(f).encode() + b"\0")
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
        if is_missing(e):  # ProvisionedConcurrencyConfigNotFoundException (404)
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
            if not is_missing(e):
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
    model: str | None = None,
) -> dict[str, str]:
    """The spill function (`model`'s, in a multi-model deployment), at `live` alias -> a
    published version of the desired config.

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
    name = function_name(deployment, model)
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
        if not is_missing(e):
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
        if not is_missing(e):
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
        if not is_missing(e):
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
