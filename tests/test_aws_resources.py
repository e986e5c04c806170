"""Idempotent AWS resource managers and teardown, on moto (no Lambda invoke: no Docker)."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from hybridserve.aws import iam as I  # noqa: E402
from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.aws import tags as T  # noqa: E402
from tests.conftest import tagged_instances  # noqa: E402

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
DEP = "demo"
BUCKET = "hs-demo-artifacts"
PREFIX = "demo/artifact"


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("lambda_handlers/handler.py", "def handler(event, context):\n    return {}\n")
    return buf.getvalue()


def _artifact(tmp_path):
    d = tmp_path / "artifact"
    (d / "sub").mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"\x00weights" * 100)
    (d / "config.json").write_text(json.dumps({"name": "m"}))
    (d / "sub" / "vocab.txt").write_text("a\nb\n")
    return d


def _vpc(c):
    return c.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0][
        "VpcId"
    ]


def _code_object(c, key="demo/lambda/code-1.zip"):
    c.s3.put_object(Bucket=BUCKET, Key=key, Body=_zip(), Tagging=f"{T.DEPLOYMENT}={DEP}")
    return key


def _function_args(roles, key, **over):
    args = dict(
        role_arn=roles["lambda_role_arn"],
        bucket=BUCKET,
        key=key,
        memory_mb=1024,
        timeout_s=30,
        ephemeral_mb=1024,
        reserved_concurrency=5,
        env={"HYBRIDSERVE_MODEL": "m"},
        role_retry_delays=(),
        wait_s=4,
    )
    args.update(over)
    return args


def _roles(c):
    return R.ensure_roles(c.iam, DEP, bucket=BUCKET, prefix=PREFIX, region=REGION, account=ACCOUNT)


# --------------------------------------------------------------------------- S3


def test_bucket_created_once_private_encrypted_tagged(aws):
    c = aws
    assert R.ensure_bucket(c.s3, BUCKET, DEP, REGION) is True
    assert R.ensure_bucket(c.s3, BUCKET, DEP, REGION) is False
    assert [b["Name"] for b in c.s3.list_buckets()["Buckets"]] == [BUCKET]
    tags = T.as_dict(c.s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"])
    assert tags[R.CREATED_BY] == DEP and tags[T.DEPLOYMENT] == DEP
    pab = c.s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert pab == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    rules = c.s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert c.s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"


def test_preexisting_bucket_is_adopted_not_marked_created(aws):
    c = aws
    c.s3.create_bucket(Bucket=BUCKET)
    c.s3.put_bucket_tagging(Bucket=BUCKET, Tagging={"TagSet": [{"Key": "team", "Value": "x"}]})
    assert R.ensure_bucket(c.s3, BUCKET, DEP, REGION) is False
    tags = T.as_dict(c.s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"])
    assert R.CREATED_BY not in tags and tags["team"] == "x"  # existing tags kept
    assert c.s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"][
        "BlockPublicAcls"
    ]
    assert "Status" not in c.s3.get_bucket_versioning(Bucket=BUCKET)  # its owner's to choose


def test_adopting_a_kms_bucket_keeps_its_key(aws):
    """No downgrade: a bucket encrypted with its owner's KMS key stays so."""
    c = aws
    c.s3.create_bucket(Bucket=BUCKET)
    kms = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "arn:aws:kms:us-east-1:123456789012:key/k"}
    c.s3.put_bucket_encryption(
        Bucket=BUCKET,
        ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": kms}]},
    )
    R.ensure_bucket(c.s3, BUCKET, DEP, REGION)
    rules = c.s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"] == kms


def test_upload_skips_unchanged_files(aws, tmp_path):
    c = aws
    R.ensure_bucket(c.s3, BUCKET, DEP, REGION)
    d = _artifact(tmp_path)
    keys = R.upload_artifact(c.s3, BUCKET, PREFIX, d, DEP)
    assert sorted(keys) == [
        f"{PREFIX}/config.json",
        f"{PREFIX}/model.onnx",
        f"{PREFIX}/sub/vocab.txt",
    ]
    head = c.s3.head_object(Bucket=BUCKET, Key=f"{PREFIX}/model.onnx")
    assert len(head["Metadata"]["sha256"]) == 64
    t = T.as_dict(c.s3.get_object_tagging(Bucket=BUCKET, Key=keys[0])["TagSet"])
    assert t[T.DEPLOYMENT] == DEP
    assert R.upload_artifact(c.s3, BUCKET, PREFIX, d, DEP) == []  # nothing changed
    (d / "config.json").write_text(json.dumps({"name": "m2"}))
    assert R.upload_artifact(c.s3, BUCKET, PREFIX, d, DEP) == [f"{PREFIX}/config.json"]


# --------------------------------------------------------------------------- IAM


def test_roles_idempotent_least_privilege(aws):
    c = aws
    first = _roles(c)
    second = _roles(c)
    assert first == second
    assert first["instance_profile_arn"].endswith(":instance-profile/hybridserve-demo")
    names = sorted(r["RoleName"] for r in c.iam.list_roles()["Roles"])
    assert names == ["hybridserve-demo-instance", "hybridserve-demo-lambda"]
    for name, service in (
        ("hybridserve-demo-lambda", "lambda"),
        ("hybridserve-demo-instance", "ec2"),
    ):
        role = c.iam.get_role(RoleName=name)["Role"]
        assert T.as_dict(role["Tags"])[T.DEPLOYMENT] == DEP
        assert R.policy_doc(role["AssumeRolePolicyDocument"]) == I.trust_policy(service)
        assert c.iam.list_role_policies(RoleName=name)["PolicyNames"] == [R.INLINE_POLICY]
        doc = R.policy_doc(
            c.iam.get_role_policy(RoleName=name, PolicyName=R.INLINE_POLICY)["PolicyDocument"]
        )
        assert I.least_privilege_problems(doc) == []
        for st in doc["Statement"]:
            acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            assert all("*" not in a for a in acts)
    profiles = c.iam.list_instance_profiles()["InstanceProfiles"]
    assert len(profiles) == 1
    assert [r["RoleName"] for r in profiles[0]["Roles"]] == ["hybridserve-demo-instance"]


def test_roles_drift_is_repaired(aws):
    c = aws
    _roles(c)
    c.iam.put_role_policy(
        RoleName="hybridserve-demo-lambda",
        PolicyName="hand-added",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    _roles(c)
    assert c.iam.list_role_policies(RoleName="hybridserve-demo-lambda")["PolicyNames"] == [
        R.INLINE_POLICY
    ]


# --------------------------------------------------------------------------- security group


def _ingress(c, gid):
    (sg,) = c.ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    return [
        (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), r["CidrIp"])
        for p in sg["IpPermissions"]
        for r in p.get("IpRanges", [])
    ] + [
        (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), g["GroupId"])
        for p in sg["IpPermissions"]
        for g in p.get("UserIdGroupPairs", [])
    ], T.as_dict(sg.get("Tags"))


def test_security_group_exactly_one_rule_and_drift_revoked(aws):
    c = aws
    vpc = _vpc(c)
    gid = R.ensure_security_group(c.ec2, DEP, vpc_id=vpc, port=8000, router_cidr="10.0.1.0/24")
    assert (
        R.ensure_security_group(c.ec2, DEP, vpc_id=vpc, port=8000, router_cidr="10.0.1.0/24") == gid
    )
    groups = c.ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["hybridserve-demo"]}]
    )["SecurityGroups"]
    assert len(groups) == 1
    rules, tags = _ingress(c, gid)
    assert rules == [("tcp", 8000, 8000, "10.0.1.0/24")]
    assert tags[T.DEPLOYMENT] == DEP
    # drift: an open SSH rule and an extra CIDR on the port
    c.ec2.authorize_security_group_ingress(
        GroupId=gid,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            },
            {
                "IpProtocol": "tcp",
                "FromPort": 8000,
                "ToPort": 8000,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            },
        ],
    )
    assert len(_ingress(c, gid)[0]) == 3
    R.ensure_security_group(c.ec2, DEP, vpc_id=vpc, port=8000, router_cidr="10.0.1.0/24")
    assert _ingress(c, gid)[0] == [("tcp", 8000, 8000, "10.0.1.0/24")]


# --------------------------------------------------------------------------- Lambda


def test_function_created_once_then_updated_on_memory_change(aws):
    c = aws
    R.ensure_bucket(c.s3, BUCKET, DEP, REGION)
    key = _code_object(c)
    roles = _roles(c)
    first = R.ensure_function(c.lam, DEP, **_function_args(roles, key))
    again = R.ensure_function(c.lam, DEP, **_function_args(roles, key))
    assert again == first  # nothing changed: no new version, alias stays
    fns = c.lam.list_functions()["Functions"]
    assert [f["FunctionName"] for f in fns] == ["hybridserve-demo-spill"]
    cfg = c.lam.get_function_configuration(FunctionName="hybridserve-demo-spill")
    assert cfg["Runtime"] == "python3.11"
    assert cfg["Handler"] == "lambda_handlers.handler.handler"
    assert cfg["MemorySize"] == 1024 and cfg["Timeout"] == 30
    assert cfg["Environment"]["Variables"] == {"HYBRIDSERVE_MODEL": "m", R.CODE_KEY_ENV: key}
    tags = c.lam.list_tags(Resource=first["function_arn"])["Tags"]
    assert tags[T.DEPLOYMENT] == DEP and tags[T.ROLE] == T.ROLE_LAMBDA
    alias = c.lam.get_alias(FunctionName="hybridserve-demo-spill", Name="live")
    assert alias["FunctionVersion"] == first["version"]
    assert alias["AliasArn"] == first["alias_arn"]
    conc = c.lam.get_function_concurrency(FunctionName="hybridserve-demo-spill")
    assert conc["ReservedConcurrentExecutions"] == 5

    bigger = R.ensure_function(c.lam, DEP, **_function_args(roles, key, memory_mb=2048))
    assert bigger["version"] != first["version"]
    assert int(bigger["version"]) > int(first["version"])
    alias = c.lam.get_alias(FunctionName="hybridserve-demo-spill", Name="live")
    assert alias["FunctionVersion"] == bigger["version"]
    v = c.lam.get_function_configuration(
        FunctionName="hybridserve-demo-spill", Qualifier=bigger["version"]
    )
    assert v["MemorySize"] == 2048

    key2 = _code_object(c, "demo/lambda/code-2.zip")
    newer = R.ensure_function(
        c.lam, DEP, **_function_args(roles, key2, memory_mb=2048, reserved_concurrency=7)
    )
    assert int(newer["version"]) > int(bigger["version"])
    cfg = c.lam.get_function_configuration(FunctionName="hybridserve-demo-spill")
    assert cfg["Environment"]["Variables"][R.CODE_KEY_ENV] == key2
    conc = c.lam.get_function_concurrency(FunctionName="hybridserve-demo-spill")
    assert conc["ReservedConcurrentExecutions"] == 7


# --------------------------------------------------------------------------- deploy + teardown


def _deploy(c, tmp_path, *, pre_existing_bucket=False):
    from hybridserve.aws.ec2 import Ec2Fleet
    from hybridserve.aws.ec2_backend import AwsBackend

    if pre_existing_bucket:
        c.s3.create_bucket(Bucket=BUCKET)
        c.s3.put_object(Bucket=BUCKET, Key="other/keep.txt", Body=b"not ours")
    R.ensure_bucket(c.s3, BUCKET, DEP, REGION)
    R.upload_artifact(c.s3, BUCKET, PREFIX, _artifact(tmp_path), DEP)
    key = _code_object(c)
    roles = _roles(c)
    gid = R.ensure_security_group(c.ec2, DEP, vpc_id=_vpc(c), port=8000, router_cidr="10.0.1.0/24")
    R.ensure_function(c.lam, DEP, **_function_args(roles, key))
    ami = c.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    fleet = Ec2Fleet(
        DEP,
        c.ec2,
        ami,
        user_data="#cloud-config\n",
        security_group_ids=(gid,),
        instance_profile_arn=roles["instance_profile_arn"],
    )
    AwsBackend(fleet).converge({"c5.large/on_demand": 2})
    return gid


def _live_instances(c, deployment=DEP):
    states = ("pending", "running", "stopped")
    return [i["InstanceId"] for i in tagged_instances(c.ec2, deployment, states)]


def _assert_nothing_left(c):
    assert _live_instances(c) == []
    assert c.ec2.describe_launch_templates()["LaunchTemplates"] == []
    assert c.lam.list_functions()["Functions"] == []
    assert c.iam.list_roles()["Roles"] == []
    assert c.iam.list_instance_profiles()["InstanceProfiles"] == []
    assert (
        c.ec2.describe_security_groups(Filters=[{"Name": f"tag:{T.DEPLOYMENT}", "Values": [DEP]}])[
            "SecurityGroups"
        ]
        == []
    )


def test_deploy_then_teardown_removes_everything_twice_safe(aws, tmp_path):
    c = aws
    gid = _deploy(c, tmp_path)
    assert len(_live_instances(c)) == 2
    assert c.ec2.describe_launch_templates()["LaunchTemplates"]

    removed = R.teardown(c, DEP, region=REGION, wait_s=5, settle_s=0)
    assert len(removed["instances"]) == 2
    assert removed["launch_templates"] == ["hybridserve-demo"]
    assert removed["functions"] == ["hybridserve-demo-spill"]
    assert removed["security_groups"] == [gid]
    assert removed["instance_profiles"] == ["hybridserve-demo"]
    assert sorted(removed["roles"]) == ["hybridserve-demo-instance", "hybridserve-demo-lambda"]
    assert len(removed["objects"]) == 4  # 3 artifact files + the Lambda zip
    assert removed["buckets"] == [BUCKET]
    _assert_nothing_left(c)
    assert c.s3.list_buckets()["Buckets"] == []

    again = R.teardown(c, DEP, region=REGION, wait_s=5, settle_s=0)
    assert again == {k: [] for k in R.KINDS}


def test_teardown_keeps_preexisting_bucket_and_other_deployments(aws, tmp_path):
    c = aws
    _deploy(c, tmp_path, pre_existing_bucket=True)
    c.s3.put_object(Bucket=BUCKET, Key="other-dep/x", Body=b"x", Tagging=f"{T.DEPLOYMENT}=other")
    removed = R.teardown(c, DEP, region=REGION, wait_s=5, settle_s=0)
    assert removed["buckets"] == []
    assert len(removed["objects"]) == 4
    _assert_nothing_left(c)
    assert [b["Name"] for b in c.s3.list_buckets()["Buckets"]] == [BUCKET]
    left = sorted(o["Key"] for o in c.s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))
    assert left == ["other-dep/x", "other/keep.txt"]
    tags = R.bucket_tags(c.s3, BUCKET)
    assert not any(k.startswith(R.ADOPTED_BY) for k in tags)  # adoption mark removed
    assert R.teardown(c, DEP, region=REGION, wait_s=5, settle_s=0) == {k: [] for k in R.KINDS}


def test_teardown_accepts_a_session(aws):
    session = boto3.session.Session(region_name=REGION)
    assert R.teardown(session, "nothing-here", region=REGION, wait_s=5, settle_s=0) == {
        k: [] for k in R.KINDS
    }
