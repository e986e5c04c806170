"""A forecaster that cannot fail: a declared chain of models, the first sound one answering.

Any member may raise in `observe` or `forecast` (a statsmodels fit on non-stationary data, a
singular matrix, torch running out of memory) or return nonsense: NaN, inf, negative rates, or
rates far beyond anything the history has seen. The chain contains every such failure: the
member is skipped for that step, the failure is logged once (and once more when it recovers) and
counted, and the next member answers. The last resort, the last observed rate, cannot fail.
The chain calibrates whatever it emits with its own conformal residuals, so its quantiles stay
honest when a fallback answers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from hybridserve.forecast.base import PointForecaster

log = logging.getLogger("hybridserve.forecast")

# A forecast above this multiple of the highest interval rate seen so far (at least 1 req/s)
# is treated as a failure: no model of the history can justify it.
FAR_FACTOR = 10.0


def forecast_problem(mean: np.ndarray, horizon: int, ceiling: float) -> str | None:
    """Why a point forecast is unusable, or None when it is sound."""
    m = np.asarray(mean, dtype=float)
    if m.shape != (horizon,):
        return f"expected {horizon} steps, got shape {m.shape}"
    # the common case in two reductions (NaN fails both); the ufuncs' own reduce, without the
    # ndarray.min wrapper: 2 us against 10 (this runs for every candidate every step)
    lo, hi = float(np.minimum.reduce(m)), float(np.maximum.reduce(m))
    if lo >= 0.0 and hi <= ceiling:
        return None
    if not np.all(np.isfinite(m)):
        return "non-finite value"
    if np.any(m < 0):
        return f"negative rate {float(m.min()):.3g}"
    if np.any(m > ceiling):
        return f"rate {float(m.max()):.3g} req/s is over {FAR_FACTOR:g}x the highest seen"
    return None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


class FallbackForecaster(PointForecaster):
    """Members in order of preference; `fed[i]` marks members another member observes for."""

    def __init__(
        self,
        members: Sequence[PointForecaster],
        *,
        fed: Sequence[bool] | None = None,
        name: str | None = None,
        **kw,
    ) -> None:
        super().__init__(**kw)
        if not members:
            raise ValueError("a fallback chain needs at least one member")
        self.members = list(members)
        self.fed = list(fed) if fed is not None else [False] * len(self.members)
        self.name = name or self.members[0].name
        self.chain = tuple(m.name for m in self.members)
        self.peak = 0.0  # highest interval mean rate seen
        self.fallback_steps = 0  # steps answered by anything but the first member
        self.failures: dict[str, int] = {}
        self.source = self.chain[0]  # who answered the latest forecast
        self._failing: dict[int, str] = {}  # member index -> reason, while it fails
        self._observe_failed: set[int] = set()
        self._steps = 0  # intervals observed
        self._counted = -1  # the step whose fallback was counted

    @property
    def fit_seconds(self) -> float:  # type: ignore[override]
        return sum(
            getattr(m, "fit_seconds", 0.0)
            for m, f in zip(self.members, self.fed, strict=True)
            if not f
        )

    @fit_seconds.setter
    def fit_seconds(self, _v: float) -> None:
        pass  # the members keep their own fit time

    def _fail(self, i: int, what: str) -> None:
        name = self.chain[i]
        self.failures[name] = self.failures.get(name, 0) + 1
        if i not in self._failing:
            log.warning("forecaster %s failed (%s); falling back", name, what)
        self._failing[i] = what

    def _ok(self, i: int) -> None:
        if self._failing.pop(i, None) is not None:
            log.info("forecaster %s recovered", self.chain[i])

    def observe_rate(self, rate: float, seconds: int) -> None:
        """Every member not fed by another observes; one that raises sits this step out."""
        self.peak = max(self.peak, rate)
        self._observe_failed = set()
        self._steps += 1
        for i, m in enumerate(self.members):
            if self.fed[i]:
                continue
            try:
                m.observe_rate(rate, seconds)
            except Exception as e:  # contained: the member sits this step out
                self._fail(i, f"observe: {_reason(e)}")
                self._observe_failed.add(i)
        super().observe_rate(rate, seconds)

    def _point(self, horizon: int) -> np.ndarray:
        ceiling = FAR_FACTOR * max(self.peak, 1.0)
        for i, m in enumerate(self.members):
            if i in self._observe_failed:
                continue
            try:
                mean = np.asarray(m.point(horizon), dtype=float)
            except Exception as e:
                self._fail(i, f"forecast: {_reason(e)}")
                continue
            problem = forecast_problem(mean, horizon, ceiling)
            if problem is not None:
                self._fail(i, problem)
                continue
            self._ok(i)
            self._record(i)
            return mean
        self._record(len(self.members))
        return np.full(horizon, self.last)  # persistence: the last resort cannot fail

    def _record(self, i: int) -> None:
        self.source = self.chain[i] if i < len(self.chain) else "last-observed"
        if i > 0 and self._counted != self._steps:  # once per step, however often asked
            self.fallback_steps += 1
            self._counted = self._steps

    @property
    def fallbacks(self) -> int:
        """Failures contained: steps a fallback answered, plus candidates an ensemble dropped."""
        drops = sum(sum(getattr(m, "drops", {}).values()) for m in self.members)
        return self.fallback_steps + drops
