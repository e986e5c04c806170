"""Arrivals from several routers, summed once: what lets N router replicas feed one Controller.

Each replica keeps the per-second counts it closed over the last few minutes and publishes the
whole window as one small JSON document (`ArrivalWindow`), to a directory locally or to S3 on
AWS (`DirArrivals`, `hybridserve/aws/arrivals.py`). The acting controller reads every replica's
document and `ArrivalMerger` adds each (replica, second) exactly once, whatever order and
however often the documents are read or rewritten:

- a replica's seconds are taken once each, behind a per-replica watermark;
- a second is released only once every replica still publishing has closed it (the low
  watermark of the fresh documents), so a replica that writes a moment later than another is
  not cut short; a replica silent for `stale_s` (killed, partitioned) no longer holds the
  others back, and what it published before it went is still counted.

Publishing the whole window rather than deltas makes a lost or repeated write harmless: the
next one carries the same seconds again. Nothing here touches a clock; callers pass `now`.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPLICA_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def check_replica_id(replica: str) -> str:
    if not REPLICA_ID.match(replica):
        raise ValueError(
            f"replica id {replica!r}: expected 1-128 characters of letters, digits and _.:-"
        )
    return replica


class ArrivalWindow:
    """One replica's closed per-second counts over the last `keep_s` seconds."""

    def __init__(self, replica: str, keep_s: int) -> None:
        self.replica = check_replica_id(replica)
        self.seconds: deque[tuple[int, int]] = deque(maxlen=max(1, int(keep_s)))

    def add(self, closed: Iterable[tuple[int, int]]) -> None:
        for sec, n in closed:
            self.seconds.append((int(sec), int(n)))

    def document(self, now: float) -> dict[str, Any]:
        return {"replica": self.replica, "written": now, "seconds": [list(p) for p in self.seconds]}

    def publish(self, closed: Iterable[tuple[int, int]], store: Any, now: float) -> None:
        """Add the seconds just closed, then publish the whole window to `store`."""
        self.add(closed)
        store.publish(self.document(now))


def write_atomic(path: Path, text: str) -> None:
    """Write, then rename: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse_document(raw: bytes | str, where: str) -> dict[str, Any]:
    """A published window, checked: a malformed one names where it came from."""
    try:
        doc = json.loads(raw)
        replica = check_replica_id(str(doc["replica"]))
        written = float(doc["written"])
        seconds = [(int(s), int(n)) for s, n in doc["seconds"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: not an arrivals window ({type(e).__name__}: {e})") from None
    if any(n < 0 for _, n in seconds):
        raise ValueError(f"{where}: negative arrival count")
    return {"replica": replica, "written": written, "seconds": seconds}


def last_second(doc: dict[str, Any]) -> int:
    """The latest second a window has closed (windows are in order; a max costs little)."""
    return max(s for s, _ in doc["seconds"])


class ArrivalMerger:
    """Sums the replicas' windows per second, each (replica, second) once (see the module)."""

    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self.taken: dict[str, int] = {}  # replica -> last second taken from it

    def take(self, docs: Iterable[dict[str, Any]], now: float) -> list[tuple[int, int]]:
        """The newly released (second, total arrivals) pairs, in order of second."""
        docs = [d for d in docs if d["seconds"]]
        if not docs:
            return []
        fresh = {id(d) for d in docs if now - d["written"] <= self.stale_s}
        # released: what every fresh replica has closed; a quiet replica gives all it has
        upto = min((last_second(d) for d in docs if id(d) in fresh), default=None)
        totals: dict[int, int] = {}
        for d in docs:
            last = self.taken.get(d["replica"], -1)
            end = upto if id(d) in fresh else last_second(d)
            for sec, n in d["seconds"]:
                if last < sec <= end:
                    totals[sec] = totals.get(sec, 0) + n
            self.taken[d["replica"]] = max(last, end)
        return sorted(totals.items())


class DirArrivals:
    """Windows as files in one directory (local replicas on one machine): each replica writes
    `arrivals-<replica>.json` atomically (write, then rename), the controller reads them all."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def publish(self, doc: dict[str, Any]) -> None:
        write_atomic(self.path / f"arrivals-{doc['replica']}.json", json.dumps(doc))

    def read_all(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.path.glob("arrivals-*.json")):
            try:
                out.append(parse_document(p.read_bytes(), str(p)))
            except FileNotFoundError:  # replaced between the listing and the read
                continue
        return out
