"""Model families: the variants of one reference model, each with its measured accuracy.

A family is one task served by interchangeable variants (fp32, fp16, int8, a distilled student
and its int8), so that a planner can trade accuracy for cost (model-less serving). Every
variant is an artifact (`predictors.artifact.build_artifact`; the int8 guard still applies, and
a variant that fails it is recorded under ``rejected`` with the guard's reason). Its accuracy
is its **top-1 agreement with the fp32 reference** on held-out generated inputs (a seed stream
that neither the guard nor the distillation uses), run through onnxruntime on this CPU: what
serves. Random-weight references have near-uniform logits, so ``reference_outputs`` records how
hard agreement is there: the top-1 margins, the share of the most common class (what a
constant answer scores) and a random student's agreement (chance).

`build_family` writes the artifacts and ``family.yaml`` (`FamilyReport`), with each variant's
serving profile and load footprint when asked; `hybridserve.multimodel.spec.family_from_file`
reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from predictors import distill as D

VARIANTS = ("fp32", "fp16", "int8", "distilled", "distilled-int8")
DEFAULT_VARIANTS = ("fp32", "fp16", "int8", "distilled")
REFERENCE = "fp32"
FAMILY_FILE = "family.yaml"
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
METRIC = "top-1 agreement with the fp32 reference on held-out generated inputs"
MB = 2**20


@dataclass
class VariantReport:
    """One built variant: its artifact, accuracy against the reference, size and speed."""

    artifact: str
    accuracy: float
    cosine: float  # mean per-sample cosine of the logits to the reference's
    pooled_cosine: float
    params: int
    size_mb: float  # compressed artifact, what ships
    onnx_mb: float
    profile: dict[str, Any] | None = None
    footprint: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class FamilyReport:
    """What ``family.yaml`` holds (`as_dict`/`from_dict` round-trip)."""

    family: str
    provenance: str
    measured: dict[str, Any]
    variants: dict[str, VariantReport]
    rejected: dict[str, str] = field(default_factory=dict)
    reference_outputs: dict[str, Any] = field(default_factory=dict)
    distillation: dict[str, Any] | None = None
    reference: str = REFERENCE

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "family": self.family,
            "reference": self.reference,
            "provenance": self.provenance,
            "measured": self.measured,
            "reference_outputs": self.reference_outputs,
            "variants": {k: v.as_dict() for k, v in self.variants.items()},
            "rejected": dict(self.rejected),
        }
        if self.distillation is not None:
            out["distillation"] = self.distillation
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FamilyReport:
        return cls(
            family=d["family"],
            reference=d.get("reference", REFERENCE),
            provenance=d.get("provenance", ""),
            measured=dict(d.get("measured") or {}),
            reference_outputs=dict(d.get("reference_outputs") or {}),
            variants={k: VariantReport(**v) for k, v in (d.get("variants") or {}).items()},
            rejected=dict(d.get("rejected") or {}),
            distillation=d.get("distillation"),
        )

    def write(self, path: str | Path, header: str = "") -> Path:
        path = Path(path)
        text = yaml.safe_dump(self.as_dict(), sort_keys=False, width=100)
        path.write_text(header + text, encoding="utf-8")
        return path


def load_family(path: str | Path) -> FamilyReport:
    """A family file written by `build_family` (a directory means its ``family.yaml``)."""
    p = Path(path)
    p = p / FAMILY_FILE if p.is_dir() else p
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "family" not in data:
        raise ValueError(f"{p}: not a family file (no `family:` mapping)")
    return FamilyReport.from_dict(data)


def parse_variants(text: str | Sequence[str]) -> tuple[str, ...]:
    """Variant names from ``fp32,int8`` or a list; ValueError naming the unknown one."""
    names = [v.strip() for v in (text.split(",") if isinstance(text, str) else text)]
    names = [v for v in names if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variant {bad[0]!r}; choose from {', '.join(VARIANTS)}")
    if not names:
        raise ValueError(f"no variants given; choose from {', '.join(VARIANTS)}")
    return tuple(dict.fromkeys(names))


# --------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------


def _eval_chunks(ref: Any, n: int, seed: int, batch: int) -> Iterator[dict[str, np.ndarray]]:
    return D.generated_inputs(ref, n, seed, D.EVAL, chunk=batch)


def _onnx_logits(model: Any, chunks: Iterator[dict[str, np.ndarray]]) -> np.ndarray:
    name = model.outputs[0].name
    return np.concatenate([np.asarray(model.predict(x)[name], np.float64) for x in chunks])


def _torch_logits(module: Any, ref: Any, chunks: Iterator[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([D.torch_logits(module, ref, x).astype(np.float64) for x in chunks])


def _variant_report(art: Path, logits: np.ndarray, ref_logits: np.ndarray) -> VariantReport:
    from predictors.artifact import read_manifest
    from predictors.guard import pooled_cosine

    m = read_manifest(art)
    return VariantReport(
        artifact=art.name,
        accuracy=round(D.agreement(ref_logits, logits), 4),
        cosine=round(D.mean_cosine(ref_logits, logits), 6),
        pooled_cosine=round(pooled_cosine([ref_logits], [logits]), 6),
        params=int((m.get("source") or {}).get("parameters") or 0),
        size_mb=round(m["sizes"]["compressed_bytes"] / MB, 4),
        onnx_mb=round(m["sizes"]["onnx_bytes"] / MB, 4),
    )


def _footprint(art: Path, threads: int, repeats: int) -> dict[str, Any] | None:
    """The artifact's resident MB and load time (`predictors.memory`), also written to its
    manifest; None where that module is absent."""
    try:
        from predictors.memory import measure_load, write_footprint
    except ImportError:  # pragma: no cover - hook for trees without predictors.memory
        return None
    fp = measure_load(art, threads=threads, repeats=repeats)
    write_footprint(art, fp, threads=threads, repeats=repeats)
    return fp.as_json()


def _profile(
    model: Any,
    label: str,
    batch_sizes: Sequence[int],
    threads: int,
    repeats: int,
    load_s: float | None,
) -> dict[str, Any]:
    """`hybridserve profile`'s document of the variant; the Lambda cold start is the measured
    load (verify, decompress, session, first predict) when known."""
    from predictors.profile import profile_document, profile_model

    rows = profile_model(model, list(batch_sizes), repeats=repeats)
    doc = profile_document(label, rows, threads, cold_start_s=load_s)
    if load_s is not None:
        doc["provenance"] += (
            f", {repeats} repeats; lambda.cold_start_s is the measured load in a fresh process "
            "(predictors.memory), without the interpreter's start or Lambda's sandbox"
        )
    return doc


def _measure_speed(
    rep: VariantReport,
    art: Path,
    model: Any,
    label: str,
    sizes: Sequence[int],
    threads: int,
    repeats: int,
    footprint_repeats: int,
) -> None:
    rep.footprint = _footprint(art, threads, footprint_repeats)
    load_s = rep.footprint["load_s"] if rep.footprint else None
    rep.profile = _profile(model, label, sizes, threads, repeats, load_s)


def profile_family(
    path: str | Path,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    threads: int = 2,
    repeats: int = 10,
    footprint_repeats: int = 3,
    log: Callable[[str], None] | None = None,
) -> FamilyReport:
    """(Re)measure the profile and footprint of every variant of the family at `path` on this
    machine, accuracy untouched, and rewrite its ``family.yaml``: a profile per hardware, or a
    rerun when the first was taken on a busy host."""
    from predictors.artifact_build import DEFAULT_MAX_BATCH
    from predictors.onnx_model import OnnxModel

    say = log or (lambda _msg: None)
    root = Path(path)
    root = root.parent if root.name == FAMILY_FILE else root
    report = load_family(root)
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1 or sizes[-1] > DEFAULT_MAX_BATCH:
        raise ValueError(f"batch sizes must lie in 1..{DEFAULT_MAX_BATCH}, got {list(batch_sizes)}")
    for v, rep in report.variants.items():
        art = root / rep.artifact
        say(f"profiling {art.name}")
        om = OnnxModel(art, intra_op_num_threads=threads)
        label = f"{report.family}-{v}"
        _measure_speed(rep, art, om, label, sizes, threads, repeats, footprint_repeats)
    report.measured["profiled"] = {**_machine(threads), "repeats": repeats}
    report.write(root / FAMILY_FILE)
    return report


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _distilled_artifact(
    student_onnx: Path, work: Path, final: Path, variant: str, name: str, seed: int, record: dict
) -> Path:
    """The student built like any artifact (guarded against its own fp32 for int8), then named
    `variant` in its manifest with the distillation's record as its source."""
    from predictors.artifact_build import _replace_dir, build_artifact
    from predictors.artifact_manifest import MANIFEST

    kind = "int8" if variant.endswith("int8") else "fp32"
    built = build_artifact(student_onnx, work / variant, variant=kind, name=name, seed=seed)
    m = json.loads((built / MANIFEST).read_text(encoding="utf-8"))
    m["variant"] = variant
    m["variant_requested"] = variant
    m["source"] = {"kind": "distilled", **record}
    _write_json(built / MANIFEST, m)
    _replace_dir(built, final)
    return final


def build_family(
    model: str,
    output: str | Path,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    *,
    seed: int = 0,
    eval_inputs: int = 1024,
    profile: bool = False,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    threads: int = 2,
    repeats: int = 10,
    footprint_repeats: int = 3,
    log: Callable[[str], None] | None = None,
) -> FamilyReport:
    """Build the variants of reference `model` into `output`, measure each against fp32 on
    `eval_inputs` held-out inputs through onnxruntime (`threads` threads) and write
    ``output/family.yaml``. With `profile`, each variant also gets `hybridserve profile`'s
    document (`batch_sizes`, `repeats`) and its load footprint. fp32 is always built: it is the
    reference (listed only if asked for)."""
    from predictors.artifact_build import DEFAULT_MAX_BATCH, build_artifact
    from predictors.guard import AccuracyError
    from predictors.onnx_model import OnnxModel
    from predictors.reference import get_reference

    say = log or (lambda _msg: None)
    D.family_kind(model)  # ValueError naming the models with a student
    variants = parse_variants(variants)
    if eval_inputs < 1:
        raise ValueError(f"eval_inputs must be at least 1, got {eval_inputs}")
    sizes = sorted({int(b) for b in batch_sizes})
    if profile and (not sizes or sizes[0] < 1 or sizes[-1] > DEFAULT_MAX_BATCH):
        raise ValueError(f"batch sizes must lie in 1..{DEFAULT_MAX_BATCH}, got {list(batch_sizes)}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    batch = min(32, DEFAULT_MAX_BATCH)
    t_start = time.perf_counter()
    ref = get_reference(model, seed)
    built: dict[str, Path] = {}
    rejected: dict[str, str] = {}
    distilled: D.Distilled | None = None
    work = Path(tempfile.mkdtemp(prefix=".family-", dir=output))
    try:
        for v in (REFERENCE, *[x for x in variants if x != REFERENCE]):
            say(f"building {model} {v}")
            t0 = time.perf_counter()
            try:
                if v in ("fp32", "fp16", "int8"):
                    dest = output if v in variants else work
                    built[v] = build_artifact(model, dest, variant=v, seed=seed)
                else:
                    if distilled is None:
                        distilled = D.distill(model, seed=seed, threads=threads, reference=ref)
                        say(f"distilled {model} in {distilled.record['seconds']} s")
                        D.export_student(distilled, work / "student.onnx")
                    built[v] = _distilled_artifact(
                        work / "student.onnx", work, output / f"{model}-{v}", v, model, seed,
                        distilled.record,
                    )  # fmt: skip
            except AccuracyError as e:
                rejected[v] = str(e)
                say(f"rejected {v}: {e}")
                continue
            say(f"built {built[v].name} in {time.perf_counter() - t0:.1f} s")

        say(f"measuring on {eval_inputs} held-out inputs")
        ref_model = OnnxModel(built[REFERENCE], intra_op_num_threads=threads)
        ref_logits = _onnx_logits(ref_model, _eval_chunks(ref, eval_inputs, seed, batch))
        reports: dict[str, VariantReport] = {}
        for v in variants:
            if v not in built:
                continue
            om = ref_model if v == REFERENCE else OnnxModel(built[v], intra_op_num_threads=threads)
            logits = ref_logits if v == REFERENCE else _onnx_logits(
                om, _eval_chunks(ref, eval_inputs, seed, batch)
            )  # fmt: skip
            rep = _variant_report(built[v], logits, ref_logits)
            if profile:
                say(f"profiling {built[v].name}")
                _measure_speed(rep, built[v], om, f"{model}-{v}", sizes, threads, repeats,
                               footprint_repeats)  # fmt: skip
            reports[v] = rep
            say(f"{v}: agreement {rep.accuracy}, cosine {rep.cosine}")

        outputs = D.margin_stats(ref_logits)
        if outputs["majority_fraction"] >= 0.99:
            outputs["warning"] = (
                f"the reference gives one class for {outputs['majority_fraction']:.0%} of the "
                "inputs: top-1 agreement cannot tell the variants apart here; compare cosine"
            )
            say(f"warning: {outputs['warning']}")
        baseline = D.random_student(model, seed)
        chunks = _eval_chunks(ref, eval_inputs, seed, batch)
        outputs["random_student_agreement"] = round(
            D.agreement(ref_logits, _torch_logits(baseline, ref, chunks)), 4
        )
        dist_record = None
        if distilled is not None:
            dist_record = dict(distilled.record)
            dist_record["random_student_agreement"] = outputs["random_student_agreement"]
            if D.family_kind(model) != "mlp":  # the mlp student starts from random weights
                init = D.student_for(model, ref.module, seed)
                chunks = _eval_chunks(ref, eval_inputs, seed, batch)
                dist_record["untrained_agreement"] = round(
                    D.agreement(ref_logits, _torch_logits(init, ref, chunks)), 4
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = FamilyReport(
        family=model,
        provenance=_provenance(model, seed, eval_inputs, threads, profile),
        measured=_measured(seed, eval_inputs, threads, time.perf_counter() - t_start),
        variants=reports,
        rejected=rejected,
        reference_outputs=outputs,
        distillation=dist_record,
    )
    report.write(output / FAMILY_FILE)
    return report


def _machine(threads: int) -> dict[str, Any]:
    from predictors.isa import cpu_isa, onnxruntime_version

    isa = cpu_isa()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "cpu_model": isa.cpu_model,
        "vcpus": os.cpu_count(),
        "machine": isa.machine,
        "isa": isa.isa,
        "int8_path": isa.int8_path,
        "onnxruntime": onnxruntime_version() or "?",
        "threads": threads,
    }


def _measured(seed: int, eval_inputs: int, threads: int, seconds: float) -> dict[str, Any]:
    return {
        **_machine(threads),
        "seed": seed,
        "eval_inputs": eval_inputs,
        "eval_seed_stream": [seed, D.EVAL],
        "metric": METRIC,
        "build_s": round(seconds, 1),
    }


def _provenance(model: str, seed: int, n: int, threads: int, profiled: bool) -> str:
    from predictors.isa import cpu_isa, onnxruntime_version

    isa = cpu_isa()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return (
        f"measured by `hybridserve family build --model {model} --seed {seed}"
        f"{' --profile' if profiled else ''}` on {when}: {os.cpu_count()}-vCPU {isa.machine} "
        f"{isa.cpu_model} (ISA {isa.isa}, int8 path {isa.int8_path}), onnxruntime "
        f"{onnxruntime_version() or '?'} with {threads} intra-op threads; accuracy: {METRIC} "
        f"({n} inputs)"
    )
