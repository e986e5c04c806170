"""Building an artifact (build time: needs onnx, and torch for torch models): export the fp32
model, make the variant, check it with the accuracy guard, compress it and write the directory
atomically. torch, onnx and the exporter are imported lazily, when a build runs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from predictors.artifact_io import _compress, sha256_file
from predictors.artifact_manifest import _NAME_OK, COMPRESSIONS, FORMAT, MANIFEST, MODEL_STEM
from predictors.model import TensorSpec

DEFAULT_LEVELS = {"zstd": 19, "xz": 6}
VARIANTS = ("int8", "fp16", "fp32")
AUTO = "auto"  # int8 if it passes the guard on every int8 path, else fp32
AUTO_ORDER = ("int8", "fp32")
DEFAULT_GUARD_SAMPLES = 16
DEFAULT_MAX_BATCH = 32


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _resolve_source(
    model: Any, *, name: str | None, input_specs: Sequence[TensorSpec] | None, seed: int
) -> Any:
    from predictors import sources

    if isinstance(model, str) and not Path(model).is_file():
        from predictors.reference import reference_names

        if model in reference_names():
            src = sources.reference_source(model, seed)
            if name:
                src.name = name
            return src
        raise ValueError(
            f"unknown model {model!r}: not a reference model ({', '.join(reference_names())}) "
            "nor an .onnx or TorchScript file"
        )
    if isinstance(model, Path) and not model.is_file():
        raise ValueError(f"model file not found: {model}")
    return sources.load_user_model(model, input_specs=input_specs, name=name)


def _make(
    variants: Any, fp32: Path, work: Path, variant: str, int8_format: str, label: str
) -> Path:
    """The variant's ONNX model in `work` (fp32 itself for fp32)."""
    if variant == "fp32":
        return fp32
    try:
        return variants.make_variant(
            fp32, work / f"{variant}.onnx", variant, int8_format=int8_format
        )
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
    `int8_format` picks the quantization (`predictors.variants.INT8_FORMATS`). The model is
    compressed (zstd level 19, or xz) and the directory written atomically (replacing an earlier
    build). Returns the artifact directory.
    """
    from predictors import export, sources, variants
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
    int8_format = int8_format or variants.DEFAULT_INT8_FORMAT
    if int8_format not in variants.INT8_FORMATS:
        raise ValueError(
            f"unknown int8 format {int8_format!r}; choose one of {', '.join(variants.INT8_FORMATS)}"
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
            ranges = {**sources.integer_input_ranges(fp32, inputs), **ranges}
        rejected: list[dict[str, Any]] = []
        for chosen in candidates:
            label = f"{art_name}-{chosen}"
            model_path = _make(variants, fp32, work, chosen, int8_format, label)
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
            accuracy["int8_format"] = variants.INT8_FORMATS[int8_format].as_json(int8_format)
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
