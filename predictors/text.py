"""A small tokenizer shipped in the project (no model hub): text to DistilBERT-shaped token
ids. Lower-cased words and punctuation, each hashed (FNV-1a) into the word-piece range of
BERT's vocabulary, between [CLS] and [SEP], padded or cut to the sequence length. It is
deterministic across machines and Python runs (no `hash()`), which is what a transformer that
runs in both the model server and the Lambda handler needs; it is not BERT's WordPiece, and a
model trained on real token ids would want the real vocabulary.
"""

from __future__ import annotations

import re

import numpy as np

PAD, UNK, CLS, SEP = 0, 100, 101, 102
FIRST_PIECE = 1000  # ids below are special or unused in BERT's vocabulary
VOCAB = 30522
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def _fnv1a(word: str) -> int:
    h = 0x811C9DC5
    for b in word.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def token_ids(text: str, vocab: int = VOCAB) -> list[int]:
    """The ids of `text`'s tokens, without [CLS]/[SEP]."""
    span = vocab - FIRST_PIECE
    return [FIRST_PIECE + _fnv1a(w) % span for w in _TOKEN.findall(text.lower())]


def encode(texts: list[str], seq_len: int, vocab: int = VOCAB) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 of shape (len(texts), seq_len)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 ([CLS] and [SEP]), got {seq_len}")
    ids = np.full((len(texts), seq_len), PAD, dtype=np.int64)
    mask = np.zeros((len(texts), seq_len), dtype=np.int64)
    for i, t in enumerate(texts):
        row = [CLS, *token_ids(t, vocab)[: seq_len - 2], SEP]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask
