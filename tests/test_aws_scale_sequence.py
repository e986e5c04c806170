"""Scale sequences of a whole deployment, in process, on the fault-faithful layer
(tests/aws_faults.py): `deploy`, `scale` 1 -> 0 -> 1 -> 2 -> 0 -> 2, `teardown`, deploy again,
and the same moves under a throttling storm with lost RunInstances responses, describe lag and
a pool out of capacity (hybridserve.aws.deploy and .teardown called directly, not the CLI).

What it proves: after every step the deployment's pending and running instances are exactly
the count asked, and every scale-up is one new RunInstances request (a ClientToken of its own)
that made new instances: EC2 answers a reused token with its old reservation, terminated
instances and all, so a reused token shows up here as 0 running where 1 was asked. What
retires drains first. A retried lost response launches nothing twice; a converge while
describe lags launches nothing more; a pool without capacity launches nothing, backs off, and
catches up once capacity is back (and, for a long-lived backend, its backoff is over).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from hybridserve.aws import deploy as D  # noqa: E402
from hybridserve.aws import ec2_backend  # noqa: E402
from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.aws import tags as T  # noqa: E402
from hybridserve.aws.teardown import teardown  # noqa: E402
from hybridserve.deployment import DeploymentConfig  # noqa: E402
from tests.aws_faults import ACCOUNT  # noqa: E402
from tests.aws_lambda_helpers import URI  # noqa: E402
from tests.wheel_helpers import offline_wheelhouse  # noqa: E402

OD = "c5.large/on_demand"
DEP = "scaleseq"
BUCKET = "hybridserve-scaleseq-artifacts"
REGION = "us-east-1"
RUN = "ec2:RunInstances"
# a real drain that keeps the test fast: readiness `state` makes a running instance one the
# router may be sending requests to, so scale-in tags it draining and terminates it drain_s
# later (with `health` and no model server it never served, and would be terminated at once)
DRAIN_S = 0.2
# RunInstances fails twice after it took effect (with RUN in lose_response); CreateTags is
# throttled only in steps that launch nothing: moto tags a new instance through the same
# create_tags the layer throttles, and a throttle there would fail RunInstances halfway and
# leave an untagged instance behind, which EC2 never does (a bug of tests/aws_faults.py)
LAUNCH_STORM = {RUN: 2, "ec2:DescribeInstances": 2}
RETIRE_STORM = {"ec2:DescribeInstances": 2, "ec2:TerminateInstances": 1, "ec2:CreateTags": 1}


def quiet(*_: Any) -> None:
    pass


@pytest.fixture
def cfg(aws, tmp_path, monkeypatch) -> DeploymentConfig:
    """The deployment: one c5.large on demand, its wheelhouse shipped offline."""
    cache, wheel, links = offline_wheelhouse()
    monkeypatch.setenv("HYBRIDSERVE_CACHE_DIR", str(cache))
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "manifest.json").write_text("{}")
    return DeploymentConfig.model_validate(
        {
            "name": DEP,
            "artifact": str(art),
            "bucket": BUCKET,
            "lambda": {"image_uri": URI},
            "fleet": {OD: 1},
            "ec2": {
                "wheel": str(wheel),
                "find_links": str(links),
                "readiness": "state",
                "drain_s": DRAIN_S,
            },
        }
    )


@pytest.fixture
def fast(aws, monkeypatch) -> R.Clients:
    """The deployment's clients with an EC2 client on botocore's standard retries, their
    backoff cut 100-fold (as tests/test_aws_faults.py): the same attempts, in a test's time."""
    from botocore.config import Config
    from botocore.retries import standard

    backoff = standard.ExponentialBackoff.delay_amount
    monkeypatch.setattr(
        standard.ExponentialBackoff, "delay_amount", lambda self, c: backoff(self, c) / 100
    )
    ec2 = boto3.client(
        "ec2", region_name=REGION, config=Config(retries={"mode": "standard", "max_attempts": 10})
    )
    return R.Clients(ec2=ec2, s3=aws.s3, iam=aws.iam, lam=aws.lam)


class Monotonic:
    """`time` for hybridserve.aws.ec2_backend with a monotonic clock that stands still until
    the test moves it: the launch backoff (which reads time.monotonic, not the backend's
    `clock`) without waiting, and without a margin for how long the steps take."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


# --- what EC2 holds, read from moto itself: no API call, so no throttle or lag applies ------


def instances() -> dict[str, Any]:
    """Every instance ever launched in the region (moto's own objects; each test has a fresh
    account), by id: untagged ones too, so a launch that half failed is counted."""
    from moto.ec2.models import ec2_backends

    return {i.id: i for i in ec2_backends[ACCOUNT][REGION].all_instances()}


def tags_of(inst: Any) -> dict[str, str]:
    return {t["key"]: t["value"] for t in inst.get_tags()}


def live() -> set[str]:
    return {iid for iid, i in instances().items() if i.state in ("pending", "running")}


class Ledger:
    """The plan a sequence keeps: the ids seen so far and the launches asked for, checked
    against EC2 after every step."""

    def __init__(self, faults: Any) -> None:
        self.faults = faults
        self.seen: set[str] = set()
        self.asked = 0  # instances launched, summed over every scale-up
        self.before: set[str] = set()
        self.tokens = 0

    def start(self) -> None:
        self.before = live()
        self.tokens = len(self.faults.tokens)

    def check(self, n: int, *, capacity: bool = True, drained: bool = True) -> set[str]:
        """After a step to `n`: exactly `n` live (0 new without capacity), the new ones never
        seen before and made by one RunInstances of a token of its own; what retired is
        terminated, through a drain when `drained`. Returns the new ids."""
        now = live()
        want = n if capacity else min(n, len(self.before))
        assert len(now) == want, f"asked for {n}, {len(now)} pending or running"
        new = now - self.before
        grow = max(0, want - len(self.before))
        assert len(new) == grow and not new & self.seen, f"{new} for a step to {n}"
        assert len(self.faults.tokens) - self.tokens == (1 if grow else 0), "launch requests"
        everything = instances()
        for iid in self.before - now:
            assert everything[iid].state == "terminated", iid
            assert (T.DRAINING in tags_of(everything[iid])) == drained, iid
        self.asked += grow
        self.seen |= now
        assert len(everything) == self.asked, "more instances were launched than asked"
        assert all(tags_of(i).get(T.DEPLOYMENT) == DEP for i in everything.values())
        return new


# --- the sequence, without faults ---------------------------------------------------------


def test_scale_sequence_keeps_the_asked_count_with_new_instances(cfg, aws, aws_faults):
    """deploy (1), then scale 0, 1, 2, 0, 2: each step exactly its count, scale-ups new."""
    book = Ledger(aws_faults)
    book.start()
    D.deploy(cfg, aws, log=quiet)
    book.check(1)
    for n in (0, 1, 2, 0, 2):
        book.start()
        actions = D.scale(cfg, aws, {OD: n})
        book.check(n)
        assert sorted(a.kind for a in actions) == sorted(
            ["launch"] * max(0, n - len(book.before)) + ["retire"] * max(0, len(book.before) - n)
        )
        assert D.status(cfg, aws)["fleet"] == ({OD: n} if n else {})
    assert len(book.seen) == book.asked == 1 + 1 + 1 + 2  # deploy, 0->1, 1->2, 0->2


def test_teardown_then_deploy_again_brings_the_fleet_back(cfg, aws, aws_faults):
    """The second deploy's launch is not swallowed by the first one's (terminated) token."""
    D.deploy(cfg, aws, log=quiet)
    (first,) = live()
    removed = teardown(aws, DEP, region=REGION, wait_s=5, settle_s=0)
    assert removed["instances"] == [first] and live() == set()
    assert removed["buckets"] == [BUCKET]
    # the same config, the same fleet: the launch must not be answered by the old token
    D.deploy(cfg, aws, log=quiet)
    (again,) = live()
    assert again != first and instances()[first].state == "terminated"
    assert D.status(cfg, aws)["fleet"] == {OD: 1}
    assert teardown(aws, DEP, region=REGION, wait_s=5, settle_s=0)["instances"] == [again]
    assert live() == set()
    _assert_nothing_tagged(aws)
    assert teardown(aws, DEP, region=REGION, wait_s=5, settle_s=0) == {k: [] for k in R.KINDS}


def _assert_nothing_tagged(c: R.Clients) -> None:
    by_tag = [{"Name": f"tag:{T.DEPLOYMENT}", "Values": [DEP]}]
    assert c.ec2.describe_launch_templates(Filters=by_tag)["LaunchTemplates"] == []
    assert c.ec2.describe_security_groups(Filters=by_tag)["SecurityGroups"] == []
    assert c.lam.list_functions()["Functions"] == []
    assert [r["RoleName"] for r in c.iam.list_roles()["Roles"] if DEP in r["RoleName"]] == []
    assert c.iam.list_instance_profiles()["InstanceProfiles"] == []
    assert BUCKET not in {b["Name"] for b in c.s3.list_buckets()["Buckets"]}


# --- under faults -------------------------------------------------------------------------


def test_scale_under_a_throttling_storm_and_a_pool_out_of_capacity(cfg, fast, aws_faults):
    """Every RunInstances takes effect and loses its response twice (botocore retries it with
    the same ClientToken, EC2 answers with the reservation it made); DescribeInstances is
    throttled too, and on scale-in TerminateInstances and CreateTags (the drain's tag); for
    one step the pool has no capacity. Each `scale` is a fresh backend, as each CLI command
    is, so the step after it launches at once."""
    book = Ledger(aws_faults)
    book.start()
    D.deploy(cfg, fast, log=quiet)
    book.check(1)
    aws_faults.lose_response.add(RUN)
    for n, capacity in ((0, True), (2, True), (0, True), (2, False), (2, True)):
        book.start()
        calls = aws_faults.calls.get(RUN, 0)
        aws_faults.throttle.update(LAUNCH_STORM if n > len(book.before) else RETIRE_STORM)
        if not capacity:
            aws_faults.no_capacity.add(OD)
        try:
            actions = D.scale(cfg, fast, {OD: n})
        finally:
            aws_faults.throttle.clear()
            aws_faults.no_capacity.clear()
        new = book.check(n, capacity=capacity)
        assert sorted(a.instance_id for a in actions if a.kind == "launch") == sorted(new)
        if new:  # the request and its two retries, answered from the token the third time
            assert aws_faults.calls[RUN] - calls == 3
    assert book.asked == 1 + 2 + 2


def test_one_backend_under_lag_storm_and_no_capacity_launches_to_plan(
    cfg, fast, aws_faults, monkeypatch
):
    """A long-lived backend (the controller's situation) while describe lags every launch by two
    minutes: a converge right after a launch launches nothing more, its own launches retire,
    and a pool without capacity backs off (30 s, on a clock the test moves) then catches up."""
    clock = Monotonic()
    monkeypatch.setattr(ec2_backend, "time", clock)
    book = Ledger(aws_faults)
    book.start()
    D.deploy(cfg, fast, log=quiet)
    (first,) = book.check(1)
    aws_faults.launched_at[first] -= 3600  # launched long ago: describe shows it
    aws_faults.describe_lag_s = 120.0  # within the 300 s a backend trusts its own launches
    aws_faults.lose_response.add(RUN)
    be = D.fleet_backend(cfg, fast, manage=True)

    def converge(n: int, *, capacity: bool = True) -> list[Any]:
        book.start()
        aws_faults.throttle.update(LAUNCH_STORM if n > len(book.before) else RETIRE_STORM)
        if not capacity:
            aws_faults.no_capacity.add(OD)
        try:
            actions = be.converge({OD: n})
            be.drain.wait()
        finally:
            aws_faults.throttle.clear()
            aws_faults.no_capacity.clear()
        return actions

    def quiet_converge(n: int) -> None:
        """A converge that must do nothing, and make no RunInstances request at all."""
        calls = aws_faults.calls.get(RUN, 0)
        assert converge(n) == []
        assert aws_faults.calls.get(RUN, 0) == calls
        book.check(n, capacity=False)

    try:
        assert [a.kind for a in converge(0)] == ["retire"]
        book.check(0)  # seen, running: drained, then terminated
        assert [a.kind for a in converge(2)] == ["launch", "launch"]
        book.check(2)
        assert D.status(cfg, fast)["instances"] == []  # describe does not show them yet
        quiet_converge(2)  # ... and the backend's own launches count until it does
        assert [a.kind for a in converge(0)] == ["retire", "retire"]
        book.check(0, drained=False)  # never seen running: terminated at once
        assert converge(2, capacity=False) == []
        book.check(2, capacity=False)
        assert be.launch_failures == {OD: 1}
        assert be.retry_at == {OD: clock.now + ec2_backend.LAUNCH_BACKOFF_S}
        quiet_converge(2)  # capacity is back, the pool is backing off
        clock.now += ec2_backend.LAUNCH_BACKOFF_S - 1
        quiet_converge(2)
        clock.now += 2
        assert [a.kind for a in converge(2)] == ["launch", "launch"]
        book.check(2)
        assert be.launch_failures == {} and be.retry_at == {}
        quiet_converge(2)
        aws_faults.describe_lag_s = 0.0  # describe catches up: the same two, nothing more
        quiet_converge(2)
        assert {i["id"] for i in D.status(cfg, fast)["instances"]} == live()
    finally:
        be.close()
    assert book.asked == 1 + 2 + 2


def test_teardown_finds_an_instance_a_lagging_describe_did_not_list_yet(cfg, aws, aws_faults):
    """Deploy then teardown at once, while DescribeInstances lags the launch by 1 s: the first
    look finds nothing, a look within `settle_s` finds the instance, and it is terminated."""
    aws_faults.describe_lag_s = 1.0
    D.deploy(cfg, aws, log=quiet)
    (launched,) = live()  # the test reads moto directly; the library's describe lags
    removed = teardown(aws, DEP, region=REGION, wait_s=5, settle_s=3.0)
    assert removed["instances"] == [launched] and live() == set()


def test_a_second_scale_right_after_the_first_launches_nothing_while_describe_lags(
    cfg, aws, aws_faults
):
    """Each `scale` is a new process that knows nothing of the last one's launches: the first
    returns only once describe shows them (Ec2Fleet.settle), so the second sees the fleet."""
    aws_faults.describe_lag_s = 1.0
    D.deploy(cfg, aws, log=quiet)
    D.scale(cfg, aws, {OD: 2})
    assert D.scale(cfg, aws, {OD: 2}) == []
    assert len(live()) == 2
