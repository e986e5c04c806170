"""Fast data plane of a multi-model fleet: each shard is the single-model fluid fleet of
`dataplane.fleet_seconds`, fed the mix of the models it serves that second; each model's spill
goes to its own Lambda function (`lambda_plane`).

A shard's replicas share their cores between its models, so its queue is one FIFO of work: in
a second with arrivals a_m of models with s_m instance-seconds each, the shard serves
k / s_bar requests per second (s_bar = sum a_m s_m / sum a_m, k ready replicas) with a batch
time that is the arrivals' mean of the models' batch times. The spill and the requests within
the SLO of each second are shared among its models by their arrivals (the router spills on
the queue ahead, whatever the model). A model on no shard, or loading, spills whole.
The EC2 bill of a shard is shared among its models by the work they brought it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hybridserve.multimodel.table import ModelTable
from simulations.dataplane import ec2_bill, fleet_seconds, lambda_bill
from simulations.lambda_plane import LambdaState, lambda_seconds, spill_batching
from simulations.multi_backend import SimPlacementBackend


@dataclass
class ModelTotals:
    requests: float = 0.0
    met: float = 0.0
    spilled: float = 0.0
    lambda_served: float = 0.0
    cold_starts: float = 0.0
    throttled: float = 0.0
    ec2_usd: float = 0.0
    lambda_usd: float = 0.0
    served_by: dict[tuple[int, str], float] = field(default_factory=dict)  # (choice, fleet|lambda)

    @property
    def cost_usd(self) -> float:
        return self.ec2_usd + self.lambda_usd


def _span(t0: float, t1: float | None, n: int) -> tuple[int, int]:
    """Whole seconds in [t0, t1): from ceil(t0) to floor(t1)."""
    a = int(np.ceil(t0 - 1e-9))
    b = n if t1 is None else int(min(np.floor(t1 + 1e-9), n))
    return max(a, 0), max(min(b, n), 0)


def replay_multi(
    counts: np.ndarray, backend: SimPlacementBackend, table: ModelTable
) -> tuple[list[ModelTotals], dict[str, float]]:
    """Per model totals and the fleet's own figures (instance-hours, EC2 USD) for `counts`
    (models, seconds) served by the timeline in `backend`."""
    counts = np.asarray(counts, dtype=float)
    n_models, n = counts.shape
    spill = counts.copy()  # what no shard serves goes to Lambda; shards take theirs out below
    met_fleet = np.zeros(n_models)
    totals = [ModelTotals(requests=float(counts[m].sum())) for m in range(n_models)]
    inst_s = 0.0
    ec2_total = 0.0
    sc0 = table.choices[0].scenario
    slo = sc0.slo.latency_s
    for sh in backend.shards.values():
        pool = table.pools[sh.pool]
        k = np.zeros(n + 1)
        for inst in sh.instances:
            a, b = _span(inst.ready_at, inst.ended_at, n)
            if b > a:
                k[a] += 1
                k[b] -= 1
        k = np.cumsum(k)[:n]
        served = {}
        for sv in sh.served:
            a, b = _span(sv.start, sv.end, n)
            if b > a:
                served.setdefault(sv.model, []).append((a, b, sv.choice))
        if served:
            a_tot = np.zeros(n)
            work = np.zeros(n)
            lat = np.zeros(n)
            parts = []
            for m, spans in served.items():
                for a, b, c in spans:
                    am = np.zeros(n)
                    am[a:b] = counts[m, a:b]
                    s, ls = table.s[c, sh.pool], table.lat[c, sh.pool]
                    a_tot += am
                    work += am * s
                    lat += am * ls
                    parts.append((m, c, am, s))
            busy = a_tot > 0
            s_bar = np.where(
                busy, work / np.where(busy, a_tot, 1.0), np.mean([p[3] for p in parts])
            )
            l_bar = np.where(busy, lat / np.where(busy, a_tot, 1.0), 0.0)
            mu = k / s_bar
            fs = fleet_seconds(a_tot, mu, mu * l_bar, k, slo, True, 0.0, None)
            share_spill = np.where(busy, fs.spill / np.where(busy, a_tot, 1.0), 0.0)
            share_met = np.where(busy, fs.met / np.where(busy, a_tot, 1.0), 0.0)
            work_total = max(float(work.sum()), 1e-12)
        # the single-model bill, so both price an instance-second the same way
        usd, hours = ec2_bill(sh.instances, {pool.key: pool}, float(n))
        ec2 = sum(usd.values())
        inst_s += 3600.0 * sum(hours.values())
        ec2_total += ec2
        if not served:
            continue
        for m, c, am, s in parts:
            spill[m] -= am - am * share_spill
            met_fleet[m] += float((am * share_met).sum())
            totals[m].ec2_usd += ec2 * float((am * s).sum()) / work_total
            got = float((am * (1.0 - share_spill)).sum())
            key = (c, "fleet")
            totals[m].served_by[key] = totals[m].served_by.get(key, 0.0) + got
    spill = np.maximum(spill, 0.0)
    batchings: dict[int, object] = {}
    for m in range(n_models):
        c = int(table.lambda_choice[m])
        t = totals[m]
        t.spilled = float(spill[m].sum())
        if t.spilled <= 0:
            t.met = met_fleet[m]
            continue
        sc = table.choices[c].scenario
        if c not in batchings:
            batchings[c] = spill_batching(sc)
        ls = lambda_seconds(spill[m], sc, LambdaState(), batchings[c])
        t.lambda_served = float(ls.served.sum())
        t.cold_starts = float(ls.cold.sum())
        t.throttled = float(ls.throttled.sum())
        t.met = met_fleet[m] + float(ls.met.sum())
        # billed as `replay.replay_timeline` bills the single-model policies, so that the
        # baselines and the joint plan compare like for like
        req, cmp = lambda_bill(t.lambda_served, t.cold_starts, sc)
        t.lambda_usd = req + cmp
        t.served_by[(c, "lambda")] = t.lambda_served
    return totals, {"instance_hours": inst_s / 3600.0, "ec2_usd": ec2_total}
