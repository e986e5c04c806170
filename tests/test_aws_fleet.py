"""AWS EC2 fleet: pure reconciliation tables, least-privilege IAM, and the backend on moto."""

from __future__ import annotations

import uuid

import pytest

from hybridserve.aws import iam
from hybridserve.aws.ec2 import Ec2Instance
from hybridserve.reconcile import reconcile

OD, SPOT, XL = "c5.large/on_demand", "c5.large/spot", "c5.xlarge/spot"


def inst(i, pool=OD, state="running", t=0.0, interrupted=False):
    return Ec2Instance(f"i-{i}", pool, state, t, interrupted)


def plan(target, instances):
    seen = [o for o in (i.observed() for i in instances) if o is not None]
    return [(a.kind, a.pool, a.instance_id, a.reason) for a in reconcile(target, seen, 5.0)]


@pytest.mark.parametrize(
    ("target", "observed", "expected"),
    [
        ({OD: 2}, [], [("launch", OD, "", f"scale out {OD} to 2")] * 2),
        ({OD: 2}, [inst(1), inst(2)], []),
        ({OD: 1}, [inst(1, t=1), inst(2, t=2)], [("retire", OD, "i-2", f"scale in {OD} to 1")]),
        # pending goes first, whatever its age
        (
            {OD: 1},
            [inst(1, state="pending", t=0), inst(2, t=5)],
            [("retire", OD, "i-1", f"scale in {OD} to 1")],
        ),
        # absent pools go to zero; stopped and interrupted ones are terminated and replaced
        ({}, [inst(1, pool=XL)], [("retire", XL, "i-1", f"scale in {XL} to 0")]),
        (
            {SPOT: 2},
            [inst(1, pool=SPOT, interrupted=True), inst(2, pool=SPOT), inst(3, state="stopped")],
            [
                ("retire", SPOT, "i-1", "interrupted or stopped"),
                ("retire", OD, "i-3", "interrupted or stopped"),
                ("launch", SPOT, "", f"scale out {SPOT} to 2"),
            ],
        ),
        # terminated / shutting-down instances are gone: not counted, not touched
        (
            {OD: 1},
            [inst(1, state="shutting-down"), inst(2, state="terminated")],
            [("launch", OD, "", f"scale out {OD} to 1")],
        ),
    ],
)
def test_reconcile_tables(target, observed, expected):
    assert plan(target, observed) == expected
    # level-triggered: the state the actions lead to needs no action
    after = [i for i in observed if i.live and i.instance_id not in {e[2] for e in expected}]
    after += [inst(100 + k, pool=e[1]) for k, e in enumerate(expected) if e[0] == "launch"]
    assert plan(target, after) == []


def test_reconcile_rejects_negative_targets():
    with pytest.raises(ValueError, match="negative"):
        reconcile({OD: -1}, [])


def test_iam_documents_are_least_privilege():
    docs = [
        iam.lambda_role_policy(
            function="hs-demo-spill",
            bucket="b",
            prefix="demo/art",
            region="us-east-1",
            account="123456789012",
        ),
        iam.instance_role_policy(deployment="demo", bucket="b", prefix="demo/art"),
        iam.trust_policy("lambda"),
        iam.trust_policy("ec2"),
        iam.runtime_policy(
            deployment="demo",
            region="us-east-1",
            account="123456789012",
            bucket="b",
            state_key="demo/controller-state.json",
            lease_key="demo/controller-lease.json",
            function="hybridserve-demo-spill",
            instance_role="hybridserve-demo-instance",
            template_id="lt-0123",
        ),
    ]
    for doc in docs:
        assert iam.least_privilege_problems(doc) == []
        for st in doc["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            assert all("*" not in a for a in actions)
    # the instances only read their artifact; the runtime policy changes no security group,
    # role or function, and terminates only the deployment's own instances
    assert [s["Action"] for s in docs[1]["Statement"]] == [["s3:GetObject"], ["s3:ListBucket"]]
    runtime = docs[-1]["Statement"]
    acts = {a for s in runtime for a in s["Action"]}
    assert not {
        a
        for a in acts
        if a.split(":")[1].startswith(("Authorize", "Revoke", "Put", "Create", "Update", "Delete"))
    } - {
        "s3:PutObject",
        "s3:PutObjectTagging",
        "cloudwatch:PutMetricData",
        "ec2:CreateTags",  # the fleet-state tags only, on its own instances (MarkOwnInstances)
        "sqs:DeleteMessage",  # a spot notice read off the deployment's queue
    }
    by_sid = {s["Sid"]: s for s in runtime}
    assert by_sid["TerminateOwn"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/hybridserve:deployment": "demo"}
    }
    assert by_sid["TagAtLaunch"]["Condition"]["StringEquals"]["ec2:CreateAction"] == "RunInstances"
    assert (
        "arn:aws:ec2:us-east-1:123456789012:launch-template/lt-0123"
        in (by_sid["LaunchFromTemplate"]["Resource"])
    )
    lam = docs[0]
    assert {r for s in lam["Statement"] for r in s["Resource"]} == {
        "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/hs-demo-spill",
        "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/hs-demo-spill:*",
        "arn:aws:s3:::b/demo/art/*",
        "arn:aws:s3:::b",
    }
    bad = {
        "Statement": [
            {"Action": ["s3:*"], "Resource": ["*"]},
            {"Action": "cloudwatch:PutMetricData", "Resource": "*"},
        ]
    }
    problems = iam.least_privilege_problems(bad)
    assert any("wildcard action 's3:*'" in p for p in problems)
    assert any("without a cloudwatch:namespace condition" in p for p in problems)


moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")


@pytest.fixture
def ec2(monkeypatch):
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    with moto.mock_aws():
        client = boto3.client("ec2", region_name="us-east-1")
        ami = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        yield client, ami


def backend(client, ami, deployment="demo", **kw):
    """The fleet with retirements terminated at once (drain_s 0) unless a test drains."""
    from hybridserve.aws.ec2 import Ec2Fleet
    from hybridserve.aws.ec2_backend import AwsBackend

    kw.setdefault("drain_s", 0.0)
    return AwsBackend(Ec2Fleet(deployment, client, ami, user_data="#cloud-config\n"), **kw)


def tagged(client, deployment="demo"):
    res = client.describe_instances(
        Filters=[
            {"Name": "tag:hybridserve:deployment", "Values": [deployment]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    return [i for r in res for i in r["Instances"]]


def test_converge_launches_tagged_instances_and_is_idempotent(ec2):
    client, ami = ec2
    be = backend(client, ami)
    target = {"c5.large/on_demand": 2, "c5.xlarge/on_demand": 1}
    acts = be.converge(target)
    assert sorted(a.pool for a in acts if a.kind == "launch") == ["c5.large/on_demand"] * 2 + [
        "c5.xlarge/on_demand"
    ]
    insts = tagged(client)
    assert len(insts) == 3
    for i in insts:
        t = {x["Key"]: x["Value"] for x in i["Tags"]}
        assert t["hybridserve:role"] == "model-server"
        assert t["hybridserve:pool"] == f"{i['InstanceType']}/on_demand"
    assert be.converge(target) == []  # second run: nothing to do
    view = be.observe()
    assert view.get("c5.large/on_demand").ready == 2
    # one launch template, found again rather than created twice
    be.fleet.ensure_launch_template()
    lts = client.describe_launch_templates()["LaunchTemplates"]
    assert [lt["LaunchTemplateName"] for lt in lts] == ["hybridserve-demo"]


def test_restart_adopts_the_fleet_and_scales_in(ec2):
    client, ami = ec2
    backend(client, ami).converge({"c5.large/on_demand": 3})
    fresh = backend(client, ami)  # a controller restarted after a crash: no local state
    assert fresh.converge({"c5.large/on_demand": 3}) == []
    acts = fresh.converge({"c5.large/on_demand": 1})
    assert [a.kind for a in acts] == ["retire", "retire"]
    assert len(tagged(client)) == 1
    assert fresh.converge({}) and tagged(client) == []


def test_dry_run_touches_nothing_and_other_deployments_are_left_alone(ec2):
    client, ami = ec2
    backend(client, ami, "other").converge({"c5.large/on_demand": 1})
    be = backend(client, ami)
    acts = be.converge({"c5.large/on_demand": 2}, dry_run=True)
    assert [a.instance_id for a in acts] == ["(dry-run)", "(dry-run)"]
    assert tagged(client) == [] and len(tagged(client, "other")) == 1
    be.converge({})
    assert len(tagged(client, "other")) == 1


def test_spot_pool_launches_with_market_options(ec2):
    client, ami = ec2
    be = backend(client, ami)
    be.converge({"c5.large/spot": 1})
    (i,) = tagged(client)
    assert {x["Key"]: x["Value"] for x in i["Tags"]}["hybridserve:pool"] == "c5.large/spot"
    assert i.get("InstanceLifecycle") == "spot"


def test_scale_counts_hold_with_ec2_client_tokens(ec2):
    """EC2 answers a repeated ClientToken with its earlier reservation for 24 h, even after a
    teardown: each new decision must launch with a token of its own (tests/aws_faults.py)."""
    client, ami = ec2
    for n in (1, 0, 1, 2, 0, 2):
        backend(client, ami).converge({OD: n})
        assert len(tagged(client)) == n, f"asked for {n}"
    backend(client, ami).converge({})
    assert tagged(client) == []
    backend(client, ami).converge({OD: 1})  # a deploy again after a teardown
    assert len(tagged(client)) == 1


def test_a_retried_intent_reuses_its_token_and_launches_once(ec2):
    client, ami = ec2
    be = backend(client, ami)
    intent = f"{uuid.uuid4().hex}/7"  # EC2 keeps tokens per account: one this test alone uses
    first = be.converge({OD: 2}, intent=intent)
    # the same decision retried, as after a crash before any describe showed the instances:
    # the same token, so EC2 returns the first reservation and nothing more runs
    token = be.launch_token(OD, [], 2, intent)
    assert be.fleet.launch(OD, 2, token) == [a.instance_id for a in first]
    assert len(tagged(client)) == 2
    # the same token for other parameters is EC2's IdempotentParameterMismatch
    with pytest.raises(client.exceptions.ClientError, match="IdempotentParameterMismatch"):
        be.fleet.launch(OD, 3, token)


def test_one_pool_without_capacity_does_not_stop_the_others_and_backs_off(ec2, aws_faults):
    client, ami = ec2
    be = backend(client, ami)
    aws_faults.no_capacity.add(OD)
    acts = be.converge({OD: 1, "c5.xlarge/on_demand": 1})
    assert [(a.kind, a.pool) for a in acts] == [("launch", "c5.xlarge/on_demand")]
    assert [i["InstanceType"] for i in tagged(client)] == ["c5.xlarge"]
    assert be.launch_failures == {OD: 1}
    # within the backoff the pool is not tried again; once capacity is back and the backoff
    # has passed, it launches
    aws_faults.no_capacity.clear()
    assert be.converge({OD: 1, "c5.xlarge/on_demand": 1}) == []
    be.retry_at[OD] = 0.0  # the backoff elapsed
    acts = be.converge({OD: 1, "c5.xlarge/on_demand": 1})
    assert [(a.kind, a.pool) for a in acts] == [("launch", OD)] and be.launch_failures == {}


def test_spot_fallback_serves_its_pool_and_is_kept(ec2, aws_faults):
    """A spot launch that fell back to on-demand is counted in the spot pool it stands in for,
    so the next step neither terminates it nor launches again."""
    client, ami = ec2
    be = backend(client, ami)
    aws_faults.no_capacity.add(SPOT)
    be.converge({SPOT: 1})
    (i,) = tagged(client)
    tags = {x["Key"]: x["Value"] for x in i["Tags"]}
    assert tags["hybridserve:pool"] == SPOT and tags["hybridserve:market"] == "on_demand"
    assert i.get("InstanceLifecycle") != "spot"
    assert be.converge({SPOT: 1}) == [] and be.observe().get(SPOT).total == 1
