"""Tiny Lambda handlers for the emulator and invoker tests (imported by the worker processes)."""

from __future__ import annotations

import os
import time
from typing import Any


def echo(event: Any, context: Any) -> dict:
    """Return the event, this environment's pid and what the context says."""
    print(f"echo in {os.getpid()}")
    return {
        "event": event,
        "pid": os.getpid(),
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "memory_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }


def sleep(event: Any, context: Any) -> dict:
    """Sleep `event["sleep_s"]` seconds: a slow function, to hold an environment busy. With
    `event["until"]` (a path) it returns as soon as that file exists: a test holds it busy for
    exactly as long as it needs, whatever the machine's speed, then releases it."""
    seconds, until = float(event.get("sleep_s", 0.0)), event.get("until")
    if until is None:
        time.sleep(seconds)
    else:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not os.path.exists(until):
            time.sleep(0.01)
    return {"slept": event.get("sleep_s", 0.0), "pid": os.getpid()}


def fail(event: Any, context: Any) -> dict:
    """Raise, as an unhandled function error."""
    raise ValueError(f"boom {event.get('n', 0)}")


def unserialisable(event: Any, context: Any) -> object:
    """Return something JSON cannot encode."""
    return {"x": object()}
