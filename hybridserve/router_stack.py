"""What every `hybridserve serve` mode shares: the router under uvicorn with its config
derived from the scenario, the control loop beside it, and the fleet's cost rate."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from hybridserve.config import (
    Scenario,
    lambda_service_s,
)
from hybridserve.logs import event
from hybridserve.serve_config import RouterOptions

if TYPE_CHECKING:
    from hybridserve.router import RouterConfig

log = logging.getLogger("hybridserve.serve")


def router_config(
    sc: Scenario,
    model_name: str,
    *,
    spill: bool,
    options: RouterOptions,
    max_batch: int,
    delay_ms: float,
    lambda_memory_mb: int,
    lambda_concurrency: int,
    lambda_max_batch: int = 8,
) -> RouterConfig:
    """The router's settings, in either mode: SLO, profile and pools from the scenario, the
    model servers' batching, and the spill function's memory, concurrency and batch limit."""
    from hybridserve.router import RouterConfig

    lambda_ms = lambda_ms_table(sc, lambda_max_batch)
    pricing = sc.lambda_pricing
    key = os.environ.get(options.api_key_env) or None
    return RouterConfig(
        model_name=model_name,
        slo_ms=sc.slo.latency_ms,
        batch_ms=dict(sc.model.reference.batch_ms),
        max_batch=max_batch,
        delay_ms=delay_ms,
        max_queue=options.max_queue,
        margin_ms=options.margin_ms,
        spill_slack_fraction=sc.batch_latency_fraction,
        spill=spill,
        lambda_ms=lambda_ms,
        lambda_memory_gb=lambda_memory_mb / 1024.0,
        lambda_usd_per_gb_s=pricing.usd_per_gb_s,
        lambda_usd_per_request=pricing.usd_per_request,
        lambda_concurrency=lambda_concurrency,
        max_spill_pending=options.max_spill_pending,
        max_body_bytes=options.max_body_bytes,
        api_key=key,
    )


def lambda_ms_table(sc: Scenario, max_batch: int) -> tuple[float, ...]:
    """Lambda's warm ms by batch size (index 0 unused), as the router predicts a spill."""
    return (0.0, *(lambda_service_s(sc, b) * 1000.0 for b in range(1, max_batch + 1)))


def warn_if_open(host: str, api_key: str | None) -> bool:
    """Warn, loudly, when the router listens beyond loopback and anyone may call it."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback or api_key:
        return False
    msg = (
        f"the router listens on {host} without an API key: anyone who reaches it can run "
        "inferences and read /metrics (set the key in the router.api_key_env variable)"
    )
    log.warning(msg)
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)
    return True


def fleet_usd_per_s(totals: Callable[[], Mapping[str, int]], sc: Scenario) -> Callable[[], float]:
    """What the fleet costs per second at the scenario's prices, from `totals` (pool -> live
    instances; the router calls this on its event loop, so `totals` must not do network I/O)."""
    price = {p.key: p.price_usd_s for p in sc.pools}

    def rate() -> float:
        return sum(n * price.get(k, 0.0) for k, n in totals().items())

    return rate


class RouterStack:
    """What every `hybridserve serve` mode shares: the router under uvicorn, with the control
    loop (and whatever else `background` lists) running beside it on the same event loop.

    Subclasses build `backend`, `router`, `scenario` and `loop_` in `prepare`."""

    def __init__(self, router_options: RouterOptions) -> None:
        self.router_options = router_options
        self.backend: Any = None
        self.router: Any = None
        self.loop_: Any = None
        self.scenario: Scenario | None = None
        self.replicas: Any = None  # a ReplicaSet when router.replicas > 1, instead of `router`
        self.async_: Any = None  # hybridserve.asyncjobs.local.LocalAsync, when async is on
        self.url: str | None = None
        self._stop = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def prepare(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Ask a running `serve` to return (thread-safe enough: uvicorn polls the flag)."""
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """Coroutines to run beside the router while it serves (cancelled when it stops)."""
        out = [self.loop_.run()] if self.loop_ is not None else []
        if self.async_ is not None:
            out.append(self.async_.runtime.run())
        return out

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Run the router (uvicorn) and the background tasks until cancelled or signalled."""
        if self.replicas is not None:
            return await self._serve_replicas(ready)
        import uvicorn

        r = self.router_options
        warn_if_open(r.host, self.router.cfg.api_key)
        config = uvicorn.Config(
            self.router,
            host=r.host,
            port=r.port,
            lifespan="on",
            log_level="warning",
            access_log=False,
            http="httptools",
            ssl_certfile=None if r.tls_cert is None else str(r.tls_cert),
            ssl_keyfile=None if r.tls_key is None else str(r.tls_key),
        )
        server = self._server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(c) for c in self.background()]
        serving = loop.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if server.started:
            self._listening(server.servers[0].sockets[0].getsockname()[1], ready)
        try:
            await serving
        finally:
            for t in tasks:
                t.cancel()
            # let them finish their cleanup (an async runtime closes its Lambda client)
            await asyncio.gather(*tasks, return_exceptions=True)

    def _listening(self, port: int, ready: asyncio.Event | None) -> None:
        r = self.router_options
        self.url = f"{'https' if r.tls_cert else 'http'}://{r.host}:{port}"
        event(log, "serve.listening", url=self.url)
        print(f"listening on {self.url}", flush=True)
        if ready is not None:
            ready.set()

    async def _serve_replicas(self, ready: asyncio.Event | None) -> None:
        """`router.replicas` processes on the port, this process feeding and supervising them,
        with the control loop beside them, until cancelled or `shutdown`."""
        r = self.router_options
        warn_if_open(r.host, os.environ.get(r.api_key_env))
        port = await asyncio.to_thread(self.replicas.start)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # stop as uvicorn would: replicas first
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(sig, self._stop.set)  # main thread only
        tasks = [loop.create_task(c) for c in [*self.background(), self.replicas.run()]]
        self._listening(port, ready)
        try:
            while not self._stop.is_set():
                await asyncio.sleep(0.1)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.to_thread(self.replicas.close)

    def start_background(self, timeout_s: float = 60.0) -> str:
        """Serve on a daemon thread (notebooks, tests, scripts); returns the router's URL."""
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                ev = asyncio.Event()
                task = asyncio.get_running_loop().create_task(self.serve(ev))
                await ev.wait()
                ready.set()
                await task

            asyncio.run(main())

        self._thread = threading.Thread(target=run, name="hybridserve-serve", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s) or self.url is None:
            raise RuntimeError(f"the router did not start within {timeout_s:g} s")
        return self.url

    def stop_background(self, timeout_s: float = 20.0) -> None:
        """Stop a `start_background` router, then everything else (`close`)."""
        self.shutdown()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.close()

    def close(self) -> None:
        """Stop what this process started (threads, local processes); idempotent."""
        if self.replicas is not None:
            self.replicas.close()
        if self.backend is not None:
            self.backend.close()
        if self.async_ is not None:
            self.async_.close()
