"""`hybridserve deploy`: create or update a deployment."""

from __future__ import annotations

import click

from hybridserve.cli.aws_common import aws_errors, aws_options, setup
from hybridserve.cli.common import user_errors


@click.command()
@aws_options
@click.option("--dry-run", is_flag=True, help="Print what would be created, change nothing.")
def deploy(config_path: str, region: str | None, endpoint_url: str | None, dry_run: bool) -> None:
    """Create or update the deployment (bucket, artifact, roles, security group, function, fleet)."""
    with user_errors(), aws_errors():
        from hybridserve.aws.deploy import deploy as run

        cfg, c = setup(config_path, region, endpoint_url)
        run(cfg, c, dry_run=dry_run, log=lambda m: click.echo(m, err=True))
