"""`python -m hybridserve.lambda_emulator`: serve the emulator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from hybridserve.lambda_emulator import worker as proto
from hybridserve.lambda_emulator.server import LambdaEmulator


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; exit 2 on a bad argument."""
    ap = argparse.ArgumentParser(description="Local AWS Lambda emulator (the Invoke API).")
    ap.add_argument("--artifact", default=None, help="model artifact directory")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--keep-alive-s", type=float, default=60.0)
    ap.add_argument("--memory-mb", type=int, default=2048)
    ap.add_argument("--function-name", default="hybridserve-spill")
    ap.add_argument("--timeout-s", type=float, default=30.0)
    ap.add_argument("--handler", default=proto.DEFAULT_HANDLER)
    ap.add_argument("--log-dir", default=None)
    args = ap.parse_args(argv)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        emu = LambdaEmulator(
            args.artifact,
            function_name=args.function_name,
            handler=args.handler,
            concurrency=args.concurrency,
            keep_alive_s=args.keep_alive_s,
            memory_mb=args.memory_mb,
            timeout_s=args.timeout_s,
            host=args.host,
            port=args.port,
            log_dir=args.log_dir,
        )
        emu.start()
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        print(f"listening on {emu.url}", flush=True)
        while not done.wait(0.5):
            pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
