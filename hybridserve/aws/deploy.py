"""A deployment: its typed config, and deploy / status / scale / controller / teardown.

Every step is idempotent and found again by tags, so any command can be rerun, and a
controller killed mid-reconcile converges on its next run without duplicates.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hybridserve.aws import resources as R
from hybridserve.aws.ec2 import AwsBackend, Ec2Fleet
from hybridserve.config import ConfigError, format_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Ec2Settings(_Strict):
    image: str = "auto"  # an AMI id, or "auto": the newest Amazon Linux 2023 x86_64
    vpc_id: str | None = None  # default VPC when unset
    subnet_id: str | None = None
    port: int = Field(8000, ge=1, le=65535)
    router_cidr: str = "10.0.0.0/8"
    max_batch: int = Field(8, ge=1)
    max_delay_ms: float = Field(5.0, ge=0)


class LambdaSettings(_Strict):
    memory_mb: int = Field(2048, ge=128, le=10240)
    timeout_s: int = Field(30, ge=1, le=900)
    ephemeral_mb: int = Field(1024, ge=512, le=10240)
    reserved_concurrency: int = Field(100, ge=0)
    package: str | None = None  # a prebuilt zip; default: built from the artifact


class DeploymentConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    region: str = "us-east-1"
    artifact: str
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str | None = None
    scenario: str | None = None
    ec2: Ec2Settings = Ec2Settings()
    lambda_: LambdaSettings = Field(LambdaSettings(), alias="lambda")
    fleet: dict[str, int] = Field(default_factory=dict)  # initial target, pool -> count

    @property
    def artifact_prefix(self) -> str:
        return (self.prefix or self.name).strip("/") + "/artifact"


def load_deployment(path: str | Path, **overrides: Any) -> DeploymentConfig:
    """Config from YAML; relative paths resolve against the file; errors name file and field."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{p}: cannot read deployment config: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of deployment fields")
    data.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("artifact", "scenario"):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str((p.parent / data[key]).resolve())
    lam = data.get("lambda")
    if isinstance(lam, dict) and isinstance(lam.get("package"), str):
        pkg = lam["package"]
        if not Path(pkg).is_absolute():
            data["lambda"] = {**lam, "package": str((p.parent / pkg).resolve())}
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(p))) from None


def _image(cfg: DeploymentConfig, ec2: Any) -> str:
    if cfg.ec2.image != "auto":
        return cfg.ec2.image
    imgs = ec2.describe_images(
        Owners=["amazon"],
        Filters=[{"Name": "name", "Values": ["al2023-ami-2023*-x86_64", "al2023-ami-*"]}],
    )["Images"]
    if not imgs:
        raise ConfigError("ec2.image: no Amazon Linux 2023 image found; give an AMI id")
    return max(imgs, key=lambda i: i.get("CreationDate", ""))["ImageId"]


def _vpc(cfg: DeploymentConfig, ec2: Any) -> str:
    if cfg.ec2.vpc_id:
        return cfg.ec2.vpc_id
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise ConfigError("ec2.vpc_id: the account has no default VPC; give one")
    return vpcs[0]["VpcId"]


def _user_data(cfg: DeploymentConfig) -> str:
    from ec2_images.render import ImageParams, render_user_data

    return render_user_data(
        ImageParams(
            deployment=cfg.name,
            artifact_uri=f"s3://{cfg.bucket}/{cfg.artifact_prefix}/",
            port=cfg.ec2.port,
            max_batch=cfg.ec2.max_batch,
            max_delay_ms=cfg.ec2.max_delay_ms,
            region=cfg.region,
        )
    )


def fleet_backend(cfg: DeploymentConfig, c: R.Clients, **kw: Any) -> AwsBackend:
    sg = R.ensure_security_group(
        c.ec2, cfg.name, vpc_id=_vpc(cfg, c.ec2), port=cfg.ec2.port, router_cidr=cfg.ec2.router_cidr
    )
    profile = c.iam.get_instance_profile(InstanceProfileName=R.profile_name(cfg.name))
    fleet = Ec2Fleet(
        cfg.name,
        c.ec2,
        _image(cfg, c.ec2),
        user_data=_user_data(cfg),
        security_group_ids=(sg,),
        instance_profile_arn=profile["InstanceProfile"]["Arn"],
        subnet_id=cfg.ec2.subnet_id,
    )
    return AwsBackend(fleet, **kw)


def deploy(cfg: DeploymentConfig, c: R.Clients, *, dry_run: bool = False, log=print) -> dict:
    """Create or update everything the deployment needs, then converge the initial fleet."""
    if dry_run:
        plan = [
            f"bucket s3://{cfg.bucket} (block public access, AES256)",
            f"upload {cfg.artifact} -> s3://{cfg.bucket}/{cfg.artifact_prefix}/",
            f"roles {R.lambda_role_name(cfg.name)}, {R.instance_role_name(cfg.name)}, "
            f"profile {R.profile_name(cfg.name)}",
            f"security group {R.security_group_name(cfg.name)}: tcp {cfg.ec2.port} from {cfg.ec2.router_cidr}",
            f"launch template {R.template_name(cfg.name)}",
            f"function {R.function_name(cfg.name)} ({cfg.lambda_.memory_mb} MB, alias live)",
            f"fleet {dict(cfg.fleet) or '(none)'}",
        ]
        for line in plan:
            log(f"would ensure: {line}")
        return {"dry_run": True, "plan": plan}
    account = _account(c)
    created = R.ensure_bucket(c.s3, cfg.bucket, cfg.name, cfg.region)
    uploaded = R.upload_artifact(c.s3, cfg.bucket, cfg.artifact_prefix, cfg.artifact, cfg.name)
    log(
        f"bucket {cfg.bucket} ({'created' if created else 'exists'}); {len(uploaded)} artifact files uploaded"
    )
    roles = R.ensure_roles(
        c.iam,
        cfg.name,
        bucket=cfg.bucket,
        prefix=cfg.artifact_prefix,
        region=cfg.region,
        account=account,
    )
    key = f"{(cfg.prefix or cfg.name).strip('/')}/lambda.zip"
    _upload_package(cfg, c, key)
    fn = R.ensure_function(
        c.lam,
        cfg.name,
        role_arn=roles["lambda_role_arn"],
        bucket=cfg.bucket,
        key=key,
        memory_mb=cfg.lambda_.memory_mb,
        timeout_s=cfg.lambda_.timeout_s,
        ephemeral_mb=cfg.lambda_.ephemeral_mb,
        reserved_concurrency=cfg.lambda_.reserved_concurrency,
        env={"HYBRIDSERVE_ARTIFACT": f"s3://{cfg.bucket}/{cfg.artifact_prefix}/"},
    )
    log(f"function {fn['function_arn']} version {fn['version']}")
    backend = fleet_backend(cfg, c)
    backend.fleet.ensure_launch_template()
    actions = backend.converge(cfg.fleet)
    log(f"fleet: {len(actions)} actions")
    return {"function": fn, "roles": roles, "actions": [a.kind for a in actions]}


def _client(c: R.Clients, service: str) -> Any:
    """Another service's client on the same region, endpoint and retry policy as `c`."""
    import boto3

    url = c.ec2.meta.endpoint_url
    region = c.ec2.meta.region_name
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=None if "amazonaws.com" in url else url,
        config=R.client_config(region),
    )


def _account(c: R.Clients) -> str:
    return _client(c, "sts").get_caller_identity()["Account"]


def _upload_package(cfg: DeploymentConfig, c: R.Clients, key: str) -> None:
    if cfg.lambda_.package:
        zpath = Path(cfg.lambda_.package)
    else:
        from predictors.packaging import build_lambda_package

        out = Path(tempfile.mkdtemp(prefix="hybridserve-lambda-"))
        pkg = build_lambda_package(cfg.artifact, out, include_artifact=False)
        if pkg.kind != "zip":
            raise ConfigError(f"lambda: the package does not fit a zip ({pkg.reason})")
        zpath = pkg.path
    c.s3.upload_file(str(zpath), cfg.bucket, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"})


def status(cfg: DeploymentConfig, c: R.Clients) -> dict:
    from hybridserve.aws.ec2 import Ec2Fleet

    fleet = Ec2Fleet(cfg.name, c.ec2, image_id="")
    insts = fleet.observe()
    try:
        fn = c.lam.get_function(FunctionName=R.function_name(cfg.name))["Configuration"]
        function = {
            "name": fn["FunctionName"],
            "memory_mb": fn["MemorySize"],
            "state": fn.get("State"),
        }
    except c.lam.exceptions.ResourceNotFoundException:
        function = None
    pools: dict[str, int] = {}
    for i in insts:
        if i.live:
            pools[i.pool] = pools.get(i.pool, 0) + 1
    return {
        "deployment": cfg.name,
        "instances": [{"id": i.instance_id, "pool": i.pool, "state": i.state} for i in insts],
        "fleet": pools,
        "function": function,
    }


def parse_instances(specs: tuple[str, ...]) -> dict[str, int]:
    """`TYPE=N` or `TYPE/MARKET=N` -> pool counts (market on_demand by default)."""
    out = {}
    for s in specs:
        name, sep, n = s.partition("=")
        if not sep or not n.strip().isdigit():
            raise ValueError(f"--instances: expected TYPE=N (e.g. c5.large=2), got {s!r}")
        pool = name.strip() if "/" in name else f"{name.strip()}/on_demand"
        out[pool] = int(n)
    return out


def scale(cfg: DeploymentConfig, c: R.Clients, target: dict[str, int], *, dry_run: bool = False):
    return fleet_backend(cfg, c).converge(target, dry_run=dry_run)


def controller_run(
    cfg: DeploymentConfig,
    c: R.Clients,
    counts_per_interval,
    *,
    interval_s: float,
    log=print,
) -> int:
    """The same Controller as the simulator, acting on AWS: one step per interval of arrivals."""
    from hybridserve.config import load_scenario
    from hybridserve.controller import Controller
    from hybridserve.policies import make_policy

    sc = load_scenario(cfg.scenario)
    backend = fleet_backend(cfg, c, launch_delay_s={p.key: p.launch_delay_s for p in sc.pools})
    spec = make_policy("hybrid", sc)
    ctl = Controller(
        spec.forecaster,
        spec.planner,
        backend,
        sc.pools,
        interval_s=sc.control_interval_s,
        horizon=sc.horizon_steps,
        lambda_usd_per_request=spec.lambda_usd_per_request(sc),
    )
    from hybridserve.aws.metrics import controller_metrics, publish

    cw = _client(c, "cloudwatch")
    steps = 0
    for counts in counts_per_interval:
        t0 = time.monotonic()
        d = ctl.step(counts)
        steps += 1
        publish(cw, cfg.name, controller_metrics(d, float(np.mean(counts))))
        log(f"step {steps}: target {d.plan.target} actions {[(a.kind, a.pool) for a in d.actions]}")
        time.sleep(max(0.0, interval_s - (time.monotonic() - t0)))
    return steps
