"""The VM model server: KServe V2 HTTP endpoints over the data plane, as a Starlette app.

Routes (Open Inference Protocol, REST):

    GET  /v2/health/live                 200 while the process runs
    GET  /v2/health/ready                200 when every model is ready, else 503
    GET  /v2                             server metadata
    GET  /v2/models/{name}[/versions/v]  model metadata
    GET  /v2/models/{name}[/versions/v]/ready
    POST /v2/models/{name}[/versions/v]/infer   JSON or binary tensor extension
    GET  /metrics                        Prometheus text format
    POST /v2/repository/index            [{name, version, state, reason}]; {"ready": true} filters
    POST /v2/repository/models/{name}/load      200 {}; 404 unknown; 409 over the memory budget
    POST /v2/repository/models/{name}/unload    200 {} once its accepted requests are answered

The repository routes are Triton's model-repository extension; with a `ModelRepository`
(`predictors.repository`) the server starts with what it loaded and loads and unloads on
request. Without one (``--artifact``) the index lists the fixed models and load/unload answer
400. A server with no model loaded is live and ready: readiness means every loaded model is
ready, and the router sends a model's requests only to instances whose index lists it.

Errors are ``{"error": message}`` with the V2Error's status; a malformed request is answered
and forgotten, never fatal. Metrics: `predictors.server_metrics` (prometheus_client).
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from predictors.dataplane import DataPlane
from predictors.model import Model
from predictors.prometheus import CONTENT_TYPE
from predictors.repository import ModelRepository, repository_json
from predictors.server_metrics import ServerMetrics
from predictors.spot_watch import SpotWatch
from predictors.v2 import HEADER_LENGTH, V2Error

MAX_DECOMPRESSED_BYTES = 256 * 1024 * 1024


def _error(e: V2Error) -> JSONResponse:
    return JSONResponse(e.as_json(), status_code=e.status)


def _decompress(body: bytes, encoding: str) -> bytes:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate"):
        raise V2Error(400, f"unsupported Content-Encoding {encoding!r}")
    d = zlib.decompressobj(wbits=31 if enc == "gzip" else 15)
    try:
        out = d.decompress(body, MAX_DECOMPRESSED_BYTES)
    except zlib.error as e:
        raise V2Error(400, f"request body is not valid {enc}: {e}") from None
    if d.unconsumed_tail:
        raise V2Error(400, f"decompressed request exceeds {MAX_DECOMPRESSED_BYTES} bytes")
    return out


def _load_parameters(name: str, doc: dict) -> str | None:
    """The variant a load names (`parameters.variant`, with a repository index), or None."""
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise V2Error(400, f"load of model '{name}': parameters must be a JSON object")
    variant = params.get("variant")
    if variant is not None and (not isinstance(variant, str) or not variant):
        raise V2Error(
            400, f"load of model '{name}': parameters.variant must be a variant's name (a string)"
        )
    override = [k for k in params if k == "config" or k.startswith("file:")]
    if override:
        raise V2Error(
            400,
            f"load of model '{name}': {', '.join(override)} (a configuration override) is not "
            "supported; the artifact's manifest is the model's configuration",
        )
    return variant


def create_app(
    models: Sequence[Model] = (),
    *,
    repository: ModelRepository | None = None,
    max_batch: int | None = 8,
    max_delay_ms: float = 5.0,
    max_queue: int = 1024,
    spot_watch: SpotWatch | None = None,
) -> Starlette:
    """The ASGI app; ``app.state.dataplane`` and ``app.state.metrics`` for introspection.
    With `repository`, it serves what the repository has loaded (`models` must be empty) and
    loads and unloads on request. With `spot_watch`, readiness also fails once EC2 announced
    the instance's interruption."""
    if repository is not None and models:
        raise ValueError("with a model repository, the server serves what it loaded: no models")
    dataplane = DataPlane(
        repository.models() if repository is not None else models,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        max_queue=max_queue,
        allow_empty=repository is not None,
    )
    if repository is not None:
        dataplane.not_found_note = repository.not_found_note
    metrics = ServerMetrics(dataplane, repository)

    async def live(request: Request) -> Response:
        return JSONResponse({"live": dataplane.live()})

    async def ready(request: Request) -> Response:
        ok = dataplane.ready() and (spot_watch is None or spot_watch.noticed is None)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_meta(request: Request) -> Response:
        doc = dataplane.server_metadata()
        if repository is not None:  # Triton's name for the load/unload/index extension
            doc["extensions"] = [*doc["extensions"], "model_repository"]
        return JSONResponse(doc)

    async def model_meta(request: Request) -> Response:
        p = request.path_params
        try:
            return JSONResponse(dataplane.model_metadata(p["name"], p.get("version")))
        except V2Error as e:
            return _error(e)

    async def model_ready(request: Request) -> Response:
        p = request.path_params
        try:
            ok = dataplane.model_ready(p["name"], p.get("version"))
        except V2Error as e:
            return _error(e)
        if not ok:
            return _error(V2Error(503, f"model '{p['name']}' is not ready"))
        return JSONResponse({"name": p["name"], "ready": True})

    async def infer(request: Request) -> Response:
        t0 = time.perf_counter()
        name = request.path_params["name"]
        try:
            body = await request.body()
            body = _decompress(body, request.headers.get("content-encoding", ""))
            payload, headers = await dataplane.infer_bytes(
                name, body, request.headers.get(HEADER_LENGTH), request.path_params.get("version")
            )
            resp: Response = Response(payload, status_code=200, headers=headers)
        except V2Error as e:
            resp = _error(e)
        except Exception as e:  # a bug or a broken model: answer, keep serving
            resp = _error(V2Error(500, f"internal error: {type(e).__name__}: {e}"))
        metrics.observe(name, resp.status_code, time.perf_counter() - t0)
        return resp

    def _repository() -> ModelRepository:
        if repository is None:
            raise V2Error(400, "this server has no model repository (started with one artifact)")
        return repository

    async def repo_index(request: Request) -> Response:
        try:
            ready_only = bool(repository_json(await request.body()).get("ready", False))
        except V2Error as e:
            return _error(e)
        if repository is not None:
            return JSONResponse(repository.index(ready_only))
        fixed = [
            {"name": m.name, "version": str(m.version), "state": "READY", "reason": ""}
            if m.ready
            else {"name": m.name, "version": str(m.version), "state": "UNAVAILABLE",
                  "reason": "not ready"}
            for m in dataplane.models.values()
        ]  # fmt: skip
        return JSONResponse([x for x in fixed if x["state"] == "READY" or not ready_only])

    async def repo_load(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            variant = _load_parameters(name, repository_json(await request.body()))
            await _repository().load(name, dataplane, variant)
        except V2Error as e:
            return _error(e)
        return JSONResponse({})

    async def repo_unload(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            repository_json(await request.body())  # unload_dependents: there are no ensembles
            await _repository().unload(name, dataplane)
        except V2Error as e:
            return _error(e)
        return JSONResponse({})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), headers={"content-type": CONTENT_TYPE})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        dataplane.start()
        if spot_watch is not None:
            spot_watch.start()
        try:
            yield
        finally:
            if spot_watch is not None:
                spot_watch.stop()
            await dataplane.stop()
            if repository is not None:
                repository.close()

    model_path = "/v2/models/{name}"
    version_path = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_meta, methods=["GET"]),
        Route(model_path, model_meta, methods=["GET"]),
        Route(version_path, model_meta, methods=["GET"]),
        Route(model_path + "/ready", model_ready, methods=["GET"]),
        Route(version_path + "/ready", model_ready, methods=["GET"]),
        Route(model_path + "/infer", infer, methods=["POST"]),
        Route(version_path + "/infer", infer, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/v2/repository/index", repo_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", repo_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repo_unload, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.dataplane = dataplane
    app.state.metrics = metrics
    return app


def serve(
    models: Sequence[Model] = (),
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int | None = 8,
    max_delay_ms: float = 5.0,
    max_queue: int = 1024,
    imds_url: str | None = None,
    repository: ModelRepository | None = None,
) -> None:
    """Run the server with uvicorn until interrupted (log level warning, no access log);
    `imds_url` (EC2's metadata service) makes a spot notice fail readiness; `repository`
    serves its loaded models and takes load and unload requests."""
    import uvicorn

    watch = SpotWatch(imds_url) if imds_url else None
    app = create_app(
        models, repository=repository, max_batch=max_batch, max_delay_ms=max_delay_ms,
        max_queue=max_queue, spot_watch=watch,
    )  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
