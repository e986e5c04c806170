"""The local `serve` config (YAML): instances, emulated Lambda, router, planner; and how a
config file is told apart from an AWS deployment config (`config_kind`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from hybridserve.config import (
    ConfigError,
    PlannerOptions,
    Strict,
    apply_overrides,
    format_validation_error,
    read_yaml_mapping,
)
from hybridserve.deployment import DeploymentConfig

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
    # larger bodies get 413; the default is Lambda's synchronous payload limit
    max_body_bytes: int = Field(6 * 2**20, ge=1024)
    api_key_env: str = API_KEY_ENV  # the key comes from this variable, never from the file
    # router processes sharing the port (SO_REUSEPORT), one Controller behind them: a killed
    # replica takes only the connections it held, and is replaced (hybridserve/replicas.py)
    replicas: int = Field(1, ge=1, le=32)
    # TLS: the router serves https with this certificate chain and key (PEM files), both or
    # neither (on AWS a load balancer may terminate TLS in front of it instead)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _tls_file(cls, v: Path | None) -> Path | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"expected a PEM file, {v} is not a file")
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> RouterOptions:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("router.tls_cert and router.tls_key: give both or neither")
        return self


class ServedModel(Strict):
    """One model of a multi-model serve (issue 14): the V2 name clients use and where it comes
    from: a reference built in code (`model`, in `variant`), an artifact directory, or a family
    directory (`hybridserve family build --profile`) whose variants the planner chooses among,
    at or above `accuracy_floor` (top-1 agreement with the family's fp32)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    model: Literal["distilbert", "resnet50", "mlp"] | None = None
    variant: Literal["fp32", "fp16", "int8"] = "int8"  # of a `model` built in code
    artifact: Path | None = None
    family: Path | None = None
    accuracy_floor: float = Field(0.0, ge=0, le=1)
    profile: Path | None = None  # a `hybridserve profile` YAML; measured at start-up if unset

    @model_validator(mode="after")
    def _one_source(self) -> ServedModel:
        given = [k for k in ("model", "artifact", "family") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of model, artifact or family for {self.name!r} "
                f"(got {', '.join(given) or 'none'})"
            )
        if self.accuracy_floor and self.family is None:
            raise ValueError("accuracy_floor: only for a family (a single artifact has no choice)")
        if self.family is not None and self.profile is not None:
            raise ValueError("profile: a family's variants carry their own profiles")
        return self


class AsyncJobs(Strict):
    """Asynchronous inference beside the router (hybridserve/asyncjobs): a job queue, workers on
    an async fleet of their own and on the Lambda emulator, planned against `deadline_s`."""

    enabled: bool = False
    store_dir: Path | None = None  # inputs, results, records [default: <log_dir|cache>/async]
    deadline_s: float = Field(600.0, gt=0)  # per job, submit to result
    max_fleet: int = Field(1, ge=0)  # async instances at most (this machine's cores)
    max_lambda: int = Field(2, ge=0)  # Lambda workers at most (within lambda.concurrency)
    per_instance: int = Field(4, ge=1)  # jobs in flight per instance (its batcher's work)
    visibility_s: float = Field(60.0, gt=0)  # a job a worker took comes back after this
    max_receives: int = Field(3, ge=1)  # attempts before the dead-letter queue
    interval_s: float = Field(1.0, gt=0)  # the async plan's control interval
    notify_file: Path | None = None  # notifications as JSON lines (SNS's stand-in)


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
    # several models on one fleet, planned jointly (hybridserve.multi_stack); empty: `model`
    models: list[ServedModel] = []
    async_jobs: AsyncJobs = AsyncJobs()

    @field_validator("models")
    @classmethod
    def _distinct(cls, v: list[ServedModel]) -> list[ServedModel]:
        names = [m.name for m in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be distinct; repeated: {', '.join(dup)}")
        return v

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


def _keys(model: type[Strict]) -> frozenset[str]:
    return frozenset(f.alias or n for n, f in model.model_fields.items())


# the keys both configs have (artifact, lambda, router) tell them apart from nothing
SHARED_KEYS = _keys(DeploymentConfig) & _keys(ServeConfig)

# Top-level keys only a deployment config has (hybridserve.deployment.DeploymentConfig, which
# loads without AWS libraries), and those only a serve config has, both derived from the models
DEPLOYMENT_KEYS = _keys(DeploymentConfig) - SHARED_KEYS
SERVE_KEYS = _keys(ServeConfig) - SHARED_KEYS


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
