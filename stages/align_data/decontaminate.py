"""Held-out prompts must not test what pretraining saw.

The check runs on tokens, on exactly what the model trained on: tokenize's packed train
split. A held-out source sentence is contaminated when any ``n``-token window of it, or
the whole sentence when it is shorter than ``n`` tokens, occurs anywhere in the training
tokens. Windows are matched by a 64-bit polynomial hash computed with numpy over the
whole split (about a second for 9 M tokens per window length); a hash collision can
only over-report contamination, never hide it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_BASE = np.uint64(1_000_003)


def window_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """Hash of every length-``n`` window of a 1-D token array (uint64 arithmetic wraps)."""
    tokens = np.asarray(tokens, dtype=np.uint64)
    count = tokens.size - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _BASE + tokens[j:j + count] + np.uint64(1)
    return h


def train_tokens(tokens_dir: Path) -> np.ndarray:
    """The train split's tokens back to back (row padding stays in; pad never matches text)."""
    from stages.tokenize.packed import PackedDataset

    data = PackedDataset(Path(tokens_dir), "train")
    return np.concatenate([np.asarray(s.tokens).reshape(-1) for s in data.shards]) if data.shards else np.empty(0)


class Decontaminator:
    """Which token sequences occur in the training tokens, for a batch of queries at once."""

    def __init__(self, corpus: np.ndarray, n: int):
        self.corpus = corpus
        self.n = n

    def contaminated(self, queries: list[list[list[int]]]) -> list[bool]:
        """``queries[i]`` holds the token variants of sentence i; True when any variant matches."""
        wanted: dict[int, dict[int, list[int]]] = {}  # window length -> hash -> query indices
        for i, variants in enumerate(queries):
            for ids in variants:
                if not ids:
                    continue
                length = min(self.n, len(ids))
                for h in window_hashes(np.asarray(ids), length).tolist():
                    wanted.setdefault(length, {}).setdefault(h, []).append(i)
        hit = [False] * len(queries)
        for length, table in wanted.items():
            keys = np.sort(np.fromiter(table.keys(), dtype=np.uint64, count=len(table)))
            corpus = window_hashes(self.corpus, length)
            # few queries, many windows: binary-search each window among the sorted queries
            pos = np.minimum(np.searchsorted(keys, corpus), keys.size - 1)
            for key in np.unique(keys[pos[keys[pos] == corpus]]).tolist():
                for i in table[key]:
                    hit[i] = True
        return hit
