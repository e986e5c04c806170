"""A model repository on one instance: which artifacts it may serve, which are loaded, and the
memory budget they share (Triton's model-repository extension, explicit load and unload).

The repository is a directory of artifact directories; each is known by its manifest's model
name (``build_artifact`` names directories ``<name>-<variant>``, so the directory name is not the
model's). It is rescanned on every index and on a load of a name it does not know yet, so an
artifact copied in while serving can be loaded without a restart.

Memory is accounted, not sampled: a loaded model counts its manifest's ``footprint.resident_mb``
(`predictors.memory`, measured by ``hybridserve profile`` in a fresh interpreter), else what the
process's RSS grew by while it loaded (at least its uncompressed ONNX size, since freed heap
reused by the load can hide growth). A load is admitted only if its figure fits the budget less
what is loaded; a model without a recorded footprint is checked against its ONNX size first and
against its measured growth after, and dropped again if that does not fit.

A refused load is HTTP 409 Conflict, not 507: the refusal depends on what else is loaded, and
the caller (the controller) resolves it by unloading a model or loading elsewhere. A 5xx would
read as a server fault that a retry might clear.

Loads run on one worker thread, off the event loop, so requests to the other models are served
meanwhile; loads are serialized with one another (which keeps the admission exact), and load and
unload of one model are serialized by its own lock. Unload stops routing to the model at once
(new requests get 404) and waits for the requests it already accepted, as Triton does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from predictors.artifact_manifest import MANIFEST, ArtifactError, read_manifest
from predictors.memory import rss_mb
from predictors.model import Model
from predictors.prometheus import Histogram
from predictors.repository_index import INDEX, Entry, entry_of, read_index
from predictors.v2_types import V2Error

if TYPE_CHECKING:
    from predictors.dataplane import DataPlane

log = logging.getLogger("hybridserve.repository")

MB = 1024.0 * 1024.0
REFUSED = 409  # see the module docstring
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)
MARGIN_FRACTION, MARGIN_MIN_MB = 0.10, 256.0  # the default budget's margin: see default_memory_mb
READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


class RepositoryError(ValueError):
    """A repository directory that cannot be served, or a start-up load that failed."""


@dataclass(frozen=True)
class Loaded:
    model: Model
    resident_mb: float
    source: str  # where resident_mb came from
    load_s: float


def default_memory_mb() -> tuple[float, str]:
    """The budget when none is given: memory available now, less 10 % of the machine's memory
    (at least 256 MB) for request buffers, batches and the server's own growth. The figure and
    how it was reached."""
    info: dict[str, float] = {}
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            info[key] = float(rest.split()[0]) / 1024.0  # kB -> MB
    if "MemAvailable" not in info or "MemTotal" not in info:
        raise RepositoryError(
            "cannot read the available memory here (no /proc/meminfo): pass --memory-mb"
        )
    margin = max(MARGIN_MIN_MB, MARGIN_FRACTION * info["MemTotal"])
    budget = info["MemAvailable"] - margin
    how = f"{info['MemAvailable']:.0f} MB available less a {margin:.0f} MB margin"
    if budget <= 0:
        raise RepositoryError(f"no memory left for models ({how}): pass --memory-mb")
    return budget, how


def onnx_loader(threads: int = 2, extract_dir: str | Path | None = None) -> Callable[[Path], Model]:
    """How the server loads an artifact: verified, decompressed, on onnxruntime."""

    def load(path: Path) -> Model:
        from predictors.transformer import load_served

        return load_served(path, threads=threads, extract_dir=extract_dir)  # type: ignore[return-value]

    return load


def scan(root: Path) -> tuple[dict[str, Entry], list[str]]:
    """The artifacts under `root` by model name, and what is wrong with the others. Directories
    without a manifest and hidden ones (a build's staging) are not artifacts and are skipped."""
    entries: dict[str, Entry] = {}
    problems: list[str] = []
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not d.is_dir() or not (d / MANIFEST).is_file():
            continue
        try:
            m = read_manifest(d)
        except ArtifactError as e:
            problems.append(str(e))
            continue
        name = str(m["name"])
        if name in entries:
            problems.append(
                f"{root}: two artifacts are named {name!r} in their manifests: "
                f"{entries[name].path.name} and {d.name} (keep one per model name)"
            )
            continue
        entries[name] = entry_of(name, d, manifest=m)
    return entries, problems


class ModelRepository:
    """The artifacts an instance may serve, those loaded, and their shared memory budget (MB).

    `loader` turns an artifact directory into a Model (default: `onnx_loader`); each load also
    runs one batch-1 predict, so the first request does not pay the session's warm-up.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        memory_mb: float,
        threads: int = 2,
        extract_dir: str | Path | None = None,
        loader: Callable[[Path], Model] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise RepositoryError(f"{self.root}: model repository directory not found")
        if (self.root / MANIFEST).is_file():
            raise RepositoryError(
                f"{self.root}: this is an artifact, not a repository of artifacts: serve it with "
                f"--artifact, or pass its parent directory as the repository"
            )
        if not memory_mb > 0:
            raise RepositoryError(f"memory budget must be > 0 MB, got {memory_mb}")
        self.memory_mb = float(memory_mb)
        self.variants: dict[str, dict[str, Entry]] = {}  # by name, with an index
        self.entries, problems = self._scan()
        if problems:
            raise RepositoryError("; ".join(problems))
        if not self.entries:
            raise RepositoryError(
                f"{self.root}: the repository holds no artifact (no {self.root}/*/{MANIFEST}); "
                f"build one into it with `hybridserve package --model NAME --output {self.root}`"
            )
        self._loader = loader or onnx_loader(threads, extract_dir)
        self.loaded: dict[str, Loaded] = {}
        self._busy: dict[str, str] = {}  # name -> LOADING | UNLOADING
        self._reasons: dict[str, str] = {}  # why a model is unavailable (a failed load...)
        self._locks: dict[str, asyncio.Lock] = {}
        self._admit = asyncio.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model-load")
        # metrics (event loop only): load seconds by model, load outcomes by (model, result)
        self.load_seconds: dict[str, Histogram] = {}
        self.load_results: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ reading
    @property
    def used_mb(self) -> float:
        return sum(x.resident_mb for x in self.loaded.values())

    @property
    def free_mb(self) -> float:
        return self.memory_mb - self.used_mb

    def names(self) -> list[str]:
        return sorted(self.entries)

    def models(self) -> list[Model]:
        return [x.model for x in self.loaded.values()]

    def refresh(self) -> None:
        """Rescan the directory; a name claimed twice keeps the artifact found first."""
        if not self.root.is_dir():
            log.warning("%s: model repository directory is gone; keeping the last index", self.root)
            return
        entries, problems = self._scan()
        for p in problems:
            log.warning("model repository: %s", p)
        self.entries = entries

    def _scan(self) -> tuple[dict[str, Entry], list[str]]:
        """The entries by name (an index's first variant of each), and the problems."""
        if not (self.root / INDEX).is_file():
            return scan(self.root)
        self.variants, problems = read_index(self.root)
        return {n: next(iter(vs.values())) for n, vs in self.variants.items()}, problems

    def entry(self, name: str, variant: str | None = None) -> Entry:
        """The artifact named `name` (in `variant`, with an index); V2Error(404) listing the
        repository's names, or the model's variants, otherwise."""
        if name not in self.entries or (variant and variant not in self.variants.get(name, {})):
            self.refresh()
        if name not in self.entries:
            raise V2Error(
                404,
                f"model '{name}' is not in the model repository {self.root}; it holds: "
                f"{', '.join(self.names()) or 'nothing'}",
            )
        if variant is None:
            return self.entries[name]
        have = self.variants.get(name) or {self.entries[name].version: self.entries[name]}
        if variant not in have:
            raise V2Error(
                404,
                f"model '{name}' has no variant '{variant}' in the model repository "
                f"{self.root}; its variants: {', '.join(have)}",
            )
        return have[variant]

    def state(self, name: str) -> tuple[str, str]:
        if name in self._busy:
            return self._busy[name], ""
        if name in self.loaded:
            return READY, ""
        return UNAVAILABLE, self._reasons.get(name, "not loaded")

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: name, version, state and reason of every model."""
        self.refresh()
        out = []
        for name in sorted(set(self.entries) | set(self.loaded)):
            state, reason = self.state(name)
            if ready_only and state != READY:
                continue
            x = self.loaded.get(name)
            version = x.model.version if x is not None else self.entries[name].version
            out.append({"name": name, "version": str(version), "state": state, "reason": reason})
        return out

    def not_found_note(self, name: str) -> str:
        """What a 404 for `name` adds: that it is loading, or how to load it."""
        if name in self._busy:
            return f"; model '{name}' is {self._busy[name].lower()}"
        if name in self.entries:
            return f"; it is in this server's repository: POST /v2/repository/models/{name}/load"
        return ""

    # ------------------------------------------------------------------ admission
    def _estimate(self, e: Entry) -> tuple[float, str]:
        if e.footprint_mb is not None:
            return e.footprint_mb, "its manifest's footprint"
        return e.onnx_mb, "at least its uncompressed ONNX size; no footprint in its manifest"

    def _refusal(self, name: str, need_mb: float, source: str) -> V2Error | None:
        free = self.free_mb
        if need_mb <= free:
            return None
        loaded = ", ".join(f"{n} {x.resident_mb:.1f} MB" for n, x in sorted(self.loaded.items()))
        return V2Error(
            REFUSED,
            f"model '{name}' needs {need_mb:.1f} MB resident ({source}), more than the "
            f"{free:.1f} MB free of the {self.memory_mb:.1f} MB memory budget; loaded: "
            f"{loaded or 'nothing'}. Unload a model first, or raise --memory-mb",
        )

    def _load_blocking(self, e: Entry) -> Loaded:
        """Load and warm `e` (on the load thread); what it costs, not yet admitted."""
        from predictors.profile import sample_inputs

        before = rss_mb()
        t0 = time.perf_counter()
        model = self._loader(e.path)
        if e.variant is not None:  # indexed: served under the index's name, its variant
            model.name, model.version = e.name, e.variant
        elif model.name != e.name:
            raise ArtifactError(f"{e.path}: loads as model {model.name!r}, indexed as {e.name!r}")
        model.predict(sample_inputs(model.inputs, 1))
        load_s = time.perf_counter() - t0
        if e.footprint_mb is not None:
            return Loaded(model, e.footprint_mb, "its manifest's footprint", load_s)
        grown = rss_mb() - before
        return Loaded(model, max(grown, e.onnx_mb), "measured at load", load_s)

    def _count(self, name: str, result: str) -> None:
        self.load_results[(name, result)] = self.load_results.get((name, result), 0) + 1

    def _refuse(self, name: str, err: V2Error) -> V2Error:
        self._count(name, "refused")
        self._reasons[name] = err.message
        return err

    def _commit(self, e: Entry, x: Loaded) -> V2Error | None:
        """Admit a loaded model; the 409 to raise when its measured size does not fit after
        all (returned, not raised, so that the caller can drop the model first)."""
        err = self._refusal(e.name, x.resident_mb, x.source)
        if err is not None:
            return self._refuse(e.name, err)
        self.loaded[e.name] = x
        self._reasons.pop(e.name, None)
        self._count(e.name, "loaded")
        h = self.load_seconds.setdefault(e.name, Histogram(LOAD_BUCKETS))
        h.observe(x.load_s)
        log.info("loaded model %s: %.1f MB (%s), %.2f s", e.name, x.resident_mb, x.source, x.load_s)
        return None

    # ------------------------------------------------------------------ load and unload
    def _loaded_as(self, e: Entry) -> bool:
        """True when `e`'s model is loaded in `e`'s variant; V2Error(409) when in another."""
        x = self.loaded.get(e.name)
        if x is None:
            return False
        if e.variant is not None and str(x.model.version) != e.variant:
            raise V2Error(
                REFUSED,
                f"model '{e.name}' is loaded as variant '{x.model.version}': unload it before "
                f"loading variant '{e.variant}'",
            )
        return True

    def load_now(self, name: str, variant: str | None = None) -> Model:
        """Load `name` in this thread, before serving starts (``--load``); RepositoryError with
        the figures or the repository's names when it cannot be."""
        try:
            e = self.entry(name, variant)
            if self._loaded_as(e):
                return self.loaded[name].model
            err = self._refusal(name, *self._estimate(e))
            if err is not None:
                raise self._refuse(name, err)
            x = self._load_blocking(e)
            refused = self._commit(e, x)
            if refused is not None:
                del x
                _release()
                raise refused
        except V2Error as err:
            raise RepositoryError(err.message) from None
        return self.loaded[name].model

    async def load(self, name: str, dataplane: DataPlane, variant: str | None = None) -> None:
        """Load `name` (in `variant`) off the event loop and serve it; a no-op when it is loaded
        so. V2Error: 404 unknown, 409 over the memory budget or loaded as another variant, 500
        a damaged artifact or a failing model."""
        e = self.entry(name, variant)
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self._loaded_as(e):
                return
            async with self._admit:
                err = self._refusal(name, *self._estimate(e))
                if err is not None:
                    raise self._refuse(name, err)
                self._busy[name] = LOADING
                try:
                    loop = asyncio.get_running_loop()
                    x = await loop.run_in_executor(self._executor, self._load_blocking, e)
                except Exception as exc:
                    self._count(name, "failed")
                    msg = (
                        f"loading model '{name}' from {e.path} failed: {type(exc).__name__}: {exc}"
                    )
                    self._reasons[name] = msg
                    raise V2Error(500, msg) from None
                finally:
                    self._busy.pop(name, None)
                refused = self._commit(e, x)
                if refused is not None:
                    del x  # give its memory back before answering
                    _release()
                    raise refused
                dataplane.add_model(x.model)

    async def unload(self, name: str, dataplane: DataPlane) -> None:
        """Stop serving `name` once its accepted requests are answered, and free its memory;
        a no-op when it is not loaded, V2Error(404) when the repository has no such model."""
        if name not in self.loaded:
            self.entry(name)  # 404 for a name the repository does not hold
        async with self._locks.setdefault(name, asyncio.Lock()):
            if name not in self.loaded:
                return
            self._busy[name] = UNLOADING
            try:
                await dataplane.remove_model(name)
            finally:
                self._busy.pop(name, None)
            x = self.loaded.pop(name)
            self._reasons[name] = "unloaded"
            log.info("unloaded model %s: %.1f MB freed", name, x.resident_mb)
            del x
            _release()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _release() -> None:
    """Collect a dropped model and hand freed heap back to the OS (glibc keeps it otherwise),
    so that the RSS follows an unload."""
    gc.collect()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def repository_json(body: bytes) -> dict[str, Any]:
    """A repository request's optional JSON body; V2Error(400) when it is not an object."""
    import json

    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise V2Error(400, f"repository request: bad JSON ({e})") from None
    if not isinstance(doc, dict):
        raise V2Error(400, "repository request: expected a JSON object")
    return doc
