"""`hybridserve status`: a deployment's fleet and function, found by tags."""

from __future__ import annotations

import json

import click

from hybridserve.cli.aws_common import aws_errors, aws_options, setup
from hybridserve.cli.common import user_errors


@click.command()
@aws_options
@click.option("--json", "as_json", is_flag=True)
def status(config_path: str, region: str | None, endpoint_url: str | None, as_json: bool) -> None:
    """Fleet and function of the deployment, found by tags."""
    with user_errors(), aws_errors():
        from hybridserve.aws.deploy import status as run

        cfg, c = setup(config_path, region, endpoint_url)
        s = run(cfg, c)
        if as_json:
            click.echo(json.dumps(s))
        else:
            click.echo(
                f"deployment {s['deployment']}: fleet {s['fleet'] or '(empty)'}; function {s['function']}"
            )
