"""`controller run` of a multi-model deployment (issue 14): the simulator's `MultiController`
with `Ec2PlacementBackend` acting on the deployment's instances, so the joint plan measured
offline is the one that runs.

Each step forecasts every model, plans the shards (pools x instances x models x variants) and
converges the fleet and each instance's models to them. The models are the deployment's: a family
directory brings its variants with their measured profiles, accuracy and footprints, and the
plan chooses among those at or above its floor; an artifact is a family of one variant,
planned with its `profile` (a `hybridserve profile` YAML measured on the instance type) or,
without one, the deployment scenario's profile, as a one-model deployment plans, its resident
memory and load time from its manifest's footprint (measured once here when it has none). Only the holder of the deployment's
lease acts (aws/lease.py). The placement lives in AWS (aws/placement.py), so a restarted
controller adopts it; its forecasters start again from the next interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hybridserve.aws import resources as R
from hybridserve.config_base import ConfigError
from hybridserve.deployment import DeploymentConfig

if TYPE_CHECKING:
    from hybridserve.config import Scenario
    from hybridserve.multimodel.controller import MultiDecision
    from hybridserve.multimodel.placement import PlacementAction
    from hybridserve.multimodel.spec import ModelFleet
    from hybridserve.multimodel.table import ModelTable

FORECASTER = "linear"  # each model's, as `serve` with models: uses by default
FOOTPRINT_THREADS = 2  # the instances' model-server threads (ec2_images ImageParams.threads)


def deployment_fleet(cfg: DeploymentConfig, sc: Scenario) -> ModelFleet:
    """The deployment's models as the planner sees them (a family of one variant each)."""
    from hybridserve.config import build_scenario
    from hybridserve.local_stack import load_profile
    from hybridserve.multi_fleet import family_source, footprint
    from hybridserve.multimodel.spec import model_fleet
    from predictors.artifact_manifest import read_manifest

    families: dict[str, Any] = {}
    for i, m in enumerate(cfg.models):
        if m.family is not None:  # its variants with their measured profiles and accuracy
            where = f"models.{i}.family"
            families[m.name] = family_source(Path(m.family), m.accuracy_floor, where)[0]
            continue
        art = Path(str(m.artifact))
        if not (art / "manifest.json").is_file():
            raise ConfigError(f"models.{i}.artifact: {art} is not a model artifact")
        if m.profile is None:
            profile = sc.model
        else:
            try:
                profile = build_scenario({"model": load_profile(Path(m.profile))}).model
            except ConfigError as e:
                raise ConfigError(f"models.{i}.profile: {e}") from None
        variant = str(read_manifest(art).get("variant") or "fp32")
        mb, load_s = footprint(art, FOOTPRINT_THREADS)
        families[m.name] = {
            "reference": variant,
            "provenance": f"deployed artifact {art}",
            "variants": {
                variant: {
                    "accuracy": 1.0,
                    "profile": profile.model_dump(by_alias=True),
                    "memory_mb": mb,
                    "load_s": load_s,
                }
            },
        }
    models = [{"name": m.name, "family": m.name} for m in cfg.models]
    return model_fleet({"families": families, "models": models}, "models")


def deployment_table(cfg: DeploymentConfig) -> ModelTable:
    """The planner's table of the deployment's models on its scenario's pools."""
    from hybridserve.aws.deploy import deployment_scenario
    from hybridserve.multimodel.table import build_table

    sc = deployment_scenario(cfg)
    return build_table(sc, deployment_fleet(cfg, sc))


def lambda_variants(cfg: DeploymentConfig) -> dict[str, str]:
    """Model -> the variant its spill function runs: the table's Lambda choice (the cheapest
    per request among the eligible), so deploy and the router agree; {} without a family
    (each model has one variant)."""
    if not any(m.family is not None for m in cfg.models):
        return {}
    t = deployment_table(cfg)
    return {n: t.choices[int(t.lambda_choice[m])].variant for m, n in enumerate(t.fleet.names)}


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
