"""The job queue, with SQS's semantics, so that what runs locally is what runs on AWS.

A received message is invisible for its visibility timeout; the worker deletes it when the job is
done. A worker that dies mid-job never deletes it, so it is received again once the timeout has
passed, its receive count one higher. A worker that fails a job on its last allowed receive, or
finds its input poison, moves it to the dead-letter queue itself, with the error; a message
received `max_receives` times and never finished (its workers died) goes there on the next
receive, as SQS's redrive policy sends it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Message:
    body: str
    receipt: str  # what delete and change_visibility take
    receives: int  # 1 on the first receive
    sent_at: float  # wall clock, seconds


class JobQueue(Protocol):
    def send(self, body: str) -> None: ...

    max_receives: int

    def receive(self, max_messages: int, visibility_s: float) -> list[Message]: ...

    def delete(self, receipt: str) -> None: ...

    def dead_letter(self, message: Message, error: str) -> None:
        """Move a message to the dead-letter queue now, with `error` (a poison input)."""

    def depth(self) -> tuple[int, int, float]:
        """(visible messages, in flight, age in seconds of the oldest message; 0 when empty)."""


@dataclass
class _Entry:
    body: str
    sent_at: float
    receives: int = 0
    visible_at: float = 0.0
    receipt: str = ""


@dataclass
class LocalQueue:
    """An in-process queue with SQS's visibility and redrive; thread-safe."""

    max_receives: int = 3
    clock: Callable[[], float] = time.time
    dead: list[tuple[str, str]] = field(default_factory=list)  # (body, error)
    _entries: dict[int, _Entry] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, body: str) -> None:
        with self._lock:
            now = self.clock()
            self._entries[next(self._ids)] = _Entry(body, now, visible_at=now)

    def receive(self, max_messages: int, visibility_s: float) -> list[Message]:
        out = []
        with self._lock:
            now = self.clock()
            for key in sorted(self._entries):
                e = self._entries[key]
                if e.visible_at > now:
                    continue
                if e.receives >= self.max_receives:  # redrive: to the dead-letter queue
                    del self._entries[key]
                    self.dead.append((e.body, f"received {e.receives} times, never done"))
                    continue
                e.receives += 1
                e.visible_at = now + visibility_s
                e.receipt = f"{key}:{e.receives}"
                out.append(Message(e.body, e.receipt, e.receives, e.sent_at))
                if len(out) >= max_messages:
                    break
        return out

    def _live(self, receipt: str) -> int | None:
        key = int(receipt.split(":")[0])
        e = self._entries.get(key)
        return key if e is not None and e.receipt == receipt else None  # a stale receipt: no-op

    def delete(self, receipt: str) -> None:
        with self._lock:
            key = self._live(receipt)
            if key is not None:
                del self._entries[key]

    def dead_letter(self, message: Message, error: str) -> None:
        with self._lock:
            key = self._live(message.receipt)
            if key is not None:
                del self._entries[key]
                self.dead.append((message.body, error))

    def depth(self) -> tuple[int, int, float]:
        with self._lock:
            now = self.clock()
            visible = sum(e.visible_at <= now for e in self._entries.values())
            oldest = min((e.sent_at for e in self._entries.values()), default=now)
            return visible, len(self._entries) - visible, max(0.0, now - oldest)
