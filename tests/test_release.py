"""A release's state machine (hybridserve/release.py), the router's split and samples for it
(router/rollouts.py) and the CLI's spec parsing: pure, no processes."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from hybridserve.canary import Verdict
from hybridserve.cli import main
from hybridserve.release import RolloutSpec, advance, promote, rollback, start, status
from hybridserve.router.rollouts import Rollout, Samples, same_top1

PROMOTE = Verdict("promote", ("ok",))
WAIT = Verdict("wait", ("waiting",))
WORSE = Verdict("rollback", ("fleet: error rate 20% against 0%",))


def test_canary_steps_on_the_judges_word_after_the_least_step_time():
    spec = RolloutSpec(model="m", version="2", step_min_s=5, bake_s=10)
    s = start(spec, 100.0)
    assert (s.phase, s.weight, spec.served_as) == ("stepping", 0.05, "m-v2")
    assert advance(s, PROMOTE, 104.0, 0).weight == 0.05  # too soon
    assert advance(s, WAIT, 200.0, 0).weight == 0.05  # not enough requests yet
    s = advance(s, PROMOTE, 105.0, 0)
    assert (s.phase, s.weight, s.step_at) == ("stepping", 0.25, 105.0)
    s = advance(s, PROMOTE, 110.0, 0)
    assert (s.phase, s.weight) == ("baking", 1.0)  # the last step is the bake
    assert advance(s, WAIT, 119.0, 0).phase == "baking"
    s = advance(s, WAIT, 120.0, 0)
    assert (s.phase, s.weight, s.done) == ("promoted", 1.0, True)
    assert advance(s, WORSE, 130.0, 0) is s  # over: nothing moves it
    assert len(s.history) == 4 and "baked 10s" in s.history[-1]


@pytest.mark.parametrize("at", ["stepping", "baking"])
def test_a_worse_canary_rolls_back_at_once_at_any_step(at):
    spec = RolloutSpec(model="m", version="2", steps=(0.5, 1.0), step_min_s=0)
    s = start(spec, 0.0)
    if at == "baking":
        s = advance(s, PROMOTE, 1.0, 0)
    assert s.phase == at
    s = advance(s, WORSE, 2.0, 0)
    assert (s.phase, s.weight) == ("rolled_back", 0.0)
    assert "error rate 20%" in s.history[-1] and s.reasons == WORSE.reasons


def test_blue_green_waits_for_a_baseline_then_cuts_over_whole():
    spec = RolloutSpec(model="m", version="2", mode="blue-green", step_min_s=1, bake_s=5)
    s = start(spec, 0.0)
    assert (s.phase, s.weight) == ("stepping", 0.0)
    assert advance(s, WAIT, 10.0, 199).weight == 0.0  # 200 stable requests by default
    s = advance(s, WAIT, 10.0, 200)
    assert (s.phase, s.weight, s.keep_stable_window) == ("baking", 1.0, True)
    assert advance(s, WAIT, 15.0, 0).phase == "promoted"


def test_shadow_answers_nothing_and_ends_by_hand_or_by_a_worse_verdict():
    spec = RolloutSpec(model="m", version="2", mode="shadow", shadow=0.5, step_min_s=0)
    s = start(spec, 0.0)
    assert (s.phase, s.weight, s.mirroring) == ("shadow", 0.0, True)
    assert advance(s, PROMOTE, 100.0, 10_000).phase == "shadow"  # never on its own
    assert promote(s, 1.0).phase == "baking"  # by hand: the cut-over
    assert advance(s, WORSE, 1.0, 0).phase == "rolled_back"


def test_manual_rollouts_step_only_by_hand_and_ended_ones_refuse():
    spec = RolloutSpec(model="m", version="2", auto=False, step_min_s=0)
    s = start(spec, 0.0)
    assert advance(s, PROMOTE, 100.0, 0).weight == 0.05
    s = promote(s, 1.0)
    assert s.weight == 0.25
    s = rollback(s, 2.0)
    assert s.phase == "rolled_back"
    for act in (promote, rollback):
        with pytest.raises(ValueError, match="already rolled_back"):
            act(s, 3.0)
    doc = status(s, 4.0)
    assert doc["phase"] == "rolled_back" and doc["steps"] == [0.05, 0.25, 1.0]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"steps": (0.5, 0.25, 1.0)}, "steps must increase"),
        ({"steps": (0.05, 0.5)}, "last step must be 1.0"),
        ({"steps": (0.0, 1.0)}, r"weight in \(0, 1\]"),
        ({"shadow": 0.0}, "shadow"),
        ({"served_as": "m"}, "a name of its own"),
        ({"mode": "dark"}, "mode"),
        ({"bake": 3}, "bake"),
    ],
)
def test_a_bad_spec_names_its_field(fields, match):
    with pytest.raises(ValidationError, match=match):
        RolloutSpec(model="m", version="2", **fields)


def test_the_split_is_sticky_per_key_and_a_growing_canary_keeps_its_keys():
    ro = Rollout(RolloutSpec(model="m", version="2", steps=(0.2, 0.6, 1.0)), "m", 0.0)
    keys = [f"user-{i}" for i in range(2000)]
    first = {k: ro.pick(k) for k in keys}
    assert first == {k: ro.pick(k) for k in keys}  # the same key, the same version
    share = sum(v == "m-v2" for v in first.values()) / len(keys)
    assert 0.17 < share < 0.23
    ro.state = advance(ro.state, PROMOTE, 20.0, 0)
    assert ro.state.weight == 0.6
    later = {k: ro.pick(k) for k in keys}
    assert all(later[k] == "m-v2" for k in keys if first[k] == "m-v2")  # nobody flips back
    ro.state = rollback(ro.state, 21.0)
    assert {ro.pick(k) for k in keys} == {"m"}


def test_samples_count_server_errors_per_path_and_ignore_the_clients_faults():
    s = Samples()
    s.record("canary", "fleet", 200, 10.0)
    s.record("canary", "retry", 500, 50.0)  # a retry ended on the fleet path
    s.record("canary", "lambda", 200, 90.0)
    s.record("canary", "fleet", 400, 1.0)  # the client's fault: no version's
    s.record("canary", "rejected", 503, 1.0)  # nowhere to send it: no version's either
    got = s.of("canary")
    assert (got["fleet"].requests, got["fleet"].errors) == (2, 1)
    assert np.array_equal(got["fleet"].latency_ms, [10.0])
    assert (got["lambda"].requests, s.requests("canary"), s.requests("stable")) == (1, 3, 0)
    s.reset("canary")
    assert s.of("canary") == {}


def test_shadow_outputs_compare_by_top1():
    a = b'{"outputs":[{"name":"y","datatype":"FP32","shape":[1,3],"data":[0.1,0.7,0.2]}]}'
    b = b'{"outputs":[{"name":"y","datatype":"FP32","shape":[1,3],"data":[0.2,0.6,0.2]}]}'
    c = b'{"outputs":[{"name":"y","datatype":"FP32","shape":[1,3],"data":[0.9,0.0,0.1]}]}'
    assert same_top1(a, b) is True and same_top1(a, c) is False
    assert same_top1(a, b"\x00binary") is None


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--canary", "150%"], r"--canary: expected a share in \(0%, 100%\]"),
        (["--canary", "lots"], "--canary: expected a share such as 5%"),
        (["--blue-green", "--shadow", "10%"], "choose one mode"),
        (["--blue-green", "--canary", "5%"], "takes no --canary"),
    ],
)
def test_cli_bad_options_name_themselves(args, match):
    r = CliRunner().invoke(
        main,
        [
            "rollout",
            "start",
            "--url",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--version",
            "2",
            *args,
        ],
    )
    assert r.exit_code == 2 and re.search(match, r.output), r.output


def test_cli_unreachable_router_is_a_one_line_error():
    r = CliRunner().invoke(main, ["rollout", "status", "--url", "http://127.0.0.1:9"])
    assert r.exit_code == 2 and "cannot reach the router at http://127.0.0.1:9" in r.output
