"""`hybridserve simulate-models`: replay a multi-model trace through the multi-model
controller and its baselines; cost, attainment and variant choice per policy and per model."""

from __future__ import annotations

import json
from typing import Any

import click

from hybridserve.cli.common import user_errors
from hybridserve.config import load_scenario

POLICY_CHOICES = ("joint", "per-model", "popularity", "lambda-only", "hybrid-per-model")


@click.command("simulate-models")
@click.option(
    "--models",
    "models_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Fleet YAML: families (variants, accuracy floors) and models "
    "(default: the embedded fleet-default.yaml).",
)
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(),
    default=None,
    help="Multi-model trace: a per-request CSV with a model column, a folder of one counts "
    "file per model, or a YAML/JSON manifest (default: a seeded Zipf synthetic trace).",
)
@click.option("--model-column", default="model", show_default=True)
@click.option("--timestamp-column", default=None, help="Of a per-request CSV (default: detected).")
@click.option(
    "--policy",
    "policies",
    multiple=True,
    type=click.Choice(POLICY_CHOICES),
    help="Repeatable; default joint, per-model, hybrid-per-model and lambda-only.",
)
@click.option("--pin-variant", default=None, help="Serve every model in this variant (e.g. fp32).")
@click.option(
    "--pool",
    "pools",
    multiple=True,
    help="Restrict the hardware to these pools (type/market, e.g. c5.large/on_demand).",
)
@click.option("--scenario", "scenario_path", type=click.Path(dir_okay=False), help="Scenario YAML.")
@click.option("--forecaster", default="linear", show_default=True, help="Per-model forecaster.")
@click.option("--days", type=float, default=1.0, show_default=True, help="Synthetic trace length.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def simulate_models(**kw: Any) -> None:
    """Replay several models on one fleet: joint packing and variant choice vs baselines."""
    with user_errors():
        _run(**kw)


def default_fleet_path() -> str:
    from importlib import resources

    return str(resources.files("hybridserve.data").joinpath("fleet-default.yaml"))


def _run(
    models_path: str | None,
    trace_path: str | None,
    model_column: str,
    timestamp_column: str | None,
    policies: tuple[str, ...],
    pin_variant: str | None,
    pools: tuple[str, ...],
    scenario_path: str | None,
    forecaster: str,
    days: float,
    seed: int,
    as_json: bool,
) -> None:
    from hybridserve.multimodel.spec import load_model_fleet
    from simulations.multi_replay import pinned, run_multi
    from simulations.multi_report import accuracy_margin, align, format_table, variant_choice
    from simulations.multitrace import load_multi_trace, synthetic_multi

    sc = load_scenario(scenario_path)
    fleet = load_model_fleet(models_path or default_fleet_path())
    if pin_variant is not None:
        missing = [f for f, fam in fleet.families.items() if pin_variant not in fam.variants]
        if missing:
            raise ValueError(f"--pin-variant: families {missing} have no variant {pin_variant!r}")
        fleet = pinned(fleet, pin_variant)
    if trace_path:
        trace = load_multi_trace(
            trace_path, model_column=model_column, timestamp_column=timestamp_column
        )
    else:
        if not 0 < days <= 60:
            raise ValueError(f"--days must be in (0, 60], got {days}")
        trace = synthetic_multi(len(fleet.models), days, seed=seed)
    counts = align(trace, fleet.names)
    names = fleet.names
    chosen = list(policies) or ["joint", "per-model", "hybrid-per-model", "lambda-only"]
    results = [
        run_multi(counts, names, sc, fleet, p, pools=list(pools) or None, forecaster=forecaster)
        for p in chosen
    ]
    if as_json:
        out = {
            "trace": trace.name,
            "models": len(names),
            "seconds": trace.seconds,
            "policies": [
                {
                    **r.as_json(),
                    "variant_choice": variant_choice(r, fleet),
                    "min_accuracy_margin": round(accuracy_margin(r, fleet), 6),
                }
                for r in results
            ],
        }
        click.echo(json.dumps(out, indent=2, allow_nan=False))
        return
    click.echo(format_table(trace.name, results, sc.slo.latency_ms, sc.slo.target))
    for r in results:
        choice = variant_choice(r, fleet)
        txt = "; ".join(
            f"{f}: " + ", ".join(f"{v} {s:.0%}" for v, s in d.items()) for f, d in choice.items()
        )
        click.echo(f"  {r.policy}: variants served {txt}")
