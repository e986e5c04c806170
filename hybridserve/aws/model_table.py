"""A multi-model deployment's models as the planner sees them, on the deployment scenario's
pools. A family directory brings its variants with their measured profiles, accuracy and
footprints (the plan chooses among those at or above its floor); an artifact is a family of
one variant, planned with its `profile` (a `hybridserve profile` YAML measured on the instance
type) or, without one, the deployment scenario's profile, as a one-model deployment plans, its
resident memory and load time from its manifest's footprint (measured once here when it has
none). Deploy (which variant each spill function runs), `controller run` and `serve` all read
it here, so they agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridserve.aws.scenario import deployment_scenario
from hybridserve.config_base import ConfigError
from hybridserve.deployment import DeploymentConfig

if TYPE_CHECKING:
    from hybridserve.config import Scenario
    from hybridserve.multimodel.spec import ModelFleet
    from hybridserve.multimodel.table import ModelTable

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
