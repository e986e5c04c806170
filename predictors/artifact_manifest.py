"""The artifact's manifest: the format's file names, `ArtifactError`, and reading and checking
``manifest.json`` (form only; `predictors.artifact.verify_files` checks the files it lists)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from predictors.model import TensorSpec

FORMAT = "hybridserve-artifact/1"
MANIFEST = "manifest.json"
MODEL_STEM = "model.onnx"
COMPRESSIONS = {"zstd": ".zst", "xz": ".xz"}
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ArtifactError(ValueError):
    """A missing, damaged or tampered artifact."""


def _artifact_dir(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.name == MANIFEST else p


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the artifact at `path` (directory or its manifest.json), checked for form."""
    adir = _artifact_dir(path)
    mpath = adir / MANIFEST
    if not adir.is_dir():
        raise ArtifactError(f"{adir}: artifact directory not found")
    try:
        text = mpath.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{adir}: {MANIFEST} missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: unreadable ({e})") from None
    try:
        m = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(
            f"{mpath}: bad JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    if not isinstance(m, dict):
        raise ArtifactError(f"{mpath}: expected a JSON object, found {type(m).__name__}")
    _check_manifest(mpath, m)
    return m


def artifact_metadata(path: str | Path) -> dict[str, Any]:
    """The V2 model metadata of an artifact from its manifest alone (no model load): what a
    router answers before any instance is up."""
    from predictors.v2_metadata import model_metadata

    m = read_manifest(path)
    # behind a transformer, clients send and get its tensors, not the model's
    seen = m.get("transformer") or m

    def specs(key: str) -> list[TensorSpec]:
        return [TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in seen[key]]

    return model_metadata(
        m["name"], [str(m["version"])], "onnxruntime_onnx", specs("inputs"), specs("outputs")
    )


def _check_manifest(mpath: Path, m: dict[str, Any]) -> None:
    def need(
        key: str, kind: type | tuple[type, ...], where: dict[str, Any] = m, ctx: str = ""
    ) -> Any:
        if key not in where:
            raise ArtifactError(f"{mpath}: field {ctx}{key} missing")
        v = where[key]
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            raise ArtifactError(
                f"{mpath}: field {ctx}{key}: expected {getattr(kind, '__name__', kind)}, "
                f"found {type(v).__name__} {v!r:.60}"
            )
        return v

    for key in ("name", "version", "variant", "compression"):
        need(key, str)
    need("max_batch", int)
    if m["compression"] not in COMPRESSIONS:
        raise ArtifactError(
            f"{mpath}: field compression: expected one of {', '.join(COMPRESSIONS)}, "
            f"found {m['compression']!r}"
        )
    files = need("files", dict)
    if not files:
        raise ArtifactError(f"{mpath}: field files is empty")
    for fname, meta in files.items():
        if not _NAME_OK.match(fname) or fname == MANIFEST:
            raise ArtifactError(f"{mpath}: field files: bad file name {fname!r}")
        if not isinstance(meta, dict):
            raise ArtifactError(f"{mpath}: field files.{fname}: expected an object")
        need("sha256", str, meta, f"files.{fname}.")
        need("bytes", int, meta, f"files.{fname}.")
    model_file = MODEL_STEM + COMPRESSIONS[m["compression"]]
    if model_file not in files:
        raise ArtifactError(f"{mpath}: field files lacks the model file {model_file}")
    model = need("model", dict)
    need("sha256", str, model, "model.")
    need("bytes", int, model, "model.")
    for key in ("inputs", "outputs"):
        specs = need(key, list)
        for i, s in enumerate(specs):
            try:
                TensorSpec.from_json(s)
            except (KeyError, TypeError, ValueError) as e:
                raise ArtifactError(f"{mpath}: field {key}[{i}]: bad tensor spec ({e})") from None


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    """Replace the artifact's manifest atomically (a reader sees the old one or the new)."""
    import os
    import tempfile

    adir = _artifact_dir(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=adir)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the artifact is read by other users
        os.replace(tmp, adir / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
