"""EC2 fleet of one deployment: launch template, launch, observe, drain and terminate, by tags.

Idempotent by construction: the launch template is looked up by name before it is created,
`run_instances` carries a client token derived from the decision that asked for it
(`ec2_backend`: a retried call cannot launch twice), and everything is found again by tags, so
a restarted controller adopts the fleet it finds. Throttling and eventual consistency are
retried by botocore's adaptive mode with backoff and jitter.

The launch template is versioned: its content is hashed, a change (AMI, user data, port,
profile) makes a new default version, and each instance is tagged with the hash it was launched
from, so the backend can tell outdated instances and roll them. An instance's place in the
fleet (interrupted, draining since) lives in its tags too, so the router, the controller and a
restarted controller all see the same fleet.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from hybridserve.aws import tags as T
from hybridserve.aws.shared import retry_while_propagating
from hybridserve.reconcile import Observed

SPOT_FALLBACK_ERRORS = {
    "InsufficientInstanceCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "InsufficientCapacity",
}


LIVE_STATES = ("pending", "running")
# how long a launch or termination this process made may be missing from describes: EC2's
# describe calls are eventually consistent, typically for seconds; past this, describe wins
DESCRIBE_LAG_MAX_S = 300.0
# how long a one-shot command waits for describe to show what it changed (Ec2Fleet.settle)
COMMAND_SETTLE_S = 30.0


@dataclass(frozen=True)
class Ec2Instance:
    """An instance found by its tags, and the address the router reaches it on."""

    instance_id: str
    pool: str  # "type/market"
    state: str  # pending | running | stopping | stopped | shutting-down | terminated
    launch_time: float  # epoch seconds
    interrupted: bool = False  # a spot interruption notice: out of routing, replaced
    private_ip: str | None = None
    draining_since: float | None = None  # out of routing since (epoch s): retiring
    template: str | None = None  # the launch template content hash it was launched from
    models: tuple[tuple[str, str], ...] = ()  # (name, variant) its shard should hold, by tags

    @property
    def live(self) -> bool:
        """Counted and routed to: pending or running, neither interrupted nor draining."""
        return self.state in LIVE_STATES and not self.interrupted and self.draining_since is None

    def observed(self, dead: bool = False) -> Observed | None:
        """What the reconciler sees (None once shutting down or terminated: gone already);
        `dead` adds the backend's own reasons to retire it (unhealthy, outdated)."""
        if self.state not in (*LIVE_STATES, "stopping", "stopped"):
            return None
        dead = dead or not self.live  # stopped, interrupted or draining included
        return Observed(
            self.instance_id, self.pool, self.state == "pending", self.launch_time, dead
        )


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
    # True: the template is made to hold this fleet's content (deploy, scale); False: the
    # deployed default version is used as it is (the controller and router at run time, whose
    # policy cannot change templates, and whose `image: auto` may resolve to a newer AMI)
    manage_template: bool = True
    # a just-created instance profile is refused for seconds while IAM propagates
    profile_retry_delays: tuple[float, ...] = (2, 4, 8, 8, 8)
    # this process's own launches and terminations (id -> (pool, template, when) / when),
    # merged into what describe returns until it shows them
    launched: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    terminated: dict[str, float] = field(default_factory=dict)
    # pool -> extra tags its launches carry (the placement backend's models of a shard)
    launch_tags: Callable[[str], Mapping[str, str]] | None = None
    # the instances read their own tags from the metadata service (a multi-model deployment's
    # servers load their shard's models at boot: `model-server --load-tagged`)
    metadata_tags: bool = False

    @property
    def template_name(self) -> str:
        return T.launch_template_name(self.deployment)

    def template_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ImageId": self.image_id,
            "UserData": base64.b64encode(self.user_data.encode()).decode(),
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": T.tag_list(T.tags_for(self.deployment, T.ROLE_INSTANCE)),
                }
            ],
            "MetadataOptions": {  # IMDSv2 only
                "HttpTokens": "required",
                **({"InstanceMetadataTags": "enabled"} if self.metadata_tags else {}),
            },
        }
        if self.security_group_ids:
            data["SecurityGroupIds"] = list(self.security_group_ids)
        if self.instance_profile_arn:
            data["IamInstanceProfile"] = {"Arn": self.instance_profile_arn}
        return data

    @property
    def template_hash(self) -> str:
        """What the instances launched now are tagged with: a change of content changes it."""
        blob = json.dumps(self.template_data(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def current_template(self) -> tuple[str, str, str]:
        """(template id, version, content hash) that launches use now: this fleet's content
        when it manages the template, else the deployed default version's."""
        if self.manage_template:
            tid, version = self.ensure_launch_template()
            return tid, version, self.template_hash
        try:
            default = self.client.describe_launch_template_versions(
                LaunchTemplateName=self.template_name, Versions=["$Default"]
            )["LaunchTemplateVersions"][0]
        except self.client.exceptions.ClientError as e:
            if "NotFound" in e.response["Error"]["Code"]:
                raise LookupError(
                    f"launch template {self.template_name} not found: run deploy first"
                ) from e
            raise
        version = str(default["VersionNumber"])
        desc = default.get("VersionDescription") or ""
        digest = desc.split(" ", 1)[1] if desc.startswith("hybridserve ") else f"v{version}"
        return default["LaunchTemplateId"], version, digest

    def launch_digest(self) -> str:
        """The content hash the next launch carries, without creating anything (dry runs)."""
        return self.template_hash if self.manage_template else self.current_template()[2]

    def ensure_launch_template(self) -> tuple[str, str]:
        """The deployment's launch template id and the version holding the current content:
        created once (found by name afterwards); a new default version when the content
        changed (the version's description carries the content hash)."""
        want = f"hybridserve {self.template_hash}"
        try:
            found = self.client.describe_launch_templates(LaunchTemplateNames=[self.template_name])
            tid = found["LaunchTemplates"][0]["LaunchTemplateId"]
        except self.client.exceptions.ClientError as e:
            if "NotFound" not in e.response["Error"]["Code"]:
                raise
            resp = self.client.create_launch_template(
                LaunchTemplateName=self.template_name,
                VersionDescription=want,
                LaunchTemplateData=self.template_data(),
                TagSpecifications=[
                    {
                        "ResourceType": "launch-template",
                        "Tags": T.tag_list(T.tags_for(self.deployment, T.ROLE_TEMPLATE)),
                    }
                ],
            )
            lt = resp["LaunchTemplate"]
            return lt["LaunchTemplateId"], str(lt["DefaultVersionNumber"])
        default = self.client.describe_launch_template_versions(
            LaunchTemplateId=tid, Versions=["$Default"]
        )["LaunchTemplateVersions"][0]
        if default.get("VersionDescription") == want:
            return tid, str(default["VersionNumber"])
        made = self.client.create_launch_template_version(
            LaunchTemplateId=tid,
            VersionDescription=want,
            LaunchTemplateData=self.template_data(),
            ClientToken=f"{self.deployment}-{self.template_hash}"[:64],
        )["LaunchTemplateVersion"]
        version = str(made["VersionNumber"])
        self.client.modify_launch_template(LaunchTemplateId=tid, DefaultVersion=version)
        return tid, version

    def observe(self) -> list[Ec2Instance]:
        """Every instance tagged for this deployment that is not gone, with this process's own
        launches that describe does not show yet and without its own terminations that it
        still shows (read-after-write: a converge right after another must not launch again)."""
        found = self._describe()
        now = time.time()
        seen = {i.instance_id for i in found}
        for iid, (pool, digest, t) in list(self.launched.items()):
            if iid in seen or now - t > DESCRIBE_LAG_MAX_S:
                self.launched.pop(iid, None)
            else:
                found.append(Ec2Instance(iid, pool, "pending", t, template=digest))
        for iid, t in list(self.terminated.items()):
            if now - t > DESCRIBE_LAG_MAX_S:
                self.terminated.pop(iid, None)
        return [i for i in found if i.instance_id not in self.terminated]

    def settle(self, timeout_s: float, *, poll_s: float = 1.0) -> bool:
        """Wait (at most `timeout_s`) until describe shows this process's launches and no
        longer shows its terminations as live: a one-shot command (`scale`, `deploy`) returns
        only then, so the next command, a new process that knows none of them, sees the fleet
        they made rather than launching it again. True once settled."""
        if not self.launched and not self.terminated:
            return True  # this process changed nothing: no describe to wait for
        deadline = time.monotonic() + timeout_s
        while True:
            shown = {i.instance_id for i in self._describe()}
            now = time.time()
            waiting = [
                i for i, (_, _, t) in self.launched.items()
                if i not in shown and now - t <= DESCRIBE_LAG_MAX_S
            ] + [i for i in self.terminated if i in shown]  # fmt: skip
            if not waiting:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    def _describe(self) -> list[Ec2Instance]:
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
                        Ec2Instance(
                            instance_id=inst["InstanceId"],
                            pool=tags.get(T.POOL, f"{inst['InstanceType']}/on_demand"),
                            state=inst["State"]["Name"],
                            launch_time=inst["LaunchTime"].timestamp(),
                            interrupted=tags.get(T.INTERRUPTED) == "true"
                            or reason.startswith("Server.SpotInstance"),
                            private_ip=inst.get("PrivateIpAddress"),
                            draining_since=_float(tags.get(T.DRAINING)),
                            template=tags.get(T.TEMPLATE),
                            models=model_tags(tags),
                        )
                    )
        return out

    def launch(self, pool: str, count: int, token: str) -> list[str]:
        """Launch `count` instances of `pool` (type/market, or a shard of one:
        type/market#s<id>); spot falls back to on-demand."""
        itype, _, market = pool.split("#", 1)[0].partition("/")
        template, version, digest = self.current_template()
        extra = dict(self.launch_tags(pool)) if self.launch_tags is not None else {}
        tags = {**extra, "pool": pool, T.TEMPLATE: digest}
        args: dict[str, Any] = {
            "LaunchTemplate": {"LaunchTemplateId": template, "Version": version},
            "InstanceType": itype,
            "MinCount": count,
            "MaxCount": count,
            "ClientToken": token,
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": T.tag_list(T.tags_for(self.deployment, T.ROLE_INSTANCE, **tags)),
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
            resp = self._run(args)
        except self.client.exceptions.ClientError as e:
            if market != "spot" or e.response["Error"]["Code"] not in SPOT_FALLBACK_ERRORS:
                raise
            self.fallbacks.append(pool)
            args.pop("InstanceMarketOptions")
            args["ClientToken"] = token + "-od"
            # it stands in for the spot pool (so the next step keeps it rather than replacing
            # it); the market tag says what it is billed as
            args["TagSpecifications"][0]["Tags"] = T.tag_list(
                T.tags_for(self.deployment, T.ROLE_INSTANCE, **tags, market="on_demand")
            )
            resp = self._run(args)
        ids = [i["InstanceId"] for i in resp["Instances"]]
        now = time.time()
        for iid in ids:
            self.launched[iid] = (pool, digest, now)
        return ids

    def _run(self, args: dict[str, Any]) -> dict[str, Any]:
        """RunInstances, waiting out IAM's propagation of a just-made instance profile (the
        same token each time: an attempt that did launch is answered, not repeated)."""
        return retry_while_propagating(
            lambda: self.client.run_instances(**args), self.profile_retry_delays, _young_profile
        )

    def terminate(self, instance_ids: list[str]) -> None:
        if instance_ids:
            self.client.terminate_instances(InstanceIds=list(instance_ids))
            now = time.time()
            for iid in instance_ids:
                self.terminated[iid] = now
                self.launched.pop(iid, None)

    def mark(self, instance_ids: list[str], key: str, value: str) -> None:
        """Tag instances with their place in the fleet (`T.DRAINING`, `T.INTERRUPTED`): every
        observer, the router's included, reads it on its next describe."""
        if instance_ids:
            self.client.create_tags(
                Resources=list(instance_ids), Tags=[{"Key": key, "Value": value}]
            )


def model_tags(tags: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """(name, variant) of each `T.MODEL_PREFIX` tag, by name."""
    n = len(T.MODEL_PREFIX)
    return tuple(sorted((k[n:], v) for k, v in tags.items() if k.startswith(T.MODEL_PREFIX)))


def _young_profile(e: ClientError) -> bool:
    """EC2 refusing an instance profile IAM has not spread yet."""
    err = e.response.get("Error", {})
    return err.get("Code") == "InvalidParameterValue" and "iamInstanceProfile" in str(
        err.get("Message", "")
    )


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:  # a hand-edited tag: not draining
        return None
