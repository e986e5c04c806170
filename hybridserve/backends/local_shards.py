"""Model-server processes grouped in shards, each instance loading the models its shard should
hold: the process half of `LocalPlacementBackend` (`hybridserve.backends.local_placement`).

A shard is a pool of LocalBackend keyed ``"<type>/<market>#s<sid>"`` and mapped to its table
pool (launch delay; the key endpoints are priced by). Its servers run ``--repository`` and
boot with the shard's desired models (``--load NAME:VARIANT``, what the shard wants at spawn
time). Afterwards each ready instance converges to what its shard wants, level-triggered, on
a small thread pool off the manager's probe loop (one call in flight per instance): unloads
first (they free the memory loads need), then loads. A failed call (409, 5xx, no answer) is
logged, counted and retried later with backoff, after re-reading the server's index (a call
that timed out may still have happened); nothing is raised into the caller.

The router sends a model to an instance only while it is confirmed loaded there in the variant
the shard wants: a model the shard no longer wants leaves the endpoint at once, a load joins it
once the server answered 200.
"""

from __future__ import annotations

import http.client
import json
import logging
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from hybridserve.backends.local import LocalBackend, _serving, _since
from hybridserve.backends.local_processes import LocalInstance
from hybridserve.config import Pool
from hybridserve.fleet import Action
from hybridserve.logs import event
from hybridserve.reconcile import Observed, reconcile

log = logging.getLogger("hybridserve.backends.local")
INDEX_FILE = "repository.yaml"
CALL_WORKERS = 4  # model calls in flight across instances (each mostly waits on its server)
FAILURES_KEPT = 1000


class ModelEvent(NamedTuple):
    """A model loaded (``load``; detail ``boot`` for a --load at spawn), unloaded (``unload``,
    ``evict`` when the plan evicted it) or refused (``load-failed``, ``unload-failed``) on one
    instance; detail is the variant, or the server's message for a failure."""

    time: float
    kind: str
    shard: str  # the shard's key
    instance: str
    model: str
    detail: str = ""


class CallFailure(NamedTuple):
    time: float
    instance: str
    call: str  # load, unload, index
    model: str
    status: int  # HTTP status; 0: no answer (refused, reset, timed out)
    message: str


@dataclass
class ShardSpec:
    pool: Pool  # the table's pool
    want: dict[str, str]  # model name -> variant every instance of the shard should serve
    why: dict[str, str] = field(default_factory=dict)  # name -> why it was last taken off


@dataclass
class Held:
    """What one instance's server holds, as its answers told; its one call in flight, and
    per model ('' for the index) consecutive failures and when the next try may go."""

    loaded: dict[str, str]
    call: tuple[str, str] | None = None  # (kind, model)
    stale: bool = False  # a call failed: read the server's index before the next one
    retry: dict[str, tuple[int, float]] = field(default_factory=dict)


class ShardProcesses(LocalBackend):
    """LocalBackend whose pools are shards and whose servers serve a model repository.

    `repository`: the directory holding ``repository.yaml``. `memory_mb`: each server's
    memory budget for models (None: the server's default, the memory available at start less
    a margin). `call_timeout_s` bounds a load or unload call; a failed one is retried after
    `retry_s`, doubling up to `retry_max_s`. Other keywords are LocalBackend's.
    """

    def __init__(
        self,
        repository: str | Path,
        *,
        memory_mb: float | None = None,
        call_timeout_s: float = 60.0,
        retry_s: float = 0.5,
        retry_max_s: float = 15.0,
        **kw: Any,
    ) -> None:
        if memory_mb is not None and not memory_mb > 0:
            raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
        if not (call_timeout_s > 0 and retry_s > 0 and retry_max_s >= retry_s):
            raise ValueError("call_timeout_s, retry_s must be > 0 and retry_max_s >= retry_s")
        self.memory_mb = memory_mb
        self.call_timeout_s = call_timeout_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self._shards: dict[str, ShardSpec] = {}
        self._held: dict[str, Held] = {}
        self._model_events: list[ModelEvent] = []
        self._failures: deque[CallFailure] = deque(maxlen=FAILURES_KEPT)
        self._failed = {"load": 0, "unload": 0, "index": 0}
        self._calls = ThreadPoolExecutor(CALL_WORKERS, thread_name_prefix="hybridserve-models")
        super().__init__(repository, [], **kw)

    def _check_artifact(self) -> None:
        if not (self.artifact / INDEX_FILE).is_file():
            raise FileNotFoundError(f"{self.artifact}: not a model repository (no {INDEX_FILE})")

    # --- shards ---------------------------------------------------------------------------

    def add_shard(self, key: str, pool: Pool, want: Mapping[str, str]) -> None:
        with self._lock:
            if key in self._shards:
                raise ValueError(f"shard {key} exists")
            self._shards[key] = ShardSpec(pool, dict(want))
            self.pools[key] = pool

    def remove_shard(self, key: str) -> None:
        """Forget a shard with no live instance (one that has some keeps them)."""
        with self._lock:
            if not self._live.get(key):
                self._shards.pop(key, None)
                self.pools.pop(key, None)
                self._live.pop(key, None)

    def set_models(self, key: str, want: Mapping[str, str], why: Mapping[str, str]) -> None:
        """What the shard's instances should serve from now on; `why` says why models were
        taken off (an ``evict`` is logged as one). Models no longer wanted leave routing now."""
        with self._lock:
            spec = self._shards[key]
            spec.want = dict(want)
            spec.why.update(why)
            self._refresh_endpoints_locked()

    def scale(self, key: str, delta: int) -> list[Action]:
        """Launch (`delta` > 0) or retire (< 0) instances of one shard, as `converge` would:
        launching ones retire first, then the most recently ready, which drain."""
        with self._lock:
            if self._closed:
                raise RuntimeError("ShardProcesses is closed")
            now = self.now()
            live = self._live.get(key, [])
            observed = [Observed(i.id, key, not _serving(i), _since(i)) for i in live]
            target = {key: max(0, len(live) + delta)}
            actions = self._execute_locked(reconcile(target, observed, now, pools=self.pools), now)
            self._ensure_thread_locked()
        return actions

    def live_counts(self) -> dict[str, int]:
        """Shard key -> instances pending, starting or ready."""
        with self._lock:
            return {k: len(v) for k, v in self._live.items() if v}

    def totals(self) -> dict[str, int]:
        """Table pool key -> live instances: what the fleet is billed for."""
        out: dict[str, int] = {}
        with self._lock:
            for key, live in self._live.items():
                if live:
                    pk = self.pools[key].key
                    out[pk] = out.get(pk, 0) + len(live)
        return out

    def model_events(self) -> list[ModelEvent]:
        with self._lock:
            return list(self._model_events)

    def failures(self) -> list[CallFailure]:
        """The last 1000 failed model calls, oldest first."""
        with self._lock:
            return list(self._failures)

    def failed(self) -> dict[str, int]:
        """Failed calls by kind (load, unload, index), since the start."""
        with self._lock:
            return dict(self._failed)

    def close(self) -> None:
        super().close()
        self._calls.shutdown(wait=True, cancel_futures=True)

    # --- hooks of LocalBackend ------------------------------------------------------------

    def _model_args(self, inst: LocalInstance) -> list[str]:
        """The repository and the shard's models as wanted now; what the server holds once
        ready (it loads every --load before it answers ready, or exits and is lost)."""
        with self._lock:
            spec = self._shards.get(inst.pool)
            want = dict(spec.want) if spec is not None else {}
            self._held[inst.id] = Held(loaded=dict(want))
        args = ["--repository", str(self.artifact)]
        for name, variant in want.items():
            args += ["--load", f"{name}:{variant}"]
        if self.memory_mb is not None:
            args += ["--memory-mb", f"{self.memory_mb:g}"]
        return args

    def _tick(self) -> None:
        super()._tick()
        self._start_calls()

    def _record_locked(self, now: float, kind: str, inst: LocalInstance) -> None:
        super()._record_locked(now, kind, inst)
        h = self._held.get(inst.id)
        if kind == "ready" and h is not None:
            for name in h.loaded:
                self._model_event_locked(now, "load", inst, name, "boot")

    def _refresh_endpoints_locked(self) -> None:
        """Ready instances priced by their table pool, each with the models it serves."""
        super()._refresh_endpoints_locked()
        eps = []
        for e in self._endpoints:
            spec, h = self._shards.get(e.pool), self._held.get(e.instance_id)
            held: dict[str, str] = {}
            if spec is not None and h is not None:
                held = {
                    n: v
                    for n, v in h.loaded.items()
                    if spec.want.get(n) == v and h.call != ("unload", n)
                }
            pool = spec.pool.key if spec is not None else e.pool
            variants = tuple(sorted(held.items()))
            eps.append(replace(e, pool=pool, models=frozenset(held), variants=variants))
        self._endpoints = tuple(eps)

    # --- model calls ----------------------------------------------------------------------

    def _start_calls(self) -> None:
        """For each ready instance with no call in flight, the next call that takes it toward
        what its shard wants, if any may go now."""
        todo: list[tuple[LocalInstance, str, str, str]] = []
        with self._lock:
            if self._closed:
                return
            now = self.now()
            for iid in [i for i, h in self._held.items() if h.call is None]:
                if self._instances[iid].state in ("retired", "lost"):
                    del self._held[iid]
            for key, live in self._live.items():
                spec = self._shards.get(key)
                for inst in live:
                    h = self._held.get(inst.id)
                    if spec is None or h is None or h.call is not None or inst.state != "ready":
                        continue
                    nxt = _next_call(h, spec.want, now)
                    if nxt is not None:
                        h.call = (nxt[0], nxt[1])
                        todo.append((inst, *nxt))
        for k, (inst, kind, name, variant) in enumerate(todo):
            try:
                self._calls.submit(self._call, inst, kind, name, variant)
            except RuntimeError:  # shut down: closing
                with self._lock:
                    for i, *_ in todo[k:]:
                        if i.id in self._held:
                            self._held[i.id].call = None
                return

    def _call(self, inst: LocalInstance, kind: str, name: str, variant: str) -> None:
        """One call to a server (on the call pool), then its outcome recorded."""
        status, text = 0, ""
        try:
            if kind == "index":
                path, body = "/v2/repository/index", {"ready": True}
            else:
                path = f"/v2/repository/models/{name}/{kind}"
                body = {"parameters": {"variant": variant}} if kind == "load" else {}
            assert inst.port is not None
            status, text = _post(self._connect_host, inst.port, path, body, self.call_timeout_s)
        except Exception as e:  # noqa: BLE001 - recorded as a failure, never raised
            status, text = 0, f"{type(e).__name__}: {e}"
        with self._lock:
            self._done_locked(inst, kind, name, variant, status, text)

    def _done_locked(
        self, inst: LocalInstance, kind: str, name: str, variant: str, status: int, text: str
    ) -> None:
        h = self._held.get(inst.id)
        if h is None:
            return
        h.call = None
        if inst.state != "ready":  # retired or lost meanwhile
            return
        now = self.now()
        loaded = _index_loaded(text) if kind == "index" and status == 200 else None
        if status == 200 and (kind != "index" or loaded is not None):
            h.retry.pop(name, None)
            if kind == "index":
                assert loaded is not None
                h.loaded, h.stale = loaded, False
            elif kind == "load":
                h.loaded[name] = variant
                self._model_event_locked(now, "load", inst, name, variant)
            else:
                h.loaded.pop(name, None)
                spec = self._shards.get(inst.pool)
                evicted = spec is not None and spec.why.get(name) == "evict"
                self._model_event_locked(now, "evict" if evicted else "unload", inst, name, variant)
            self._refresh_endpoints_locked()
            return
        fails = h.retry.get(name, (0, 0.0))[0] + 1
        h.retry[name] = (fails, now + min(self.retry_max_s, self.retry_s * 2 ** (fails - 1)))
        h.stale = True
        msg = _message(text) if status else text or "no answer"
        self._failed[kind] += 1
        self._failures.append(CallFailure(now, inst.id, kind, name, status, msg))
        self._model_event_locked(now, f"{kind}-failed", inst, name, msg)
        log.warning(
            "instance %s (%s): %s of model %s%s failed (%s, try %d): %s",
            inst.id,
            inst.pool,
            kind,
            name or "-",
            f" variant {variant}" if variant else "",
            status or "no answer",
            fails,
            msg,
        )

    def _model_event_locked(
        self, now: float, kind: str, inst: LocalInstance, model: str, detail: str
    ) -> None:
        self._model_events.append(ModelEvent(now, kind, inst.pool, inst.id, model, detail))
        event(
            log,
            "backend.model",
            kind=kind,
            instance=inst.id,
            shard=inst.pool,
            model=model,
            detail=detail,
        )


def _next_call(h: Held, want: Mapping[str, str], now: float) -> tuple[str, str, str] | None:
    """(kind, model, variant) of the next call: re-read the index after a failure, then
    unload what is not wanted (or in another variant), then load what is missing."""

    def may(key: str) -> bool:
        r = h.retry.get(key)
        return r is None or r[1] <= now

    if h.stale:
        return ("index", "", "") if may("") else None
    for name, variant in h.loaded.items():
        if want.get(name) != variant and may(name):
            return ("unload", name, variant)
    for name, variant in want.items():
        if name not in h.loaded and may(name):
            return ("load", name, variant)
    return None


def _post(host: str, port: int, path: str, body: object, timeout_s: float) -> tuple[int, str]:
    """POST a JSON body; (status, text). http.client: no proxy settings apply to loopback."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        data = json.dumps(body).encode()
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _index_loaded(text: str) -> dict[str, str] | None:
    """name -> variant of the READY models of a repository index answer; None if malformed."""
    try:
        rows = json.loads(text)
        return {str(r["name"]): str(r["version"]) for r in rows if r.get("state") == "READY"}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _message(text: str) -> str:
    """The server's error message (V2 errors are {"error": ...}), else the body's start."""
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return doc["error"]
    except ValueError:
        pass
    return text[:300]
