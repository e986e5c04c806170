"""The models of a multi-model deployment in S3 (issue 14): each model's artifact under its own
prefix, and the repository index the instances serve them from.

Layout under the deployment's artifact prefix (what the instance role and the Lambda role read
already, so no policy grows per model)::

    <prefix>/artifact/repository.yaml       models: {mlp: mlp, chat: {int8: chat/int8, ...}}
    <prefix>/artifact/mlp/...               one artifact (manifest.json + model)
    <prefix>/artifact/chat/int8/...         a family: each eligible variant

An instance fetches the whole prefix and verifies every artifact the index lists
(ec2_images/fetch.py), then runs ``model-server --repository --load-tagged``: it loads the
models its shard's tags name (aws/placement.py), or every model when it is in no shard. Each
model's
spill function reads its own prefix only (`HYBRIDSERVE_ARTIFACT`: a family's function, the
variant the plan gives Lambda), so a cold start downloads one model, and the package limit
applies per model: one function per model, not one holding them all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from botocore.exceptions import ClientError

from hybridserve.aws import tags as T
from hybridserve.aws.bucket import ROLE_ARTIFACT, artifact_key, upload_artifact
from hybridserve.aws.shared import is_missing
from hybridserve.config_base import ConfigError
from hybridserve.deployment import DeploymentConfig
from hybridserve.multimodel.spec import INSTANCE_OVERHEAD_MB

if TYPE_CHECKING:
    from hybridserve.catalog import Catalog

INDEX = "repository.yaml"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Variant:
    """One artifact of a multi-model deployment: its model, variant, local directory, S3
    prefix and path beside the index."""

    model: str
    variant: str
    artifact: Path
    prefix: str
    rel: str


def model_variants(cfg: DeploymentConfig) -> dict[str, list[Variant]]:
    """Model -> its variants in index order: a family's eligible ones (at or above its
    floor), or an artifact's own. Errors name the field and the path."""
    from hybridserve.multi_fleet import family_source
    from predictors.artifact_manifest import read_manifest

    out: dict[str, list[Variant]] = {}
    for i, m in enumerate(cfg.models):
        if m.family is not None:
            _, arts = family_source(Path(m.family), m.accuracy_floor, f"models.{i}.family")
            out[m.name] = [
                Variant(m.name, v, art, f"{cfg.model_prefix(m.name)}/{v}", f"{m.name}/{v}")
                for v, art in arts.items()
            ]
            continue
        art = Path(str(m.artifact))
        if not (art / MANIFEST).is_file():
            raise ConfigError(
                f"models.{i}.artifact: {art} is not a model artifact (no {MANIFEST}); "
                "expected a directory from `hybridserve package`"
            )
        variant = str(read_manifest(art).get("variant") or "fp32")
        out[m.name] = [Variant(m.name, variant, art, cfg.model_prefix(m.name), m.name)]
    return out


def resident_mb(cfg: DeploymentConfig) -> dict[str, float]:
    """Model -> the memory it takes loaded in the variant a server loads by name (the first
    listed): its manifest's measured footprint, else its uncompressed size (a floor)."""
    from predictors.repository_index import entry_of

    out = {}
    for name, vs in model_variants(cfg).items():
        e = entry_of(name, vs[0].artifact)
        out[name] = e.footprint_mb or e.onnx_mb
    return out


def check_fits(cfg: DeploymentConfig, pools: Iterable[str], catalog: Catalog) -> None:
    """An instance outside the plan's shards (deploy's `fleet:`, `scale`) loads every model:
    refuse a pool too small for all of them, with the figures, before an instance boots into
    a server that cannot start (a shard's instances load only its models)."""
    if not cfg.models:
        return
    need = resident_mb(cfg)
    total = sum(need.values())
    for pool in sorted(set(pools)):
        itype = pool.split("/", 1)[0]
        spec = catalog.instances.get(itype)
        if spec is None:
            continue  # an unknown type is the planner's and EC2's to refuse
        room = spec.memory_gib * 1024.0 - INSTANCE_OVERHEAD_MB
        if total > room:
            each = ", ".join(f"{n} {mb:.1f} MB" for n, mb in need.items())
            raise ConfigError(
                f"fleet: {pool} has {room:.0f} MB for models ({spec.memory_gib:g} GiB less "
                f"{INSTANCE_OVERHEAD_MB:.0f} MB for the OS and server) but the models take "
                f"{total:.0f} MB ({each}); an instance outside the plan's shards loads every "
                "model: choose a larger instance type, or leave the fleet to the plan (`serve` "
                "or `controller run`, whose shards load only their models)"
            )


def index_text(variants: dict[str, list[Variant]]) -> str:
    """`repository.yaml`: every model under its served name (a family with each variant), its
    artifacts beside the index."""
    models: dict[str, Any] = {
        name: vs[0].rel if len(vs) == 1 and vs[0].rel == name else {v.variant: v.rel for v in vs}
        for name, vs in variants.items()
    }
    return yaml.safe_dump({"models": models}, sort_keys=False)


def upload_models(cfg: DeploymentConfig, s3: Any) -> list[str]:
    """Upload each model's artifacts, then the index (last: an instance that sees the index
    sees every artifact it names); returns the keys this call wrote. Unchanged files are
    skipped."""
    variants = model_variants(cfg)
    keys = []
    for vs in variants.values():
        for v in vs:
            keys += upload_artifact(s3, cfg.bucket, v.prefix, v.artifact, cfg.name)
    body = index_text(variants).encode()
    digest = hashlib.sha256(body).hexdigest()
    key = artifact_key(cfg.artifact_prefix, INDEX)
    try:
        same = s3.head_object(Bucket=cfg.bucket, Key=key).get("Metadata", {}).get("sha256")
    except ClientError as e:
        if not is_missing(e):
            raise
        same = None
    if same != digest:
        s3.put_object(
            Bucket=cfg.bucket,
            Key=key,
            Body=body,
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": digest},
            Tagging=T.object_tagging(cfg.name, ROLE_ARTIFACT),
        )
        keys.append(key)
    return keys


def function_sources(
    cfg: DeploymentConfig, lambda_variant: Mapping[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """(model, artifact directory, S3 prefix) of each spill function ('' for a one-model
    one): a model's function runs `lambda_variant[model]`, else its first variant."""
    if not cfg.models:
        assert cfg.artifact is not None
        return [("", cfg.artifact, cfg.artifact_prefix)]
    chosen = dict(lambda_variant or {})
    out = []
    for name, vs in model_variants(cfg).items():
        v = next((x for x in vs if x.variant == chosen.get(name)), vs[0])
        out.append((name, str(v.artifact), v.prefix))
    return out


def uploads(cfg: DeploymentConfig) -> list[tuple[str, str, str]]:
    """(model, artifact directory, S3 prefix) of every artifact the deployment uploads."""
    if not cfg.models:
        return function_sources(cfg)
    return [(v.model, str(v.artifact), v.prefix) for vs in model_variants(cfg).values() for v in vs]
