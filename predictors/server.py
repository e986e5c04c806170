"""The VM model server: KServe V2 HTTP endpoints over the data plane, as a Starlette app.

Routes (Open Inference Protocol, REST):

    GET  /v2/health/live                 200 while the process runs
    GET  /v2/health/ready                200 when every model is ready, else 503
    GET  /v2                             server metadata
    GET  /v2/models/{name}[/versions/v]  model metadata
    GET  /v2/models/{name}[/versions/v]/ready
    POST /v2/models/{name}[/versions/v]/infer   JSON or binary tensor extension
    GET  /metrics                        Prometheus text format

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


def create_app(
    models: Sequence[Model],
    *,
    max_batch: int | None = 8,
    max_delay_ms: float = 5.0,
    max_queue: int = 1024,
    spot_watch: SpotWatch | None = None,
) -> Starlette:
    """The ASGI app; ``app.state.dataplane`` and ``app.state.metrics`` for introspection.
    With `spot_watch`, readiness also fails once EC2 announced the instance's interruption."""
    dataplane = DataPlane(
        models, max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue
    )
    metrics = ServerMetrics(dataplane)

    async def live(request: Request) -> Response:
        return JSONResponse({"live": dataplane.live()})

    async def ready(request: Request) -> Response:
        ok = dataplane.ready() and (spot_watch is None or spot_watch.noticed is None)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_meta(request: Request) -> Response:
        return JSONResponse(dataplane.server_metadata())

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
    models: Sequence[Model],
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int | None = 8,
    max_delay_ms: float = 5.0,
    max_queue: int = 1024,
    imds_url: str | None = None,
) -> None:
    """Run the server with uvicorn until interrupted (log level warning, no access log);
    `imds_url` (EC2's metadata service) makes a spot notice fail readiness."""
    import uvicorn

    watch = SpotWatch(imds_url) if imds_url else None
    app = create_app(
        models, max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue,
        spot_watch=watch,
    )  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
