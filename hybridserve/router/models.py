"""The router's per-model state (issue 14): which ready instances hold each model, its completion
and drain tables, its BATCH buffer and Lambda function, and its per-second arrivals.

An instance's cores serve every model it holds, so a request for model m waits behind all the
work queued there: each model's requests in flight drained in batches at *that* model's
profiled times, then m's own batch. `Upstream.busy` keeps that drain time up to date as requests
come and go, so a prediction stays a few reads: ratio * (base_m[q_m] + busy - drain_m[q_m]).

An instance routed for one model only (every single-model deployment: `Endpoint.models` None
and one model known) is predicted exactly as before, from its own queue and table through
`choose`; one holding several is reached through a `Slot` per (instance, model).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from hybridserve.fleet import Endpoint
from hybridserve.router.buffer import BatchParams, SpillBuffer, batch_params
from hybridserve.router.config import RouterConfig
from hybridserve.router.policy import SPILL, choose, completion_table, drain_table
from hybridserve.router.upstream import Upstream
from hybridserve.router.variants import not_loaded

# a Lambda invoker per model: a mapping, or a factory called once per model the router learns of
Invokers = Mapping[str, Any] | Callable[[str], Any]
NO_SPILL = b'{"error":"no instance can take the request and Lambda spill is off"}'


class Slot:
    """One model on an instance that holds several: that model's requests in flight there."""

    __slots__ = ("up", "model", "q")

    def __init__(self, up: Upstream, model: ModelState, q: int = 0) -> None:
        self.up = up
        self.model = model
        self.q = q

    def predicted_ms(self) -> float:
        """Unscaled ms until a new request for this model would complete on this instance."""
        m, q = self.model, self.q
        return m.base[q] + self.up.busy - m.drain[q]

    def enter(self) -> None:
        d, q = self.model.drain, self.q
        self.up.busy += d[q + 1] - d[q]
        self.q = q + 1

    def leave(self) -> None:
        d, q = self.model.drain, self.q
        if q > 0:
            self.up.busy -= d[q] - d[q - 1]
            self.q = q - 1


class ModelState:
    """Everything the router keeps for one model; created only for a model the config names
    or an instance holds, never for a name a client sent (bounded state and metric labels)."""

    __slots__ = ("name", "base", "drain", "lambda_ms", "invoker", "buffer", "metadata", "solo",
                 "shared", "second_count", "counts", "spills", "_spills_seen", "spill_rate",
                 "lambda_ratio", "_starting", "_started", "accuracy", "lambda_variant")  # fmt: skip

    def __init__(
        self,
        name: str,
        base: list[float],
        drain: list[float],
        lambda_ms: tuple[float, ...],
        counts_kept_s: int,
        invoker: Any | None = None,
    ) -> None:
        self.name = name
        self.base = base  # completion table: ms by requests of this model ahead
        self.drain = drain  # ms to drain q requests of this model, q = 0..max_queue
        self.lambda_ms = lambda_ms
        self.invoker = invoker
        self.buffer: SpillBuffer | None = None
        self.metadata: dict | None = None
        self.solo: list[Upstream] = []  # instances routed for this model only
        self.shared: list[Slot] = []  # instances holding it among others
        self.second_count = 0
        self.counts: deque[tuple[int, int]] = deque(maxlen=counts_kept_s)
        self.spills = 0
        self._spills_seen = 0
        self.spill_rate = 0.0
        self.lambda_ratio = 1.0
        self._starting: asyncio.Task | None = None
        self._started = invoker is None or not hasattr(invoker, "start")
        self.accuracy: Mapping[str, float] = {}  # a family's variants (router/variants.py)
        self.lambda_variant: str | None = None

    # ------------------------------------------------------------------ routing
    def pick(
        self, budget_ms: float, max_queue: int, allowed: frozenset[str] | None = None
    ) -> Upstream | Slot | None:
        """The candidate that completes a new request first within `budget_ms`, or None;
        `allowed`: only instances holding this model in one of these variants."""
        if allowed is not None:
            return self.among(allowed).pick(budget_ms, max_queue)
        solo = self.solo
        if not self.shared:  # the single-model path: exactly `choose`, as before
            if not solo:
                return None
            i = choose([u.outstanding for u in solo], [u.table for u in solo], budget_ms)
            return None if i == SPILL else solo[i]
        best: Upstream | Slot | None = None
        best_ms = budget_ms
        if solo:
            i = choose([u.outstanding for u in solo], [u.table for u in solo], budget_ms)
            if i != SPILL:
                best = solo[i]
                best_ms = best.table[best.outstanding]
        base, drain = self.base, self.drain
        n = len(base)
        for s in self.shared:
            u, q = s.up, s.q
            if q < n and u.outstanding < max_queue:
                ms = u.ratio * (base[q] + u.busy - drain[q])
                if ms <= best_ms and (best is None or ms < best_ms):
                    best, best_ms = s, ms
        return best

    def among(self, allowed: frozenset[str]) -> ModelState:
        """A view of this model routed only to instances holding it in an allowed variant."""
        view = ModelState(self.name, self.base, self.drain, self.lambda_ms, 1)

        def ok(u: Upstream) -> bool:
            return dict(u.endpoint.variants).get(self.name) in allowed

        view.solo = [u for u in self.solo if ok(u)]
        view.shared = [s for s in self.shared if ok(s.up)]
        return view

    def loaded_variants(self) -> dict[str, int]:
        """Instances per variant of this model now (the 409's figures)."""
        out: dict[str, int] = {}
        for u in self.instances():
            v = dict(u.endpoint.variants).get(self.name, "?")
            out[v] = out.get(v, 0) + 1
        return out

    def instances(self) -> list[Upstream]:
        return [*self.solo, *(s.up for s in self.shared)]

    def drop(self, up: Upstream) -> None:
        """Route no more of this model to `up` (it answered 404: unloaded there)."""
        self.solo = [u for u in self.solo if u is not up]
        self.shared = [s for s in self.shared if s.up is not up]

    def ready(self) -> bool:
        return bool(self.solo or self.shared) or self.invoker is not None

    # ------------------------------------------------------------------ Lambda
    async def start(self) -> None:
        """Start the invoker, once; concurrent callers wait for the same start, and a failed
        start is tried again by the next caller."""
        if self._started:
            return
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self.invoker.start())
        try:
            await asyncio.shield(self._starting)
        except Exception:
            self._starting = None
            raise
        self._started = True

    async def invoke(self, payload: bytes) -> Any:
        """The buffer's invoke for a model whose invoker may not be started yet."""
        if not self._started:
            await self.start()
        return await self.invoker.invoke(payload)

    def batch_params(self, cfg: RouterConfig, rate: float) -> BatchParams:
        """This model's BATCH size and timeout at its own spill rate and Lambda times."""
        return batch_params(
            rate,
            cfg.budget_ms * cfg.spill_slack_fraction,
            [x * self.lambda_ratio for x in self.lambda_ms],
            memory_gb=cfg.lambda_memory_gb,
            usd_per_gb_s=cfg.lambda_usd_per_gb_s,
            usd_per_request=cfg.lambda_usd_per_request,
        )

    def learn_lambda(self, duration_ms: float, n: int) -> None:
        """A warm invoke of `n` rows took `duration_ms`: the correction of its Lambda times."""
        if 0 < n < len(self.lambda_ms):
            r = duration_ms / max(self.lambda_ms[n], 1e-3)
            lr = self.lambda_ratio
            self.lambda_ratio = min(8.0, max(0.25, lr + 0.1 * (r - lr)))

    # ------------------------------------------------------------------ counts
    def close_second(self, second: int) -> None:
        self.counts.append((second, self.second_count))
        self.second_count = 0

    def take_spills(self) -> int:
        """Spills since the last call (once a second, for this model's spill rate)."""
        n, self._spills_seen = self.spills - self._spills_seen, self.spills
        return n


class ModelBook:
    """The router's models by name, each built once from the config: tables from its profile,
    its invoker (`invoker` for `cfg.model_name`, else from `invokers`) and, once the router
    runs, its buffer; `on_lambda(result, rows, model=)` sees every invoke's result."""

    def __init__(
        self,
        cfg: RouterConfig,
        invoker: Any | None,
        invokers: Invokers | None,
        on_lambda: Callable[..., None],
    ) -> None:
        if invoker is not None and isinstance(invokers, Mapping) and cfg.model_name in invokers:
            raise ValueError(f"two invokers for {cfg.model_name!r}: `invoker` and `invokers`")
        self.cfg = cfg
        self.invoker = invoker if cfg.spill else None
        self.invokers = invokers
        self.on_lambda = on_lambda
        self.by_name: dict[str, ModelState] = {}
        self.tables: dict[tuple, tuple[list[float], list[float]]] = {}
        self.started = False
        self.any_lambda = False
        names = cfg.models + tuple(invokers if isinstance(invokers, Mapping) else ())
        for name in dict.fromkeys(names):
            self.add(name)
        self.primary = self.by_name[cfg.model_name]

    def add(self, name: str) -> ModelState:
        """State for a model the config names or an instance holds (never a client's name)."""
        inv = invoker_for(self.cfg, name, self.invoker, self.invokers)
        ms = self.by_name[name] = new_model(self.cfg, name, inv, self.tables)
        self.any_lambda |= inv is not None
        if self.started and inv is not None:
            ms.buffer = self._buffer(ms)
        return ms

    def learn(self, eps: Iterable[Endpoint]) -> None:
        """State for every model a ready instance holds (the backend's names, not a client's)."""
        for e in eps:
            for name in e.models or ():
                if name not in self.by_name:
                    self.add(name)

    def upstream(self, e: Endpoint) -> Upstream:
        """The router's state of a new instance: routed solo, on its model's table, when it
        holds one known model."""
        u = Upstream(e, self.primary.base, self.cfg.upstream_timeout_s)
        names = held(u, self.by_name)
        if len(names) == 1:
            u.model = names[0]
            u.base = u.table = self.by_name[u.model].base
        return u

    def _buffer(self, ms: ModelState) -> SpillBuffer:
        return SpillBuffer(
            ms.invoker.invoke if ms._started else ms.invoke,
            ms.batch_params(self.cfg, ms.spill_rate),
            concurrency=self.cfg.lambda_concurrency,
            max_pending=self.cfg.max_spill_pending,
            on_result=partial(self.on_lambda, model=ms),
        )

    async def start(self) -> None:
        """Start the invokers of the models known now (a failure is the router's start's)."""
        self.started = True
        for ms in list(self.by_name.values()):
            if ms.invoker is not None:
                await ms.start()
                ms.buffer = self._buffer(ms)

    async def close(self) -> None:
        for ms in list(self.by_name.values()):
            if ms.buffer is not None:
                await ms.buffer.close()
            if ms.invoker is not None and hasattr(ms.invoker, "close"):
                await ms.invoker.close()
        self.started = False

    def served(self) -> list[str]:
        p = self.primary
        return [n for n, ms in self.by_name.items() if ms is p or ms.ready()]

    def close_second(self, second: int) -> None:
        for ms in self.by_name.values():
            ms.close_second(second)

    def retune(self) -> None:
        """Once a second: each model's spill rate, and its buffer's batch size and timeout."""
        for ms in self.by_name.values():
            ms.spill_rate += 0.3 * (ms.take_spills() - ms.spill_rate)
            if ms.buffer is not None:
                ms.buffer.params = ms.batch_params(self.cfg, ms.spill_rate)


def drain(counts: deque[tuple[int, int]]) -> list[tuple[int, int]]:
    """Take what `counts` holds. Called from the control loop's thread while the event loop
    appends: each popleft is atomic, so a second closed meanwhile is taken now or next time,
    never dropped (a copy then `clear` could drop it)."""
    out = []
    while True:
        try:
            out.append(counts.popleft())
        except IndexError:
            return out


def new_model(
    cfg: RouterConfig,
    name: str,
    invoker: Any | None,
    tables: dict[tuple, tuple[list[float], list[float]]],
) -> ModelState:
    """A model's state, its tables built from its profile (shared by models profiled alike)."""
    batch_ms = cfg.batch_ms_of(name)
    key = tuple(sorted(batch_ms.items()))
    if key not in tables:
        t = completion_table(batch_ms, cfg.max_batch, cfg.max_queue, cfg.delay_ms)
        d = drain_table(batch_ms, cfg.max_batch, cfg.max_queue)
        tables[key] = ([float(x) for x in t], [float(x) for x in d])
    base, drain = tables[key]
    ms = ModelState(name, base, drain, cfg.lambda_ms_of(name), cfg.counts_kept_s, invoker)
    ms.accuracy = dict(cfg.model_variants.get(name, {}))
    ms.lambda_variant = cfg.model_lambda_variant.get(name)
    return ms


def invoker_for(
    cfg: RouterConfig, name: str, primary: Any | None, invokers: Invokers | None
) -> Any | None:
    """`name`'s Lambda invoker: `primary` for `cfg.model_name`, else the mapping's or the
    factory's (None: no Lambda function for it, or spill off)."""
    if not cfg.spill:
        return None
    if name == cfg.model_name and primary is not None:
        return primary
    if isinstance(invokers, Mapping):
        return invokers.get(name)
    return None if invokers is None else invokers(name)


def lambda_serves(ms: ModelState, allowed: frozenset[str] | None) -> bool:
    """May the model's Lambda function serve a request allowing these variants (None: any)?"""
    return allowed is None or ms.lambda_variant in allowed


def nowhere(
    ms: ModelState, primary: bool, served: Iterable[str], allowed: frozenset[str] | None = None
) -> tuple[int, bytes]:
    """No instance can take the request and the model has no Lambda function: 503 while some
    instance holds it (or for `cfg.model_name`, whose fleet may be launching, as before), 404
    naming it and what the router serves when none does; 409 when the request allows only
    variants that nothing serves now."""
    if allowed is not None and not ms.among(allowed).instances():
        lam = ms.lambda_variant if ms.invoker is not None else None
        msg = not_loaded(ms.name, allowed, ms.accuracy, ms.loaded_variants(), lam)
        return 409, json.dumps({"error": msg}).encode()
    if primary:
        return 503, NO_SPILL
    if ms.solo or ms.shared:
        why = f"no instance holding model {ms.name!r} can take the request"
        return 503, json.dumps({"error": f"{why}, and it has no Lambda function"}).encode()
    names = ", ".join(repr(n) for n in served)
    why = f"model {ms.name!r} is on no ready instance and has no Lambda function"
    return 404, json.dumps({"error": f"{why}; this router serves {names}"}).encode()


def left(u: Upstream, ms: ModelState) -> None:
    """A request for `ms` left an instance holding several models (its slot is looked up now:
    the instance may have turned shared while the request was in flight)."""
    s = u.slots.get(ms.name) if u.slots is not None else None
    if s is not None:
        s.leave()
    if not u.outstanding:
        u.busy = 0.0  # no rounding drift survives an empty queue


def as_candidate(c: Upstream | Slot) -> tuple[Upstream, Slot | None]:
    return (c.up, c) if type(c) is Slot else (c, None)  # type: ignore[return-value]


def held(up: Upstream, models: Mapping[str, ModelState]) -> list[str]:
    """The known models `up` holds: its endpoint's, or every known one when it does not say."""
    names = up.endpoint.models
    return list(models) if names is None else [n for n in sorted(names) if n in models]


def assign(
    models: Mapping[str, ModelState],
    ups: Iterable[Upstream],
    dropped: set[tuple[str, str]],
    max_queue: int,
) -> None:
    """Rebuild every model's candidates from what its instances hold, less the dropped
    (instance, model) pairs. An instance routed solo whose models grew (one that does not say
    what it holds, once a second model is known) turns shared: its queue so far is its one
    model's, so that model's slot starts with it."""
    for ms in models.values():
        ms.solo, ms.shared = [], []
    for u in ups:
        names = held(u, models)
        iid = u.endpoint.instance_id
        if u.slots is None and len(names) == 1 and u.model == names[0]:
            if (iid, u.model) not in dropped:
                models[u.model].solo.append(u)
            continue
        if u.slots is None:
            u.slots = {}
            if u.model in models:
                m, q = models[u.model], min(u.outstanding, max_queue)
                u.slots[u.model] = Slot(u, m, q)
                u.busy = m.drain[q]
        for n in names:
            s = u.slots.get(n)
            if s is None:
                s = u.slots[n] = Slot(u, models[n])
            if (iid, n) not in dropped:
                models[n].shared.append(s)
