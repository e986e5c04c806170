"""Starting a child process that announces `listening on URL`, with a deadline that holds.

`readline()` on a pipe blocks until the child writes a line or exits, so a child that hangs
silently would hang its parent past any deadline checked between reads. `lines_within` waits
on the file descriptor with `select` instead, so the deadline is real.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from typing import IO, Any

LISTENING = re.compile(r"listening on (http://\S+)")


def lines_within(stream: IO[Any], timeout_s: float) -> Iterator[str]:
    """Lines of a child's pipe as they come, until end of file or `timeout_s` from now.

    Reads the descriptor directly: do not also read `stream` itself (its buffer would hide
    lines from `select`)."""
    fd = stream.fileno()
    deadline = time.monotonic() + timeout_s
    buf = b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode(errors="replace") + "\n"
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return
        chunk = os.read(fd, 65536)
        if not chunk:
            if buf:
                yield buf.decode(errors="replace")
            return
        buf += chunk


def spawn_listening(
    cmd: list[str], stderr: Any, what: str, timeout_s: float = 60.0, **popen: Any
) -> tuple[subprocess.Popen, str]:
    """Start a process that prints `listening on URL` when ready (serve, the emulator); its URL.

    A process that exits, or stays silent for `timeout_s`, is killed and a RuntimeError says
    which (`what`)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True, **popen
    )
    assert proc.stdout is not None
    with contextlib.closing(lines_within(proc.stdout, timeout_s)) as lines:
        for line in lines:
            m = LISTENING.search(line)
            if m:
                return proc, m.group(1)
    try:
        code: int | None = proc.wait(timeout=1.0)  # closed its output: exiting, or exited
    except subprocess.TimeoutExpired:
        code = None
    proc.kill()
    proc.wait()
    why = f"exited with code {code}" if code is not None else f"was silent for {timeout_s:g} s"
    raise RuntimeError(f"{what} did not start: it {why} (see its log)")
