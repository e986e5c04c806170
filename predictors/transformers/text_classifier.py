"""Raw text in, a label and its score out, around a DistilBERT-shaped classifier (input_ids and
attention_mask in, logits out): the example transformer (`hybridserve package --model
distilbert --transformer text`). Labels are `label-<i>` for the logits' columns unless the
class lists its own.
"""

from __future__ import annotations

import numpy as np

from predictors.model import TensorSpec
from predictors.text import encode
from predictors.transformer import Transformer


class TextClassifier(Transformer):
    inputs = [TensorSpec("text", "BYTES", (-1,))]
    outputs = [TensorSpec("label", "BYTES", (-1,)), TensorSpec("score", "FP32", (-1,))]
    labels: tuple[str, ...] = ("negative", "positive")

    def __init__(self, model_inputs: list[TensorSpec], model_outputs: list[TensorSpec]) -> None:
        super().__init__(model_inputs, model_outputs)
        names = {s.name: s for s in model_inputs}
        if set(names) != {"input_ids", "attention_mask"}:
            raise ValueError(f"expects input_ids and attention_mask, the model has {list(names)}")
        self.seq_len = int(names["input_ids"].shape[1])
        self.logits = model_outputs[0].name

    def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [t.decode("utf-8") for t in inputs["text"]]  # UnicodeDecodeError: a 400
        ids, mask = encode(texts, self.seq_len)
        return {"input_ids": ids, "attention_mask": mask}

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        logits = np.asarray(outputs[self.logits], dtype=np.float64)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = z / z.sum(axis=1, keepdims=True)
        best = p.argmax(axis=1)
        names = self.labels if len(self.labels) == p.shape[1] else None
        label = [names[i] if names else f"label-{i}" for i in best]
        return {
            "label": np.array(label, dtype=object),
            "score": p[np.arange(len(best)), best].astype(np.float32),
        }
