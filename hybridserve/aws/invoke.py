"""Async invoker of the spill function: how the router sends spilled batches to Lambda.

One code path for AWS and for the local emulator (`hybridserve.lambda_emulator.server`, which
speaks the same Invoke API): aiobotocore with botocore's own retries off, so that this module's
backoff (exponential, full jitter, seeded) is the only one and its counts are the truth; a
semaphore bounds the invokes in flight (and the connection pool matches it); one deadline covers
queueing, retries and the call. Every invoke asks for the log tail, whose REPORT line gives the
duration, the billed duration and, on a cold start, the init duration.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

# Retried with backoff: throttling and Lambda's own transient faults (5xx).
RETRYABLE_CODES = frozenset(
    {
        "TooManyRequestsException",
        "ServiceException",
        "EC2ThrottledException",
        "EC2UnexpectedException",
        "ResourceNotReadyException",
    }
)
LOCAL_KEYS = {"aws_access_key_id": "hybridserve-local", "aws_secret_access_key": "not-a-secret"}


@dataclass(frozen=True)
class InvokeResult:
    """One completed invoke (the function may still have failed: see `function_error`)."""

    payload: bytes  # the function's response payload
    function_error: str | None  # X-Amz-Function-Error (e.g. "Unhandled") or None
    duration_ms: float | None  # from the REPORT line of the log tail
    billed_ms: int | None
    init_ms: float | None  # not None on a cold start
    attempts: int


CONNECT_TIMEOUT_S = 3.0  # an endpoint that does not accept within this is unreachable


class LambdaThrottled(RuntimeError):
    """Still throttled (429 or a retryable 5xx) after `max_attempts`."""


class LambdaTimeout(TimeoutError):
    """The invoke, queueing and retries included, exceeded `timeout_s`."""


class LambdaInvokeError(RuntimeError):
    """Any other failure to invoke: network, credentials, a 4xx/5xx the API returned."""


def backoff_delay(attempt: int, rng: random.Random, base_s: float, cap_s: float) -> float:
    """Full jitter: a uniform draw in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
    return rng.uniform(0.0, min(cap_s, base_s * 2.0 ** min(attempt, 64)))


def parse_report(log_result: str | None) -> tuple[float | None, int | None, float | None]:
    """(duration ms, billed ms, init ms) from a base64 log tail's REPORT line; None if absent."""
    if not log_result:
        return None, None, None
    try:
        text = base64.b64decode(log_result).decode("utf-8", "replace")
    except ValueError:
        return None, None, None
    report = next((ln for ln in reversed(text.splitlines()) if ln.startswith("REPORT ")), None)
    if report is None:
        return None, None, None
    fields: dict[str, str] = {}
    for part in report.split("\t"):
        key, sep, value = part.partition(":")
        if sep:
            fields[key.strip()] = value.strip().split(" ")[0]

    def number(key: str) -> float | None:
        with contextlib.suppress(KeyError, ValueError):
            return float(fields[key])
        return None

    billed = number("Billed Duration")
    return number("Duration"), None if billed is None else int(billed), number("Init Duration")


class LambdaInvoker:
    """Bounded, retrying, deadline-bound invokes of one Lambda function (async)."""

    def __init__(
        self,
        function_name: str,
        *,
        qualifier: str | None = None,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        max_concurrency: int = 64,
        timeout_s: float = 30.0,
        max_attempts: int = 5,
        backoff_base_s: float = 0.02,
        backoff_cap_s: float = 1.0,
        seed: int | None = None,
        local_credentials: bool = False,
        throttle_wait_s: float = 0.0,
    ) -> None:
        if max_concurrency < 1 or max_attempts < 1:
            raise ValueError(
                f"max_concurrency and max_attempts must be >= 1 "
                f"(got {max_concurrency}, {max_attempts})"
            )
        if timeout_s <= 0 or backoff_base_s < 0 or backoff_cap_s < 0 or throttle_wait_s < 0:
            raise ValueError(
                f"timeout_s must be > 0 and the backoff and throttle wait times >= 0 "
                f"(got {timeout_s}, {backoff_base_s}, {backoff_cap_s}, {throttle_wait_s})"
            )
        if local_credentials and endpoint_url is None:
            raise ValueError(
                "local_credentials=True is for a local emulator: give its endpoint_url too"
            )
        self.function_name = function_name
        self.qualifier = qualifier
        self.region = region
        self.endpoint_url = endpoint_url
        self.max_concurrency = max_concurrency
        self.timeout_s = float(timeout_s)
        self.max_attempts = max_attempts
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_cap_s = float(backoff_cap_s)
        # a throttle is retried past max_attempts for this long after the first attempt: the
        # function's concurrency is busy (another caller's invokes, keep-warm pings holding
        # environments), which frees within the function's timeout; a caller whose requests
        # have nowhere else to go (the router's spill) waits rather than fails
        self.throttle_wait_s = float(throttle_wait_s)
        self.local_credentials = local_credentials
        self._rng = random.Random(seed)
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._sem: asyncio.Semaphore | None = None
        self._in_flight = 0
        self._counts = dict.fromkeys(
            ("invocations", "throttled", "retries", "cold_starts", "timeouts", "errors"), 0
        )

    async def start(self) -> LambdaInvoker:
        """Create the aiobotocore client (credentials from the standard AWS chain)."""
        if self._client is not None:
            return self
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError as e:
            raise RuntimeError(
                "LambdaInvoker needs aiobotocore: pip install 'hybridserve[aws]'"
            ) from e
        config = AioConfig(
            retries={"total_max_attempts": 1},  # our backoff is the only one
            max_pool_connections=self.max_concurrency,
            read_timeout=self.timeout_s,
            connect_timeout=self._connect_timeout_s(),
        )
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(
            get_session().create_client(
                "lambda",
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                config=config,
                **(LOCAL_KEYS if self.local_credentials else {}),
            )
        )
        self._stack = stack
        self._sem = asyncio.Semaphore(self.max_concurrency)
        return self

    async def close(self) -> None:
        """Close the client and its connections (idempotent)."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> LambdaInvoker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def in_flight(self) -> int:
        """Invokes holding a concurrency slot now (sent, or backing off between attempts)."""
        return self._in_flight

    def stats(self) -> dict[str, int]:
        """Counters: invocations, throttled (429s seen), retries, cold_starts, timeouts and
        errors (function errors, give-ups after max_attempts, other failures)."""
        return dict(self._counts)

    async def invoke(self, payload: bytes) -> InvokeResult:
        """Invoke synchronously; retries throttling with backoff; raises the errors above."""
        if self._client is None:
            raise RuntimeError("LambdaInvoker is not started: use `async with` or await start()")
        self._counts["invocations"] += 1
        try:
            return await asyncio.wait_for(self._bounded(payload), self.timeout_s)
        except LambdaTimeout:
            self._counts["timeouts"] += 1
            raise
        except asyncio.TimeoutError as e:
            self._counts["timeouts"] += 1
            raise LambdaTimeout(
                f"Lambda {self.function_name}: no answer within {self.timeout_s:g} s"
            ) from e

    def _connect_timeout_s(self) -> float:
        """3 s to connect, or the whole deadline when that is shorter."""
        return min(self.timeout_s, CONNECT_TIMEOUT_S)

    async def _bounded(self, payload: bytes) -> InvokeResult:
        assert self._sem is not None
        async with self._sem:
            self._in_flight += 1
            try:
                return await self._attempts(payload)
            finally:
                self._in_flight -= 1

    async def _attempts(self, payload: bytes) -> InvokeResult:
        from aiohttp import ClientError as HttpError
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            ReadTimeoutError,
        )

        kwargs: dict[str, Any] = {
            "FunctionName": self.function_name,
            "Payload": payload,
            "LogType": "Tail",
        }
        if self.qualifier:
            kwargs["Qualifier"] = self.qualifier
        name = self.function_name
        attempt = 0
        t0 = time.monotonic()
        while True:
            attempt += 1
            client = self._client
            if client is None:
                self._counts["errors"] += 1
                raise LambdaInvokeError(f"Lambda {name}: the invoker was closed")
            try:
                resp = await client.invoke(**kwargs)
                body = await resp["Payload"].read()
            except ClientError as e:
                err = e.response.get("Error", {})
                code = err.get("Code", "")
                status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                throttled = code == "TooManyRequestsException" or status == 429
                self._counts["throttled"] += throttled
                cause = f"{code or 'error'} (HTTP {status}): {err.get('Message', '')}"
                if not (throttled or code in RETRYABLE_CODES or status >= 500):
                    self._counts["errors"] += 1
                    raise LambdaInvokeError(f"Lambda {name}: invoke failed: {cause}") from e
                delay = backoff_delay(
                    attempt - 1, self._rng, self.backoff_base_s, self.backoff_cap_s
                )
                waiting = throttled and time.monotonic() + delay - t0 < self.throttle_wait_s
                if attempt >= self.max_attempts and not waiting:
                    self._counts["errors"] += 1
                    waited = f" in {time.monotonic() - t0:.2f} s" if throttled else ""
                    raise LambdaThrottled(
                        f"Lambda {name}: still failing after {attempt} attempts{waited}: {cause}"
                    ) from e
                self._counts["retries"] += 1
                await asyncio.sleep(delay)
                continue
            except ReadTimeoutError as e:
                raise LambdaTimeout(
                    f"Lambda {name}: no answer within {self.timeout_s:g} s ({e})"
                ) from e
            except ConnectTimeoutError as e:
                if self._connect_timeout_s() >= self.timeout_s:  # the deadline ran out first
                    raise LambdaTimeout(
                        f"Lambda {name}: no connection within the {self.timeout_s:g} s deadline"
                    ) from e
                self._counts["errors"] += 1
                raise LambdaInvokeError(
                    f"Lambda {name}: cannot connect within {CONNECT_TIMEOUT_S:g} s: {e}"
                ) from e
            except (BotoCoreError, HttpError, OSError) as e:
                self._counts["errors"] += 1
                raise LambdaInvokeError(
                    f"Lambda {name}: invoke failed: {type(e).__name__}: {e}"
                ) from e
            duration, billed, init = parse_report(resp.get("LogResult"))
            function_error = resp.get("FunctionError")
            self._counts["cold_starts"] += init is not None
            self._counts["errors"] += function_error is not None
            return InvokeResult(body, function_error, duration, billed, init, attempt)
