"""`hybridserve package`: build a model artifact (and optionally the Lambda package around it).

    hybridserve package --model distilbert --output build/            # int8, else fp32
    hybridserve package --model my.onnx --variant fp16 --output build/ --json
    hybridserve package --model net.pt --input images:FP32:-1,3,224,224 --output build/
    hybridserve package --model distilbert --target lambda --output build/

`--model` is a reference model name (distilbert, resnet50, tinybert, mlp), an ONNX file or a
TorchScript archive (which needs ``--input``). A variant is refused, and nothing written, when
its outputs drift from fp32 below ``--cosine-threshold`` on any int8 kernel path (this CPU's
and, emulated, the exact-int32 and int16-saturating ones: `predictors.guard`). The default
variant, ``auto``, is int8 when it passes and fp32 otherwise, saying why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hybridserve.cli.common import user_errors


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"


def _lambda_packager() -> Any:
    try:
        from predictors.packaging import build_lambda_package
    except ImportError as e:
        if e.name in ("predictors.packaging", None):
            raise RuntimeError(
                "Lambda packaging is unavailable: predictors.packaging.build_lambda_package is "
                "missing from this installation; use --target artifact"
            ) from None
        raise RuntimeError(f"Lambda packaging needs the module {e.name!r}: {e}") from None
    return build_lambda_package


@click.command()
@click.option(
    "--model",
    "model",
    required=True,
    help="Reference model name (distilbert, resnet50, tinybert, mlp), an .onnx file or a "
    "TorchScript archive.",
)
@click.option(
    "--variant",
    type=click.Choice(["auto", "int8", "fp16", "fp32"]),
    default="auto",
    show_default=True,
    help="auto: int8 if it passes the accuracy guard on every int8 kernel path, else fp32.",
)
@click.option(
    "--int8-format",
    type=click.Choice(["s8-rr", "s8", "u8"]),
    default="s8-rr",
    show_default=True,
    help="Weights: s8-rr 7-bit signed (saturation-free on every CPU), s8 full range (saturates "
    "on AVX2/AVX-512BW), u8 (exact, slower kernels).",
)
@click.option(
    "--target",
    type=click.Choice(["artifact", "lambda"]),
    default="artifact",
    show_default=True,
    help="artifact: the compressed model + manifest; lambda: also the Lambda package.",
)
@click.option(
    "--output",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory; the artifact goes to OUTPUT/<name>-<variant>.",
)
@click.option("--compression", type=click.Choice(["zstd", "xz"]), default="zstd", show_default=True)
@click.option(
    "--compression-level",
    type=int,
    default=None,
    help="zstd 1-22 (default 19) or xz 0-9 (default 6).",
)
@click.option(
    "--cosine-threshold",
    type=float,
    default=0.99,
    show_default=True,
    help="Refuse the variant if its outputs' cosine similarity to fp32 falls below this.",
)
@click.option(
    "--samples", type=int, default=16, show_default=True, help="Random inputs the guard compares."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", default=None, help="Artifact name (default: the model's).")
@click.option("--version", "model_version", default="1", show_default=True)
@click.option("--max-batch", type=int, default=32, show_default=True)
@click.option(
    "--input",
    "input_specs",
    multiple=True,
    metavar="NAME:DATATYPE:DIMS",
    help="Input of a TorchScript model, e.g. images:FP32:-1,3,224,224 (-1 = dynamic); repeatable.",
)
@click.option(
    "--transformer",
    "transformer_spec",
    default=None,
    metavar="FILE:CLASS",
    help="Pre/post-processing packaged with the artifact (a predictors.transformer.Transformer "
    "subclass), run by the model server and the Lambda handler alike. Shipped: `text` (raw "
    "text in, label and score out, for distilbert); `fault` (20% of requests fail) and `slow` "
    "(50 ms added), to rehearse a rollback with.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def package(
    model: str,
    variant: str,
    int8_format: str,
    target: str,
    output_dir: str,
    compression: str,
    compression_level: int | None,
    cosine_threshold: float,
    samples: int,
    seed: int,
    name: str | None,
    model_version: str,
    max_batch: int,
    input_specs: tuple[str, ...],
    transformer_spec: str | None,
    as_json: bool,
) -> None:
    """Build a model artifact (compressed ONNX + manifest), guarded against accuracy loss."""
    with user_errors():
        from predictors.artifact import size_report
        from predictors.artifact_build import build_artifact
        from predictors.artifact_manifest import read_manifest
        from predictors.sources import parse_tensor_spec

        specs = [parse_tensor_spec(s) for s in input_specs] or None
        source = None
        if transformer_spec is not None:
            from predictors.transformer import attach_transformer, parse_source

            source = parse_source(transformer_spec)
        packager = _lambda_packager() if target == "lambda" else None
        art_dir = build_artifact(
            model,
            output_dir,
            variant=variant,
            compression=compression,
            cosine_threshold=cosine_threshold,
            samples=samples,
            seed=seed,
            version=model_version,
            name=name,
            input_specs=specs,
            max_batch=max_batch,
            level=compression_level,
            int8_format=int8_format,
        )
        if source is not None:  # before the Lambda package, which ships the artifact
            attach_transformer(art_dir, *source)
        manifest = read_manifest(art_dir)
        sizes = size_report(art_dir)
        lambda_result: Any = None
        if packager is not None:
            lambda_result = packager(art_dir, Path(output_dir))

    acc = manifest["accuracy"]
    warnings = _cpu_warnings(manifest, target)
    if as_json:
        out: dict[str, Any] = {
            "artifact": str(art_dir),
            "name": manifest["name"],
            "version": manifest["version"],
            "variant": manifest["variant"],
            "variant_requested": variant,
            "rejected": manifest.get("rejected", []),
            "files": [{"file": f, "bytes": b} for f, b in sizes],
            "sizes": manifest["sizes"],
            "accuracy": acc,
            "paths": {p: f["cosine"] for p, f in acc.get("paths", {}).items()},
            "warnings": warnings,
            "manifest": manifest,
        }
        if target == "lambda":
            out["lambda_package"] = (
                lambda_result.as_json()
                if hasattr(lambda_result, "as_json")
                else _jsonable(lambda_result)
            )
        click.echo(json.dumps(out, indent=2))
        return

    for r in manifest.get("rejected", []):
        click.echo(f"variant {r['variant']} rejected: {r['reason']}", err=True)
    if manifest.get("rejected"):
        click.echo(f"using the {manifest['variant']} variant instead", err=True)
    click.echo(
        f"artifact {art_dir}  ({manifest['name']} v{manifest['version']}, {manifest['variant']})"
    )
    width = max(len(f) for f, _ in sizes)
    for f, b in sizes:
        click.echo(f"  {f:<{width}}  {b:>14,d} B  {_fmt_bytes(b):>9}")
    onnx_bytes = manifest["sizes"]["onnx_bytes"]
    comp = manifest["sizes"]["compressed_bytes"]
    click.echo(
        f"  model: {_fmt_bytes(onnx_bytes)} ONNX -> {_fmt_bytes(comp)} {compression} "
        f"({comp / onnx_bytes:.0%})"
    )
    paths = ", ".join(f"{p} {f['cosine']:.6f}" for p, f in acc.get("paths", {}).items())
    click.echo(
        f"  accuracy: {acc.get('metric', 'cosine')} to fp32 {acc['cosine']:.6f} on the worst "
        f"path ({paths}; threshold {acc['threshold']}, {acc['samples']} samples, seed "
        f"{acc['seed']}); per-sample min {acc['cosine_min_per_sample']:.6f} (reported only)"
    )
    if "saturation_free" in acc:
        click.echo(f"  int8: saturation-free {str(acc['saturation_free']).lower()}")
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if target == "lambda":
        j = lambda_result.as_json() if hasattr(lambda_result, "as_json") else None
        if isinstance(j, dict) and {"kind", "path", "unzipped_mb"} <= set(j):
            click.echo(
                f"lambda package ({j['kind']}): {j['path']}  {j['unzipped_mb']} MB unzipped"
                + (f", {j['zipped_mb']} MB zipped" if j.get("zipped_mb") else "")
                + (f"  ({j['reason']})" if j.get("reason") else "")
            )
        else:
            click.echo(f"lambda package: {_jsonable(lambda_result)}")


def _cpu_warnings(manifest: dict[str, Any], target: str) -> list[str]:
    """Where the target's CPUs may differ from this one: accuracy is checked, latency is not."""
    on = manifest["accuracy"].get("measured_on", {})
    here = f"{on.get('isa', 'unknown')} ({on.get('cpu_model', 'unknown CPU')})"
    checked = (
        "accuracy holds there (every int8 kernel path was checked)"
        if manifest["variant"] == "int8"
        else "accuracy does not depend on the CPU for this variant"
    )
    if target == "lambda":
        return [
            f"Lambda x86_64 functions run on several Intel/AMD CPUs (AVX2 to AVX-512 VNNI) and "
            f"arm64 ones on Graviton; {checked}, but latency profiled here on {here} may differ"
        ]
    return [
        f"EC2 instance types differ in CPU (AVX2, AVX-512, VNNI/AMX, Graviton); {checked}, but "
        f"profile latency on the instance type, not only here on {here}"
    ]


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "__dataclass_fields__"):
        from dataclasses import asdict

        return _jsonable(asdict(x))
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


if __name__ == "__main__":  # pragma: no cover
    package()
