"""Local `hybridserve serve`: model-server processes as instances, the Lambda emulator as
Lambda, the serving profile measured on this machine, all assembled by `LocalStack`."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hybridserve.config import Scenario, build_scenario
from hybridserve.config_base import ConfigError, read_yaml_mapping
from hybridserve.logs import event
from hybridserve.router_stack import RouterStack, fleet_usd_per_s, router_config
from hybridserve.serve_config import ServeConfig
from hybridserve.spawn import spawn_listening

log = logging.getLogger("hybridserve.serve")


def cache_dir(cfg: ServeConfig) -> Path:
    base = cfg.cache_dir or Path(os.environ.get("HYBRIDSERVE_CACHE", "~/.cache/hybridserve"))
    return base.expanduser()


def ensure_artifact(cfg: ServeConfig) -> Path:
    """The artifact to serve: the configured one, or the reference model's int8 build (cached)."""
    if cfg.artifact is not None:
        if not (cfg.artifact / "manifest.json").is_file():
            raise ConfigError(
                f"artifact: {cfg.artifact} is not a model artifact (no manifest.json)"
            )
        return cfg.artifact
    out = cache_dir(cfg) / "artifacts"
    art = out / f"{cfg.model}-int8"
    if not (art / "manifest.json").is_file():
        from predictors.artifact import build_artifact

        event(log, "serve.build_artifact", model=cfg.model, into=str(out))
        art = build_artifact(cfg.model, out, variant="int8")
    return art


def measured_profile(artifact: Path, threads: int, max_batch: int) -> dict[str, Any]:
    """This machine's service ms per batch size for the artifact (cached beside it)."""
    cache = artifact / f".profile-t{threads}-b{max_batch}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from predictors.artifact import load_artifact
    from predictors.onnx_model import OnnxModel
    from predictors.profile import profile_document, profile_model

    model = OnnxModel(load_artifact(artifact), intra_op_num_threads=threads)
    sizes = sorted({1, 2, 4, max_batch} | {b for b in (8, 16) if b <= max_batch})
    rows = profile_model(model, sizes, repeats=10, warmup=2)
    doc = profile_document(model.name, rows, threads)
    with contextlib.suppress(OSError):  # a read-only artifact: measure again next time
        cache.write_text(json.dumps(doc))
    return doc


def load_profile(path: Path) -> dict[str, Any]:
    """A profile written by `hybridserve profile` (name, provenance, reference.batch_ms)."""
    doc = read_yaml_mapping(path, "profile")
    if not isinstance(doc.get("reference"), dict) or not doc["reference"].get("batch_ms"):
        raise ConfigError(
            f"profile: {path} has no reference.batch_ms (write it with `hybridserve profile`)"
        )
    doc.setdefault("name", Path(path).stem)
    doc.setdefault("provenance", f"read from {path}")
    return doc


def local_scenario(cfg: ServeConfig, profile: dict[str, Any]) -> Scenario:
    """The scenario the local Controller plans with: one pool, this machine's profile."""
    it = cfg.instances
    ref = dict(profile["reference"])
    # one server process per instance: its capacity is the measured one, not vCPUs / threads
    catalog = build_scenario({}).catalog.instances
    if it.instance_type not in catalog:
        raise ConfigError(
            f"instances.instance_type: {it.instance_type!r} not in the catalog; "
            f"allowed: {sorted(catalog)}"
        )
    ref["vcpus"] = catalog[it.instance_type].vcpus
    interval = cfg.control_interval_s
    return build_scenario(
        {
            "name": f"local-{cfg.deployment}",
            "slo": {"latency_ms": cfg.slo_ms, "target": cfg.slo_target},
            "control_interval_s": interval,
            "horizon_steps": cfg.horizon_steps,
            "instance_types": [it.instance_type],
            "markets": ["on_demand"],
            "catalog": {"instances": {it.instance_type: {"launch_delay_s": it.launch_delay_s}}},
            "planner": cfg.planner.model_dump(),
            "model": {
                "name": profile["name"],
                "provenance": profile["provenance"],
                "reference": ref,
                # a profile's measured Lambda section (invocation overhead, cold start), if any
                **(
                    {"lambda": profile["lambda"]} if isinstance(profile.get("lambda"), dict) else {}
                ),
            },
            "lambda": {
                "memory_mb": cfg.lambda_.memory_mb,
                "keep_alive_s": cfg.lambda_.keep_alive_s,
                "concurrency_limit": cfg.lambda_.concurrency,
            },
            # VM-only reacts within an interval or two here (a local stand-in for target tracking)
            "reactive": {
                "scale_out_after_s": interval,
                "cooldown_s": 2 * interval,
                "scale_in_after_s": 6 * interval,
            },
        }
    )


def start_emulator(
    cfg: ServeConfig, artifact: Path, log_dir: Path | None, function_name: str | None = None
) -> tuple[subprocess.Popen, str]:
    """The local Lambda emulator in its own process (its HTTP loop off the router's cores),
    running `function_name` (default: the config's; a multi-model serve runs one per model)."""
    lam = cfg.lambda_
    function_name = function_name or lam.function_name
    cmd = [
        sys.executable,
        "-m",
        "hybridserve.lambda_emulator",
        "--artifact",
        str(artifact),
        "--port",
        "0",
        "--concurrency",
        str(lam.concurrency),
        "--keep-alive-s",
        str(lam.keep_alive_s),
        "--memory-mb",
        str(lam.memory_mb),
        "--function-name",
        function_name,
        "--timeout-s",
        str(lam.timeout_s),
    ]
    suffix = "" if function_name == lam.function_name else f"-{function_name}"
    err = open(log_dir / f"lambda-emulator{suffix}.log", "ab") if log_dir else subprocess.DEVNULL  # noqa: SIM115
    return spawn_listening(cmd, err, f"the local Lambda emulator of {function_name}")


def emulator_invoker(cfg: ServeConfig, url: str, function_name: str | None = None) -> Any:
    """The router's invoker of a local emulator's function: bounded by the function's
    concurrency, and waiting out a throttle (keep-warm pings) for up to its timeout."""
    from hybridserve.aws.invoke import LambdaInvoker

    lam = cfg.lambda_
    return LambdaInvoker(
        function_name or lam.function_name,
        endpoint_url=url,
        local_credentials=True,
        max_concurrency=lam.concurrency,
        timeout_s=lam.timeout_s + 5,
        throttle_wait_s=lam.timeout_s,
    )


def stop_emulators(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each emulator still running, then SIGKILL any not gone within 10 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


class LocalStack(RouterStack):
    """Everything local `hybridserve serve` runs, as one object: build, start, serve, stop."""

    def __init__(self, cfg: ServeConfig) -> None:
        super().__init__(cfg.router)
        self.cfg = cfg
        self.emulator: subprocess.Popen | None = None
        self.emulator_url: str | None = None

    def prepare(self) -> None:
        """Artifact, profile, scenario, backend and emulator; the router is built here too."""
        from hybridserve.backends.local import LocalBackend
        from hybridserve.live import CappedBackend, LiveLoop
        from hybridserve.policies import build_controller
        from hybridserve.router import Router
        from predictors.artifact import artifact_metadata

        cfg = self.cfg
        log_dir = cfg.log_dir
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
        art = ensure_artifact(cfg)
        metadata = artifact_metadata(art)
        name = metadata["name"]
        profile = (
            load_profile(cfg.profile)
            if cfg.profile is not None
            else measured_profile(art, cfg.instances.threads, cfg.instances.max_batch)
        )
        sc = self.scenario = local_scenario(cfg, profile)
        spill = cfg.deployment in ("hybrid", "mark", "lambda-only")
        it = cfg.instances
        self.backend = LocalBackend(
            art,
            sc.pools,
            launch_delay_s=it.launch_delay_s,
            drain_s=it.drain_s,
            max_batch=it.max_batch,
            max_delay_ms=it.max_delay_ms,
            threads=it.threads,
            max_queue=max(cfg.router.max_queue, it.max_batch),
            log_dir=log_dir,
        )
        invoker = None
        aj = cfg.async_jobs
        if aj.enabled and cfg.router.replicas > 1:
            raise ConfigError("async_jobs: needs router.replicas 1 (one router takes the jobs)")
        if spill or (aj.enabled and aj.max_lambda > 0):
            self.emulator, self.emulator_url = start_emulator(cfg, art, log_dir)
            invoker = emulator_invoker(cfg, self.emulator_url) if spill else None
        pool = sc.pools[0]
        if it.initial:
            self.backend.converge({pool.key: min(it.initial, it.max_instances)})
        rc = router_config(
            sc,
            name,
            spill=spill,
            options=cfg.router,
            max_batch=it.max_batch,
            delay_ms=it.max_delay_ms,
            lambda_memory_mb=cfg.lambda_.memory_mb,
            lambda_concurrency=cfg.lambda_.concurrency,
            lambda_max_batch=cfg.lambda_.max_batch,
        )
        cost = fleet_usd_per_s(lambda: self.backend.observe().totals(), sc)
        if cfg.router.replicas > 1:
            self.replicas = self._replica_set(rc, metadata, cost)
            take_counts = self.replicas.take_counts
        else:
            self.router = Router(rc, self.backend.endpoints, invoker, metadata=metadata,
                                 fleet_usd_per_s=cost, cost_meter=self._cost_meter(sc))  # fmt: skip
            take_counts = self.router.take_counts
        if aj.enabled:
            from hybridserve.asyncjobs.local import local_async

            root = (log_dir or cache_dir(cfg)) / "async"
            url = self.emulator_url
            factory = None if url is None else functools.partial(emulator_invoker, cfg, url)
            self.async_ = local_async(cfg, sc, art, name, factory, root)
            self.router.jobs = self.async_.front
        if cfg.deployment != "fixed":
            policy = cfg.deployment
            controller, _ = build_controller(
                policy, sc, CappedBackend(self.backend, it.max_instances), forecaster=cfg.forecaster
            )
            self.loop_ = LiveLoop(controller, take_counts)
            if spill:  # the controller's keep-warm rounds, through an invoker of their own
                from hybridserve.aws.warm import warm_round

                self.loop_.warm = functools.partial(
                    warm_round,
                    hold_ms=sc.lambda_.keep_warm.hold_ms,
                    function_name=cfg.lambda_.function_name,
                    endpoint_url=self.emulator_url,
                    local_credentials=True,
                    timeout_s=cfg.lambda_.timeout_s + 5,
                )
            if self.router is not None:
                self.router.metrics.controller = self.loop_.stats
        event(
            log,
            "serve.prepared",
            model=name,
            artifact=str(art),
            deployment=cfg.deployment,
            pool=pool.key,
            capacity_rps=round(pool.capacity_rps, 1),
            batch=pool.batch,
            lambda_url=self.emulator_url,
        )

    def _cost_meter(self, sc: Scenario) -> Any:
        """Cost by cause for the router's metrics: instance lives from the backend's events
        and the forecasts of the control loop's decisions, on the epoch clock."""
        import time

        from hybridserve.attribution import LiveCostMeter, lifetimes_from_events

        backend = self.backend
        offset = time.time() - backend.now()

        def forecasts() -> list[tuple[float, float]]:
            made = self.loop_.decisions[-4:] if self.loop_ is not None else []
            return [(d.time_s + offset, float(d.inputs.forecast.mean[0])) for d in made]

        return LiveCostMeter(
            {p.key: (p.price_usd_s, p.capacity_rps) for p in sc.pools},
            sc.control_interval_s,
            lifetimes=lambda: lifetimes_from_events(backend.events(), offset),
            forecasts=forecasts,
        )

    def _replica_set(self, rc: Any, metadata: dict[str, Any], cost: Any) -> Any:
        """The router replicas (hybridserve/replicas.py) and what each builds its router from."""
        import dataclasses
        import tempfile

        from hybridserve.replicas import ReplicaSet

        cfg, r = self.cfg, self.cfg.router
        spec = {
            "router": dataclasses.asdict(dataclasses.replace(rc, api_key=None)),
            "api_key_env": r.api_key_env,  # each replica reads the key itself: never on disk
            "metadata": metadata,
            "lambda": None
            if self.emulator_url is None
            else {
                "function_name": cfg.lambda_.function_name,
                "endpoint_url": self.emulator_url,
                "timeout_s": cfg.lambda_.timeout_s + 5,
                "throttle_wait_s": cfg.lambda_.timeout_s,
            },
            "host": r.host,
            "port": r.port,
            "tls_cert": None if r.tls_cert is None else str(r.tls_cert),
            "tls_key": None if r.tls_key is None else str(r.tls_key),
            "interval_s": cfg.control_interval_s,
        }

        def fleet_doc() -> dict[str, Any]:
            eps = [[e.instance_id, e.pool, e.url] for e in self.backend.endpoints()]
            stats = dict(self.loop_.stats) if self.loop_ is not None else {}
            return {"endpoints": eps, "usd_per_s": cost(), "controller": stats}

        state = Path(tempfile.mkdtemp(prefix="hybridserve-replicas-"))
        return ReplicaSet(r.replicas, state, spec, fleet_doc, log_dir=cfg.log_dir, owns_dir=True)

    def close(self) -> None:
        super().close()
        if self.emulator is not None:
            stop_emulators([self.emulator])
