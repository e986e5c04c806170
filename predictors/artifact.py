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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from predictors.model import TensorSpec

FORMAT = "hybridserve-artifact/1"
MANIFEST = "manifest.json"
MODEL_STEM = "model.onnx"
COMPRESSIONS = {"zstd": ".zst", "xz": ".xz"}
DEFAULT_LEVELS = {"zstd": 19, "xz": 6}
VARIANTS = ("int8", "fp16", "fp32")
AUTO = "auto"  # int8 if it passes the guard on every int8 path, else fp32
AUTO_ORDER = ("int8", "fp32")
DEFAULT_GUARD_SAMPLES = 16
DEFAULT_MAX_BATCH = 32
CHUNK = 1 << 20
# compressed bytes are read in pieces below glibc's initial mmap threshold (128 KiB)
READ_SIZE = 64 << 10
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ArtifactError(ValueError):
    """A missing, damaged or tampered artifact."""


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


# --------------------------------------------------------------------------------------------
# hashing and streaming
# --------------------------------------------------------------------------------------------


# Per-thread buffer and zstd context, allocated once and never freed. Freeing a large block
# makes glibc raise its mmap threshold, and the onnxruntime session created next then keeps
# ~30 MB more resident (DistilBERT int8: 150 -> 180 MB peak); reuse avoids that and the churn.
_local = threading.local()


def _buffer() -> bytearray:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(CHUNK)
    return buf


def _zstd_decompressor() -> Any:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        import zstandard

        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def sha256_file(path: str | Path) -> tuple[str, int]:
    """(sha256 hex, bytes) of a file, read in 1 MiB chunks into a reused buffer."""
    h = hashlib.sha256()
    n = 0
    buf = _buffer()
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(view[:k])
            n += k
    return h.hexdigest(), n


def _compress(src: Path, dst: Path, compression: str, level: int) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        if compression == "zstd":
            import zstandard

            cctx = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
            cctx.copy_stream(fin, fout, size=src.stat().st_size, read_size=CHUNK, write_size=CHUNK)
        elif compression == "xz":
            import lzma

            comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=level)
            while chunk := fin.read(CHUNK):
                fout.write(comp.compress(chunk))
            fout.write(comp.flush())
        else:  # pragma: no cover - checked by the caller
            raise ValueError(f"unknown compression {compression!r}")
        fout.flush()
        os.fsync(fout.fileno())


@contextlib.contextmanager
def _decompressing(path: Path, compression: str) -> Iterator[IO[bytes]]:
    with open(path, "rb") as raw:
        if compression == "zstd":
            with _zstd_decompressor().stream_reader(raw, read_size=READ_SIZE) as r:
                yield r
        elif compression == "xz":
            import lzma

            with lzma.open(raw, "rb") as r:
                yield r
        else:
            raise ArtifactError(f"{path}: unknown compression {compression!r}")


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------


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
    from predictors.v2 import model_metadata

    m = read_manifest(path)

    def specs(key: str) -> list[TensorSpec]:
        return [TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in m[key]]

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


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _resolve_source(
    model: Any, *, name: str | None, input_specs: Sequence[TensorSpec] | None, seed: int
) -> Any:
    from predictors import export

    if isinstance(model, str) and not Path(model).is_file():
        from predictors.reference import reference_names

        if model in reference_names():
            src = export.reference_source(model, seed)
            if name:
                src.name = name
            return src
        raise ValueError(
            f"unknown model {model!r}: not a reference model ({', '.join(reference_names())}) "
            "nor an .onnx or TorchScript file"
        )
    if isinstance(model, Path) and not model.is_file():
        raise ValueError(f"model file not found: {model}")
    return export.load_user_model(model, input_specs=input_specs, name=name)


def _make(export: Any, fp32: Path, work: Path, variant: str, int8_format: str, label: str) -> Path:
    """The variant's ONNX model in `work` (fp32 itself for fp32)."""
    if variant == "fp32":
        return fp32
    try:
        return export.make_variant(fp32, work / f"{variant}.onnx", variant, int8_format=int8_format)
    except (ValueError, RuntimeError):
        raise
    except Exception as e:  # quantizer/converter errors on an unusual graph
        raise ValueError(
            f"{label}: making the {variant} variant failed: {_first_line(e)}"
        ) from None


def _rejection(variant: str, e: Exception) -> dict[str, Any]:
    acc = getattr(e, "accuracy", None) or {}
    return {
        "variant": variant,
        "reason": str(e),
        "worst_path": acc.get("worst_path"),
        "cosine": acc.get("cosine"),
        "paths": {p: f["cosine"] for p, f in acc.get("paths", {}).items()},
    }


def build_artifact(
    model: Any,
    output_dir: str | Path,
    *,
    variant: str = "int8",
    compression: str = "zstd",
    cosine_threshold: float = 0.99,
    samples: int = DEFAULT_GUARD_SAMPLES,
    seed: int = 0,
    version: str = "1",
    name: str | None = None,
    input_specs: Sequence[TensorSpec] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    level: int | None = None,
    int8_format: str | None = None,
) -> Path:
    """Build the `variant` artifact of `model` into ``output_dir/<name>-<variant>``.

    `model` is a reference model name (``distilbert``, ``resnet50``, ``tinybert``, ``mlp``), an
    ONNX or TorchScript file, or a torch.nn.Module (the last two need `input_specs`). The fp32
    model is exported, the variant made and checked by the accuracy guard
    (`predictors.guard`: `samples` seeded random inputs, every int8 kernel path); a figure
    below `cosine_threshold` raises AccuracyError and writes nothing. ``variant="auto"`` tries
    int8, then fp32, and records in the manifest (``rejected``) why a variant was passed over.
    `int8_format` picks the quantization (`predictors.export.INT8_FORMATS`). The model is
    compressed (zstd level 19, or xz) and the directory written atomically (replacing an earlier
    build). Returns the artifact directory.
    """
    from predictors import export
    from predictors.guard import AccuracyError, accuracy_guard

    if variant not in (*VARIANTS, AUTO):
        raise ValueError(
            f"unknown variant {variant!r}; choose one of {', '.join((AUTO, *VARIANTS))}"
        )
    if compression not in COMPRESSIONS:
        raise ValueError(
            f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}"
        )
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if not np.isfinite(cosine_threshold):
        raise ValueError(f"cosine threshold must be a number, got {cosine_threshold}")
    int8_format = int8_format or export.DEFAULT_INT8_FORMAT
    if int8_format not in export.INT8_FORMATS:
        raise ValueError(
            f"unknown int8 format {int8_format!r}; choose one of {', '.join(export.INT8_FORMATS)}"
        )
    level = DEFAULT_LEVELS[compression] if level is None else level

    src = _resolve_source(model, name=name, input_specs=input_specs, seed=seed)
    art_name = src.name
    if not _NAME_OK.match(art_name):
        raise ValueError(f"model name {art_name!r}: use letters, digits, '.', '_' and '-'")
    output_dir = Path(output_dir)
    candidates = AUTO_ORDER if variant == AUTO else (variant,)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hybridserve-build-") as work_dir:
        work = Path(work_dir)
        fp32 = src.write_onnx(work / "fp32.onnx")
        inputs, outputs = export.onnx_specs(fp32)
        inputs = _keep_declared(inputs, src.inputs)
        outputs = _keep_declared(outputs, src.outputs)
        ranges = dict(src.input_ranges)
        if any(s.dtype.kind in "iu" and s.name not in ranges for s in inputs):
            ranges = {**export.integer_input_ranges(fp32, inputs), **ranges}
        rejected: list[dict[str, Any]] = []
        for chosen in candidates:
            label = f"{art_name}-{chosen}"
            model_path = _make(export, fp32, work, chosen, int8_format, label)
            try:
                accuracy = accuracy_guard(
                    fp32,
                    model_path,
                    inputs,
                    variant=chosen,
                    ranges=ranges,
                    samples=samples,
                    seed=seed,
                    threshold=cosine_threshold,
                    label=label,
                )
                break
            except AccuracyError as e:
                if chosen == candidates[-1]:
                    raise
                rejected.append(_rejection(chosen, e))
        if chosen == "int8":
            accuracy["int8_format"] = export.INT8_FORMATS[int8_format].as_json(int8_format)
        final = output_dir / label
        onnx_sha, onnx_bytes = sha256_file(model_path)

        output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{label}.", suffix=".tmp", dir=output_dir))
        try:
            model_file = MODEL_STEM + COMPRESSIONS[compression]
            _compress(model_path, staging / model_file, compression, level)
            file_sha, file_bytes = sha256_file(staging / model_file)
            manifest = {
                "format": FORMAT,
                "name": art_name,
                "version": str(version),
                "variant": chosen,
                "variant_requested": variant,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "inputs": [s.as_json() for s in inputs],
                "outputs": [s.as_json() for s in outputs],
                "max_batch": int(max_batch),
                "compression": compression,
                "compression_level": level,
                "files": {model_file: {"sha256": file_sha, "bytes": file_bytes}},
                "model": {"sha256": onnx_sha, "bytes": onnx_bytes},
                "accuracy": accuracy,
                "rejected": rejected,
                "sizes": {"onnx_bytes": onnx_bytes, "compressed_bytes": file_bytes},
                "source": {**src.describe(), "seed": seed if src.kind == "reference" else None},
                "build_seconds": round(time.perf_counter() - t0, 2),
            }
            with open(staging / MANIFEST, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(staging, 0o755)  # mkdtemp makes it private
            _replace_dir(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final


def _keep_declared(found: list[TensorSpec], declared: Sequence[TensorSpec]) -> list[TensorSpec]:
    """The graph's tensors, with the names/shapes the source declared where they agree in count.

    The exporter may leave a dimension symbolic that the source fixed (or the reverse); the
    declared spec wins for fixed dims so clients see e.g. ``[-1, 128]``.
    """
    if len(found) != len(declared):
        return found
    out = []
    for f, d in zip(found, declared, strict=True):
        shape = d.shape if len(d.shape) == len(f.shape) else f.shape
        out.append(TensorSpec(f.name, f.datatype, tuple(shape)))
    return out


def _replace_dir(staging: Path, final: Path) -> None:
    """Move `staging` to `final`, replacing an earlier artifact there."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
