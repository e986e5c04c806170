"""What a scenario plans with, as published or measured: the price catalog of a region (EC2
instance types, Lambda prices) and the model's profile (service times per batch size, by CPU
ISA and GPU type, and its Lambda cold start), each with its provenance."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from hybridserve.config_base import ConfigError, Strict

Market = Literal["on_demand", "spot"]


class InstanceType(Strict):
    """One EC2 instance type with its list prices and launch delay (boot + model load)."""

    family: str
    vcpus: int = Field(gt=0)
    memory_gib: float = Field(gt=0)
    gpus: int = Field(0, ge=0)
    gpu: str | None = None
    on_demand_usd_h: float = Field(gt=0)
    spot_usd_h: float | None = Field(None, gt=0)
    launch_delay_s: float = Field(90.0, ge=0)
    # the integer-GEMM ISA of the CPUs AWS gives this type (names as predictors.isa): int8
    # speed depends on it, so a profile is matched to it
    cpu_isa: str | None = None

    def price_usd_h(self, market: Market) -> float:
        if market == "spot":
            if self.spot_usd_h is None:
                raise ConfigError(f"instance type {self.family}: no spot price in the catalog")
            return self.spot_usd_h
        return self.on_demand_usd_h


class LambdaPricing(Strict):
    usd_per_gb_s: float = Field(gt=0)
    usd_per_request: float = Field(ge=0)


class Catalog(Strict):
    """Price catalog of one region, with the date and source of its prices."""

    region: str
    prices_date: str
    source: str
    instances: dict[str, InstanceType]
    lambda_: dict[Literal["x86_64", "arm64"], LambdaPricing] = Field(alias="lambda")


class ReferenceProfile(Strict):
    """Service time per batch size of one model-server worker on the reference machine."""

    vcpus: int = Field(gt=0)
    threads: int = Field(gt=0)
    batch_ms: dict[int, float]
    isa: str | None = None  # CPU ISA measured on (predictors.isa: avx2, avx512_vnni, arm64, ...)

    @field_validator("batch_ms")
    @classmethod
    def _batches(cls, v: dict[int, float]) -> dict[int, float]:
        if not v:
            raise ValueError("needs at least one batch size")
        if any(b < 1 for b in v) or any(t <= 0 for t in v.values()):
            raise ValueError("batch sizes must be >= 1 and service times > 0 ms")
        return dict(sorted(v.items()))


class GpuProfile(Strict):
    """Service times per batch on one GPU instance type (one worker per GPU). `published`:
    taken from a vendor's published figures, not measured on the type; such a pool is not
    planned unless the scenario says `gpu_published_profiles: true`."""

    batch_ms: dict[int, float]
    provenance: str
    source: Literal["measured", "published"] = "measured"


class LambdaModelProfile(Strict):
    cold_start_s: float = Field(gt=0)
    invoke_overhead_ms: float = Field(ge=0)
    # the function's time for a batch over the profile's (1: as profiled); e.g. the emulator's
    # measured billed durations over what the profile predicts for the same invokes
    time_scale: float = Field(1.0, gt=0)


class Footprint(Strict):
    """What loading the model costs an instance (`predictors.memory.measure_load`): the resident
    memory that packing several models on one instance counts, and the load time, which delays
    serving there like a launch."""

    resident_mb: float = Field(gt=0)
    load_s: float = Field(ge=0)
    isa: str | None = None  # CPU ISA measured on (memory barely depends on it; time does)


class ModelProfile(Strict):
    """How fast the model serves, with where the numbers came from."""

    name: str
    provenance: str
    reference: ReferenceProfile
    # the same model measured on other CPUs, by ISA: a type whose `cpu_isa` is here plans with
    # these numbers instead of the reference's
    isa_profiles: dict[str, ReferenceProfile] = {}
    gpu_profiles: dict[str, GpuProfile] = {}
    lambda_: LambdaModelProfile = Field(alias="lambda")
    footprint: Footprint | None = None  # absent from profiles measured before it was recorded

    def for_isa(self, isa: str | None) -> ReferenceProfile:
        """The measurements for CPUs of `isa`: its own profile if recorded, else the reference."""
        if isa is not None and isa in self.isa_profiles:
            return self.isa_profiles[isa]
        return self.reference
