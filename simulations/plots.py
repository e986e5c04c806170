"""Plots of a policy comparison (matplotlib, optional extra `plot`)."""

from __future__ import annotations

import numpy as np

from simulations.report import Comparison

SHOWN = ("hybrid", "mark", "reactive", "oracle")


def plot_comparison(cmp: Comparison, path: str) -> None:
    """Top: load, fleet capacity and spill over time; bottom: cost per policy with attainment."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("--plot needs matplotlib: pip install 'hybridserve[plot]'") from e
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 8), gridspec_kw={"height_ratios": [2, 1]})
    any_tl = next((r.timeline for r in cmp.results if r.timeline is not None), None)
    if any_tl is not None:
        dt = any_tl.interval_s
        hours = np.arange(len(any_tl.arrivals)) * dt / 3600.0
        ax1.plot(hours, any_tl.arrivals / dt, color="0.6", lw=0.8, label="load (req/s)")
        for r in cmp.results:
            if r.policy in SHOWN and r.timeline is not None:
                ax1.plot(hours, r.timeline.capacity_rps, lw=1.0, label=f"{r.policy} capacity")
        hyb = cmp.by_policy("hybrid")
        if hyb is not None and hyb.timeline is not None:
            ax1.fill_between(
                hours,
                0,
                hyb.timeline.spilled / dt,
                color="tab:red",
                alpha=0.4,
                label="hybrid spill to Lambda",
            )
        ax1.set_xlabel("hours")
        ax1.set_ylabel("requests/s")
        ax1.legend(loc="upper right", fontsize=8)
        ax1.set_title(f"{cmp.trace.name}: load, fleet capacity and spill")
    names = [r.policy for r in cmp.results]
    costs = [r.cost_usd for r in cmp.results]
    bars = ax2.bar(
        names,
        costs,
        color=[
            "tab:green" if r.slo_attainment >= cmp.scenario.slo.target else "tab:gray"
            for r in cmp.results
        ],
    )
    for b, r in zip(bars, cmp.results, strict=True):
        ax2.annotate(
            f"{r.slo_attainment:.3%}",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    oracle = cmp.by_policy("oracle")
    if oracle is not None and oracle.cost_lower_bound_usd is not None:
        ax2.axhline(oracle.cost_lower_bound_usd, color="k", ls="--", lw=0.8, label="cost floor")
        ax2.legend(fontsize=8)
    ax2.set_ylabel("cost (USD)")
    ax2.set_title("cost per policy (label: SLO attainment; grey: missed the target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CAUSE_COLORS = {
    "base_fleet": "#2b6ca3",
    "over_provisioning": "#8fb8de",
    "launch_overhead": "#6a51a3",
    "minimum_bill": "#bcbddc",
    "spill_planned": "#e6550d",
    "spill_forecast_miss": "#fd8d3c",
    "spill_burst": "#fdae6b",
    "spill_launch_lag": "#d62728",
    "spill_spot_loss": "#8c564b",
    "cold_starts": "#7f7f7f",
    "keep_warm": "#bcbd22",
}


def cost_plot_path(path: str) -> str:
    """Where `--plot out.png` puts the cost plot: out-cost.png."""
    stem, dot, ext = path.rpartition(".")
    return f"{stem}-cost.{ext}" if dot and "/" not in ext else f"{path}-cost.png"


def plot_cost_causes(explanations: list, counterfactuals: list, hybrid, path: str) -> None:
    """Where the money went. Top: the hybrid's (else the first policy's) cost per hour, stacked
    by cause; bottom: every policy's bill split by cause, and the alternatives' totals."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("--plot needs matplotlib: pip install 'hybridserve[plot]'") from e
    from hybridserve.attribution import CAUSES, LABELS

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 9), gridspec_kw={"height_ratios": [3, 2]})
    shown = next((e for e in explanations if e.policy == "hybrid"), explanations[0])
    per_h = max(1, 3600 // shown.interval_s)
    n = shown.intervals
    hours = np.arange(-(-n // per_h)) * per_h * shown.interval_s / 3600.0
    used = [c for c in CAUSES if shown.totals()[c] > 0]
    stacks = []
    for c in used:
        x = shown.usd[c]
        pad = (-len(x)) % per_h
        stacks.append(np.concatenate([x, np.zeros(pad)]).reshape(-1, per_h).sum(axis=1))
    if stacks:
        # step="post" draws each hour up to the next edge: repeat the last hour at the end
        hours = np.append(hours, hours[-1] + per_h * shown.interval_s / 3600.0)
        stacks = [np.append(x, x[-1]) for x in stacks]
        ax1.set_ylim(0, float(np.max(np.sum(stacks, axis=0))) * 1.4 or 1.0)
        ax1.stackplot(
            hours,
            stacks,
            labels=[LABELS[c] for c in used],
            colors=[CAUSE_COLORS[c] for c in used],
            step="post",
        )
    ax1.set_xlabel("hours")
    ax1.set_ylabel("USD per hour")
    ax1.set_title(f"where the money went: {shown.policy}, ${shown.total_usd:,.2f} in all")
    ax1.legend(loc="upper left", fontsize=8, ncol=3)
    names = [e.policy for e in explanations] + [f"alt: {c.name}" for c in counterfactuals]
    left = np.zeros(len(names))
    for c in CAUSES:
        vals = np.array([e.totals()[c] for e in explanations] + [0.0] * len(counterfactuals))
        if vals.sum() <= 0:
            continue
        ax2.barh(names, vals, left=left, color=CAUSE_COLORS[c])
        left += vals
    k = len(explanations)
    alt = np.array([0.0] * k + [c.cost_usd for c in counterfactuals])
    if counterfactuals:
        ax2.barh(names[k:], alt[k:], color="0.75", hatch="//", label="alternative (total)")
    for i, total in enumerate(left + alt):
        ax2.annotate(f" ${total:,.2f}", (total, i), va="center", fontsize=8)
    if hybrid is not None:
        ax2.axvline(hybrid.cost_usd, color="k", ls="--", lw=0.8, label="hybrid")
    ax2.invert_yaxis()
    ax2.set_xlim(0, max(float(np.max(left + alt)), 1e-9) * 1.15)
    ax2.set_xlabel("cost (USD)")
    ax2.set_title("each policy's bill by cause, and the alternatives on the same trace")
    ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
