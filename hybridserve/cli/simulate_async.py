"""`hybridserve simulate-async`: replay an async jobs trace through the async planner under the
hybrid, fleet-only and Lambda-only policies, so a deadline and worker limits can be priced
before they are deployed."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from hybridserve.cli.common import user_errors


@click.command("simulate-async")
@click.option(
    "--jobs",
    "jobs_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Jobs CSV: timestamp, payload_bytes and optionally job_s (default: --synthetic).",
)
@click.option(
    "--synthetic",
    is_flag=True,
    help="Seeded bursts: 6 of 150 jobs, 30 min apart, payloads of a few KB to tens of MB.",
)
@click.option("--deadline-s", type=float, default=600.0, show_default=True, help="Per job.")
@click.option("--max-fleet", type=int, default=4, show_default=True)
@click.option("--max-lambda", type=int, default=50, show_default=True)
@click.option(
    "--job-s", type=float, default=20.0, show_default=True, help="One job on a fleet instance."
)
@click.option(
    "--lambda-job-s", type=float, default=30.0, show_default=True, help="One job on Lambda."
)
@click.option(
    "--launch-s",
    type=float,
    default=None,
    help="A fleet instance's launch to serving (default: the catalog's c6i.xlarge, 90 s).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Of the synthetic trace.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def simulate_async(**kw: Any) -> None:
    """Replay async jobs: cost and deadline attainment of hybrid, fleet-only and Lambda-only."""
    with user_errors():
        _run(**kw)


def _check(name: str, value: float, low: float, strict: bool) -> None:
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value:g}")


def _run(
    jobs_path: str | None,
    synthetic: bool,
    deadline_s: float,
    max_fleet: int,
    max_lambda: int,
    job_s: float,
    lambda_job_s: float,
    launch_s: float | None,
    seed: int,
    as_json: bool,
) -> None:
    from hybridserve.asyncjobs.plan import AsyncPolicy
    from simulations.async_replay import compare_async, default_params, read_jobs, synthetic_jobs

    if jobs_path and synthetic:
        raise ValueError("give --jobs FILE or --synthetic, not both")
    for name, value, strict in (
        ("--deadline-s", deadline_s, True), ("--job-s", job_s, True),
        ("--lambda-job-s", lambda_job_s, True), ("--max-fleet", max_fleet, False),
        ("--max-lambda", max_lambda, False), ("--seed", seed, False),
    ):  # fmt: skip
        _check(name, value, 0, strict)
    overrides: dict[str, float] = {"job_s": job_s, "lambda_job_s": lambda_job_s}
    if launch_s is not None:
        _check("--launch-s", launch_s, 0, False)
        overrides["launch_s"] = launch_s
    params = default_params(**overrides)
    policy = AsyncPolicy(deadline_s=deadline_s, max_fleet=max_fleet, max_lambda=max_lambda)
    jobs = read_jobs(jobs_path) if jobs_path else synthetic_jobs(seed=seed)
    rows = [r.to_dict() for r in compare_async(jobs, policy, params)]
    if as_json:
        click.echo(json.dumps({"trace": jobs.name, "rows": rows}, indent=2, allow_nan=False))
        return
    click.echo(format_rows(jobs.name, deadline_s, rows))


def format_rows(name: str, deadline_s: float, rows: list[dict]) -> str:
    """A small table, one line per policy."""
    head = (
        f"{'policy':<12} {'jobs':>7} {'completed':>9} {'attain':>7} {'cost $':>10} "
        f"{'cost/job $':>11} {'always-on $':>11} {'drain s':>8} {'idle':>5}"
    )
    lines = [f"{name}: {rows[0]['jobs'] if rows else 0} jobs, deadline {deadline_s:g} s", head]
    for r in rows:
        drain = "-" if r["drain_s"] is None else f"{r['drain_s']:.0f}"
        lines.append(
            f"{r['policy']:<12} {r['jobs']:>7} {r['completed']:>9} "
            f"{r['deadline_attainment']:>7.1%} {r['cost_usd']:>10.4f} "
            f"{r['cost_per_job_usd']:>11.6f} {r['always_on_cost_usd']:>11.4f} {drain:>8} "
            f"{r['idle_workers_at_end']:>5}"
        )
    return "\n".join(lines)
