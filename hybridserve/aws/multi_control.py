"""`controller run` of a multi-model deployment (issue 14): the simulator's `MultiController`
with `Ec2PlacementBackend` acting on the deployment's instances, so the joint plan measured
offline is the one that runs.

Each step forecasts every model, plans the shards (pools x instances x models x variants) and
converges the fleet and each instance's models to them, on the deployment's table of models
(`aws/model_table.py`). Only the holder of the deployment's lease acts (aws/lease.py). The
placement lives in AWS (aws/placement.py), so a restarted controller adopts it; its
forecasters start again from the next interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from hybridserve.aws import resources as R
from hybridserve.deployment import DeploymentConfig

if TYPE_CHECKING:
    from hybridserve.config import Scenario
    from hybridserve.multimodel.controller import MultiDecision
    from hybridserve.multimodel.placement import PlacementAction
    from hybridserve.multimodel.table import ModelTable

FORECASTER = "linear"  # each model's, as `serve` with models: uses by default


def trace_counts(trace_path: str | None, names: list[str], dt: int) -> Callable[[int], Any]:
    """`counts_at(n)`: every model's arrivals over the trace's interval after the first n
    ((models, dt) in the deployment's model order), None past its end."""
    from simulations.multi_report import align
    from simulations.multitrace import load_multi_trace

    if trace_path is None:
        raise ValueError("--trace: a multi-model deployment replays a multi-model trace")
    counts = align(load_multi_trace(trace_path), names)

    def counts_at(n: int):
        k = n * dt
        return counts[:, k : k + dt] if k + dt <= counts.shape[1] else None

    return counts_at


class _Decide:
    """A placement backend that observes the real one and applies nothing (dry runs)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def observe(self):
        return self.backend.observe()

    def apply(self, actions: list[PlacementAction], now: float) -> None:
        pass


def build(
    cfg: DeploymentConfig, c: R.Clients, **backend_kw: Any
) -> tuple[Scenario, ModelTable, Any]:
    """(scenario, table, Ec2PlacementBackend) of the deployment: `backend_kw` goes to its
    AwsBackend (tests point `url_of` at local servers)."""
    from hybridserve.aws.deploy import deployment_scenario, fleet_backend, launch_delays
    from hybridserve.aws.model_table import deployment_table
    from hybridserve.aws.placement import Ec2PlacementBackend

    sc = deployment_scenario(cfg)
    table = deployment_table(cfg)
    aws = fleet_backend(cfg, c, launch_delay_s=launch_delays(sc), **backend_kw)
    return sc, table, Ec2PlacementBackend(table, aws)


def controller_run_models(
    cfg: DeploymentConfig,
    c: R.Clients,
    trace_path: str | None,
    *,
    interval_s: float | None = None,
    max_steps: int | None = None,
    log: Callable[[str], None] = print,
    dry_run: bool = False,
    **backend_kw: Any,
) -> int:
    """Step the joint plan once per interval of the trace's arrivals; returns the steps this
    run took. A step that fails is logged and the next one comes (nothing stops the loop)."""
    from hybridserve.aws.lease import Lease, lease_ttl_s
    from hybridserve.multimodel.controller import MultiController
    from hybridserve.multimodel.live import CappedPlacement

    sc, table, placement = build(cfg, c, **backend_kw)
    names = table.fleet.names
    dt = sc.control_interval_s
    counts_at = trace_counts(trace_path, names, dt)
    wall = dt if interval_s is None else interval_s
    backend: Any = placement
    if cfg.ec2.max_instances is not None:
        backend = CappedPlacement(backend, cfg.ec2.max_instances)
    if dry_run:
        backend = _Decide(backend)
    ctl = MultiController(
        table, backend, interval_s=dt, horizon_steps=sc.horizon_steps, forecaster=FORECASTER
    )
    lease = None if dry_run else Lease(c.s3, cfg, lease_ttl_s(wall))
    steps, passive = 0, False
    try:
        while max_steps is None or steps < max_steps:
            t0 = time.monotonic()
            try:
                if lease is not None and not lease.hold():
                    if not passive:
                        log(f"passive: the lease is held by {lease.seen.get('holder')}")
                    passive = True
                    time.sleep(max(wall, 0.2))
                    continue
                passive = False
                counts = counts_at(ctl.steps)
                if counts is None:
                    break
                steps += 1
                d = ctl.step(np.asarray(counts), time.time())
                log(describe(d, names, table, dry_run))
            except Exception as e:  # an AWS error or a bad interval must not end the loop
                log(f"step {steps} failed, next step in {wall:g} s: {type(e).__name__}: {e}")
            time.sleep(max(0.0, wall - (time.monotonic() - t0)))
    finally:
        if lease is not None and not passive:
            lease.release()
        placement.close()
    return steps


def describe(d: MultiDecision, names: list[str], table: ModelTable, dry_run: bool) -> str:
    """One step's line: the shards planned and the actions taken (or, dry, that would be)."""
    from hybridserve.multimodel.live import step_summary

    s = step_summary(d, names, table)
    shards = [f"{sh['pool']} x{sh['replicas']} {sh['models']}" for sh in s["shards"]]
    tail = " (dry run: nothing applied)" if dry_run else ""
    return (
        f"step: plan by {s['plan_by']} in {s['plan_ms']} ms; shards {shards or 'none'}; "
        f"actions {s['actions']}{tail}"
    )
