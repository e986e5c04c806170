"""`hybridserve teardown`: remove everything a deployment created."""

from __future__ import annotations

import json

import click

from hybridserve.cli.aws_common import aws_errors, aws_options, setup
from hybridserve.cli.common import user_errors


@click.command()
@aws_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def teardown(config_path: str, region: str | None, endpoint_url: str | None, yes: bool) -> None:
    """Remove everything the deployment created (instances, template, function, roles, sg, objects)."""
    with user_errors(), aws_errors():
        from hybridserve.aws.resources import teardown as run

        cfg, c = setup(config_path, region, endpoint_url)
        if not yes and not click.confirm(
            f"remove every resource tagged for deployment {cfg.name!r}?"
        ):
            raise click.Abort()
        removed = run(c, cfg.name, region=cfg.region, buckets=(cfg.bucket,))
        click.echo(json.dumps(removed))
