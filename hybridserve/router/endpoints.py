"""The router's endpoints: ASGI lifespan, health, API key, metrics, server and model metadata,
and the infer route, whose path and body are checked here before `Router.infer` routes them.

As in KServe's model server, endpoints sit above the data plane: nothing here decides where a
request goes, and nothing a client sent reaches an instance's request line unchecked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from hybridserve.router.asgi import (
    SERVER_METADATA,
    BadRequest,
    BodyTooLarge,
    authorized,
    model_path,
    read_body,
    reply,
    reply_json,
)
from hybridserve.router.rollout_endpoints import rollout_route
from hybridserve.router.upstream import UpstreamError
from predictors.prometheus import CONTENT_TYPE

if TYPE_CHECKING:
    from hybridserve.router.app import Router
    from hybridserve.router.models import ModelState


NO_JOBS = {"error": "this router takes no async jobs"}


async def dispatch(router: Router, scope: dict, receive: Callable, send: Callable) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(router, receive, send)
        return
    if kind != "http":
        return
    if not router._started:
        await router.start()
    path: str = scope["path"]
    method: str = scope["method"]
    headers = scope["headers"]
    if path.startswith("/v2/health/"):
        await _health(router, path, send)
        return
    if router._key is not None and not authorized(headers, router._key):
        await reply(
            send,
            401,
            b'{"error":"missing or wrong API key"}',
            extra=((b"www-authenticate", b"Bearer"),),
        )
        return
    if path == "/metrics" and method == "GET":
        await reply(send, 200, router.render_metrics(), CONTENT_TYPE.encode())
        return
    parts = path.strip("/").split("/")
    if parts[0] == "rollouts":
        await rollout_route(router, parts, method, receive, send)
        return
    if parts[:2] == ["v2", "jobs"] and len(parts) == 3 and method == "GET":
        if router.jobs is None:
            await reply_json(send, 404, NO_JOBS)
        else:
            await router.jobs.status(parts[2], send)
        return
    if parts == ["v2"] and method == "GET":
        await reply_json(send, 200, SERVER_METADATA)
        return
    if len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models":
        ms = router.models.get(parts[2])  # a lookup: a client's name never makes state
        if ms is None:
            served = ", ".join(repr(n) for n in router.served())
            msg = f"unknown model {parts[2]!r}; this router serves {served}"
            await reply_json(send, 404, {"error": msg})
            return
        name = ms.name
        tail, version = parts[3:], None
        if len(tail) >= 2 and tail[0] == "versions":
            tail, version = tail[2:], tail[1]
        try:
            upstream = model_path(name, version)
            if tail == ["async-infer"] and method == "POST" and version is None:
                body = await read_body(receive, router.cfg.max_body_bytes)
                if router.jobs is None:
                    await reply_json(send, 404, NO_JOBS)
                else:
                    await router.jobs.submit(name, body, send)
                return
            if tail == ["infer"] and method == "POST":
                body = await read_body(receive, router.cfg.max_body_bytes)
                ro = router.rollouts.by_model.get(name)
                if ro is None:
                    await router.infer(upstream + "/infer", body, headers, send, ms, version)
                else:
                    await router.rollouts.serve(ro, body, headers, send, version)
                return
        except BodyTooLarge:
            limit = router.cfg.max_body_bytes
            await reply_json(send, 413, {"error": f"request body over {limit} bytes"})
            return
        except BadRequest as e:
            await reply_json(send, 400, {"error": str(e)})
            return
        if not tail and method == "GET":
            await _metadata(ms, upstream, send)
            return
        if tail == ["ready"] and method == "GET":
            ready = router.ready() if name == router.cfg.model_name else ms.ready()
            await reply_json(send, 200, {"name": name, "ready": ready})
            return
    await reply_json(send, 404, {"error": f"no route for {method} {path!r}"})


async def _lifespan(router: Router, receive: Callable, send: Callable) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await router.start()
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await router.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _health(router: Router, path: str, send: Callable) -> None:
    if path.rstrip("/") == "/v2/health/live":
        await reply(send, 200, b'{"live":true}')
    elif router.ready():
        await reply(send, 200, b'{"ready":true}')
    else:
        await reply(send, 503, b'{"ready":false}')


async def _metadata(ms: ModelState, path: str, send: Callable) -> None:
    """Model metadata, fetched once from an instance holding the model (on a path built here)
    and kept."""
    ups = ms.instances()
    if ms.metadata is None and ups:
        try:
            status, _, body = await ups[0].pool.request(b"GET", path)
            if status == 200:
                ms.metadata = json.loads(body)
        except UpstreamError:
            pass
    if ms.metadata is None:
        await reply_json(send, 503, {"error": "model metadata unavailable: no instance ready yet"})
    else:
        await reply_json(send, 200, ms.metadata)
