"""`hybridserve plan`: the controller's next decision against the deployment, applied nowhere."""

from __future__ import annotations

import json

import click

from hybridserve.cli.aws_common import aws_errors, aws_options, setup
from hybridserve.cli.common import user_errors


@click.command("plan")
@aws_options
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(),
    help="Arrivals to replay: the next interval is the one after the saved state's last step.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as one JSON object.")
def plan(
    config_path: str,
    region: str | None,
    endpoint_url: str | None,
    trace_path: str | None,
    as_json: bool,
) -> None:
    """Print the next decision: the controller resumed from its saved state decides on the
    next interval against the fleet on AWS now. Nothing is launched, retired or saved."""
    with user_errors(), aws_errors():
        from hybridserve.aws.deploy import one_model, plan_next
        from hybridserve.cli.controller import trace_intervals

        cfg, c = setup(config_path, region, endpoint_url)
        one_model(cfg, "plan")  # before the trace: a multi-model one is a folder
        _, counts_at = trace_intervals(cfg.scenario, trace_path)

        def counts(n: int):
            nxt = counts_at(n)
            if nxt is None:
                raise ValueError(f"--trace {trace_path}: no whole interval left after step {n}")
            return nxt

        d = plan_next(cfg, c, counts)
    if as_json:
        click.echo(json.dumps(d))
        return
    click.echo(f"step {d['step']} ({'resumed' if d['resumed'] else 'fresh controller'}), "
               f"valid: {d['valid']}, by {d['plan_source']} on {d['forecast_source']}")  # fmt: skip
    click.echo(f"fleet now: {d['fleet']}")
    click.echo(f"target:    {d['target']}")
    for a in d["actions"] or [{"kind": "none", "pool": "", "reason": "converged"}]:
        click.echo(f"  {a['kind']} {a['pool']} {a.get('instance', '')} ({a['reason']})")
