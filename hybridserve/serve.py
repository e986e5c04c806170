"""`hybridserve serve`: router + controller + backend on one machine.

Local mode (the default, no AWS): instances are `hybridserve model-server` processes started by
the LocalBackend after a launch delay, "Lambda" is the local emulator (worker processes with
real cold starts) called through the same aiobotocore invoker as AWS Lambda, and the Controller
is the simulator's, fed with the router's measured arrivals. The serving profile is measured on
this machine at start-up (cached next to the artifact), so the planner and the router predict
with the latencies this machine really has.

AWS mode (`hybridserve.aws.serving.AwsStack`) fronts a deployment made by `hybridserve deploy`.
Both modes share `RouterStack` (the router under uvicorn, the control loop beside it) and
`router_config`. Which mode a config file means is decided by `config_kind`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, field_validator

from hybridserve.config import (
    ConfigError,
    PlannerOptions,
    Scenario,
    Strict,
    apply_overrides,
    build_scenario,
    format_validation_error,
    lambda_service_s,
    read_yaml_mapping,
)
from hybridserve.deployment import DeploymentConfig
from hybridserve.logs import event
from hybridserve.spawn import spawn_listening

if TYPE_CHECKING:
    from hybridserve.router import RouterConfig

log = logging.getLogger("hybridserve.serve")

# the simulator's policy names, plus `fixed` (a fleet of instances.initial, no controller);
# the old serve names still work for a while, with a deprecation warning
DEPLOYMENTS = ("hybrid", "mark", "lambda-only", "reactive", "fixed")
DEPRECATED_DEPLOYMENTS = {"vm-only": "reactive"}
API_KEY_ENV = "HYBRIDSERVE_API_KEY"


class LocalInstances(Strict):
    """The local fleet: model-server processes standing in for one EC2 instance type."""

    instance_type: str = "c5.large"  # whose price the planner and the cost metric use
    launch_delay_s: float = Field(5.0, ge=0)  # a VM boots in ~90 s; a few seconds here
    initial: int = Field(0, ge=0)
    max_instances: int = Field(2, ge=0)  # this machine's cores bound the fleet
    threads: int = Field(1, ge=1)
    max_batch: int = Field(8, ge=1)
    max_delay_ms: float = Field(2.0, ge=0)
    drain_s: float = Field(2.0, ge=0)


class LocalLambda(Strict):
    """The local Lambda emulator's function settings."""

    function_name: str = "hybridserve-spill"
    memory_mb: int = Field(2048, ge=128, le=10240)
    concurrency: int = Field(2, ge=1)
    keep_alive_s: float = Field(60.0, ge=0)
    timeout_s: float = Field(30.0, gt=0)
    max_batch: int = Field(8, ge=1)


class RouterOptions(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    margin_ms: float = Field(10.0, ge=0)
    max_queue: int = Field(64, ge=1)
    max_spill_pending: int = Field(256, ge=1)
    api_key_env: str = API_KEY_ENV  # the key comes from this variable, never from the file


class ServeConfig(Strict):
    model: str = "distilbert"  # a reference model built in code (no downloads)
    artifact: Path | None = None  # or an artifact directory (`hybridserve package`)
    deployment: Literal["hybrid", "mark", "lambda-only", "reactive", "fixed"] = "hybrid"
    slo_ms: float = Field(300.0, gt=0)
    slo_target: float = Field(0.99, gt=0, lt=1)
    control_interval_s: int = Field(10, ge=1)
    horizon_steps: int = Field(12, ge=1)
    forecaster: str | None = None
    planner: PlannerOptions = PlannerOptions()  # as a scenario's `planner:` section
    instances: LocalInstances = LocalInstances()
    lambda_: LocalLambda = Field(LocalLambda(), alias="lambda")
    router: RouterOptions = RouterOptions()
    profile: Path | None = None  # a `hybridserve profile` YAML; measured at start-up if unset
    cache_dir: Path | None = None
    log_dir: Path | None = None

    @field_validator("deployment", mode="before")
    @classmethod
    def _old_name(cls, v: Any) -> Any:
        if isinstance(v, str) and v in DEPRECATED_DEPLOYMENTS:
            new = DEPRECATED_DEPLOYMENTS[v]
            warnings.warn(
                f"deployment {v!r} is deprecated: it is the simulator's {new!r} policy",
                DeprecationWarning,
                stacklevel=2,
            )
            log.warning("deployment %r is deprecated; use %r (the simulator's name)", v, new)
            return new
        return v


# Top-level keys only a deployment config has (hybridserve.deployment.DeploymentConfig, which
# loads without AWS libraries): every key of its model but the two a serve config shares
SHARED_KEYS = frozenset({"artifact", "lambda"})
DEPLOYMENT_KEYS = (
    frozenset(f.alias or n for n, f in DeploymentConfig.model_fields.items()) - SHARED_KEYS
)
# Serve-only keys: every ServeConfig key but the two the configs share (artifact, lambda).
SERVE_KEYS = frozenset(f.alias or n for n, f in ServeConfig.model_fields.items()) - SHARED_KEYS


def config_kind(data: Mapping[str, Any], source: str = "<config>") -> Literal["local", "aws"]:
    """`aws` when the mapping has any deployment-only key (name, region, bucket, prefix,
    scenario, ec2, fleet), `local` otherwise. A mapping with both deployment-only and
    serve-only keys is an error naming them, rather than a guess."""
    aws = sorted(DEPLOYMENT_KEYS & set(data))
    if not aws:
        return "local"
    local = sorted(SERVE_KEYS & set(data))
    if local:
        raise ConfigError(
            f"{source}: mixes deployment settings {aws} with serve settings {local}; "
            "a deployment config (AWS) or a serve config (local), not both"
        )
    return "aws"


def load_serve_config(path: str | Path | None = None, **overrides: Any) -> ServeConfig:
    """The serve config from YAML (or defaults); errors name the file and the field."""
    data: dict[str, Any] = {}
    src = "<defaults>"
    if path is not None:
        src = str(path)
        data = read_yaml_mapping(path, "serve config")
        if config_kind(data, src) == "aws":
            raise ConfigError(
                f"{src}: a deployment config (it has {sorted(DEPLOYMENT_KEYS & set(data))}), "
                "not a local serve config; serve it on AWS with hybridserve.aws.serving.AwsStack"
            )
    try:
        return ServeConfig.model_validate(apply_overrides(data, overrides))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, src)) from None


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


def router_config(
    sc: Scenario,
    model_name: str,
    *,
    spill: bool,
    options: RouterOptions,
    max_batch: int,
    delay_ms: float,
    lambda_memory_mb: int,
    lambda_concurrency: int,
    lambda_max_batch: int = 8,
) -> RouterConfig:
    """The router's settings, in either mode: SLO, profile and pools from the scenario, the
    model servers' batching, and the spill function's memory, concurrency and batch limit."""
    from hybridserve.router import RouterConfig

    lambda_ms = (0.0, *(lambda_service_s(sc, b) * 1000.0 for b in range(1, lambda_max_batch + 1)))
    pricing = sc.lambda_pricing
    key = os.environ.get(options.api_key_env) or None
    return RouterConfig(
        model_name=model_name,
        slo_ms=sc.slo.latency_ms,
        batch_ms=dict(sc.model.reference.batch_ms),
        max_batch=max_batch,
        delay_ms=delay_ms,
        max_queue=options.max_queue,
        margin_ms=options.margin_ms,
        spill_slack_fraction=sc.batch_latency_fraction,
        spill=spill,
        lambda_ms=lambda_ms,
        lambda_memory_gb=lambda_memory_mb / 1024.0,
        lambda_usd_per_gb_s=pricing.usd_per_gb_s,
        lambda_usd_per_request=pricing.usd_per_request,
        lambda_concurrency=lambda_concurrency,
        max_spill_pending=options.max_spill_pending,
        api_key=key,
    )


def fleet_usd_per_s(totals: Callable[[], Mapping[str, int]], sc: Scenario) -> Callable[[], float]:
    """What the fleet costs per second at the scenario's prices, from `totals` (pool -> live
    instances; the router calls this on its event loop, so `totals` must not do network I/O)."""
    price = {p.key: p.price_usd_s for p in sc.pools}

    def rate() -> float:
        return sum(n * price.get(k, 0.0) for k, n in totals().items())

    return rate


def start_emulator(
    cfg: ServeConfig, artifact: Path, log_dir: Path | None
) -> tuple[subprocess.Popen, str]:
    """The local Lambda emulator in its own process (its HTTP loop off the router's cores)."""
    lam = cfg.lambda_
    cmd = [
        sys.executable,
        "-m",
        "hybridserve.local.lambda_emulator",
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
        lam.function_name,
        "--timeout-s",
        str(lam.timeout_s),
    ]
    err = open(log_dir / "lambda-emulator.log", "ab") if log_dir else subprocess.DEVNULL  # noqa: SIM115
    return spawn_listening(cmd, err, "the local Lambda emulator")


class RouterStack:
    """What every `hybridserve serve` mode shares: the router under uvicorn, with the control
    loop (and whatever else `background` lists) running beside it on the same event loop.

    Subclasses build `backend`, `router`, `scenario` and `loop_` in `prepare`."""

    def __init__(self, router_options: RouterOptions) -> None:
        self.router_options = router_options
        self.backend: Any = None
        self.router: Any = None
        self.loop_: Any = None
        self.scenario: Scenario | None = None
        self.url: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def prepare(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Ask a running `serve` to return (thread-safe enough: uvicorn polls the flag)."""
        if self._server is not None:
            self._server.should_exit = True

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """Coroutines to run beside the router while it serves (cancelled when it stops)."""
        return [self.loop_.run()] if self.loop_ is not None else []

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Run the router (uvicorn) and the background tasks until cancelled or signalled."""
        import uvicorn

        r = self.router_options
        config = uvicorn.Config(
            self.router,
            host=r.host,
            port=r.port,
            lifespan="on",
            log_level="warning",
            access_log=False,
            http="httptools",
        )
        server = self._server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(c) for c in self.background()]
        serving = loop.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]
            self.url = f"http://{r.host}:{port}"
            event(log, "serve.listening", url=self.url)
            print(f"listening on {self.url}", flush=True)
            if ready is not None:
                ready.set()
        try:
            await serving
        finally:
            for t in tasks:
                t.cancel()

    def start_background(self, timeout_s: float = 60.0) -> str:
        """Serve on a daemon thread (notebooks, tests, scripts); returns the router's URL."""
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                ev = asyncio.Event()
                task = asyncio.get_running_loop().create_task(self.serve(ev))
                await ev.wait()
                ready.set()
                await task

            asyncio.run(main())

        self._thread = threading.Thread(target=run, name="hybridserve-serve", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s) or self.url is None:
            raise RuntimeError(f"the router did not start within {timeout_s:g} s")
        return self.url

    def stop_background(self, timeout_s: float = 20.0) -> None:
        """Stop a `start_background` router, then everything else (`close`)."""
        self.shutdown()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.close()

    def close(self) -> None:
        """Stop what this process started (threads, local processes); idempotent."""
        if self.backend is not None:
            self.backend.close()


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
        if spill:
            from hybridserve.aws.invoke import LambdaInvoker

            self.emulator, self.emulator_url = start_emulator(cfg, art, log_dir)
            invoker = LambdaInvoker(
                cfg.lambda_.function_name,
                endpoint_url=self.emulator_url,
                local_credentials=True,
                max_concurrency=cfg.lambda_.concurrency,
                timeout_s=cfg.lambda_.timeout_s + 5,
            )
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
        self.router = Router(
            rc,
            self.backend.endpoints,
            invoker,
            metadata=metadata,
            fleet_usd_per_s=fleet_usd_per_s(lambda: self.backend.observe().totals(), sc),
        )
        if cfg.deployment != "fixed":
            policy = cfg.deployment
            controller, _ = build_controller(
                policy, sc, CappedBackend(self.backend, it.max_instances), forecaster=cfg.forecaster
            )
            self.loop_ = LiveLoop(controller, self.router.take_counts)
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

    def close(self) -> None:
        super().close()
        if self.emulator is not None and self.emulator.poll() is None:
            self.emulator.send_signal(signal.SIGTERM)
            try:
                self.emulator.wait(10)
            except subprocess.TimeoutExpired:
                self.emulator.kill()
