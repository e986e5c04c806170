"""One execution environment of the local Lambda emulator: a process that serves invokes.

The emulator starts one of these per environment (`python -m hybridserve.lambda_emulator.worker`),
so a cold start is real: interpreter start, imports and, for the project's handler, the model
load. Invokes arrive on stdin and results leave on the original stdout as length-prefixed frames;
fd 1 is pointed at stderr (the environment's log) first, so a handler's `print` can never corrupt
the protocol.

Frames are `u32 length | body`. Request body: `u8 flags | 36-byte request id | f64 deadline
(epoch s) | event JSON`. Reply body: `u8 kind | f64 duration ms | u32 max RSS MB | u32 log length
| log bytes | payload`. The first reply is READY (or INIT_ERROR, after which the worker exits).
Stdin closing is the signal to exit.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import os
import resource
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO

FRAME = struct.Struct("!I")
REQUEST = struct.Struct("!B36sd")
REPLY = struct.Struct("!BdII")

OK, FUNCTION_ERROR, BAD_REQUEST, READY, INIT_ERROR = range(5)
FLAG_TAIL = 1

DEFAULT_HANDLER = "lambda_handlers.handler:handler"


def encode_reply(kind: int, duration_ms: float, payload: bytes, log: bytes = b"") -> bytes:
    """One reply frame (with its length prefix)."""
    body_len = REPLY.size + len(log) + len(payload)
    head = FRAME.pack(body_len) + REPLY.pack(kind, duration_ms, _max_rss_mb(), len(log))
    return head + log + payload


def encode_request(request_id: str, deadline: float, event: bytes, *, tail: bool) -> bytes:
    """One request frame (with its length prefix)."""
    head = REQUEST.pack(FLAG_TAIL if tail else 0, request_id.encode("ascii"), deadline)
    return FRAME.pack(len(head) + len(event)) + head + event


def _max_rss_mb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # KiB on Linux


def _error(message: str, error_type: str, **extra: Any) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type, **extra}).encode()


class Context:
    """The subset of AWS's Python context object a handler commonly reads."""

    def __init__(self, request_id: str, deadline: float) -> None:
        self.aws_request_id = request_id
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.invoked_function_arn = (
            f"arn:aws:lambda:local:000000000000:function:{self.function_name}"
        )
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"local/{os.getpid()}"
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def resolve_handler(spec: str) -> Any:
    """`module:function`, `path/to/file.py:function` or AWS's `module.function` -> callable.

    Raises `_InitError` with AWS's error types when the module or function is missing.
    """
    if ":" in spec:
        mod_name, _, fn_name = spec.rpartition(":")
    else:
        mod_name, _, fn_name = spec.rpartition(".")
    if not mod_name or not fn_name:
        raise _InitError(
            f"Bad handler '{spec}': expected 'module:function' or 'file.py:function'",
            "Runtime.MalformedHandlerName",
        )
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).resolve()
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            if loader_spec is None or loader_spec.loader is None or not path.is_file():
                raise ImportError(f"No such file '{path}'")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[path.stem] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except Exception as e:
        raise _InitError(
            f"Unable to import module '{mod_name}': {e}",
            "Runtime.ImportModuleError",
            traceback.format_exc(),
        ) from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise _InitError(
            f"Handler '{fn_name}' missing on module '{mod_name}'", "Runtime.HandlerNotFound"
        )
    if module.__name__ == "lambda_handlers.handler":
        # Load the model now so that it counts as the cold start, as the brief of local mode
        # wants; a failure is left for the handler to report as its V2 error object.
        try:
            module.get_plane()
        except Exception:
            traceback.print_exc()
    return fn


class _InitError(Exception):
    def __init__(self, message: str, error_type: str, trace: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.trace = trace


class _Tee(io.TextIOBase):
    """Writes to the environment's log and keeps a copy for the invoke's log tail."""

    def __init__(self, log: Any, copy: io.StringIO) -> None:
        self._log, self._copy = log, copy

    def write(self, s: str) -> int:
        self._copy.write(s)
        return self._log.write(s)

    def flush(self) -> None:
        self._log.flush()


def run_one(fn: Any, flags: int, request_id: str, deadline: float, event: bytes) -> bytes:
    """Run the handler on one event and return the reply frame."""
    captured = io.StringIO() if flags & FLAG_TAIL else None
    t0 = time.perf_counter()
    try:
        obj = json.loads(event) if event.strip() else {}
    except ValueError as e:
        return encode_reply(
            BAD_REQUEST, 0.0, f"Could not parse request body into json: {e}".encode()
        )
    with contextlib.ExitStack() as stack:
        if captured is not None:
            stack.enter_context(contextlib.redirect_stdout(_Tee(sys.stdout, captured)))
            stack.enter_context(contextlib.redirect_stderr(_Tee(sys.stderr, captured)))
        try:
            result = fn(obj, Context(request_id, deadline))
        except Exception as e:
            kind = FUNCTION_ERROR
            payload = _error(
                str(e),
                type(e).__name__,
                requestId=request_id,
                stackTrace=traceback.format_tb(e.__traceback__),
            )
            traceback.print_exc()
        else:
            try:
                kind, payload = OK, json.dumps(result).encode()
            except (TypeError, ValueError) as e:
                kind = FUNCTION_ERROR
                payload = _error(f"Unable to marshal response: {e}", "Runtime.MarshalError")
    duration_ms = (time.perf_counter() - t0) * 1000.0
    log = captured.getvalue().encode("utf-8", "replace") if captured is not None else b""
    return encode_reply(kind, duration_ms, payload, log)


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this worker if the emulator's thread dies (best effort; no orphans)."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--handler", default=DEFAULT_HANDLER)
    ap.add_argument("--parent-pid", type=int, default=0)
    args = ap.parse_args(argv)
    _die_with_parent(args.parent_pid)

    t0 = time.perf_counter()
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a handler's print goes to the log, never into the protocol
    sys.stdout.reconfigure(line_buffering=True)
    try:
        fn = resolve_handler(args.handler)
    except _InitError as e:
        if e.trace:
            sys.stderr.write(e.trace)
        out.write(encode_reply(INIT_ERROR, 0.0, _error(str(e), e.error_type)))
        out.flush()
        return 1
    out.write(encode_reply(READY, (time.perf_counter() - t0) * 1000.0, b""))
    out.flush()
    while True:
        head = _read_exactly(inp, FRAME.size)
        if head is None:
            return 0
        (n,) = FRAME.unpack(head)
        body = _read_exactly(inp, n)
        if body is None:
            return 0
        flags, rid, deadline = REQUEST.unpack_from(body)
        out.write(run_one(fn, flags, rid.decode("ascii"), deadline, body[REQUEST.size :]))
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
