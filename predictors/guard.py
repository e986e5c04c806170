"""The accuracy guard: a variant ships only if its outputs stay close to fp32 on every CPU.

A variant is run on seeded random inputs next to the fp32 model. For an int8 variant the
integer products differ per CPU (`predictors.isa`), so it is checked on every int8 path: the
native run here (its ISA recorded) plus the exact-int32 and the int16-saturating-pairs paths,
run by onnxruntime on a rewritten graph (`predictors.int8_paths`). The worst path is gated.

The gated figure is the **pooled cosine**: the cosine similarity of all outputs of all samples
flattened together to fp32's (1 - pooled cosine ~ half the squared relative L2 error of the
whole output). The per-sample minimum and 5th percentile are reported, not gated: a per-sample
cosine measures the angle of each output vector, and samples whose fp32 output lies near the
origin (a 2-logit classifier's) turn a typical error into a large angle. Measured on an AVX2
machine with the reference models' seeded random weights, guard seeds 0-4, 8/16/32 samples,
on both int8 paths (README, "int8 on every CPU"):

- default format (s8, reduce_range): worst pooled cosine mlp 0.99992, tinybert 0.99976,
  DistilBERT 0.99764, ResNet-50 0.99989, a 4x margin to 0.99 in (1 - cosine). DistilBERT's
  per-sample minimum went down to 0.748 (p5 0.955) with 32 samples: a gate on it would refuse
  a variant whose outputs are as accurate as any other's;
- full-range s8 on the saturating path: mlp 0.976 with 8 samples, seed 0 (exact path
  0.99995): refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predictors.isa import EXACT, SATURATING, cpu_isa, onnxruntime_version
from predictors.model import TensorSpec

METRIC = "pooled-cosine"
METRIC_TEXT = "cosine similarity of all outputs of all samples, flattened together, to fp32's"
NATIVE = "native"


class AccuracyError(ValueError):
    """A variant whose outputs drift from the fp32 model beyond the threshold.

    `accuracy` holds the guard's record (figures per path) when the guard got that far.
    """

    def __init__(self, message: str, accuracy: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.accuracy = accuracy


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _run(model: Path | bytes, feed: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    """Outputs of an ONNX model (path or bytes) on `feed`; ValueError if onnxruntime refuses it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        src = model if isinstance(model, bytes) else str(model)
        session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        return session.run(None, feed)
    except Exception as e:  # onnxruntime's errors derive from Exception only
        raise ValueError(f"onnxruntime cannot run the {what}: {_first_line(e)}") from None


def guard_inputs(
    specs: Sequence[TensorSpec],
    ranges: dict[str, tuple[int, int]],
    samples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """`samples` seeded random inputs (one batch) of the right dtypes and value ranges.

    One batch on purpose: dynamic quantization scales activations over the whole tensor, so
    every path must see the same batch for its figures to compare.
    """
    from predictors.sources import example_inputs

    return example_inputs(specs, ranges, batch=samples, seed=seed)


def _rows(outs: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).reshape(len(x), -1) for x in outs], axis=1)


def cosine_per_sample(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> np.ndarray:
    """Cosine similarity per sample (row) of all outputs concatenated; -1 where not finite."""
    a, b = _rows(ref), _rows(got)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (a * b).sum(axis=1) / (na * nb)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, cos)
    finite = np.isfinite(cos) & np.isfinite(b).all(axis=1)
    return np.where(finite, np.clip(cos, -1.0, 1.0), -1.0)


def pooled_cosine(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    """Cosine similarity of all outputs of all samples flattened together; -1 if not finite."""
    a, b = _rows(ref).ravel(), _rows(got).ravel()
    if not np.isfinite(b).all():
        return -1.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else -1.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def figures(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> dict[str, float]:
    """The gated figure (`cosine`, pooled) and the reported per-sample ones."""
    per = cosine_per_sample(ref, got)
    a, b = _rows(ref), _rows(got)
    with np.errstate(invalid="ignore", over="ignore"):
        rel = float(np.linalg.norm(b - a) / np.linalg.norm(a)) if np.linalg.norm(a) else 0.0
    return {
        "cosine": round(pooled_cosine(ref, got), 6),
        "cosine_min_per_sample": round(float(per.min()), 6),
        "cosine_p5_per_sample": round(float(np.percentile(per, 5)), 6),
        "relative_l2_error": round(rel, 6) if np.isfinite(rel) else None,
    }


def _int8_path_outputs(
    variant_path: Path, feed: dict[str, np.ndarray], native: list[np.ndarray], label: str
) -> tuple[dict[str, list[np.ndarray]], dict[str, Any]]:
    """Outputs on the exact and the saturating path (emulated) and the static check's record."""
    from predictors import int8_paths

    report = int8_paths.saturation_report(variant_path)
    info: dict[str, Any] = {"saturation_free": report.saturation_free, **report.as_json()}
    if report.gemms == 0:  # nothing integer to differ: the native run is every path
        return {}, info
    outs: dict[str, list[np.ndarray]] = {}
    for path in (EXACT, SATURATING):
        if path == SATURATING and report.saturation_free:
            outs[path] = outs[EXACT]  # no pair can saturate: the same integers
            continue
        try:
            model = int8_paths.emulated_model(variant_path, path).SerializeToString()
        except int8_paths.EmulationError as e:
            if report.saturation_free:  # both paths compute what the native run computed
                info["emulation"] = f"not emulated ({e}); saturation-free, so paths agree"
                return {EXACT: native, SATURATING: native}, info
            raise AccuracyError(
                f"{label}: cannot check the {path} path: {e}, and the model is not saturation-free"
            ) from None
        outs[path] = _run(model, feed, f"{label} variant emulating {path}")
    info["native_matches"] = [
        p
        for p in (EXACT, SATURATING)
        if all(np.array_equal(x, y) for x, y in zip(native, outs[p], strict=True))
    ]
    return outs, info


def accuracy_guard(
    fp32_path: Path,
    variant_path: Path,
    inputs: Sequence[TensorSpec],
    *,
    variant: str,
    ranges: dict[str, tuple[int, int]],
    samples: int,
    seed: int,
    threshold: float,
    label: str = "",
) -> dict[str, Any]:
    """The manifest's accuracy record of the variant; AccuracyError if any path is below threshold.

    Paths: ``native`` (this machine, `measured_on`) and, for a model with integer GEMMs,
    ``exact-int32`` and ``int16-saturating-pairs``. The gated figure is the worst path's pooled
    cosine.
    """
    feed = guard_inputs(inputs, ranges, samples, seed)
    ref = _run(fp32_path, feed, f"fp32 model of {label}")
    if not all(np.isfinite(np.asarray(r, np.float64)).all() for r in ref):
        raise AccuracyError(f"{label}: the fp32 model gives non-finite outputs on random inputs")
    native = ref if variant_path == fp32_path else _run(variant_path, feed, f"{label} variant")
    isa = cpu_isa()
    record: dict[str, Any] = {
        "reference": "fp32",
        "metric": METRIC,
        "metric_text": METRIC_TEXT,
        "threshold": threshold,
        "samples": samples,
        "seed": seed,
        "measured_on": {**isa.as_json(), "onnxruntime": onnxruntime_version()},
    }
    outs: dict[str, list[np.ndarray]] = {}
    if variant == "int8":
        emulated, info = _int8_path_outputs(variant_path, feed, native, label)
        outs.update(emulated)
        record.update(info)
    outs[NATIVE] = native  # last: a tie names the kernel path, not this machine
    paths = {p: figures(ref, o) for p, o in outs.items()}
    worst = min(paths, key=lambda p: paths[p]["cosine"])
    record.update(
        paths=paths,
        worst_path=worst,
        cosine=paths[worst]["cosine"],
        cosine_min_per_sample=min(f["cosine_min_per_sample"] for f in paths.values()),
    )
    if paths[worst]["cosine"] < threshold:
        raise AccuracyError(_failure(label, variant, paths, worst, record), record)
    return record


def _failure(
    label: str, variant: str, paths: dict[str, dict], worst: str, record: dict[str, Any]
) -> str:
    """The refusal: variant, failing path(s) with figures, threshold, what was compared."""
    on = record["measured_on"]

    def name(p: str) -> str:
        return f"native ({on['isa']}, this machine's {on['int8_path']} path)" if p == NATIVE else p

    threshold = record["threshold"]
    also = [name(p) for p, f in paths.items() if p != worst and f["cosine"] < threshold]
    passing = [f"{name(p)} {f['cosine']:.6f}" for p, f in paths.items() if f["cosine"] >= threshold]
    return (
        f"{label}: the {variant} variant fails the accuracy guard on the {name(worst)} path: "
        f"{METRIC} to fp32 {paths[worst]['cosine']:.6f} < threshold {threshold} "
        f"({record['samples']} random samples, seed {record['seed']})"
        + (f"; also below on {', '.join(also)}" if also else "")
        + (f"; passing: {', '.join(passing)}" if passing else "")
    )
