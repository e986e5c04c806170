"""`hybridserve simulate`: replay a trace under each policy; cost and attainment."""

from __future__ import annotations

import json
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
@click.option(
    "--explain",
    is_flag=True,
    help="Attribute each policy's cost per cause (base fleet, over-provisioning, launch overhead, "
    "minimum bill, spill by cause, cold starts) and compare with the alternatives (EC2 target "
    "tracking, Lambda only, SageMaker real-time and Serverless) on the same trace.",
)
@click.option(
    "--explain-csv",
    "explain_csv",
    type=click.Path(dir_okay=False),
    help="Write the cost per control interval and cause (CSV); implies --explain.",
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
    explain: bool = False,
    explain_csv: str | None = None,
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
    explained = _explain(cmp, seed) if explain or explain_csv else None
    if as_json:
        if explained is None:
            click.echo(cmp.to_json())
        else:
            click.echo(json.dumps(_explained_json(cmp, *explained), indent=2, allow_nan=False))
    else:
        click.echo(format_table(cmp))
        if explained is not None:
            from simulations.counterfactuals import format_counterfactuals
            from simulations.explain import format_explain

            exps, cfs, hybrid = explained
            click.echo("")
            click.echo(format_explain(exps))
            click.echo("")
            click.echo(format_counterfactuals(cfs, hybrid, sc.slo.target))
    if plot_path:
        from simulations.plots import plot_comparison

        plot_comparison(cmp, plot_path)
        click.echo(f"plot written to {plot_path}", err=True)
        if explained is not None:
            from simulations.plots import cost_plot_path, plot_cost_causes

            cost_path = cost_plot_path(plot_path)
            plot_cost_causes(explained[0], explained[1], explained[2], cost_path)
            click.echo(f"cost plot written to {cost_path}", err=True)
    if explain_csv and explained is not None:
        from simulations.explain import write_explain_csv

        write_explain_csv(explained[0], explain_csv)
        click.echo(f"cost by cause written to {explain_csv}", err=True)
    if timeline_path:
        write_timeline(cmp, timeline_path)
        click.echo(f"timeline written to {timeline_path}", err=True)


def _explain(cmp: Any, seed: int) -> tuple[list, list, Any]:
    """Each policy's cost by cause, and the alternatives on the same trace (reusing the
    policies the comparison replayed; the hybrid is replayed if it was not)."""
    from simulations.counterfactuals import counterfactuals
    from simulations.explain import explain
    from simulations.replay import run_policy

    exps = [explain(cmp.trace.counts, cmp.scenario, r) for r in cmp.results]
    results = {r.policy: r for r in cmp.results}
    hybrid = results.get("hybrid") or run_policy(
        cmp.trace, cmp.scenario, "hybrid", seed=seed, keep_timeline=False
    )
    return exps, counterfactuals(cmp.trace, cmp.scenario, results, seed=seed), hybrid


def _explained_json(cmp: Any, exps: list, cfs: list, hybrid: Any) -> dict[str, Any]:
    doc = cmp.as_json()
    for res, e in zip(doc["results"], exps, strict=True):
        res["explain"] = e.as_json()
    doc["counterfactuals"] = {
        "hybrid_cost_usd": round(hybrid.cost_usd, 4),
        "prices": _price_provenance(),
        "alternatives": [c.as_json(hybrid.cost_usd) for c in cfs],
    }
    return doc


def _price_provenance() -> dict[str, str]:
    from simulations.counterfactuals import DATA_FILE, load_alternatives

    alt = load_alternatives()
    return {"file": DATA_FILE, "region": alt.region, "date": alt.date, "source": alt.source}


@contextmanager
def _progress(total: int):
    """A progress bar on stderr when it is a terminal; silent otherwise (CI logs, pipes)."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=total, label="replaying", file=sys.stderr, show_eta=True) as bar:
        tick: Callable[[int], None] = bar.update
        yield tick
