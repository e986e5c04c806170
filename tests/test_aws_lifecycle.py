"""An EC2 instance's life past launch, on moto with the fault layer (tests/aws_faults.py): spot
notices taken in and replaced at once, drain on scale-in, unhealthy instances replaced after
their grace, and the fleet rolled onto a changed launch template."""

from __future__ import annotations

import time

from hybridserve.rollout import Member, roll
from tests.conftest import tagged_instances, wait_until

OD, SPOT = "c5.large/on_demand", "c5.large/spot"
DEP = "life"


class Clock:
    """Wall time plus an offset a test moves on: grace and drain deadlines without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def fleet_backend(aws, **kw):
    from hybridserve.aws.ec2 import Ec2Fleet
    from hybridserve.aws.ec2_backend import AwsBackend

    ami = aws.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    kw.setdefault("drain_s", 0.0)
    return AwsBackend(Ec2Fleet(DEP, aws.ec2, ami, user_data="#cloud-config\n"), **kw)


def instances(aws, states=("pending", "running")):
    return {i["InstanceId"]: i for i in tagged_instances(aws.ec2, DEP, tuple(states))}


def tags(inst) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}


# --- the roll, pure ---------------------------------------------------------------------


def test_roll_surges_then_retires_the_outdated_once_replacements_are_ready():
    old = [Member("o1", OD, False, True), Member("o2", OD, False, True)]
    assert roll({OD: 2}, old) == ({OD: 4}, set())  # launch two while the old serve
    booting = [*old, Member("n1", OD, True, False), Member("n2", OD, True, False)]
    assert roll({OD: 2}, booting) == ({OD: 4}, set())
    ready = [*old, Member("n1", OD, True, True), Member("n2", OD, True, True)]
    assert roll({OD: 2}, ready) == ({OD: 2}, {"o1", "o2"})
    assert roll({}, old) == ({}, {"o1", "o2"})  # scaled to zero: nothing to wait for
    # under a full cap, one outdated instance at a time is replaced in place
    assert roll({OD: 2}, old, room=0) == ({OD: 2}, {"o1"})
    one = [old[1], Member("n1", OD, True, False)]
    assert roll({OD: 2}, one, room=0) == ({OD: 2}, set())  # wait for n1 first
    assert roll({OD: 2}, [old[1], Member("n1", OD, True, True)], room=0) == ({OD: 2}, {"o2"})


# --- drain on scale-in ------------------------------------------------------------------


def test_scale_in_drains_before_it_terminates(aws):
    clock = Clock()
    be = fleet_backend(aws, drain_s=30.0, clock=clock)
    router = fleet_backend(aws)  # another process's view, as the router's
    try:
        be.converge({OD: 2})
        assert len(router.refresh()) == 2
        acts = be.converge({OD: 1})
        assert [a.kind for a in acts] == ["retire"]
        (gone,) = [a.instance_id for a in acts]
        live = instances(aws)
        assert gone in live and "hybridserve:draining" in tags(live[gone])  # still running
        assert [e.instance_id for e in router.refresh()] != [gone]
        assert gone not in {e.instance_id for e in router.refresh()}  # out of routing at once
        assert be.observe().get(OD).total == 1  # not counted: its share is not relaunched
        assert [a.kind for a in be.converge({OD: 1})] == ["retire"]  # still draining
        assert gone in instances(aws)
        clock.offset = 31.0
        be.converge({OD: 1})
        assert gone not in instances(aws) and len(instances(aws)) == 1
        assert be.converge({OD: 1}) == []
    finally:
        be.close()
        router.close()


def test_the_drain_timer_terminates_without_waiting_for_a_step(aws):
    be = fleet_backend(aws, drain_s=0.5)
    try:
        be.converge({OD: 2})
        be.converge({OD: 0})
        assert len(instances(aws)) == 2  # draining
        wait_until(lambda: not instances(aws), 20, "the drained instances to terminate")
    finally:
        be.close()


# --- health -----------------------------------------------------------------------------


def test_an_instance_never_healthy_is_replaced_after_its_grace(aws, caplog):
    clock = Clock()
    sick: set[str] = set()
    be = fleet_backend(
        aws,
        probe=lambda url: url.split("//")[1] not in sick,
        url_of=lambda i: f"http://{i.instance_id}",
        launch_delay_s={OD: 60.0},
        health_ttl_s=0.0,
        clock=clock,
    )
    try:
        first = [a.instance_id for a in be.converge({OD: 2})]
        sick.add(first[0])
        assert be.converge({OD: 2}) == []  # within its grace (2 x 60 s): still booting
        clock.offset = 121.0
        assert len(be.converge({OD: 2}, dry_run=True)) == 2 and be.replaced == {}  # acts not
        with caplog.at_level("INFO", logger="hybridserve.aws.ec2"):
            acts = be.converge({OD: 2})
        assert sorted((a.kind, a.instance_id or "new") for a in acts) == [
            ("launch", acts[-1].instance_id),
            ("retire", first[0]),
        ]
        assert first[0] not in instances(aws)  # it never served: terminated, not drained
        assert be.replaced == {"unhealthy": 1}
        logged = [
            r.fields for r in caplog.records if getattr(r, "event", "") == "aws.instance_replaced"
        ]
        assert logged == [{"instance": first[0], "pool": OD, "reason": "unhealthy"}]
        assert be.converge({OD: 2}) == []  # the replacement is within its own grace
        assert be.replaced == {"unhealthy": 1}
    finally:
        be.close()


# --- launch template versions and the roll ----------------------------------------------


def test_a_changed_template_gets_a_new_version_and_the_fleet_rolls(aws):
    be = fleet_backend(aws)
    try:
        be.converge({OD: 2})
        old = set(instances(aws))
        tid, v1 = be.fleet.ensure_launch_template()
        assert be.fleet.ensure_launch_template() == (tid, v1)  # no change, no version
        be.fleet.user_data = "#cloud-config\n# port changed\n"
        acts = be.converge({OD: 2})
        assert [a.kind for a in acts] == ["launch", "launch"]  # surge: the old keep serving
        tid2, v2 = be.fleet.ensure_launch_template()
        assert tid2 == tid and int(v2) == int(v1) + 1
        lt = aws.ec2.describe_launch_templates(LaunchTemplateIds=[tid])["LaunchTemplates"][0]
        assert str(lt["DefaultVersionNumber"]) == v2
        # moto's instances run at once: the replacements are ready, the outdated retire
        acts = be.converge({OD: 2})
        assert sorted(a.instance_id for a in acts if a.kind == "retire") == sorted(old)
        now = instances(aws)
        assert len(now) == 2 and not set(now) & old
        assert {tags(i)["hybridserve:template"] for i in now.values()} == {be.fleet.template_hash}
        assert be.converge({OD: 2}) == [] and be.replaced == {"outdated": 2}
    finally:
        be.close()


def test_a_roll_under_a_full_cap_replaces_one_at_a_time(aws):
    be = fleet_backend(aws, max_instances=2)
    try:
        be.converge({OD: 2})
        be.fleet.user_data = "#cloud-config\n# artifact changed\n"
        for _ in range(4):
            be.converge({OD: 2})
            assert len(instances(aws)) <= 2  # never past the cap
        now = instances(aws)
        assert len(now) == 2
        assert {tags(i)["hybridserve:template"] for i in now.values()} == {be.fleet.template_hash}
    finally:
        be.close()


# --- spot notices -----------------------------------------------------------------------


def test_a_spot_notice_is_drained_and_replaced_before_the_termination(aws, aws_faults):
    from hybridserve.aws.deploy import service_client
    from hybridserve.aws.spot import (
        NoticeQueue,
        await_notices,
        ensure_notice_queue,
        teardown_notice_queue,
    )

    sqs, events = service_client(aws, "sqs"), service_client(aws, "events")
    url, _ = ensure_notice_queue(sqs, events, DEP)
    assert ensure_notice_queue(sqs, events, DEP)[0] == url  # idempotent
    queue = NoticeQueue(sqs, url)
    clock = Clock()
    be = fleet_backend(aws, drain_s=30.0, clock=clock)
    router = fleet_backend(aws)
    try:
        first = [a.instance_id for a in be.converge({SPOT: 2})]
        assert len(router.refresh()) == 2
        aws_faults.interrupt(first[0], notice_s=60.0)
        noticed = await_notices(
            queue, be.notice, lambda: be.converge({SPOT: 2}), wait_s=2.0, log=lambda m: None
        )
        assert noticed == 1
        routed = {e.instance_id for e in router.refresh()}
        assert first[0] not in routed  # drained from routing
        live = instances(aws)
        # the replacement runs while the interrupted one still does: launched at the notice
        assert len(live) == 3 and tags(live[first[0]])["hybridserve:interrupted"] == "true"
        assert "hybridserve:draining" in tags(live[first[0]])
        assert len(routed) == 2
        assert [a.kind for a in be.converge({SPOT: 2})] == ["retire"]  # still draining
        assert first[0] in instances(aws)
        clock.offset = 31.0  # its drain ends (before EC2 would reclaim it)
        be.converge({SPOT: 2})
        assert first[0] not in instances(aws) and len(instances(aws)) == 2
        assert [a.kind for a in be.converge({SPOT: 2})] == []  # no second replacement
        assert be.replaced == {"interrupted": 1}
    finally:
        be.close()
        router.close()
    assert sorted(teardown_notice_queue(sqs, events, DEP)) == [
        f"queue/hybridserve-{DEP}-spot-notices",
        f"rule/hybridserve-{DEP}-spot",
    ]
    assert teardown_notice_queue(sqs, events, DEP) == []


def test_the_notice_queue_drops_what_is_no_spot_warning(aws):
    from hybridserve.aws.deploy import service_client
    from hybridserve.aws.spot import NoticeQueue, ensure_notice_queue

    sqs, events = service_client(aws, "sqs"), service_client(aws, "events")
    url, _ = ensure_notice_queue(sqs, events, DEP)
    for body in ("not json", '{"detail-type": "Other"}', '{"detail-type": 1, "detail": []}'):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    assert NoticeQueue(sqs, url).poll(1) == []
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)


def test_the_simulator_replaces_at_the_notice():
    """The same Controller.on_notice as AWS: each interrupted spot instance has a replacement
    launched at its notice's instant, not at the next step."""
    from hybridserve.config import load_scenario
    from simulations.replay import control_pass
    from simulations.synthetic import synthetic_trace

    sc = load_scenario(markets=["spot"], spot={"interruptions_per_hour": 2.0})
    trace = synthetic_trace(days=0.25, seed=3, mean_rate=150.0)
    backend, _, _ = control_pass(trace, sc, "hybrid", seed=1)
    lost = [i for i in backend.instances if i.end_reason == "spot-interruption"]
    assert len(lost) >= 3, "too few interruptions drawn: raise the rate"
    launched = {(i.pool, i.launched_at) for i in backend.instances}
    replaced = [i for i in lost if (i.pool, i.notice_at) in launched]
    # every notice replaces at its instant unless the last target already had room for the
    # loss (the plan shrank since); none waits for the next step
    assert len(replaced) >= 0.8 * len(lost), (len(replaced), len(lost))
    assert all(i.notice_at % sc.control_interval_s != 0 for i in replaced)


def test_the_runtime_fleet_launches_the_deployed_version_and_changes_no_template(aws):
    from dataclasses import replace

    deployed = fleet_backend(aws)
    deployed.fleet.ensure_launch_template()
    runtime = fleet_backend(aws)
    runtime.fleet = replace(runtime.fleet, manage_template=False, user_data="#other\n")
    runtime.drain.fleet = runtime.fleet
    try:
        runtime.converge({OD: 1})
        (tid,) = [
            lt["LaunchTemplateId"] for lt in aws.ec2.describe_launch_templates()["LaunchTemplates"]
        ]
        versions = aws.ec2.describe_launch_template_versions(LaunchTemplateId=tid)
        assert len(versions["LaunchTemplateVersions"]) == 1  # its own content made nothing
        (inst,) = instances(aws).values()
        assert tags(inst)["hybridserve:template"] == deployed.fleet.template_hash
        assert runtime.converge({OD: 1}) == []  # up to date: no roll
        # a deploy with a change makes a new version; the runtime fleet then rolls onto it
        deployed.fleet.user_data = "#cloud-config\n# new artifact\n"
        deployed.fleet.ensure_launch_template()
        assert [a.kind for a in runtime.converge({OD: 1})] == ["launch"]
        assert [a.kind for a in runtime.converge({OD: 1})] == ["retire"]
        (inst,) = instances(aws).values()
        assert tags(inst)["hybridserve:template"] == deployed.fleet.template_hash
    finally:
        deployed.close()
        runtime.close()
