"""The fastText quality classifier: labeled examples from real sources, seeded
single-threaded training, held-out precision / recall / AUC, scoring."""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from stages.quality.config import ClassifierConfig, LabelRule

MODEL_FILE = "quality_classifier.bin"
_RULE_CACHE: dict[str, re.Pattern] = {}


def _glob(pattern: str) -> re.Pattern:
    if pattern not in _RULE_CACHE:
        from stages.ingest.sources import glob_regex

        _RULE_CACHE[pattern] = glob_regex(pattern)
    return _RULE_CACHE[pattern]


def label_of(doc: dict[str, Any], rules: list[LabelRule]) -> tuple[str, str] | None:
    """(label, split) of the first rule the document matches, or None."""
    for rule in rules:
        if doc.get("source") != rule.source:
            continue
        if rule.lang and not str(doc.get("lang_hint") or doc.get("lang") or "").startswith(rule.lang):
            continue
        if rule.path != "**" and not _glob(rule.path).match(str(doc.get("path") or "")):
            continue
        split = rule.split
        if split == "file":
            key = f"{doc.get('source')}:{doc.get('path') or doc.get('id')}".encode()
            split = "test" if zlib.crc32(key) % 5 == 0 else "train"
        return rule.label, split
    return None


def as_line(text: str, max_chars: int) -> str:
    return " ".join(text[:max_chars].split()).lower()


def training_line(label: str, line: str) -> str:
    return f"__label__{label} {line}\n"


def train(examples: list[tuple[str, str]], cfg: ClassifierConfig, workdir: Path):
    """Train on (label, line) pairs in the given order; returns the model."""
    path = workdir / "classifier-train.txt"
    with open(path, "w", encoding="utf-8") as handle:
        for label, line in examples:
            handle.write(training_line(label, line))
    model_path = workdir / "classifier-trained.bin"
    model = train_file(path, cfg, model_path)
    path.unlink()
    model_path.unlink()
    return model


def train_file(path: Path, cfg: ClassifierConfig, model_path: Path):
    """Train on a file of ``training_line``s (fastText reads it itself, so the examples are never held
    in Python), single-threaded and seeded, in a fresh process (``fasttext_train`` says why); saves the
    model to ``model_path`` and returns it loaded."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "stages.quality.fasttext_train", str(path), cfg.model_dump_json(),
                           str(model_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fastText training failed (exit {proc.returncode}): {proc.stdout.strip()[-2000:]}")
    return load(model_path)


def load(path: Path):
    import fasttext

    return fasttext.load_model(str(path))


def scores(model, lines: list[str]) -> np.ndarray:
    """P(hq) for each line, clipped to [0, 1] (fastText can return 1.00001)."""
    if not lines:
        return np.empty(0)
    labels, probs = model.predict(lines, k=2)
    out = np.empty(len(lines))
    for i, (lab, p) in enumerate(zip(labels, probs)):
        hq = dict(zip(lab, p)).get("__label__hq")
        if hq is None:  # only lq predicted with k=2 means hq has the rest
            lq = dict(zip(lab, p)).get("__label__lq", 0.0)
            hq = 1.0 - lq
        out[i] = hq
    return np.clip(out, 0.0, 1.0)


def evaluate(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Precision, recall, F1 of the hq class at ``threshold`` and ROC AUC (rank-based)."""
    pred = y_score >= threshold
    tp = float(np.sum(pred & (y_true == 1)))
    precision = tp / max(1.0, float(np.sum(pred)))
    recall = tp / max(1.0, float(np.sum(y_true == 1)))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    pos, neg = y_score[y_true == 1], y_score[y_true == 0]
    if len(pos) and len(neg):
        order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
        ranks = np.empty(len(order))
        ranks[order] = np.arange(1, len(order) + 1)
        # average ranks of ties
        values = np.concatenate([pos, neg])
        for v in np.unique(values):
            tie = values == v
            if tie.sum() > 1:
                ranks[tie] = ranks[tie].mean()
        auc = (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
    else:
        auc = float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "auc": float(auc),
            "test_hq": int(len(pos)), "test_lq": int(len(neg))}
