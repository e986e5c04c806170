"""The router's interval metrics for CloudWatch: the cumulative counters differenced per
interval, and published even when the control step fails."""

from __future__ import annotations

import pytest

from hybridserve.aws.metrics import RouterIntervals


def test_router_intervals_difference_the_cumulative_counters():
    iv = RouterIntervals({"arrivals": 10, "spills": 5}, now=100.0)
    out = iv.take(
        {"arrivals": 30, "spills": 9, "within_slo": 15, "slo_counted": 20, "cold_starts": 2}, 110.0
    )
    assert out == {
        "ArrivalRate": 2.0,
        "SpillFraction": 0.2,
        "LambdaColdStarts": 2.0,
        "SloAttainment": 0.75,
    }
    # an idle interval: no attainment made up, no spill
    idle = iv.take(
        {"arrivals": 30, "spills": 9, "within_slo": 15, "slo_counted": 20, "cold_starts": 2}, 120.0
    )
    assert idle == {"ArrivalRate": 0.0, "SpillFraction": 0.0, "LambdaColdStarts": 0.0}


# the AWS extra, as for the rest of the AWS serve tests
moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")


def test_publishing_loop_publishes_even_when_the_step_fails():
    from types import SimpleNamespace

    from hybridserve.aws.serving import PublishingLoop
    from hybridserve.router.metrics import RouterMetrics

    class Failing:
        interval_s = 10

        def step(self, counts):
            raise RuntimeError("EC2 said no")

    m = RouterMetrics()
    router = SimpleNamespace(metrics=m, ups=[1, 2], take_counts=lambda: [(5, 7)])
    sent: list[dict] = []
    t = [0.0]
    loop = PublishingLoop(Failing(), router, sent.append, clock=lambda: t[0])
    m.request("lambda", 502, 0.01, 300.0)
    m.spills += 1
    t[0] = 10.0
    with pytest.raises(RuntimeError):
        loop.step()
    assert sent == [
        {
            "ArrivalRate": 0.1,
            "SpillFraction": 1.0,
            "LambdaColdStarts": 0.0,
            "SloAttainment": 0.0,
            "ReadyInstances": 2.0,
        }
    ]
