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
