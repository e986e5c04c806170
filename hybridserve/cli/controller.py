"""`hybridserve controller run`: the control loop against AWS."""

from __future__ import annotations

import click

from hybridserve.cli.aws_common import aws_errors, aws_options, setup
from hybridserve.cli.common import user_errors


@click.group()
def controller() -> None:
    """The control loop against AWS."""


@controller.command("run")
@aws_options
@click.option(
    "--trace", "trace_path", type=click.Path(dir_okay=False), help="Replay this trace's arrivals."
)
@click.option(
    "--interval-s",
    type=float,
    default=None,
    help="Wall seconds per control step (default: the scenario's interval).",
)
@click.option("--steps", type=int, default=None, help="Stop after this many steps.")
@click.option(
    "--dry-run", is_flag=True, help="Decide every step and print it; launch and retire nothing."
)
def controller_run(
    config_path: str,
    region: str | None,
    endpoint_url: str | None,
    trace_path: str | None,
    interval_s: float | None,
    steps: int | None,
    dry_run: bool,
) -> None:
    """Forecast, plan and converge every interval (the simulator's Controller, on AWS)."""
    with user_errors(), aws_errors():
        from itertools import islice

        from hybridserve.aws.deploy import controller_run as run
        from hybridserve.config import load_scenario
        from simulations.traces import load_trace

        cfg, c = setup(config_path, region, endpoint_url)
        if trace_path is None:
            raise ValueError(
                "--trace: live arrival counts come from the router (not built yet); "
                "replay a trace with --trace FILE"
            )
        sc = load_scenario(cfg.scenario)
        dt = sc.control_interval_s
        counts = load_trace(trace_path).counts
        intervals = (counts[k : k + dt] for k in range(0, len(counts) - dt + 1, dt))
        if steps is not None:
            intervals = islice(intervals, steps)
        run(
            cfg,
            c,
            intervals,
            interval_s=dt if interval_s is None else interval_s,
            log=lambda m: click.echo(m, err=True),
            dry_run=dry_run,
        )
