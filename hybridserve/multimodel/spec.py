"""Typed configuration of a multi-model fleet: model families, their variants, and the models.

A family is one task served by interchangeable variants (fp32, fp16, int8, a distilled student),
each with its accuracy against the family's reference (top-1 agreement on held-out inputs,
`predictors.family`), its speed profile (a `ModelProfile`, as `hybridserve profile` writes it),
and its resident memory and load time (`predictors.memory`). A model is a named instance of a
family (its own weights, its own traffic); it may pin a variant, else the planner chooses, per
interval, among the variants that meet the accuracy floor (model-less serving, INFaaS-style).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from hybridserve.catalog import ModelProfile
from hybridserve.config_base import (
    ConfigError,
    Strict,
    format_validation_error,
    read_yaml_mapping,
)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class VariantSpec(Strict):
    """One way to serve a family: what it is worth (accuracy) and what it costs to hold."""

    accuracy: float = Field(gt=0, le=1)
    profile: ModelProfile
    memory_mb: float = Field(gt=0, le=1_048_576)  # resident on an instance, runtime excluded
    load_s: float = Field(0.0, ge=0, le=3600)  # from load call to first prediction


class FamilySpec(Strict):
    reference: str = "fp32"
    accuracy_floor: float = Field(0.0, ge=0, le=1)
    provenance: str = ""
    variants: dict[str, VariantSpec]

    @model_validator(mode="after")
    def _floor_met(self) -> FamilySpec:
        if not self.variants:
            raise ValueError("variants: needs at least one variant")
        if self.reference not in self.variants:
            raise ValueError(
                f"reference: {self.reference!r} is not among the variants {sorted(self.variants)}"
            )
        best = max(self.variants.items(), key=lambda kv: kv[1].accuracy)
        if best[1].accuracy < self.accuracy_floor:
            raise ValueError(
                f"accuracy_floor: {self.accuracy_floor} is met by no variant (best: {best[0]} "
                f"at {best[1].accuracy})"
            )
        return self

    def meeting(self, floor: float) -> list[str]:
        """Variants at or above `floor`, in declaration order."""
        return [v for v, s in self.variants.items() if s.accuracy >= floor - 1e-12]


class ModelSpec(Strict):
    name: str
    family: str
    variant: str | None = None  # pinned; None: the planner chooses among those meeting the floor
    accuracy_floor: float | None = Field(None, ge=0, le=1)  # overrides the family's

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError(
                f"{v!r}: a model name is 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit (it names a V2 route and a Lambda function)"
            )
        return v


# an instance's OS, model server and runtime before any model (measured: `predictors.memory`)
INSTANCE_OVERHEAD_MB = 768.0


class ModelFleet(Strict):
    """The models one fleet serves. `instance_overhead_mb`: what an instance's OS, model server
    and runtime hold before any model (measured: `predictors.memory`); `max_models_per_instance`
    bounds a shard's model set (the server's batchers share its cores)."""

    families: dict[str, FamilySpec]
    models: list[ModelSpec]
    instance_overhead_mb: float = Field(INSTANCE_OVERHEAD_MB, ge=0)
    max_models_per_instance: int = Field(16, ge=1, le=1000)

    @model_validator(mode="after")
    def _consistent(self) -> ModelFleet:
        if not self.models:
            raise ValueError("models: needs at least one model")
        seen: set[str] = set()
        for i, m in enumerate(self.models):
            where = f"models[{i}] ({m.name})"
            if m.name in seen:
                raise ValueError(f"{where}: duplicate model name")
            seen.add(m.name)
            fam = self.families.get(m.family)
            if fam is None:
                raise ValueError(
                    f"{where}.family: {m.family!r} is not among {sorted(self.families)}"
                )
            floor = self.floor(m)
            if m.variant is not None:
                if m.variant not in fam.variants:
                    raise ValueError(
                        f"{where}.variant: {m.variant!r} is not a variant of {m.family} "
                        f"({sorted(fam.variants)})"
                    )
                acc = fam.variants[m.variant].accuracy
                if acc < floor - 1e-12:
                    raise ValueError(
                        f"{where}.variant: {m.variant} has accuracy {acc} < floor {floor}"
                    )
            elif not fam.meeting(floor):
                best = max(v.accuracy for v in fam.variants.values())
                raise ValueError(
                    f"{where}.accuracy_floor: {floor} is met by no variant of {m.family} "
                    f"(best accuracy {best})"
                )
        return self

    def floor(self, m: ModelSpec) -> float:
        return (
            m.accuracy_floor
            if m.accuracy_floor is not None
            else self.families[m.family].accuracy_floor
        )

    def eligible(self, m: ModelSpec) -> list[str]:
        """The variants the planner may choose for `m`: the pinned one, else those at its floor."""
        if m.variant is not None:
            return [m.variant]
        return self.families[m.family].meeting(self.floor(m))

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]


def family_from_file(path: str | Path, **over: Any) -> dict[str, Any]:
    """A `FamilySpec` mapping from a family file (`hybridserve family build`'s family.yaml or
    `hybridserve/data/family-*.yaml`): each variant's accuracy, its profile, and its resident
    memory and load time from the profile's measured `footprint` (or given per variant)."""
    data = read_yaml_mapping(path, "family")
    variants: dict[str, Any] = {}
    for name, v in (data.get("variants") or {}).items():
        if not isinstance(v, dict):
            raise ConfigError(f"{path}: variants.{name}: expected a mapping")
        prof = dict(v.get("profile") or {})
        foot = v.get("footprint") or prof.pop("footprint", None) or {}
        variants[name] = {
            "accuracy": v.get("accuracy"),
            "profile": prof,
            "memory_mb": v.get("memory_mb", foot.get("resident_mb")),
            "load_s": v.get("load_s", foot.get("load_s", 0.0)),
        }
        missing = [k for k in ("accuracy", "memory_mb") if variants[name][k] is None]
        if missing or not prof:
            what = ", ".join(missing + ([] if prof else ["profile"]))
            raise ConfigError(f"{path}: variants.{name}: missing {what}")
    out = {
        "reference": data.get("reference", "fp32"),
        "provenance": str(data.get("provenance", "")),
        "variants": variants,
    }
    out.update(over)
    return out


def load_model_fleet(path: str | Path) -> ModelFleet:
    """A fleet YAML: `families: {name: {file: family.yaml, accuracy_floor: 0.95} | {variants:
    ...}}` and `models: [{name, family, variant?, accuracy_floor?}]`; a `file` is relative to
    the fleet file. Errors name the file and the field."""
    data = read_yaml_mapping(path, "model fleet")
    fams = data.get("families")
    if isinstance(fams, dict):
        built = {}
        for name, f in fams.items():
            if isinstance(f, dict) and "file" in f:
                rest = {k: v for k, v in f.items() if k != "file"}
                built[name] = family_from_file(Path(path).parent / str(f["file"]), **rest)
            else:
                built[name] = f
        data = {**data, "families": built}
    return model_fleet(data, str(path))


def expand_models(spec: Any) -> Any:
    """`models: {count: 50, family: distilbert, prefix: model-}` (optionally `variant`,
    `accuracy_floor`) as the list of that many models, named as `synthetic_multi` names its
    models (model-00 ... model-49: rank order); a list is returned as it is."""
    if not isinstance(spec, dict):
        return spec
    n = spec.get("count")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 100_000:
        raise ConfigError(f"models.count: expected an integer from 1 to 100000, got {n!r}")
    unknown = set(spec) - {"count", "family", "prefix", "variant", "accuracy_floor"}
    if unknown:
        raise ConfigError(
            f"models.{sorted(unknown)[0]}: unknown field (count, family, prefix, variant, "
            "accuracy_floor)"
        )
    width = max(2, len(str(n - 1)))
    rest = {k: v for k, v in spec.items() if k in ("family", "variant", "accuracy_floor")}
    prefix = str(spec.get("prefix", "model-"))
    return [{"name": f"{prefix}{i:0{width}d}", **rest} for i in range(n)]


def model_fleet(data: dict[str, Any], source: str = "<models>") -> ModelFleet:
    try:
        data = {**data, "models": expand_models(data.get("models"))}
    except ConfigError as e:
        raise ConfigError(f"{source}: field {e}") from None
    try:
        return ModelFleet.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
