"""`hybridserve simulate`: replay a trace under each policy; cost and attainment."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import click

from hybridserve.cli.common import trace_options, user_errors
from hybridserve.config import load_scenario
from hybridserve.policies import POLICIES


@click.command()
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False),
    help="Trace file (default: embedded synthetic trace).",
)
@trace_options
@click.option(
    "--policy",
    "policies",
    multiple=True,
    type=click.Choice(list(POLICIES)),
    help="Repeatable; default all.",
)
@click.option("--scenario", "scenario_path", type=click.Path(dir_okay=False), help="Scenario YAML.")
@click.option(
    "--slo-ms", type=float, default=None, help="Latency SLO in ms (overrides the scenario)."
)
@click.option(
    "--slo-target", type=float, default=None, help="Fraction of requests within the SLO, e.g. 0.99."
)
@click.option(
    "--forecaster",
    default=None,
    help="Forecaster of mark and hybrid (default: lstm for mark when torch is installed, "
    "else last-value; auto for hybrid).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Policies replayed in parallel (default: one per core).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--days",
    type=float,
    default=2.0,
    show_default=True,
    help="Length of the embedded synthetic trace.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    help="Write load/capacity/spill and cost plots (PNG).",
)
@click.option(
    "--timeline",
    "timeline_path",
    type=click.Path(dir_okay=False),
    help="Write the per-interval timeline (CSV).",
)
def simulate(**kw: Any) -> None:
    """Replay a request trace through every policy and compare cost and SLO attainment."""
    with user_errors():
        _simulate(**kw)


def _simulate(
    trace_path: str | None,
    trace_format: str,
    timestamp_column: str,
    rate_scale: float,
    start: str,
    duration: str | None,
    policies: tuple[str, ...],
    scenario_path: str | None,
    slo_ms: float | None,
    slo_target: float | None,
    forecaster: str | None,
    workers: int | None,
    seed: int,
    days: float,
    as_json: bool,
    plot_path: str | None,
    timeline_path: str | None,
) -> None:
    from simulations.report import compare, format_table, write_timeline
    from simulations.synthetic import synthetic_trace
    from simulations.traces import load_trace

    slo = {k: v for k, v in (("latency_ms", slo_ms), ("target", slo_target)) if v is not None}
    sc = load_scenario(scenario_path, slo=slo or None)
    for w in sc.profile_warnings:
        click.echo(f"warning: {w}", err=True)
    if trace_path:
        trace = load_trace(
            trace_path,
            trace_format,
            timestamp_column=timestamp_column,
            rate_scale=rate_scale,
            start=start,
            duration=duration,
            seed=seed,
        )
    else:
        if days <= 0:
            raise ValueError(f"--days must be > 0, got {days}")
        trace = synthetic_trace(days=days, seed=seed)
        if start not in ("0", "") or duration is not None:
            from hybridserve.units import parse_duration

            trace = trace.slice(
                parse_duration(start, field="--start"),
                None if duration is None else parse_duration(duration, field="--duration"),
            )
        if rate_scale != 1.0:
            trace = trace.scaled(rate_scale, seed)
    if trace.requests == 0:
        raise ValueError(f"{trace.name}: the trace has no requests in the selected range")
    names = list(policies) or list(POLICIES)
    with _progress(2 * trace.seconds * len(names)) as tick:
        cmp = compare(
            trace, sc, names, seed=seed, forecaster=forecaster, progress=tick, workers=workers
        )
    if as_json:
        click.echo(cmp.to_json())
    else:
        click.echo(format_table(cmp))
    if plot_path:
        from simulations.plots import plot_comparison

        plot_comparison(cmp, plot_path)
        click.echo(f"plot written to {plot_path}", err=True)
    if timeline_path:
        write_timeline(cmp, timeline_path)
        click.echo(f"timeline written to {timeline_path}", err=True)


@contextmanager
def _progress(total: int):
    """A progress bar on stderr when it is a terminal; silent otherwise (CI logs, pipes)."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=total, label="replaying", file=sys.stderr, show_eta=True) as bar:
        tick: Callable[[int], None] = bar.update
        yield tick
