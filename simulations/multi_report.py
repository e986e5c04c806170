"""Multi-model runs as a user reads them: the trace aligned to the fleet, one table row per
policy, the per-model breakdown, and what model-less choice picked per family."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hybridserve.multimodel.spec import ModelFleet
from simulations.multitrace import MultiTrace
from simulations.trace_errors import TraceError


def align(trace: MultiTrace, names: Sequence[str]) -> np.ndarray:
    """The trace's counts in the fleet's model order (`names`; a fleet model the trace lacks
    has no traffic); a trace model the fleet does not serve is an error naming it."""
    names = list(names)
    unknown = [m for m in trace.models if m not in set(names)]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise TraceError(
            f"{trace.name}: models {shown} are not in the fleet (it serves "
            f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}); name them under models:"
        )
    out = np.zeros((len(names), trace.seconds), dtype=np.int64)
    pos = {m: i for i, m in enumerate(names)}
    for k, m in enumerate(trace.models):
        out[pos[m]] = trace.counts[k]
    return out


def variant_choice(result, fleet: ModelFleet) -> dict[str, dict[str, float]]:
    """Per family, the share of its requests each variant served (fleet and Lambda)."""
    fam_of = {m.name: m.family for m in fleet.models}
    acc: dict[str, dict[str, float]] = {}
    for row in result.models:
        fam = fam_of[row["model"]]
        for key, share in row["variant_mix"].items():
            v = key.split("@")[0]
            d = acc.setdefault(fam, {})
            d[v] = d.get(v, 0.0) + share * row["requests"]
    return {
        f: {v: round(x / max(sum(d.values()), 1e-12), 4) for v, x in sorted(d.items())}
        for f, d in acc.items()
    }


def accuracy_margin(result, fleet: ModelFleet) -> float:
    """Least accuracy above its floor of any variant that served a model's requests."""
    margin = np.inf
    by_name = {m.name: m for m in fleet.models}
    for row in result.models:
        m = by_name[row["model"]]
        fam = fleet.families[m.family]
        for key, share in row["variant_mix"].items():
            if share > 0:
                v = key.split("@")[0]
                margin = min(margin, fam.variants[v].accuracy - fleet.floor(m))
    return float(margin)


def format_table(trace_name: str, results: list, slo_ms: float, target: float) -> str:
    head = (
        f"{'policy':22s} {'cost $':>9s} {'ec2 $':>8s} {'lambda $':>8s} {'attain':>9s} "
        f"{'SLO':>6s} {'lambda':>7s} {'inst-h':>7s} {'loads':>6s} {'evict':>6s} "
        f"{'plan ms':>8s} {'wall s':>7s}"
    )
    lines = [
        f"trace {trace_name}   SLO: {target:.1%} within {slo_ms:.0f} ms",
        "",
        head,
        "-" * len(head),
    ]
    for r in results:
        lines.append(
            f"{r.policy:22s} {r.cost_usd:9.3f} {r.ec2_usd:8.3f} {r.lambda_usd:8.3f} "
            f"{r.slo_attainment:9.4%} {'met' if r.slo_attainment >= target else 'MISSED':>6s} "
            f"{r.lambda_fraction:7.2%} {r.instance_hours:7.1f} {r.loads:6d} {r.evictions:6d} "
            f"{r.plan_s_mean * 1e3:8.1f} {r.sim_wall_s:7.1f}"
        )
    return "\n".join(lines)
