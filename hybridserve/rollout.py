"""Rolling a pool onto new instances (a changed launch template or artifact) with a surge: the
outdated instances keep serving until enough up-to-date ones are ready, then retire.

Pure, like `reconcile`, which runs on what it returns: the target raised by the surge, and the
outdated instances to retire now. Running it again on the fleet those actions produce moves
the roll on, so a controller restarted mid-roll finishes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple


class Member(NamedTuple):
    """One live instance of a pool as the roll sees it."""

    instance_id: str
    pool: str
    current: bool  # launched from the current template
    ready: bool  # serving (health-ready)


def roll(
    target: Mapping[str, int],
    members: Sequence[Member],
    *,
    room: int | None = None,
) -> tuple[dict[str, int], set[str]]:
    """(target with the surge, ids of outdated instances to retire now).

    Per pool with outdated instances: once the current ready ones cover the pool's target,
    every outdated one retires; until then the target grows by the outdated count, so their
    replacements launch while they serve. `room` (the fleet cap's headroom) bounds the surge
    across pools; a pool it leaves no surge for replaces one outdated instance in place, so
    a roll under a full cap still ends, one instance short while each replacement boots."""
    out = {k: int(v) for k, v in target.items()}
    retire: set[str] = set()
    room = None if room is None else max(0, int(room))
    for pool in sorted({m.pool for m in members}):
        old = [m for m in members if m.pool == pool and not m.current]
        if not old:
            continue
        want = out.get(pool, 0)
        fresh = [m for m in members if m.pool == pool and m.current]
        if sum(m.ready for m in fresh) >= want:
            retire.update(m.instance_id for m in old)
            continue
        surge = len(old) if room is None else min(len(old), room)
        if room is not None:
            room -= surge
        if surge == 0 and all(m.ready for m in fresh):  # no headroom: one at a time in place
            retire.add(old[0].instance_id)
        out[pool] = want + surge
    return out, retire
