"""The typed config of an AWS deployment (YAML), loadable without boto3 or botocore: `serve`
tells a deployment config from a local one by its keys, and `status` of a typo needs no AWS.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from hybridserve.config import (
    ConfigError,
    Strict,
    apply_overrides,
    format_validation_error,
    read_yaml_mapping,
)

# an image in ECR, in the deployment's region (Lambda pulls from its own region only)
ECR_URI_PATTERN = (
    r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[a-z0-9][a-z0-9._/-]*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$"
)


LAMBDA_NAME_MAX = 64  # characters in a Lambda function's name


def spill_function_name(deployment: str, model: str | None = None) -> str:
    """The spill function's name: the deployment's one, or one per model of a multi-model
    deployment (each loads its own artifact, so a cold start pulls one model only)."""
    return f"hybridserve-{deployment}-spill" + (f"-{model}" if model else "")


# the shortest prefix `ec2.router_cidr` may have: anything wider is most of the internet
MIN_ROUTER_PREFIX = 8


def _ipv4_network(v: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(v, strict=True)
    except ValueError as e:
        raise ValueError(
            f"expected an IPv4 network such as 10.0.0.0/16 (host bits zero), got {v!r}: {e}"
        ) from None
    if net.version != 4:
        raise ValueError(f"expected an IPv4 network such as 10.0.0.0/16, got {v!r}")
    return net


class Ec2Settings(Strict):
    # an AMI id, or "auto": the newest standard Amazon Linux 2023 of the fleet's architecture
    image: str = "auto"
    vpc_id: str | None = None  # default VPC when unset
    subnet_id: str | None = None
    port: int = Field(8000, ge=1, le=65535)
    # who may reach the model servers' port; None: the VPC's own CIDR block(s)
    router_cidr: str | None = None
    # the project's wheel to install on the instances; None: deploy builds it from the source
    # tree (aws/wheel.py). Its dependencies come from `find_links` (a local directory of
    # wheels, no index) or, when unset, pip's configured index at deploy time (aws/wheelhouse.py)
    wheel: str | None = None
    find_links: str | None = None
    max_batch: int = Field(8, ge=1)
    max_delay_ms: float = Field(5.0, ge=0)
    # health: ready once the model server answers /v2/health/ready (the controller and the
    # router must reach the private addresses); state: ready as soon as EC2 says running
    readiness: Literal["health", "state"] = "health"
    # the fleet cap: the planner plans within it and the reconciler never launches past it
    max_instances: int | None = Field(None, ge=0)
    # a retiring instance leaves routing, then is terminated this long after: at least the
    # router's upstream timeout (30 s), so the requests it was sent finish (0: at once)
    drain_s: float = Field(35.0, ge=0, le=3600)

    @field_validator("router_cidr")
    @classmethod
    def _router_cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        net = _ipv4_network(v)
        if net.prefixlen < MIN_ROUTER_PREFIX:
            raise ValueError(
                f"{v} is refused: it would open the model servers to {net.num_addresses:,} addresses; expected "
                f"the router's network with a prefix of /{MIN_ROUTER_PREFIX} or longer (unset: "
                "the VPC's own CIDR blocks)"
            )
        return str(net)

    @field_validator("wheel")
    @classmethod
    def _wheel(cls, v: str | None) -> str | None:
        if v is not None and not (Path(v).name.startswith("hybridserve-") and v.endswith(".whl")):
            raise ValueError(f"expected the path of a hybridserve-*.whl file, got {v!r}")
        return v


class AsyncSettings(Strict):
    """Asynchronous inference on AWS (hybridserve/aws/async_resources.py): a jobs queue, its
    dead-letter queue and a notification topic, made by `deploy`, removed by `teardown`."""

    enabled: bool = False
    visibility_s: int = Field(300, ge=0, le=43200)  # a received job comes back after this
    max_receives: int = Field(3, ge=1, le=1000)  # receives before the dead-letter queue
    retention_s: int = Field(4 * 86400, ge=60, le=14 * 86400)  # a job waits at most this
    deadline_s: float = Field(600.0, gt=0)  # per job, submit to result: what the plan meets
    max_lambda: int = Field(10, ge=0)  # Lambda workers the router host runs at most


class RouterFleetSettings(Strict):
    """Router replicas behind a Network Load Balancer, made by `deploy` (aws/routers.py): an
    Auto Scaling group of `replicas` instances, each running `hybridserve serve` on `port`; the
    NLB listens on `listen_port`. 0 replicas: no router fleet (run `serve` yourself)."""

    replicas: int = Field(0, ge=0)
    instance_type: str = Field("c5.large", pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
    port: int = Field(8080, ge=1, le=65535)
    listen_port: int = Field(80, ge=1, le=65535)
    scheme: Literal["internet-facing", "internal"] = "internet-facing"
    # who may reach the routers (the NLB keeps the client's address); None: the VPC's own
    # CIDR block(s). Any IPv4 network for an internet-facing NLB, 0.0.0.0/0 included when given
    # explicitly (reaching clients outside is what it is for); /8 or longer for an internal one
    client_cidr: str | None = None

    @field_validator("client_cidr")
    @classmethod
    def _client_cidr(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        net = _ipv4_network(v)
        scheme = info.data.get("scheme", "internet-facing")
        if scheme == "internal" and net.prefixlen < MIN_ROUTER_PREFIX:
            raise ValueError(
                f"{v} is refused for an internal load balancer: expected the clients' private "
                f"network with a prefix of /{MIN_ROUTER_PREFIX} or longer (0.0.0.0/0 and other "
                "wide networks only with scheme internet-facing; unset: the VPC's CIDR blocks)"
            )
        return str(net)


PACKAGE_MODES = ("zip", "image", "auto")


class KeepWarmSettings(Strict):
    """Warm-up invokes of `concurrency` environments when the function sat idle `every_s`."""

    every_s: float = Field(gt=0)
    concurrency: int = Field(1, ge=1)


class LambdaSettings(Strict):
    memory_mb: int = Field(2048, ge=128, le=10240)
    timeout_s: int = Field(30, ge=1, le=900)
    ephemeral_mb: int = Field(1024, ge=512, le=10240)
    reserved_concurrency: int = Field(100, ge=0)
    # zip | image | auto (image when the built package only fits a container), or the path of
    # a prebuilt zip (zip)
    package: str = "auto"
    image_uri: str | None = Field(None, pattern=ECR_URI_PATTERN)  # ECR, the deployment's region
    image_command: tuple[str, ...] | None = None  # overrides the image's CMD (the handler)
    provisioned_concurrency: int = Field(0, ge=0)  # on alias `live`; 0: none
    keep_warm: KeepWarmSettings | None = None  # off by default

    @field_validator("package", mode="before")
    @classmethod
    def _package(cls, v: Any) -> Any:
        if v is None:
            return "auto"
        if not isinstance(v, str) or v in PACKAGE_MODES:
            return v
        p = Path(v)
        if p.name in PACKAGE_MODES and not p.exists():
            return p.name  # load_deployment resolved a mode word as a relative path
        if p.suffix != ".zip":
            raise ValueError(f"expected zip, image, auto or the path of a prebuilt .zip, got {v!r}")
        return v

    @field_validator("image_uri", "image_command")
    @classmethod
    def _image_only(cls, v: Any, info: ValidationInfo) -> Any:
        package = info.data.get("package", "auto")
        if v is not None and package not in ("image", "auto"):
            raise ValueError(f"only for lambda.package image or auto (package is {package!r})")
        return v

    @field_validator("provisioned_concurrency")
    @classmethod
    def _within_reserved(cls, v: int, info: ValidationInfo) -> int:
        reserved = info.data.get("reserved_concurrency")
        if reserved is not None and v > reserved:
            raise ValueError(
                f"must be <= lambda.reserved_concurrency ({reserved}): AWS refuses more"
            )
        return v

    @field_validator("keep_warm")
    @classmethod
    def _warm_within_reserved(
        cls, v: KeepWarmSettings | None, info: ValidationInfo
    ) -> KeepWarmSettings | None:
        reserved = info.data.get("reserved_concurrency")
        if v is not None and reserved is not None and v.concurrency > reserved:
            raise ValueError(
                f"concurrency {v.concurrency} exceeds lambda.reserved_concurrency ({reserved}): "
                "the extra warm-ups would be throttled"
            )
        return v

    @property
    def prebuilt_zip(self) -> Path | None:
        return None if self.package in PACKAGE_MODES else Path(self.package)


class DeployedModel(Strict):
    """One model of a multi-model deployment (issue 14): the V2 name requests use, and its
    artifact (`hybridserve package`) or a family directory (`hybridserve family build
    --profile`) whose variants the plan chooses among at or above `accuracy_floor`. The name
    also names its Lambda function and its S3 prefix, so it takes only what both allow."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
    artifact: str | None = None
    family: str | None = None
    accuracy_floor: float = Field(0.0, ge=0, le=1)
    # a `hybridserve profile` YAML measured on the instance type, for the joint plan (unset:
    # the deployment scenario's profile, as a one-model deployment plans with); a family's
    # variants carry their own
    profile: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DeployedModel:
        if (self.artifact is None) == (self.family is None):
            given = "both" if self.artifact else "neither"
            raise ValueError(f"give artifact or family for {self.name!r}, not {given}")
        if self.accuracy_floor and self.family is None:
            raise ValueError("accuracy_floor: only for a family (a single artifact has no choice)")
        if self.family is not None and self.profile is not None:
            raise ValueError("profile: a family's variants carry their own profiles")
        return self


class DeploymentConfig(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    region: str = "us-east-1"
    artifact: str | None = None  # the model; or `models:` for several
    # several models (issue 14): every instance serves them all from a repository index, and
    # each model spills to its own function (`spill_function_name(name, model)`)
    models: list[DeployedModel] = []
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str | None = None
    scenario: str | None = None
    ec2: Ec2Settings = Ec2Settings()
    lambda_: LambdaSettings = Field(LambdaSettings(), alias="lambda")
    fleet: dict[str, int] = Field(default_factory=dict)  # initial target, pool -> count
    budget_usd_per_hour: float | None = Field(None, gt=0)  # the fleet's, at list prices
    router: RouterFleetSettings = RouterFleetSettings()  # replicas behind an NLB; 0: none
    async_jobs: AsyncSettings = AsyncSettings()

    @model_validator(mode="after")
    def _one_source(self) -> DeploymentConfig:
        if (self.artifact is None) == (not self.models):
            given = "both" if self.models else "neither"
            raise ValueError(f"give artifact (one model) or models (several), not {given}")
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"models: names must be distinct; repeated: {', '.join(dup)}")
        if self.models and self.router.replicas:
            raise ValueError(
                "router.replicas: the router fleet serves one-model deployments only for now "
                "(serve on AWS runs one model's controller); set it to 0 with models:"
            )
        for i, n in enumerate(names):
            fn = spill_function_name(self.name, n)
            if len(fn) > LAMBDA_NAME_MAX:
                raise ValueError(
                    f"models.{i}.name: {n!r} makes the function name {fn} ({len(fn)} "
                    f"characters); Lambda allows {LAMBDA_NAME_MAX}: shorten the model or "
                    "deployment name"
                )
        return self

    @property
    def functions(self) -> dict[str, str]:
        """Model -> its spill function's name ('' -> the one function of a one-model one)."""
        if not self.models:
            return {"": spill_function_name(self.name)}
        return {m.name: spill_function_name(self.name, m.name) for m in self.models}

    def model_prefix(self, model: str) -> str:
        """The S3 prefix of one model's artifact in a multi-model deployment."""
        return f"{self.artifact_prefix}/{model}"

    @property
    def prefix_root(self) -> str:
        """The deployment's S3 prefix (its name when unset), without slashes at its ends."""
        return (self.prefix or self.name).strip("/")

    def key(self, name: str) -> str:
        """The S3 key of `name` under the deployment's prefix."""
        return f"{self.prefix_root}/{name}"

    @property
    def artifact_prefix(self) -> str:
        return self.key("artifact")


def load_deployment(path: str | Path, **overrides: Any) -> DeploymentConfig:
    """Config from YAML; relative paths resolve against the file; errors name file and field."""
    p = Path(path)
    data = apply_overrides(read_yaml_mapping(p, "deployment config"), overrides)
    for key in ("artifact", "scenario"):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str((p.parent / data[key]).resolve())
    if isinstance(data.get("models"), list):
        data["models"] = [
            {
                **m,
                **{
                    k: str((p.parent / m[k]).resolve())
                    for k in ("artifact", "family", "profile")
                    if isinstance(m.get(k), str)
                },
            }
            if isinstance(m, dict)
            else m
            for m in data["models"]
        ]
    ec2 = data.get("ec2")
    if isinstance(ec2, dict):
        paths = {
            k: str((p.parent / ec2[k]).resolve())
            for k in ("wheel", "find_links")
            if isinstance(ec2.get(k), str) and not Path(ec2[k]).is_absolute()
        }
        data["ec2"] = {**ec2, **paths}
    lam = data.get("lambda")
    if isinstance(lam, dict) and isinstance(lam.get("package"), str):
        pkg = lam["package"]
        if not Path(pkg).is_absolute():
            data["lambda"] = {**lam, "package": str((p.parent / pkg).resolve())}
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(p))) from None
