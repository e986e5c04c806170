"""Load forecasters: `observe(counts)` once per control interval, `forecast(horizon)` for the plan.

Every forecaster works on interval mean rates (requests/s) and returns a `Forecast` with the mean
and quantiles per step ahead. The forecasting issue adds statistical and neural models behind the
same interface; the Controller and planners never see which one runs.
"""

from hybridserve.forecast.base import Forecast, Forecaster, ResidualQuantiles
from hybridserve.forecast.simple import (
    EWMA,
    LastValue,
    PointForecaster,
    SeasonalNaive,
    make_forecaster,
)

__all__ = [
    "EWMA",
    "Forecast",
    "Forecaster",
    "LastValue",
    "PointForecaster",
    "ResidualQuantiles",
    "SeasonalNaive",
    "make_forecaster",
]
