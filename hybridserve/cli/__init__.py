"""`hybridserve` command line: one module per command, named after it. Errors go to stderr
with a non-zero exit, never a traceback."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hybridserve")
def main() -> None:
    """Serve ML models on AWS at the lowest cost that meets a latency SLO."""


def _register() -> None:
    from hybridserve.cli.async_jobs import async_jobs
    from hybridserve.cli.bench import bench
    from hybridserve.cli.controller import controller
    from hybridserve.cli.deploy import deploy
    from hybridserve.cli.family import family
    from hybridserve.cli.forecast import forecast
    from hybridserve.cli.iam_policy import iam_policy
    from hybridserve.cli.model_server import model_server
    from hybridserve.cli.package import package
    from hybridserve.cli.plan import plan
    from hybridserve.cli.profile import profile
    from hybridserve.cli.rollout import rollout
    from hybridserve.cli.scale import scale
    from hybridserve.cli.serve import serve
    from hybridserve.cli.simulate import simulate
    from hybridserve.cli.simulate_async import simulate_async
    from hybridserve.cli.simulate_models import simulate_models
    from hybridserve.cli.status import status
    from hybridserve.cli.sweep import sweep
    from hybridserve.cli.teardown import teardown

    for command in (
        simulate, forecast, package, profile, model_server, serve, bench, family,
        deploy, status, scale, plan, controller, iam_policy, teardown, sweep, simulate_models,
        rollout, async_jobs, simulate_async,
    ):  # fmt: skip
        main.add_command(command)


_register()
