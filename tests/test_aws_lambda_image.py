"""Container-image Lambda functions: created from an image URI, idempotent, updated, refused a
switch of package type, torn down, and the build commands for the image (moto)."""

from __future__ import annotations

import re
from typing import Any

import pytest

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")


from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.aws import tags as T  # noqa: E402
from tests.aws_lambda_helpers import (  # noqa: E402
    ACCOUNT,
    BUCKET,
    DEP,
    FN,
    REGION,
    REPO_URI,
    URI,
    demo_roles,
    function_args,
)


def _zip_args(c: R.Clients, roles: dict[str, str]) -> dict[str, Any]:
    R.ensure_bucket(c.s3, BUCKET, DEP, REGION)
    key = "demo/lambda-1.zip"
    c.s3.put_object(Bucket=BUCKET, Key=key, Body=b"PK\x05\x06" + b"\0" * 18)
    return function_args(roles, package_type="Zip", image_uri=None, bucket=BUCKET, key=key)


def _versions(c: R.Clients) -> list[str]:
    return [v["Version"] for v in c.lam.list_versions_by_function(FunctionName=FN)["Versions"]]


def test_image_function_created_with_the_uri_then_idempotent_then_updated(aws):
    c = aws
    roles = demo_roles(c)
    first = R.ensure_function(
        c.lam, DEP, **function_args(roles, image_command=["lambda_handlers.h.h"])
    )
    fn = c.lam.get_function(FunctionName=FN)
    cfg = fn["Configuration"]
    assert cfg["PackageType"] == "Image" and fn["Code"]["ImageUri"] == URI
    assert cfg.get("Runtime") is None and cfg.get("Handler") is None  # the image's own CMD
    assert cfg["ImageConfigResponse"]["ImageConfig"]["Command"] == ["lambda_handlers.h.h"]
    assert cfg["Environment"]["Variables"] == {"HYBRIDSERVE_MODEL": "m"}  # no zip key
    assert c.lam.list_tags(Resource=first["function_arn"])["Tags"][T.DEPLOYMENT] == DEP
    assert first["package_type"] == "Image"
    alias = c.lam.get_alias(FunctionName=FN, Name=R.ALIAS)
    assert alias["FunctionVersion"] == first["version"]

    before = _versions(c)
    again = R.ensure_function(
        c.lam, DEP, **function_args(roles, image_command=["lambda_handlers.h.h"])
    )
    assert again == first and _versions(c) == before  # no update, no new version

    newer_uri = f"{REPO_URI}@sha256:{'ab' * 32}"
    newer = R.ensure_function(c.lam, DEP, **function_args(roles, image_uri=newer_uri))
    assert int(newer["version"]) > int(first["version"])
    assert c.lam.get_function(FunctionName=FN)["Code"]["ImageUri"] == newer_uri
    assert c.lam.get_alias(FunctionName=FN, Name=R.ALIAS)["FunctionVersion"] == newer["version"]
    assert R.ensure_function(c.lam, DEP, **function_args(roles, image_uri=newer_uri)) == newer


@pytest.mark.parametrize("first_type", ["Zip", "Image"])
def test_switching_package_type_is_refused_and_changes_nothing(aws, first_type):
    c = aws
    roles = demo_roles(c)
    zip_args, image_args = _zip_args(c, roles), function_args(roles)
    first, other = (zip_args, image_args) if first_type == "Zip" else (image_args, zip_args)
    R.ensure_function(c.lam, DEP, **first)
    before = (_versions(c), c.lam.get_function(FunctionName=FN)["Code"])
    with pytest.raises(R.PackageTypeChangeError) as err:
        R.ensure_function(c.lam, DEP, **other)
    msg = str(err.value)
    assert f"exists as a {first_type} function" in msg and "lambda.package" in msg
    assert "teardown" in msg and "another name" in msg
    assert (_versions(c), c.lam.get_function(FunctionName=FN)["Code"]) == before
    assert c.lam.get_function(FunctionName=FN)["Configuration"]["PackageType"] == first_type


def test_code_arguments_are_checked():
    with pytest.raises(ValueError, match="image_uri"):
        R.ensure_function(None, DEP, **function_args({"lambda_role_arn": "r"}, image_uri=None))
    with pytest.raises(ValueError, match="bucket and key"):
        R.ensure_function(None, DEP, **function_args({"lambda_role_arn": "r"}, package_type="Zip"))
    with pytest.raises(ValueError, match="Zip or Image"):
        R.ensure_function(
            None, DEP, **function_args({"lambda_role_arn": "r"}, package_type="image")
        )


def test_teardown_removes_an_image_function(aws):
    c = aws
    R.ensure_function(c.lam, DEP, **function_args(demo_roles(c)))
    removed = R.teardown(c, DEP, region=REGION, wait_s=5, settle_s=0)
    assert removed["functions"] == [FN] and c.lam.list_functions()["Functions"] == []
    assert R.teardown(c, DEP, region=REGION, wait_s=5, settle_s=0) == {k: [] for k in R.KINDS}


def test_build_commands_and_tag_follow_the_context(tmp_path):
    ctx = tmp_path / "lambda-image"
    (ctx / "lambda_handlers").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM x\n")
    (ctx / "lambda_handlers" / "handler.py").write_text("a = 1\n")
    tag = R.context_tag(ctx)
    assert re.fullmatch(r"[0-9a-f]{16}", tag) and R.context_tag(ctx) == tag
    (ctx / "lambda_handlers" / "handler.py").write_text("a = 2\n")
    assert R.context_tag(ctx) != tag  # new code, new tag, so ensure_function sees the change
    cmds = R.image_build_commands(ctx, URI, region=REGION)
    assert cmds[2] == f"docker build --platform linux/amd64 --provenance=false -t {URI} {ctx}"
    assert cmds[3] == f"docker push {URI}"
    assert "--repository-name hybridserve-demo " in cmds[0]
    assert cmds[1].endswith(f"--password-stdin {ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com")
    assert re.match(R.ECR_URI_PATTERN, URI) and R.ecr_region(URI) == REGION
