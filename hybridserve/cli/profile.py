"""`hybridserve profile`: measure an artifact's service time per batch size, write a profile.

The profile records the CPU's ISA (`reference.isa`) next to the latencies: int8 service time
depends on it (VNNI vs AVX2), so a profile describes instance types with the same ISA.

It also measures the artifact's load footprint (`predictors.memory.measure_load`: resident MB
and load seconds, each repeat in a fresh interpreter) and records it twice: in the profile
(`footprint`, for the planner) and in the artifact's manifest (`footprint`, for a model server
admitting the model against its memory budget).
"""

from __future__ import annotations

import json
from typing import Any

import click
import yaml

from hybridserve.cli.common import user_errors


@click.command()
@click.option("--artifact", "artifact_path", required=True, type=click.Path(file_okay=False))
@click.option("--batch-sizes", default="1,2,4,8,16,32", show_default=True)
@click.option(
    "--threads", type=int, default=2, show_default=True, help="onnxruntime intra-op threads."
)
@click.option("--repeats", type=int, default=30, show_default=True)
@click.option(
    "--output",
    "output_path",
    type=click.Path(dir_okay=False),
    help="Profile YAML to write (default: profile-<model>.yaml).",
)
@click.option(
    "--footprint-repeats",
    type=int,
    default=3,
    show_default=True,
    help="Fresh-interpreter loads measuring resident MB and load time (median); 0 skips it "
    "and leaves the manifest as it is.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as one JSON object.")
def profile(**kw: Any) -> None:
    """Measure service time per batch size on this machine; write a scenario `model:` profile."""
    with user_errors():
        _profile(**kw)


def _profile(
    artifact_path: str,
    batch_sizes: str,
    threads: int,
    repeats: int,
    output_path: str | None,
    footprint_repeats: int,
    as_json: bool,
) -> None:
    from predictors.artifact import load_artifact
    from predictors.isa import cpu_isa
    from predictors.memory import measure_load, write_footprint
    from predictors.onnx_model import OnnxModel
    from predictors.profile import profile_document, profile_model

    try:
        sizes = sorted({int(x) for x in batch_sizes.split(",") if x.strip()})
    except ValueError:
        raise ValueError(
            f"--batch-sizes: expected comma-separated integers, got {batch_sizes!r}"
        ) from None
    if not sizes or sizes[0] < 1:
        raise ValueError(f"--batch-sizes: expected integers >= 1, got {batch_sizes!r}")
    if threads < 1 or repeats < 1:
        raise ValueError("--threads and --repeats must be >= 1")
    if footprint_repeats < 0:
        raise ValueError(f"--footprint-repeats: expected >= 0, got {footprint_repeats}")
    model = OnnxModel(load_artifact(artifact_path), intra_op_num_threads=threads)
    if model.max_batch and sizes[-1] > model.max_batch:
        raise ValueError(
            f"--batch-sizes: {sizes[-1]} exceeds the artifact's max_batch {model.max_batch}"
        )
    rows = profile_model(model, sizes, repeats=repeats)
    footprint = None
    if footprint_repeats:
        footprint = measure_load(artifact_path, threads=threads, repeats=footprint_repeats)
        try:
            write_footprint(artifact_path, footprint, threads=threads, repeats=footprint_repeats)
        except OSError as e:  # a read-only artifact: the profile still records it
            click.echo(f"warning: footprint not recorded in the manifest ({e})", err=True)
    doc = profile_document(model.name, rows, threads, footprint=footprint)
    out = output_path or f"profile-{model.name}.yaml"
    with open(out, "w") as f:
        f.write(
            "# Serving profile measured by `hybridserve profile`; use as `model:` in a scenario.\n"
        )
        yaml.safe_dump(doc, f, sort_keys=False)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": model.name,
                    "threads": threads,
                    "profile": out,
                    "isa": cpu_isa().as_json(),
                    "batches": [r.__dict__ for r in rows],
                    "footprint": footprint.as_json() if footprint else None,
                }
            )
        )
    else:
        click.echo(f"{'batch':>5}  {'p50 ms':>8}  {'p99 ms':>8}  {'req/s':>8}")
        for r in rows:
            click.echo(
                f"{r.batch:>5}  {r.p50_ms:>8.2f}  {r.p99_ms:>8.2f}  {r.throughput_rps:>8.1f}"
            )
        isa = cpu_isa()
        if footprint is not None:
            click.echo(
                f"footprint: {footprint.resident_mb:.1f} MB resident, load {footprint.load_s:.3f} s "
                f"(median of {footprint_repeats} fresh loads; also in {artifact_path}/manifest.json)"
            )
        click.echo(
            f"profile written to {out} (measured on {isa.isa}, {isa.cpu_model}; int8 path "
            f"{isa.int8_path})",
            err=True,
        )
