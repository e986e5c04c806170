"""Cost-versus-attainment frontier of a sweep: one panel per policy, every cell a point, the
Pareto frontier (nothing both cheaper and better) drawn through the points on it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, attainment) points no other point dominates (as cheap or cheaper
    and at least as good, one of them strictly), by increasing cost; ties keep the first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


RESOLUTION = 1e-7  # misses below this are rounding (1 - 1e-16), drawn as none


def _nines(miss: float) -> str:
    """A tick on the misses axis, labelled as the attainment it stands for: 1e-3 is 99.9%."""
    if miss >= 1 or miss <= 0:
        return ""
    digits = max(0, math.ceil(-math.log10(miss) - 1e-9) - 2)
    return f"{(1 - miss) * 100:.{digits}f}%"


def _usable(row: dict[str, Any]) -> bool:
    cost, att = row.get("cost_usd"), row.get("slo_attainment")
    return row.get("error") is None and cost is not None and att is not None


def plot_frontier(rows: Sequence[dict[str, Any]], path: str) -> None:
    """One PNG, a panel per policy: cost (y) against SLO attainment (x) per cell, coloured by
    trace, hollow where the cell missed its target, the frontier as a step line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("frontier plots need matplotlib: pip install 'hybridserve[plot]'") from e
    ok = [r for r in rows if _usable(r)]
    policies = list(dict.fromkeys(r["policy"] for r in ok)) or ["(no results)"]
    traces = list(dict.fromkeys(r["trace"] for r in ok))
    colours = {t: f"C{i % 10}" for i, t in enumerate(traces)}
    ncols = min(3, len(policies))
    nrows = -(-len(policies) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.5 * ncols, 3.6 * nrows), squeeze=False, sharey=True
    )
    misses = [1.0 - float(r["slo_attainment"]) for r in ok]
    floor = min([m for m in misses if m >= RESOLUTION] + [1e-6]) / 3  # where 100% is drawn
    for ax, policy in zip(axes.flat, policies, strict=False):
        mine = [r for r in ok if r["policy"] == policy]
        pts = [(float(r["cost_usd"]), float(r["slo_attainment"])) for r in mine]
        miss = [1.0 - a if 1.0 - a >= RESOLUTION else floor for _, a in pts]
        for r, m, (cost, _) in zip(mine, miss, pts, strict=True):
            c = colours[r["trace"]]
            ax.scatter(
                m, cost, s=28, edgecolors=c, facecolors=c if r["target_met"] else "none", lw=1.2
            )
        front = pareto_front(pts)
        if front:
            ax.step(
                [miss[i] for i in front], [pts[i][0] for i in front], where="pre", c="k", lw=0.9
            )
        ax.set_xscale("log")
        ax.set_xlim(max(miss, default=floor) * 2, floor / 2)  # inverted: better to the right
        ax.xaxis.set_major_formatter(FuncFormatter(lambda m, _: _nines(m)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=30)
        ax.axvline(floor, color="0.6", ls=":", lw=0.8)
        ax.text(floor, 0.98, " 100%", transform=ax.get_xaxis_transform(), va="top", fontsize=7)
        ax.set_title(policy)
        ax.set_xlabel("SLO attainment (log scale of misses)")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(policies) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("cost (USD)")
    if len(traces) > 1:
        handles = [plt.Line2D([], [], marker="o", ls="", color=colours[t], label=t) for t in traces]
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(traces)), fontsize=8)
    fig.suptitle("cost vs SLO attainment per cell (hollow: missed target; line: Pareto frontier)")
    fig.tight_layout(rect=(0, 0.06 if len(traces) > 1 else 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
