"""Shared by the CLI commands: one-line user errors with exit code 2, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
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


def trace_options(f: Callable) -> Callable:
    """Options that pick and reshape a trace; shared by every command that reads one."""
    for opt in reversed(
        [
            click.option(
                "--trace-format",
                type=click.Choice(["auto", "counts", "requests", "periods"]),
                default="auto",
                show_default=True,
            ),
            click.option(
                "--timestamp-column",
                default="TIMESTAMP",
                show_default=True,
                help="Timestamp column of a per-request CSV.",
            ),
            click.option(
                "--rate-scale",
                type=float,
                default=1.0,
                show_default=True,
                help="Multiply the arrival rate.",
            ),
            click.option(
                "--start",
                default="0",
                show_default=True,
                help="Skip this much of the trace (e.g. 2d, 6h, 90s).",
            ),
            click.option("--duration", default=None, help="Use only this much (e.g. 1d)."),
        ]
    ):
        f = opt(f)
    return f
