"""`hybridserve async submit|status`: asynchronous inference through a running router with
`async_jobs.enabled` (hybridserve/asyncjobs/front.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from hybridserve.cli.common import KEY, URL, UserError, call


@click.group(name="async")
def async_jobs() -> None:
    """Submit asynchronous inference jobs and follow them."""


@async_jobs.command()
@URL
@KEY
@click.option("--model", required=True, help="The model to run.")
@click.option(
    "--input",
    "input_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A V2 inference request (JSON file), sent inline.",
)
@click.option(
    "--input-uri", default=None, help="An input already in the job store (s3:// or file://)."
)
@click.option("--job-id", default=None, help="The job's id: submitting it again queues nothing.")
@click.option("--notify", is_flag=True, help="Publish a notification when the job ends.")
@click.option(
    "--wait", "wait_s", type=float, default=None, help="Poll up to S seconds for the end."
)
def submit(
    url: str,
    api_key: str | None,
    model: str,
    input_file: Path | None,
    input_uri: str | None,
    job_id: str | None,
    notify: bool,
    wait_s: float | None,
) -> None:
    """Queue one job; print its id, status URL and output URI (with --wait, its end)."""
    if (input_file is None) == (input_uri is None):
        raise UserError("give exactly one of --input FILE and --input-uri URI")
    if input_file is not None:
        try:
            doc = json.loads(input_file.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"--input {input_file}: {e}") from None
        if not isinstance(doc, dict):
            raise UserError(f"--input {input_file}: expected a V2 request object")
        params = doc.setdefault("parameters", {})
        extra = {"job_id": job_id, "notify": notify or None}
        params.update({k: v for k, v in extra.items() if v is not None})
    else:
        doc = {"input_uri": input_uri, "notify": notify}
        if job_id is not None:
            doc["job_id"] = job_id
    out = call(url, api_key, "POST", f"/v2/models/{model}/async-infer", doc)
    if wait_s is not None:
        out = _wait(url, api_key, out["id"], wait_s)
    print(json.dumps(out, indent=2))


@async_jobs.command()
@URL
@KEY
@click.argument("job_id")
def status(url: str, api_key: str | None, job_id: str) -> None:
    """Print a job's record and status (pending, completed, failed)."""
    print(json.dumps(call(url, api_key, "GET", f"/v2/jobs/{job_id}"), indent=2))


def _wait(url: str, api_key: str | None, job_id: str, wait_s: float) -> Any:
    end = time.monotonic() + wait_s
    while True:
        doc = call(url, api_key, "GET", f"/v2/jobs/{job_id}")
        if doc["status"] != "pending":
            return doc
        if time.monotonic() >= end:
            raise UserError(f"job {job_id} still pending after {wait_s:g} s")
        time.sleep(0.2)
