"""Reference models built in code with seeded random weights (no downloads).

`build_reference(name, seed)` gives a torch module of a real model's size and structure, an
example batch and its V2 tensor specs, so that packaging, artifact sizes, cold starts and latency
can be measured without pulling weights from anywhere:

- ``distilbert``: a DistilBERT-sized text classifier (6 layers, hidden 768, 12 heads, FFN 3072,
  vocabulary 30,522, 512 positions, sequence 128, 2 labels on the first token; ~67 M parameters);
- ``resnet50``: a ResNet-50-sized image classifier (bottlenecks [3, 4, 6, 3], ~25.6 M parameters);
- ``tinybert``: the DistilBERT structure shrunk (2 layers, hidden 64) for fast tests;
- ``mlp``: a tiny MLP (16 -> 4) for fast tests.

Every layer draws its own weights (biases and norm scales included): exporters deduplicate equal
initializers, and a model whose layers share values would package smaller than the real one.
Torch is imported lazily so that the rest of `predictors` works without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from predictors.model import TensorSpec

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@dataclass(frozen=True)
class ReferenceModel:
    """A reference model: the module, an example batch, its tensors and what inputs mean."""

    name: str
    module: nn.Module
    example_inputs: dict[str, np.ndarray]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # integer inputs: half-open range [low, high) of valid values (token ids below the vocab)
    input_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """torch's RNG seeded with `seed` inside, the caller's RNG state untouched outside."""
    torch = _torch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "building a reference model needs torch: pip install 'hybridserve[torch]'"
        ) from e
    return torch


# --------------------------------------------------------------------------------------------
# DistilBERT-like encoder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BertConfig:
    layers: int = 6
    hidden: int = 768
    heads: int = 12
    ffn: int = 3072
    vocab: int = 30_522
    max_positions: int = 512
    seq_len: int = 128
    labels: int = 2


DISTILBERT = BertConfig()
TINYBERT = BertConfig(
    layers=2, hidden=64, heads=4, ffn=256, vocab=1000, max_positions=64, seq_len=32
)


def _init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT-style init, but with distinct random biases and norm scales in every layer."""
    torch = _torch()
    nn = torch.nn
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.normal_(0.0, std)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, std)
            elif isinstance(m, nn.LayerNorm):
                m.weight.normal_(1.0, std)
                m.bias.normal_(0.0, std)


def _make_bert(cfg: BertConfig) -> nn.Module:
    torch = _torch()
    nn = torch.nn
    if cfg.hidden % cfg.heads:
        raise ValueError(f"hidden {cfg.hidden} is not a multiple of heads {cfg.heads}")

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = cfg.heads
            self.head_dim = cfg.hidden // cfg.heads
            self.q_lin = nn.Linear(cfg.hidden, cfg.hidden)
            self.k_lin = nn.Linear(cfg.hidden, cfg.hidden)
            self.v_lin = nn.Linear(cfg.hidden, cfg.hidden)
            self.out_lin = nn.Linear(cfg.hidden, cfg.hidden)

        def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
            b, s, h = x.shape

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

            q = split(self.q_lin(x)) * (1.0 / math.sqrt(self.head_dim))
            k = split(self.k_lin(x))
            v = split(self.v_lin(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) + mask_bias  # (b, heads, s, s)
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
            return self.out_lin(ctx.transpose(1, 2).reshape(b, s, h))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = SelfAttention()
            self.sa_layer_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
            self.ffn = nn.Sequential(
                nn.Linear(cfg.hidden, cfg.ffn), nn.GELU(), nn.Linear(cfg.ffn, cfg.hidden)
            )
            self.output_layer_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)

        def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
            x = self.sa_layer_norm(x + self.attention(x, mask_bias))
            return self.output_layer_norm(x + self.ffn(x))

    class TextClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word_embeddings = nn.Embedding(cfg.vocab, cfg.hidden)
            self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
            self.embed_layer_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
            self.layers = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.pre_classifier = nn.Linear(cfg.hidden, cfg.hidden)
            self.classifier = nn.Linear(cfg.hidden, cfg.labels)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
            x = self.embed_layer_norm(x)
            # additive mask: 0 where attended, -1e4 where padded (finite, so fp16 stays finite)
            mask_bias = (1.0 - attention_mask.to(x.dtype))[:, None, None, :] * -1e4
            for layer in self.layers:
                x = layer(x, mask_bias)
            first = torch.relu(self.pre_classifier(x[:, 0]))
            return self.classifier(first)

    model = TextClassifier()
    _init_weights(model)
    return model


def _bert(cfg: BertConfig, name: str, seed: int) -> ReferenceModel:
    with _seeded(seed):
        module = _make_bert(cfg).eval()
    rng = np.random.default_rng(seed)
    batch = 2
    ids = rng.integers(0, cfg.vocab, size=(batch, cfg.seq_len), dtype=np.int64)
    mask = np.ones((batch, cfg.seq_len), dtype=np.int64)
    mask[1, cfg.seq_len // 2 :] = 0  # one padded example
    return ReferenceModel(
        name=name,
        module=module,
        example_inputs={"input_ids": ids, "attention_mask": mask},
        inputs=[
            TensorSpec("input_ids", "INT64", (-1, cfg.seq_len)),
            TensorSpec("attention_mask", "INT64", (-1, cfg.seq_len)),
        ],
        outputs=[TensorSpec("logits", "FP32", (-1, cfg.labels))],
        input_ranges={"input_ids": (0, cfg.vocab), "attention_mask": (1, 2)},
    )


# --------------------------------------------------------------------------------------------
# ResNet-50
# --------------------------------------------------------------------------------------------


def _make_resnet50(num_classes: int = 1000) -> nn.Module:
    torch = _torch()
    nn = torch.nn

    def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(cout),
        ]

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * self.expansion
            self.body = nn.Sequential(
                *conv_bn(cin, width, 1),
                nn.ReLU(inplace=True),
                *conv_bn(width, width, 3, stride),  # stride on the 3x3 (ResNet v1.5)
                nn.ReLU(inplace=True),
                *conv_bn(width, cout, 1),
            )
            self.downsample = (
                nn.Sequential(*conv_bn(cin, cout, 1, stride))
                if stride != 1 or cin != cout
                else None
            )
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(self.body(x) + identity)

    class ResNet50(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                *conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
            stages: list[nn.Module] = []
            cin = 64
            for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for i in range(blocks):
                    stages.append(Bottleneck(cin, width, stride if i == 0 else 1))
                    cin = width * Bottleneck.expansion
            self.stages = nn.Sequential(*stages)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = self.pool(self.stages(self.stem(images)))
            return self.fc(torch.flatten(x, 1))

    model = ResNet50()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                # distinct per layer, and statistics that keep activations in range
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0.0, 0.02)
                m.running_mean.normal_(0.0, 0.02)
                m.running_var.uniform_(0.9, 1.1)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01)
                m.bias.normal_(0.0, 0.01)
        for block in model.stages:
            # damp the last norm of each residual branch (as zero-init-residual, but distinct)
            block.body[-1].weight.mul_(0.2)
    return model


def _resnet50(seed: int) -> ReferenceModel:
    with _seeded(seed):
        module = _make_resnet50().eval()
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    return ReferenceModel(
        name="resnet50",
        module=module,
        example_inputs={"images": images},
        inputs=[TensorSpec("images", "FP32", (-1, 3, 224, 224))],
        outputs=[TensorSpec("logits", "FP32", (-1, 1000))],
    )


# --------------------------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------------------------


def _mlp(seed: int) -> ReferenceModel:
    torch = _torch()
    nn = torch.nn
    with _seeded(seed), torch.no_grad():
        module = nn.Sequential(
            nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
        ).eval()
        for m in module.modules():
            if isinstance(m, nn.Linear):
                m.bias.normal_(0.0, 0.1)
    rng = np.random.default_rng(seed)
    return ReferenceModel(
        name="mlp",
        module=module,
        example_inputs={"x": rng.standard_normal((4, 16), dtype=np.float32)},
        inputs=[TensorSpec("x", "FP32", (-1, 16))],
        outputs=[TensorSpec("y", "FP32", (-1, 4))],
    )


REFERENCES: dict[str, Callable[[int], ReferenceModel]] = {
    "distilbert": lambda seed: _bert(DISTILBERT, "distilbert", seed),
    "resnet50": _resnet50,
    "tinybert": lambda seed: _bert(TINYBERT, "tinybert", seed),
    "mlp": _mlp,
}


def reference_names() -> list[str]:
    return list(REFERENCES)


def get_reference(name: str, seed: int = 0) -> ReferenceModel:
    """The reference model `name` with weights drawn from `seed` (deterministic)."""
    if name not in REFERENCES:
        raise ValueError(f"unknown reference model {name!r}; known: {', '.join(REFERENCES)}")
    return REFERENCES[name](seed)


def build_reference(
    name: str, seed: int = 0
) -> tuple[nn.Module, dict[str, np.ndarray], list[TensorSpec], list[TensorSpec]]:
    """(module in eval mode, example inputs by name, input specs, output specs) of `name`."""
    ref = get_reference(name, seed)
    return ref.module, ref.example_inputs, ref.inputs, ref.outputs
