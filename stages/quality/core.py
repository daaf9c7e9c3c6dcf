"""Per-document quality decisions, independent of Ray: PII, language, heuristics, score."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stages.quality import classifier as clf
from stages.quality.config import QualityConfig
from stages.quality.heuristics import FILTERS, TextView
from stages.quality.langid import detect
from stages.quality.pii import mask_pii

SCORE_BINS = np.linspace(0.0, 1.0, 21)


def funnel_steps(cfg: QualityConfig, with_classifier: bool) -> list[str]:
    steps = ["language"] + list(cfg.filters)
    return steps + (["quality_classifier"] if with_classifier else [])


@dataclass
class ShardStats:
    docs_in: Counter = field(default_factory=Counter)  # step -> docs reaching it
    chars_in: Counter = field(default_factory=Counter)
    removed: Counter = field(default_factory=Counter)
    removed_chars: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)  # "<source>.emails" / "<source>.ips"
    langs: Counter = field(default_factory=Counter)
    score_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(SCORE_BINS) - 1, dtype=np.int64))
    kept_score_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(SCORE_BINS) - 1, dtype=np.int64))

    def merge(self, other: "ShardStats") -> None:
        for name in ("docs_in", "chars_in", "removed", "removed_chars", "pii", "langs"):
            getattr(self, name).update(getattr(other, name))
        self.score_hist += other.score_hist
        self.kept_score_hist += other.kept_score_hist


def first_failure(view: TextView, lang: str, lang_score: float, score: float | None, cfg: QualityConfig,
                  stats: ShardStats) -> tuple[str, str, Any] | None:
    """(filter, reason, value) of the first step that rejects the document, counting the funnel."""
    chars = len(view.text)

    def reach(step: str) -> None:
        stats.docs_in[step] += 1
        stats.chars_in[step] += chars

    reach("language")
    if cfg.languages and lang not in cfg.languages:
        return "language", f"language {lang} not in keep-list", lang
    if lang_score < cfg.min_lang_score:
        return "language", f"language score below {cfg.min_lang_score}", round(lang_score, 4)
    no_spaces = lang in cfg.no_space_languages
    for name in cfg.filters:
        reach(name)
        spec = FILTERS[name]
        if (spec.word_based and no_spaces) or (spec.english_only and lang != "en"):
            continue
        value = spec.measure(view)
        threshold = cfg.thresholds[name]
        if not spec.passes(value, threshold):
            return name, f"{spec.origin}: {name} {'<' if spec.bound == 'min' else '>'} {threshold}", round(value, 4)
    if score is not None:
        reach("quality_classifier")
        if score < cfg.classifier.keep_threshold:
            return "quality_classifier", f"quality score below {cfg.classifier.keep_threshold}", round(score, 4)
    return None


def process(docs: list[dict[str, Any]], cfg: QualityConfig, model=None) -> tuple[list[dict], list[dict], ShardStats]:
    """(kept records, removed records, stats) for a list of documents."""
    stats = ShardStats()
    if cfg.pii:
        for doc in docs:
            doc["text"], emails, ips = mask_pii(doc["text"])
            source = str(doc.get("source") or "unknown")
            stats.pii[f"{source}.emails"] += emails
            stats.pii[f"{source}.ips"] += ips
    langs = detect([d["text"] for d in docs], cfg.langid_model)
    scores = clf.scores(model, [clf.as_line(d["text"], cfg.classifier.max_chars) for d in docs]) if model else None
    kept, removed = [], []
    for i, doc in enumerate(docs):
        lang, lang_score = langs[i]
        score = float(scores[i]) if scores is not None else None
        doc["lang"], doc["lang_score"] = lang, round(lang_score, 4)
        doc["quality_score"] = round(score, 4) if score is not None else None
        stats.langs[lang] += 1
        if score is not None:
            stats.score_hist += np.histogram([score], SCORE_BINS)[0]
        failure = first_failure(TextView(doc["text"]), lang, lang_score, score, cfg, stats)
        if failure is None:
            kept.append(doc)
            if score is not None:
                stats.kept_score_hist += np.histogram([score], SCORE_BINS)[0]
        else:
            name, reason, value = failure
            stats.removed[name] += 1
            stats.removed_chars[name] += len(doc["text"])
            removed.append({**doc, "reason": reason, "filter": name, "value": value})
    return kept, removed, stats
