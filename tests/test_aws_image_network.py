"""The instances' AMI (exactly the standard AL2023 of the fleet's architecture) and who may
reach them (ec2.router_cidr, else the VPC's own CIDR blocks), on moto."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.aws.images import (  # noqa: E402
    deployment_arch,
    fleet_arch,
    instance_arch,
    latest_al2023,
)
from hybridserve.aws.network import router_cidrs, vpc_cidrs  # noqa: E402
from hybridserve.config import ConfigError  # noqa: E402
from hybridserve.deployment import DeploymentConfig, load_deployment  # noqa: E402

ACCOUNT, REGION = "123456789012", "us-east-1"
AMAZON = "137112412989"  # the account Amazon's AL2023 images belong to


def _register(c, name: str, when: str, *, arch="x86_64", owner="amazon", root="ebs", state=None):
    """An image registered on moto, then given the attributes AWS would report for it."""
    from moto.ec2.models import ec2_backends

    image_id = c.ec2.register_image(Name=name)["ImageId"]
    ami = ec2_backends[ACCOUNT][REGION].amis[image_id]
    ami.architecture, ami.root_device_type, ami.virtualization_type = arch, root, "hvm"
    ami.creation_date = datetime.fromisoformat(when).replace(tzinfo=timezone.utc)
    if owner == "amazon":
        ami.owner_id, ami.owner_alias = AMAZON, "amazon"
    if state:
        ami.state = state
    return image_id


def test_auto_image_is_exactly_the_newest_standard_al2023_of_the_arch(aws):
    c = aws
    std = "al2023-ami-2023.9.{}.0-kernel-6.1-{}"
    want = _register(c, std.format("20301001", "x86_64"), "2030-10-01")
    _register(c, std.format("20300901", "x86_64"), "2030-09-01")  # older
    arm = _register(c, std.format("20301201", "arm64"), "2030-12-01", arch="arm64")
    # newer decoys, each wrong in one way
    _register(c, "al2023-ami-minimal-2023.9.20301201.0-kernel-6.1-x86_64", "2030-12-01")
    _register(c, "al2023-ami-ecs-hvm-2023.0.20301201-kernel-6.1-x86_64", "2030-12-01")
    _register(c, "al2023-ami-2023.9.20301201.0-kernel-6.1-x86_64-ebs", "2030-12-01")
    # matches the server-side glob al2023-ami-2023.*-kernel-*-x86_64, not the exact pattern
    _register(c, "al2023-ami-2023.9.20301206.0-sriov-kernel-6.1-x86_64", "2030-12-06")
    _register(c, std.format("20301202", "x86_64"), "2030-12-02", owner="self")
    _register(c, std.format("20301203", "x86_64"), "2030-12-03", root="instance-store")
    _register(c, std.format("20301204", "x86_64"), "2030-12-04", state="pending")
    _register(c, std.format("20301205", "x86_64"), "2030-12-05", arch="arm64")  # name says x86
    assert latest_al2023(c.ec2, "x86_64") == want
    assert latest_al2023(c.ec2, "arm64") == arm
    with pytest.raises(ValueError, match="architecture 'i386'"):
        latest_al2023(c.ec2, "i386")


def test_deploy_picks_the_image_of_its_fleets_architecture(aws):
    from hybridserve.aws.deploy import _image

    c = aws
    want = _register(c, "al2023-ami-2023.9.20301001.0-kernel-6.1-x86_64", "2030-10-01")
    cfg = DeploymentConfig(name="demo", artifact="a", bucket="bkt", fleet={"c5.large/spot": 1})
    assert _image(cfg, c.ec2) == want
    (img,) = c.ec2.describe_images(ImageIds=[want])["Images"]
    assert img["Architecture"] == "x86_64" and img["ImageOwnerAlias"] == "amazon"
    mixed = cfg.model_copy(update={"fleet": {"c5.large/spot": 1, "c7g.large/on_demand": 1}})
    with pytest.raises(ConfigError, match=r"^ec2.image / fleet: .*arm64: c7g.large"):
        _image(mixed, c.ec2)
    given = mixed.model_copy(update={"ec2": mixed.ec2.model_copy(update={"image": "ami-1"})})
    with pytest.raises(ConfigError, match="mix architectures"):  # one AMI cannot serve both
        _image(given, c.ec2)


@pytest.mark.parametrize(
    ("itype", "arch"),
    [("c5.large", "x86_64"), ("m5.2xlarge", "x86_64"), ("c6in.large", "x86_64"),
     ("g5.xlarge", "x86_64"), ("g4dn.xlarge", "x86_64"), ("c7a.large", "x86_64"),
     ("c7g.large", "arm64"), ("m6gd.xlarge", "arm64"), ("t4g.micro", "arm64"),
     ("c7gn.large", "arm64"), ("g5g.xlarge", "arm64"), ("a1.large", "arm64")],
)  # fmt: skip
def test_instance_architecture(itype, arch):
    assert instance_arch(itype) == arch


def test_a_fleet_mixing_architectures_names_the_fields():
    assert fleet_arch(["c5.large", "m5.large"]) == "x86_64" and fleet_arch([]) == "x86_64"
    assert fleet_arch(["c7g.large", "t4g.micro"]) == "arm64"
    with pytest.raises(ConfigError, match=r"ec2.image / fleet.*x86_64: c5.large"):
        fleet_arch(["c5.large", "c7g.large"])
    # the scenario's pools count: the default scenario's are x86_64
    cfg = DeploymentConfig(name="d", artifact="a", bucket="bkt", fleet={"t4g.small/spot": 1})
    with pytest.raises(ConfigError, match="mix architectures"):
        deployment_arch(cfg)


# --------------------------------------------------------------------------- router_cidr


def _rules(c, gid):
    (sg,) = c.ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    return sorted(
        (p["IpProtocol"], p.get("FromPort"), r["CidrIp"])
        for p in sg["IpPermissions"]
        for r in p.get("IpRanges", [])
    )


def _default_vpc(c) -> str:
    vpcs = c.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    return vpcs[0]["VpcId"]


def test_router_cidr_defaults_to_the_vpcs_cidr_blocks(aws):
    c = aws
    default = _default_vpc(c)
    assert vpc_cidrs(c.ec2, default) == ("172.31.0.0/16",)  # what 10.0.0.0/8 never covered
    # a group made with the old default is corrected to the VPC's block
    old = R.ensure_security_group(c.ec2, "d", vpc_id=default, port=8000, router_cidr="10.0.0.0/8")
    gid = R.ensure_security_group(
        c.ec2, "d", vpc_id=default, port=8000, router_cidr=router_cidrs(c.ec2, default, None)
    )
    assert gid == old and _rules(c, gid) == [("tcp", 8000, "172.31.0.0/16")]
    # a VPC with a secondary block: both are the router's, and nothing else
    vpc = c.ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    c.ec2.associate_vpc_cidr_block(VpcId=vpc, CidrBlock="10.2.0.0/16")
    cidrs = router_cidrs(c.ec2, vpc, None)
    assert cidrs == ("10.1.0.0/16", "10.2.0.0/16")
    gid2 = R.ensure_security_group(c.ec2, "e", vpc_id=vpc, port=9000, router_cidr=cidrs)
    assert _rules(c, gid2) == [("tcp", 9000, "10.1.0.0/16"), ("tcp", 9000, "10.2.0.0/16")]
    assert R.ensure_security_group(c.ec2, "e", vpc_id=vpc, port=9000, router_cidr=cidrs) == gid2
    assert len(_rules(c, gid2)) == 2
    # a configured router network replaces them
    given = router_cidrs(c.ec2, vpc, "10.1.5.0/24")
    R.ensure_security_group(c.ec2, "e", vpc_id=vpc, port=9000, router_cidr=given)
    assert _rules(c, gid2) == [("tcp", 9000, "10.1.5.0/24")]


def test_dry_run_says_where_the_router_may_come_from(aws, tmp_path):
    from hybridserve.aws.deploy import deploy

    cfg = DeploymentConfig(name="d", artifact=str(tmp_path), bucket="bkt")
    plan = deploy(cfg, aws, dry_run=True, log=lambda *_: None)["plan"]
    assert any("tcp 8000 from the VPC CIDR block(s)" in line for line in plan)
    cfg = cfg.model_copy(update={"ec2": cfg.ec2.model_copy(update={"router_cidr": "10.9.0.0/16"})})
    plan = deploy(cfg, aws, dry_run=True, log=lambda *_: None)["plan"]
    assert any("tcp 8000 from 10.9.0.0/16" in line for line in plan)


def _load(tmp_path: Path, ec2: str) -> DeploymentConfig:
    p = tmp_path / "deploy.yaml"
    p.write_text(f"name: d\nartifact: a\nbucket: bkt\nec2: {ec2}\n")
    return load_deployment(p)


@pytest.mark.parametrize(
    ("value", "words"),
    [("0.0.0.0/0", "0.0.0.0/0 is refused"), ("10.0.0.0/7", "/8 or longer"),
     ("10.0.0.1/8", "host bits"), ("fd00::/64", "IPv4"), ("banana", "expected an IPv4 network")],
)  # fmt: skip
def test_router_cidr_is_validated(tmp_path, value, words):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, f"{{router_cidr: '{value}'}}")
    msg = str(err.value)
    assert "field ec2.router_cidr:" in msg and words in msg


def test_config_paths_resolve_against_the_file(tmp_path):
    cfg = _load(tmp_path, "{router_cidr: 10.4.0.0/16, wheel: dist/hybridserve-1-py3-none-any.whl}")
    assert cfg.ec2.router_cidr == "10.4.0.0/16"
    assert cfg.ec2.wheel == str(tmp_path / "dist" / "hybridserve-1-py3-none-any.whl")
    assert _load(tmp_path, "{}").ec2.router_cidr is None
    with pytest.raises(ConfigError, match="field ec2.wheel: .*hybridserve-\\*.whl"):
        _load(tmp_path, "{wheel: dist/app.tar.gz}")
