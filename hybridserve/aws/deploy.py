"""A deployment: deploy / status / scale / controller / teardown (its typed config is
`hybridserve.deployment`, which loads without AWS libraries).

Every step is idempotent and found again by tags, so any command can be rerun, and a
controller killed mid-reconcile converges on its next run without duplicates.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from botocore.exceptions import ClientError

from hybridserve.aws import resources as R
from hybridserve.aws import tags as T
from hybridserve.aws import wheelhouse as W
from hybridserve.aws.async_resources import (
    async_policy_statements,
    async_status,
    ensure_async,
    queue_name,
)
from hybridserve.aws.ec2 import COMMAND_SETTLE_S, Ec2Fleet
from hybridserve.aws.ec2_backend import AwsBackend, http_ready_probe
from hybridserve.aws.function_code import lambda_code
from hybridserve.aws.images import deployment_arch, latest_al2023
from hybridserve.aws.model_table import lambda_variants
from hybridserve.aws.models import INDEX, check_fits, function_sources, upload_models, uploads
from hybridserve.aws.network import router_cidrs
from hybridserve.aws.routers import deploy_routers, router_plan, router_status
from hybridserve.aws.scenario import deployment_scenario
from hybridserve.aws.shared import account_id, deployment_vpc, service_client
from hybridserve.aws.user_data import deployed_user_data
from hybridserve.config_base import ConfigError
from hybridserve.deployment import DeploymentConfig

if TYPE_CHECKING:
    from hybridserve.config import Scenario
    from hybridserve.controller import Controller

POLICY = "hybrid"  # what `controller run` and `serve` run on AWS


def _image(cfg: DeploymentConfig, ec2: Any) -> str:
    arch = deployment_arch(cfg)  # checked for a given AMI too: one template serves every pool
    return cfg.ec2.image if cfg.ec2.image != "auto" else latest_al2023(ec2, arch)


def _vpc(cfg: DeploymentConfig, ec2: Any) -> str:
    return deployment_vpc(ec2, cfg.ec2.vpc_id)


def _security_group(cfg: DeploymentConfig, ec2: Any) -> str:
    """The group letting the router (ec2.router_cidr, else the VPC's CIDRs) reach the port."""
    vpc = _vpc(cfg, ec2)
    cidrs = router_cidrs(ec2, vpc, cfg.ec2.router_cidr)
    return R.ensure_security_group(ec2, cfg.name, vpc_id=vpc, port=cfg.ec2.port, router_cidr=cidrs)


def one_model(cfg: DeploymentConfig, what: str) -> None:
    """Refuse `what` on a multi-model deployment (not built for several models yet)."""
    if cfg.models:
        raise ConfigError(
            f"models: {what} runs on a one-model deployment only for now; a multi-model "
            "deployment runs its joint plan with `hybridserve serve` (the router in front of "
            "it, on its arrivals) or `hybridserve controller run --trace` (a multi-model trace)"
        )


def fleet_backend(
    cfg: DeploymentConfig, c: R.Clients, *, manage: bool = False, **kw: Any
) -> AwsBackend:
    """The deployment's AwsBackend; readiness per `ec2.readiness` unless `probe` is given.

    `manage` (deploy and scale, on the deployer's credentials) makes the security group and
    the launch template hold the deployment's current content, a new template version rolling
    the fleet. Without it (the controller, the router, plan: the runtime policy) the fleet
    launches from the deployed template as it is and writes neither, so a runtime start
    rewrites no security group and a newer `image: auto` rolls nothing behind deploy's back."""
    if cfg.ec2.readiness == "health":
        kw.setdefault("probe", http_ready_probe())
    kw.setdefault("port", cfg.ec2.port)
    kw.setdefault("max_instances", cfg.ec2.max_instances)
    kw.setdefault("drain_s", cfg.ec2.drain_s)
    if not manage:
        fleet = Ec2Fleet(cfg.name, c.ec2, "", subnet_id=cfg.ec2.subnet_id, manage_template=False)
        return AwsBackend(fleet, **kw)
    sg = _security_group(cfg, c.ec2)
    profile = c.iam.get_instance_profile(InstanceProfileName=R.profile_name(cfg.name))
    fleet = Ec2Fleet(
        cfg.name,
        c.ec2,
        _image(cfg, c.ec2),
        user_data=deployed_user_data(cfg, c.s3),
        security_group_ids=(sg,),
        instance_profile_arn=profile["InstanceProfile"]["Arn"],
        subnet_id=cfg.ec2.subnet_id,
        metadata_tags=bool(cfg.models),
    )
    return AwsBackend(fleet, **kw)


def deploy(cfg: DeploymentConfig, c: R.Clients, *, dry_run: bool = False, log=print) -> dict:
    """Create or update everything the deployment needs, then converge the initial fleet."""
    if dry_run:
        plan = [
            f"bucket s3://{cfg.bucket} (block public access, AES256)",
            *(f"upload {art} -> s3://{cfg.bucket}/{prefix}/" for _, art, prefix in uploads(cfg)),
            *(
                [f"repository index s3://{cfg.bucket}/{cfg.artifact_prefix}/{INDEX}"]
                if cfg.models
                else []
            ),
            f"wheelhouse s3://{cfg.bucket}/{W.wheelhouse_prefix(cfg)}/: wheel "
            f"{cfg.ec2.wheel or 'built from the source tree'}, dependencies for Python "
            f"{W.INSTANCE_PYTHON} {deployment_arch(cfg)} from {cfg.ec2.find_links or 'the pip index'}",
            f"roles {R.lambda_role_name(cfg.name)}, {R.instance_role_name(cfg.name)}, "
            f"profile {R.profile_name(cfg.name)}",
            f"security group {R.security_group_name(cfg.name)}: tcp {cfg.ec2.port} from "
            f"{cfg.ec2.router_cidr or 'the VPC CIDR block(s)'}",
            f"launch template {R.template_name(cfg.name)}",
            *(
                f"function {fn}{f' (model {m})' if m else ''} ({cfg.lambda_.memory_mb} MB, "
                f"package {cfg.lambda_.image_uri or cfg.lambda_.package}, provisioned "
                f"concurrency {cfg.lambda_.provisioned_concurrency}, alias live)"
                for m, fn in cfg.functions.items()
            ),
            f"fleet {dict(cfg.fleet) or '(none)'}",
            router_plan(cfg),
            *(
                [f"async: queue {queue_name(cfg.name)} with dead-letter queue, topic"]
                if cfg.async_jobs.enabled
                else []
            ),
        ]
        for line in plan:
            log(f"would ensure: {line}")
        return {"dry_run": True, "plan": plan}
    check_fits(cfg, [p for p, n in cfg.fleet.items() if n > 0], deployment_scenario(cfg).catalog)
    account = account_id(c)
    created = R.ensure_bucket(c.s3, cfg.bucket, cfg.name, cfg.region)
    if cfg.models:
        uploaded = upload_models(cfg, c.s3)
    else:
        assert cfg.artifact is not None
        uploaded = R.upload_artifact(c.s3, cfg.bucket, cfg.artifact_prefix, cfg.artifact, cfg.name)
    log(
        f"bucket {cfg.bucket} ({'created' if created else 'exists'}); {len(uploaded)} artifact files uploaded"
    )
    supply = W.ensure_supply(cfg, c.s3, deployment_arch(cfg), log)
    roles = R.ensure_roles(
        c.iam,
        cfg.name,
        bucket=cfg.bucket,
        prefix=cfg.artifact_prefix,
        region=cfg.region,
        account=account,
        read_keys=supply.keys,
        functions=list(cfg.functions.values()),
    )
    functions = {}
    for model, artifact, prefix in function_sources(cfg, lambda_variants(cfg)):
        fn = functions[model] = R.ensure_function(
            c.lam,
            cfg.name,
            model=model or None,
            role_arn=roles["lambda_role_arn"],
            **lambda_code(cfg, c, account, artifact),
            memory_mb=cfg.lambda_.memory_mb,
            timeout_s=cfg.lambda_.timeout_s,
            ephemeral_mb=cfg.lambda_.ephemeral_mb,
            reserved_concurrency=cfg.lambda_.reserved_concurrency,
            provisioned_concurrency=cfg.lambda_.provisioned_concurrency,
            env={"HYBRIDSERVE_ARTIFACT": f"s3://{cfg.bucket}/{prefix}/"},
        )
        log(f"function {fn['function_arn']} ({fn['package_type']}) version {fn['version']}")
    from hybridserve.aws.spot import ensure_notice_queue

    ensure_notice_queue(service_client(c, "sqs"), service_client(c, "events"), cfg.name)
    jobs = None
    if cfg.async_jobs.enabled:
        a = cfg.async_jobs
        jobs = ensure_async(c, cfg.name, visibility_s=a.visibility_s,
                            max_receives=a.max_receives, retention_s=a.retention_s)  # fmt: skip
        log(f"async: queue {jobs.queue_url}, topic {jobs.topic_arn}")
    actions = scale(cfg, c, dict(cfg.fleet))
    log(f"fleet: {len(actions)} actions")
    at = {} if cfg.router.replicas == 0 else {"vpc": _vpc(cfg, c.ec2), "image": _image(cfg, c.ec2)}
    routers = deploy_routers(cfg, c, supply, **at, policy=lambda: runtime_policy(cfg, c), log=log)
    return {
        "function": next(iter(functions.values())),
        "functions": functions,  # model -> its function ('' for a one-model deployment)
        "roles": roles,
        "actions": [a.kind for a in actions],
        "routers": routers,
        **({"async": dataclasses.asdict(jobs)} if jobs is not None else {}),
    }


def status(cfg: DeploymentConfig, c: R.Clients) -> dict:
    from hybridserve.aws.ec2 import Ec2Fleet

    fleet = Ec2Fleet(cfg.name, c.ec2, image_id="")
    insts = fleet.observe()
    functions: dict[str, dict | None] = {}
    for model, name in cfg.functions.items():
        try:
            fn = c.lam.get_function(FunctionName=name)["Configuration"]
            functions[model] = {
                "name": fn["FunctionName"],
                "memory_mb": fn["MemorySize"],
                "state": fn.get("State"),
            }
        except c.lam.exceptions.ResourceNotFoundException:
            functions[model] = None
    pools: dict[str, int] = {}
    for i in insts:
        if i.live:
            pools[i.pool] = pools.get(i.pool, 0) + 1
    routers = router_status(cfg, c)
    jobs = async_status(c, cfg.name) if cfg.async_jobs.enabled else None
    return {
        "deployment": cfg.name,
        "instances": [{"id": i.instance_id, "pool": i.pool, "state": i.state} for i in insts],
        "fleet": pools,
        "function": next(iter(functions.values())),
        **({"functions": functions} if cfg.models else {}),  # model -> its function
        **({"routers": routers} if routers is not None else {}),
        **({"async": jobs} if jobs is not None else {}),
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
    """Converge the fleet to `target` (deploy, `hybridserve scale`): a new template version
    rolls it; what retires drains first, and the command returns once the drain is over."""
    check_fits(cfg, [p for p, n in target.items() if n > 0], deployment_scenario(cfg).catalog)
    backend = fleet_backend(cfg, c, manage=True)
    try:
        if not dry_run:
            backend.fleet.ensure_launch_template()
        actions = backend.converge(target, dry_run=dry_run)
        backend.drain.wait()
        if not dry_run and not backend.fleet.settle(COMMAND_SETTLE_S):
            msg = f"describe shows not every change yet after {COMMAND_SETTLE_S:g} s"
            warnings.warn(msg, stacklevel=2)
        return actions
    finally:
        backend.close()


def build_controller(sc: Scenario, backend: Any) -> Controller:
    """The simulator's Controller with the deployment's policy, acting on `backend`."""
    from hybridserve.policies import build_controller as build

    return build(POLICY, sc, backend)[0]


def launch_delays(sc: Scenario) -> dict[str, float]:
    """Pool key -> launch delay: how long a pending instance is expected to take."""
    return {p.key: p.launch_delay_s for p in sc.pools}


def resumed_controller(
    cfg: DeploymentConfig, c: R.Clients, sc: Scenario, backend: Any, log=print
) -> Controller:
    """The deployment's Controller, resumed from the state saved with the deployment if any."""
    from hybridserve.aws.state import load_state, state_url

    ctl = build_controller(sc, backend)
    state = load_state(c.s3, cfg)
    if state is not None:
        ctl.restore(state, source=state_url(cfg))
        log(f"resumed from {state_url(cfg)} after step {ctl.steps}")
    return ctl


def controller_run(
    cfg: DeploymentConfig,
    c: R.Clients,
    counts_at: Callable[[int], np.ndarray | None],
    *,
    interval_s: float,
    max_steps: int | None = None,
    log=print,
    dry_run: bool = False,
) -> int:
    """The same Controller as the simulator, acting on AWS: one step per interval of arrivals,
    `counts_at(n)` being the interval after n steps (None: no more), so a restarted controller
    resumes at the step its saved state reached. The state is saved after every applied step.

    Only the holder of the deployment's lease (aws/lease.py) acts; another controller stays
    passive, and reloads the saved state when it takes over. With `dry_run` every step is
    decided and logged but not applied (no lease, nothing launched or retired, no metric, no
    state saved). Returns the steps taken by this run (at most `max_steps`)."""
    from hybridserve.aws.lease import Lease, lease_ttl_s
    from hybridserve.aws.metrics import controller_metrics, publish
    from hybridserve.aws.spot import await_notices, find_notice_queue
    from hybridserve.aws.state import save_state

    one_model(cfg, "controller run")
    sc = deployment_scenario(cfg)
    backend = fleet_backend(cfg, c, launch_delay_s=launch_delays(sc))
    cw = service_client(c, "cloudwatch")
    queue = None if dry_run else find_notice_queue(service_client(c, "sqs"), cfg.name)
    if queue is None and not dry_run:
        log("no spot notice queue (deploy again to make one): spot losses wait for a step")
    lease = None if dry_run else Lease(c.s3, cfg, lease_ttl_s(interval_s))
    ctl, holding, fresh, steps = None, False, True, 0
    try:
        while max_steps is None or steps < max_steps:
            t0 = time.monotonic()
            try:
                if lease is not None and not lease.hold():
                    if holding or fresh:
                        who, until = lease.seen.get("holder"), lease.seen.get("expires", 0)
                        log(f"passive: the lease is held by {who} until {until:.0f}")
                    holding, fresh = False, False
                    time.sleep(max(interval_s, 0.2))
                    continue
                # resumed only once the lease is held: at start, and on taking over
                if ctl is None or not holding:
                    ctl = resumed_controller(cfg, c, sc, backend, log)
                holding, fresh = True, False
                counts = counts_at(ctl.steps)
                if counts is None:
                    break
                steps += 1
                if dry_run:
                    d = ctl.decide(counts)
                    log(f"step {ctl.steps}: target {d.plan.target} (dry run, valid: {d.valid})")
                else:
                    d = ctl.step(counts)
                    save_state(c.s3, cfg, ctl.state())
                    publish(cw, cfg.name, controller_metrics(d, float(np.mean(counts))))
                    log(
                        f"step {ctl.steps}: target {d.plan.target} "
                        f"actions {[(a.kind, a.pool) for a in d.actions]}"
                    )
            except Exception as e:  # an AWS error or a bad interval must not end the loop
                log(f"step {steps} failed, next step in {interval_s:g} s: {type(e).__name__}: {e}")
            wait = max(0.0, interval_s - (time.monotonic() - t0))
            try:  # until the next step, spot notices are taken in and replaced at once
                if ctl is not None and holding and not dry_run:
                    if await_notices(queue, backend.notice, ctl.on_notice, wait, log):
                        save_state(c.s3, cfg, ctl.state())
                else:
                    time.sleep(wait)
            except Exception as e:
                log(f"taking spot notices failed: {type(e).__name__}: {e}")
                time.sleep(max(0.0, interval_s - (time.monotonic() - t0)))
    finally:
        if lease is not None and holding:
            lease.release()
        backend.close()
    return steps


def plan_next(cfg: DeploymentConfig, c: R.Clients, counts: Callable[[int], np.ndarray]) -> dict:
    """`hybridserve plan`: the decision the controller would take on its next interval
    (`counts(n)`, n being the steps its saved state reached) against the fleet on AWS now,
    through `decide` alone: nothing is launched, retired or saved."""
    one_model(cfg, "plan")
    sc = deployment_scenario(cfg)
    backend = fleet_backend(cfg, c, launch_delay_s=launch_delays(sc))
    try:
        ctl = resumed_controller(cfg, c, sc, backend, log=lambda m: None)
        step = ctl.steps
        d = ctl.decide(counts(step))
        _, actions = backend.plan_actions(d.plan.target) if d.valid else (None, [])
    finally:
        backend.close()
    return {
        "step": step + 1,
        "resumed": step > 0,
        "valid": d.valid,
        "time_s": d.time_s,
        "fleet": d.fleet.totals(),
        "target": d.plan.target,
        "actions": [
            {"kind": a.kind, "pool": a.pool, "instance": a.instance_id, "reason": a.reason}
            for a in actions
        ],  # fmt: skip
        "objective_usd": d.plan.objective_usd,
        "forecast_rps": [round(float(x), 3) for x in d.inputs.forecast.mean],
        "forecast_source": d.forecast_source,
        "plan_source": d.plan_source,
    }


def runtime_policy(cfg: DeploymentConfig, c: R.Clients) -> dict:
    """`hybridserve iam-policy`: the router's and controller's runtime policy for this
    deployment, with its account, launch template and state key filled in."""
    from hybridserve.aws import iam
    from hybridserve.aws.lease import lease_key
    from hybridserve.aws.state import state_key

    try:
        found = c.ec2.describe_launch_templates(
            LaunchTemplateNames=[T.launch_template_name(cfg.name)]
        )
        template_id = found["LaunchTemplates"][0]["LaunchTemplateId"]
    except ClientError as e:
        if not R.is_missing(e) and "NotFound" not in R.error_code(e):
            raise
        template_id = "*"  # not deployed yet: any template (deploy first to narrow it)
    doc = iam.runtime_policy(
        deployment=cfg.name,
        region=cfg.region,
        account=account_id(c),
        bucket=cfg.bucket,
        state_key=state_key(cfg),
        lease_key=lease_key(cfg),
        function=list(cfg.functions.values()),
        instance_role=R.instance_role_name(cfg.name),
        template_id=template_id,
        manifest_key=None if cfg.models else R.artifact_key(cfg.artifact_prefix, "manifest.json"),
        arrivals_prefix=cfg.key("arrivals/"),
        place_models=bool(cfg.models),
    )
    if cfg.async_jobs.enabled:  # the router submits jobs; its async workers run them
        doc["Statement"] += async_policy_statements(
            cfg.name, cfg.region, account_id(c), cfg.bucket, cfg.prefix_root
        )
    return doc
