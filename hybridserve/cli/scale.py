"""`hybridserve scale`: converge the fleet to given counts."""

from __future__ import annotations

import click

from hybridserve.cli.aws_common import aws_errors, aws_options, setup
from hybridserve.cli.common import user_errors


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
    with user_errors(), aws_errors():
        from hybridserve.aws.deploy import parse_instances
        from hybridserve.aws.deploy import scale as run

        target = parse_instances(instances)
        cfg, c = setup(config_path, region, endpoint_url)
        for a in run(cfg, c, target, dry_run=dry_run):
            click.echo(f"{a.kind} {a.pool} {a.instance_id}")
