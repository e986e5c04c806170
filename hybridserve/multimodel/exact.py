"""The greedy packer's objective solved exactly, for small cases: a set-partitioning MILP.

Every possible shard (a pool, a set of models that fits its memory, one allowed variant per
member) is a column with its best replica count's cost (`packing.best_replicas`); choose
disjoint columns, each model left out pays its Lambda price. Columns grow as (choices + 1)^models
per pool, so this is the yardstick on a handful of models (tests and `benchmarks/multi_model.py`
measure the greedy's gap against it), not a planner.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from hybridserve.multimodel.packing import ModelDemand, Packing, Shard, best_replicas
from hybridserve.multimodel.table import ModelTable

MAX_COLUMNS = 200_000


def columns(table: ModelTable, demand: ModelDemand, horizon_s: float = 900.0):
    """Every feasible shard from empty: (pool, members, replicas, cost rate)."""
    r, sd = np.asarray(demand.rate, float), np.asarray(demand.sd, float)
    L = table.lambda_usd[table.lambda_choice]
    active = [m for m in range(len(r)) if r[m] > 0]
    cap = table.fleet.max_models_per_instance
    out = []
    for p, pool in enumerate(table.pools):
        opts = []
        for m in active:
            cs = [c for c in table.model_choices[m] if np.isfinite(table.s[c, p])]
            opts.append([None, *cs])
        rows = []
        for combo in itertools.product(*opts):
            members = tuple((m, c) for m, c in zip(active, combo, strict=True) if c is not None)
            if not members or len(members) > cap:
                continue
            if sum(table.mem[c] for _, c in members) > table.pool_mem_mb[p]:
                continue
            rows.append(members)
            if len(out) + len(rows) > MAX_COLUMNS:
                raise ValueError(f"more than {MAX_COLUMNS} shards to enumerate: too big for exact")
        if not rows:
            continue
        mu = np.array([sum(r[m] * table.s[c, p] for m, c in mem) for mem in rows])
        var = np.array([sum((table.s[c, p] * sd[m]) ** 2 for m, c in mem) for mem in rows])
        lam = np.array([sum(r[m] * L[m] for m, _ in mem) for mem in rows])
        cw = lam / np.maximum(mu, 1e-300)
        launch = pool.price_usd_s * pool.launch_delay_s / horizon_s
        k, cost = best_replicas(mu, var, cw, pool.price_usd_s, 0.0, launch)
        for mem, kk, cc, ll in zip(rows, k, cost, lam, strict=True):
            if kk > 0 and cc < ll:  # a shard dearer than its models' Lambda price never helps
                out.append((p, mem, int(kk), float(cc), float(ll)))
    return out


def exact(table: ModelTable, demand: ModelDemand, horizon_s: float = 900.0) -> Packing:
    """The least-cost set of disjoint shards (HiGHS), from an empty fleet."""
    r = np.asarray(demand.rate, float)
    L = table.lambda_usd[table.lambda_choice]
    base = float(np.sum(r * L))
    cols = columns(table, demand, horizon_s)
    if not cols:
        return Packing((), base, "exact")
    n = len(r)
    obj = np.array([c[3] - c[4] for c in cols])  # a shard replaces its models' Lambda price
    rows, cidx = [], []
    for j, (_, mem, _, _, _) in enumerate(cols):
        for m, _ in mem:
            rows.append(m)
            cidx.append(j)
    a = sp.csr_array((np.ones(len(rows)), (rows, cidx)), shape=(n, len(cols)))
    scale = 1.0 / max(float(np.abs(obj).max()), 1e-300)  # HiGHS's absolute gaps assume ~1
    res = milp(
        obj * scale,
        constraints=LinearConstraint(a, -np.inf, 1.0),
        integrality=np.ones(len(cols)),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0.0},  # a yardstick: HiGHS's default gap is not exact
    )
    if res.x is None:
        raise RuntimeError(f"exact packing failed: {res.message}")
    pick = [cols[j] for j in np.flatnonzero(res.x > 0.5)]
    shards = tuple(Shard(p, mem, k) for p, mem, k, _, _ in pick)
    return Packing(shards, base + float(sum(c[3] - c[4] for c in pick)), "exact")
