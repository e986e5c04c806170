"""Every bill, once: Lambda's duration in whole milliseconds and its GB-seconds, the request
charge, init time on a cold start, and EC2's per-second billing with its 60 s minimum.

The planner's prices, the simulator's bill, the router's cost metric, the BATCH buffer's
choice and the Lambda emulator's REPORT line all call these, so none of them can round
differently from the others. Plain floats in and out (numpy arrays too, where noted); the
prices themselves come from config (`LambdaPricing`, the catalog).
"""

from __future__ import annotations

import math

import numpy as np

EC2_MIN_BILL_S = 60.0  # Linux on-demand and spot: per second, at least a minute per launch


def lambda_billed_ms(duration_ms: float) -> int:
    """Billed duration: whole milliseconds rounded up, at least 1 (float noise under a
    nanosecond is not a millisecond: 40.0000000001 ms bills 40)."""
    return max(1, math.ceil(round(duration_ms, 6)))


def lambda_billed_ms_array(duration_ms: np.ndarray) -> np.ndarray:
    """`lambda_billed_ms` for many durations at once."""
    return np.maximum(1.0, np.ceil(np.round(np.asarray(duration_ms, dtype=float), 6)))


def lambda_gb_s(memory_mb: float, billed_ms: float | np.ndarray) -> float | np.ndarray:
    """GB-seconds of a billed duration at a memory size (1 GB = 1024 MB, as AWS bills)."""
    return memory_mb / 1024.0 * billed_ms / 1000.0


def lambda_compute_usd(
    duration_ms: float, memory_mb: float, usd_per_gb_s: float, init_ms: float = 0.0
) -> float:
    """Compute charge of one invoke; a cold start's init is billed with its duration, in one
    rounding (AWS bills the init of managed runtimes since August 2025)."""
    return lambda_gb_s(memory_mb, lambda_billed_ms(duration_ms + init_ms)) * usd_per_gb_s


def lambda_invoke_usd(
    duration_ms: float,
    memory_mb: float,
    usd_per_gb_s: float,
    usd_per_request: float,
    init_ms: float = 0.0,
) -> float:
    """Whole charge of one invoke: compute (with init, if any) plus the request charge."""
    return lambda_compute_usd(duration_ms, memory_mb, usd_per_gb_s, init_ms) + usd_per_request


def lambda_init_usd(
    duration_ms: float, init_ms: float, memory_mb: float, usd_per_gb_s: float
) -> float:
    """What a cold start adds to an invoke of `duration_ms`: its init, billed as above."""
    return lambda_compute_usd(duration_ms, memory_mb, usd_per_gb_s, init_ms) - lambda_compute_usd(
        duration_ms, memory_mb, usd_per_gb_s
    )


def ec2_billed_s(seconds: float, minimum_s: float = EC2_MIN_BILL_S) -> float:
    """Seconds billed for an instance that ran `seconds` (from launch): at least a minute
    (`minimum_s`: another per-second service's minimum, e.g. SageMaker's, which has none)."""
    return max(float(seconds), minimum_s)


def ec2_usd(seconds: float, usd_per_s: float) -> float:
    """Charge of one instance that ran `seconds` at `usd_per_s`."""
    return ec2_billed_s(seconds) * usd_per_s
