"""Joint plan of a multi-model fleet: which models share which instances, on which pool, in
which variant, how many replicas, and what stays on Lambda. Pure: numbers in, a plan out.

The unit is a *shard*: a set of (model, variant) pairs that every one of its `replicas`
instances of one pool holds; the router balances a shard's models over its replicas as it does
one model's fleet today. A model is in at most one shard; what a shard does not serve spills to
the model's own Lambda function.

A shard's cost per second is its instances plus the Lambda price of the work its Poisson and
forecast spread push past them: with its per-second work A ~ N(sum r_m s_m, sum s_m^2 sd_m^2)
in instance-seconds per second, cost(k) = k price + c_w E[(A - k)+], c_w the Lambda USD per
instance-second of its mix. Pooling models in one shard is where the saving comes from: their
spreads add in quadrature, their means add linearly, and small models that would each need a
whole instance (or Lambda's price) share one. cost(k) is convex, so the best k is a newsvendor
quantile, rounded down or up. One-off costs (booting replicas, loading a model) are spread over
the planning horizon, which makes the plan sticky.

`greedy` builds the plan (first the running shards, then each unplaced model by falling work
to its cheapest option, then moves while they pay); `exact.py` solves the same objective as a
set-partitioning MILP on small cases to measure the greedy's gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from hybridserve.multimodel.table import ModelTable

_SQRT_2PI = np.sqrt(2.0 * np.pi)


@dataclass(frozen=True)
class ModelDemand:
    """Per model: planned mean rate (req/s) and per-second standard deviation of arrivals."""

    rate: np.ndarray
    sd: np.ndarray


@dataclass(frozen=True)
class Shard:
    pool: int
    members: tuple[tuple[int, int], ...]  # (model, choice), by model
    replicas: int
    sid: int = -1  # the running shard it continues; -1: a new one


@dataclass(frozen=True)
class Packing:
    shards: tuple[Shard, ...]
    objective_usd_s: float
    source: str
    moves: int = 0  # models placed, moved or dropped against the running placement

    def placement(self) -> dict[int, tuple[int, int]]:
        """model -> (shard index, choice) for every placed model."""
        return {m: (j, c) for j, sh in enumerate(self.shards) for m, c in sh.members}


def expected_excess(mu, sd, k):
    """E[(A - k)+] for A ~ N(mu, sd^2), elementwise (sd 0: the deterministic excess)."""
    mu, sd, k = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (mu, sd, k)))
    safe = np.where(sd > 0, sd, 1.0)
    z = (k - mu) / safe
    out = safe * np.exp(-0.5 * z * z) / _SQRT_2PI + (mu - k) * (1.0 - ndtr(z))
    return np.where(sd > 0, np.maximum(out, 0.0), np.maximum(mu - k, 0.0))


def best_replicas(mu, var, cw, price, running, launch_usd):
    """Replica count minimising k price + cw E[(A-k)+] + (k - running)+ launch_usd, and that
    cost, elementwise over shards (vectorised: the greedy prices every option at once).

    The cost is convex in k with a kink at `running`: its continuous minimum is the newsvendor
    quantile with the launch charged when that lies above `running`, without it when below,
    else `running` itself; the integer minimum is that rounded down or up."""
    mu, var, cw, price, running, launch_usd = (
        np.asarray(x, dtype=float) for x in (mu, var, cw, price, running, launch_usd)
    )
    sd = np.sqrt(np.maximum(var, 0.0))
    safe_cw = np.maximum(cw, 1e-300)

    def quantile(p):
        ratio = np.clip(p / safe_cw, 1e-12, 1.0 - 1e-12)
        return np.maximum(np.where(p < cw, mu + sd * ndtri(1.0 - ratio), 0.0), 0.0)

    k_up, k_down = quantile(price + launch_usd), quantile(price)
    kc = np.where(k_up > running, k_up, np.where(k_down < running, k_down, running))
    ks = np.stack(np.broadcast_arrays(np.floor(kc), np.ceil(kc)))
    cost = (
        ks * price + cw * expected_excess(mu, sd, ks) + np.maximum(ks - running, 0.0) * launch_usd
    )
    i = np.argmin(cost, axis=0)
    pick = np.take_along_axis(ks, i[None], axis=0)[0]
    return pick.astype(int), np.take_along_axis(cost, i[None], axis=0)[0]


class Packer:
    """One decision of the joint plan. `horizon_s` spreads one-off costs; `share=False` gives
    each model a shard of its own (one fleet per model, the baseline).

    A shard's pool is not fixed when it opens: its aggregates are kept for every pool (a
    variant's speed differs by pool) and each shard takes its cheapest pool with the memory for
    its members, so a group outgrowing a small instance's memory moves to a larger one (a
    running shard's own pool carries no launch cost)."""

    def __init__(
        self,
        table: ModelTable,
        demand: ModelDemand,
        running: tuple[Shard, ...] = (),
        *,
        horizon_s: float = 900.0,
        share: bool = True,
        max_passes: int = 3,
    ) -> None:
        self.t = table
        self.r = np.asarray(demand.rate, dtype=float)
        self.sd = np.asarray(demand.sd, dtype=float)
        self.h = float(horizon_s)
        self.share = share
        self.max_passes = max_passes
        self.L = table.lambda_usd[table.lambda_choice]  # per model: Lambda USD per request
        self.launch = np.array([p.price_usd_s * p.launch_delay_s for p in table.pools]) / self.h
        n_pools = len(table.pools)
        self.P = n_pools
        # per shard: aggregates per pool (P,), and scalars
        self.mu: list[np.ndarray] = []
        self.var: list[np.ndarray] = []
        self.run: list[np.ndarray] = []
        self.lam: list[float] = []
        self.mem: list[float] = []
        self.sid: list[int] = []
        self.members: list[dict[int, int]] = []
        self.loaded: list[set[tuple[int, int]]] = []  # what each running shard holds now
        self.where: dict[int, int] = {}  # model -> shard
        self.moves = 0
        for sh in running:
            j = self._open(sh.sid)
            self.run[j][sh.pool] = sh.replicas
            for m, c in sh.members:
                self.loaded[j].add((m, c))
                ok = m < len(self.r) and c in table.model_choices[m]
                if ok and np.isfinite(table.s[c, sh.pool]):
                    self._add(j, m, c)

    # --- aggregates ---------------------------------------------------------------------------

    def _open(self, sid: int = -1) -> int:
        self.mu.append(np.zeros(self.P))
        self.var.append(np.zeros(self.P))
        self.run.append(np.zeros(self.P))
        self.lam.append(0.0)
        self.mem.append(0.0)
        self.sid.append(sid)
        self.members.append({})
        self.loaded.append(set())
        return len(self.mu) - 1

    def _terms(self, m: int, c: int):
        """(work per pool, variance per pool, Lambda USD/s, memory) that (m, c) brings."""
        s = self.t.s[c]
        with np.errstate(invalid="ignore"):
            var = np.where(np.isfinite(s), (s * self.sd[m]) ** 2, np.inf)
        return self.r[m] * s, var, self.r[m] * self.L[m], self.t.mem[c]

    def _add(self, j: int, m: int, c: int, sign: float = 1.0) -> None:
        dmu, dvar, dlam, dmem = self._terms(m, c)
        if sign > 0:
            self.mu[j] = self.mu[j] + dmu
            self.var[j] = self.var[j] + dvar
            self.members[j][m] = c
            self.where[m] = j
        else:
            del self.members[j][m]
            self.where.pop(m, None)
            self._rebuild(j)  # inf - inf is nan: recompute rather than subtract
        self.lam[j] += sign * dlam
        self.mem[j] += sign * dmem

    def _rebuild(self, j: int) -> None:
        self.mu[j] = np.zeros(self.P)
        self.var[j] = np.zeros(self.P)
        for m, c in self.members[j].items():
            dmu, dvar, _, _ = self._terms(m, c)
            self.mu[j] = self.mu[j] + dmu
            self.var[j] = self.var[j] + dvar

    def _cost(self, mu, var, lam, mem, run):
        """Cost rate per shard (rows) and pool (columns); inf where the pool cannot hold or
        serve the shard; an empty shard costs nothing."""
        mu, var, run = (np.atleast_2d(np.asarray(x, dtype=float)) for x in (mu, var, run))
        lam = np.asarray(lam, dtype=float).reshape(-1, 1)
        mem = np.asarray(mem, dtype=float).reshape(-1, 1)
        ok = np.isfinite(mu) & (mem <= self.t.pool_mem_mb[None, :])
        m0 = np.where(ok, mu, 0.0)
        cw = np.where(m0 > 0, lam / np.where(m0 > 0, m0, 1.0), 0.0)
        k, cost = best_replicas(
            m0, np.where(ok, var, 0.0), cw, self.t.price[None, :], run, self.launch[None, :]
        )
        empty = (mu <= 0).all(axis=1, keepdims=True) & (lam <= 0)
        cost = np.where(ok, cost, np.inf)
        return np.where(empty, 0.0, cost), np.where(ok, k, 0)

    def _shard_costs(self) -> np.ndarray:
        if not self.mu:
            return np.zeros(0)
        cost, _ = self._cost(self.mu, self.var, self.lam, self.mem, self.run)
        return cost.min(axis=1)

    def _load_usd(self, m: int, c: int) -> np.ndarray:
        """One load of (m, c) spread over the horizon, per pool: its traffic on Lambda while it
        loads, and an instance's time spent loading it."""
        return (self.r[m] * self.L[m] + self.t.price) * self.t.choices[c].load_s / self.h

    # --- options ------------------------------------------------------------------------------

    def _best_option(self, m: int, base: np.ndarray | None = None, only: int | None = None):
        """(delta cost rate, kind, shard, choice) of m's cheapest placement, m unplaced;
        `only`: joining that shard or Lambda, nothing else."""
        best = (self.r[m] * self.L[m], "lambda", -1, -1)
        n = len(self.mu)
        if base is None:
            base = self._shard_costs()
        cnt = np.array([len(x) for x in self.members])
        for c in self.t.model_choices[m]:
            dmu, dvar, dlam, dmem = self._terms(m, c)
            load = self._load_usd(m, c)
            if self.share and n:
                mu = np.stack(self.mu) + dmu
                var = np.stack(self.var) + dvar
                new, _ = self._cost(
                    mu,
                    var,
                    np.array(self.lam) + dlam,
                    np.array(self.mem) + dmem,
                    np.stack(self.run),
                )
                held = np.array([(m, c) in ld for ld in self.loaded])[:, None]
                new = new + np.where(held, 0.0, load)[...] if held.any() else new + load
                room = cnt < self.t.fleet.max_models_per_instance
                if only is not None:
                    room = room & (np.arange(n) == only)
                delta = np.where(room, new.min(axis=1) - base, np.inf)
                j = int(np.argmin(delta))
                if delta[j] < best[0] - 1e-15:
                    best = (float(delta[j]), "join", j, c)
            if only is not None:
                continue
            new, _ = self._cost(dmu, dvar, dlam, dmem, np.zeros(self.P))
            cost = float((new[0] + load).min())
            if cost < best[0] - 1e-15:
                best = (cost, "new", -1, c)
        return best

    def _place(self, m: int, kind: str, j: int, c: int) -> None:
        if kind == "join":
            self._add(j, m, c)
        elif kind == "new":
            self._add(self._open(), m, c)

    # --- the plan -----------------------------------------------------------------------------

    def solve(self, source: str = "greedy") -> Packing:
        fin = np.where(np.isfinite(self.t.s), self.t.s, np.inf).min(axis=1)
        work = self.r * fin[self.t.lambda_choice]
        self.order = [int(m) for m in np.argsort(-np.nan_to_num(work, posinf=0.0), kind="stable")]
        for m in self.order:
            if m in self.where or self.r[m] <= 0:
                continue
            _, kind, j, c = self._best_option(m)
            self._place(m, kind, j, c)
            self.moves += kind != "lambda"
        grouped = self._group_lambda_models() if self.share else False
        for k in range(self.max_passes):
            if not self._improve() and (k > 0 or not grouped):
                break
        return self._packing(source)

    def _group_lambda_models(self, seeds: int = 4) -> bool:
        """Open a shard for models none of which pays an instance alone but several together
        do (a local search from "all on Lambda" never finds it one model at a time): seed with
        one of the largest models on Lambda, add the model that saves most against its Lambda
        price while one does, keep the shard if it beats the group's Lambda price. The `seeds`
        largest are tried (measured: the gap to the exact MILP is the same with every model
        tried, at a tenth of the time on 50 models)."""
        rest = [m for m in self.order if m not in self.where and self.r[m] > 0]
        opened = False
        tried = 0
        # a shard costs at least one instance: below that, no group of these models pays
        floor_usd = float(self.t.price.min()) if self.P else np.inf
        while rest and tried < seeds and sum(self.r[m] * self.L[m] for m in rest) > floor_usd:
            seed = rest.pop(0)
            tried += 1
            best = None
            for c in self.t.model_choices[seed]:
                j = self._open()
                self._add(j, seed, c)
                pool = [(m, c2) for m in rest for c2 in self.t.model_choices[m]]
                while pool:
                    gain = self._join_gains(j, pool)
                    k = int(np.argmax(gain))
                    if gain[k] <= 1e-15:
                        break
                    m, c2 = pool[k]
                    self._add(j, m, c2)
                    pool = [(a, b) for a, b in pool if a != m]
                cost = float(self._cost_one(j))
                group = dict(self.members[j])
                lam = float(sum(self.r[m] * self.L[m] for m in group))
                if cost < lam - 1e-15 and (best is None or lam - cost > best[0]):
                    best = (lam - cost, group)
                self._drop_last()
                for m in group:
                    self.where.pop(m, None)
            if best is not None:
                j = self._open()
                for m, c in best[1].items():
                    self._add(j, m, c)
                    self.moves += 1
                rest = [m for m in rest if m not in best[1]]
                opened = True
                tried = 0
        return opened

    def _cost_one(self, j: int) -> float:
        cost, _ = self._cost(self.mu[j], self.var[j], self.lam[j], self.mem[j], self.run[j])
        return float(cost.min())

    def _join_gains(self, j: int, cands: list[tuple[int, int]]) -> np.ndarray:
        """For each (model, choice): its Lambda price less what adding it to shard j costs."""
        ms = np.array([m for m, _ in cands])
        cs = np.array([c for _, c in cands])
        s = self.t.s[cs]  # (K, P)
        with np.errstate(invalid="ignore"):
            dvar = np.where(np.isfinite(s), (s * self.sd[ms, None]) ** 2, np.inf)
        dlam = self.r[ms] * self.L[ms]
        new, _ = self._cost(
            self.mu[j][None, :] + self.r[ms, None] * s,
            self.var[j][None, :] + dvar,
            self.lam[j] + dlam,
            self.mem[j] + self.t.mem[cs],
            np.broadcast_to(self.run[j], s.shape),
        )
        room = len(self.members[j]) < self.t.fleet.max_models_per_instance
        delta = new.min(axis=1) - self._cost_one(j)
        return np.where(room & np.isfinite(delta), dlam - delta, -np.inf)

    def _drop_last(self) -> None:
        for lst in (self.mu, self.var, self.run, self.lam, self.mem, self.sid, self.members,
                    self.loaded):  # fmt: skip
            lst.pop()

    def _improve(self) -> bool:
        """Move each placed model to its cheapest option while that saves more than staying."""
        changed = False
        for m in sorted(self.where, key=lambda m: -self.r[m]):
            j = self.where[m]
            c = self.members[j][m]
            before = self._shard_costs()
            self._add(j, m, c, sign=-1.0)
            after = self._shard_costs()
            gain = float(before[j] - after[j])
            delta, kind, j2, c2 = self._best_option(m, after)
            if delta < gain - 1e-12 * max(gain, 1e-9) and not (
                kind == "join" and j2 == j and c2 == c
            ):
                self._place(m, kind, j2, c2)
                self.moves += 1
                changed = True
            else:
                self._add(j, m, c)
        return changed

    def _packing(self, source: str) -> Packing:
        shards: list[Shard] = []
        total = 0.0
        if self.mu:
            cost, k = self._cost(self.mu, self.var, self.lam, self.mem, self.run)
            for j in range(len(self.mu)):
                members = tuple(sorted(self.members[j].items()))
                if not members:
                    continue
                p = int(np.argmin(cost[j]))
                if k[j, p] <= 0 or not np.isfinite(cost[j, p]):  # its models spill whole
                    total += self.lam[j]
                    self.moves += len(members)
                    continue
                sid = self.sid[j] if self.run[j][p] > 0 else -1
                shards.append(Shard(p, members, int(k[j, p]), sid))
                total += float(cost[j, p])
        placed = {m for sh in shards for m, _ in sh.members}
        total += float(sum(self.r[m] * self.L[m] for m in range(len(self.r)) if m not in placed))
        return Packing(tuple(shards), total, source, self.moves)


def greedy(
    table: ModelTable, demand: ModelDemand, running: tuple[Shard, ...] = (), **kw
) -> Packing:
    return Packer(table, demand, running, **kw).solve(
        "greedy" if kw.get("share", True) else "per-model"
    )


def lambda_only(table: ModelTable, demand: ModelDemand) -> Packing:
    L = table.lambda_usd[table.lambda_choice]
    return Packing((), float(np.sum(np.asarray(demand.rate) * L)), "lambda-only")


def popularity(
    table: ModelTable, demand: ModelDemand, pool: int, *, utilisation: float = 0.8
) -> Packing:
    """The baseline of greedy packing by popularity: the most requested models first, each on
    the first shard of `pool` with room (memory, and work under `utilisation` of its replicas),
    a model bigger than one instance on its own shard sized to `utilisation`; every model with
    traffic is placed, in its cheapest-per-request variant there; no cost is weighed."""
    r = np.asarray(demand.rate, dtype=float)
    cap = table.pool_mem_mb[pool]
    bins: list[dict] = []
    for m in np.argsort(-r, kind="stable"):
        m = int(m)
        if r[m] <= 0:
            continue
        cs = [c for c in table.model_choices[m] if np.isfinite(table.s[c, pool])]
        cs = [c for c in cs if table.mem[c] <= cap]
        if not cs:
            continue
        c = min(cs, key=lambda c: table.s[c, pool])
        w = r[m] * table.s[c, pool]
        if w >= utilisation:
            bins.append({"members": {m: c}, "w": w, "mem": table.mem[c]})
            continue
        for b in bins:
            if (
                b["w"] + w <= utilisation
                and b["mem"] + table.mem[c] <= cap
                and len(b["members"]) < table.fleet.max_models_per_instance
            ):
                b["members"][m] = c
                b["w"] += w
                b["mem"] += table.mem[c]
                break
        else:
            bins.append({"members": {m: c}, "w": w, "mem": table.mem[c]})
    shards = tuple(
        Shard(pool, tuple(sorted(b["members"].items())), max(1, int(np.ceil(b["w"] / utilisation))))
        for b in bins
    )
    price = table.price[pool]
    return Packing(shards, float(sum(sh.replicas for sh in shards) * price), "popularity")
