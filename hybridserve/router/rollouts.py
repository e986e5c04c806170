"""The router's side of a release (issue 15): which version answers each request, the samples
the canary judge reads, the guard that retries a failed canary request on the stable version,
and the shadow's mirror. The decisions are `hybridserve.release`'s and `hybridserve.canary`'s;
this module only applies them to requests.

The new version is a model of its own in the router (its `served_as` name): instances hold it
and it has its own Lambda function, so it is routed, spilled and counted like any model. Its
arrivals reach the plan as that model's, which is how the plan carries both versions' capacity
during a rollout, and drops the old one's when its traffic ends.

- A request for the model goes to the new version with the rollout's weight, sticky per
  `x-request-key` (router/split.py); a path naming a version (`/versions/V/`) pins it.
- Samples are kept per version and path (fleet, Lambda): what the judge compares.
- Zero lost requests: a server error from the new version is recorded for the judge and the
  request is answered by the stable version instead, so neither a bad canary nor a rollback
  costs a client its answer.
- Shadow: after the stable version has answered, a share of requests is sent to the new version
  too (at most `MIRRORS` at a time, never delaying the answer), its outputs compared.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from hybridserve.canary import PathSample, judge
from hybridserve.logs import event
from hybridserve.release import (
    RolloutSpec,
    RolloutState,
    advance,
    promote,
    rollback,
    start,
)
from hybridserve.release import status as release_status
from hybridserve.router.asgi import model_path
from hybridserve.router.split import choose

if TYPE_CHECKING:
    from hybridserve.router.app import Router

log = logging.getLogger("hybridserve.router")

KEY_HEADER = b"x-request-key"
SERVED_HEADER = b"x-hybridserve-model"  # on each answer during a rollout: the version's name
KEPT = 5000  # latencies kept per version and path (the judge's window)
MIRRORS = 32  # shadow requests in flight at most
PATHS = {"fleet": "fleet", "retry": "fleet", "lambda": "lambda"}


class Capture:
    """An ASGI `send` that keeps the response: the guard decides whether the client gets it."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.status = 0
        self.body = b""

    async def __call__(self, msg: dict) -> None:
        self.messages.append(msg)
        if msg["type"] == "http.response.start":
            self.status = msg["status"]
        else:
            self.body += msg.get("body", b"")

    async def replay(self, send: Callable, served: str) -> None:
        for m in self.messages:
            if m["type"] == "http.response.start":
                m = {**m, "headers": [*m["headers"], (SERVED_HEADER, served.encode())]}
            await send(m)


class Samples:
    """Requests, server errors and successful latencies per (version label, path)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], list[int]] = {}
        self.latency: dict[tuple[str, str], deque[float]] = {}

    def record(self, label: str, route: str, status: int, ms: float) -> None:
        path = PATHS.get(route)
        if path is None or 400 <= status < 500:  # refused, or the client's fault
            return
        k = (label, path)
        c = self.counts.setdefault(k, [0, 0])
        c[0] += 1
        if status >= 500:
            c[1] += 1
        else:
            self.latency.setdefault(k, deque(maxlen=KEPT)).append(ms)

    def of(self, label: str) -> dict[str, PathSample]:
        return {
            path: PathSample(n, e, np.fromiter(self.latency.get((lab, path), ()), float))
            for (lab, path), (n, e) in self.counts.items()
            if lab == label
        }

    def requests(self, label: str) -> int:
        return sum(n for (lab, _), (n, _) in self.counts.items() if lab == label)

    def reset(self, label: str) -> None:
        for d in (self.counts, self.latency):
            for k in [k for k in d if k[0] == label]:
                del d[k]


class Rollout:
    """One model's release as the router applies it."""

    def __init__(self, spec: RolloutSpec, stable: str, now: float) -> None:
        self.spec = spec
        self.stable = stable  # the served name answering until the cut-over
        self.state = start(spec, now)
        self.samples = Samples()
        self.compared = 0  # shadow outputs compared
        self.agreed = 0  # ... with the same top-1 on every output
        self.mirrors_skipped = 0
        self.in_flight = 0

    @property
    def canary(self) -> str:
        assert self.spec.served_as is not None
        return self.spec.served_as

    def answering(self) -> str:
        """The served name that answers unsplit requests once the rollout is over."""
        return self.canary if self.state.phase == "promoted" else self.stable

    def pick(self, key: str | None) -> str:
        w = self.state.weight
        if self.state.done or w <= 0.0:
            return self.answering()
        if w >= 1.0:
            return self.canary
        # the canary's slice first: a key keeps its version as the weight grows
        return choose(((self.canary, w), (self.stable, 1.0 - w)), key)

    def status(self, now: float) -> dict:
        doc = release_status(self.state, now)
        doc["stable"] = self.stable
        doc["samples"] = {
            f"{lab}/{path}": {"requests": n, "errors": e}
            for (lab, path), (n, e) in sorted(self.samples.counts.items())
        }
        if self.spec.mode == "shadow":
            doc["shadow"] = {
                "compared": self.compared,
                "agreement": self.agreed / self.compared if self.compared else None,
                "skipped": self.mirrors_skipped,
            }
        return doc


class Rollouts:
    """The router's rollouts, one per model at a time; stepped by the router's ticker."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.by_model: dict[str, Rollout] = {}
        self._tasks: set[asyncio.Task] = set()
        self.rollbacks = 0
        self.promotions = 0

    # ------------------------------------------------------------------ control
    def start(self, spec: RolloutSpec, now: float) -> Rollout:
        """LookupError (404) for a model or version the router does not serve; ValueError
        (409) when one is under way for the model."""
        models = self.router.models
        for name, what in ((spec.model, "model"), (spec.served_as, "served_as")):
            if name not in models:
                served = ", ".join(repr(n) for n in self.router.served())
                hint = (
                    f" (serve the new version as a model of the deployment: a `models:` entry "
                    f"named {name!r})"
                    if what == "served_as"
                    else ""
                )
                raise LookupError(
                    f"{what}: unknown model {name!r}; this router serves {served}{hint}"
                )
        old = self.by_model.get(spec.model)
        if old is not None and not old.state.done:
            raise ValueError(
                f"a {old.spec.mode} of {spec.model} to version {old.spec.version} is under way "
                f"({old.state.phase} at {old.state.weight:.0%}): promote or roll it back first"
            )
        stable = old.answering() if old is not None else spec.model
        if spec.served_as == stable:
            raise ValueError(f"served_as: {stable!r} is already the version answering")
        ro = self.by_model[spec.model] = Rollout(spec, stable, now)
        event(log, "router.rollout", model=spec.model, line=ro.state.history[-1])
        return ro

    def get(self, model: str) -> Rollout:
        ro = self.by_model.get(model)
        if ro is None:
            raise LookupError(f"no rollout of model {model!r}; rollouts: {sorted(self.by_model)}")
        return ro

    def promote(self, model: str, now: float) -> Rollout:
        ro = self.get(model)
        self._set(ro, promote(ro.state, now))
        return ro

    def rollback(self, model: str, now: float) -> Rollout:
        ro = self.get(model)
        self._set(ro, rollback(ro.state, now))
        return ro

    def step(self, now: float) -> None:
        """Judge each rollout under way on its current window and act on the verdict."""
        for ro in list(self.by_model.values()):
            if ro.state.done:
                continue
            verdict = judge(ro.samples.of("stable"), ro.samples.of("canary"), ro.spec.policy)
            self._set(ro, advance(ro.state, verdict, now, ro.samples.requests("stable")))

    def _set(self, ro: Rollout, new: RolloutState) -> None:
        old, ro.state = ro.state, new
        if new.step_at == old.step_at:
            return
        ro.samples.reset("canary")  # a new step is judged on its own requests
        if not new.keep_stable_window:
            ro.samples.reset("stable")
        if new.phase == "rolled_back":
            self.rollbacks += 1
        elif new.phase == "promoted":
            self.promotions += 1
        level = logging.WARNING if new.phase == "rolled_back" else logging.INFO
        event(log, "router.rollout", level=level, model=ro.spec.model, line=new.history[-1])

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ requests
    async def serve(
        self, ro: Rollout, body: bytes, headers: list, send: Callable, version: str | None
    ) -> None:
        """Answer one request for a model with a rollout: split, guard, sample, mirror."""
        router = self.router
        if version is not None:  # pinned: the new version by its version, else as before
            name, version = (
                (ro.canary, None) if version == ro.spec.version else (ro.stable, version)
            )
            await router.infer(
                _path(name, version), body, headers, send, router.models[name], version
            )
            return
        key = next((v.decode("latin-1") for k, v in headers if k == KEY_HEADER), None)
        name = ro.pick(key)
        sampling = not ro.state.done
        label = "canary" if name == ro.canary else "stable"
        cap = Capture()
        t0 = time.perf_counter()
        route = await router.infer(_path(name, None), body, headers, cap, router.models[name])
        if sampling:
            ro.samples.record(label, route, cap.status, (time.perf_counter() - t0) * 1000.0)
        if label == "canary" and cap.status >= 500 and not ro.state.done:
            # the guard: the stable version answers what the new one failed
            cap, label, name, t0 = Capture(), "stable", ro.stable, time.perf_counter()
            route = await router.infer(_path(name, None), body, headers, cap, router.models[name])
            ro.samples.record(label, route, cap.status, (time.perf_counter() - t0) * 1000.0)
        await cap.replay(send, name)
        if ro.state.mirroring and label == "stable" and cap.status == 200:
            self._mirror(ro, body, headers, cap.body)

    def _mirror(self, ro: Rollout, body: bytes, headers: list, answer: bytes) -> None:
        if random.random() >= ro.spec.shadow:
            return
        if ro.in_flight >= MIRRORS:
            ro.mirrors_skipped += 1
            return
        ro.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._shadow(ro, body, headers, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, ro: Rollout, body: bytes, headers: list, answer: bytes) -> None:
        try:
            cap = Capture()
            t0 = time.perf_counter()
            ms = self.router.models[ro.canary]
            route = await self.router.infer(_path(ro.canary, None), body, headers, cap, ms)
            if not ro.state.mirroring:
                return
            ro.samples.record("canary", route, cap.status, (time.perf_counter() - t0) * 1000.0)
            if cap.status == 200:
                same = same_top1(answer, cap.body)
                if same is not None:
                    ro.compared += 1
                    ro.agreed += same
        except Exception:  # noqa: BLE001 - a mirror never touches the answered request
            log.exception("shadow request to %s failed", ro.canary)
        finally:
            ro.in_flight -= 1

    # ------------------------------------------------------------------ metrics
    def families(self) -> list[Metric]:
        w = GaugeMetricFamily(
            "hybridserve_rollout_weight",
            "Share of a model's requests the new version answers",
            labels=["model", "version", "phase"],
        )
        for ro in self.by_model.values():
            w.add_metric([ro.spec.model, ro.spec.version, ro.state.phase], ro.state.weight)
        ends = CounterMetricFamily(
            "hybridserve_rollout_ends", "Rollouts ended, by how", labels=["result"]
        )
        ends.add_metric(["promoted"], self.promotions)
        ends.add_metric(["rolled_back"], self.rollbacks)
        return [w, ends]


def _path(name: str, version: str | None) -> str:
    return model_path(name, version) + "/infer"


def same_top1(a: bytes, b: bytes) -> bool | None:
    """Whether two V2 JSON responses have the same top-1 in every output (None: not comparable,
    such as binary responses)."""
    try:
        da, db = json.loads(a), json.loads(b)
        oa = {o["name"]: o["data"] for o in da["outputs"]}
        ob = {o["name"]: o["data"] for o in db["outputs"]}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    if set(oa) != set(ob):
        return False
    return all(_top1(oa[n]) == _top1(ob[n]) for n in oa)


def _top1(data: Any) -> Any:
    try:
        x = np.asarray(data, dtype=float)
    except (TypeError, ValueError):
        return data  # strings, labels: compared as they are
    return int(np.argmax(x)) if x.size else None
