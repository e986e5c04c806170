"""The alternatives on the same trace: the price file's provenance and validation, the SageMaker
scenarios built from it, and the four counterfactual bills."""

from __future__ import annotations

import datetime as dt

import pytest

from hybridserve.config import ConfigError, lambda_service_s, load_scenario
from hybridserve.pricing import ec2_billed_s
from simulations.counterfactuals import (
    GIB,
    counterfactuals,
    load_alternatives,
    sagemaker_scenario,
    serverless_scenario,
)
from simulations.replay import run_policy
from simulations.synthetic import synthetic_trace

SC = load_scenario()
ALT = load_alternatives()


def test_the_price_file_says_when_and_where_its_prices_come_from():
    assert ALT.region == "us-east-1"
    dt.date.fromisoformat(ALT.date)
    assert "aws.amazon.com/sagemaker/pricing" in ALT.source
    rt, sv = ALT.sagemaker_realtime, ALT.sagemaker_serverless
    assert rt.instances["c5.large"].usd_h == 0.102 and rt.instances["c5.large"].basis == "published"
    assert {i.basis for i in rt.instances.values()} == {"published", "estimate"}
    assert rt.min_bill_s == 0
    assert sv.usd_per_gb_s == pytest.approx(0.00002) and max(sv.memory_mb) == 6144
    assert sv.max_concurrency == 200
    assert set(SC.instance_types) <= set(rt.instances)  # every catalog type has an ML price


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("date:", "date: not-a-date #"), "date"),
        (("source:", "sourc:"), "source"),
        (("max_concurrency: 200", "max_concurrency: 0"), "sagemaker_serverless.max_concurrency"),
        (("basis: published}", "basis: guessed}"), "basis"),
    ],
)
def test_a_bad_price_file_names_the_field(tmp_path, edit, field):
    from importlib import resources

    text = resources.files("hybridserve.data").joinpath("alternatives-us-east-1.yaml").read_text()
    bad = tmp_path / "alt.yaml"
    bad.write_text(text.replace(*edit, 1))
    with pytest.raises(ConfigError, match=field) as e:
        load_alternatives(bad)
    assert str(bad) in str(e.value)


def test_sagemaker_scenarios_take_the_ml_prices_and_serverless_limits():
    sm = sagemaker_scenario(SC, ALT)
    assert {p.market for p in sm.pools} == {"on_demand"}
    for p in sm.pools:
        assert p.price_usd_s == pytest.approx(
            ALT.sagemaker_realtime.instances[p.instance_type].usd_h / 3600
        )
        assert p.launch_delay_s == ALT.sagemaker_realtime.launch_delay_s
    sv = serverless_scenario(SC, ALT)
    assert sv.lambda_.memory_mb == 2048 and sv.lambda_.concurrency_limit == 200
    assert sv.lambda_pricing.usd_per_gb_s == ALT.sagemaker_serverless.usd_per_gb_s
    assert sv.lambda_pricing.usd_per_request == pytest.approx(2560 / GIB * 0.016)
    assert not sv.lambda_.bill_init
    big = serverless_scenario(load_scenario(**{"lambda": {"memory_mb": 8192}}), ALT)
    assert big.lambda_.memory_mb == 6144  # the largest it offers
    odd = serverless_scenario(load_scenario(**{"lambda": {"memory_mb": 2500}}), ALT)
    assert odd.lambda_.memory_mb == 3072
    assert lambda_service_s(sv) == lambda_service_s(SC)  # same memory: same service time


def test_counterfactuals_on_one_trace():
    trace = synthetic_trace(days=0.08, seed=5)
    reactive = run_policy(trace, SC, "reactive", keep_timeline=False)
    cfs = counterfactuals(trace, SC, {"reactive": reactive})
    by = {c.name: c for c in cfs}
    assert list(by) == [
        "ec2-target-tracking",
        "lambda-only",
        "sagemaker-realtime",
        "sagemaker-serverless",
    ]
    assert by["ec2-target-tracking"].cost_usd == reactive.cost_usd  # reused, not replayed
    # the SageMaker bill: every instance's seconds from launch at the ML price, plus data
    sm = sagemaker_scenario(SC, ALT)
    r = run_policy(trace, sm, "reactive", keep_timeline=False)
    price = {p.key: p.price_usd_s for p in sm.pools}
    inst = sum(
        ec2_billed_s(min(i.ended_at or trace.seconds, trace.seconds) - i.launched_at, 0.0)
        * price[i.pool]
        for i in r.instances
    )
    rt = by["sagemaker-realtime"]
    assert rt.breakdown["instances"] == pytest.approx(inst)
    assert rt.breakdown["data_processing"] == pytest.approx(trace.requests * 2560 / GIB * 0.016)
    assert rt.cost_usd == pytest.approx(sum(rt.breakdown.values()))
    # serverless: 1.2x Lambda's x86 GB-second price on the same billed milliseconds
    sv, lam = by["sagemaker-serverless"], by["lambda-only"]
    init = lam.breakdown["lambda_compute"] - sv.breakdown["compute"] / 1.2  # Lambda bills init
    assert 0 <= init < 0.05 * lam.breakdown["lambda_compute"]
    for c in cfs:
        assert c.cost_usd > 0 and 0 < c.slo_attainment <= 1
        assert c.as_json(2.0)["x_hybrid"] == pytest.approx(c.cost_usd / 2.0, abs=1e-4)


def test_serverless_throttles_beyond_its_concurrency():
    trace = synthetic_trace(days=0.02, seed=1)
    sv = ALT.sagemaker_serverless.model_copy(update={"max_concurrency": 1})
    alt = ALT.model_copy(update={"sagemaker_serverless": sv})
    cfs = counterfactuals(trace, SC, alt=alt)
    one = next(c for c in cfs if c.name == "sagemaker-serverless")
    assert one.throttled > 0 and one.slo_attainment < 0.99
