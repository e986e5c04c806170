"""`hybridserve model-server`: serve one model artifact over the KServe V2 HTTP protocol.

The VM side of a deployment (see ``ec2_images/hybridserve-model.service``): loads the artifact
with onnxruntime and serves it with dynamic batching; see :mod:`predictors.server`.
"""

from __future__ import annotations

from typing import Any

import click

from hybridserve.cli.common import user_errors


@click.command("model-server")
@click.option(
    "--artifact",
    "artifact_path",
    required=True,
    type=click.Path(file_okay=False),
    help="Model artifact directory (manifest.json and the model).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--max-batch",
    type=int,
    default=8,
    show_default=True,
    help="Most rows per predict call (capped by the artifact's max_batch).",
)
@click.option(
    "--max-delay-ms",
    type=float,
    default=5.0,
    show_default=True,
    help="Longest a request waits in the queue for others to batch with.",
)
@click.option(
    "--max-queue",
    type=int,
    default=1024,
    show_default=True,
    help="Queued requests beyond which the server answers 503.",
)
@click.option(
    "--threads", type=int, default=2, show_default=True, help="onnxruntime intra-op threads."
)
@click.option(
    "--imds-url",
    default=None,
    help="EC2's metadata service (http://169.254.169.254 on EC2): a spot interruption notice "
    "there makes /v2/health/ready fail, so the router drains the instance.",
)
def model_server(**kw: Any) -> None:
    """Serve a model artifact over the KServe V2 / Open Inference Protocol (HTTP/REST)."""
    with user_errors():
        _model_server(**kw)


def _model_server(
    artifact_path: str,
    host: str,
    port: int,
    max_batch: int,
    max_delay_ms: float,
    max_queue: int,
    threads: int,
    imds_url: str | None,
) -> None:
    if max_batch < 1 or threads < 1 or max_queue < 1:
        raise ValueError("--max-batch, --max-queue and --threads must be >= 1")
    if max_delay_ms < 0:
        raise ValueError("--max-delay-ms must be >= 0")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: expected 0..65535")
    try:
        from predictors.server import serve
    except ModuleNotFoundError as e:
        raise RuntimeError(
            f"model-server needs starlette and uvicorn ({e}); "
            "install them with: pip install 'hybridserve[serve]'"
        ) from None
    try:
        from predictors.artifact import load_artifact
        from predictors.onnx_model import OnnxModel
    except ImportError as e:
        raise RuntimeError(
            f"model-server cannot load artifacts here ({e}); it needs predictors.artifact, "
            "predictors.onnx_model and onnxruntime: pip install 'hybridserve[predictors]'"
        ) from None
    model = OnnxModel(load_artifact(artifact_path), intra_op_num_threads=threads)
    click.echo(
        f"serving model {model.name!r} version {model.version} on http://{host}:{port}/v2 "
        f"(max batch {max_batch}, max delay {max_delay_ms} ms)",
        err=True,
    )
    serve(
        [model],
        host=host,
        port=port,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        max_queue=max_queue,
        imds_url=imds_url,
    )
