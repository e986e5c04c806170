"""The Lambda fields of a deployment config (package, image_uri, provisioned concurrency,
keep-warm) and what deploy does with an image function."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")


from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.config import ConfigError  # noqa: E402
from tests.aws_lambda_helpers import BUCKET, DEP, FN, REGION, REPO_URI, URI  # noqa: E402
from tests.wheel_helpers import offline_wheelhouse  # noqa: E402


@pytest.fixture
def offline(monkeypatch) -> str:
    """The `ec2` section that makes deploy ship a wheelhouse offline (aws/wheelhouse.py)."""
    cache, wheel, links = offline_wheelhouse()
    monkeypatch.setenv("HYBRIDSERVE_CACHE_DIR", str(cache))
    return f"{{wheel: '{wheel}', find_links: '{links}'}}"


def _load(tmp_path: Path, lam: str, ec2: str = "{}") -> Any:
    from hybridserve.deployment import load_deployment

    (tmp_path / "art").mkdir(exist_ok=True)
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(
        f"name: {DEP}\nartifact: art\nbucket: {BUCKET}\nlambda: {lam}\nfleet: {{}}\nec2: {ec2}\n"
    )
    return load_deployment(cfg)


@pytest.mark.parametrize(
    ("lam", "field", "words"),
    [
        ("{package: zip, image_uri: '" + URI + "'}", "lambda.image_uri", "package is 'zip'"),
        ("{image_uri: 'docker.io/me/model:1'}", "lambda.image_uri", "pattern"),
        ("{package: wheel}", "lambda.package", "zip, image, auto"),
        (
            "{reserved_concurrency: 5, provisioned_concurrency: 6}",
            "lambda.provisioned_concurrency",
            "reserved",
        ),
        ("{keep_warm: {every_s: 0}}", "lambda.keep_warm.every_s", "greater than 0"),
        (
            "{reserved_concurrency: 2, keep_warm: {every_s: 60, concurrency: 3}}",
            "lambda.keep_warm",
            "throttled",
        ),
    ],
)
def test_config_errors_name_the_field(tmp_path, lam, field, words):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, lam)
    msg = str(err.value)
    assert f"field {field}:" in msg and words in msg and "deploy.yaml" in msg


def test_config_package_modes_and_prebuilt_zip(tmp_path):
    for mode in ("zip", "image", "auto"):
        lam = _load(tmp_path, f"{{package: {mode}}}").lambda_
        assert lam.package == mode and lam.prebuilt_zip is None
    assert _load(tmp_path, "{}").lambda_.package == "auto"
    lam = _load(tmp_path, "{package: build/fn.zip, provisioned_concurrency: 2}").lambda_
    assert lam.prebuilt_zip == (tmp_path / "build" / "fn.zip").resolve()
    assert lam.provisioned_concurrency == 2 and lam.keep_warm is None
    warm = _load(tmp_path, "{image_uri: '" + URI + "', keep_warm: {every_s: 300, concurrency: 4}}")
    assert warm.lambda_.keep_warm.every_s == 300 and warm.lambda_.keep_warm.concurrency == 4


def test_image_without_uri_prints_the_build_and_push_commands(aws, tmp_path, offline):
    pytest.importorskip("onnxruntime")
    from hybridserve.aws.deploy import deploy

    cfg = _load(tmp_path, "{package: image}", offline)
    with pytest.raises(ConfigError) as err:
        deploy(cfg, aws, log=lambda *_: None)
    msg = str(err.value)
    assert msg.startswith("lambda.image_uri: required") and "lambda.package is image" in msg
    ctx = Path(re.search(r"context written to (\S+):\n", msg).group(1))
    assert (ctx / "Dockerfile").exists() and (ctx / "lambda_handlers" / "handler.py").exists()
    uri = f"{REPO_URI}:{R.context_tag(ctx)}"
    assert f"  docker build --platform linux/amd64 --provenance=false -t {uri} {ctx}\n" in msg
    assert f"  docker push {uri}\n" in msg
    assert f"set `lambda.image_uri: {uri}`" in msg
    assert aws.lam.list_functions()["Functions"] == []  # nothing half-made


def test_deploy_with_an_image_uri_in_another_region_names_the_field(aws, tmp_path, offline):
    from hybridserve.aws.deploy import deploy

    other = URI.replace(REGION, "eu-west-1")
    cfg = _load(tmp_path, "{image_uri: '" + other + "'}", offline)
    with pytest.raises(ConfigError, match=r"^lambda.image_uri: the image is in eu-west-1"):
        deploy(cfg, aws, log=lambda *_: None)


def test_deploy_with_an_image_uri_makes_an_image_function(aws, tmp_path, offline):
    from hybridserve.aws.deploy import deploy

    cfg = _load(tmp_path, "{image_uri: '" + URI + "', reserved_concurrency: 7}", offline)
    plan = deploy(cfg, aws, dry_run=True, log=lambda *_: None)["plan"]
    assert any(URI in line and "provisioned concurrency 0" in line for line in plan)
    out = deploy(cfg, aws, log=lambda *_: None)
    assert out["function"]["package_type"] == "Image"
    fn = aws.lam.get_function(FunctionName=FN)
    assert fn["Configuration"]["PackageType"] == "Image" and fn["Code"]["ImageUri"] == URI
    again = deploy(cfg, aws, log=lambda *_: None)
    assert again["function"] == out["function"]
