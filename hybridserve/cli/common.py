"""Shared by the CLI commands: one-line user errors with exit code 2, never a traceback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
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


# a running router's own API (`rollout`, `async`)
URL = click.option(
    "--url", required=True, help="The router's base URL, e.g. http://127.0.0.1:8080."
)
KEY = click.option(
    "--api-key",
    envvar="HYBRIDSERVE_API_KEY",
    default=None,
    help="Sent as 'Authorization: Bearer KEY' (env HYBRIDSERVE_API_KEY).",
)


def call(url: str, api_key: str | None, method: str, path: str, doc: Any = None) -> Any:
    """One request to the router's rollout API; UserError with the router's message."""
    data = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    req.add_header("content-type", "application/json")
    if api_key:
        req.add_header("authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", "")
        except ValueError:
            msg = ""
        raise UserError(f"{method} {path}: HTTP {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"cannot reach the router at {url}: {e}") from None
