"""Running one async job to completion exactly once: what every worker, fleet or Lambda, does
with a message it received.

- A job whose result exists already is done: its message is deleted, nothing runs again
  (a duplicate submit, or a worker that died after writing the result).
- The result is written with `put_if_absent`: of two workers that ran the same job (the first
  one slow past its visibility timeout) exactly one result stays.
- The message is deleted only after the result is written: a worker killed mid-job leaves it to
  come back after its visibility timeout.
- A poison input (the model answers 4xx: the request is wrong, and would be every time) goes to
  the dead-letter queue at once, with the error, and a failure record that `status` reports.
  Any other failure is retried on the next receive, up to the queue's `max_receives`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from hybridserve.asyncjobs.jobs import failure_key, result_key
from hybridserve.asyncjobs.queue import JobQueue, Message
from hybridserve.asyncjobs.store import ObjectStore
from hybridserve.logs import event

log = logging.getLogger("hybridserve.async")

# (model, V2 request bytes) -> (HTTP status, response bytes)
Infer = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]
Outcome = Literal["completed", "duplicate", "poison", "failed", "retry"]
# queue and store calls leave the event loop: on AWS each is a network call, and the loop is
# the router's
io = asyncio.to_thread


class Notifier(Protocol):
    def publish(self, doc: dict) -> None:
        """Tell the client a job ended (SNS on AWS)."""


class FileNotifier:
    """Notifications as JSON lines in a file: the local stand-in for an SNS topic."""

    def __init__(self, path) -> None:
        self.path = path

    def publish(self, doc: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(doc) + "\n")


async def run_job(
    msg: Message,
    queue: JobQueue,
    store: ObjectStore,
    infer: Infer,
    notifier: Notifier | None = None,
) -> Outcome:
    try:
        job = json.loads(msg.body)
        job_id, model, input_key = job["id"], job["model"], job["input_key"]
    except (ValueError, KeyError, TypeError) as e:
        await io(queue.dead_letter, msg, f"malformed job message: {type(e).__name__}: {e}")
        return "poison"
    if await io(store.size, result_key(job_id)) is not None:
        await io(queue.delete, msg.receipt)
        return "duplicate"
    data = await io(store.get, input_key)
    if data is None:
        return _fail(
            msg, queue, store, job, 400, f"input {job.get('input_uri')}: no such object", notifier
        )
    t0 = time.perf_counter()
    try:
        code, payload = await infer(model, data)
    except Exception as e:  # noqa: BLE001 - a worker's failure is the job's retry, not its end
        code, payload = 503, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
    if code != 200:
        return await _fail(msg, queue, store, job, code, _error_of(payload), notifier)
    wrote = await io(store.put_if_absent, result_key(job_id), payload)
    await io(queue.delete, msg.receipt)
    if wrote:
        event(log, "async.completed", job=job_id, seconds=round(time.perf_counter() - t0, 4))
        if notifier is not None and job.get("notify"):
            doc = {"id": job_id, "status": "completed", "output_uri": job["output_uri"]}
            await io(notifier.publish, doc)
    return "completed" if wrote else "duplicate"


def _error_of(payload: bytes) -> str:
    try:
        return str(json.loads(payload)["error"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return payload[:200].decode("utf-8", "replace")


async def _fail(
    msg: Message,
    queue: JobQueue,
    store: ObjectStore,
    job: dict,
    code: int,
    error: str,
    notifier: Notifier | None,
) -> Outcome:
    poison = 400 <= code < 500
    if not poison and msg.receives < queue.max_receives:
        event(log, "async.retry", level=logging.WARNING, job=job["id"], error=error)
        return "retry"  # visible again after the timeout
    why = f"HTTP {code}: {error}" if poison else f"failed {msg.receives} times; last: {error}"
    await io(store.put, failure_key(job["id"]), json.dumps({"error": why}).encode())
    await io(queue.dead_letter, msg, why)
    event(log, "async.dead_letter", level=logging.WARNING, job=job["id"], error=why)
    if notifier is not None and job.get("notify"):
        await io(notifier.publish, {"id": job["id"], "status": "failed", "error": why})
    return "poison" if poison else "failed"
