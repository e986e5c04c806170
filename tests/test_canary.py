"""The canary judge (a pure decision on two samples, path by path) and the sticky weighted split
of a model's traffic between its versions (issue 15)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hybridserve.canary import CanaryPolicy, PathSample, judge
from hybridserve.router.split import bucket, choose

P = CanaryPolicy()


def sample(rng, n: int, err: float = 0.002, scale: float = 1.0) -> PathSample:
    """`n` requests, about `err` of them failed, the rest with gamma latencies near 40 ms."""
    errors = int(rng.binomial(n, err))
    lat = rng.gamma(8.0, 5.0, n - errors) * scale
    return PathSample(n, errors, lat)


def test_same_behaviour_is_promoted_once_every_path_has_enough_requests():
    rng = np.random.default_rng(0)
    stable = {"fleet": sample(rng, 3000), "lambda": sample(rng, 400)}
    early = judge(stable, {"fleet": sample(rng, 150), "lambda": sample(rng, 30)}, P)
    assert early.decision == "wait"
    assert any("fleet: 150 canary and 3000 stable requests" in r for r in early.reasons)
    done = judge(stable, {"fleet": sample(rng, 600), "lambda": sample(rng, 250)}, P)
    assert done.decision == "promote", done.reasons


def test_a_path_with_a_small_share_of_the_canary_is_judged_on_errors_only():
    rng = np.random.default_rng(1)
    stable = {"fleet": sample(rng, 3000), "lambda": sample(rng, 100)}
    v = judge(stable, {"fleet": sample(rng, 600), "lambda": sample(rng, 30)}, P)  # 4.8%
    assert v.decision == "promote" and "lambda (30 of 630 canary requests)" in v.reasons[0]
    bad = PathSample(30, 10, rng.gamma(8.0, 5.0, 20))  # a third of its Lambda requests fail
    v = judge(stable, {"fleet": sample(rng, 600), "lambda": bad}, P)
    assert v.decision == "rollback" and v.reasons[0].startswith("lambda: error rate")


def test_errors_on_a_path_the_stable_never_served_are_judged_against_its_other_paths():
    rng = np.random.default_rng(2)
    stable = {"fleet": sample(rng, 500, err=0.0)}
    bad = PathSample(25, 6, rng.gamma(8.0, 5.0, 19))  # the canary spilled, and fails there
    v = judge(stable, {"fleet": sample(rng, 10), "lambda": bad}, P)
    assert v.decision == "rollback" and "(the stable version's on every path)" in v.reasons[0]


def test_a_sub_millisecond_p99_difference_is_no_regression():
    rng = np.random.default_rng(3)
    stable = {"fleet": PathSample(3000, 0, rng.gamma(8.0, 0.75, 3000))}  # p99 near 11 ms
    canary = {"fleet": PathSample(3000, 0, rng.gamma(8.0, 0.75, 3000) * 1.15)}  # 15% slower
    v = judge(stable, canary, P)
    assert v.decision == "promote", v.reasons
    slow = {"fleet": PathSample(3000, 0, rng.gamma(8.0, 0.75, 3000) + 50.0)}  # +50 ms
    assert judge(stable, slow, P).decision == "rollback"


def test_a_failing_canary_rolls_back_before_its_full_sample():
    rng = np.random.default_rng(1)
    stable = {"fleet": sample(rng, 2000)}
    v = judge(stable, {"fleet": sample(rng, 25, err=0.4)}, P)  # 25 requests, far below 200
    assert v.decision == "rollback"
    assert v.reasons[0].startswith("fleet: error rate") and "Fisher's exact" in v.reasons[0]


def test_a_slower_canary_rolls_back_on_the_path_it_is_slower_on():
    rng = np.random.default_rng(2)
    stable = {"fleet": sample(rng, 2000), "lambda": sample(rng, 1000)}
    canary = {"fleet": sample(rng, 500), "lambda": sample(rng, 500, scale=1.5)}
    v = judge(stable, canary, P)
    assert v.decision == "rollback" and len(v.reasons) == 1
    assert v.reasons[0].startswith("lambda: p99") and "Mann-Whitney U" in v.reasons[0]


def test_a_significant_but_harmless_difference_is_within_the_margins():
    rng = np.random.default_rng(3)
    stable = {"fleet": sample(rng, 50_000)}
    canary = {"fleet": sample(rng, 50_000, scale=1.02)}  # 2% slower: detectable, harmless
    assert judge(stable, canary, P).decision == "promote"


def test_identical_versions_are_rarely_rolled_back():
    """A/A: the same distribution on both sides, 200 seeded trials at alpha 0.01."""
    rng = np.random.default_rng(4)
    rollbacks = sum(
        judge({"fleet": sample(rng, 1000)}, {"fleet": sample(rng, 300)}, P).decision == "rollback"
        for _ in range(200)
    )
    assert rollbacks <= 4


def test_nothing_to_judge_waits_and_bad_samples_are_refused():
    assert judge({"fleet": PathSample(100, 0)}, {}, P).decision == "wait"
    with pytest.raises(ValueError, match="errors 5 must be within 0..requests 3"):
        PathSample(3, 5)


# --- the split --------------------------------------------------------------------------


def test_a_key_keeps_its_version_and_a_growing_canary_keeps_its_keys():
    keys = [f"user-{i}" for i in range(20_000)]
    at = {
        w: {k for k in keys if choose([("v2", w), ("v1", 1 - w)], k) == "v2"}
        for w in (0.05, 0.25, 1.0)
    }
    assert abs(len(at[0.05]) / len(keys) - 0.05) < 0.01
    assert abs(len(at[0.25]) / len(keys) - 0.25) < 0.015
    assert at[0.05] <= at[0.25] <= at[1.0] and len(at[1.0]) == len(keys)
    assert all(choose([("v2", 0.25), ("v1", 0.75)], k) == "v2" for k in at[0.25])  # sticky
    assert bucket("user-1") == bucket("user-1") and 0 <= bucket("x") < 1


def test_requests_without_a_key_follow_the_weights():
    rng = random.Random(0)
    got = [choose([("v2", 1.0), ("v1", 3.0)], None, rng) for _ in range(20_000)]
    assert abs(got.count("v2") / len(got) - 0.25) < 0.015
    with pytest.raises(ValueError, match="not all zero"):
        choose([("v2", 0.0), ("v1", 0.0)], "k")
    with pytest.raises(ValueError, match="no versions"):
        choose([], "k")
