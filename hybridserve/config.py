"""Typed configuration: SLO, price catalog, model profile, Lambda function and scenario.

Defaults are data files in `hybridserve/data/` with their provenance; a scenario YAML overrides
any field. Every validation error names the file and the field path and says what is allowed
(the strict base, the error formatter and the YAML loading are in `config_base`; the price
catalog and the model profile in `catalog`).
"""

from __future__ import annotations

from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from hybridserve.catalog import Catalog, LambdaPricing, Market, ModelProfile

# the shared config machinery; these names are importable from here too, as before the split
from hybridserve.config_base import ConfigError as ConfigError
from hybridserve.config_base import Strict as Strict
from hybridserve.config_base import apply_overrides as apply_overrides
from hybridserve.config_base import deep_merge, load_yaml
from hybridserve.config_base import format_validation_error as format_validation_error
from hybridserve.config_base import read_yaml_mapping as read_yaml_mapping
from hybridserve.keep_warm import KeepWarmOptions
from hybridserve.pricing import lambda_invoke_usd
from hybridserve.spot_interruptions import (
    BANDS,
    BUILTIN_ADVISOR,
    POSITIONS,
    Band,
    Reclaim,
    band_fraction,
    hourly_rate,
    load_advisor,
    load_interruption_trace,
)

LAMBDA_MB_PER_VCPU = 1769.0  # AWS: a function gets one full vCPU at 1,769 MB.


class SLO(Strict):
    """Latency objective: `target` of requests finish within `latency_ms`."""

    latency_ms: float = Field(300.0, gt=0, le=60_000)
    target: float = Field(0.99, gt=0, lt=1)

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1000.0


class LambdaFunction(Strict):
    """The spill function: memory, lifecycle and limits (service times derive from the profile)."""

    arch: Literal["x86_64", "arm64"] = "x86_64"
    memory_mb: int = Field(2048, ge=128, le=10240)
    # AWS reclaims idle environments within minutes to hours; a day bounds the keep-alive
    # window the simulator scans (1e12 s would allocate terabytes).
    keep_alive_s: float = Field(600.0, ge=0, le=86_400)
    concurrency_limit: int = Field(1000, ge=1)
    scale_up_per_10s: int = Field(1000, ge=1)
    bill_init: bool = True
    cold_start_s: float | None = Field(None, gt=0)
    keep_warm: KeepWarmOptions = KeepWarmOptions()

    @model_validator(mode="after")
    def _rounds_within_keep_alive(self) -> LambdaFunction:
        every = self.keep_warm.every_s
        if self.keep_warm.enabled and every is not None and every >= self.keep_alive_s:
            raise ValueError(
                f"keep_warm.every_s ({every:g}) must be below keep_alive_s "
                f"({self.keep_alive_s:g}): environments would expire between rounds"
            )
        return self

    @property
    def vcpus(self) -> float:
        return min(6.0, self.memory_mb / LAMBDA_MB_PER_VCPU)


class ReactiveOptions(Strict):
    """EC2/SageMaker-style target tracking (VM-only)."""

    target_utilisation: float = Field(0.7, gt=0, le=1)
    scale_out_after_s: float = Field(180, ge=0)
    cooldown_s: float = Field(300, ge=0)
    scale_in_after_s: float = Field(900, ge=0)


class PlannerOptions(Strict):
    """Knobs of the exact planner; none is specific to one trace."""

    lambda_levels: int = Field(6, ge=1, le=20)
    resolve_tolerance: float = Field(
        0.25,
        ge=0,
        description="re-solve when demand moved by this fraction of the smallest instance",
    )
    max_plan_age_steps: int = Field(8, ge=1)
    instance_epsilon: float = Field(1e-6, ge=0)
    time_limit_s: float = Field(
        1.0, gt=0, le=600, description="a MILP solve past this falls back to the greedy plan"
    )
    retire_cost_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of a launch's cost charged per retirement: hysteresis against "
        "retiring an instance the load will need again beyond the horizon",
    )
    tail_steps: int = Field(
        15,
        ge=0,
        le=1440,
        description="steps past the horizon the last planned step stands for (terminal cost)",
    )
    max_instances: int | None = Field(
        None, ge=0, description="fleet cap: no plan holds more instances (None: no cap)"
    )
    budget_usd_per_hour: float | None = Field(
        None, gt=0, description="no plan's fleet costs more per hour (None: no budget)"
    )


class SpotOptions(Strict):
    """How the simulator interrupts spot instances (hybridserve/spot_interruptions.py), and the
    notice they get. On AWS, EC2 interrupts them; only `notice_s` describes AWS too.

    `interruptions`: `advisor` (per instance type, the Spot Instance Advisor's band of monthly
    interruption frequency: `advisor_file`, `bands`, `band_position`), `rate` (one hazard for
    every spot pool: `interruptions_per_hour`) or `trace` (a CSV of reclaims:
    `interruption_trace`, `trace_pick`). Left out, it follows the fields given: `trace` with
    `interruption_trace`, `rate` with `interruptions_per_hour` (as scenarios written before the
    bands meant), `advisor` otherwise."""

    interruptions: Literal["advisor", "rate", "trace"] = "advisor"
    interruptions_per_hour: float = Field(0.005, ge=0, description="the rate model's hazard")
    advisor_file: str | None = Field(
        None, description="bands of your region and date (None: the built-in us-east-1 snapshot)"
    )
    bands: dict[str, Band] = Field(
        default_factory=dict, description="per instance type, a band over the advisor file's"
    )
    band_position: Literal["low", "mid", "high"] | float = Field(
        "mid",
        description="where in its band a type's monthly fraction is: low, mid, high or a "
        "quantile in [0, 1] (>20% spans 20-40%: an assumption)",
    )
    interruption_trace: str | None = Field(
        None, description="CSV time_s,instance_type (or time_s,pool): one reclaim per row"
    )
    trace_pick: Literal["oldest", "random"] = Field(
        "oldest", description="which live instance of the type a trace row reclaims"
    )
    correlation: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of a pool's instances one reclaim event takes at once (advisor, rate)",
    )
    notice_s: float = Field(120, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _infer_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "interruptions" not in data:
            if data.get("interruption_trace") is not None:
                data = {**data, "interruptions": "trace"}
            elif "interruptions_per_hour" in data:
                data = {**data, "interruptions": "rate"}
        return data

    @field_validator("band_position", mode="before")
    @classmethod
    def _position(cls, v: Any) -> Any:
        if isinstance(v, str) and v in POSITIONS:
            return v
        try:
            q = float("nan") if isinstance(v, bool) else float(v)
        except (TypeError, ValueError):
            q = float("nan")
        if not 0.0 <= q <= 1.0:
            raise ValueError("low, mid, high or a quantile in [0, 1]")
        return q

    @field_validator("advisor_file", "interruption_trace")
    @classmethod
    def _file(cls, v: str | None, info: ValidationInfo) -> str | None:
        """A path relative to the scenario file (the working directory without one), read now
        so a bad file fails the scenario, naming the file and its line or field."""
        if v is None:
            return None
        p = Path(v).expanduser()
        base = (info.context or {}).get("base_dir")
        if not p.is_absolute() and base is not None:
            p = Path(base) / p
        if info.field_name == "advisor_file":
            load_advisor(p)
        else:
            load_interruption_trace(p)
        return str(p)

    @model_validator(mode="after")
    def _one_model(self) -> SpotOptions:
        model = self.interruptions
        owner = {
            "interruptions_per_hour": ("rate",),
            "advisor_file": ("advisor",),
            "bands": ("advisor",),
            "band_position": ("advisor",),
            "interruption_trace": ("trace",),
            "trace_pick": ("trace",),
            "correlation": ("advisor", "rate"),
        }
        fields = type(self).model_fields
        # a field at its default is not "given": a full dump of the options validates again
        wrong = [
            f
            for f, models in owner.items()
            if model not in models
            and getattr(self, f) != fields[f].get_default(call_default_factory=True)
        ]
        if wrong:
            why = "; ".join(f"{f} is for {' or '.join(owner[f])}" for f in wrong)
            raise ValueError(f"{', '.join(wrong)}: not used by interruptions: {model} ({why})")
        if model == "trace" and self.interruption_trace is None:
            raise ValueError("interruptions: trace needs interruption_trace (a CSV path)")
        return self

    def band(self, instance_type: str) -> str | None:
        """The advisor band of a type: `bands` first, then the advisor file (None: neither)."""
        if instance_type in self.bands:
            return self.bands[instance_type]
        entry = load_advisor(self.advisor_file).instances.get(instance_type)
        return None if entry is None else entry.band

    def rates_per_hour(self, instance_types: list[str]) -> dict[str, float]:
        """Per-instance hazard of each type under the random models (0 under `trace`); a type
        without a band is an error naming the advisor file."""
        if self.interruptions == "trace":
            return dict.fromkeys(instance_types, 0.0)
        if self.interruptions == "rate":
            return dict.fromkeys(instance_types, self.interruptions_per_hour)
        missing = [t for t in instance_types if self.band(t) is None]
        if missing:
            src = self.advisor_file or f"hybridserve/data/{BUILTIN_ADVISOR}"
            raise ConfigError(
                f"spot.interruptions: advisor: no interruption band for {missing} in {src}; "
                f"add them there or under spot.bands (one of {list(BANDS)})"
            )
        return {
            t: hourly_rate(band_fraction(str(self.band(t)), self.band_position))
            for t in instance_types
        }

    def reclaims(self) -> tuple[Reclaim, ...]:
        """The trace's reclaims in time order (none unless `interruptions: trace`)."""
        if self.interruptions != "trace" or self.interruption_trace is None:
            return ()
        return load_interruption_trace(self.interruption_trace)


class Scenario(Strict):
    """Everything one simulation or deployment plans against."""

    name: str = "default"
    slo: SLO = SLO()
    control_interval_s: int = Field(60, ge=1, le=3600)
    horizon_steps: int = Field(15, ge=1, le=120)
    instance_types: list[str] = Field(
        default_factory=lambda: [
            "c5.large", "c5.xlarge", "c5.2xlarge", "c5.4xlarge",
            "c6i.large", "c6i.xlarge", "c6i.2xlarge", "c6i.4xlarge",
            "c7i.large", "c7i.xlarge", "c7i.2xlarge", "c7i.4xlarge",
            "m5.large", "m5.xlarge", "m5.2xlarge",
            "g4dn.xlarge", "g5.xlarge", "inf2.xlarge",
        ]
    )  # fmt: skip
    markets: list[Market] = Field(default_factory=lambda: ["on_demand"])
    batch_latency_fraction: float = Field(0.5, gt=0, le=1)
    # plan GPU types whose profile is a vendor's published figures, not a measurement
    gpu_published_profiles: bool = False
    lambda_: LambdaFunction = Field(LambdaFunction(), alias="lambda")
    reactive: ReactiveOptions = ReactiveOptions()
    planner: PlannerOptions = PlannerOptions()
    spot: SpotOptions = SpotOptions()
    catalog: Catalog
    model: ModelProfile

    @model_validator(mode="after")
    def _known_types(self) -> Scenario:
        unknown = [t for t in self.instance_types if t not in self.catalog.instances]
        if unknown:
            raise ValueError(
                f"instance_types: {unknown} not in the catalog; allowed: "
                f"{sorted(self.catalog.instances)}"
            )
        if not self.markets:
            raise ValueError("markets: needs at least one of on_demand, spot")
        try:
            serving_pools(self)
        except ConfigError as e:
            raise ValueError(f"slo.latency_ms: {e}") from None
        return self

    @cached_property
    def pools(self) -> list[Pool]:
        """Eligible (type, market) pools with their serving point at this SLO."""
        return serving_pools(self)

    @property
    def lambda_pricing(self) -> LambdaPricing:
        return self.catalog.lambda_[self.lambda_.arch]

    @cached_property
    def profile_warnings(self) -> list[str]:
        """Eligible CPU types that plan with a profile measured on another ISA (int8 speed
        differs several-fold between AVX2 and VNNI): each says what to measure."""
        mismatched: dict[tuple[str, str], list[str]] = {}
        for name in self.instance_types:
            it = self.catalog.instances[name]
            used = self.model.for_isa(it.cpu_isa)
            if it.gpus or it.cpu_isa is None or used.isa is None or used.isa == it.cpu_isa:
                continue
            mismatched.setdefault((it.cpu_isa, used.isa), []).append(name)
        return [
            f"{', '.join(types)} run {isa} CPUs but plan with a profile measured on {measured}; "
            f"run `hybridserve profile` on one and add it under model.isa_profiles.{isa}"
            for (isa, measured), types in sorted(mismatched.items())
        ]


class Pool(Strict):
    """An instance type in one market, at the batch size that maximises throughput in the SLO."""

    instance_type: str
    market: Market
    price_usd_s: float
    capacity_rps: float
    latency_s: float
    batch: int
    workers: int
    launch_delay_s: float

    @property
    def key(self) -> str:
        return f"{self.instance_type}/{self.market}"

    @property
    def usd_per_request(self) -> float:
        """Cost per request at full capacity: what ranks pools."""
        return self.price_usd_s / self.capacity_rps


def operating_point(batch_ms: dict[int, float], budget_s: float) -> tuple[int, float] | None:
    """Batch size of highest throughput whose service time fits `budget_s`; None if none fits."""
    best: tuple[int, float] | None = None
    for b, ms in batch_ms.items():
        s = ms / 1000.0
        if s <= budget_s and (best is None or b / s > best[0] / best[1]):
            best = (b, s)
    return best


def serving_pools(sc: Scenario) -> list[Pool]:
    """Pools of every eligible type and market; CPU types scale by workers, GPUs need a profile."""
    budget = sc.slo.latency_s * sc.batch_latency_fraction
    pools: list[Pool] = []
    for name in sc.instance_types:
        it = sc.catalog.instances[name]
        if it.gpus:
            gp = sc.model.gpu_profiles.get(name)
            if gp is None or (gp.source == "published" and not sc.gpu_published_profiles):
                continue
            point, workers = operating_point(gp.batch_ms, budget), it.gpus
        else:
            ref = sc.model.for_isa(it.cpu_isa)
            point = operating_point(ref.batch_ms, budget)
            workers = max(1, it.vcpus // ref.vcpus)
        if point is None:
            continue
        batch, svc = point
        for market in sc.markets:
            if market == "spot" and it.spot_usd_h is None:
                continue
            pools.append(
                Pool(
                    instance_type=name,
                    market=market,
                    price_usd_s=it.price_usd_h(market) / 3600.0,
                    capacity_rps=workers * batch / svc,
                    latency_s=svc,
                    batch=batch,
                    workers=workers,
                    launch_delay_s=it.launch_delay_s,
                )
            )
    if not pools:
        raise ConfigError(
            f"no instance type can serve within the SLO ({sc.slo.latency_ms} ms): the profile's "
            f"batch-1 time exceeds {budget * 1000:.0f} ms (batch_latency_fraction × SLO)"
        )
    return pools


def lambda_service_s(sc: Scenario, batch: int = 1) -> float:
    """Warm Lambda time for a batch: the worker's time scaled by the function's vCPU share.

    arm64 functions (Graviton) use an arm64 profile when the model has one; x86_64 functions
    run on whatever Intel or AMD CPU Lambda assigns, so they take the reference."""
    ref = sc.model.reference
    if sc.lambda_.arch == "arm64":
        arm = [k for k in sc.model.isa_profiles if k.startswith("arm64")]
        ref = sc.model.isa_profiles[arm[0]] if arm else ref
    times = ref.batch_ms
    b = min((k for k in times if k >= batch), default=max(times))
    ms = times[b] * (batch / b if batch > b else 1.0)
    scale = max(1.0, ref.threads / max(sc.lambda_.vcpus, 1e-9))
    lam = sc.model.lambda_
    return (ms * scale * lam.time_scale + lam.invoke_overhead_ms) / 1000.0


def lambda_cold_start_s(sc: Scenario) -> float:
    return sc.lambda_.cold_start_s or sc.model.lambda_.cold_start_s


def lambda_usd_per_request(sc: Scenario, service_s: float | None = None) -> float:
    """Warm cost of one invocation: memory × billed ms (rounded up to 1 ms) + request charge."""
    s = lambda_service_s(sc) if service_s is None else service_s
    p = sc.lambda_pricing
    return lambda_invoke_usd(s * 1000.0, sc.lambda_.memory_mb, p.usd_per_gb_s, p.usd_per_request)


# --- loading ---------------------------------------------------------------------------------


def _data(name: str) -> dict[str, Any]:
    text = resources.files("hybridserve.data").joinpath(name).read_text()
    return load_yaml(text)


def default_catalog() -> Catalog:
    return Catalog.model_validate(_data("catalog-us-east-1.yaml"))


def default_profile() -> ModelProfile:
    return ModelProfile.model_validate(_data("profile-distilbert-int8.yaml"))


def _merge_profile(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A model profile over the built-in one: measured sections (`reference`, `gpu_profiles`)
    replace the built-in ones whole, so no batch size of another model leaks in; `lambda`
    settings merge key by key."""
    out = {**base, **over}
    if "reference" in over:  # another model's measurements: none of the built-in's carry over
        for k in ("isa_profiles", "gpu_profiles"):
            out[k] = over.get(k, {})
    if isinstance(over.get("lambda"), dict) and isinstance(base.get("lambda"), dict):
        out["lambda"] = {**base["lambda"], **over["lambda"]}
    return out


def build_scenario(overrides: dict[str, Any] | None = None, source: str = "<scenario>") -> Scenario:
    """Scenario from the built-in catalog and profile plus `overrides` (a parsed YAML mapping).

    `catalog` and `model` in the overrides may be a path (relative to the scenario file) or a
    mapping merged over the built-in data.
    """
    over = dict(overrides or {})
    base_dir = Path(source).parent if source != "<scenario>" else Path.cwd()
    parts: dict[str, dict[str, Any]] = {}
    for key, fname in (
        ("catalog", "catalog-us-east-1.yaml"),
        ("model", "profile-distilbert-int8.yaml"),
    ):
        val = over.pop(key, None)
        data = _data(fname)
        if isinstance(val, str):
            p = base_dir / val
            try:
                data = read_yaml_mapping(p, key)
            except ConfigError as e:
                raise ConfigError(f"{source}: field {key}: {e}") from None
            if not data:
                raise ConfigError(f"{source}: field {key}: {p} is empty")
            if key == "model":
                data = _merge_profile(_data(fname), data)
        elif isinstance(val, dict):
            data = _merge_profile(data, val) if key == "model" else deep_merge(data, val)
        elif val is not None:
            raise ConfigError(f"{source}: field {key}: expected a file path or a mapping")
        parts[key] = data
    try:
        # base_dir: the spot options' files are relative to the scenario, as catalog and model
        return Scenario.model_validate({**over, **parts}, context={"base_dir": base_dir})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_scenario(path: str | Path | None = None, **overrides: Any) -> Scenario:
    """Load a scenario YAML (or the built-in default when `path` is None); kwargs override."""
    data: dict[str, Any] = {}
    source = "<scenario>"
    if path is not None:
        source = str(path)
        data = read_yaml_mapping(path, "scenario")
    return build_scenario(apply_overrides(data, overrides), source)
