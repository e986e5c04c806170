"""The bucket's TLS-only policy: put once, merged into an adopted bucket's own policy, and
enforced by transport (tests/aws_faults_transport.py): a deploy over https works, a request
over plain HTTP is denied."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from botocore.exceptions import ClientError  # noqa: E402

from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.aws.bucket import TLS_ONLY_SID, tls_only_statement  # noqa: E402
from tests.aws_faults_transport import resolve_transport  # noqa: E402
from tests.aws_lambda_helpers import BUCKET, DEP, REGION, URI  # noqa: E402
from tests.wheel_helpers import offline_wheelhouse  # noqa: E402

TEAM_READ = {  # what an adopted bucket's owner already grants: it must survive
    "Sid": "TeamRead",
    "Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
    "Action": "s3:GetObject",
    "Resource": f"arn:aws:s3:::{BUCKET}/shared/*",
}


def _puts(s3: Any) -> list[str]:
    """The PutBucketPolicy calls `s3` makes from now on (botocore's own event hook)."""
    seen: list[str] = []
    s3.meta.events.register(
        "before-parameter-build.s3.PutBucketPolicy",
        lambda params, **_: seen.append(params["Policy"]),
    )
    return seen


def _policy(s3: Any) -> dict[str, Any]:
    return json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])


def _denied(call: Any, **kw: Any) -> str:
    with pytest.raises(ClientError) as e:
        call(Bucket=BUCKET, **kw)
    return R.error_code(e.value)


def test_tls_only_policy_is_put_once(aws):
    puts = _puts(aws.s3)
    R.ensure_bucket(aws.s3, BUCKET, DEP, REGION)
    assert _policy(aws.s3) == {"Version": "2012-10-17", "Statement": [tls_only_statement(BUCKET)]}
    R.ensure_bucket(aws.s3, BUCKET, DEP, REGION)
    assert len(puts) == 1  # the second ensure found it in place


def test_adopted_bucket_keeps_its_policy_and_drift_in_ours_is_repaired(aws):
    aws.s3.create_bucket(Bucket=BUCKET)
    aws.s3.put_bucket_policy(
        Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": TEAM_READ})
    )
    puts = _puts(aws.s3)
    R.ensure_bucket(aws.s3, BUCKET, DEP, REGION)
    assert _policy(aws.s3)["Statement"] == [TEAM_READ, tls_only_statement(BUCKET)]
    # ours narrowed by hand (objects only): put back whole, the owner's statement untouched
    drifted = {**tls_only_statement(BUCKET), "Resource": f"arn:aws:s3:::{BUCKET}/*"}
    aws.s3.put_bucket_policy(
        Bucket=BUCKET,
        Policy=json.dumps({"Version": "2012-10-17", "Statement": [drifted, TEAM_READ]}),
    )
    R.ensure_bucket(aws.s3, BUCKET, DEP, REGION)
    assert _policy(aws.s3)["Statement"] == [TEAM_READ, tls_only_statement(BUCKET)]
    R.ensure_bucket(aws.s3, BUCKET, DEP, REGION)
    assert len(puts) == 3  # adopting, the hand edit, repairing; the last ensure put nothing
    assert [st.get("Sid") for st in _policy(aws.s3)["Statement"]].count(TLS_ONLY_SID) == 1


def test_plain_http_is_denied_in_process(aws):
    """`mock_aws` on boto's default endpoint is https; the same S3 over http:// is not."""
    R.ensure_bucket(aws.s3, BUCKET, DEP, REGION)
    aws.s3.put_object(Bucket=BUCKET, Key="k", Body=b"x")
    plain = boto3.client("s3", region_name=REGION, endpoint_url="http://s3.amazonaws.com")
    assert _denied(plain.get_object, Key="k") == "AccessDenied"
    assert _denied(plain.put_object, Key="k2", Body=b"y") == "AccessDenied"
    assert _denied(plain.head_object, Key="k") == "403"  # HEAD: no body to name it
    assert aws.s3.get_object(Bucket=BUCKET, Key="k")["Body"].read() == b"x"
    # without the policy, plain HTTP is only plain HTTP
    aws.s3.delete_bucket_policy(Bucket=BUCKET)
    assert plain.get_object(Bucket=BUCKET, Key="k")["Body"].read() == b"x"


@pytest.fixture
def servers(monkeypatch) -> Iterator[tuple[str, str]]:
    """One moto behind TLS and one on plain HTTP: the same account (moto keeps one state per
    process), two transports."""
    monkeypatch.setenv("HYBRIDSERVE_CACHE_DIR", str(offline_wheelhouse()[0]))
    from tests.moto_tls import moto_server

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with moto_server(tls=False) as plain, moto_server() as tls:
        yield tls, plain


def _config(tmp_path: Path) -> Path:
    """The deployment, shipping the instances' wheelhouse offline (tests/wheel_helpers.py)."""
    _, wheel, links = offline_wheelhouse()
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "model.onnx").write_bytes(b"\x00weights")
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(
        f"name: {DEP}\nartifact: art\nbucket: {BUCKET}\nlambda: {{image_uri: '{URI}'}}\n"
        f"fleet: {{}}\nec2: {{wheel: '{wheel}', find_links: '{links}'}}\n"
    )
    return cfg


def test_deploy_over_https_works_and_plain_http_is_denied(servers, tmp_path):
    from hybridserve.aws.deploy import deploy
    from hybridserve.deployment import load_deployment

    tls, plain = servers
    cfg = load_deployment(_config(tmp_path))
    c = R.clients(REGION, endpoint_url=tls)
    deploy(cfg, c, log=lambda *_: None)
    puts = _puts(c.s3)
    deploy(cfg, c, log=lambda *_: None)
    assert puts == []  # a second deploy puts no policy
    key = f"{cfg.artifact_prefix}/model.onnx"
    assert c.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"\x00weights"
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=plain)
    assert _denied(s3.get_object, Key=key) == "AccessDenied"
    assert _denied(s3.put_object, Key=key, Body=b"tampered") == "AccessDenied"
    assert c.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"\x00weights"
    out = R.teardown(c, DEP, region=REGION, buckets=(BUCKET,), wait_s=10, settle_s=0)
    assert out["buckets"] == [BUCKET]  # teardown, over TLS, gets through the policy


@pytest.mark.parametrize("secure", [False, True])
def test_the_transport_condition_decides_whether_a_statement_applies(secure):
    vpce = {"StringEquals": {"aws:SourceVpce": "vpce-1"}}  # not the transport: left for moto
    bare = {k: v for k, v in tls_only_statement(BUCKET).items() if k != "Condition"}
    st = {**bare, "Condition": {"Bool": {"aws:SecureTransport": "false"}, **vpce}}
    assert resolve_transport(st, secure) == (None if secure else {**bare, "Condition": vpce})
    # condition keys are case-insensitive; a value may be a list, or a JSON boolean
    tls_only = {**bare, "Condition": {"Bool": {"aws:securetransport": [True]}}}
    assert resolve_transport(tls_only, secure) == (bare if secure else None)
