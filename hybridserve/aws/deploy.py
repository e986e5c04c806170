"""A deployment: deploy / status / scale / controller / teardown (its typed config is
`hybridserve.deployment`, which loads without AWS libraries).

Every step is idempotent and found again by tags, so any command can be rerun, and a
controller killed mid-reconcile converges on its next run without duplicates.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hybridserve.aws import resources as R
from hybridserve.aws.ec2 import AwsBackend, Ec2Fleet, http_ready_probe
from hybridserve.config import ConfigError
from hybridserve.deployment import DeploymentConfig

if TYPE_CHECKING:
    from hybridserve.config import Scenario
    from hybridserve.controller import Controller

POLICY = "hybrid"  # what `controller run` and `serve` run on AWS


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
    """The deployment's AwsBackend; readiness per `ec2.readiness` unless `probe` is given."""
    if cfg.ec2.readiness == "health":
        kw.setdefault("probe", http_ready_probe())
    kw.setdefault("port", cfg.ec2.port)
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
            f"function {R.function_name(cfg.name)} ({cfg.lambda_.memory_mb} MB, package "
            f"{cfg.lambda_.image_uri or cfg.lambda_.package}, provisioned concurrency "
            f"{cfg.lambda_.provisioned_concurrency}, alias live)",
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
    fn = R.ensure_function(
        c.lam,
        cfg.name,
        role_arn=roles["lambda_role_arn"],
        **_lambda_code(cfg, c, account),
        memory_mb=cfg.lambda_.memory_mb,
        timeout_s=cfg.lambda_.timeout_s,
        ephemeral_mb=cfg.lambda_.ephemeral_mb,
        reserved_concurrency=cfg.lambda_.reserved_concurrency,
        provisioned_concurrency=cfg.lambda_.provisioned_concurrency,
        env={"HYBRIDSERVE_ARTIFACT": f"s3://{cfg.bucket}/{cfg.artifact_prefix}/"},
    )
    log(f"function {fn['function_arn']} ({fn['package_type']}) version {fn['version']}")
    backend = fleet_backend(cfg, c)
    backend.fleet.ensure_launch_template()
    actions = backend.converge(cfg.fleet)
    log(f"fleet: {len(actions)} actions")
    return {"function": fn, "roles": roles, "actions": [a.kind for a in actions]}


def service_client(c: R.Clients, service: str) -> Any:
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
    return service_client(c, "sts").get_caller_identity()["Account"]


def _lambda_code(cfg: DeploymentConfig, c: R.Clients, account: str) -> dict[str, Any]:
    """ensure_function's code arguments: the ECR image, or the zip, uploaded to S3 under a
    content-addressed key (a new zip is a new key, so ensure_function sees the change)."""
    import urllib.parse

    from botocore.exceptions import ClientError

    from hybridserve.aws import tags as T

    lam = cfg.lambda_
    if lam.image_uri:
        if R.ecr_region(lam.image_uri) != cfg.region:
            raise ConfigError(
                f"lambda.image_uri: the image is in {R.ecr_region(lam.image_uri)} but the "
                f"function in {cfg.region}: Lambda pulls only from ECR in its own region"
            )
        return {
            "package_type": "Image",
            "image_uri": lam.image_uri,
            "image_command": lam.image_command,
        }
    zpath = lam.prebuilt_zip
    if zpath is None:
        from predictors.packaging import build_lambda_package

        out = Path(tempfile.mkdtemp(prefix="hybridserve-lambda-"))
        # image: a limit of 0 makes packaging write the container build context at any size
        force = {"limit_bytes": 0} if lam.package == "image" else {}
        pkg = build_lambda_package(cfg.artifact, out, include_artifact=False, **force)
        if pkg.kind != "zip":
            if lam.package == "zip":
                raise ConfigError(
                    f"lambda.package: zip, but the package does not fit a zip ({pkg.reason}); "
                    "set lambda.package to image or auto and give lambda.image_uri"
                )
            raise ConfigError(_image_uri_missing(cfg, account, pkg.path, pkg.reason))
        zpath = pkg.path
    key = f"{(cfg.prefix or cfg.name).strip('/')}/lambda-{R.file_sha256(zpath)[:16]}.zip"
    try:
        c.s3.head_object(Bucket=cfg.bucket, Key=key)  # content-addressed: present is current
    except ClientError as e:
        if not R.is_missing(e):
            raise
        tagging = urllib.parse.urlencode(T.tags_for(cfg.name, R.ROLE_ARTIFACT))
        c.s3.upload_file(
            str(zpath),
            cfg.bucket,
            key,
            ExtraArgs={"ChecksumAlgorithm": "SHA256", "Tagging": tagging},
        )
    return {"package_type": "Zip", "bucket": cfg.bucket, "key": key}


def _image_uri_missing(cfg: DeploymentConfig, account: str, context: Path, reason: str) -> str:
    """The error for an image function without lambda.image_uri: how to build and push it."""
    suffix = ".amazonaws.com.cn" if cfg.region.startswith("cn-") else ".amazonaws.com"
    uri = (
        f"{account}.dkr.ecr.{cfg.region}{suffix}/{R.image_repository(cfg.name)}"
        f":{R.context_tag(context)}"
    )
    why = (
        "lambda.package is image"
        if cfg.lambda_.package == "image"
        else f"lambda.package is auto and {reason}"
    )
    steps = "\n".join(f"  {cmd}" for cmd in R.image_build_commands(context, uri, region=cfg.region))
    return (
        f"lambda.image_uri: required for a container-image function ({why}). hybridserve does "
        f"not run Docker: build and push the image from the context written to {context}:\n"
        f"{steps}\nthen set `lambda.image_uri: {uri}` in the deployment config and deploy again"
    )


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


def build_controller(sc: Scenario, backend: Any) -> Controller:
    """The simulator's Controller with the deployment's policy, acting on `backend`."""
    from hybridserve.policies import build_controller as build

    return build(POLICY, sc, backend)[0]


def launch_delays(sc: Scenario) -> dict[str, float]:
    """Pool key -> launch delay: how long a pending instance is expected to take."""
    return {p.key: p.launch_delay_s for p in sc.pools}


def controller_run(
    cfg: DeploymentConfig,
    c: R.Clients,
    counts_per_interval,
    *,
    interval_s: float,
    log=print,
    dry_run: bool = False,
) -> int:
    """The same Controller as the simulator, acting on AWS: one step per interval of arrivals.
    With `dry_run` every step is decided and logged but not applied (nothing is launched or
    retired, no metric is published)."""
    from hybridserve.aws.metrics import controller_metrics, publish
    from hybridserve.config import load_scenario

    sc = load_scenario(cfg.scenario)
    backend = fleet_backend(cfg, c, launch_delay_s=launch_delays(sc))
    ctl = build_controller(sc, backend)
    cw = service_client(c, "cloudwatch")
    steps = 0
    try:
        for counts in counts_per_interval:
            t0 = time.monotonic()
            steps += 1
            try:
                if dry_run:
                    d = ctl.decide(counts)
                    log(f"step {steps}: target {d.plan.target} (dry run, valid: {d.valid})")
                else:
                    d = ctl.step(counts)
                    publish(cw, cfg.name, controller_metrics(d, float(np.mean(counts))))
                    log(
                        f"step {steps}: target {d.plan.target} "
                        f"actions {[(a.kind, a.pool) for a in d.actions]}"
                    )
            except Exception as e:  # an AWS error or a bad interval must not end the loop
                log(f"step {steps} failed, next step in {interval_s:g} s: {type(e).__name__}: {e}")
            time.sleep(max(0.0, interval_s - (time.monotonic() - t0)))
    finally:
        backend.close()
    return steps
