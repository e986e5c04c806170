"""Model loads and unloads on V2 model-repository servers, level-triggered: each ready server
is taken toward the models its shard wants, one call in flight per server, on a small thread
pool off the caller's loop. Unloads go first (they free the memory loads need), then loads. A
failed call (409, 5xx, no answer) is logged, counted and retried later with backoff, after
re-reading the server's index (a call that timed out may still have happened); nothing is
raised into the caller.

The placement backends share it: local model-server processes
(`hybridserve.backends.local_shards`) and EC2 instances. They say which servers exist and
what each should hold (`start`); this module says what each holds, as its answers told
(`serving`), so the router sends a model only where it is confirmed loaded.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

from hybridserve.logs import event

log = logging.getLogger("hybridserve.backends.local")
CALL_WORKERS = 4  # model calls in flight across servers (each mostly waits on its server)
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


@dataclass(frozen=True)
class Target:
    """A ready server and what its shard wants it to hold (name -> variant); `why`: why a
    model was last taken off (``evict`` is logged as an eviction)."""

    instance: str
    shard: str
    host: str
    port: int
    want: Mapping[str, str]
    why: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Held:
    """What one server holds, as its answers told; its one call in flight, and per model
    ('' for the index) consecutive failures and when the next try may go."""

    shard: str
    loaded: dict[str, str]
    call: tuple[str, str] | None = None  # (kind, model)
    stale: bool = False  # a call failed: read the server's index before the next one
    retry: dict[str, tuple[int, float]] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)  # as of the call's start


class ModelCalls:
    """The calls that take servers to what their shards want. `clock` stamps events and
    backoffs; `on_change` runs (outside this object's lock) after a call changed what a server
    holds, so the owner can refresh its endpoints. Thread-safe."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        on_change: Callable[[], None] = lambda: None,
        call_timeout_s: float = 60.0,
        retry_s: float = 0.5,
        retry_max_s: float = 15.0,
        workers: int = CALL_WORKERS,
    ) -> None:
        if not (call_timeout_s > 0 and retry_s > 0 and retry_max_s >= retry_s):
            raise ValueError("call_timeout_s, retry_s must be > 0 and retry_max_s >= retry_s")
        self.clock = clock
        self.on_change = on_change
        self.call_timeout_s = call_timeout_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self._lock = threading.Lock()
        self._held: dict[str, Held] = {}
        self._events: list[ModelEvent] = []
        self._failures: deque[CallFailure] = deque(maxlen=FAILURES_KEPT)
        self._failed = {"load": 0, "unload": 0, "index": 0}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="hybridserve-models")
        self._closed = False

    # --- what servers hold ----------------------------------------------------------------

    def boot(self, instance: str, shard: str, loaded: Mapping[str, str]) -> None:
        """A server starting with `loaded` (its --load models; {} for none)."""
        with self._lock:
            self._held[instance] = Held(shard, dict(loaded))

    def booted(self, instance: str) -> None:
        """The server answered ready: its boot models are loaded (one event each)."""
        with self._lock:
            h = self._held.get(instance)
            if h is not None:
                now = self.clock()
                for name in h.loaded:
                    self._event_locked(now, "load", h.shard, instance, name, "boot")

    def forget(self, instances: Iterable[str]) -> None:
        """Servers retired or lost: no more calls, and an answer still due is dropped."""
        with self._lock:
            for i in instances:
                self._held.pop(i, None)

    def serving(self, instance: str, want: Mapping[str, str]) -> dict[str, str]:
        """The models `instance` holds in the variant wanted, none of them being unloaded."""
        with self._lock:
            h = self._held.get(instance)
            if h is None:
                return {}
            return {
                n: v for n, v in h.loaded.items() if want.get(n) == v and h.call != ("unload", n)
            }

    def events(self) -> list[ModelEvent]:
        with self._lock:
            return list(self._events)

    def failures(self) -> list[CallFailure]:
        """The last 1000 failed model calls, oldest first."""
        with self._lock:
            return list(self._failures)

    def failed(self) -> dict[str, int]:
        """Failed calls by kind (load, unload, index), since the start."""
        with self._lock:
            return dict(self._failed)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- calls ----------------------------------------------------------------------------

    def start(self, ready: Iterable[Target], alive: Collection[str] | None = None) -> None:
        """For each ready server with no call in flight, the next call toward what it should
        hold, if any may go now; servers not in `alive` (when given) are forgotten. A server
        not seen before (one adopted, not booted here) is read first: its index."""
        todo: list[tuple[Target, str, str, str]] = []
        with self._lock:
            if self._closed:
                return
            if alive is not None:
                for iid in [i for i in self._held if i not in alive]:
                    del self._held[iid]
            now = self.clock()
            for t in ready:
                h = self._held.get(t.instance)
                if h is None:
                    h = self._held[t.instance] = Held(t.shard, {}, stale=True)
                if h.call is not None:
                    continue
                nxt = _next_call(h, t.want, now)
                if nxt is not None:
                    h.call, h.why = (nxt[0], nxt[1]), dict(t.why)
                    todo.append((t, *nxt))
        for k, (t, kind, name, variant) in enumerate(todo):
            try:
                self._pool.submit(self._call, t, kind, name, variant)
            except RuntimeError:  # shut down: closing
                with self._lock:
                    for u, *_ in todo[k:]:
                        if u.instance in self._held:
                            self._held[u.instance].call = None
                return

    def _call(self, t: Target, kind: str, name: str, variant: str) -> None:
        """One call to a server (on the pool), then its outcome recorded."""
        status, text = 0, ""
        try:
            if kind == "index":
                path, body = "/v2/repository/index", {"ready": True}
            else:
                path = f"/v2/repository/models/{name}/{kind}"
                body = {"parameters": {"variant": variant}} if kind == "load" else {}
            status, text = _post(t.host, t.port, path, body, self.call_timeout_s)
        except Exception as e:  # noqa: BLE001 - recorded as a failure, never raised
            status, text = 0, f"{type(e).__name__}: {e}"
        with self._lock:
            changed = self._done_locked(t, kind, name, variant, status, text)
        if changed:
            self.on_change()

    def _done_locked(
        self, t: Target, kind: str, name: str, variant: str, status: int, text: str
    ) -> bool:
        h = self._held.get(t.instance)
        if h is None:  # retired or lost meanwhile
            return False
        h.call = None
        now = self.clock()
        loaded = _index_loaded(text) if kind == "index" and status == 200 else None
        if status == 200 and (kind != "index" or loaded is not None):
            h.retry.pop(name, None)
            if kind == "index":
                assert loaded is not None
                h.loaded, h.stale = loaded, False
            elif kind == "load":
                h.loaded[name] = variant
                self._event_locked(now, "load", t.shard, t.instance, name, variant)
            else:
                h.loaded.pop(name, None)
                why = "evict" if h.why.get(name) == "evict" else "unload"
                self._event_locked(now, why, t.shard, t.instance, name, variant)
            return True
        fails = h.retry.get(name, (0, 0.0))[0] + 1
        h.retry[name] = (fails, now + min(self.retry_max_s, self.retry_s * 2 ** (fails - 1)))
        h.stale = True
        msg = _message(text) if status else text or "no answer"
        self._failed[kind] += 1
        self._failures.append(CallFailure(now, t.instance, kind, name, status, msg))
        self._event_locked(now, f"{kind}-failed", t.shard, t.instance, name, msg)
        log.warning(
            "instance %s (%s): %s of model %s%s failed (%s, try %d): %s",
            t.instance,
            t.shard,
            kind,
            name or "-",
            f" variant {variant}" if variant else "",
            status or "no answer",
            fails,
            msg,
        )
        return False

    def _event_locked(
        self, now: float, kind: str, shard: str, instance: str, model: str, detail: str
    ) -> None:
        self._events.append(ModelEvent(now, kind, shard, instance, model, detail))
        event(
            log,
            "backend.model",
            kind=kind,
            instance=instance,
            shard=shard,
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
    """POST a JSON body; (status, text). http.client: no proxy settings apply."""
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
