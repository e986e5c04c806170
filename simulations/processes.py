"""The process pool both the policy comparison and the sweep fan out on.

Never `fork`: the parent may hold threads (a router's event loop, torch's pool, a moto
server in the tests), and a child forked while one of them holds a lock waits on it for
ever. That hung a CI run in the sweep's pool. A fork server is started once, from a fresh
single-threaded interpreter that has imported the replay code, and forks the workers from
there: they start in milliseconds and inherit no other thread's locks.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

# imported once in the fork server, so that each worker starts with the replay code loaded
PRELOAD = ["simulations.replay", "simulations.sweep"]


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` processes, forked from a clean fork server (spawned where the
    platform has none)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
    else:
        ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
