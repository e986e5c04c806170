"""One router replica: a process of its own, sharing the serving port with the others.

`serve` with `router.replicas: N` runs N of these (hybridserve/replicas.py starts them). Each
binds the port with SO_REUSEPORT, so the kernel spreads new connections over the replicas that
are alive and a killed one takes only the connections it held. Each routes to the shared
fleet, which the controller's process writes to `fleet.json` in the state directory, and
publishes the per-second arrivals it closed to the same directory (hybridserve/arrivals.py),
where the controller sums them: one Controller, however many routers.

    python -m hybridserve.router.replica --state-dir DIR --replica ID
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from hybridserve.arrivals import ArrivalWindow, DirArrivals, write_atomic
from hybridserve.fleet import Endpoint

log = logging.getLogger("hybridserve.router.replica")

SPEC = "replica-spec.json"  # written once by the controller's process
FLEET = "fleet.json"  # rewritten by it whenever the fleet or its stats change


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT: every replica binds the same port, and the kernel
    balances new connections across the ones listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class FleetFile:
    """The shared fleet as the controller's process last wrote it; re-read only when the file
    changed (the router asks every 0.1 s)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: int | None = None
        self.doc: dict[str, Any] = {"endpoints": [], "usd_per_s": 0.0}
        self.controller: dict[str, int] = {}  # the controller's counters, as last written
        self._eps: list[Endpoint] = []

    def _load(self) -> None:
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if stamp == self._stamp:
            return
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):  # replaced under us: the next call reads the new one
            return
        self._stamp, self.doc = stamp, doc
        self._eps = [endpoint(e) for e in doc["endpoints"]]
        # in place: the router's /metrics holds this dict
        self.controller.clear()
        self.controller.update(doc.get("controller", {}))

    def endpoints(self) -> list[Endpoint]:
        self._load()
        return list(self._eps)

    def usd_per_s(self) -> float:
        return float(self.doc.get("usd_per_s", 0.0))


def endpoint(row: list) -> Endpoint:
    """An endpoint from its fleet-file row: [id, pool, url] or [id, pool, url, models]."""
    models = row[3] if len(row) > 3 else None
    return Endpoint(row[0], row[1], row[2], None if models is None else frozenset(models))


async def publish_arrivals(router: Any, window: ArrivalWindow, store: DirArrivals, every_s: float):
    """Every `every_s`, the seconds the router closed go into the window, and the window out."""
    while True:
        await asyncio.sleep(every_s)
        window.publish(router.take_counts(), store, time.time())


async def watch_parent(server: Any, parent: int) -> None:
    """A replica outlives no controller: it stops when the process that started it is gone."""
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    server.should_exit = True


def build_router(spec: dict[str, Any], fleet: FleetFile, replicas: int) -> Any:
    from hybridserve.router import Router, RouterConfig

    rc = spec["router"]
    rc["batch_ms"] = {int(k): v for k, v in rc["batch_ms"].items()}
    rc["lambda_ms"] = tuple(rc["lambda_ms"])
    rc["model_batch_ms"] = {
        m: {int(k): v for k, v in bm.items()} for m, bm in rc.get("model_batch_ms", {}).items()
    }
    rc["model_lambda_ms"] = {m: tuple(ms) for m, ms in rc.get("model_lambda_ms", {}).items()}
    cfg = RouterConfig(**rc)
    key = os.environ.get(spec["api_key_env"]) or None
    # the function's concurrency is shared: each replica may use its part of it
    share = max(1, cfg.lambda_concurrency // max(1, replicas))
    cfg = dataclasses.replace(cfg, api_key=key, lambda_concurrency=share)

    def invoker_of(lam: dict[str, Any] | None) -> Any:
        if lam is None or not cfg.spill:
            return None
        from hybridserve.aws.invoke import LambdaInvoker

        return LambdaInvoker(
            lam["function_name"],
            endpoint_url=lam["endpoint_url"],
            local_credentials=True,
            max_concurrency=share,
            timeout_s=lam["timeout_s"],
            throttle_wait_s=lam.get("throttle_wait_s", 0.0),
        )

    # `lambdas`: the other models' functions, by model name (one function per model)
    invokers = {m: invoker_of(lam) for m, lam in spec.get("lambdas", {}).items()}
    router = Router(
        cfg,
        fleet.endpoints,
        invoker_of(spec.get("lambda")),
        invokers={m: inv for m, inv in invokers.items() if inv is not None},
        metadata=spec["metadata"],
        fleet_usd_per_s=fleet.usd_per_s,
    )
    router.metrics.controller = fleet.controller  # rereading the fleet file refreshes it
    return router


async def serve_replica(state_dir: Path, replica: str) -> None:
    import uvicorn

    spec = json.loads((state_dir / SPEC).read_text())
    fleet = FleetFile(state_dir / FLEET)
    router = build_router(spec, fleet, spec["replicas"])
    sock = reuseport_socket(spec["host"], spec["port"])
    config = uvicorn.Config(
        router,
        lifespan="on",
        log_level="warning",
        access_log=False,
        http="httptools",
        ssl_certfile=spec.get("tls_cert"),
        ssl_keyfile=spec.get("tls_key"),
    )
    server = uvicorn.Server(config)
    store = DirArrivals(state_dir)
    window = ArrivalWindow(replica, spec["keep_s"])
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(publish_arrivals(router, window, store, spec["publish_every_s"])),
        loop.create_task(watch_parent(server, os.getppid())),
    ]
    serving = loop.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if server.started:
        write_atomic(state_dir / f"ready-{replica}.json", json.dumps({"pid": os.getpid()}))
    try:
        await serving
    finally:
        for t in tasks:
            t.cancel()
        # what it closed before it stopped still counts
        window.publish(router.take_counts(), store, time.time())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hybridserve.router.replica")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--replica", required=True)
    a = p.parse_args(argv)
    from hybridserve.logs import configure

    configure()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve_replica(a.state_dir, a.replica))
    return 0


if __name__ == "__main__":
    sys.exit(main())
