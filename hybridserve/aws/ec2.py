"""EC2 fleet of one deployment: launch template, launch, observe and terminate, all by tags.

Level-triggered: `AwsBackend.converge` observes the tagged instances, asks the pure reconciler
for actions and applies them. Idempotent by construction: the launch template is looked up by
name before it is created, `run_instances` carries a client token derived from the deployment,
pool and observed fleet (a retried call cannot launch twice), and everything is found again by
tags, so a restarted controller adopts the fleet it finds. Throttling and eventual consistency
are retried by botocore's adaptive mode with backoff and jitter.
"""

from __future__ import annotations

import base64
import hashlib
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hybridserve.aws import tags as T
from hybridserve.aws.reconcile import Launch, ObservedInstance, Terminate, reconcile
from hybridserve.backends.base import Action
from hybridserve.planner.base import FleetView, PoolState

SPOT_FALLBACK_ERRORS = {
    "InsufficientInstanceCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "InsufficientCapacity",
}


@dataclass
class Ec2Fleet:
    deployment: str
    client: Any
    image_id: str
    user_data: str = ""
    security_group_ids: tuple[str, ...] = ()
    instance_profile_arn: str | None = None
    subnet_id: str | None = None
    fallbacks: list[str] = field(default_factory=list)  # spot launches that went on-demand

    @property
    def template_name(self) -> str:
        return T.launch_template_name(self.deployment)

    def ensure_launch_template(self) -> str:
        """The deployment's launch template id, created once (found by name afterwards)."""
        try:
            found = self.client.describe_launch_templates(LaunchTemplateNames=[self.template_name])
            return found["LaunchTemplates"][0]["LaunchTemplateId"]
        except self.client.exceptions.ClientError as e:
            if "NotFound" not in e.response["Error"]["Code"]:
                raise
        data: dict[str, Any] = {
            "ImageId": self.image_id,
            "UserData": base64.b64encode(self.user_data.encode()).decode(),
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": T.tag_list(T.tags_for(self.deployment, T.ROLE_INSTANCE)),
                }
            ],
            "MetadataOptions": {"HttpTokens": "required"},  # IMDSv2 only
        }
        if self.security_group_ids:
            data["SecurityGroupIds"] = list(self.security_group_ids)
        if self.instance_profile_arn:
            data["IamInstanceProfile"] = {"Arn": self.instance_profile_arn}
        resp = self.client.create_launch_template(
            LaunchTemplateName=self.template_name,
            LaunchTemplateData=data,
            TagSpecifications=[
                {
                    "ResourceType": "launch-template",
                    "Tags": T.tag_list(T.tags_for(self.deployment, T.ROLE_TEMPLATE)),
                }
            ],
        )
        return resp["LaunchTemplate"]["LaunchTemplateId"]

    def observe(self) -> list[ObservedInstance]:
        """Every instance tagged for this deployment that is not gone."""
        out = []
        pages = self.client.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{T.DEPLOYMENT}", "Values": [self.deployment]},
                {"Name": f"tag:{T.ROLE}", "Values": [T.ROLE_INSTANCE]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ]
        )
        for page in pages:
            for res in page["Reservations"]:
                for inst in res["Instances"]:
                    tags = T.as_dict(inst.get("Tags"))
                    reason = (inst.get("StateReason") or {}).get("Code", "")
                    out.append(
                        ObservedInstance(
                            instance_id=inst["InstanceId"],
                            pool=tags.get(T.POOL, f"{inst['InstanceType']}/on_demand"),
                            state=inst["State"]["Name"],
                            launch_time=inst["LaunchTime"].timestamp(),
                            interrupted=tags.get("hybridserve:interrupted") == "true"
                            or reason.startswith("Server.SpotInstance"),
                        )
                    )
        return out

    def launch(self, pool: str, count: int, token: str) -> list[str]:
        """Launch `count` instances of `pool` (type/market); spot falls back to on-demand."""
        itype, _, market = pool.partition("/")
        template = self.ensure_launch_template()
        args: dict[str, Any] = {
            "LaunchTemplate": {"LaunchTemplateId": template},
            "InstanceType": itype,
            "MinCount": count,
            "MaxCount": count,
            "ClientToken": token,
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": T.tag_list(T.tags_for(self.deployment, T.ROLE_INSTANCE, pool=pool)),
                }
            ],
        }
        if self.subnet_id:
            args["SubnetId"] = self.subnet_id
        if market == "spot":
            args["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        try:
            resp = self.client.run_instances(**args)
        except self.client.exceptions.ClientError as e:
            if market != "spot" or e.response["Error"]["Code"] not in SPOT_FALLBACK_ERRORS:
                raise
            self.fallbacks.append(pool)
            od = f"{itype}/on_demand"
            args.pop("InstanceMarketOptions")
            args["ClientToken"] = token + "-od"
            args["TagSpecifications"][0]["Tags"] = T.tag_list(
                T.tags_for(self.deployment, T.ROLE_INSTANCE, pool=od)
            )
            resp = self.client.run_instances(**args)
        return [i["InstanceId"] for i in resp["Instances"]]

    def terminate(self, instance_ids: list[str]) -> None:
        if instance_ids:
            self.client.terminate_instances(InstanceIds=list(instance_ids))


def _token(deployment: str, pool: str, observed: list[ObservedInstance], count: int) -> str:
    """Same fleet, same decision, same token: a retry of this launch cannot launch twice."""
    ids = ",".join(sorted(i.instance_id for i in observed if i.pool == pool))
    return hashlib.sha256(f"{deployment}|{pool}|{count}|{ids}".encode()).hexdigest()[:48]


def http_ready_probe(port: int, timeout_s: float = 1.0) -> Callable[[dict], bool]:
    """Readiness from the model server's /v2/health/ready on the instance's private address."""

    def probe(instance: dict) -> bool:
        ip = instance.get("PrivateIpAddress")
        if not ip:
            return False
        try:
            with urllib.request.urlopen(
                f"http://{ip}:{port}/v2/health/ready", timeout=timeout_s
            ) as r:
                return r.status == 200
        except OSError:
            return False

    return probe


class AwsBackend:
    """The Backend protocol on EC2: observe by tags, converge through the reconciler."""

    def __init__(
        self,
        fleet: Ec2Fleet,
        *,
        launch_delay_s: Mapping[str, float] | None = None,
        ready: Callable[[ObservedInstance], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.launch_delay_s = dict(launch_delay_s or {})
        self.ready = ready or (lambda inst: inst.state == "running")
        self.clock = clock

    def now(self) -> float:
        return self.clock()

    def observe(self) -> FleetView:
        now = self.now()
        pools: dict[str, PoolState] = {}
        for inst in self.fleet.observe():
            if not inst.live:
                continue
            st = pools.get(inst.pool, PoolState())
            if self.ready(inst):
                pools[inst.pool] = PoolState(st.ready + 1, st.pending_ready_in_s)
            else:
                eta = max(0.0, inst.launch_time + self.launch_delay_s.get(inst.pool, 90.0) - now)
                pools[inst.pool] = PoolState(st.ready, (*st.pending_ready_in_s, eta))
        return FleetView(pools)

    def plan_actions(self, target: Mapping[str, int]) -> tuple[list[ObservedInstance], list]:
        observed = self.fleet.observe()
        return observed, reconcile(target, observed)

    def converge(self, target: Mapping[str, int], *, dry_run: bool = False) -> list[Action]:
        observed, actions = self.plan_actions(target)
        pool_of = {i.instance_id: i.pool for i in observed}
        now = self.now()
        done: list[Action] = []
        for a in actions:
            if isinstance(a, Terminate):
                if not dry_run:
                    self.fleet.terminate(list(a.instance_ids))
                done += [Action("retire", pool_of.get(i, ""), i, now) for i in a.instance_ids]
            elif isinstance(a, Launch):
                if dry_run:
                    done += [Action("launch", a.pool, "(dry-run)", now)] * a.count
                    continue
                ids = self.fleet.launch(
                    a.pool, a.count, _token(self.fleet.deployment, a.pool, observed, a.count)
                )
                done += [Action("launch", a.pool, i, now) for i in ids]
        return done
