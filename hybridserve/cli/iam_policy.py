"""`hybridserve iam-policy`: the least-privilege policy the router and controller run on."""

from __future__ import annotations

import json

import click

from hybridserve.cli.aws_common import aws_errors, aws_options, setup
from hybridserve.cli.common import user_errors


@click.command("iam-policy")
@aws_options
def iam_policy(config_path: str, region: str | None, endpoint_url: str | None) -> None:
    """Print the IAM policy `serve` and `controller run` need at run time, as JSON: exact
    actions on the deployment's own resources, nothing that rewrites security groups, roles or
    the function (`deploy` does that once). Attach it to the role they run as."""
    with user_errors(), aws_errors():
        from hybridserve.aws.deploy import runtime_policy

        cfg, c = setup(config_path, region, endpoint_url)
        click.echo(json.dumps(runtime_policy(cfg, c), indent=2))
