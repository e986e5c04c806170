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
    "--trace",
    "trace_path",
    type=click.Path(),
    help="Replay this trace's arrivals (a multi-model deployment: a per-request CSV with a "
    "model column, or a folder of one counts file per model).",
)
@click.option(
    "--interval-s",
    type=float,
    default=None,
    help="Wall seconds per control step (default: the scenario's interval).",
)
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Stop after this many steps (waits while another controller holds the lease do not count).",
)
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
    """Forecast, plan and converge every interval (the simulator's Controller, on AWS).

    The controller's state is saved with the deployment after every step; a restarted one
    resumes from it, at the trace interval after the last one it decided. Only the holder of
    the deployment's lease acts: a second controller waits, passive, and takes over (from the
    saved state) once the holder's lease expires.

    A multi-model deployment (`models:`) runs the joint plan instead, on a multi-model trace
    (a per-request CSV with a model column, or a folder of one counts file per model): shards
    of instances load and evict models as it says."""
    with user_errors(), aws_errors():
        from hybridserve.aws.deploy import controller_run as run

        cfg, c = setup(config_path, region, endpoint_url)
        if cfg.models:  # the joint plan of several models (aws/multi_control.py)
            from hybridserve.aws.multi_control import controller_run_models

            controller_run_models(
                cfg,
                c,
                trace_path,
                interval_s=interval_s,
                max_steps=steps,
                log=lambda m: click.echo(m, err=True),
                dry_run=dry_run,
            )
            return
        dt, counts_at = trace_intervals(cfg.scenario, trace_path)
        run(
            cfg,
            c,
            counts_at,
            interval_s=dt if interval_s is None else interval_s,
            max_steps=steps,
            log=lambda m: click.echo(m, err=True),
            dry_run=dry_run,
        )


def trace_intervals(scenario: str | None, trace_path: str | None):
    """(interval s, counts_at): `counts_at(n)` is the trace's whole control interval after the
    first n, or None past its end."""
    from hybridserve.config import load_scenario
    from simulations.traces import load_trace

    if trace_path is None:
        raise ValueError(
            "--trace: live arrival counts come from the router (not built yet); "
            "replay a trace with --trace FILE"
        )
    dt = load_scenario(scenario).control_interval_s
    counts = load_trace(trace_path).counts

    def counts_at(n: int):
        k = n * dt
        return counts[k : k + dt] if k + dt <= len(counts) else None

    return dt, counts_at
