"""`hybridserve serve`: the router and the controller, in front of local instances and a local
Lambda emulator, or of an AWS deployment (when `--config` is a deployment config: see
`hybridserve.serve.config_kind`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import click

from hybridserve.cli.aws_common import aws_errors
from hybridserve.cli.common import UserError, user_errors


@click.command("serve")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Serve config YAML (local mode), or a deployment config (AWS mode: one with any of "
    "name, region, bucket, prefix, scenario, ec2, fleet, e.g. examples/hybridserve.yaml). "
    "Without it, local mode serves the DistilBERT-sized reference model as 'distilbert'.",
)
@click.option("--host", default=None, help="Router address [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Router port [default: 8080].")
@click.option(
    "--tls-cert",
    default=None,
    help="Serve https with this PEM certificate chain (with --tls-key; router.tls_cert).",
)
@click.option("--tls-key", default=None, help="The PEM private key of --tls-cert.")
@click.option(
    "--deployment",
    type=click.Choice(["hybrid", "mark", "lambda-only", "reactive", "fixed", "vm-only"]),
    default=None,
    help="Who serves (local mode), by the simulator's policy names: VMs + Lambda spill (hybrid, "
    "mark), Lambda only, VMs only scaled on load (reactive; vm-only is its deprecated name), "
    "or a fixed fleet.",
)
@click.option("--region", default=None, help="AWS region (AWS mode; overrides the config).")
@click.option(
    "--endpoint-url",
    default=None,
    help="Send every AWS call to this endpoint, e.g. a moto server (AWS mode).",
)
@click.option("--log-level", default="info", show_default=True)
def serve(**kw: Any) -> None:
    """Serve a model: V2 router + Controller + instances + Lambda spill, locally (no AWS needed)
    or in front of a deployment made by `hybridserve deploy` (credentials: the AWS chain)."""
    with user_errors(), aws_errors():
        _serve(**kw)


def _serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    tls_cert: str | None,
    tls_key: str | None,
    deployment: str | None,
    region: str | None,
    endpoint_url: str | None,
    log_level: str,
) -> None:
    from hybridserve import logs
    from hybridserve.config import read_yaml_mapping
    from hybridserve.serve import config_kind

    logs.configure(log_level)
    given = {"host": host, "port": port, "tls_cert": tls_cert, "tls_key": tls_key}
    router = {k: v for k, v in given.items() if v is not None}
    kind = (
        "local"
        if config_path is None
        else config_kind(read_yaml_mapping(config_path, "serve config"), config_path)
    )
    if kind == "aws":
        if deployment is not None:
            raise UserError(
                "--deployment: only for a local serve config; an AWS deployment runs the "
                "hybrid policy (as `controller run`)"
            )
        stack = _aws_stack(config_path, router, region, endpoint_url)
    else:
        for option, value in (("--region", region), ("--endpoint-url", endpoint_url)):
            if value is not None:
                raise UserError(
                    f"{option}: only for a deployment config (AWS mode); "
                    f"{config_path or 'the default config'} is a local serve config"
                )
        stack = _local_stack(config_path, router, deployment)
    try:
        stack.prepare()
        asyncio.run(_run(stack))
    finally:
        stack.close()


def _local_stack(config_path: str | None, router: dict[str, Any], deployment: str | None) -> Any:
    from hybridserve.serve import LocalStack, load_serve_config

    over = {f"router.{k}": v for k, v in router.items()}
    cfg = load_serve_config(config_path, **over, deployment=deployment)
    if cfg.models:  # several models on one fleet
        from hybridserve.multi_stack import MultiLocalStack

        return MultiLocalStack(cfg)
    return LocalStack(cfg)


def _aws_stack(
    config_path: str, router: dict[str, Any], region: str | None, url: str | None
) -> Any:
    from pydantic import ValidationError

    from hybridserve.aws.serving import AwsStack
    from hybridserve.config import format_validation_error
    from hybridserve.deployment import load_deployment
    from hybridserve.serve import RouterOptions

    cfg = load_deployment(config_path, region=region)
    try:
        options = RouterOptions(**router)
    except ValidationError as e:  # the flags are the router's config in AWS mode
        raise UserError(format_validation_error(e, "the --host/--port/--tls-* flags")) from e
    if cfg.models:  # several models: the joint plan over EC2 shards
        from hybridserve.aws.multi_serving import MultiAwsStack

        return MultiAwsStack(cfg, endpoint_url=url, router=options)
    return AwsStack(cfg, endpoint_url=url, router=options)


async def _run(stack: Any) -> None:
    task = asyncio.get_running_loop().create_task(stack.serve())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
