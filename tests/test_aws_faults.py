"""The fleet under AWS's faults (tests/aws_faults.py): a throttling storm with lost responses,
describes that lag the launches, and Lambda's 429; launch counts match the targets throughout."""

from __future__ import annotations

import pytest

OD = "c5.large/on_demand"
DEP = "faults"


def backend(ec2, ami="ami-12c6146b"):
    """A fresh backend per call, as each CLI command or restarted controller makes one (the
    AMI is one of moto's own)."""
    from hybridserve.aws.ec2 import Ec2Fleet
    from hybridserve.aws.ec2_backend import AwsBackend

    return AwsBackend(Ec2Fleet(DEP, ec2, ami, user_data="#cloud-config\n"), drain_s=0.0)


@pytest.fixture
def fast_ec2(aws, monkeypatch):
    """An EC2 client with botocore's standard retries (the adaptive mode deployments use adds
    a client-side rate limiter that only spaces the same attempts out), their backoff cut
    100-fold: the same attempts and decisions, in a test's time."""
    import boto3
    from botocore.config import Config
    from botocore.retries import standard

    backoff = standard.ExponentialBackoff.delay_amount
    monkeypatch.setattr(
        standard.ExponentialBackoff, "delay_amount", lambda self, c: backoff(self, c) / 100
    )
    cfg = Config(retries={"mode": "standard", "max_attempts": 10})
    return boto3.client("ec2", region_name="us-east-1", config=cfg)


def running(aws) -> int:
    res = aws.ec2.describe_instances(
        Filters=[
            {"Name": "tag:hybridserve:deployment", "Values": [DEP]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    return sum(len(r["Instances"]) for r in res)


def test_a_throttling_storm_with_lost_responses_launches_each_instance_once(
    aws, aws_faults, fast_ec2
):
    storm = {
        "ec2:RunInstances": 2,
        "ec2:DescribeInstances": 2,
        "ec2:TerminateInstances": 1,
        "ec2:CreateTags": 1,
    }
    # RunInstances takes effect, then its response is lost: botocore retries the same request,
    # ClientToken and all, and EC2 answers with the reservation it already made
    aws_faults.lose_response.add("ec2:RunInstances")
    for n in (1, 0, 1, 2, 0, 2):
        aws_faults.throttle.update(storm)
        be = backend(fast_ec2)
        try:
            be.converge({OD: n})
        finally:
            be.close()
        aws_faults.throttle.clear()
        assert running(aws) == n, f"asked for {n}"
    assert aws_faults.calls["ec2:RunInstances"] >= 3 * 3  # every launch was retried twice


def test_a_converge_right_after_a_launch_does_not_launch_again_while_describe_lags(aws, aws_faults):
    aws_faults.describe_lag_s = 60.0
    be = backend(aws.ec2)
    try:
        launched = [a.instance_id for a in be.converge({OD: 2})]
        assert running(aws) == 0  # describe does not show them yet
        assert be.converge({OD: 2}) == []  # its own launches count until describe has them
        acts = be.converge({OD: 1})
        assert [(a.kind, a.instance_id in launched) for a in acts] == [("retire", True)]
        aws_faults.describe_lag_s = 0.0
        assert running(aws) == 1
        assert be.converge({OD: 1}) == []
    finally:
        be.close()


def test_lambda_throttles_with_429(aws, aws_faults):
    import boto3
    from botocore.config import Config

    lam = boto3.client(
        "lambda", region_name="us-east-1", config=Config(retries={"total_max_attempts": 1})
    )
    aws_faults.throttle["lambda:Invoke"] = 1
    with pytest.raises(lam.exceptions.TooManyRequestsException) as e:
        lam.invoke(FunctionName="anything", Payload=b"{}")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    # the storm is over: the next call reaches moto (which knows no such function)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="anything", Payload=b"{}")


def test_function_updates_wait_out_lambdas_update_in_progress(aws, aws_faults):
    """A code and a configuration change, then a publish, each meets the previous update still
    in progress (ResourceConflictException on Lambda): ensure_function waits each out."""
    from hybridserve.aws import resources as R
    from tests.test_aws_resources import BUCKET, REGION, _code_object, _function_args, _roles

    R.ensure_bucket(aws.s3, BUCKET, "demo", REGION)
    roles = _roles(aws)
    first = R.ensure_function(aws.lam, "demo", **_function_args(roles, _code_object(aws)))
    aws_faults.function_update_s = 1.0
    key2 = _code_object(aws, "demo/lambda/code-2.zip")
    newer = R.ensure_function(aws.lam, "demo", **_function_args(roles, key2, memory_mb=2048))
    assert int(newer["version"]) > int(first["version"])
    cfg = aws.lam.get_function_configuration(FunctionName="hybridserve-demo-spill")
    assert cfg["MemorySize"] == 2048 and cfg["Environment"]["Variables"][R.CODE_KEY_ENV] == key2
    # the fault itself: an update while one is in progress is refused
    aws.lam.update_function_configuration(FunctionName="hybridserve-demo-spill", Timeout=31)
    with pytest.raises(aws.lam.exceptions.ResourceConflictException):
        aws.lam.update_function_configuration(FunctionName="hybridserve-demo-spill", Timeout=32)


def test_a_launch_right_after_deploy_waits_out_iam_propagation(aws, aws_faults):
    """EC2 refuses an instance profile IAM has not spread yet: the launch waits it out with
    the same ClientToken; without the wait the pool only backs off and nothing runs."""
    from hybridserve.aws import resources as R
    from hybridserve.aws.ec2 import Ec2Fleet
    from hybridserve.aws.ec2_backend import AwsBackend

    aws_faults.profile_propagation_s = 4.0
    R.ensure_roles(aws.iam, DEP, bucket="b", prefix=DEP, region="us-east-1", account="123456789012")
    arn = aws.iam.get_instance_profile(InstanceProfileName=R.profile_name(DEP))["InstanceProfile"]
    impatient = AwsBackend(
        Ec2Fleet(DEP, aws.ec2, "ami-12c6146b", instance_profile_arn=arn["Arn"],
                 profile_retry_delays=()),
        drain_s=0.0,
    )  # fmt: skip
    assert impatient.converge({OD: 1}) == [] and running(aws) == 0
    assert impatient.launch_failures == {OD: 1}
    impatient.close()
    be = AwsBackend(
        Ec2Fleet(DEP, aws.ec2, "ami-12c6146b", instance_profile_arn=arn["Arn"],
                 profile_retry_delays=(0.5,) * 16),
        drain_s=0.0,
    )  # fmt: skip
    try:
        assert [a.kind for a in be.converge({OD: 1})] == ["launch"]
        assert running(aws) == 1
    finally:
        be.close()


def test_a_createtags_throttle_fails_the_api_call_not_a_launch_halfway(aws, aws_faults):
    """Moto tags new instances through the same backend method as the CreateTags action; the
    layer throttles the action only, as EC2 does (a launch with tags is one call)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
    from moto.ec2.models import ec2_backends

    aws_faults.throttle["ec2:CreateTags"] = 1
    aws.ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, ClientToken="tagged-launch",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "k", "Value": "v"}]}],
    )  # fmt: skip
    made = ec2_backends["123456789012"]["us-east-1"].all_instances()
    assert len(made) == 1 and aws_faults.throttle["ec2:CreateTags"] == 1
    once = boto3.client("ec2", region_name="us-east-1", config=Config(retries={"max_attempts": 1}))
    with pytest.raises(ClientError, match="RequestLimitExceeded"):
        once.create_tags(Resources=[made[0].id], Tags=[{"Key": "a", "Value": "b"}])
    once.create_tags(Resources=[made[0].id], Tags=[{"Key": "a", "Value": "b"}])
