"""A smaller student distilled in code from a reference model (build time only; needs torch).

The references have seeded random weights, so a student is trained to match the reference's
outputs on generated inputs (the guard's generator, `predictors.sources.example_inputs`): no
data set is needed, and its top-1 agreement with the reference on held-out inputs is a real
accuracy figure, below 1.0 and well above a random student's (the chance baseline).

Students (`student_for`), each initialised from the teacher where the shapes allow, as
DistilBERT was:

- BERT (``distilbert``, ``tinybert``): every third layer (2 of 6), the teacher's embeddings
  frozen. Trained on the hidden states of every position (TinyBERT-style) and on the logits
  the teacher's head gives at every position: measured on distilbert, the first token decides
  99.5% of the variance of the logit difference, so each position is a sample of the same
  per-token function, 32x more signal per teacher pass than the output alone. Training uses
  the teacher's own run on 32-token inputs (`seq_len`), a quarter of the cost; the held-out
  figure (full 128-token inputs) shows what that costs.
- ResNet (``resnet50``): the stem and the first (downsampling) block of each stage, 4 of 16
  bottlenecks; trained on the pooled features and the logits.
- MLP: one hidden layer of 32 instead of two of 64, trained from random weights on the logits.

Losses are mean squared errors on the raw logits (and hidden states), each over its target's
variance: MSE on logits is what KL at a high temperature tends to, and raw rather than centred
logits keep the student's cosine to the reference meaningful. Everything is seeded: the same
seed and thread count give the same student.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from predictors.reference import ReferenceModel, get_reference

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

# purposes of the seed streams drawn from one user seed (`input_seed`)
TRAIN, EVAL, BASELINE = 1, 2, 3
FAMILIES = {"distilbert": "bert", "tinybert": "bert", "resnet50": "resnet", "mlp": "mlp"}


@dataclass(frozen=True)
class DistillSettings:
    """Training budget of a student: generated inputs, passes over them, batch, step size."""

    train_inputs: int
    epochs: int
    batch: int
    lr: float
    seq_len: int | None = None  # BERT: tokens per training input (the first positions)
    hidden_weight: float = 0.3  # hidden-state loss against the logit loss


# budgets: distilbert 74 s on 2 idle cores (README "Model families"), resnet50 35 s, mlp 2 s
SETTINGS: dict[str, DistillSettings] = {
    "bert": DistillSettings(train_inputs=1024, epochs=3, batch=32, lr=1e-4, seq_len=32),
    "resnet": DistillSettings(train_inputs=128, epochs=2, batch=16, lr=1e-4),
    "mlp": DistillSettings(train_inputs=4096, epochs=60, batch=256, lr=1e-2),
}


@dataclass
class Distilled:
    """A trained student, the untrained random one (chance baseline) and how it was made."""

    name: str
    student: nn.Module
    baseline: nn.Module
    reference: ReferenceModel
    record: dict[str, Any] = field(default_factory=dict)

    def predict(self, inputs: dict[str, np.ndarray], *, baseline: bool = False) -> np.ndarray:
        return torch_logits(self.baseline if baseline else self.student, self.reference, inputs)


def _torch() -> Any:
    from predictors.export import _torch as load

    return load()


def family_kind(name: str) -> str:
    if name not in FAMILIES:
        raise ValueError(f"no student for model {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def input_seed(seed: int, purpose: int, chunk: int = 0) -> int:
    """An independent seed per (user seed, purpose, chunk): training and held-out inputs never
    share a stream, nor do they share the guard's (which uses the user seed itself)."""
    return int(np.random.SeedSequence([seed, purpose, chunk]).generate_state(1)[0])


def generated_inputs(
    ref: ReferenceModel, n: int, seed: int, purpose: int, *, chunk: int = 32
) -> Iterator[dict[str, np.ndarray]]:
    """`n` generated inputs in chunks of `chunk` (ResNet-sized inputs do not fit at once)."""
    from predictors.sources import example_inputs

    for i, start in enumerate(range(0, n, chunk)):
        b = min(chunk, n - start)
        yield example_inputs(
            ref.inputs, ref.input_ranges, batch=b, seed=input_seed(seed, purpose, i)
        )


def torch_logits(
    module: nn.Module, ref: ReferenceModel, inputs: dict[str, np.ndarray]
) -> np.ndarray:
    torch = _torch()
    args = [torch.from_numpy(np.ascontiguousarray(inputs[s.name])) for s in ref.inputs]
    with torch.no_grad():
        return module(*args).numpy()


def agreement(reference: np.ndarray, got: np.ndarray) -> float:
    """Top-1 agreement: the fraction of samples whose arg-max class is the reference's."""
    return float(np.mean(np.argmax(reference, axis=1) == np.argmax(got, axis=1)))


def mean_cosine(reference: np.ndarray, got: np.ndarray) -> float:
    """Mean over samples of the cosine of the logit vectors (-1 for a non-finite row)."""
    from predictors.guard import cosine_per_sample

    return float(np.mean(cosine_per_sample([reference], [got])))


def margin_stats(logits: np.ndarray) -> dict[str, Any]:
    """How hard top-1 agreement is on these inputs: the top-1 minus top-2 logit margins, and the
    share of the most common class (what a constant answer would score)."""
    top = np.sort(logits, axis=1)
    margin = top[:, -1] - top[:, -2]
    counts = np.bincount(np.argmax(logits, axis=1), minlength=logits.shape[1])
    return {
        "classes": int(logits.shape[1]),
        "classes_seen": int((counts > 0).sum()),
        "majority_fraction": round(float(counts.max() / len(logits)), 4),
        "margin_p5": round(float(np.percentile(margin, 5)), 6),
        "margin_p50": round(float(np.percentile(margin, 50)), 6),
        "margin_p95": round(float(np.percentile(margin, 95)), 6),
        "logit_std": round(float(logits.std()), 6),
    }


# --------------------------------------------------------------------------------------------
# students
# --------------------------------------------------------------------------------------------


def _keep_layers(n: int, k: int) -> list[int]:
    """`k` of `n` layers, evenly spaced and ending with the last (2 of 6: layers 2 and 5)."""
    return sorted({round((i + 1) * n / k) - 1 for i in range(k)})


def _bert_student(teacher: nn.Module) -> nn.Module:
    torch = _torch()
    n = len(teacher.layers)
    student = copy.deepcopy(teacher)
    student.layers = torch.nn.ModuleList(student.layers[i] for i in _keep_layers(n, max(1, n // 3)))
    return student


def _resnet_student(teacher: nn.Module) -> nn.Module:
    torch = _torch()
    student = copy.deepcopy(teacher)
    student.stages = torch.nn.Sequential(*(b for b in student.stages if b.downsample is not None))
    return student


def _mlp_student(teacher: nn.Module, seed: int) -> nn.Module:
    torch = _torch()
    nn = torch.nn
    first = next(m for m in teacher.modules() if isinstance(m, nn.Linear))
    last = [m for m in teacher.modules() if isinstance(m, nn.Linear)][-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(first.in_features, 32), nn.ReLU(), nn.Linear(32, last.out_features)
        ).eval()


def student_for(name: str, teacher: nn.Module, seed: int = 0) -> nn.Module:
    """The untrained student of reference `name`: the teacher's layers subset (BERT, ResNet) or
    a narrower MLP with seeded random weights."""
    kind = family_kind(name)
    if kind == "bert":
        return _bert_student(teacher).eval()
    if kind == "resnet":
        return _resnet_student(teacher).eval()
    return _mlp_student(teacher, seed)


def random_student(name: str, seed: int = 0) -> nn.Module:
    """The student's architecture with random weights (the chance baseline): a subset of an
    independently seeded reference for BERT and ResNet, the untrained MLP for mlp."""
    other = get_reference(name, input_seed(seed, BASELINE)).module
    return student_for(name, other, seed)


def parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def _bert_parts(m: nn.Module) -> tuple[Any, Any]:
    torch = _torch()

    def embed(ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1])
        return m.embed_layer_norm(m.word_embeddings(ids) + m.position_embeddings(pos))

    def head(h: torch.Tensor) -> torch.Tensor:
        return m.classifier(torch.relu(m.pre_classifier(h)))

    return embed, head


def _bert_run(m: nn.Module, ids: Any, mask: Any) -> tuple[Any, Any]:
    """(last hidden states, logits of the head at every position)."""
    embed, head = _bert_parts(m)
    x = embed(ids)
    bias = (1.0 - mask.to(x.dtype))[:, None, None, :] * -1e4
    for layer in m.layers:
        x = layer(x, bias)
    return x, head(x)


def _resnet_run(m: nn.Module, images: Any) -> tuple[Any, Any]:
    """(pooled features, logits)."""
    torch = _torch()
    feats = torch.flatten(m.pool(m.stages(m.stem(images))), 1)
    return feats, m.fc(feats)


def _teacher_targets(kind: str, teacher: nn.Module, batches: list[list[Any]]) -> list[list[Any]]:
    torch = _torch()
    out = []
    with torch.no_grad():
        for xs in batches:
            if kind == "bert":
                h, y = _bert_run(teacher, *xs)
            elif kind == "resnet":
                h, y = _resnet_run(teacher, *xs)
            else:
                h, y = None, teacher(*xs)
            out.append([h, y])
    return out


def _student_outputs(kind: str, student: nn.Module, xs: list[Any]) -> tuple[Any, Any]:
    if kind == "bert":
        h, y = _bert_run(student, *xs)
    elif kind == "resnet":
        h, y = _resnet_run(student, *xs)
    else:
        h, y = None, student(*xs)
    return h, y


def _training_batches(ref: ReferenceModel, s: DistillSettings, seed: int) -> list[list[Any]]:
    """The generated training inputs as torch tensors, in the reference's input order."""
    torch = _torch()
    out = []
    for x in generated_inputs(ref, s.train_inputs, seed, TRAIN, chunk=s.batch):
        if s.seq_len is not None:
            x = {k: np.ascontiguousarray(v[:, : s.seq_len]) for k, v in x.items()}
        out.append([torch.from_numpy(x[spec.name]) for spec in ref.inputs])
    return out


def distill(
    name: str,
    *,
    seed: int = 0,
    settings: DistillSettings | None = None,
    threads: int | None = None,
    reference: ReferenceModel | None = None,
) -> Distilled:
    """Train the student of reference `name` (weights from `seed`) to match it on generated
    inputs; deterministic given the seed and the thread count. `reference` saves building the
    reference again when the caller has it (it must be `name` with weights from `seed`)."""
    torch = _torch()
    kind = family_kind(name)
    s = settings or SETTINGS[kind]
    ref = reference or get_reference(name, seed)
    teacher = ref.module.eval()
    saved_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(input_seed(seed, TRAIN))
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            student = student_for(name, teacher, seed)
            batches = _training_batches(ref, s, seed)
            targets = _teacher_targets(kind, teacher, batches)
            t_teacher = time.perf_counter() - t0
            losses = _train(kind, student, batches, targets, s)
        finally:
            torch.set_num_threads(saved_threads)
    seconds = time.perf_counter() - t0
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    record = {
        "from": name,
        "architecture": describe_student(name, student, teacher),
        "parameters": parameters(student),
        "reference_parameters": parameters(teacher),
        "seed": seed,
        "train_inputs": s.train_inputs,
        "train_seq_len": s.seq_len,
        "epochs": s.epochs,
        "batch": s.batch,
        "lr": s.lr,
        "steps": len(losses),
        "loss_first": round(losses[0], 6),
        "loss_last_epoch": round(float(np.mean(losses[-len(batches) :])), 6),
        "teacher_s": round(t_teacher, 1),
        "seconds": round(seconds, 1),
        "threads": threads or saved_threads,
    }
    return Distilled(name, student, random_student(name, seed), ref, record)


def _train(
    kind: str,
    student: nn.Module,
    batches: list[list[Any]],
    targets: list[list[Any]],
    s: DistillSettings,
) -> list[float]:
    """Adam over the student's trainable weights (BERT: all but the embeddings)."""
    torch = _torch()
    if kind == "bert":
        for mod in (student.word_embeddings, student.position_embeddings, student.embed_layer_norm):
            for p in mod.parameters():
                p.requires_grad_(False)
    var_y = float(torch.cat([t[1] for t in targets]).var())
    var_h = float(torch.cat([t[0] for t in targets]).var()) if kind != "mlp" else 1.0
    weights = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(weights, lr=s.lr)
    order = torch.Generator().manual_seed(0)
    losses: list[float] = []
    # eval mode throughout: no dropout anywhere, and BatchNorm keeps the teacher's statistics
    student.eval()
    for _ in range(s.epochs):
        for i in torch.randperm(len(batches), generator=order).tolist():
            h, y = _student_outputs(kind, student, batches[i])
            th, ty = targets[i]
            loss = ((y - ty) ** 2).mean() / var_y
            if h is not None:
                loss = loss + s.hidden_weight * ((h - th) ** 2).mean() / var_h
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses


def describe_student(name: str, student: nn.Module, teacher: nn.Module) -> str:
    kind = family_kind(name)
    if kind == "bert":
        n, k = len(teacher.layers), len(student.layers)
        return f"BERT, {k} of {n} layers ({_keep_layers(n, k)}), embeddings frozen"
    if kind == "resnet":
        n, k = len(teacher.stages), len(student.stages)
        return f"ResNet, stem + {k} of {n} bottlenecks (the first of each stage)"
    return "MLP, one hidden layer of 32 (reference: two of 64)"


def export_student(d: Distilled, path: str | Path) -> Path:
    """The student as fp32 ONNX with the reference's tensor names (the existing export path)."""
    from predictors.export import export_onnx

    ref = d.reference
    return export_onnx(d.student, ref.example_inputs, ref.inputs, ref.outputs, path)
