"""Per-request routing: join the shortest predicted completion, or spill to Lambda.

Pure numbers in, a decision out (the router's event loop owns the state). An instance's
predicted completion for a new request is its queue ahead drained in batches at the profiled
service time, scaled by a correction learnt from its observed latencies. The request goes to the
instance that would finish it first (join-the-shortest-queue weighted by capacity), and spills
when even that one would break the latency budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SPILL = -1


def batch_curve(batch_ms: Mapping[int, float], max_batch: int) -> np.ndarray:
    """Service ms for batch sizes 0..max_batch, interpolated linearly between profiled sizes."""
    if not batch_ms:
        raise ValueError("batch_ms: need at least one profiled batch size")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = np.array(sorted(batch_ms), dtype=float)
    ms = np.array([batch_ms[int(b)] for b in sizes], dtype=float)
    b = np.arange(max_batch + 1, dtype=float)
    # below the smallest profiled size: that size's time; above the largest: proportional
    curve = np.interp(b, sizes, ms)
    big = b > sizes[-1]
    curve[big] = ms[-1] * b[big] / sizes[-1]
    curve[0] = 0.0
    return curve


def completion_table(
    batch_ms: Mapping[int, float], max_batch: int, max_queue: int, delay_ms: float = 0.0
) -> np.ndarray:
    """Predicted ms until a request completes, by the number of requests ahead of it (0..max_queue-1).

    The server drains its queue in batches of up to `max_batch`: the new request waits for the
    full batches ahead, then runs in a batch with the remainder, after at most `delay_ms` of batch
    formation.
    """
    if max_queue < 1:
        raise ValueError(f"max_queue must be >= 1, got {max_queue}")
    curve = batch_curve(batch_ms, max_batch)
    ahead = np.arange(max_queue)
    full, rest = np.divmod(ahead, max_batch)
    return full * curve[max_batch] + curve[rest + 1] + delay_ms


def drain_table(batch_ms: Mapping[int, float], max_batch: int, max_queue: int) -> np.ndarray:
    """Predicted ms to drain q requests (0..max_queue) in batches of up to `max_batch`: the
    work q requests of one model put ahead of any other model's on an instance holding both.

    `completion_table(...)[q]` is `drain_table(...)[q + 1] + delay_ms`: a new request completes
    when its own batch, the one that drains it, does."""
    if max_queue < 1:
        raise ValueError(f"max_queue must be >= 1, got {max_queue}")
    curve = batch_curve(batch_ms, max_batch)
    full, rest = np.divmod(np.arange(max_queue + 1), max_batch)
    return full * curve[max_batch] + curve[rest]


def choose(outstanding: Sequence[int], tables: Sequence[np.ndarray], budget_ms: float) -> int:
    """Index of the instance that completes a new request first within `budget_ms`, else SPILL.

    `outstanding[i]` is instance i's requests in flight; `tables[i]` its completion table (already
    scaled by its learnt correction). Ties go to the lower index.
    """
    best, best_ms = SPILL, budget_ms
    for i, q in enumerate(outstanding):
        t = tables[i]
        if q < len(t):
            ms = t[q]
            if ms <= best_ms and (best == SPILL or ms < best_ms):
                best, best_ms = i, ms
    return best


def within_slo_depth(table: np.ndarray, budget_ms: float) -> int:
    """How many requests an instance can hold before the next would break the budget."""
    return int(np.searchsorted(table, budget_ms, side="right"))
