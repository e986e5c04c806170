"""What the AWS commands share: their options, the deployment and clients from them, and
botocore's failures as one-line errors.

Credentials come only from the standard AWS chain (environment, profile, instance role); none
is read from the config or printed. `--endpoint-url` points every client at another endpoint
(a moto server in the tests).
"""

from __future__ import annotations

from typing import Any

import click

from hybridserve.cli.common import UserError


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


def setup(config_path: str, region: str | None, endpoint_url: str | None):
    from hybridserve.aws.resources import clients
    from hybridserve.deployment import load_deployment

    cfg = load_deployment(config_path, region=region)
    return cfg, clients(cfg.region, endpoint_url=endpoint_url)


class aws_errors:
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
            raise UserError(f"AWS: {exc}") from None
        return False
