"""The models of a multi-model deployment in S3 (issue 14): each model's artifact under its own
prefix, and the repository index the instances serve them from.

Layout under the deployment's artifact prefix (what the instance role and the Lambda role read
already, so no policy grows per model)::

    <prefix>/artifact/repository.yaml       models: {distilbert: distilbert, mlp: mlp}
    <prefix>/artifact/distilbert/...        one artifact (manifest.json + model)
    <prefix>/artifact/mlp/...

An instance fetches the whole prefix and verifies every artifact the index lists
(ec2_images/fetch.py), then runs ``model-server --repository --load-tagged``: it loads the
models its shard's tags name (aws/placement.py), or every model when it is in no shard. Each
model's
spill function reads its own prefix only (`HYBRIDSERVE_ARTIFACT`), so a cold start downloads
one model, and the package limit applies per model: one function per model, not one holding
them all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
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


def check_models(cfg: DeploymentConfig) -> None:
    """Each model's artifact is here and is one (the error names the field and the path)."""
    for i, m in enumerate(cfg.models):
        if not (Path(m.artifact) / MANIFEST).is_file():
            raise ConfigError(
                f"models.{i}.artifact: {m.artifact} is not a model artifact (no {MANIFEST}); "
                "expected a directory from `hybridserve package`"
            )


def resident_mb(cfg: DeploymentConfig) -> dict[str, float]:
    """Model -> the memory it takes loaded: its manifest's measured footprint, else the size of
    its uncompressed model (a floor)."""
    from predictors.repository_index import entry_of

    check_models(cfg)
    out = {}
    for m in cfg.models:
        e = entry_of(m.name, Path(m.artifact))
        out[m.name] = e.footprint_mb or e.onnx_mb
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


def index_text(cfg: DeploymentConfig) -> str:
    """`repository.yaml`: every model under its served name, its artifact beside the index."""
    return yaml.safe_dump({"models": {m.name: m.name for m in cfg.models}}, sort_keys=False)


def upload_models(cfg: DeploymentConfig, s3: Any) -> list[str]:
    """Upload each model's artifact, then the index (last: an instance that sees the index sees
    every artifact it names); returns the keys this call wrote. Unchanged files are skipped."""
    check_models(cfg)
    keys = []
    for m in cfg.models:
        keys += upload_artifact(s3, cfg.bucket, cfg.model_prefix(m.name), m.artifact, cfg.name)
    body = index_text(cfg).encode()
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


def function_sources(cfg: DeploymentConfig) -> list[tuple[str, str, str]]:
    """(model, artifact directory, S3 prefix) of each spill function ('' for a one-model one)."""
    if not cfg.models:
        assert cfg.artifact is not None
        return [("", cfg.artifact, cfg.artifact_prefix)]
    return [(m.name, m.artifact, cfg.model_prefix(m.name)) for m in cfg.models]
