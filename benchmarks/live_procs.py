"""The live benchmark's process plumbing: serve processes, CPU by process tree from /proc,
the machine's busy time, and a closed-loop load (each client sends when answered)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hybridserve.spawn import spawn_listening  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def start_serve(cfg: dict, work: Path, name: str) -> tuple[subprocess.Popen, str]:
    path = work / f"serve-{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    err = open(work / f"serve-{name}.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "hybridserve", "serve", "--config", str(path)]
    return spawn_listening(cmd, err, f"serve {name} (see {work / f'serve-{name}.log'})", 120.0)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def proc_cpu_s(pid: int) -> float:
    """user + sys CPU seconds of one process (all its threads), from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) on
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 utime, 15 stime


def tree_pids(root: int) -> list[int]:
    """`root` and every descendant (model servers, the emulator, its Lambda workers)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                raw = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(raw[raw.rindex(")") + 2 :].split()[1])
    out, frontier = [root], {root}
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = set(kids)
    return out


COMPONENTS = (  # what a process is, from its command line
    ("lambda_workers", "lambda_worker"),
    ("emulator", "lambda_emulator"),
    ("model_servers", "model-server"),
)


def component(pid: int, root: int) -> str:
    if pid == root:
        return "root"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "other"
    return next((name for name, key in COMPONENTS if key in cmd), "other")


def tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (component, CPU seconds) over `root`'s process tree, now."""
    return {p: (component(p, root), proc_cpu_s(p)) for p in tree_pids(root)}


def cpu_by_component(a: dict, b: dict) -> dict[str, float]:
    """CPU seconds spent between two `tree_cpu` snapshots, by component (a process that
    appeared in between counts whole; one that ended in between is lost)."""
    out: dict[str, float] = {}
    for pid, (kind, cpu) in b.items():
        before = a.get(pid, (kind, 0.0))[1]
        if np.isfinite(cpu) and np.isfinite(before):
            out[kind] = out.get(kind, 0.0) + cpu - before
    return out


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (every job)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / CLK_TCK, sum(f[:8]) / CLK_TCK


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def round_or_none(x: float | None, nd: int = 2) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


async def _closed_loop(
    url: str,
    body: bytes,
    model: str,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    roots: list[int],
    timeout_s: float,
) -> dict:
    import aiohttp

    target = f"{url}/v2/models/{model}/infer"
    clock = time.perf_counter
    lat: list[float] = []
    errors = [0]
    marks: dict[str, dict] = {}
    t0 = clock()
    t_meas, t_end = t0 + warmup_s, t0 + warmup_s + duration_s

    def snapshot() -> dict:
        return {
            "t": clock(),
            "trees": {r: tree_cpu(r) for r in roots},
            "self": self_cpu_s(),
            "machine": machine_busy_s(),
        }

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector,
        headers={"Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:

        async def client() -> None:
            while (start := clock()) < t_end:
                try:
                    async with session.post(target, data=body) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except Exception:
                    ok = False
                end = clock()
                if t_meas <= end < t_end:
                    if ok:
                        lat.append(end - start)
                    else:
                        errors[0] += 1
                if not ok:  # a 503 comes back at once: do not spin
                    await asyncio.sleep(0.01)

        async def marker() -> None:
            await asyncio.sleep(max(0.0, t_meas - clock()))
            marks["start"] = snapshot()
            await asyncio.sleep(max(0.0, t_end - clock()))
            marks["end"] = snapshot()

        await asyncio.gather(marker(), *(client() for _ in range(concurrency)))
    a, b = marks["start"], marks["end"]
    wall = b["t"] - a["t"]
    n = len(lat)
    busy = (b["machine"][0] - a["machine"][0]) / max(b["machine"][1] - a["machine"][1], 1e-9)
    lat_ms = np.asarray(lat) * 1000.0
    return {
        "concurrency": concurrency,
        "ok": n,
        "errors": errors[0],
        "rps": n / wall,
        "p50_ms": float(np.percentile(lat_ms, 50)) if n else float("nan"),
        "p99_ms": float(np.percentile(lat_ms, 99)) if n else float("nan"),
        "cpu_s": {r: cpu_by_component(a["trees"][r], b["trees"][r]) for r in roots},
        "self_cpu_s": b["self"] - a["self"],
        "wall_s": wall,
        "machine_busy": busy,  # of all cores, every job on the machine included
    }


def closed_loop(url, body, model, concurrency, warmup_s, duration_s, roots=(), timeout_s=30.0):
    """Closed-loop throughput of `url`: `concurrency` clients, each sending its next request
    when the last is answered; counts answers in [warmup_s, warmup_s + duration_s), and the CPU
    seconds over that window of each of `roots`' process trees (by component) and of this
    process (the load generator)."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ModuleNotFoundError:
        factory = asyncio.new_event_loop
    loop = factory()
    try:
        return loop.run_until_complete(
            _closed_loop(
                url, body, model, concurrency, warmup_s, duration_s, list(roots), timeout_s
            )
        )
    finally:
        loop.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


def wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            http_get(url + "/v2/health/ready")
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} never became ready")


def wait_fleet(url: str, n: int, timeout_s: float = 120) -> None:
    """Until the router has `n` ready instances (its own health is ready before any)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = http_get(url + "/metrics").decode()
        sizes = [int(m) for m in re.findall(r"hybridserve_fleet_size\{[^}]*\} (\d+)", text)]
        if sum(sizes) >= n:
            return
        time.sleep(0.2)
    raise SystemExit(f"{url}: {n} instances never became ready")


def answers_by_path(url: str) -> dict[str, int]:
    out: dict[str, int] = {}
    text = http_get(url + "/metrics").decode()
    for path, code, n in re.findall(
        r'hybridserve_router_responses_total\{path="(\w+)",code="(\d+)"\} ([\d.e+]+)', text
    ):
        if code == "200":
            out[path] = out.get(path, 0) + int(float(n))
    return out
