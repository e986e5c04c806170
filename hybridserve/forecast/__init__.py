"""Load forecasters: `observe(counts)` once per control interval, `forecast(horizon)` for the plan.

Every forecaster works on interval mean rates (requests/s) and returns a `Forecast` with the mean
and quantiles per step ahead. The forecasting issue adds statistical and neural models behind the
same interface; the Controller and planners never see which one runs.
"""

from hybridserve.forecast.base import Forecast, Forecaster, ResidualQuantiles
from hybridserve.forecast.fallback import FallbackForecaster
from hybridserve.forecast.registry import CHAINS, FORECASTERS, chain_for, make_forecaster
from hybridserve.forecast.simple import EWMA, LastValue, PointForecaster, SeasonalNaive

__all__ = [
    "CHAINS",
    "EWMA",
    "FORECASTERS",
    "FallbackForecaster",
    "Forecast",
    "Forecaster",
    "LastValue",
    "PointForecaster",
    "ResidualQuantiles",
    "SeasonalNaive",
    "chain_for",
    "make_forecaster",
]
