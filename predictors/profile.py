"""Serving profile: service time per batch size of an artifact on this machine.

The result is written in the scenario's `model` format (`reference.batch_ms`, with provenance),
so `hybridserve simulate --scenario` plans with measured numbers. Scaling to instance types is
the stated assumption of `hybridserve.config`: an instance with V vCPUs runs V / threads workers
of `threads` threads each, so a batch takes what it took here and throughput scales with V.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from predictors.model import Model, TensorSpec

if TYPE_CHECKING:  # predictors.memory imports this module (sample_inputs)
    from predictors.memory import LoadFootprint


def sample_inputs(specs: list[TensorSpec], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the right dtype and shape: ones for integer tensors (valid ids and masks),
    standard normal for floats. Dynamic non-batch dims take 128."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = (batch, *[128 if d == -1 else d for d in s.shape[1:]])
        if np.issubdtype(s.dtype, np.floating):
            out[s.name] = rng.standard_normal(shape).astype(s.dtype)
        else:
            out[s.name] = np.ones(shape, dtype=s.dtype)
    return out


@dataclass
class BatchTiming:
    batch: int
    p50_ms: float
    p99_ms: float
    throughput_rps: float


def profile_model(
    model: Model, batch_sizes: list[int], *, repeats: int = 30, warmup: int = 3
) -> list[BatchTiming]:
    """Time `model.predict` per batch size (wall clock, after warm-up)."""
    rows = []
    for b in batch_sizes:
        if b < 1:
            raise ValueError(f"batch sizes must be >= 1, got {b}")
        x = sample_inputs(model.inputs, b)
        for _ in range(warmup):
            model.predict(x)
        times = np.empty(repeats)
        for i in range(repeats):
            t0 = time.perf_counter()
            model.predict(x)
            times[i] = time.perf_counter() - t0
        p50 = float(np.percentile(times, 50))
        rows.append(BatchTiming(b, p50 * 1e3, float(np.percentile(times, 99)) * 1e3, b / p50))
    return rows


def profile_document(
    name: str,
    rows: list[BatchTiming],
    threads: int,
    *,
    cold_start_s: float | None = None,
    footprint: LoadFootprint | None = None,
) -> dict:
    """A `model:` mapping for a scenario file (hybridserve.config.ModelProfile).

    With `footprint` (`predictors.memory.measure_load`) it records the model's resident MB and
    load time, what packing several models on one instance plans with.

    The reference records the CPU's ISA (`predictors.isa`): int8 latency depends on it (VNNI
    runs DistilBERT int8 about 3.5x faster than AVX2), so a profile only transfers to
    instance types with the same ISA. The CPU model goes in the provenance.
    """
    from predictors.isa import cpu_isa, onnxruntime_version

    isa = cpu_isa()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    ort = onnxruntime_version() or "?"
    doc = {
        "name": name,
        "provenance": (
            f"measured by `hybridserve profile` on {when}: {os.cpu_count()}-vCPU {isa.machine} "
            f"{isa.cpu_model} (ISA {isa.isa}, int8 path {isa.int8_path}), onnxruntime {ort} "
            f"with {threads} intra-op threads, p50 of repeated predicts per batch"
        ),
        "reference": {
            "vcpus": threads,
            "threads": threads,
            "batch_ms": {r.batch: round(r.p50_ms, 3) for r in rows},
            "isa": isa.isa,
        },
    }
    if cold_start_s is not None:
        doc["lambda"] = {"cold_start_s": round(cold_start_s, 3), "invoke_overhead_ms": 8.0}
    if footprint is not None:
        doc["footprint"] = {
            "resident_mb": round(footprint.resident_mb, 2),
            "load_s": round(footprint.load_s, 4),
            "isa": footprint.isa,
        }
    return doc
