"""Shared by the CLI commands: one-line user errors with exit code 2, never a traceback."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import click

from hybridserve.config import ConfigError

EXIT_USAGE = 2


class UserError(click.ClickException):
    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@contextmanager
def user_errors():
    """Turn expected failures (bad trace, config, arguments) into one-line errors."""
    from simulations.traces import TraceError

    try:
        yield
    except (TraceError, ConfigError, ValueError, FileNotFoundError, RuntimeError) as e:
        raise UserError(str(e)) from None
