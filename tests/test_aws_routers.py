"""The router fleet (hybridserve/aws/routers.py, balancer.py) on moto with the fault layer:
`router.replicas` replicas of `serve` in an Auto Scaling group behind a Network Load Balancer,
made, updated and removed level-triggered, found again by tags.

What moto does not do, and how these tests stand: it runs no health check (every registered
target it reports `healthy`, so `status`'s count is moto's, not a probe's); it has no
StartInstanceRefresh (NotImplementedError), so where a deploy rolls the replicas the call is
answered by a botocore hook that records it, and the test asserts the call and its arguments,
not a roll; and its group reports every instance on the template's default version, so the
roll is seen through the group's own version change."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from botocore.awsrequest import AWSResponse  # noqa: E402

from hybridserve.aws import iam as I  # noqa: E402
from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.aws import tags as T  # noqa: E402
from hybridserve.aws import wheelhouse as W  # noqa: E402
from hybridserve.aws.balancer import HEALTH_PATH, elb_name, router_name  # noqa: E402
from hybridserve.deployment import DeploymentConfig, load_deployment  # noqa: E402
from tests.aws_lambda_helpers import BUCKET, DEP, URI  # noqa: E402
from tests.wheel_helpers import offline_wheelhouse  # noqa: E402

MUTATING = ("Create", "Put", "Update", "Modify", "Attach", "Detach", "Delete", "Authorize",
            "Revoke", "Register", "Set", "Add", "Remove", "Start", "Tag", "Run", "Terminate")  # fmt: skip


# the services the router fleet lives in, as botocore's events name them
ROUTER_SERVICES = ("elastic-load-balancing-v2", "auto-scaling", "iam", "ec2")


@pytest.fixture
def make_cfg(aws, tmp_path, monkeypatch):
    cache, _, links = offline_wheelhouse()
    monkeypatch.setenv("HYBRIDSERVE_CACHE_DIR", str(cache))
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "manifest.json").write_text("{}")

    def make(**router: Any) -> DeploymentConfig:
        memory = router.pop("memory_mb", 2048)
        return DeploymentConfig.model_validate(
            {
                "name": DEP,
                "artifact": str(art),
                "bucket": BUCKET,
                "lambda": {"image_uri": URI, "memory_mb": memory},
                "ec2": {"find_links": str(links)},
                "router": router,
            }  # fmt: skip
        )

    return make


def _deploy(cfg: DeploymentConfig, c: R.Clients) -> dict:
    from hybridserve.aws.deploy import deploy

    return deploy(cfg, c, log=lambda *_: None)


class Calls(list):
    """Operations as `service.Operation [Key]`, and each operation's last parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.params: dict[str, dict[str, Any]] = {}


@contextmanager
def calls(c: R.Clients, answer: dict[str, dict] | None = None) -> Iterator[Calls]:
    """Every AWS operation made meanwhile, as `service.Operation`, through botocore's own
    event hooks: on the fixture's clients and on every client the default session makes
    (deploy's other services). An operation in `answer` gets that response instead of moto's."""
    seen = Calls()
    answer = answer or {}

    def record(event_name: str, params: dict, **_: Any) -> None:
        _, service, op = event_name.split(".")[:3]
        seen.append(f"{service}.{op}" + (f" {params['Key']}" if "Key" in params else ""))
        seen.params[op] = params

    def hook(event_name: str, **_: Any) -> Any:
        op = event_name.split(".")[2]
        return (AWSResponse("", 200, {}, None), answer[op]) if op in answer else None

    emitters = [boto3._get_default_session().events] + [
        getattr(c, k).meta.events for k in ("ec2", "s3", "iam", "lam")
    ]
    for em in emitters:
        em.register("before-parameter-build", record, unique_id="test-aws-routers-record")
        em.register("before-call", hook, unique_id="test-aws-routers")
    try:
        yield seen
    finally:
        for em in emitters:
            em.unregister("before-parameter-build", unique_id="test-aws-routers-record")
            em.unregister("before-call", unique_id="test-aws-routers")


def _clients() -> tuple[Any, Any]:
    return boto3.client("elbv2"), boto3.client("autoscaling")


def _group(asg: Any) -> dict | None:
    found = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[router_name(DEP)])
    return (found["AutoScalingGroups"] or [None])[0]


def _template(c: R.Clients, version: str = "$Latest") -> dict:
    return c.ec2.describe_launch_template_versions(
        LaunchTemplateName=router_name(DEP), Versions=[version]
    )["LaunchTemplateVersions"][0]


def _user_data(c: R.Clients, name: str) -> dict:
    v = c.ec2.describe_launch_template_versions(LaunchTemplateName=name, Versions=["$Latest"])
    return yaml.safe_load(base64.b64decode(v["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]))  # fmt: skip


def _router_unit(doc: dict) -> str:
    (unit,) = [f for f in doc["write_files"] if f["path"].endswith("hybridserve-router.service")]
    return base64.b64decode(unit["content"]).decode()


def _line(unit: str, prefix: str) -> list[list[str]]:
    return [ln.split("=", 1)[1].split() for ln in unit.splitlines() if ln.startswith(prefix)]


def _router_sg(c: R.Clients) -> list[dict]:
    flt = [{"Name": "group-name", "Values": [router_name(DEP)]}]
    return c.ec2.describe_security_groups(Filters=flt)["SecurityGroups"]


def _left(c: R.Clients) -> dict[str, Any]:
    """What of the router fleet is on moto now."""
    elb, asg = _clients()
    lts = c.ec2.describe_launch_templates(
        Filters=[{"Name": f"tag:{T.DEPLOYMENT}", "Values": [DEP]}]
    )["LaunchTemplates"]
    roles = [r["RoleName"] for r in c.iam.list_roles()["Roles"]]
    profiles = [
        p["InstanceProfileName"] for p in c.iam.list_instance_profiles()["InstanceProfiles"]
    ]
    running = c.ec2.describe_instances(
        Filters=[{"Name": f"tag:{T.ROLE}", "Values": [T.ROLE_ROUTER]},
                 {"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]  # fmt: skip
    return {
        "load_balancers": [lb["LoadBalancerName"] for lb in elb.describe_load_balancers()["LoadBalancers"]],
        "target_groups": [tg["TargetGroupName"] for tg in elb.describe_target_groups()["TargetGroups"]],
        "groups": [g["AutoScalingGroupName"] for g in asg.describe_auto_scaling_groups()["AutoScalingGroups"]],
        "router_templates": [lt["LaunchTemplateName"] for lt in lts if lt["LaunchTemplateName"] == router_name(DEP)],
        "router_sg": [sg["GroupId"] for sg in _router_sg(c)],
        "router_role": [r for r in roles if r == router_name(DEP)],
        "router_profile": [p for p in profiles if p == router_name(DEP)],
        "router_instances": [i["InstanceId"] for r in running for i in r["Instances"]],
    }  # fmt: skip


NOTHING = {k: [] for k in ("load_balancers", "target_groups", "groups", "router_templates",
                           "router_sg", "router_role", "router_profile", "router_instances")}  # fmt: skip


def test_two_replicas_behind_an_nlb_and_a_second_deploy_changes_nothing(aws, make_cfg):
    from hybridserve.aws.deploy import deploy, runtime_policy, status

    c, cfg = aws, make_cfg(replicas=2)
    plan = deploy(cfg, c, dry_run=True, log=lambda *_: None)["plan"]
    assert plan[-1].startswith("router fleet: 2 x c5.large serving on 8080, behind an internet")
    out = _deploy(cfg, c)["routers"]
    elb, asg = _clients()
    vpc = c.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    subnets = c.ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])
    per_az = {s["AvailabilityZone"] for s in subnets["Subnets"]}
    # the load balancer: network, internet-facing, one subnet in each zone of the default VPC
    (lb,) = elb.describe_load_balancers(Names=[elb_name(DEP, "nlb")])["LoadBalancers"]
    assert (lb["Type"], lb["Scheme"]) == ("network", "internet-facing")
    zones = [z["ZoneName"] for z in lb["AvailabilityZones"]]
    assert sorted(zones) == sorted(per_az)
    assert out["url"] == f"http://{lb['DNSName']}:80"
    # the target group: TCP to the routers' port, health from /v2/health/live over HTTP
    (tg,) = elb.describe_target_groups(Names=[elb_name(DEP, "tg")])["TargetGroups"]
    assert (tg["Protocol"], tg["Port"], tg["TargetType"]) == ("TCP", 8080, "instance")
    assert (tg["HealthCheckProtocol"], tg["HealthCheckPath"]) == ("HTTP", HEALTH_PATH)
    attrs = elb.describe_target_group_attributes(TargetGroupArn=tg["TargetGroupArn"])
    assert {"Key": "deregistration_delay.timeout_seconds", "Value": "35"} in attrs["Attributes"]
    attrs = elb.describe_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"])
    assert {"Key": "load_balancing.cross_zone.enabled", "Value": "true"} in attrs["Attributes"]
    # the listener: TCP 80 forwarding to it, and no other
    (ls,) = elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    assert (ls["Protocol"], ls["Port"]) == ("TCP", 80)
    assert [(a["Type"], a["TargetGroupArn"]) for a in ls["DefaultActions"]] == [
        ("forward", tg["TargetGroupArn"])
    ]
    # the group: 2 of the router template's exact version, in the target group, ELB health
    g = _group(asg)
    version = _template(c)
    assert g["LaunchTemplate"]["LaunchTemplateId"] == version["LaunchTemplateId"]
    assert g["LaunchTemplate"]["Version"] == str(version["VersionNumber"]) == "1"
    assert (g["MinSize"], g["MaxSize"], g["DesiredCapacity"], len(g["Instances"])) == (2, 2, 2, 2)
    assert g["TargetGroupARNs"] == [tg["TargetGroupArn"]]
    assert (g["HealthCheckType"], g["HealthCheckGracePeriod"]) == ("ELB", 600)
    assert len(g["VPCZoneIdentifier"].split(",")) == len(per_az)
    # the instances: tagged for the deployment as routers, never counted as model servers
    assert len(_left(c)["router_instances"]) == 2
    assert status(cfg, c)["fleet"] == {}
    # the role: exactly the runtime policy `iam-policy` prints, plus the files a replica boots
    # from (its config and the wheelhouse), each by exact key
    doc = R.policy_doc(
        c.iam.get_role_policy(RoleName=router_name(DEP), PolicyName=R.INLINE_POLICY)[
            "PolicyDocument"
        ]
    )
    runtime = runtime_policy(cfg, c)
    assert doc["Statement"][:-1] == runtime["Statement"]
    supply = W.load_supply(c.s3, cfg)
    assert doc["Statement"][-1] == {
        "Sid": "RouterBoot", "Effect": "Allow", "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{BUCKET}/{k}" for k in (cfg.key("router/deployment.yaml"), *supply.keys)],
    }  # fmt: skip
    assert I.least_privilege_problems(doc) == []
    (arrivals,) = [s for s in doc["Statement"] if s["Sid"] == "ReplicaArrivals"]
    assert arrivals["Resource"] == [f"arn:aws:s3:::{BUCKET}/{DEP}/arrivals/*"]
    (listing,) = [s for s in doc["Statement"] if s["Sid"] == "ListArrivals"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{DEP}/arrivals/*"]}}
    profile = c.iam.get_instance_profile(InstanceProfileName=router_name(DEP))["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [router_name(DEP)]
    assert version["LaunchTemplateData"]["IamInstanceProfile"]["Arn"] == profile["Arn"]
    # the security group: the routers' port from the VPC (no client_cidr given), nothing else
    (sg,) = _router_sg(c)
    rules = [(p["IpProtocol"], p["FromPort"], p["ToPort"], r["CidrIp"])
             for p in sg["IpPermissions"] for r in p["IpRanges"]]  # fmt: skip
    assert rules == [("tcp", 8080, 8080, "172.31.0.0/16")]
    assert version["LaunchTemplateData"]["SecurityGroupIds"] == [sg["GroupId"]]
    # status: the replicas, the address, the targets (moto calls every target healthy)
    assert status(cfg, c)["routers"] == {
        "replicas": 2, "dns_name": lb["DNSName"], "url": f"http://{lb['DNSName']}:80", "healthy": 2,
    }  # fmt: skip
    # a second deploy finds everything in place: no call that would change anything
    with calls(c) as seen:
        again = _deploy(cfg, c)["routers"]
    assert again == out
    # (what deploy did before the router fleet re-puts a few idempotent settings: the bucket's
    # public access block, the spot notice queue and rule; none is the router fleet's)
    changed = [op for op in seen if op.split(".")[1].startswith(MUTATING)]
    mine = [op for op in changed if op.split(".")[0] in ROUTER_SERVICES or "/router/" in op]
    assert mine == [], changed
    assert "elastic-load-balancing-v2.DescribeLoadBalancers" in seen  # the hook saw them all


def test_the_user_data_pins_the_config_and_installs_only_from_the_wheelhouse(aws, make_cfg):
    c, cfg = aws, make_cfg(replicas=2, port=9090)
    _deploy(cfg, c)
    doc = _user_data(c, router_name(DEP))
    fleet = _user_data(c, R.template_name(DEP))
    # the install is the model servers', word for word: the same pinned wheelhouse, offline
    install = [cmd for cmd in doc["runcmd"] if cmd[0] != "systemctl"]
    assert install == [cmd for cmd in fleet["runcmd"] if cmd[0] not in ("systemctl", "mkdir", "chown")]  # fmt: skip
    supply = W.load_supply(c.s3, cfg)
    pins = next(cmd for cmd in install if "files" in cmd)
    assert pins[pins.index("--dest") + 2 :] == [
        x for p in supply.pins for x in (f"s3://{BUCKET}/{p.key}", p.sha256)
    ]
    assert doc["runcmd"][-1] == ["systemctl", "enable", "--now", "hybridserve-router.service"]
    # the unit fetches the config by its sha256, then serves it on the routers' port
    unit = _router_unit(doc)
    key = cfg.key("router/deployment.yaml")
    body = c.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    (fetch, replica) = _line(unit, "ExecStartPre=")
    assert fetch[fetch.index("--dest") + 1 :] == [
        "/var/lib/hybridserve-router",
        f"s3://{BUCKET}/{key}",
        hashlib.sha256(body).hexdigest(),
    ]
    assert replica[1:4] == ["-m", "ec2_images.replica", "--out"]
    assert "EnvironmentFile=-/run/hybridserve-router/replica.env" in unit
    (serve,) = _line(unit, "ExecStart=")
    assert serve == ["/opt/hybridserve/venv/bin/hybridserve", "serve", "--config",
                     "/var/lib/hybridserve-router/deployment.yaml", "--host", "0.0.0.0",
                     "--port", "9090"]  # fmt: skip
    everything = "\n".join([yaml.safe_dump(doc), unit]).lower()
    for needle in ("pypi", "pythonhosted", "index-url", "extra-index"):
        assert needle not in everything, needle
    # the config the replicas run with is the user's, without the replica count
    copy = yaml.safe_load(body)
    assert "replicas" not in copy["router"] and copy["artifact"] == cfg.artifact
    f = Path(cfg.artifact).parent / "copy.yaml"
    f.write_bytes(body)
    unscaled = cfg.router.model_copy(update={"replicas": 0})
    assert load_deployment(f) == cfg.model_copy(update={"router": unscaled})


def test_replicas_2_to_3_updates_the_group_and_rolls_nothing(aws, make_cfg):
    c = aws
    _deploy(make_cfg(replicas=2), c)
    _, asg = _clients()
    before = _template(c)
    with calls(c) as seen:
        _deploy(make_cfg(replicas=3), c)
    g = _group(asg)
    assert (g["MinSize"], g["MaxSize"], g["DesiredCapacity"], len(g["Instances"])) == (3, 3, 3, 3)
    assert g["LaunchTemplate"]["Version"] == "1" and _template(c) == before  # same content
    assert "auto-scaling.UpdateAutoScalingGroup" in seen
    ours = [op for op in seen if op.split(".")[0] in ROUTER_SERVICES]
    assert not [op for op in ours if op.split(".")[1].startswith("Create")], ours
    assert "auto-scaling.StartInstanceRefresh" not in seen


def test_a_changed_config_gets_a_new_template_version_and_rolls_the_replicas(aws, make_cfg):
    c = aws
    _deploy(make_cfg(replicas=2), c)
    _, asg = _clients()
    first = _router_unit(_user_data(c, router_name(DEP)))
    # moto has no StartInstanceRefresh: the hook answers it, and records that deploy asked
    with calls(c, answer={"StartInstanceRefresh": {"InstanceRefreshId": "r-1"}}) as seen:
        _deploy(make_cfg(replicas=2, memory_mb=4096), c)
    g = _group(asg)
    latest = _template(c)
    assert latest["VersionNumber"] == 2 and latest["DefaultVersion"]
    assert g["LaunchTemplate"]["Version"] == "2"
    assert seen.count("auto-scaling.StartInstanceRefresh") == 1
    assert seen.params["StartInstanceRefresh"] == {
        "AutoScalingGroupName": router_name(DEP),
        "Preferences": {"MinHealthyPercentage": 100, "MaxHealthyPercentage": 200},
    }
    assert _router_unit(_user_data(c, router_name(DEP))) != first  # a new config sha256
    body = c.s3.get_object(Bucket=BUCKET, Key=f"{DEP}/router/deployment.yaml")["Body"].read()
    assert yaml.safe_load(body)["lambda"]["memory_mb"] == 4096


def test_teardown_leaves_nothing_tagged_and_runs_twice(aws, make_cfg):
    c = aws
    _deploy(make_cfg(replicas=2), c)
    assert all(_left(c)[k] for k in NOTHING if k != "router_instances")
    removed = R.teardown(c, DEP, region="us-east-1", buckets=(BUCKET,), wait_s=5, settle_s=0)
    assert removed["auto_scaling_groups"] == [router_name(DEP)]
    assert removed["load_balancers"] == [elb_name(DEP, "nlb")]
    assert removed["target_groups"] == [elb_name(DEP, "tg")] and len(removed["listeners"]) == 1
    assert router_name(DEP) in removed["launch_templates"] and router_name(DEP) in removed["roles"]
    assert _left(c) == NOTHING
    assert R.teardown(c, DEP, region="us-east-1", buckets=(BUCKET,), wait_s=5, settle_s=0) == {
        k: [] for k in R.KINDS
    }


def test_replicas_0_makes_none_of_it_and_removes_what_a_deploy_made(aws, make_cfg):
    from hybridserve.aws.deploy import status

    c = aws
    with calls(c) as seen:
        assert _deploy(make_cfg(), c)["routers"] is None
    assert _left(c) == NOTHING
    made = [op for op in seen if op.split(".")[0] in ROUTER_SERVICES[:2]]
    assert not [op for op in made if op.split(".")[1].startswith(MUTATING)], made
    assert "routers" not in status(make_cfg(), c)
    _deploy(make_cfg(replicas=2), c)
    assert _left(c)["groups"] == [router_name(DEP)]
    assert _deploy(make_cfg(replicas=0), c)["routers"] is None
    assert _left(c) == NOTHING
    keys = c.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{DEP}/router/").get("Contents", [])
    assert keys == []
    # the model servers' own template, group and roles are untouched
    assert c.ec2.describe_launch_templates(LaunchTemplateNames=[R.template_name(DEP)])
    assert c.iam.get_role(RoleName=R.instance_role_name(DEP))


def test_router_settings_are_strict():
    from pydantic import ValidationError

    base = {"name": DEP, "artifact": "a", "bucket": BUCKET}
    ok = DeploymentConfig.model_validate({**base, "router": {"replicas": 2, "client_cidr": "0.0.0.0/0"}})  # fmt: skip
    assert ok.router.client_cidr == "0.0.0.0/0" and ok.router.scheme == "internet-facing"
    assert DeploymentConfig.model_validate(base).router.replicas == 0
    for bad, needle in [
        ({"scheme": "internal", "client_cidr": "0.0.0.0/0"}, "internal load balancer"),
        ({"scheme": "internal", "client_cidr": "10.0.0.0/16"}, None),
        ({"client_cidr": "10.0.0.1/8"}, "host bits"),
        ({"client_cidr": "::/0"}, "IPv4"),
        ({"scheme": "public"}, "scheme"),
        ({"replicas": -1}, "replicas"),
        ({"listen_port": 0}, "listen_port"),
        ({"instance_type": "c5 large"}, "instance_type"),
        ({"replica": 2}, "replica"),
    ]:
        if needle is None:
            DeploymentConfig.model_validate({**base, "router": bad})
            continue
        with pytest.raises(ValidationError, match=needle):
            DeploymentConfig.model_validate({**base, "router": bad})
    from hybridserve.aws.routers import deploy_routers
    from hybridserve.config_base import ConfigError

    graviton = DeploymentConfig.model_validate({**base, "router": {"replicas": 1, "instance_type": "c7g.large"}})  # fmt: skip
    with pytest.raises(ConfigError, match="router.instance_type: c7g.large is not x86_64"):
        deploy_routers(graviton, None, None, policy=dict, vpc="vpc-1", image="ami-1")
    assert all(len(elb_name("a" * 31, k)) <= 32 for k in ("nlb", "tg"))
    assert elb_name("a" * 31, "nlb") != elb_name("a" * 30 + "b", "nlb")


def test_the_scenario_and_its_files_travel_with_the_config(tmp_path):
    from hybridserve.aws.routers import router_files
    from hybridserve.config import load_scenario

    data = Path(load_scenario.__code__.co_filename).parent / "data"
    (tmp_path / "conf").mkdir()
    for name, builtin in (("prices", "catalog-us-east-1"), ("model", "profile-distilbert-int8")):
        (tmp_path / "conf" / f"{name}.yaml").write_bytes((data / f"{builtin}.yaml").read_bytes())
    (tmp_path / "scenario.yaml").write_text(
        "name: s\ncontrol_interval_s: 30\ncatalog: conf/prices.yaml\nmodel: conf/model.yaml\n"
    )
    (tmp_path / "deploy.yaml").write_text(
        f"name: {DEP}\nartifact: art\nbucket: {BUCKET}\nscenario: scenario.yaml\nrouter: {{replicas: 2}}\n"
    )  # fmt: skip
    cfg = load_deployment(tmp_path / "deploy.yaml")
    files = router_files(cfg, str(tmp_path / "state"))
    names = ["deployment.yaml", "scenario-catalog.yaml", "scenario-model.yaml", "scenario.yaml"]
    assert list(files) == names
    (tmp_path / "state").mkdir()
    for name, body in files.items():
        (tmp_path / "state" / name).write_bytes(body)
    copy = load_deployment(tmp_path / "state" / "deployment.yaml")
    assert copy.scenario == str(tmp_path / "state" / "scenario.yaml")
    assert load_scenario(copy.scenario) == load_scenario(cfg.scenario)


def test_one_subnet_per_zone_the_pinned_one_first(aws):
    from hybridserve.aws.balancer import router_subnets

    ec2 = aws.ec2
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    pinned = ec2.create_subnet(
        VpcId=vpc["VpcId"], CidrBlock="172.31.200.0/24", AvailabilityZone="us-east-1a"
    )["Subnet"]["SubnetId"]
    found = router_subnets(ec2, vpc["VpcId"], None)
    by_id = {s["SubnetId"]: s for s in ec2.describe_subnets()["Subnets"]}
    assert all(by_id[s]["DefaultForAz"] for s, _ in found)  # the zones' default subnets
    zones = [by_id[s]["AvailabilityZone"] for s, _ in found]
    assert zones == sorted(set(zones))  # one per zone
    with_pin = router_subnets(ec2, vpc["VpcId"], pinned)
    assert (pinned, "172.31.200.0/24") in with_pin and len(with_pin) == len(found)
    # a VPC without default subnets: the lowest id in each zone
    other = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    made = [ec2.create_subnet(VpcId=other, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone="us-east-1b")
            ["Subnet"]["SubnetId"] for i in range(2)]  # fmt: skip
    assert [s for s, _ in router_subnets(ec2, other, None)] == [min(made)]


def test_the_router_group_admits_only_its_clients_and_repairs_drift(aws):
    from hybridserve.aws.balancer import ensure_router_security_group

    ec2 = aws.ec2
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    cfg = DeploymentConfig.model_validate(
        {"name": DEP, "artifact": "a", "bucket": BUCKET,
         "router": {"replicas": 1, "client_cidr": "0.0.0.0/0", "port": 9000}}
    )  # fmt: skip

    def rules() -> list[tuple]:
        (sg,) = _router_sg(aws)
        return sorted((p["IpProtocol"], p.get("FromPort"), r["CidrIp"])
                      for p in sg["IpPermissions"] for r in p["IpRanges"])  # fmt: skip

    gid = ensure_router_security_group(ec2, cfg, vpc)
    want = [("tcp", 9000, "0.0.0.0/0"), ("tcp", 9000, "172.31.0.0/16")]
    assert rules() == want
    ec2.authorize_security_group_ingress(
        GroupId=gid,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                        "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )  # fmt: skip
    assert ensure_router_security_group(ec2, cfg, vpc) == gid
    assert rules() == want
    with calls(aws) as seen:
        ensure_router_security_group(ec2, cfg, vpc)
    assert [op for op in seen if op.split(".")[1].startswith(MUTATING)] == []
