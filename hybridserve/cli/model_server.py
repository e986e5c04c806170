"""`hybridserve model-server`: serve model artifacts over the KServe V2 HTTP protocol.

The VM side of a deployment (see ``ec2_images/hybridserve-model.service``): loads the artifact
with onnxruntime and serves it with dynamic batching; see :mod:`predictors.server`. With
``--repository`` it serves several models from a directory of artifacts, loading and unloading
them on request within a memory budget (:mod:`predictors.repository`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from hybridserve.cli.common import user_errors

if TYPE_CHECKING:
    from predictors.repository import ModelRepository


@click.command("model-server")
@click.option(
    "--artifact",
    "artifact_path",
    default=None,
    type=click.Path(file_okay=False),
    help="Model artifact directory (manifest.json and the model): serve this one model.",
)
@click.option(
    "--repository",
    "repository_path",
    default=None,
    type=click.Path(file_okay=False),
    help="Directory of artifact directories: serve several models, loaded and unloaded with "
    "POST /v2/repository/models/NAME/load and /unload.",
)
@click.option(
    "--load",
    "load_names",
    multiple=True,
    help="With --repository: a model to load before serving, NAME or NAME:VARIANT (a variant "
    "of a repository.yaml index); repeatable.",
)
@click.option(
    "--load-tagged",
    is_flag=True,
    help="With --repository and --imds-url: load the models this EC2 instance's "
    "hybridserve:model:NAME tags name (the value is the variant), as the multi-model "
    "controller tags a shard's instances; without such tags (or tags in the metadata), the "
    "--load models.",
)
@click.option(
    "--memory-mb",
    type=float,
    default=None,
    help="With --repository: the memory budget the loaded models share, in MB "
    "[default: the memory available at start less a margin: 10% of the machine's memory, "
    "and at least 256 MB].",
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
    """Serve a model artifact (--artifact), or several from a repository (--repository), over
    the KServe V2 / Open Inference Protocol (HTTP/REST)."""
    with user_errors():
        _model_server(**kw)


def _model_server(
    artifact_path: str | None,
    repository_path: str | None,
    load_names: tuple[str, ...],
    load_tagged: bool,
    memory_mb: float | None,
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
    if (artifact_path is None) == (repository_path is None):
        raise ValueError(
            "give --artifact DIR (one model) or --repository DIR (several), "
            + ("not both" if artifact_path else "one of them")
        )
    if repository_path is None and (load_names or memory_mb is not None):
        raise ValueError("--load and --memory-mb need --repository")
    if memory_mb is not None and not memory_mb > 0:
        raise ValueError(f"--memory-mb: expected a number of MB > 0, got {memory_mb}")
    if load_tagged:
        if repository_path is None or imds_url is None:
            raise ValueError("--load-tagged needs --repository and --imds-url")
        load_names = tagged_models(imds_url) or load_names
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
        from predictors.transformer import served
    except ImportError as e:
        raise RuntimeError(
            f"model-server cannot load artifacts here ({e}); it needs predictors.artifact, "
            "predictors.onnx_model and onnxruntime: pip install 'hybridserve[predictors]'"
        ) from None
    batching = dict(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue)
    if repository_path is not None:
        repo = _repository(repository_path, load_names, memory_mb, threads)
        loaded = ", ".join(f"{n} {x.resident_mb:.1f} MB" for n, x in repo.loaded.items())
        click.echo(
            f"serving the model repository {repository_path} ({len(repo.entries)} models: "
            f"{', '.join(repo.names())}) on http://{host}:{port}/v2; loaded: {loaded or 'none'} "
            f"(max batch {max_batch}, max delay {max_delay_ms} ms)",
            err=True,
        )
        serve(host=host, port=port, imds_url=imds_url, repository=repo, **batching)
        return
    assert artifact_path is not None
    art = load_artifact(artifact_path)
    model = served(OnnxModel(art, intra_op_num_threads=threads), art.path, art.manifest)
    click.echo(
        f"serving model {model.name!r} version {model.version} on http://{host}:{port}/v2 "
        f"(max batch {max_batch}, max delay {max_delay_ms} ms)",
        err=True,
    )
    serve([model], host=host, port=port, imds_url=imds_url, **batching)


def _repository(
    path: str, load_names: tuple[str, ...], memory_mb: float | None, threads: int
) -> ModelRepository:
    """The repository with the --load models loaded; the whole --load set is checked against
    the budget first (from manifest footprints, or ONNX sizes as a floor), so an impossible set
    fails before anything loads."""
    from predictors.repository import ModelRepository, default_memory_mb
    from predictors.v2_types import V2Error

    how = "--memory-mb"
    if memory_mb is None:
        memory_mb, how = default_memory_mb()
    repo = ModelRepository(path, memory_mb=memory_mb, threads=threads)
    wanted = dict(n.partition(":")[::2] for n in load_names)  # NAME or NAME:VARIANT
    entries = {}
    for n, variant in wanted.items():
        try:
            entries[n] = repo.entry(n, variant or None)
        except V2Error as e:
            raise ValueError(f"--load {n}{':' if variant else ''}{variant}: {e.message}") from None
    need = {n: e.footprint_mb or e.onnx_mb for n, e in entries.items()}
    if sum(need.values()) > memory_mb:
        each = ", ".join(f"{n} {mb:.1f} MB" for n, mb in need.items())
        raise ValueError(
            f"--load: the models need {sum(need.values()):.1f} MB resident ({each}; manifest "
            f"footprints, else uncompressed ONNX sizes), more than the {memory_mb:.1f} MB memory "
            f"budget ({how})"
        )
    for n, variant in wanted.items():
        repo.load_now(n, variant or None)
    return repo


def tagged_models(imds_url: str) -> tuple[str, ...]:
    """NAME:VARIANT of each `hybridserve:model:NAME` tag of this instance (its shard's models),
    from the metadata service; () when it has none or offers no tags (then --load applies)."""
    from hybridserve.aws.tags import MODEL_PREFIX
    from predictors.imds import Imds

    try:
        tags = Imds(imds_url, timeout_s=2.0).instance_tags(MODEL_PREFIX)
    except OSError as e:
        click.echo(f"--load-tagged: the metadata service did not answer ({e}); --load", err=True)
        return ()
    if not tags:
        return ()
    names = tuple(f"{k[len(MODEL_PREFIX) :]}:{v}" for k, v in sorted(tags.items()))
    click.echo(f"--load-tagged: this instance's shard holds {', '.join(names)}", err=True)
    return names
