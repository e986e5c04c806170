"""Async job traces for the async-jobs replay: a CSV of submitted jobs, a seeded burst generator,
and the per-job request prices (SQS, S3) of the built-in price file.

Kept apart from the replay so that loading and validating a trace, whose errors name the file,
the line and the column like every trace loader of the project, can be read on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from hybridserve.config_base import Provenance, Strict, load_data_model
from simulations.trace_csv import (
    _check_span,
    _columns,
    _find_column,
    _open_csv,
    _parse_times,
    checked_numbers,
    decode_text,
)
from simulations.trace_errors import trace_error
from simulations.traces import _read_bytes

PRICES_FILE = "async-prices-us-east-1.yaml"
COLUMNS = ("timestamp", "payload_bytes", "job_s")  # the last one optional
MAX_PAYLOAD_BYTES = 1 << 30  # jobs.MAX_INPUT_BYTES: 1 GB, as SageMaker's async inference


@dataclass(frozen=True)
class JobsTrace:
    """Submitted jobs in submit order: times from the first (s), payload sizes and, when the
    trace gives them, each job's seconds on a fleet instance (else the replay's `job_s`)."""

    name: str
    submit_s: np.ndarray
    payload_bytes: np.ndarray
    job_s: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.submit_s)
        if len(self.payload_bytes) != n or (self.job_s is not None and len(self.job_s) != n):
            raise ValueError(f"{self.name}: submit_s, payload_bytes and job_s differ in length")
        if n and np.any(np.diff(self.submit_s) < 0):
            raise ValueError(f"{self.name}: submit times must be in order")

    def __len__(self) -> int:
        return len(self.submit_s)


# --------------------------------------------------------------------------------------------
# the CSV loader
# --------------------------------------------------------------------------------------------


def _numbers(
    values: list[str], lines, label: str, column: str, expected: str, *, positive: bool
) -> np.ndarray:
    """A numeric column: finite, and > 0 (`positive`) or >= 0 and whole (bytes)."""

    def good(x: np.ndarray) -> np.ndarray:
        if positive:
            return np.isfinite(x) & (x > 0)
        return np.isfinite(x) & (x >= 0) & (x == np.floor(x)) & (x <= MAX_PAYLOAD_BYTES)

    return checked_numbers(
        values, lines, label, expected, f"column {column!r}:", good, "is out of range"
    )


def read_jobs(path: str | os.PathLike[str]) -> JobsTrace:
    """Jobs from a CSV with a header: `timestamp` (epoch seconds, epoch ms or ISO-8601 times,
    made relative to the earliest), `payload_bytes` and optionally `job_s` (the job's seconds
    on a fleet instance); column names in any case, rows in any order. Raises TraceError naming
    the file, the line and the column of the first problem, and what was expected."""
    label = os.fspath(path)
    text = decode_text(_read_bytes(Path(path), label), label)
    table = _open_csv(text, label)
    found = [_find_column(table.header, (c,)) for c in COLUMNS]
    for column, index in zip(COLUMNS[:2], found, strict=False):
        if index is None:
            raise trace_error(
                label,
                f"no {column!r} column; columns found: {', '.join(map(repr, table.header))}",
                "a header with columns timestamp, payload_bytes and optionally job_s (any case)",
                line=table.header_line,
            )
    indices = [i for i in found if i is not None]
    columns, lines = _columns(table, indices)
    if not columns[0]:
        raise trace_error(label, "no job rows after the header", "one row per submitted job")
    ts_name = table.header[indices[0]]
    times, per_second = _parse_times(columns[0], lines, label, f"column {ts_name!r}:")
    submit = (times - times.min()).astype(np.float64) / per_second
    _check_span(float(submit.max()), label, "timestamps")
    payload = _numbers(
        columns[1], lines, label, table.header[indices[1]],
        f"a whole number of bytes from 0 to {MAX_PAYLOAD_BYTES}", positive=False,
    )  # fmt: skip
    job_s = None
    if len(indices) == 3:
        job_s = _numbers(
            columns[2], lines, label, table.header[indices[2]],
            "a job's seconds on a fleet instance, a number > 0", positive=True,
        )  # fmt: skip
    order = np.argsort(submit, kind="stable")
    return JobsTrace(
        Path(label).stem,
        submit[order],
        payload[order],
        None if job_s is None else job_s[order],
    )


# --------------------------------------------------------------------------------------------
# the synthetic generator
# --------------------------------------------------------------------------------------------


def synthetic_jobs(
    n_bursts: int = 6,
    jobs_per_burst: int = 150,
    idle_s: float = 1800.0,
    seed: int = 0,
    *,
    burst_s: float = 120.0,
    payload_median_bytes: float = 200e3,
    payload_sigma: float = 1.8,
) -> JobsTrace:
    """Bursts of `jobs_per_burst` jobs, each submitted uniformly over `burst_s`, separated by
    `idle_s` of silence; payloads lognormal around `payload_median_bytes` (sigma 1.8: 1% under
    3 KB, 1% over 13 MB), clipped to 1 KB - 50 MB. One seed names one trace exactly."""
    if n_bursts < 1 or jobs_per_burst < 1:
        raise ValueError("n_bursts and jobs_per_burst must be >= 1")
    if idle_s < 0 or burst_s < 0:
        raise ValueError("idle_s and burst_s must be >= 0")
    rng = np.random.default_rng(seed)
    starts = np.arange(n_bursts) * (burst_s + idle_s)
    offsets = np.sort(rng.uniform(0.0, burst_s, (n_bursts, jobs_per_burst)), axis=1)
    submit = (starts[:, None] + offsets).ravel()
    submit -= submit[0]
    sizes = rng.lognormal(np.log(payload_median_bytes), payload_sigma, submit.size)
    payload = np.clip(np.round(sizes), 1e3, 50e6)
    return JobsTrace(f"synthetic-{n_bursts}x{jobs_per_burst}-seed{seed}", submit, payload)


# --------------------------------------------------------------------------------------------
# request prices
# --------------------------------------------------------------------------------------------


class RequestCounts(Strict):
    sqs: int = Field(ge=0)
    s3_put: int = Field(ge=0)
    s3_get: int = Field(ge=0)


class PerJob(Strict):
    submit: RequestCounts  # every submitted job
    worker: RequestCounts  # every job a worker completes


class AsyncRequestPrices(Provenance):
    """SQS and S3 request prices with the date and source they come from."""

    sqs_usd_per_request: float = Field(ge=0)
    s3_put_usd_per_request: float = Field(ge=0)
    s3_get_usd_per_request: float = Field(ge=0)
    requests_per_job: PerJob

    def usd(self, c: RequestCounts) -> float:
        return (
            c.sqs * self.sqs_usd_per_request
            + c.s3_put * self.s3_put_usd_per_request
            + c.s3_get * self.s3_get_usd_per_request
        )

    @property
    def submit_usd(self) -> float:
        return self.usd(self.requests_per_job.submit)

    @property
    def worker_usd(self) -> float:
        return self.usd(self.requests_per_job.worker)


def load_request_prices(path: str | Path | None = None) -> AsyncRequestPrices:
    """The built-in price file, or `path`; errors name the file and the field."""
    return load_data_model(AsyncRequestPrices, PRICES_FILE, path)
