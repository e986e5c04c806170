"""`hybridserve sweep`: replay a grid of traces x policies x SLOs x rate scales x scenarios on a
local process pool or a Ray cluster; a tidy table (CSV, Parquet, JSON) and frontier plots."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import click

from hybridserve.cli.common import UserError, user_errors
from hybridserve.policies import POLICIES


class SweepFailed(UserError):
    """Every cell failed: nothing to show, so the exit status says so."""

    exit_code = 1


@click.command()
@click.option(
    "--trace",
    "traces",
    multiple=True,
    help="Repeatable. A trace file, or 'synthetic' / 'synthetic:DAYS' for the embedded "
    "synthetic trace (the default).",
)
@click.option(
    "--trace-format",
    type=click.Choice(["auto", "counts", "requests", "periods"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--timestamp-column",
    default="TIMESTAMP",
    show_default=True,
    help="Timestamp column of a per-request CSV.",
)
@click.option("--start", default="0", show_default=True, help="Skip this much of each trace.")
@click.option("--duration", default=None, help="Use only this much of each trace (e.g. 1d).")
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Length of the embedded synthetic trace named 'synthetic'.",
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    type=click.Choice(list(POLICIES)),
    help="Repeatable; default all.",
)
@click.option(
    "--slo-ms",
    "slo_ms",
    multiple=True,
    type=click.FloatRange(min=0, max=60_000, min_open=True),
    help="Repeatable latency SLO in ms (default: the scenario's).",
)
@click.option(
    "--slo-target",
    "slo_targets",
    multiple=True,
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    help="Repeatable fraction within the SLO, e.g. 0.99 (default: the scenario's).",
)
@click.option(
    "--rate-scale",
    "rate_scales",
    multiple=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Repeatable arrival-rate multiplier (default 1).",
)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Repeatable scenario YAML (default: the built-in scenario).",
)
@click.option("--forecaster", default=None, help="Forecaster of mark and hybrid (as simulate).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Cells replayed at once: pool processes (default: one per core), or with --ray "
    "tasks in flight (default: all, as the cluster's CPUs allow).",
)
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="Run on Ray, one task per cell: the cluster at $RAY_ADDRESS, else a local instance. "
    "Setting RAY_ADDRESS alone also selects Ray.",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [...]} on stdout.')
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Write sweep.csv, sweep.parquet and frontier.png into this folder.",
)
def sweep(**kw: Any) -> None:
    """Replay every combination of the given traces, policies, SLOs, rate scales and scenarios
    and tabulate cost and SLO attainment, one row per combination."""
    with user_errors():
        _sweep(**kw)


def _sweep(
    traces: tuple[str, ...],
    trace_format: str,
    timestamp_column: str,
    start: str,
    duration: str | None,
    days: float,
    policies: tuple[str, ...],
    slo_ms: tuple[float, ...],
    slo_targets: tuple[float, ...],
    rate_scales: tuple[float, ...],
    scenarios: tuple[str, ...],
    forecaster: str | None,
    seed: int,
    workers: int | None,
    use_ray: bool,
    as_json: bool,
    out_dir: str | None,
) -> None:
    from simulations.sweep import TraceOptions, expand_grid, import_ray, rows_json, run_sweep

    _check_inputs(traces, days, start, duration, scenarios)
    use_ray = use_ray or bool(os.environ.get("RAY_ADDRESS"))
    if use_ray:
        import_ray()
    opts = TraceOptions(trace_format, timestamp_column, start, duration, days)
    cells = expand_grid(
        traces,
        policies,
        slo_ms,
        slo_targets,
        rate_scales,
        scenarios,
        seed=seed,
        forecaster=forecaster,
        options=opts,
    )
    done = 0

    def on_row(_: int, row: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        click.echo(f"[{done}/{len(cells)}] {_describe(row)}", err=True)

    t0 = time.perf_counter()
    rows = run_sweep(cells, use_ray=use_ray, workers=workers, on_row=on_row)
    failed = [r for r in rows if r["error"] is not None]
    click.echo(
        f"{len(rows)} cells in {time.perf_counter() - t0:.1f} s on "
        f"{'Ray' if use_ray else 'a local pool'}; {len(failed)} failed",
        err=True,
    )
    click.echo(rows_json(rows) if as_json else format_rows(rows))
    if out_dir:
        _write_outputs(rows, Path(out_dir))
    if failed and len(failed) == len(rows):
        raise SweepFailed(f"all {len(rows)} cells failed; the first: {failed[0]['error']}")


def _check_inputs(
    traces: tuple[str, ...],
    days: float,
    start: str,
    duration: str | None,
    scenarios: tuple[str, ...],
) -> None:
    """Fail before any replay on what would fail every cell alike, naming the option."""
    from hybridserve.config import ConfigError, load_scenario
    from hybridserve.units import parse_duration
    from simulations.sweep import synthetic_days

    for spec in traces:
        try:
            is_synthetic = synthetic_days(spec, days) is not None
        except ValueError as e:
            raise UserError(f"--trace {e}") from None
        if not is_synthetic and not os.path.isfile(spec):
            raise UserError(
                f"--trace {spec}: no such file; expected a trace file, or 'synthetic' or "
                "'synthetic:DAYS' for the embedded synthetic trace"
            )
    parse_duration(start, field="--start")
    if duration is not None:
        parse_duration(duration, field="--duration")
    for path in dict.fromkeys(scenarios):
        try:
            sc = load_scenario(path)
        except (ConfigError, FileNotFoundError, ValueError) as e:
            raise UserError(f"--scenario {path}: {e}") from None
        for w in sc.profile_warnings:
            click.echo(f"warning: {path}: {w}", err=True)


def _describe(row: dict[str, Any]) -> str:
    head = (
        f"{row['policy']} on {row['trace']} (slo {_num(row['slo_ms'])} ms @ "
        f"{_num(row['slo_target'])}, x{row['rate_scale']:g}, {row['scenario']})"
    )
    if row["error"] is not None:
        return f"{head}: FAILED {row['error']}"
    return (
        f"{head}: ${row['cost_usd']:,.2f}, attainment {row['slo_attainment']:.4%}, "
        f"{row['sim_wall_s']:.2f} s"
    )


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Human table: one line per cell, the columns that tell policies apart."""
    cols = ["trace", "policy", "slo ms", "target", "scale", "scenario", "cost $", "x oracle"]
    cols += ["attain", "SLO", "lambda", "p99 ms", "error"]
    table = [cols]
    for r in rows:
        ok = r["error"] is None
        table.append(
            [
                r["trace"],
                r["policy"],
                _num(r["slo_ms"]),
                _num(r["slo_target"]),
                f"{r['rate_scale']:g}",
                r["scenario"],
                f"{r['cost_usd']:,.2f}" if ok else "-",
                f"{r['cost_over_oracle']:.3f}" if r["cost_over_oracle"] is not None else "-",
                f"{r['slo_attainment']:.4%}" if ok else "-",
                ("met" if r["target_met"] else "MISSED") if ok else "-",
                f"{r['lambda_fraction']:.2%}" if ok else "-",
                f"{r['latency_p99_ms']:.1f}" if ok else "-",
                r["error"] or "",
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    out = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in table]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(s.rstrip() for s in out)


def _write_outputs(rows: list[dict[str, Any]], out: Path) -> None:
    """The table as CSV (always) and Parquet, and the frontier plot; a missing optional
    package skips its file with a warning rather than losing the sweep."""
    from simulations.sweep import write_table
    from simulations.sweep_plot import plot_frontier

    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, str(out / "sweep.csv"), None)
    written = [out / "sweep.csv"]
    for path, write in (
        (out / "sweep.parquet", lambda p: write_table(rows, None, p)),
        (out / "frontier.png", lambda p: plot_frontier(rows, p)),
    ):
        try:
            write(str(path))
            written.append(path)
        except RuntimeError as e:
            click.echo(f"warning: {path.name} skipped: {e}", err=True)
    click.echo(f"wrote {', '.join(str(p) for p in written)}", err=True)
