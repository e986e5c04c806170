"""Lambda deployment package: handler + predictors runtime + onnxruntime/numpy/zstandard (+ artifact).

The zip holds only what the Lambda path imports (no torch, no exporter). Third-party packages are
copied from this environment's installed distributions, which must match the Lambda runtime
(Linux, CPython 3.x, the function's architecture): the build refuses a mismatch rather than ship
binaries that cannot load. Lambda's limit is 250 MB unzipped with layers; when the package would
not fit, a container-image build context (Dockerfile on the AWS Lambda Python base image, 10 GB
limit) is written instead, with the reason.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
LAMBDA_TMP_LIMIT = 10 * 1024 * 1024 * 1024
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "numpy", "zstandard")
RUNTIME_MODULES = (
    "__init__.py",
    "model.py",
    "v2.py",
    "v2_types.py",
    "v2_decode.py",
    "v2_encode.py",
    "v2_client.py",
    "v2_metadata.py",
    "v2_bytes.py",
    "transformer.py",  # an artifact's transformer runs in the handler too
    "text.py",  # the example text transformer's tokenizer
    "dataplane.py",
    "batching.py",
    "artifact.py",
    "artifact_manifest.py",
    "artifact_io.py",
    "artifact_build.py",  # re-exported by artifact.py; its torch/onnx imports are lazy
    "onnx_model.py",
    "isa.py",  # the handler logs the CPU's ISA and int8 path at cold start
)
HANDLER = "lambda_handlers.handler.handler"

_REPO = Path(__file__).resolve().parents[1]


class PackagingError(ValueError):
    """The package cannot be built here (platform mismatch, missing distribution)."""


@dataclass
class LambdaPackage:
    kind: str  # "zip" or "container"
    path: Path
    unzipped_bytes: int
    zipped_bytes: int
    sizes: list[tuple[str, int]] = field(default_factory=list)  # (component, unzipped bytes)
    reason: str = ""

    def as_json(self) -> dict:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "unzipped_mb": round(self.unzipped_bytes / 2**20, 1),
            "zipped_mb": round(self.zipped_bytes / 2**20, 1),
            "limit_mb": LAMBDA_UNZIPPED_LIMIT // 2**20,
            "sizes_mb": {k: round(v / 2**20, 2) for k, v in self.sizes},
            "handler": HANDLER,
            "reason": self.reason,
        }


def _check_platform(arch: str) -> None:
    machine = platform.machine().lower()
    want = {"x86_64": ("x86_64", "amd64"), "arm64": ("aarch64", "arm64")}[arch]
    if sys.platform != "linux" or machine not in want:
        raise PackagingError(
            f"this environment is {sys.platform}/{machine}; a Lambda {arch} package needs Linux "
            f"{want[0]} wheels of {', '.join(RUNTIME_DISTRIBUTIONS)}: build on such a machine or "
            "use the container image target"
        )


def _distribution_files(name: str) -> list[tuple[Path, str]]:
    """(absolute path, archive name) of an installed distribution's files, bytecode left out."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError as e:
        raise PackagingError(
            f"{name} is not installed: pip install 'hybridserve[predictors]'"
        ) from e
    out = []
    for f in dist.files or []:
        rel = str(f)
        if rel.startswith("..") or "__pycache__" in rel or rel.endswith((".pyc", ".pyi")):
            continue
        if "/tests/" in rel:  # test suites never run in the function
            continue
        if rel.split("/")[0].endswith(".dist-info") and not rel.endswith(("METADATA", "RECORD")):
            continue
        p = Path(f.locate())
        if p.is_file():
            out.append((p, rel))
    return out


def _project_files(include_artifact: Path | None) -> dict[str, list[tuple[Path, str]]]:
    parts: dict[str, list[tuple[Path, str]]] = {
        "lambda_handlers": [
            (p, f"lambda_handlers/{p.name}")
            for p in sorted((_REPO / "lambda_handlers").glob("*.py"))
        ],
        "predictors runtime": [
            (_REPO / "predictors" / m, f"predictors/{m}")
            for m in RUNTIME_MODULES
            if (_REPO / "predictors" / m).exists()
        ],
    }
    if include_artifact is not None:
        parts["artifact"] = [
            (p, f"artifact/{p.name}") for p in sorted(include_artifact.iterdir()) if p.is_file()
        ]
    return parts


def build_lambda_package(
    artifact_dir: str | Path | None,
    output_dir: str | Path,
    *,
    arch: str = "x86_64",
    include_artifact: bool = True,
    limit_bytes: int = LAMBDA_UNZIPPED_LIMIT,
) -> LambdaPackage:
    """Write `lambda.zip` (or a container build context when it would not fit) into output_dir.

    With include_artifact False the artifact is expected in S3 (HYBRIDSERVE_ARTIFACT=s3://...)
    and only the code goes into the zip."""
    if arch not in ("x86_64", "arm64"):
        raise PackagingError(f"arch must be x86_64 or arm64, got {arch!r}")
    _check_platform(arch)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    art = Path(artifact_dir) if artifact_dir and include_artifact else None
    if art is not None and not (art / "manifest.json").exists():
        raise PackagingError(f"{art}: not an artifact directory (no manifest.json)")
    parts = _project_files(art)
    for dist in RUNTIME_DISTRIBUTIONS:
        parts[dist] = _distribution_files(dist)
    sizes = sorted(
        ((k, sum(p.stat().st_size for p, _ in v)) for k, v in parts.items()),
        key=lambda kv: -kv[1],
    )
    unzipped = sum(s for _, s in sizes)
    if unzipped > limit_bytes:
        reason = (
            f"{unzipped / 2**20:.0f} MB unzipped exceeds Lambda's {limit_bytes / 2**20:.0f} MB "
            f"zip limit (largest: {sizes[0][0]} {sizes[0][1] / 2**20:.0f} MB); wrote a container "
            "image build context instead (10 GB limit)"
        )
        return _container_context(parts, out, unzipped, sizes, reason, arch)
    zpath = out / "lambda.zip"
    tmp = zpath.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for files in parts.values():
            for src, name in files:
                z.write(src, name)
    os.replace(tmp, zpath)
    (out / "lambda-package.json").write_text(
        json.dumps({"handler": HANDLER, "runtime": "python3.11", "arch": arch}, indent=2)
    )
    return LambdaPackage("zip", zpath, unzipped, zpath.stat().st_size, sizes)


def _container_context(
    parts, out: Path, unzipped: int, sizes, reason: str, arch: str
) -> LambdaPackage:
    ctx = out / "lambda-image"
    if ctx.exists():
        shutil.rmtree(ctx)
    for key in ("lambda_handlers", "predictors runtime", "artifact"):
        for src, name in parts.get(key, []):
            dst = ctx / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (ctx / "Dockerfile").write_text(
        "# AWS Lambda container image for the hybridserve spill function.\n"
        f"FROM public.ecr.aws/lambda/python:3.11-{'x86_64' if arch == 'x86_64' else 'arm64'}\n"
        "RUN pip install --no-cache-dir onnxruntime numpy zstandard\n"
        "COPY lambda_handlers/ ${LAMBDA_TASK_ROOT}/lambda_handlers/\n"
        "COPY predictors/ ${LAMBDA_TASK_ROOT}/predictors/\n"
        + ("COPY artifact/ ${LAMBDA_TASK_ROOT}/artifact/\n" if "artifact" in parts else "")
        + f'CMD ["{HANDLER}"]\n'
    )
    (ctx / "WHY.txt").write_text(reason + "\n")
    return LambdaPackage("container", ctx, unzipped, 0, sizes, reason)
