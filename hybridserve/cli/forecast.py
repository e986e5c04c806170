"""`hybridserve forecast`: rolling-origin backtest of a load forecaster on a trace.

The trace is cut into control intervals; every model observes it interval by interval and, over
the evaluation window (the last ``--eval-days``, or the last third of a shorter trace), is scored
at the lead ``--horizon`` against persistence (skill), the one-step naive error (MASE), sMAPE,
relative pinball loss and quantile coverage. See :mod:`hybridserve.forecast.backtest`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from hybridserve.cli.common import UserError, trace_options, user_errors

ALL = "all"


def model_names() -> list[str]:
    """Registered forecaster names, in registry order, read at call time (models are added)."""
    from hybridserve.forecast.registry import FORECASTERS

    return list(FORECASTERS)


@click.command()
@click.option(
    "--trace",
    "trace_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Trace file (per-second counts, request CSV or period CSV).",
)
@click.option(
    "--model",
    default=ALL,
    show_default=True,
    help="Forecaster name, or 'all' for every registered one.",
)
@click.option(
    "--horizon",
    default="10m",
    show_default=True,
    help="Lead time scored (e.g. 10m); a whole number of control intervals.",
)
@click.option(
    "--interval",
    "interval_s",
    type=int,
    default=60,
    show_default=True,
    help="Control interval in seconds.",
)
@click.option(
    "--eval-days",
    type=float,
    default=7.0,
    show_default=True,
    help="Evaluate over the last this many days (the last third of a trace under twice that).",
)
@trace_options
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of --rate-scale."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (an object, a list for 'all').")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    help="Write actual vs forecast over the evaluation window (PNG).",
)
def forecast(**kw: Any) -> None:
    """Backtest load forecasters on a trace (rolling origin) and score them at one lead."""
    with user_errors():
        _forecast(**kw)


def _forecast(
    trace_path: str,
    model: str,
    horizon: str,
    interval_s: int,
    eval_days: float,
    trace_format: str,
    timestamp_column: str,
    rate_scale: float,
    start: str,
    duration: str | None,
    seed: int,
    as_json: bool,
    plot_path: str | None,
) -> None:
    from hybridserve.forecast.backtest import default_eval_start
    from hybridserve.units import format_duration, parse_duration
    from simulations.traces import load_trace

    names = model_names()
    if model != ALL and model not in names:
        raise UserError(
            f"--model: unknown model {model!r}; available: {', '.join(names)} (or '{ALL}')"
        )
    if interval_s < 1:
        raise ValueError(f"--interval: must be >= 1 second, got {interval_s}")
    horizon_s = parse_duration(horizon, field="--horizon")
    if horizon_s < interval_s or horizon_s % interval_s:
        raise ValueError(
            f"--horizon: {horizon!r} ({horizon_s} s) must be a whole number (>= 1) of "
            f"{interval_s} s control intervals (--interval)"
        )
    steps = horizon_s // interval_s
    if not eval_days > 0:
        raise ValueError(f"--eval-days: must be > 0, got {eval_days}")
    trace = load_trace(
        trace_path,
        trace_format,
        timestamp_column=timestamp_column,
        rate_scale=rate_scale,
        start=start,
        duration=duration,
        seed=seed,
    )
    n = trace.seconds // interval_s
    eval_start = default_eval_start(n, interval_s, eval_days)
    if n - eval_start < steps:
        raise ValueError(
            f"history too short: {trace.name} has {n} whole interval(s) of {interval_s} s "
            f"({format_duration(trace.seconds)}); its evaluation window of {n - eval_start} "
            f"interval(s) holds no forecast origin at a {format_duration(horizon_s)} horizon "
            f"({steps} intervals): use a longer trace or a shorter --horizon"
        )
    chosen = names if model == ALL else [model]
    results = []
    for name in chosen:
        try:
            results.append(_run_one(trace, name, interval_s, steps, eval_start, len(chosen) > 1))
        except (ValueError, RuntimeError, ImportError) as e:
            if model != ALL:
                raise UserError(f"{name}: {e}") from None
            click.echo(f"skipping {name}: {e}", err=True)
    if not results:
        raise UserError("no model could be backtested on this trace (see the messages above)")
    if as_json:
        out = [r.as_json() for r in results]
        click.echo(json.dumps(out if model == ALL else out[0], indent=2))
    else:
        click.echo(format_table(results, eval_start, n))
    if plot_path:
        plot_backtests(results, plot_path)
        click.echo(f"plot written to {plot_path}", err=True)


def _run_one(trace, name: str, interval_s: int, steps: int, eval_start: int, chatty: bool):
    from hybridserve.forecast.backtest import backtest
    from hybridserve.forecast.registry import make_forecaster

    tty = sys.stderr.isatty()
    if chatty or tty:
        click.echo(f"backtesting {name} ...", err=True)
    fc = make_forecaster(name, interval_s=interval_s, max_horizon=steps)

    def progress(done: int, total: int) -> None:
        click.echo(f"\r  {name}: {done}/{total} intervals", err=True, nl=done == total)

    return backtest(
        trace.counts,
        fc,
        interval_s=interval_s,
        horizon_steps=steps,
        eval_start_step=eval_start,
        name=trace.name,
        model=name,
        progress=progress if tty else None,
    )


def _fmt(x: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}{spec}}"


def format_table(results: list, eval_start: int | None = None, n: int | None = None) -> str:
    """One row per model: MASE, skill, sMAPE, pinball, coverage p50/p90/p99, fit s, ms/step."""
    from hybridserve.units import format_duration

    r0 = results[0]
    head = (
        f"trace {r0.trace}: lead {format_duration(r0.horizon_s)} at "
        f"{format_duration(r0.interval_s)} intervals, {r0.n_origins} origins"
    )
    if eval_start is not None and n is not None:
        head += f" (last {format_duration((n - eval_start) * r0.interval_s)} of the trace)"
    w = max(14, *(len(r.model) for r in results))
    cols = f"{'model':<{w}} {'MASE':>7} {'skill':>7} {'sMAPE%':>7} {'pinball':>8} "
    cols += f"{'p50':>6} {'p90':>6} {'p99':>6} {'fit s':>7} {'ms/step':>8}"
    lines = [head, cols, "-" * len(cols)]
    for r in results:
        j = r.as_json()
        c = j["coverage"]
        lines.append(
            f"{r.model:<{w}} {_fmt(j['mase'], '.3f', 7)} {_fmt(j['skill'], '.3f', 7)} "
            f"{_fmt(j['smape'], '.2f', 7)} {_fmt(j['pinball'], '.4f', 8)} "
            f"{_fmt(c['p50'], '.3f', 6)} {_fmt(c['p90'], '.3f', 6)} {_fmt(c['p99'], '.3f', 6)} "
            f"{_fmt(j['fit_s'], '.1f', 7)} {_fmt(j['step_ms'], '.3f', 8)}"
        )
    return "\n".join(lines)


def plot_backtests(results: list, path: str) -> None:
    """Actual vs forecast (mean, p90 and a p90-p99 band) at the lead, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybridserve.units import format_duration

    k = len(results)
    fig, axes = plt.subplots(k, 1, figsize=(12, 2.8 * k + 0.6), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        x = r.targets * r.interval_s / 86400.0
        ax.plot(x, r.actual, color="black", lw=0.6, label="actual")
        ax.plot(x, r.point, color="tab:blue", lw=0.8, label="forecast mean")
        if 0.9 in r.quantiles and 0.99 in r.quantiles:
            q90, q99 = r.quantiles[0.9], r.quantiles[0.99]
            ax.plot(x, q90, color="tab:orange", lw=0.6, label="p90")
            ax.fill_between(x, q90, q99, color="tab:orange", alpha=0.25, lw=0, label="p90-p99")
        skill = r.as_json()["skill"]
        ax.set_title(
            f"{r.model}: lead {format_duration(r.horizon_s)}, skill "
            f"{'-' if skill is None else f'{skill:.3f}'}, p90 coverage "
            f"{r.coverage.get('p90', float('nan')):.3f}",
            fontsize=9,
        )
        ax.set_ylabel("req/s")
        ax.legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel(f"day of trace {results[0].trace}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise UserError(f"--plot: cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
