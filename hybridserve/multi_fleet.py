"""The models of a multi-model `serve` as the planner and the instances see them: a
`ModelFleet` (each model a family of its variants, with accuracy, this machine's profile,
resident memory and load time), the artifact of every variant, and the repository index the
model servers load them from (`predictors.repository_index`).

A model given as a reference built in code or as one artifact is a family of one variant
(accuracy 1.0); a family directory (`hybridserve family build --profile`) brings its variants
with their measured accuracy, profiles and footprints, and the model's accuracy floor. A single
artifact's profile is measured here at start-up (cached beside it, as one-model `serve` does)
and its footprint too, in a fresh interpreter (`predictors.memory.measure_load`), unless its
manifest records one.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hybridserve.config import Scenario
from hybridserve.config_base import ConfigError
from hybridserve.local_stack import cache_dir, load_profile, local_scenario, measured_profile
from hybridserve.logs import event
from hybridserve.multimodel.spec import ModelFleet, family_from_file, model_fleet
from hybridserve.serve_config import ServeConfig, ServedModel

log = logging.getLogger("hybridserve.serve")


@dataclass(frozen=True)
class ServedFleet:
    fleet: ModelFleet
    artifacts: dict[str, dict[str, Path]]  # model -> variant -> artifact directory
    scenario: Scenario  # the base scenario: SLO, this machine's pool, Lambda (first model's)

    def index(self) -> dict[str, Any]:
        """`repository.yaml`'s content: every model's variants, absolute paths."""
        return {
            "models": {
                m: {v: str(p.resolve()) for v, p in vs.items()} for m, vs in self.artifacts.items()
            }
        }

    def write_index(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        path = root / "repository.yaml"
        path.write_text(yaml.safe_dump(self.index(), sort_keys=False))
        return path


def built_artifact(cfg: ServeConfig, m: ServedModel) -> Path:
    """`m`'s artifact: the one given, or its reference built in code (cached)."""
    if m.artifact is not None:
        if not (m.artifact / "manifest.json").is_file():
            raise ConfigError(
                f"models.{m.name}.artifact: {m.artifact} is not a model artifact (no manifest.json)"
            )
        return m.artifact
    assert m.model is not None
    out = cache_dir(cfg) / "artifacts"
    art = out / f"{m.model}-{m.variant}"
    if not (art / "manifest.json").is_file():
        from predictors.artifact import build_artifact

        event(log, "serve.build_artifact", model=m.model, variant=m.variant, into=str(out))
        art = build_artifact(m.model, out, variant=m.variant)
    return art


def footprint(art: Path, threads: int) -> tuple[float, float]:
    """(resident MB, load s): the manifest's record, else measured once and cached beside it."""
    from predictors.artifact_manifest import read_manifest
    from predictors.memory import manifest_footprint_mb, measure_load

    man = read_manifest(art)
    mb = manifest_footprint_mb(man)
    if mb is not None:
        return mb, float((man.get("footprint") or {}).get("load_s", 0.0))
    cache = art / f".footprint-t{threads}.json"
    if cache.is_file():
        doc = json.loads(cache.read_text())
        return float(doc["resident_mb"]), float(doc["load_s"])
    fp = measure_load(art, threads=threads, repeats=1)
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps({"resident_mb": fp.resident_mb, "load_s": fp.load_s}))
    return fp.resident_mb, fp.load_s


def _single(cfg: ServeConfig, m: ServedModel) -> tuple[dict[str, Any], dict[str, Path], dict]:
    """A family of one variant for a model given as one artifact (or built in code)."""
    from predictors.artifact_manifest import read_manifest

    art = built_artifact(cfg, m)
    it = cfg.instances
    profile = (
        load_profile(m.profile)
        if m.profile is not None
        else measured_profile(art, it.threads, it.max_batch)
    )
    sc = local_scenario(cfg, profile)
    variant = str(read_manifest(art).get("variant") or "fp32")
    mb, load_s = footprint(art, it.threads)
    fam = {
        "reference": variant,
        "provenance": f"one artifact, {art}",
        "variants": {
            variant: {
                "accuracy": 1.0,
                "profile": sc.model.model_dump(by_alias=True),
                "memory_mb": mb,
                "load_s": load_s,
            }
        },
    }
    return fam, {variant: art}, profile


def family_source(
    path: Path, accuracy_floor: float, where: str
) -> tuple[dict[str, Any], dict[str, Path]]:
    """A family directory's variants (their profiles and footprints recorded at build) and
    each variant's artifact; errors name `where` (the config field)."""
    from predictors.family import FAMILY_FILE, load_family

    root = path if path.is_dir() else path.parent
    if not (root / FAMILY_FILE).is_file():
        raise ConfigError(f"{where}: {root} has no {FAMILY_FILE} (`hybridserve family build`)")
    try:
        report = load_family(root)
        fam = family_from_file(root / FAMILY_FILE, accuracy_floor=accuracy_floor)
    except (ValueError, ConfigError) as e:
        raise ConfigError(f"{where}: {e}") from None
    arts = {v: root / rep.artifact for v, rep in report.variants.items() if v in fam["variants"]}
    for v, art in arts.items():
        if not (art / "manifest.json").is_file():
            raise ConfigError(f"{where}: variant {v}: {art} is not a model artifact")
    return fam, arts


def served_fleet(cfg: ServeConfig) -> ServedFleet:
    """The fleet of `cfg.models`, each model its own family (its own weights and traffic)."""
    if len(cfg.models) < 1:
        raise ConfigError("models: a multi-model serve needs at least one model")
    families: dict[str, Any] = {}
    artifacts: dict[str, dict[str, Path]] = {}
    base: dict | None = None
    for m in cfg.models:
        if m.family is not None:
            where = f"models.{m.name}.family"
            fam, arts = family_source(m.family, m.accuracy_floor, where)
        else:
            fam, arts, profile = _single(cfg, m)
            base = base or profile
        families[m.name] = fam
        artifacts[m.name] = arts
    if base is None:  # families only: the first family's reference variant sets the base
        first = families[cfg.models[0].name]
        base = first["variants"][first.get("reference", "fp32")]["profile"]
    fleet = model_fleet(
        {"families": families, "models": [{"name": m.name, "family": m.name} for m in cfg.models]},
        "models",
    )
    return ServedFleet(fleet, artifacts, local_scenario(cfg, base))
