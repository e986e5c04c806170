"""A controller that survives its models: forecaster chains, auto dropping a candidate, the
planner's fallback to greedy and to holding the fleet, the counts in the simulator's JSON and
the serve metrics, and a live loop that keeps stepping."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hybridserve.backends.simulated import SimulatedBackend
from hybridserve.config import load_scenario
from hybridserve.forecast import CHAINS, FallbackForecaster, LastValue, chain_for
from hybridserve.forecast.auto import Auto
from hybridserve.forecast.simple import PointForecaster, SeasonalNaive
from hybridserve.forecast.statistical import SARIMAX, FitError
from hybridserve.live import LiveLoop
from hybridserve.planner import ExactPlanner, GreedyPlanner
from hybridserve.planner.base import Plan
from hybridserve.planner.fallback import FallbackPlanner
from hybridserve.policies import build_controller, make_policy
from hybridserve.router.metrics import RouterMetrics
from predictors.prometheus import Exposition
from simulations.replay import run_policy
from simulations.traces import Trace
from tests.conftest import Scrape


class Broken(PointForecaster):
    """Fails in a chosen way from step `after` on (and forecasts last value before)."""

    name = "broken"

    def __init__(self, how: str, after: int = 0, **kw) -> None:
        super().__init__(quantiles=False, **kw)
        self.how, self.after, self.steps = how, after, 0

    def _update(self, rate: float) -> None:
        self.steps += 1
        if self.how == "observe" and self.steps > self.after:
            raise np.linalg.LinAlgError("singular matrix")

    def _point(self, horizon: int) -> np.ndarray:
        if self.steps <= self.after:
            return np.full(horizon, self.last)
        if self.how == "forecast":
            raise ValueError("Roots of the autoregressive parameters indicate non-stationarity")
        bad = {"nan": np.nan, "inf": np.inf, "negative": -5.0, "huge": 1e9}[self.how]
        return np.full(horizon, bad)


def poisson_intervals(n: int, rate: float = 20.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(rate, size=(n, 60))


@pytest.mark.parametrize("how", ["observe", "forecast", "nan", "inf", "negative", "huge"])
def test_chain_contains_every_kind_of_failure(how, caplog):
    chain = FallbackForecaster([Broken(how, after=5), LastValue(quantiles=False)], max_horizon=5)
    with caplog.at_level(logging.WARNING, logger="hybridserve.forecast"):
        for c in poisson_intervals(40):
            chain.observe(c)
            fc = chain.forecast(5)
            assert np.all(np.isfinite(fc.mean)) and np.all(fc.mean >= 0)
            assert fc.mean.max() < 1000
            assert all(np.all(np.isfinite(q)) for q in fc.quantiles.values())
    assert chain.source == "last-value"
    assert chain.fallback_steps == chain.fallbacks == 35  # every step after the 5th, once each
    assert chain.failures == {"broken": 35}
    warned = [r for r in caplog.records if "broken failed" in r.getMessage()]
    assert len(warned) == 1  # logged once, not every step


def test_last_resort_is_the_last_observed_rate():
    chain = FallbackForecaster([Broken("nan"), Broken("forecast")], max_horizon=3)
    for c in poisson_intervals(5, rate=7.0):
        chain.observe(c)
    fc = chain.forecast(3)
    assert chain.source == "last-observed"
    np.testing.assert_allclose(fc.mean, chain.last)


def test_a_recovered_member_answers_again(caplog):
    class Flaky(Broken):
        def _point(self, horizon):
            return np.full(horizon, np.nan if 10 <= self.steps < 20 else self.last)

    chain = FallbackForecaster([Flaky("nan"), LastValue(quantiles=False)], max_horizon=2)
    with caplog.at_level(logging.INFO, logger="hybridserve.forecast"):
        for c in poisson_intervals(30):
            chain.observe(c)
            chain.forecast(2)
    assert chain.source == "broken" and chain.fallback_steps == 10
    assert any("recovered" in r.getMessage() for r in caplog.records)


def test_declared_chains_end_in_a_model_that_cannot_fail():
    from hybridserve.forecast.registry import FACTORIES

    assert set(CHAINS) == set(FACTORIES)  # every forecaster declares its chain
    for name, chain in CHAINS.items():
        assert chain[0] == name and chain[-1] == "last-value"
        assert set(chain) <= set(FACTORIES)
    auto_chain = chain_for("auto", interval_s=60, max_horizon=10)
    auto = auto_chain.members[0]
    assert isinstance(auto, Auto)
    # the chain's fallbacks are auto's own candidates, not second copies run twice
    assert all(any(m is c for c in auto.cands) for m in auto_chain.members[1:])
    assert auto_chain.fed == [False, True, True, True]


def test_auto_drops_a_failing_candidate_until_its_next_refit(caplog):
    class Refitting(Broken):
        """Gives NaN while steps are in [10, 30); 'refits' every 25 steps."""

        def _update(self, rate):
            self.steps += 1
            self.fit_attempts = self.steps // 25

        def _point(self, horizon):
            return np.full(horizon, np.nan if 10 <= self.steps < 30 else self.last)

    bad = Refitting("nan")
    auto = Auto([bad, LastValue(quantiles=False)], max_horizon=4, half_life=50, quantiles=False)
    present = []
    with caplog.at_level(logging.WARNING, logger="hybridserve.forecast"):
        for c in poisson_intervals(60):
            auto.observe(c)
            assert np.all(np.isfinite(auto.forecast(4).mean))
            present.append(0 not in auto.dropped)
    # dropped at its first NaN (step 10); re-admitted at its refit at step 25, where it fails
    # again and is dropped once more; back for good at the refit at step 50
    assert present[:9] == [True] * 9
    assert present[9:49] == [False] * 40
    assert present[49:] == [True] * 11
    assert auto.drops == {"broken": 2}
    assert sum("dropped" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_auto_with_every_candidate_out_falls_back_in_its_chain():
    auto = Auto([Broken("nan")], max_horizon=3, half_life=10, quantiles=False)
    chain = FallbackForecaster([auto, LastValue(quantiles=False)], max_horizon=3)
    for c in poisson_intervals(5):
        chain.observe(c)
        assert np.all(np.isfinite(chain.forecast(3).mean))
    assert chain.source == "last-value"


def test_sarimax_fit_failure_keeps_the_previous_fit():
    season = 48
    m = SARIMAX(season_steps=season, max_horizon=5, quantiles=False)
    rng = np.random.default_rng(0)
    t = np.arange(6 * season)
    rates = 50 + 20 * np.sin(2 * np.pi * t / season) + rng.normal(0, 2, len(t))
    for r in rates[: 2 * season]:
        m.observe(rng.poisson(r, 60))
    assert m.fits == 1
    good = m.forecast(5).mean
    m._fit = lambda y: (_ for _ in ()).throw(np.linalg.LinAlgError("SVD did not converge"))
    with pytest.raises(FitError, match="keeping the previous fit"):
        for r in rates[2 * season :]:
            m.observe(rng.poisson(r, 60))
    assert m.fit_failures == 1 and m.fits == 1
    assert np.all(np.isfinite(m.forecast(5).mean)) and good.shape == (5,)
    # the next attempt waits for the cadence instead of refitting every step
    m.observe(rng.poisson(50, 60))
    assert m.fit_attempts == 2


def test_sarimax_on_a_random_walk_with_level_shifts_does_not_raise():
    """What statsmodels' GLS refused ('non-stationary parameters'): a trending, shifting load."""
    season = 96
    rng = np.random.default_rng(3)
    level = 30 + np.cumsum(rng.normal(0, 1.5, 8 * season))
    level[3 * season :] += 80
    level = np.clip(level, 1, None)
    m = SARIMAX(season_steps=season, max_horizon=10, quantiles=False)
    for r in level:
        m.observe(rng.poisson(r, 60))
        assert np.all(np.isfinite(m.forecast(10).mean))
    assert m.fits >= 5 and m.fit_failures == 0


class FailingMILP(ExactPlanner):
    def plan(self, inp):
        raise RuntimeError("planner MILP failed (status 1): Time limit reached")


class NegativePlan:
    name = "negative"

    def plan(self, inp):
        return Plan(target={inp.pools[0].key: -1})


def _decide(planner, steps: int = 5):
    sc = load_scenario()
    backend = SimulatedBackend(sc.pools, warm_start=True)
    spec = make_policy("hybrid", sc, forecaster="last-value")
    spec.planner = planner
    from hybridserve.controller import Controller

    ctl = Controller(
        spec.forecaster, planner, backend, sc.pools, lambda_usd_per_request=1.2e-6, horizon=15
    )
    decisions = []
    for c in poisson_intervals(steps, rate=300.0):
        backend.advance(backend.now() + 60)
        decisions.append(ctl.step(c))
    return decisions


def test_a_failing_milp_falls_back_to_greedy(caplog):
    fp = FallbackPlanner(FailingMILP(), GreedyPlanner())
    with caplog.at_level(logging.WARNING, logger="hybridserve.planner"):
        ds = _decide(fp)
    assert fp.fallbacks == 5 and fp.source == "greedy"
    assert all(d.plan_source == "greedy" and d.plan.target for d in ds)
    assert ds[-1].planner_fallbacks == 5
    assert sum("failed" in r.getMessage() for r in caplog.records) == 1


def test_when_every_planner_fails_the_fleet_is_held():
    fp = FallbackPlanner(FailingMILP(), NegativePlan())
    ds = _decide(fp)
    assert fp.source == "hold" and fp.failures == {"exact": 5, "negative": 5}
    assert all(d.plan.target == d.fleet.totals() for d in ds)
    assert not any(d.valid for d in ds) and all(d.actions == [] for d in ds)


def test_milp_time_limit_is_a_failure_the_chain_contains():
    # two pools that neither dominate nor multiply each other: the MILP, not the one-pool DP
    sc = load_scenario(
        planner={"time_limit_s": 1e-9},
        instance_types=["c5.large", "c5.xlarge"],
        catalog={"instances": {"c5.xlarge": {"on_demand_usd_h": 0.16}}},
    )
    assert len(sc.pools) == 2
    backend = SimulatedBackend(sc.pools, warm_start=True)
    ctl, spec = build_controller("hybrid", sc, backend, forecaster="last-value")
    for c in poisson_intervals(3, rate=300.0):
        backend.advance(backend.now() + 60)
        d = ctl.step(c)
    assert d.plan_source == "greedy" and spec.planner_fallbacks == 3


def test_simulator_json_counts_the_fallbacks(monkeypatch):
    """A candidate of auto failing at every refit: the replay finishes and counts it."""
    from hybridserve.forecast import statistical

    def fail(self, y):
        raise ValueError("GLS cannot be used with non-stationary parameters")

    monkeypatch.setattr(statistical.SARIMAX, "_fit", fail)
    sc = load_scenario(control_interval_s=600)  # a season of 144 steps: a short replay
    rng = np.random.default_rng(0)
    t = np.arange(3 * 86400)
    counts = rng.poisson(40 + 30 * np.sin(2 * np.pi * t / 86400))
    trace = Trace(name="t", counts=counts)
    r = run_policy(trace, sc, "hybrid", keep_timeline=False)
    out = r.as_json()
    assert out["forecaster_fallbacks"] >= 1 and out["planner_fallbacks"] == 0
    assert r.slo_attainment > 0.99


def test_live_loop_keeps_stepping_and_serve_exports_the_counts():
    sc = load_scenario()
    backend = SimulatedBackend(sc.pools, warm_start=True)
    fp = FallbackPlanner(FailingMILP(), GreedyPlanner())
    ctl, _ = build_controller("hybrid", sc, backend, forecaster="last-value")
    ctl.planner = fp
    counts = iter(poisson_intervals(4, rate=100.0))
    loop = LiveLoop(ctl, lambda: [(i, int(n)) for i, n in enumerate(next(counts))])
    assert loop.safe_step() is not None
    broken = {"calls": 0}

    def explode(target, *, intent=None):
        broken["calls"] += 1
        raise ConnectionError("EC2 endpoint unreachable")

    backend.converge = explode
    assert loop.safe_step() is None  # logged and counted, not raised
    backend.converge = SimulatedBackend.converge.__get__(backend)
    assert loop.safe_step() is not None
    assert loop.stats == {"forecaster_fallbacks": 0, "planner_fallbacks": 3, "step_failures": 1,
                          "warm_pings": 0, "warm_failures": 0}  # fmt: skip
    m = RouterMetrics()
    m.controller = loop.stats
    text = Exposition(
        lambda: m.families(
            ups=[], spill_pending=0, lambda_in_flight=0, usd_per_hour=0.0, batch=None
        )
    ).render()
    values = Scrape(text)
    assert values.value("hybridserve_controller_planner_fallbacks_total") == 3
    assert values.value("hybridserve_controller_step_failures_total") == 1
    assert values.value("hybridserve_controller_forecaster_fallbacks_total") == 0


def test_seasonal_naive_as_a_chain_member_is_point_only():
    m = SeasonalNaive(season_steps=10, max_horizon=3, quantiles=False)
    for c in poisson_intervals(3):
        m.observe(c)
    assert set(m.forecast(3).quantiles) == {0.5}
