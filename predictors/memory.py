"""What an artifact costs an instance: resident memory and load time, measured in a fresh process.

Packing several models on one instance makes memory the binding constraint and a model's load
the launch delay of serving it there (design notes, "Packing many models"). `measure_load`
measures both the way a model server pays them: verify the sha256s, decompress, create the
onnxruntime session and run one batch-1 predict. Each repeat runs in a fresh interpreter
(``python -m predictors.memory``) so that nothing loaded earlier is counted or reused: the
baseline is taken after numpy, onnxruntime, zstandard and the predictors modules are imported,
so the growth is the model's own (plus onnxruntime's one-off per-process set-up on its first
session, a few MB, which the tiny mlp shows on its own), and the model is extracted into a new
directory every time so that decompression is always timed.

RSS is VmRSS from ``/proc/self/status`` (MB = 2**20 bytes, as the rest of the project reports
memory); elsewhere ``ru_maxrss`` (the peak) stands in. `write_footprint` records the result in
the artifact's manifest, which no hash covers (the manifest lists the hashes of the other files),
so verification stays valid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from predictors.artifact_manifest import (
    ArtifactError,
    _artifact_dir,
    read_manifest,
    write_manifest,
)

CHILD_TIMEOUT_S = 900.0  # one load of a large fp32 model on a slow host stays far below this


@dataclass(frozen=True)
class LoadFootprint:
    """An artifact's cost on an instance, measured on this machine."""

    resident_mb: float  # RSS growth from loading the artifact plus one batch-1 predict (median)
    load_s: float  # sha256 checks, decompression, session creation, first predict (median)
    isa: str  # predictors.isa.cpu_isa().isa of the machine measured on

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def rss_mb() -> float:
    """This process's resident set size in MB (VmRSS; the peak where /proc is absent)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def measure_load(artifact: str | Path, *, threads: int = 2, repeats: int = 3) -> LoadFootprint:
    """Median resident growth and load time of `artifact` over `repeats` fresh interpreters,
    each loading it with `threads` onnxruntime intra-op threads. Raises ArtifactError for a
    missing or damaged artifact, RuntimeError when a measuring process fails."""
    from predictors.isa import cpu_isa

    if threads < 1 or repeats < 1:
        raise ValueError(f"threads and repeats must be >= 1, got {threads} and {repeats}")
    adir = _artifact_dir(artifact).resolve()
    read_manifest(adir)  # a clear error here rather than in a child's traceback
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    growth, seconds = [], []
    for _ in range(repeats):
        work = Path(tempfile.mkdtemp(prefix="hybridserve-footprint-"))
        try:
            cmd = [sys.executable, "-m", "predictors.memory", str(adir), "--threads", str(threads)]
            p = subprocess.run(
                [*cmd, "--extract-dir", str(work)],
                capture_output=True,
                text=True,
                env=env,
                timeout=CHILD_TIMEOUT_S,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"{adir}: measuring the load failed: {tail}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        growth.append(r["rss_after_mb"] - r["rss_before_mb"])
        seconds.append(r["load_s"])
    # the growth cannot really be <= 0 (the session holds the weights); keep the figure positive
    resident = max(float(statistics.median(growth)), 0.01)
    return LoadFootprint(
        round(resident, 2), round(float(statistics.median(seconds)), 4), cpu_isa().isa
    )


def write_footprint(
    artifact: str | Path, footprint: LoadFootprint, *, threads: int, repeats: int
) -> dict[str, Any]:
    """Record `footprint` as the manifest's ``footprint`` (with how it was measured), replacing
    the manifest atomically; returns the new manifest. No hash covers manifest.json itself, so
    `predictors.artifact.verify_files` still passes."""
    from predictors.isa import onnxruntime_version

    adir = _artifact_dir(artifact)
    m = read_manifest(adir)
    m["footprint"] = {
        **footprint.as_json(),
        "threads": int(threads),
        "repeats": int(repeats),
        "onnxruntime": onnxruntime_version() or "?",
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_manifest(adir, m)
    return m


def manifest_footprint_mb(manifest: dict[str, Any]) -> float | None:
    """The manifest's recorded resident MB, or None when absent or not a positive number."""
    fp = manifest.get("footprint")
    v = fp.get("resident_mb") if isinstance(fp, dict) else None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
        return float(v)
    return None


def _child(artifact: str, threads: int, extract_dir: str) -> dict[str, float]:
    """One measurement, in this (fresh) process: RSS after the imports, then after the load."""
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    import zstandard  # noqa: F401

    from predictors.artifact import load_artifact
    from predictors.onnx_model import OnnxModel
    from predictors.profile import sample_inputs

    before = rss_mb()
    t0 = time.perf_counter()
    model = OnnxModel(
        load_artifact(artifact, extract_dir=extract_dir), intra_op_num_threads=threads
    )
    model.predict(sample_inputs(model.inputs, 1))
    load_s = time.perf_counter() - t0
    return {"rss_before_mb": before, "rss_after_mb": rss_mb(), "load_s": load_s}


def _main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="one load measurement (run by measure_load)")
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extract-dir", required=True)
    a = ap.parse_args(argv)
    try:
        print(json.dumps(_child(a.artifact, a.threads, a.extract_dir)), flush=True)
    except (ArtifactError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _main()
