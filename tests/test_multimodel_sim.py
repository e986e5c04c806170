"""The multi-model controller on the simulated clock: the baselines agree with today's
product where they should, packing and variant choice pay, loads and failures behave."""

from __future__ import annotations

import numpy as np
import pytest

from hybridserve.config import load_scenario
from hybridserve.multimodel.controller import MultiController
from hybridserve.multimodel.placement import PlacementAction
from hybridserve.multimodel.table import build_table
from simulations.multi_backend import SimPlacementBackend
from simulations.multi_replay import pinned, run_multi
from tests.multimodel_helpers import fleet, zipf_counts

HOURS = 3


@pytest.fixture(scope="module")
def sc():
    return load_scenario()


@pytest.fixture(scope="module")
def runs(sc):
    fl = fleet(12)
    counts = zipf_counts(12, HOURS * 3600, 120.0)
    names = [m.name for m in fl.models]
    fp32 = pinned(fl, "fp32")
    out = {
        "joint": run_multi(counts, names, sc, fl, "joint"),
        "joint-fp32": run_multi(counts, names, sc, fp32, "joint"),
        "per-model-fp32": run_multi(counts, names, sc, fp32, "per-model"),
        "hybrid-per-model-fp32": run_multi(counts, names, sc, fp32, "hybrid-per-model"),
        "lambda-only": run_multi(counts, names, sc, fl, "lambda-only"),
    }
    return counts, out


def test_one_fleet_per_model_is_todays_hybrid_per_model(runs):
    """The multi-model loop with sharing off is the single-model hybrid run once per model:
    the two implementations of the same policy agree on cost and attainment."""
    _, r = runs
    a, b = r["per-model-fp32"], r["hybrid-per-model-fp32"]
    assert a.cost_usd == pytest.approx(b.cost_usd, rel=0.08)
    assert abs(a.slo_attainment - b.slo_attainment) < 0.002


def test_packing_and_variant_choice_pay_and_keep_the_slo(runs):
    _, r = runs
    assert r["joint-fp32"].cost_usd < r["per-model-fp32"].cost_usd
    assert r["joint"].cost_usd < r["joint-fp32"].cost_usd
    assert r["joint"].cost_usd < r["lambda-only"].cost_usd
    for res in r.values():
        assert res.slo_attainment >= 0.99


def test_per_model_rows_add_up(runs):
    counts, r = runs
    for res in r.values():
        rows = res.models
        assert [row["requests"] for row in rows] == [int(c) for c in counts.sum(axis=1)]
        assert sum(row["cost_usd"] for row in rows) <= res.cost_usd + 1e-4  # rows are rounded
        assert sum(row["cost_usd"] for row in rows) >= 0.9 * res.cost_usd  # idle time aside
        j = res.as_json()
        assert set(j["models"][0]) == {
            "model", "requests", "slo_attainment", "cost_usd", "lambda_fraction", "variant_mix"
        }  # fmt: skip
    mix = r["joint"].models[0]["variant_mix"]
    assert mix and abs(sum(mix.values()) - 1.0) < 1e-3
    assert all(k.split("@")[0] == "fp32" for k in r["joint-fp32"].models[0]["variant_mix"])


def test_a_load_spills_until_the_model_serves(sc):
    t = build_table(sc, fleet(3))
    b = SimPlacementBackend(t)
    b.apply([PlacementAction("create", -1, 0, 1, members=((0, 1),))], 0.0)
    inst = b.shards[0].instances[0]
    assert inst.ready_at == pytest.approx(t.pools[0].launch_delay_s + t.choices[1].load_s)
    b.apply([PlacementAction("load", 0, 0, model=1, choice=1)], 600.0)
    sv = b.shards[0].current()[1]
    assert sv.start == pytest.approx(600.0 + t.choices[1].load_s)
    b.apply([PlacementAction("unload", 0, 0, model=0, choice=1, reason="evict")], 700.0)
    assert 0 not in b.shards[0].current() and b.evictions == 1
    (shard,) = b.observe()
    assert shard.members == ((1, 1),) and shard.replicas == 1


class _Broken:
    name = "broken"

    def observe(self, counts):
        raise RuntimeError("fit failed")

    def forecast(self, horizon):
        raise RuntimeError("no forecast")


def test_failing_forecasters_and_planner_are_contained(sc, monkeypatch):
    t = build_table(sc, fleet(4))
    b = SimPlacementBackend(t)
    ctl = MultiController(t, b)
    ctl.forecasters[1] = _Broken()
    counts = np.full((4, 60), 5.0)
    d = ctl.step(counts, 0.0)
    assert d.forecaster_fallbacks == 1 and d.demand.rate[1] == pytest.approx(5.0)
    monkeypatch.setattr(ctl, "_solve", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    ctl._last = None
    before = b.observe()
    d2 = ctl.step(counts * 3, 60.0)
    assert d2.planner_fallbacks == 1 and d2.plan.source == "hold" and d2.actions == []
    assert b.observe() == before and ctl.planner_fallbacks == 1
