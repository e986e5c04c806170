"""The V2 data plane: protocol logic between the transport (HTTP, Lambda) and the Models.

It checks a decoded request against the model's tensor specs (input names, datatypes, shapes,
requested outputs), splits a batch larger than the model's max batch into chunks, sends each
chunk through the model's dynamic batcher and assembles the response. It knows nothing of HTTP:
the Starlette server (`predictors.server`) and a Lambda handler both call it; the Lambda
handler, which serves one request per invocation, uses :meth:`DataPlane.infer_sync` (no queue).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from predictors.batching import BatcherStats, DynamicBatcher
from predictors.model import Model, TensorSpec, v2_datatype
from predictors.transformer import TransformedModel
from predictors.v2_decode import decode_request
from predictors.v2_encode import encode_response
from predictors.v2_metadata import model_metadata, server_metadata
from predictors.v2_types import InferRequest, InferResponse, Tensor, V2Error

SERVER_NAME = "hybridserve"
SERVER_VERSION = "0.1.0"
DEFAULT_PLATFORM = "python_numpy"


DEFAULT_MAX_BATCH = 64  # when neither the model nor the server bounds the batch


def batch_cap(model: Model, server_max: int | None) -> int:
    """Rows per predict: the smaller of the model's and the server's max batch (0/None: no
    bound from that side)."""
    caps = [int(c) for c in (getattr(model, "max_batch", 0), server_max) if c and int(c) > 0]
    return min(caps) if caps else DEFAULT_MAX_BATCH


class DataPlane:
    """Models by name, each behind its own DynamicBatcher.

    ``max_batch`` caps rows per predict call below the model's own ``max_batch``;
    ``max_delay_ms`` is the batcher's queue delay; ``max_queue`` its queue bound (503 beyond).
    With ``allow_empty`` (a model repository's server) it may start with no model; models come
    and go with `add_model` and `remove_model`, which drains the model's in-flight requests.
    """

    def __init__(
        self,
        models: Iterable[Model],
        *,
        max_batch: int | None = None,
        max_delay_ms: float = 5.0,
        max_queue: int = 1024,
        server_name: str = SERVER_NAME,
        server_version: str = SERVER_VERSION,
        allow_empty: bool = False,
    ) -> None:
        self.models: dict[str, Model] = {}
        self.batchers: dict[str, DynamicBatcher] = {}
        self.server_name = server_name
        self.server_version = server_version
        self._batching = (max_batch, max_delay_ms, max_queue)
        self._inflight: dict[str, int] = {}
        self._drained: dict[str, asyncio.Event] = {}
        # a note for a 404 on `name` (the model repository tells how to load it), else ""
        self.not_found_note: Callable[[str], str] = lambda name: ""
        for m in models:
            if m.name in self.models:
                raise ValueError(f"two models are named {m.name!r}")
            self.models[m.name] = m
        if not self.models and not allow_empty:
            raise ValueError("the data plane needs at least one model")
        for m in self.models.values():
            self._add_batcher(m)

    def _add_batcher(self, m: Model) -> DynamicBatcher:
        max_batch, max_delay_ms, max_queue = self._batching
        b = DynamicBatcher(m, batch_cap(m, max_batch), max_delay_ms, max_queue)
        self.batchers[m.name] = b
        return b

    # ---------------------------------------------------------------- models coming and going
    def add_model(self, model: Model) -> None:
        """Serve `model` from now on (on the event loop, which its batcher then runs on)."""
        if model.name in self.models:
            raise ValueError(f"model {model.name!r} is already served")
        b = self._add_batcher(model)
        self.models[model.name] = model
        with contextlib.suppress(RuntimeError):  # no running loop: the batcher starts on submit
            asyncio.get_running_loop()
            b.start()

    async def remove_model(self, name: str) -> Model:
        """Stop routing to `name` (new requests get 404), wait for its requests already accepted
        (queued or in a batch) to be answered, then stop its batcher; returns the model."""
        model = self.models.pop(name)
        if self._inflight.get(name, 0):
            done = self._drained[name] = asyncio.Event()
            try:
                await done.wait()
            finally:
                self._drained.pop(name, None)
        batcher = self.batchers.pop(name)
        await batcher.stop()
        # CPython keeps the worker's last CancelledError, whose traceback holds the batcher:
        # let go of the model here so that its session (its memory) goes with the unload
        batcher.model = _Departed(name)  # type: ignore[assignment]
        return model

    def inflight(self, name: str) -> int:
        """Requests to `name` accepted and not yet answered."""
        return self._inflight.get(name, 0)

    # ---------------------------------------------------------------- health, metadata
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Every model served is ready (true with none: a repository server waiting for loads)."""
        return all(bool(m.ready) for m in self.models.values())

    def server_metadata(self) -> dict[str, Any]:
        return server_metadata(self.server_name, self.server_version)

    def get_model(self, name: str, version: str | None = None) -> Model:
        m = self.models.get(name)
        if m is None:
            loaded = ", ".join(sorted(self.models)) or "none"
            raise V2Error(
                404,
                f"model '{name}' not found on this server; loaded: {loaded}"
                + self.not_found_note(name),
            )
        if version not in (None, "") and str(version) != str(m.version):
            raise V2Error(
                404, f"model '{name}' has no version '{version}'; serving version '{m.version}'"
            )
        return m

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        m = self.get_model(name, version)
        platform = getattr(m, "platform", None)
        if platform is None and callable(getattr(m, "describe", None)):
            platform = m.describe().get("platform")  # type: ignore[attr-defined]
        platform = str(platform or DEFAULT_PLATFORM)
        return model_metadata(m.name, [str(m.version)], platform, m.inputs, m.outputs)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return bool(self.get_model(name, version).ready)

    def stats(self) -> dict[str, BatcherStats]:
        return {name: b.stats() for name, b in self.batchers.items()}

    # ---------------------------------------------------------------- inference
    def validate(self, model: Model, request: InferRequest) -> tuple[dict[str, np.ndarray], int]:
        """The request's arrays by input name and its batch size; V2Error(400) on mismatch."""
        specs = {s.name: s for s in model.inputs}
        got = {t.name: t for t in request.inputs}
        unknown = [n for n in got if n not in specs]
        if unknown:
            raise V2Error(
                400,
                f"unknown input '{unknown[0]}' for model '{model.name}'; "
                f"expected inputs: {list(specs)}",
            )
        missing = [n for n in specs if n not in got]
        if missing:
            raise V2Error(
                400,
                f"missing input '{missing[0]}' for model '{model.name}'; "
                f"expected inputs: {list(specs)}",
            )
        for name, spec in specs.items():
            t = got[name]
            if t.datatype != spec.datatype:
                raise V2Error(
                    400, f"input '{name}': expected datatype {spec.datatype}, got {t.datatype}"
                )
            if not spec.accepts(tuple(t.shape)):
                raise V2Error(
                    400, f"input '{name}': expected shape {list(spec.shape)}, got {list(t.shape)}"
                )
        batch = {int(got[n].shape[0]) for n in specs if got[n].shape}
        if len(batch) > 1:
            raise V2Error(
                400,
                f"inputs disagree on the batch size: {sorted(batch)} "
                f"({', '.join(f'{n}: {list(got[n].shape)}' for n in specs)})",
            )
        rows = batch.pop() if batch else 1
        if rows < 1:
            raise V2Error(400, "empty batch: the first dimension of every input must be >= 1")
        out_names = {s.name for s in model.outputs}
        for o in request.outputs:
            if o.name not in out_names:
                raise V2Error(
                    400,
                    f"unknown output '{o.name}' requested from model '{model.name}'; "
                    f"outputs: {sorted(out_names)}",
                )
        return {n: got[n].data for n in specs}, rows

    def prepare(self, model: Model, request: InferRequest) -> tuple[dict[str, np.ndarray], int]:
        """The model's input arrays for `request` and its rows: checked against what clients
        send, then through the model's transformer when it has one (per request, so a bad one
        fails alone)."""
        inputs, rows = self.validate(model, request)
        if isinstance(model, TransformedModel):
            inputs, rows = model.preprocess(inputs)
        return inputs, rows

    def finish(
        self, model: Model, request: InferRequest, outputs: Mapping[str, np.ndarray]
    ) -> InferResponse:
        """The response to `request` from the model's outputs for it (through the transformer's
        postprocess when it has one)."""
        if isinstance(model, TransformedModel):
            outputs = model.postprocess(dict(outputs))
        return self.respond(model, request, outputs)

    def respond(
        self, model: Model, request: InferRequest, outputs: Mapping[str, np.ndarray]
    ) -> InferResponse:
        specs: dict[str, TensorSpec] = {s.name: s for s in model.outputs}
        wanted = [o.name for o in request.outputs] or [s.name for s in model.outputs]
        tensors = []
        for name in wanted:
            if name not in outputs:
                raise V2Error(500, f"model '{model.name}' did not return output '{name}'")
            arr = np.asarray(outputs[name])
            spec = specs.get(name)
            if spec is not None and arr.dtype != spec.dtype:
                arr = arr.astype(spec.dtype)
            datatype = spec.datatype if spec is not None else _datatype_of(arr)
            tensors.append(Tensor(name, datatype, tuple(int(d) for d in arr.shape), arr))
        return InferResponse(model.name, tensors, str(model.version), request.id)

    def _chunks(self, inputs: dict[str, np.ndarray], rows: int, size: int):
        for start in range(0, rows, size):
            yield {n: a[start : start + size] for n, a in inputs.items()}

    async def infer(
        self, name: str, request: InferRequest, version: str | None = None
    ) -> InferResponse:
        model = self.get_model(name, version)
        if not model.ready:
            raise V2Error(503, f"model '{name}' is not ready")
        inputs, rows = self.prepare(model, request)
        batcher = self.batchers[name]
        # counted from here (no await since get_model), so remove_model waits for this request
        self._inflight[name] = self._inflight.get(name, 0) + 1
        try:
            if rows <= batcher.max_batch_size:
                outputs = await batcher.submit(inputs)
            else:
                chunks = self._chunks(inputs, rows, batcher.max_batch_size)
                parts = await asyncio.gather(*(batcher.submit(c) for c in chunks))
                outputs = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        finally:
            left = self._inflight[name] = self._inflight[name] - 1
            if left == 0 and name in self._drained:
                self._drained[name].set()
        return self.finish(model, request, outputs)

    def infer_sync(
        self, name: str, request: InferRequest, version: str | None = None
    ) -> InferResponse:
        """Inference without the batcher (one request per Lambda invocation)."""
        model = self.get_model(name, version)
        if not model.ready:
            raise V2Error(503, f"model '{name}' is not ready")
        inputs, rows = self.prepare(model, request)
        size = self.batchers[name].max_batch_size
        parts = []
        for chunk in self._chunks(inputs, rows, size):
            try:
                parts.append(model.predict(chunk))
            except Exception as e:
                raise V2Error(500, f"model '{name}' failed: {type(e).__name__}: {e}") from None
        outputs = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        return self.finish(model, request, outputs)

    async def infer_bytes(
        self,
        name: str,
        body: bytes | Mapping[str, Any],
        header_length: int | str | None = None,
        version: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """Decode, infer, encode: the whole V2 infer endpoint minus the transport. A model not
        served is a 404 before the body is read (a router learns where not to send it)."""
        self.get_model(name, version)
        request = decode_request(body, header_length)
        response = await self.infer(name, request, version)
        return encode_response(response, request.binary_outputs(t.name for t in response.outputs))

    def infer_bytes_sync(
        self,
        name: str,
        body: bytes | Mapping[str, Any],
        header_length: int | str | None = None,
        version: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        self.get_model(name, version)
        request = decode_request(body, header_length)
        response = self.infer_sync(name, request, version)
        return encode_response(response, request.binary_outputs(t.name for t in response.outputs))

    def start(self) -> None:
        for b in self.batchers.values():
            b.start()

    async def stop(self) -> None:
        for b in self.batchers.values():
            await b.stop()


class _Departed:
    """What a stopped batcher keeps of its removed model: the name, for its messages."""

    def __init__(self, name: str) -> None:
        self.name = name


def _datatype_of(arr: np.ndarray) -> str:
    try:
        return v2_datatype(arr.dtype)
    except ValueError as e:
        raise V2Error(500, str(e)) from None
