"""`hybridserve deploy | status | scale | controller run | teardown` against an AWS account.

Credentials come only from the standard AWS chain (environment, profile, instance role); none
is read from the config or printed. `--endpoint-url` points every client at another endpoint
(a moto server in the tests).
"""

from __future__ import annotations

import json
from typing import Any

import click

from hybridserve.cli_common import user_errors


def aws_options(f):
    f = click.option(
        "--endpoint-url",
        default=None,
        help="Send every AWS call to this endpoint (e.g. a moto server).",
    )(f)
    f = click.option("--region", default=None, help="AWS region (overrides the config).")(f)
    return click.option(
        "--config",
        "config_path",
        required=True,
        type=click.Path(dir_okay=False),
        help="Deployment YAML.",
    )(f)


def _setup(config_path: str, region: str | None, endpoint_url: str | None):
    from hybridserve.aws.deploy import load_deployment
    from hybridserve.aws.resources import clients

    cfg = load_deployment(config_path, region=region)
    return cfg, clients(cfg.region, endpoint_url=endpoint_url)


@click.command()
@aws_options
@click.option("--dry-run", is_flag=True, help="Print what would be created, change nothing.")
def deploy(config_path: str, region: str | None, endpoint_url: str | None, dry_run: bool) -> None:
    """Create or update the deployment (bucket, artifact, roles, security group, function, fleet)."""
    with user_errors(), _aws_errors():
        from hybridserve.aws.deploy import deploy as run

        cfg, c = _setup(config_path, region, endpoint_url)
        run(cfg, c, dry_run=dry_run, log=lambda m: click.echo(m, err=True))


@click.command()
@aws_options
@click.option("--json", "as_json", is_flag=True)
def status(config_path: str, region: str | None, endpoint_url: str | None, as_json: bool) -> None:
    """Fleet and function of the deployment, found by tags."""
    with user_errors(), _aws_errors():
        from hybridserve.aws.deploy import status as run

        cfg, c = _setup(config_path, region, endpoint_url)
        s = run(cfg, c)
        if as_json:
            click.echo(json.dumps(s))
        else:
            click.echo(
                f"deployment {s['deployment']}: fleet {s['fleet'] or '(empty)'}; function {s['function']}"
            )


@click.command()
@aws_options
@click.option(
    "--instances", multiple=True, required=True, help="TYPE=N or TYPE/MARKET=N, repeatable."
)
@click.option("--dry-run", is_flag=True)
def scale(
    config_path: str,
    region: str | None,
    endpoint_url: str | None,
    instances: tuple[str, ...],
    dry_run: bool,
) -> None:
    """Converge the fleet to the given counts (other pools go to zero)."""
    with user_errors(), _aws_errors():
        from hybridserve.aws.deploy import parse_instances
        from hybridserve.aws.deploy import scale as run

        target = parse_instances(instances)
        cfg, c = _setup(config_path, region, endpoint_url)
        for a in run(cfg, c, target, dry_run=dry_run):
            click.echo(f"{a.kind} {a.pool} {a.instance_id}")


@click.group()
def controller() -> None:
    """The control loop against AWS."""


@controller.command("run")
@aws_options
@click.option(
    "--trace", "trace_path", type=click.Path(dir_okay=False), help="Replay this trace's arrivals."
)
@click.option(
    "--interval-s",
    type=float,
    default=None,
    help="Wall seconds per control step (default: the scenario's interval).",
)
@click.option("--steps", type=int, default=None, help="Stop after this many steps.")
@click.option(
    "--dry-run", is_flag=True, help="Decide every step and print it; launch and retire nothing."
)
def controller_run(
    config_path: str,
    region: str | None,
    endpoint_url: str | None,
    trace_path: str | None,
    interval_s: float | None,
    steps: int | None,
    dry_run: bool,
) -> None:
    """Forecast, plan and converge every interval (the simulator's Controller, on AWS)."""
    with user_errors(), _aws_errors():
        from itertools import islice

        from hybridserve.aws.deploy import controller_run as run
        from hybridserve.config import load_scenario
        from simulations.traces import load_trace

        cfg, c = _setup(config_path, region, endpoint_url)
        if trace_path is None:
            raise ValueError(
                "--trace: live arrival counts come from the router (not built yet); "
                "replay a trace with --trace FILE"
            )
        sc = load_scenario(cfg.scenario)
        dt = sc.control_interval_s
        counts = load_trace(trace_path).counts
        intervals = (counts[k : k + dt] for k in range(0, len(counts) - dt + 1, dt))
        if steps is not None:
            intervals = islice(intervals, steps)
        run(
            cfg,
            c,
            intervals,
            interval_s=dt if interval_s is None else interval_s,
            log=lambda m: click.echo(m, err=True),
            dry_run=dry_run,
        )


@click.command()
@aws_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def teardown(config_path: str, region: str | None, endpoint_url: str | None, yes: bool) -> None:
    """Remove everything the deployment created (instances, template, function, roles, sg, objects)."""
    with user_errors(), _aws_errors():
        from hybridserve.aws.resources import teardown as run

        cfg, c = _setup(config_path, region, endpoint_url)
        if not yes and not click.confirm(
            f"remove every resource tagged for deployment {cfg.name!r}?"
        ):
            raise click.Abort()
        removed = run(c, cfg.name, region=cfg.region, buckets=(cfg.bucket,))
        click.echo(json.dumps(removed))


class _aws_errors:
    """botocore failures (credentials, access, throttling past the retries) as one-line errors."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        if exc is None:
            return False
        try:
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:
            return False
        if isinstance(exc, (BotoCoreError, ClientError)):
            from hybridserve.cli_common import UserError

            raise UserError(f"AWS: {exc}") from None
        return False


COMMANDS = (deploy, status, scale, controller, teardown)
