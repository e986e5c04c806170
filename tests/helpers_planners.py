"""What the planner tests share: a pool from its capacity and price, a PlanInput whose demand
comes straight from per-second rates, and flat per-second demand."""

from __future__ import annotations

import numpy as np

from hybridserve.config import Pool
from hybridserve.forecast import Forecast
from hybridserve.planner import FleetView, PlanInput, PoolState

DT = 60


def pool(
    name: str,
    mu: float,
    usd_h: float,
    delay: float = 0.0,
    latency: float = 0.1,
    market: str = "on_demand",
) -> Pool:
    return Pool(
        instance_type=name,
        market=market,
        price_usd_s=usd_h / 3600,
        capacity_rps=mu,
        latency_s=latency,
        batch=8,
        workers=1,
        launch_delay_s=delay,
    )


def make_input(
    per_second: np.ndarray,
    pools: list[Pool],
    fleet: dict[str, PoolState] | None = None,
    c_l: float | None = 1e-5,
    **kw,
) -> PlanInput:
    """PlanInput whose demand comes straight from per-second rates of shape (H, 60)."""
    ps = np.asarray(per_second, dtype=float)
    mean = ps.mean(axis=1)
    fc = Forecast(mean=mean, quantiles={0.5: mean}, per_second=ps)
    return PlanInput(
        forecast=fc,
        fleet=FleetView(dict(fleet or {})),
        pools=pools,
        interval_s=DT,
        lambda_usd_per_request=c_l,
        **kw,
    )


def constant(levels: list[float]) -> np.ndarray:
    """Per-second demand that is flat within each step."""
    return np.repeat(np.asarray(levels, dtype=float)[:, None], DT, axis=1)
