"""Moto made to keep AWS's promises where hybridserve relies on them: the fault-faithful layer
every AWS test runs on (tests/conftest.py turns it on for the whole session).

Moto is lenient where AWS is not. Each fault here is AWS's documented behaviour, patched into
moto's backend (so it holds for `mock_aws` and for a `ThreadedMotoServer` in this process, and
for the CLI subprocesses that call that server):

- **ClientToken idempotency** (EC2 RunInstances). A token seen in the last 24 h returns the
  reservation it made then, even when its instances have since been terminated; the same token
  with other parameters fails with `IdempotentParameterMismatch`. Moto ignores tokens, so a
  launch token that recurs looks harmless there and launches nothing on AWS.
- **Capacity runs out** per instance type and market: RunInstances fails with
  `InsufficientInstanceCapacity` for the pools a test puts in `Faults.no_capacity`.
- **Spot interruption** (`Faults.interrupt`): EC2's "EC2 Spot Instance Interruption Warning"
  goes to EventBridge (and from there to whatever rule targets it, as on AWS), and the instance
  is terminated `notice_s` later (120 s on AWS) with reason `Server.SpotInstanceTermination`.
- **Throttling** (`Faults.throttle`, action -> failures to come): EC2 answers
  `RequestLimitExceeded`, Lambda `TooManyRequestsException` (429). An action in
  `Faults.lose_response` fails the same way after it took effect, as when a response is lost
  on the way back: a retry must be idempotent (RunInstances' ClientToken) or it duplicates.
- **Eventual consistency** (`Faults.describe_lag_s`): DescribeInstances leaves out instances
  launched less than that long ago, as EC2's describe lags its creates.
- **IAM propagates** (`Faults.profile_propagation_s`): RunInstances naming an instance profile
  created less than that long ago fails with `InvalidParameterValue` (invalid IAM instance
  profile), as EC2 does while IAM's change spreads.
- **A function update takes time** (`Faults.function_update_s`): after a code or
  configuration update the function reports `LastUpdateStatus: InProgress` for that long, and
  another update or a publish meanwhile fails with `ResourceConflictException`, as on Lambda.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

TOKEN_TTL_S = 24 * 3600  # EC2 keeps a ClientToken for at least 24 hours
SPOT_NOTICE_S = 120.0  # EC2's warning comes two minutes before it reclaims the instance
ACCOUNT = "123456789012"  # moto's default account
MOTO_DEFAULT_TOKEN = "ABCDE"  # what moto's parser fills in when the request has none


@dataclass
class Faults:
    """What the layer is doing now: tests read the tokens seen and set pools out of capacity."""

    tokens: dict[tuple[str, str, str], tuple[tuple, Any, float]] = field(default_factory=dict)
    no_capacity: set[str] = field(default_factory=set)  # pools ("type/market") with none left
    timers: list[threading.Timer] = field(default_factory=list)  # pending terminations
    throttle: dict[str, int] = field(default_factory=dict)  # "ec2:RunInstances" -> failures
    lose_response: set[str] = field(default_factory=set)  # actions whose failure comes after
    describe_lag_s: float = 0.0
    launched_at: dict[str, float] = field(default_factory=dict)  # instance id -> when
    calls: dict[str, int] = field(default_factory=dict)  # throttled actions -> calls seen
    function_update_s: float = 0.0
    profile_propagation_s: float = 0.0
    profiles_created: dict[str, float] = field(default_factory=dict)  # profile name -> when
    updating: dict[str, float] = field(default_factory=dict)  # function name -> busy until

    def throttled(self, action: str, error: Any) -> Any:
        """Count the call; raise `error` while failures remain for `action` (before it acts,
        or after: see `take_lost`)."""
        self.calls[action] = self.calls.get(action, 0) + 1
        if action in self.lose_response:
            return error
        if self.throttle.get(action, 0) > 0:
            self.throttle[action] -= 1
            raise error
        return None

    def take_lost(self, action: str, error: Any) -> None:
        if error is not None and self.throttle.get(action, 0) > 0:
            self.throttle[action] -= 1
            raise error

    def interrupt(
        self, instance_id: str, *, region: str = "us-east-1", notice_s: float = SPOT_NOTICE_S
    ) -> None:
        """Reclaim a spot instance as EC2 does: the warning event now, termination later."""
        from moto.ec2.models import ec2_backends
        from moto.ec2.models.instances import StateReason
        from moto.events.models import events_backends

        arn = f"arn:aws:ec2:{region}:{ACCOUNT}:instance/{instance_id}"
        detail = {"instance-id": instance_id, "instance-action": "terminate"}
        events_backends[ACCOUNT][region].put_events(
            [
                {
                    "Source": "aws.ec2",
                    "DetailType": "EC2 Spot Instance Interruption Warning",
                    "Detail": json.dumps(detail),
                    "Resources": [arn],
                }
            ]
        )

        def reclaim() -> None:
            backend = ec2_backends[ACCOUNT][region]
            for inst, _ in backend.terminate_instances([instance_id]):
                inst.state_reason = StateReason(
                    "Server.SpotInstanceTermination: Spot instance termination",
                    "Server.SpotInstanceTermination",
                )

        timer = threading.Timer(notice_s, reclaim)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    def reset(self) -> None:
        """What one test set goes: capacity back, throttles and lag off, pending terminations
        cancelled."""
        self.no_capacity.clear()
        self.throttle.clear()
        self.lose_response.clear()
        self.calls.clear()
        self.describe_lag_s = 0.0
        self.function_update_s = 0.0
        self.profile_propagation_s = 0.0
        self.updating.clear()
        for t in self.timers:
            t.cancel()
        self.timers.clear()


def _pool(kw: dict) -> str:
    market = "spot" if kw.get("instance_market_options") == "spot" else "on_demand"
    return f"{kw.get('instance_type')}/{market}"


@contextlib.contextmanager
def faithful_aws() -> Iterator[Faults]:
    """Patch moto's RunInstances with every fault above; yields the `Faults` in force."""
    from moto.awslambda.models import LambdaBackend, LambdaFunction
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.instances import InstanceBackend
    from moto.ec2.responses.tags import TagResponse
    from moto.iam.models import IAMBackend

    faults = Faults()
    original = InstanceBackend.run_instances

    def run_instances(self, image_id, count, user_data, security_group_names, **kw):
        profile = _profile_of(self, kw)
        born = faults.profiles_created.get(profile or "", 0.0)
        if profile and time.time() - born < faults.profile_propagation_s:
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Value ({profile}) for parameter iamInstanceProfile.name is invalid. "
                "Invalid IAM Instance Profile name",
            )
        pool = _pool(kw)
        if pool in faults.no_capacity:  # a failed request leaves its token unused
            raise EC2ClientError(
                "InsufficientInstanceCapacity",
                f"We currently do not have sufficient {pool} capacity in the Availability "
                "Zone you requested.",
            )
        token = kw.get("client_token")
        if not token or token == MOTO_DEFAULT_TOKEN:
            return original(self, image_id, count, user_data, security_group_names, **kw)
        key = (self.account_id, self.region_name, token)
        params = (image_id, int(count), pool, repr(kw.get("launch_template")), kw.get("subnet_id"))
        hit = faults.tokens.get(key)
        if hit is not None and time.time() - hit[2] < TOKEN_TTL_S:
            if hit[0] != params:
                raise EC2ClientError(
                    "IdempotentParameterMismatch",
                    "Arguments on this idempotent request are inconsistent with arguments used "
                    f"in previous request(s) with client token {token}",
                )
            return hit[1]  # the earlier reservation, whatever became of its instances
        res = original(self, image_id, count, user_data, security_group_names, **kw)
        faults.tokens[key] = (params, res, time.time())
        return res

    def with_lag(res: Any) -> Any:
        if faults.describe_lag_s <= 0:
            return res
        cutoff = time.time() - faults.describe_lag_s
        out = []
        for r in res:
            keep = [i for i in r.instances if faults.launched_at.get(i.id, 0.0) <= cutoff]
            if keep:
                r = copy.copy(r)
                r.instances = keep
                out.append(r)
        return out

    def recorded(res: Any) -> Any:
        for i in res.instances:
            faults.launched_at.setdefault(i.id, time.time())
        return res

    def busy(name: str) -> bool:
        return time.time() < faults.updating.get(name.split(":")[-1], 0.0)

    def updates(fn: Any) -> Any:
        def call(self, function_name, *a, **kw):
            name = function_name.split(":function:")[-1].split(":")[0]
            if busy(name):
                raise _conflict(name)
            res = fn(self, function_name, *a, **kw)
            if faults.function_update_s > 0:
                faults.updating[name] = time.time() + faults.function_update_s
            return res

        return call

    config = LambdaFunction.get_configuration

    def get_configuration(self, on_create: bool = False):
        out = config(self, on_create)
        if not on_create and busy(self.function_name):
            out["LastUpdateStatus"] = "InProgress"
        return out

    make_profile = IAMBackend.create_instance_profile

    def create_instance_profile(self, name, *a, **kw):
        out = make_profile(self, name, *a, **kw)
        faults.profiles_created[name] = time.time()
        return out

    IAMBackend.create_instance_profile = create_instance_profile
    restore = (
        [(IAMBackend, "create_instance_profile", make_profile)]
        + [
            (LambdaBackend, n, getattr(LambdaBackend, n))
            for n in ("update_function_code", "update_function_configuration")
        ]
        + [(LambdaFunction, "get_configuration", config)]
    )
    for cls, n, fn in restore[1:3]:
        setattr(cls, n, updates(fn))
    LambdaFunction.get_configuration = get_configuration
    publish = LambdaBackend.publish_version

    def publish_version(self, function_name, description=""):
        if busy(function_name.split(":function:")[-1]):
            raise _conflict(function_name)
        return publish(self, function_name, description)

    LambdaBackend.publish_version = publish_version
    restore.append((LambdaBackend, "publish_version", publish))

    patches = [
        (InstanceBackend, "run_instances", "ec2:RunInstances", _ec2_throttle, recorded),
        (InstanceBackend, "describe_instances", "ec2:DescribeInstances", _ec2_throttle, with_lag),
        (InstanceBackend, "terminate_instances", "ec2:TerminateInstances", _ec2_throttle, None),
        # the API action, not moto's backend method: moto tags new instances, templates and
        # groups through that too, and EC2 never fails a RunInstances halfway on a tag throttle
        (TagResponse, "create_tags", "ec2:CreateTags", _ec2_throttle, None),
        (LambdaBackend, "invoke", "lambda:Invoke", _lambda_throttle, None),
    ]
    InstanceBackend.run_instances = run_instances
    saved = [(cls, name, getattr(cls, name)) for cls, name, *_ in patches]
    for cls, name, action, error, after in patches:
        setattr(cls, name, _throttling(faults, getattr(cls, name), action, error, after))
    try:
        yield faults
    finally:
        for cls, name, fn in [*saved, *restore]:
            setattr(cls, name, fn)
        InstanceBackend.run_instances = original


def _throttling(faults: Faults, fn: Any, action: str, error: Any, after: Any) -> Any:
    def call(self, *a, **kw):
        lost = faults.throttled(action, error())
        res = fn(self, *a, **kw)
        faults.take_lost(action, lost)
        return after(res) if after is not None else res

    return call


def _ec2_throttle() -> Exception:
    from moto.ec2.exceptions import EC2ClientError

    return EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")


def _profile_of(backend: Any, kw: dict) -> str | None:
    """The instance profile name a RunInstances call names (itself or in its template)."""
    arg = kw.get("iam_instance_profile") or {}
    if not arg and kw.get("launch_template"):
        data = backend._get_template_from_args(kw["launch_template"]).data
        arg = data.get("IamInstanceProfile") or {}
    ref = arg.get("Name") or arg.get("Arn") or ""
    return ref.rsplit("/", 1)[-1] or None


def _conflict(name: str) -> Exception:
    from moto.awslambda.exceptions import LambdaClientError

    e = LambdaClientError(
        "ResourceConflictException",
        f"The operation cannot be performed at this time. An update is in progress for "
        f"resource: {name}",
    )
    e.code = 409
    return e


def _lambda_throttle() -> Exception:
    from moto.awslambda.exceptions import LambdaClientError

    e = LambdaClientError("TooManyRequestsException", "Rate exceeded")
    e.code = 429
    return e
