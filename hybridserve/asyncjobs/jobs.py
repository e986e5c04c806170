"""Submitting an async job and reading its status: validated, idempotent by id, one record per
job in the store.

A request is a V2 inference request given inline, or ``{"input_uri": ...}`` naming one in the
store (up to `MAX_INPUT_BYTES`, 1 GB as SageMaker's async inference). Either way the input is in
the store before the job is queued, so the queue's message stays small (SQS: 256 KB). A client
may give the job's id (`job_id`, at the top level of a URI request or in an inline request's
`parameters`): submitting the same id again returns the first job and queues nothing, so a
client retrying a submit after a lost answer cannot run a job twice.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from hybridserve.asyncjobs.queue import JobQueue
from hybridserve.asyncjobs.store import InputError, ObjectStore

MAX_INPUT_BYTES = 1 << 30
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class JobError(Exception):
    """A submit or status request refused: its HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def record_key(job_id: str) -> str:
    return f"jobs/{job_id}.json"


def result_key(job_id: str) -> str:
    return f"results/{job_id}.json"


def failure_key(job_id: str) -> str:
    return f"failures/{job_id}.json"


@dataclass(frozen=True)
class Submitted:
    record: dict
    duplicate: bool  # the id was submitted before: nothing new was queued


def submit(
    queue: JobQueue,
    store: ObjectStore,
    model: str,
    body: bytes,
    *,
    deadline_s: float,
    now: float,
) -> Submitted:
    """Queue one job for `model`; JobError(400/413) naming what is wrong with the request."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise JobError(400, f"async request: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise JobError(400, "async request: expected a JSON object")
    inline = "input_uri" not in doc
    if inline and not isinstance(doc.get("inputs"), list):
        raise JobError(400, "async request: expected 'inputs' (a V2 request) or 'input_uri'")
    params = doc.get("parameters") if inline else doc
    params = params if isinstance(params, dict) else {}
    job_id = params.get("job_id", uuid.uuid4().hex)
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise JobError(400, f"job_id: expected 1-64 letters, digits, '_' or '-', got {job_id!r}")
    notify = params.get("notify", False)
    if not isinstance(notify, bool):
        raise JobError(400, f"notify: expected true or false, got {notify!r}")
    old = store.get(record_key(job_id))
    if old is not None:
        return Submitted(json.loads(old), True)
    if inline:
        input_key = f"inputs/{job_id}.json"
        size = len(body)
        store.put(input_key, body)
    else:
        uri = doc["input_uri"]
        if not isinstance(uri, str):
            raise JobError(400, f"input_uri: expected a string, got {uri!r}")
        try:
            input_key = store.key_of(uri)
        except InputError as e:
            raise JobError(400, str(e)) from None
        size = store.size(input_key)
        if size is None:
            raise JobError(400, f"input_uri {uri!r}: no such object")
        if size > MAX_INPUT_BYTES:
            raise JobError(413, f"input_uri {uri!r}: {size} bytes, over the {MAX_INPUT_BYTES}")
    record = {
        "id": job_id,
        "model": model,
        "input_key": input_key,
        "input_uri": store.uri(input_key),
        "output_uri": store.uri(result_key(job_id)),
        "bytes": size,
        "submitted_at": now,
        "deadline_s": deadline_s,
        "notify": notify,
    }
    queue.send(json.dumps(record))
    if not store.put_if_absent(record_key(job_id), json.dumps(record).encode()):
        return Submitted(json.loads(store.get(record_key(job_id)) or b"{}"), True)
    return Submitted(record, False)


def status(store: ObjectStore, job_id: str) -> dict:
    """The job's record with its state: pending, completed (with its output URI) or failed
    (with the error); JobError(404) for an id never submitted."""
    if not JOB_ID.fullmatch(job_id):
        raise JobError(404, f"unknown job id {job_id!r}")
    raw = store.get(record_key(job_id))
    if raw is None:
        raise JobError(404, f"unknown job id {job_id!r}")
    doc = json.loads(raw)
    failure = store.get(failure_key(job_id))
    if store.size(result_key(job_id)) is not None:
        doc["status"] = "completed"
    elif failure is not None:
        doc["status"] = "failed"
        doc["error"] = json.loads(failure)["error"]
    else:
        doc["status"] = "pending"
    return doc
