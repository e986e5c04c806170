"""A small model fleet for the multi-model tests: one family of two variants built from the
default (measured int8) profile, fp32 taken as 3x slower and larger (the shape of the measured
ratio on AVX-512 VNNI; the tests assert behaviour, not these numbers)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hybridserve.config import default_profile
from hybridserve.multimodel.spec import ModelFleet, model_fleet


def scaled_profile(factor: float, name: str) -> dict[str, Any]:
    p = default_profile().model_dump(by_alias=True)
    p["name"] = name
    ref = dict(p["reference"])
    ref["batch_ms"] = {b: v * factor for b, v in ref["batch_ms"].items()}
    p["reference"] = ref
    p["isa_profiles"] = {}
    return p


def family(floor: float = 0.95, fp32_mb: float = 1100.0, int8_mb: float = 700.0) -> dict:
    return {
        "accuracy_floor": floor,
        "variants": {
            "fp32": {
                "accuracy": 1.0,
                "profile": scaled_profile(3.0, "enc-fp32"),
                "memory_mb": fp32_mb,
                "load_s": 2.0,
            },
            "int8": {
                "accuracy": 0.97,
                "profile": scaled_profile(1.0, "enc-int8"),
                "memory_mb": int8_mb,
                "load_s": 1.0,
            },
        },
    }


def fleet(n: int, floor: float = 0.95, **fam: Any) -> ModelFleet:
    return model_fleet(
        {
            "families": {"enc": family(floor, **fam)},
            "models": [{"name": f"m{i}", "family": "enc"} for i in range(n)],
        }
    )


def zipf_counts(n_models: int, seconds: int, total_rps: float, seed: int = 1) -> np.ndarray:
    """Per-second Poisson arrivals, Zipf popularity, each model its own diurnal phase."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n_models + 1) ** 1.1
    w = w / w.sum() * total_rps
    t = np.arange(seconds)
    phase = rng.uniform(0, 2 * np.pi, n_models)
    rate = w[:, None] * (1 + 0.5 * np.sin(2 * np.pi * t[None, :] / 86400 + phase[:, None]))
    return rng.poisson(rate)


def placement_table() -> Any:
    """Models alpha and beta, each of the family above (choices fp32, int8), on the default
    scenario's pools: the placement backends' tests (local processes, EC2)."""
    from hybridserve.config import load_scenario
    from hybridserve.multimodel.table import build_table

    fl = model_fleet(
        {
            "families": {"enc": family()},
            "models": [{"name": "alpha", "family": "enc"}, {"name": "beta", "family": "enc"}],
        }
    )
    t = build_table(load_scenario(), fl)
    assert [c.variant for c in t.choices] == ["fp32", "int8"]
    return t


def placement_repository(base: Path, mlp_fp32_artifact: Path) -> Path:
    """alpha and beta, each in variants fp32 (60 MB by its manifest) and int8 (30 MB): two
    copies of the mlp, indexed under the deployment's names."""
    import shutil

    from predictors.memory import LoadFootprint, write_footprint

    for variant, mb in (("fp32", 60.0), ("int8", 30.0)):
        dst = base / "arts" / variant
        shutil.copytree(mlp_fp32_artifact, dst)
        write_footprint(dst, LoadFootprint(mb, 0.5, "test"), threads=1, repeats=1)
    root = base / "repo"
    root.mkdir()
    arts = "{fp32: ../arts/fp32, int8: ../arts/int8}"
    (root / "repository.yaml").write_text(f"models:\n  alpha: {arts}\n  beta: {arts}\n")
    return root


@contextlib.contextmanager
def model_servers(root: Path, n: int) -> Iterator[list[str]]:
    """`n` model servers over the repository at `root`, nothing loaded (each 1000 MB for
    models, one thread): what a placement backend's instances run. Yields their base URLs."""
    import socket
    import subprocess
    import sys

    from tests.conftest import wait_until
    from tests.test_local_placement import call

    def ready(url: str) -> bool:
        try:
            return call(url, "GET", "/v2/health/ready")[0] == 200
        except OSError:
            return False

    procs, urls = [], []
    try:
        for _ in range(n):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "hybridserve.cli", "model-server", "--repository",
                   str(root), "--port", str(port), "--memory-mb", "1000", "--threads", "1"]  # fmt: skip
            procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            urls.append(f"http://127.0.0.1:{port}")
        for u in urls:
            wait_until(lambda u=u: ready(u), 60, f"the model server at {u}")
        yield urls
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def loaded(url: str) -> dict[str, str]:
    """name -> version of the models a server has loaded (its repository index)."""
    from tests.test_local_placement import call

    rows = call(url, "POST", "/v2/repository/index", {"ready": True})[1]
    return {r["name"]: r["version"] for r in rows}


def server_for(urls: list[str]) -> Callable[[Any], str | None]:
    """AwsBackend's `url_of`: each instance, when first seen, gets the next free server."""
    given: dict[str, str] = {}

    def url_of(inst: Any) -> str | None:
        if inst.instance_id not in given and len(given) < len(urls):
            given[inst.instance_id] = urls[len(given)]
        return given.get(inst.instance_id)

    url_of.given = given  # type: ignore[attr-defined]
    return url_of
