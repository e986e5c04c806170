"""Pre- and post-processing around a model (issue 15), as KServe's transformer, but in the
process that runs the model: the same code runs in the model server and in the Lambda handler.

A user class subclasses `Transformer`: it declares the tensors clients send (`inputs`) and get
back (`outputs`), and turns one request's client tensors into the model's (`preprocess`) and
the model's outputs for that request into the client's (`postprocess`). It is packaged with the
artifact (`hybridserve package --transformer FILE:CLASS`): the file is one of the artifact's
files, so its sha256 is in the manifest and checked at every load, like the model's.

The data plane calls them per request, around the dynamic batcher (`TransformedModel`), so one
bad request fails alone: an exception in `preprocess` is the client's input (400 naming the
step), an exception in `postprocess` or a result that is not what the model or the client
expects is the transformer's fault (500 naming the step and what was expected); the server
keeps serving.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

from predictors.model import Model, TensorSpec
from predictors.v2_types import V2Error

MANIFEST_KEY = "transformer"  # {"file": "transformer.py", "class": "TextClassifier"}


class Transformer:
    """Subclass it: set `inputs` and `outputs` (client-side tensor specs, batch first) and
    implement the two steps. It is built with the model's own input and output specs."""

    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []

    def __init__(self, model_inputs: list[TensorSpec], model_outputs: list[TensorSpec]) -> None:
        self.model_inputs = model_inputs
        self.model_outputs = model_outputs

    def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request's client tensors -> the model's input tensors (same rows)."""
        raise NotImplementedError

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for one request -> the client's output tensors."""
        raise NotImplementedError


class TransformedModel:
    """A model served through its transformer: clients see the transformer's tensors, the
    batcher runs the model's `predict` on model tensors (`predictors.dataplane` calls
    `preprocess` and `postprocess` around it, per request)."""

    def __init__(self, model: Model, transformer: Transformer) -> None:
        self.model = model
        self.transformer = transformer
        self.name = model.name
        self.version = model.version
        self.max_batch = model.max_batch
        self.inputs = list(transformer.inputs)
        self.outputs = list(transformer.outputs)
        self.step = f"transformer {type(transformer).__name__}"

    @property
    def ready(self) -> bool:
        return self.model.ready

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.predict(inputs)

    def preprocess(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """The model's inputs for one request and its rows; V2Error naming the step."""
        try:
            out = self.transformer.preprocess(inputs)
        except V2Error:
            raise
        except Exception as e:  # noqa: BLE001 - the request's problem, told to its client
            raise V2Error(400, f"{self.step} preprocess: {type(e).__name__}: {e}") from None
        return _checked(out, self.model.inputs, f"{self.step} preprocess", cast=True)

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The client's outputs for one request; V2Error(500) naming the step."""
        try:
            out = self.transformer.postprocess(outputs)
        except V2Error:
            raise
        except Exception as e:  # noqa: BLE001 - the transformer's fault, not the client's
            raise V2Error(500, f"{self.step} postprocess: {type(e).__name__}: {e}") from None
        return _checked(out, self.outputs, f"{self.step} postprocess", cast=False)[0]


def _checked(
    out: Any, specs: list[TensorSpec], step: str, *, cast: bool
) -> tuple[dict[str, np.ndarray], int]:
    """`out` as arrays matching `specs` (names, datatypes, shapes, one batch size), else
    V2Error(500) saying what was expected. `cast`: numeric arrays take the spec's dtype."""
    if not isinstance(out, dict):
        raise V2Error(500, f"{step} returned {type(out).__name__}, expected a dict of arrays")
    missing = [s.name for s in specs if s.name not in out]
    if missing:
        raise V2Error(500, f"{step} returned no '{missing[0]}'; expected {[s.name for s in specs]}")
    arrays: dict[str, np.ndarray] = {}
    rows = set()
    for s in specs:
        a = np.asarray(out[s.name])
        if s.datatype == "BYTES":
            a = np.asarray(out[s.name], dtype=object)
        elif a.dtype != s.dtype:
            if not cast and a.dtype.kind != s.dtype.kind:
                raise V2Error(500, f"{step}: '{s.name}' is {a.dtype}, expected {s.datatype}")
            try:
                a = a.astype(s.dtype, casting="same_kind" if not cast else "unsafe")
            except (TypeError, ValueError):
                msg = f"{step}: '{s.name}' is {a.dtype}, expected {s.datatype}"
                raise V2Error(500, msg) from None
        if not s.accepts(tuple(a.shape)):
            raise V2Error(
                500, f"{step}: '{s.name}' has shape {list(a.shape)}, expected {list(s.shape)}"
            )
        arrays[s.name] = a
        rows.add(int(a.shape[0]) if a.ndim else 1)
    if len(rows) > 1:
        raise V2Error(500, f"{step}: the tensors disagree on the batch size {sorted(rows)}")
    return arrays, rows.pop() if rows else 1


def load_transformer(artifact_dir: str | Path, manifest: dict, model: Model) -> Transformer:
    """The artifact's transformer, built for `model` (the manifest's file was verified with the
    other files). The module is imported under a name from its sha256, so two artifacts'
    transformers never collide."""
    spec = manifest[MANIFEST_KEY]
    path = Path(artifact_dir) / spec["file"]
    digest = manifest["files"][spec["file"]]["sha256"]
    name = f"hybridserve_transformer_{digest[:16]}"
    mod = sys.modules.get(name)
    if mod is None:
        loader = importlib.util.spec_from_file_location(name, path)
        if loader is None or loader.loader is None:
            raise ImportError(f"{path}: not a Python module")
        mod = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(mod)
        sys.modules[name] = mod
    cls = getattr(mod, spec["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, Transformer)):
        raise ImportError(f"{path}: no Transformer subclass named {spec['class']!r}")
    return cls(list(model.inputs), list(model.outputs))


def served(model: Model, artifact_dir: str | Path, manifest: dict) -> Model | TransformedModel:
    """The model as the data plane serves it: through its transformer when it has one."""
    if MANIFEST_KEY not in manifest:
        return model
    return TransformedModel(model, load_transformer(artifact_dir, manifest, model))


def load_served(
    path: str | Path, *, threads: int = 2, extract_dir: str | Path | None = None
) -> Model | TransformedModel:
    """An artifact verified, decompressed and on onnxruntime, behind its transformer if it has
    one: how the model server, its repository and the Lambda handler all load one."""
    from predictors.artifact import load_artifact
    from predictors.onnx_model import OnnxModel

    art = load_artifact(path, extract_dir=extract_dir)
    return served(OnnxModel(art, intra_op_num_threads=threads), art.path, art.manifest)


EXAMPLES = {
    "text": ("transformers/text_classifier.py", "TextClassifier"),
    "fault": ("transformers/fault_injection.py", "FailSome"),
    "slow": ("transformers/fault_injection.py", "SlowDown"),
}  # --transformer NAME
ARTIFACT_FILE = "transformer.py"


def parse_source(spec: str) -> tuple[Path, str]:
    """`FILE:CLASS`, or the name of a shipped example (`text`), as (file, class)."""
    if spec in EXAMPLES:
        rel, cls = EXAMPLES[spec]
        return Path(__file__).resolve().parent / rel, cls
    path, sep, cls = spec.rpartition(":")
    if not sep or not path or not cls.isidentifier():
        raise ValueError(
            f"--transformer: expected FILE:CLASS (e.g. my_transformer.py:Tokenize) or one of "
            f"{sorted(EXAMPLES)}, got {spec!r}"
        )
    return Path(path), cls


def attach_transformer(artifact_dir: str | Path, source: Path, class_name: str) -> dict:
    """Copy `source` into the artifact as its transformer, listed with its sha256 in the
    manifest, after checking it builds for the artifact's model; returns the new manifest.
    ValueError naming the file and the class when it does not."""
    import shutil
    from types import SimpleNamespace

    from predictors.artifact_io import sha256_file
    from predictors.artifact_manifest import read_manifest, write_manifest

    adir = Path(artifact_dir)
    if not source.is_file():
        raise ValueError(f"--transformer: {source} is not a file")
    m = read_manifest(adir)
    shutil.copyfile(source, adir / ARTIFACT_FILE)
    digest, size = sha256_file(adir / ARTIFACT_FILE)
    trial = {
        **m,
        MANIFEST_KEY: {"file": ARTIFACT_FILE, "class": class_name},
        "files": {**m["files"], ARTIFACT_FILE: {"sha256": digest, "bytes": size}},
    }
    specs = SimpleNamespace(
        inputs=[TensorSpec.from_json(x) for x in m["inputs"]],
        outputs=[TensorSpec.from_json(x) for x in m["outputs"]],
    )
    try:
        t = load_transformer(adir, trial, specs)  # type: ignore[arg-type]
    except Exception as e:  # noqa: BLE001 - whatever the user's code raised, named
        (adir / ARTIFACT_FILE).unlink(missing_ok=True)
        raise ValueError(f"--transformer {source}:{class_name}: {type(e).__name__}: {e}") from None
    trial[MANIFEST_KEY]["inputs"] = [x.as_json() for x in t.inputs]
    trial[MANIFEST_KEY]["outputs"] = [x.as_json() for x in t.outputs]
    write_manifest(adir, trial)
    return trial
