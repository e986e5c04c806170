"""A repository index: the names a server serves its artifacts under, and each one's variants.

Without an index a repository serves each artifact under its manifest's model name (one per
name). With ``repository.yaml`` at its root it serves what the index lists, Triton-style, by the
name the deployment gives (two models built from one reference, or the variants of one family,
can then sit side by side)::

    models:
      chat:                      # the V2 name requests use
        int8: ../arts/distilbert-int8    # variant -> artifact (relative to the root)
        fp32: ../arts/distilbert-fp32
      vision: ../arts/resnet50-int8      # one variant: the artifact's own

A load names the variant (``parameters: {"variant": "int8"}``, or ``--load chat:int8``); without
one the first listed is loaded. The loaded model answers as the indexed name, its version the
variant. The multi-model controller writes this file for its instances (one per deployment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from predictors.artifact_manifest import MANIFEST, ArtifactError, read_manifest
from predictors.memory import manifest_footprint_mb

INDEX = "repository.yaml"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MB = 1024.0 * 1024.0


@dataclass(frozen=True)
class Entry:
    """One artifact of the repository, under the name it is served as. `variant` is set for an
    indexed entry (the loaded model is renamed to `name`, its version `variant`)."""

    name: str
    version: str
    path: Path
    footprint_mb: float | None  # from the manifest, when profiled
    onnx_mb: float  # uncompressed model: a lower bound of its resident size
    variant: str | None = None


def entry_of(
    name: str, path: Path, variant: str | None = None, manifest: dict | None = None
) -> Entry:
    """The entry of the artifact at `path` (ArtifactError for a damaged manifest); `manifest`:
    its manifest when the caller has read it already."""
    m = read_manifest(path) if manifest is None else manifest
    version = str(m["version"]) if variant is None else variant
    return Entry(name, version, path, manifest_footprint_mb(m), m["model"]["bytes"] / MB, variant)


def read_index(root: Path) -> tuple[dict[str, dict[str, Entry]], list[str]]:
    """Name -> variant -> entry from `root/repository.yaml`, and what is wrong with the rest
    (each problem names the file and the field)."""
    path = root / INDEX
    where = str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        return {}, [f"{where}: cannot read the index: {e}"]
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        return {}, [f"{where}: expected a mapping `models: {{name: {{variant: artifact}}}}`"]
    out: dict[str, dict[str, Entry]] = {}
    problems: list[str] = []
    for name, spec in models.items():
        field = f"{where}: models.{name}"
        if not isinstance(name, str) or not NAME.match(name):
            problems.append(f"{field}: a model name is 1-64 letters, digits, '_', '.' or '-'")
            continue
        if not isinstance(spec, str | dict) or not spec:
            problems.append(f"{field}: expected an artifact path or {{variant: artifact path}}")
            continue
        pairs = [(None, spec)] if isinstance(spec, str) else list(spec.items())
        variants: dict[str, Entry] = {}
        for variant, rel in pairs:
            vfield = field if variant is None else f"{field}.{variant}"
            if not isinstance(rel, str):
                problems.append(f"{vfield}: expected an artifact path, got {rel!r}")
                continue
            art = (root / rel).resolve()
            if not (art / MANIFEST).is_file():
                problems.append(f"{vfield}: {art} is not an artifact (no {MANIFEST})")
                continue
            try:
                m = read_manifest(art)
            except ArtifactError as err:
                problems.append(f"{vfield}: {err}")
                continue
            # one variant (a plain path): the artifact's own name for it
            v = str(variant) if variant is not None else str(m.get("variant") or m["version"])
            variants[v] = entry_of(name, art, v, m)
        if variants:
            out[name] = variants
    return out, problems
