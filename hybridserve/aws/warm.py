"""Keep-warm pings for the spill function.

A spilled request that lands on a cold Lambda environment pays the cold start (interpreter,
imports, model load: seconds), and spill happens in exactly the bursts the SLO is about.
Provisioned concurrency (`lambda.provisioned_concurrency`, set on the `live` alias by
`resources.ensure_function`) is the robust remedy, billed per hour whether used or not. Keep-warm
is the cheap one: when the function has sat idle `every_s`, send `concurrency` concurrent
warm-up invokes (`{"warmup": true}`), which the handler answers without running the model, so
that many environments stay initialised. Lambda reaps idle environments after an undocumented
few minutes, so `every_s` of a few minutes is the useful range.

`keep_warm_plan` is the pure decision, `keep_warm` the one round of invokes (through the same
`LambdaInvoker` the router uses, so AWS and the local emulator behave alike), and
`keep_warm_loop` the two together on a clock, for a fixed `lambda.keep_warm` of a deployment.
The controller plans its own rounds (`hybridserve.keep_warm`); `warm_round` sends one of them
through an invoker of its own, so the pings never take the router's concurrency slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybridserve.aws.invoke import InvokeResult, LambdaInvoker

DEFAULT_HOLD_MS = 75.0  # long enough that concurrent pings cannot share an environment


@dataclass(frozen=True)
class WarmupReport:
    """One round of warm-up invokes."""

    sent: int
    warm: int  # answered {"warm": true}
    cold_starts: int  # of the invokes, those that started an environment (init reported)
    errors: tuple[str, ...]  # one line per failed invoke


def keep_warm_plan(
    now_s: float, last_invoke_s: float | None, every_s: float, concurrency: int
) -> int:
    """How many warm-up invokes to send at `now_s`: `concurrency` once `every_s` has passed
    since `last_invoke_s` (None: never), else 0.

    Pass the time of the last warm-up round to keep `concurrency` environments warm whatever the
    traffic, or of the last invoke of any kind to warm only a function that sat idle. A
    `last_invoke_s` in the future (clock skew) counts as just now.
    """
    if not (math.isfinite(every_s) and every_s > 0):
        raise ValueError(f"keep_warm.every_s must be a finite number > 0 (got {every_s!r})")
    if concurrency < 0:
        raise ValueError(f"keep_warm.concurrency must be >= 0 (got {concurrency!r})")
    if not math.isfinite(now_s) or (last_invoke_s is not None and not math.isfinite(last_invoke_s)):
        raise ValueError(f"times must be finite (now {now_s!r}, last invoke {last_invoke_s!r})")
    if concurrency == 0:
        return 0
    if last_invoke_s is None or now_s - last_invoke_s >= every_s:
        return concurrency
    return 0


def warmup_event(n: int, hold_ms: float = DEFAULT_HOLD_MS) -> bytes:
    """The warm-up payload; a lone ping needs no hold."""
    from hybridserve.keep_warm import ping_hold_ms

    event: dict[str, object] = {"warmup": True}
    if ping_hold_ms(n, hold_ms) > 0:
        event["hold_ms"] = hold_ms
    return json.dumps(event).encode()


def _outcome(r: InvokeResult | BaseException) -> str | None:
    """None for a warm answer, else what went wrong, in one line."""
    if isinstance(r, BaseException):
        return f"{type(r).__name__}: {r}"
    text = r.payload[:300].decode("utf-8", "replace")
    if r.function_error is not None:
        return f"function error {r.function_error}: {text}"
    try:
        body = json.loads(r.payload)
    except ValueError:
        return f"not a warm-up answer: {text}"
    if isinstance(body, dict) and body.get("warm") is True:
        return None
    return f"not a warm-up answer: {text}"


async def keep_warm(
    invoker: LambdaInvoker, n: int, *, hold_ms: float = DEFAULT_HOLD_MS
) -> WarmupReport:
    """Send `n` concurrent warm-up invokes; a failed one is reported, never raised, so one bad
    environment cannot stop the round. `n` above the invoker's max_concurrency is refused: the
    extra pings would queue behind the others and reuse their environments."""
    if n < 0:
        raise ValueError(f"warm-up count must be >= 0 (got {n})")
    if n > invoker.max_concurrency:
        raise ValueError(
            f"{n} warm-ups need {n} invokes in flight, but the invoker allows "
            f"{invoker.max_concurrency} (max_concurrency)"
        )
    if n == 0:
        return WarmupReport(0, 0, 0, ())
    payload = warmup_event(n, hold_ms)
    results = await asyncio.gather(
        *(invoker.invoke(payload) for _ in range(n)), return_exceptions=True
    )
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, Exception):
            raise r  # cancellation and the like are not warm-up failures
    errors = tuple(e for e in map(_outcome, results) if e is not None)
    cold = sum(1 for r in results if not isinstance(r, BaseException) and r.init_ms is not None)
    return WarmupReport(n, n - len(errors), cold, errors)


async def warm_round(n: int, *, hold_ms: float = DEFAULT_HOLD_MS, **invoker: Any) -> WarmupReport:
    """One round of `n` concurrent pings, through a `LambdaInvoker(**invoker)` opened for it
    (rounds are minutes apart: a client per round costs nothing that matters)."""
    from hybridserve.aws.invoke import LambdaInvoker

    if n <= 0:
        return WarmupReport(0, 0, 0, ())
    async with LambdaInvoker(**{**invoker, "max_concurrency": n}) as inv:
        return await keep_warm(inv, n, hold_ms=hold_ms)


async def keep_warm_loop(
    invoker: LambdaInvoker,
    *,
    every_s: float,
    concurrency: int,
    stop: asyncio.Event,
    last_invoke_s: Callable[[], float | None] | None = None,
    on_report: Callable[[WarmupReport], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    tick_s: float | None = None,
    hold_ms: float = DEFAULT_HOLD_MS,
) -> int:
    """Run `keep_warm_plan` every `tick_s` (default every_s / 4) until `stop` is set; returns
    the rounds sent. `last_invoke_s` reports the router's last spill (same clock), so traffic
    postpones the pings; without it they go every `every_s`."""
    tick = every_s / 4 if tick_s is None else tick_s
    last_round: float | None = None
    rounds = 0
    while not stop.is_set():
        seen = [
            t for t in (last_round, last_invoke_s() if last_invoke_s else None) if t is not None
        ]
        n = keep_warm_plan(clock(), max(seen) if seen else None, every_s, concurrency)
        if n:
            report = await keep_warm(invoker, n, hold_ms=hold_ms)
            last_round = clock()
            rounds += 1
            if on_report is not None:
                on_report(report)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)
    return rounds
