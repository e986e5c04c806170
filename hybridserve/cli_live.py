"""`hybridserve serve`: the router, the controller and the local backend on one machine."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import click

from hybridserve.cli_common import user_errors


@click.command("serve")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Serve config YAML (see examples/serve.yaml); defaults serve the DistilBERT-sized "
    "reference model as 'distilbert'.",
)
@click.option("--host", default=None, help="Router address [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Router port [default: 8080].")
@click.option(
    "--deployment",
    type=click.Choice(["hybrid", "mark", "lambda-only", "vm-only", "fixed"]),
    default=None,
    help="Who serves: VMs + Lambda spill (hybrid, mark), Lambda only, VMs only, or a fixed fleet.",
)
@click.option("--log-level", default="info", show_default=True)
def serve(**kw: Any) -> None:
    """Serve a model: V2 router + Controller + local instances and local Lambda (no AWS needed)."""
    with user_errors():
        _serve(**kw)


def _serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    deployment: str | None,
    log_level: str,
) -> None:
    from hybridserve import logs
    from hybridserve.serve import LocalStack, load_serve_config

    logs.configure(log_level)
    cfg = load_serve_config(
        config_path, **{"router.host": host, "router.port": port, "deployment": deployment}
    )
    stack = LocalStack(cfg)
    try:
        stack.prepare()
        asyncio.run(_run(stack))
    finally:
        stack.close()


async def _run(stack: Any) -> None:
    task = asyncio.get_running_loop().create_task(stack.serve())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
