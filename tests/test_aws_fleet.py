"""AWS EC2 fleet: pure reconciliation tables, least-privilege IAM, and the backend on moto."""

from __future__ import annotations

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
    ]
    for doc in docs:
        assert iam.least_privilege_problems(doc) == []
        for st in doc["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            assert all("*" not in a for a in actions)
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


def backend(client, ami, deployment="demo"):
    from hybridserve.aws.ec2 import AwsBackend, Ec2Fleet

    return AwsBackend(Ec2Fleet(deployment, client, ami, user_data="#cloud-config\n"))


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
