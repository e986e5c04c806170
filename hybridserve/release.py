"""A model version's release (issue 15): canary, blue/green or shadow, as a pure state machine.

The router calls `advance` once a second with the canary judge's verdict on the samples of the
current step (`hybridserve.canary.judge`) and acts on the state it returns: the canary's weight,
whether to mirror, which version answers. Nothing here reads a clock or a socket.

- **canary**: the new version takes `steps` of the traffic in turn (5% -> 25% -> 100% by default).
  A step lasts at least `step_min_s` and until the judge promotes it (every path it served judged
  on enough requests, none worse); a worse canary rolls back at once, at any step.
- **blue-green**: a baseline step at 0% (the stable version's samples, `step_min_s` and
  `min_requests` at least), then the whole cut-over at once.
- **shadow**: a share of the requests is mirrored to the new version, which never answers; the
  judge and an output comparison say how it would do. It ends by a manual promote (a blue/green
  cut-over) or a rollback, automatic when it is worse.

Every mode ends its cut-over with a bake at 100% (`bake_s`), judged against the stable version's
last window, during which a rollback is instant: the stable version is still served. The
rollout is `promoted` after the bake; the stable version then has no traffic left, so the plan
retires its instances as it would any idle model's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from pydantic import Field, field_validator, model_validator

from hybridserve.canary import CanaryPolicy, Verdict
from hybridserve.config_base import Strict

Mode = Literal["canary", "blue-green", "shadow"]
Phase = Literal["stepping", "shadow", "baking", "promoted", "rolled_back"]
DONE = ("promoted", "rolled_back")


class RolloutSpec(Strict):
    """What `hybridserve rollout start` asks for."""

    model: str = Field(min_length=1)  # the name clients send
    version: str = Field(min_length=1)  # the new version (its artifact manifest's version)
    served_as: str | None = None  # the model name the new version is served under
    mode: Mode = "canary"
    steps: tuple[float, ...] = (0.05, 0.25, 1.0)  # canary weights, in order, ending at 1
    shadow: float = Field(0.1, gt=0, le=1)  # share of requests mirrored (shadow mode)
    step_min_s: float = Field(10.0, ge=0)  # each step's least duration
    bake_s: float = Field(60.0, ge=0)  # at 100% before the stable version is let go
    auto: bool = True  # promote steps on the judge's word (rollbacks are always automatic)
    policy: CanaryPolicy = CanaryPolicy()

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("at least one step")
        if any(not 0 < w <= 1 for w in v):
            raise ValueError(f"each step is a weight in (0, 1], got {list(v)}")
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"steps must increase, got {list(v)}")
        if v[-1] != 1.0:
            raise ValueError(f"the last step must be 1.0 (the whole cut-over), got {v[-1]}")
        return v

    @model_validator(mode="after")
    def _name(self) -> RolloutSpec:
        if self.served_as is None:
            object.__setattr__(self, "served_as", f"{self.model}-v{self.version}")
        if self.served_as == self.model:
            raise ValueError(
                f"served_as: the new version needs a name of its own, not {self.model!r}"
            )
        return self

    def weights(self) -> tuple[float, ...]:
        """The weights this mode steps through (0.0: the blue/green baseline)."""
        if self.mode == "blue-green":
            return (0.0, 1.0)
        if self.mode == "shadow":
            return (0.0,)
        return self.steps


@dataclass(frozen=True)
class RolloutState:
    spec: RolloutSpec
    phase: Phase
    step: int  # index into spec.weights()
    weight: float  # the new version's share of the answered traffic
    started_at: float
    step_at: float  # when the current step (or phase) began: its samples start here
    reasons: tuple[str, ...] = ()  # the judge's last word
    history: tuple[str, ...] = ()  # one line per transition

    @property
    def mirroring(self) -> bool:
        return self.phase == "shadow"

    @property
    def done(self) -> bool:
        return self.phase in DONE

    @property
    def keep_stable_window(self) -> bool:
        """True while the stable version's samples of the step before the cut-over are the
        baseline (baking): the router does not reset them."""
        return self.phase == "baking"


def start(spec: RolloutSpec, now: float) -> RolloutState:
    w = spec.weights()[0]
    phase: Phase = "shadow" if spec.mode == "shadow" else "baking" if w >= 1.0 else "stepping"
    line = f"0.0s: {spec.mode} of {spec.model} version {spec.version} started at {w:.0%}"
    return RolloutState(spec, phase, 0, w, now, now, history=(line,))


def _to(
    s: RolloutState, now: float, phase: Phase, step: int, weight: float, why: str
) -> RolloutState:
    line = f"{now - s.started_at:.1f}s: {phase} at {weight:.0%} ({why})"
    return replace(
        s, phase=phase, step=step, weight=weight, step_at=now, history=(*s.history, line)
    )


def _next(s: RolloutState, now: float, why: str) -> RolloutState:
    ws = s.spec.weights()
    if s.phase == "baking":
        return _to(s, now, "promoted", s.step, 1.0, why)
    if s.phase == "shadow" or s.step + 1 >= len(ws) or ws[s.step + 1] >= 1.0:
        return _to(s, now, "baking", len(ws) - 1, 1.0, why)
    return _to(s, now, "stepping", s.step + 1, ws[s.step + 1], why)


def advance(s: RolloutState, verdict: Verdict, now: float, stable_requests: int) -> RolloutState:
    """The state after one judgement of the current step's samples. `stable_requests`: the
    stable version's requests in them (a blue/green baseline needs `min_requests`)."""
    if s.done:
        return s
    s = replace(s, reasons=verdict.reasons)
    if verdict.decision == "rollback":
        return _to(s, now, "rolled_back", s.step, 0.0, "; ".join(verdict.reasons))
    elapsed = now - s.step_at
    spec = s.spec
    if s.phase == "baking":
        if elapsed >= spec.bake_s:
            return _next(s, now, f"baked {spec.bake_s:g}s with no regression")
        return s
    if s.phase == "shadow" or not spec.auto or elapsed < spec.step_min_s:
        return s
    if s.weight == 0.0:  # the blue/green baseline: enough of the stable version seen
        if stable_requests >= spec.policy.min_requests:
            return _next(s, now, f"baseline of {stable_requests} stable requests")
        return s
    if verdict.decision == "promote":
        return _next(s, now, "; ".join(verdict.reasons))
    return s


def promote(s: RolloutState, now: float) -> RolloutState:
    """A manual promote: the next step (from shadow, the cut-over; when baking, done)."""
    if s.done:
        raise ValueError(f"the rollout of {s.spec.model} is already {s.phase}")
    return _next(s, now, "promoted by hand")


def rollback(s: RolloutState, now: float, why: str = "rolled back by hand") -> RolloutState:
    if s.done:
        raise ValueError(f"the rollout of {s.spec.model} is already {s.phase}")
    return _to(s, now, "rolled_back", s.step, 0.0, why)


def status(s: RolloutState, now: float) -> dict:
    """The JSON `rollout status` prints."""
    spec = s.spec
    return {
        "model": spec.model,
        "version": spec.version,
        "served_as": spec.served_as,
        "mode": spec.mode,
        "phase": s.phase,
        "weight": s.weight,
        "step": s.step,
        "steps": list(spec.weights()),
        "elapsed_s": round(now - s.started_at, 3),
        "in_step_s": round(now - s.step_at, 3),
        "reasons": list(s.reasons),
        "history": list(s.history),
    }
