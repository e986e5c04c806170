"""The async queue of a local `serve`: a `LocalQueue`, a `LocalStore` folder, an async fleet of
model-server processes of its own (`LocalBackend`, the deployment's pool) and Lambda workers on
the serve's emulator, with the deployment's prices: what `async_jobs.enabled` adds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridserve.asyncjobs.front import AsyncFront
from hybridserve.asyncjobs.lambda_job import LambdaJob
from hybridserve.asyncjobs.plan import AsyncPolicy, AsyncPrices
from hybridserve.asyncjobs.queue import LocalQueue
from hybridserve.asyncjobs.runtime import AsyncRuntime
from hybridserve.asyncjobs.store import LocalStore
from hybridserve.asyncjobs.worker import FileNotifier
from hybridserve.config import (
    Scenario,
)
from hybridserve.serve_config import ServeConfig


@dataclass
class LocalAsync:
    runtime: AsyncRuntime
    front: AsyncFront
    queue: LocalQueue
    store: LocalStore
    backend: Any | None  # the async fleet (None without one)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def local_async(
    cfg: ServeConfig,
    sc: Scenario,
    artifact: Path,
    model: str,
    invoker_factory: Callable[[], Any] | None,
    store_root: Path,
) -> LocalAsync:
    """`invoker_factory`: a new invoker of the emulator's function (None: no Lambda workers)."""
    from hybridserve.backends.local import LocalBackend

    a, it = cfg.async_jobs, cfg.instances
    queue = LocalQueue(max_receives=a.max_receives)
    store = LocalStore(a.store_dir or store_root)
    pool = sc.pools[0]
    backend = None
    if a.max_fleet > 0:
        backend = LocalBackend(
            artifact,
            [pool],
            launch_delay_s=it.launch_delay_s,
            drain_s=it.drain_s,
            max_batch=it.max_batch,
            max_delay_ms=it.max_delay_ms,
            threads=it.threads,
            max_queue=max(a.per_instance, it.max_batch),
            log_dir=None if cfg.log_dir is None else cfg.log_dir / "async-fleet",
        )
    factory = invoker_factory if a.max_lambda > 0 else None
    lj = LambdaJob.of(sc)
    policy = AsyncPolicy(
        deadline_s=a.deadline_s,
        max_fleet=a.max_fleet,
        max_lambda=min(a.max_lambda, cfg.lambda_.concurrency),
    )
    launch_s = it.launch_delay_s + 1.0  # and the process's own start (about a second here)
    prices = AsyncPrices(pool.price_usd_s, launch_s, lj.usd, lj.cold_s)
    runtime = AsyncRuntime(
        queue,
        store,
        model,
        backend=backend,
        pool=pool.key,
        invoker_factory=factory,
        policy=policy,
        prices=prices,
        job_s=1.0 / pool.capacity_rps,
        lambda_job_s=lj.seconds,
        lambda_usd=lj.billed_usd,
        interval_s=a.interval_s,
        per_instance=a.per_instance,
        visibility_s=a.visibility_s,
        notifier=None if a.notify_file is None else FileNotifier(a.notify_file),
    )
    front = AsyncFront(queue, store, frozenset([model]), a.deadline_s)
    return LocalAsync(runtime, front, queue, store, backend)
