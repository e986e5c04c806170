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
    tl = r["joint"].variant_timeline
    assert tl and tl[0]["time_s"] == 0.0 and tl[0]["family"] == "enc"
    assert all(set(e["fleet"]) <= {"fp32", "int8"} for e in tl)
    assert r["lambda-only"].variant_timeline == [{"time_s": 0.0, "family": "enc", "fleet": {}}]
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


def _fleet_yaml(tmp_path, n: int = 3) -> str:
    import yaml

    from tests.multimodel_helpers import family

    p = tmp_path / "fleet.yaml"
    data = {"families": {"enc": family()}, "models": {"count": n, "family": "enc"}}
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_simulate_models_cli_reads_a_request_csv_and_reports_per_model(tmp_path):
    import json

    from click.testing import CliRunner

    from hybridserve.cli import main

    rng = np.random.default_rng(3)
    rows = ["timestamp_s,model"]
    for m, rate in (("model-00", 20.0), ("model-01", 5.0), ("model-02", 1.0)):
        ts = np.sort(rng.uniform(0, 1800, int(rate * 1800)))
        rows += [f"{t:.3f},{m}" for t in ts]
    csv = tmp_path / "req.csv"
    csv.write_text("\n".join(rows) + "\n")
    args = ["simulate-models", "--models", _fleet_yaml(tmp_path), "--trace", str(csv)]
    res = CliRunner().invoke(
        main, [*args, "--policy", "joint", "--policy", "lambda-only", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    joint = out["policies"][0]
    assert [m["model"] for m in joint["models"]] == ["model-00", "model-01", "model-02"]
    assert sum(m["requests"] for m in joint["models"]) == len(rows) - 1
    assert joint["variant_choice"]["enc"] and joint["min_accuracy_margin"] >= 0


def test_simulate_models_cli_errors_name_the_problem(tmp_path):
    from click.testing import CliRunner

    from hybridserve.cli import main

    csv = tmp_path / "req.csv"
    csv.write_text("timestamp_s,model\n0.5,model-00\n1.0,bert\n")
    fleet_path = _fleet_yaml(tmp_path, 2)
    res = CliRunner().invoke(main, ["simulate-models", "--models", fleet_path, "--trace", str(csv)])
    assert res.exit_code == 2 and "models bert are not in the fleet" in res.output
    res = CliRunner().invoke(
        main, ["simulate-models", "--models", fleet_path, "--pin-variant", "bf16"]
    )
    assert res.exit_code == 2 and "no variant 'bf16'" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("families: {}\nmodels: {count: 0, family: enc}\n")
    res = CliRunner().invoke(main, ["simulate-models", "--models", str(bad)])
    assert res.exit_code == 2 and "models.count: expected an integer from 1" in res.output


def test_the_embedded_fleet_runs_with_its_measured_family():
    import json

    from click.testing import CliRunner

    from hybridserve.cli import main

    res = CliRunner().invoke(
        main, ["simulate-models", "--days", "0.02", "--policy", "joint", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    (joint,) = out["policies"]
    assert out["models"] == 50 and len(joint["models"]) == 50
    assert joint["min_accuracy_margin"] >= 0  # every variant that served meets the 0.95 floor
    assert set(joint["variant_choice"]["distilbert"]) <= {"fp32", "fp16", "int8"}
