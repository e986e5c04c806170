"""The controller lease on S3 conditional writes: one holder at a time, takeover on expiry."""

from __future__ import annotations

import pytest

pytest.importorskip("moto")

from hybridserve.aws.lease import Lease, lease_ttl_s  # noqa: E402
from hybridserve.deployment import DeploymentConfig  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_one_holder_at_a_time_and_takeover_after_expiry(aws):
    aws.s3.create_bucket(Bucket="lease-bucket")
    cfg = DeploymentConfig(name="demo", artifact="a", bucket="lease-bucket")
    clock = Clock()
    a = Lease(aws.s3, cfg, 60.0, holder="a", clock=clock)
    b = Lease(aws.s3, cfg, 60.0, holder="b", clock=clock)
    assert a.hold() and not b.hold()
    assert b.seen["holder"] == "a" and b.seen["expires"] == 1060.0
    clock.t += 30
    assert a.hold() and not b.hold()  # renewed: good until 1090
    clock.t += 61
    assert b.hold() and not a.hold()  # a missed its renewals: b took over
    b.release()
    assert a.hold()  # released: no wait for the expiry
    tags = aws.s3.get_object_tagging(Bucket="lease-bucket", Key="demo/controller-lease.json")
    assert {"Key": "hybridserve:deployment", "Value": "demo"} in tags["TagSet"]  # teardown's


def test_a_racing_writer_loses_on_the_etag(aws):
    """Both read an expired lease; S3's If-Match lets exactly one write win."""
    aws.s3.create_bucket(Bucket="lease-bucket")
    cfg = DeploymentConfig(name="demo", artifact="a", bucket="lease-bucket")
    clock = Clock()
    assert Lease(aws.s3, cfg, 1.0, holder="old", clock=clock).hold()
    clock.t += 10
    a = Lease(aws.s3, cfg, 60.0, holder="a", clock=clock)
    b = Lease(aws.s3, cfg, 60.0, holder="b", clock=clock)
    etag = aws.s3.get_object(Bucket="lease-bucket", Key="demo/controller-lease.json")["ETag"]
    assert a._write(IfMatch=etag) and not b._write(IfMatch=etag)


def test_ttl_spans_several_intervals():
    assert lease_ttl_s(60) == 180 and lease_ttl_s(0) == 2.0
