"""The router's async endpoints (behind its API key, like every other route):

- ``POST /v2/models/{model}/async-infer``: a V2 request inline, or ``{"input_uri": ...}``;
  202 with the job's id, its status URL and where its result will be (200 for a job id
  submitted before: nothing new is queued);
- ``GET /v2/jobs/{id}``: pending, completed (with `output_uri`) or failed (with the error);
  404 for an id never submitted.

Store and queue calls run on a worker thread: a large inline input written to the store never
holds up the router's event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from hybridserve.asyncjobs import jobs
from hybridserve.asyncjobs.queue import JobQueue
from hybridserve.asyncjobs.store import ObjectStore
from hybridserve.router.asgi import reply_json


@dataclass
class AsyncFront:
    queue: JobQueue
    store: ObjectStore
    models: frozenset[str]  # the models with async workers
    deadline_s: float

    async def submit(self, model: str, body: bytes, send: Callable) -> None:
        if model not in self.models:
            have = ", ".join(sorted(self.models))
            msg = f"model {model!r} takes no async jobs here; async models: {have}"
            await reply_json(send, 404, {"error": msg})
            return
        try:
            done = await asyncio.to_thread(
                jobs.submit,
                self.queue,
                self.store,
                model,
                body,
                deadline_s=self.deadline_s,
                now=time.time(),
            )
        except jobs.JobError as e:
            await reply_json(send, e.status, {"error": e.message})
            return
        r = done.record
        doc = {
            "id": r["id"],
            "status_url": f"/v2/jobs/{r['id']}",
            "output_uri": r["output_uri"],
            "duplicate": done.duplicate,
        }
        await reply_json(send, 200 if done.duplicate else 202, doc)

    async def status(self, job_id: str, send: Callable) -> None:
        try:
            doc = await asyncio.to_thread(jobs.status, self.store, job_id)
        except jobs.JobError as e:
            await reply_json(send, e.status, {"error": e.message})
            return
        await reply_json(send, 200, doc)
