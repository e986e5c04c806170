"""Idempotent, level-triggered managers for the AWS resources of one deployment, one module per
resource (`bucket`, `roles`, `network`, `function`, `teardown`, and `shared` for clients and
names); this module re-exports them, so callers name every resource in one place.

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

from hybridserve.aws.bucket import (
    artifact_key,
    bucket_tags,
    ensure_bucket,
    file_sha256,
    upload_artifact,
)
from hybridserve.aws.function import (
    PACKAGE_TYPES,
    PackageTypeChangeError,
    context_tag,
    ecr_region,
    ensure_function,
    ensure_provisioned_concurrency,
    image_build_commands,
    image_repository,
)
from hybridserve.aws.network import ensure_security_group
from hybridserve.aws.roles import (
    ensure_roles,
    policy_doc,
)
from hybridserve.aws.shared import (
    ADOPTED_BY,
    ALIAS,
    CODE_KEY_ENV,
    CREATED_BY,
    HANDLER,
    INLINE_POLICY,
    KINDS,
    ROLE_ARTIFACT,
    ROLE_BUCKET,
    ROLE_INSTANCE_PROFILE,
    ROLE_INSTANCE_ROLE,
    ROLE_LAMBDA_ROLE,
    ROLE_SECURITY_GROUP,
    RUNTIME,
    Clients,
    as_clients,
    client_config,
    clients,
    error_code,
    function_name,
    http_status,
    instance_role_name,
    is_missing,
    lambda_role_name,
    profile_name,
    security_group_name,
    template_name,
)
from hybridserve.aws.teardown import teardown
from hybridserve.deployment import ECR_URI_PATTERN

__all__ = [
    "ADOPTED_BY",
    "ALIAS",
    "CODE_KEY_ENV",
    "CREATED_BY",
    "Clients",
    "ECR_URI_PATTERN",
    "HANDLER",
    "INLINE_POLICY",
    "KINDS",
    "PACKAGE_TYPES",
    "PackageTypeChangeError",
    "ROLE_ARTIFACT",
    "ROLE_BUCKET",
    "ROLE_INSTANCE_PROFILE",
    "ROLE_INSTANCE_ROLE",
    "ROLE_LAMBDA_ROLE",
    "ROLE_SECURITY_GROUP",
    "RUNTIME",
    "artifact_key",
    "as_clients",
    "bucket_tags",
    "client_config",
    "clients",
    "context_tag",
    "ecr_region",
    "ensure_bucket",
    "ensure_function",
    "ensure_provisioned_concurrency",
    "ensure_roles",
    "ensure_security_group",
    "error_code",
    "file_sha256",
    "function_name",
    "http_status",
    "image_build_commands",
    "image_repository",
    "instance_role_name",
    "is_missing",
    "lambda_role_name",
    "policy_doc",
    "profile_name",
    "security_group_name",
    "teardown",
    "template_name",
    "upload_artifact",
]
