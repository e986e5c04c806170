"""Model artifacts: a directory with ``manifest.json`` and the compressed ONNX model.

An artifact is what ships to an EC2 instance or inside a Lambda package::

    distilbert-int8/
        manifest.json      name, version, variant, tensors, max_batch, hashes, accuracy, sizes
        model.onnx.zst     the ONNX model, zstd level 19 (or model.onnx.xz, lzma)

`build_artifact` (build time: needs onnx, and torch for torch models) exports the fp32 model,
makes the variant, refuses it if its outputs drift from fp32 on any int8 kernel path (the
accuracy guard, `predictors.guard`; ``auto`` then falls back to fp32), compresses it and writes
the directory atomically. `load_artifact` (serving time: needs only numpy, zstandard
and the standard library, so it runs in the Lambda) checks every file against the manifest
before decompressing, streams the model out to an extraction directory (``/tmp`` in a Lambda),
checks the result and reuses an earlier extraction whose hash still matches.

This module loads; the manifest (`predictors.artifact_manifest`), chunked hashing and
compression (`predictors.artifact_io`) and the build (`predictors.artifact_build`) have their
own modules, and the public names are re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predictors.artifact_build import build_artifact
from predictors.artifact_io import _buffer, _decompressing, sha256_file
from predictors.artifact_manifest import (
    COMPRESSIONS,
    MANIFEST,
    MODEL_STEM,
    ArtifactError,
    _artifact_dir,
    artifact_metadata,
    read_manifest,
)
from predictors.model import TensorSpec

# the public names of artifacts, wherever they live, so `from predictors.artifact import` works
__all__ = [
    "MANIFEST",
    "Artifact",
    "ArtifactError",
    "artifact_metadata",
    "build_artifact",
    "default_extract_dir",
    "load_artifact",
    "read_manifest",
    "sha256_file",
    "size_report",
    "verify_files",
]


@dataclass(frozen=True)
class Artifact:
    """A verified artifact: its manifest and the path of the decompressed ONNX model."""

    path: Path
    manifest: dict[str, Any]
    model_path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def variant(self) -> str:
        return str(self.manifest["variant"])

    @property
    def max_batch(self) -> int:
        return int(self.manifest["max_batch"])


def verify_files(path: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every file the manifest lists (size, then sha256); returns the manifest."""
    adir = _artifact_dir(path)
    m = manifest if manifest is not None else read_manifest(adir)
    for fname, meta in m["files"].items():
        fpath = adir / fname
        if not fpath.is_file():
            raise ArtifactError(f"{adir}: file {fname} listed in the manifest is missing")
        size = fpath.stat().st_size
        if size != meta["bytes"]:
            raise ArtifactError(
                f"{adir}: file {fname}: expected {meta['bytes']} bytes, found {size} "
                f"({'truncated' if size < meta['bytes'] else 'extra data'})"
            )
        digest, _ = sha256_file(fpath)
        if digest != meta["sha256"]:
            raise ArtifactError(
                f"{adir}: file {fname}: sha256 mismatch: expected {meta['sha256']}, found {digest}"
            )
    return m


def default_extract_dir() -> Path:
    return Path(tempfile.gettempdir()) / "hybridserve-models"


def load_artifact(path: str | Path, *, extract_dir: str | Path | None = None) -> Artifact:
    """Verify the artifact at `path` and decompress its model into `extract_dir`.

    Every file is checked against the manifest (size and sha256) before anything is
    decompressed; the model is streamed out (1 MiB at a time) into a temporary file, checked
    against the manifest's hash of the uncompressed model, then renamed into place, so that a
    reader never sees a partial model. A model already extracted with the right hash is reused.
    `extract_dir` defaults to ``<tmp>/hybridserve-models``. Any problem raises `ArtifactError`.
    """
    adir = _artifact_dir(path)
    m = verify_files(adir)
    want_sha, want_bytes = m["model"]["sha256"], m["model"]["bytes"]
    out_dir = Path(extract_dir) if extract_dir is not None else default_extract_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{m['name']}-{m['variant']}")
    target = out_dir / f"{safe}-{want_sha[:16]}.onnx"

    if not (
        target.is_file()
        and target.stat().st_size == want_bytes
        and sha256_file(target)[0] == want_sha
    ):
        _extract(adir, m, target)
    return Artifact(
        path=adir,
        manifest=m,
        model_path=target,
        inputs=[TensorSpec.from_json(s) for s in m["inputs"]],
        outputs=[TensorSpec.from_json(s) for s in m["outputs"]],
    )


def _extract(adir: Path, m: dict[str, Any], target: Path) -> None:
    model_file = MODEL_STEM + COMPRESSIONS[m["compression"]]
    src = adir / model_file
    want_sha, want_bytes = m["model"]["sha256"], m["model"]["bytes"]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        n = 0
        buf = _buffer()  # no per-chunk allocations (see _local)
        view = memoryview(buf)
        with open(fd, "wb") as out, _decompressing(src, m["compression"]) as r:
            while k := r.readinto(buf):
                n += k
                if n > want_bytes:
                    raise ArtifactError(
                        f"{adir}: file {model_file}: decompresses to more than the "
                        f"{want_bytes} bytes the manifest expects"
                    )
                h.update(view[:k])
                out.write(view[:k])
        if n != want_bytes or h.hexdigest() != want_sha:
            raise ArtifactError(
                f"{adir}: file {model_file}: decompressed model does not match the manifest: "
                f"expected {want_bytes} bytes sha256 {want_sha}, found {n} bytes sha256 "
                f"{h.hexdigest()}"
            )
        os.replace(tmp, target)
    except ArtifactError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as e:  # corrupt stream: zstd/lzma errors, EOF, ...
        tmp.unlink(missing_ok=True)
        raise ArtifactError(
            f"{adir}: file {model_file}: cannot decompress ({type(e).__name__}: {e})"
        ) from None


def size_report(artifact_dir: str | Path) -> list[tuple[str, int]]:
    """(file, bytes) of every file in the artifact directory, manifest first."""
    adir = _artifact_dir(artifact_dir)
    if not adir.is_dir():
        raise ArtifactError(f"{adir}: artifact directory not found")
    files = sorted(p for p in adir.iterdir() if p.is_file())
    files.sort(key=lambda p: p.name != MANIFEST)
    return [(p.name, p.stat().st_size) for p in files]
