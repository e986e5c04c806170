"""The fleet cap and the hourly budget: a target cut down to what they allow.

Pure numbers. The Controller cuts every plan with it (so the simulator, local serving and AWS
all see the same limits), and the reconciler checks the cap again before it launches. What is
kept is the capacity that costs least per request: pools in that order, each instance kept
while both the cap and the budget still allow it. What the fleet cannot serve spills.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from hybridserve.config import Pool


def limit_target(
    target: Mapping[str, int],
    pools: Sequence[Pool],
    max_instances: int | None,
    budget_usd_per_hour: float | None,
) -> dict[str, int]:
    """`target` within `max_instances` instances and `budget_usd_per_hour` (None: no limit)."""
    if max_instances is None and budget_usd_per_hour is None:
        return dict(target)
    by_key = {p.key: p for p in pools}
    left_n = math.inf if max_instances is None else int(max_instances)
    left_usd = math.inf if budget_usd_per_hour is None else float(budget_usd_per_hour)
    out: dict[str, int] = {}
    rank = sorted(target, key=lambda k: (by_key[k].usd_per_request if k in by_key else 0.0, k))
    for key in rank:
        want = int(target[key])
        hourly = by_key[key].price_usd_s * 3600.0 if key in by_key else 0.0
        afford = left_usd / hourly + 1e-9 if hourly > 0 else math.inf
        afford = math.floor(afford) if math.isfinite(afford) else afford
        keep = int(min(want, left_n, afford))
        out[key] = keep
        left_n -= keep
        left_usd -= keep * hourly
    return {k: out[k] for k in target}  # the planner's order of keys
