"""Heuristic document filters: Gopher quality, Gopher repetition (Rae et al. 2021, as in
datatrove) and C4 / FineWeb line rules. Each measure is a small function of the text;
``FILTERS`` pairs it with its published threshold and direction.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "●", "○", "◦", "▪", "‣", "⁃", "-", "*", "·")
TERMINAL = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？")
_WORD = re.compile(r"\S+")
_PARAGRAPHS = re.compile(r"\n\s*\n")


class TextView:
    """A document's words, lines and paragraphs, split once and shared by every filter."""

    def __init__(self, text: str):
        self.text = text

    @functools.cached_property
    def words(self) -> list[str]:
        return _WORD.findall(self.text)

    @functools.cached_property
    def lines(self) -> list[str]:
        return [line for line in self.text.split("\n") if line.strip()]

    @functools.cached_property
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in _PARAGRAPHS.split(self.text) if p.strip()]

    @functools.cached_property
    def word_chars(self) -> int:
        return sum(map(len, self.words))


# --- Gopher quality ---------------------------------------------------------------
def word_count(view: TextView) -> float:
    return len(view.words)


def mean_word_length(view: TextView) -> float:
    ws = [w.strip(".,;:!?\"'()[]{}") for w in view.words]
    ws = [w for w in ws if w]
    return sum(map(len, ws)) / len(ws) if ws else 0.0


def symbol_word_ratio(view: TextView) -> float:
    n = len(view.words)
    text = view.text
    return (text.count("#") + text.count("...") + text.count("…")) / n if n else 1.0


def bullet_lines_fraction(view: TextView) -> float:
    lines = view.lines
    return sum(line.lstrip().startswith(BULLETS) for line in lines) / len(lines) if lines else 0.0


def ellipsis_lines_fraction(view: TextView) -> float:
    lines = view.lines
    return sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines) if lines else 0.0


def alpha_words_fraction(view: TextView) -> float:
    ws = view.words
    return sum(any(c.isalpha() for c in w) for w in ws) / len(ws) if ws else 0.0


def stop_words(view: TextView) -> float:
    return sum(1 for w in view.words if w.lower() in STOP_WORDS)


# --- Gopher repetition ------------------------------------------------------------
def _dup_fractions(units: list[str]) -> tuple[float, float]:
    """(fraction of units that repeat an earlier one, fraction of chars in them)."""
    if not units:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_units = dup_chars = 0
    for unit in units:
        if unit in seen:
            dup_units += 1
            dup_chars += len(unit)
        seen.add(unit)
    total_chars = sum(map(len, units))
    return dup_units / len(units), dup_chars / total_chars if total_chars else 0.0


def dup_line_fraction(view: TextView) -> float:
    return _dup_fractions(view.lines)[0]


def dup_line_char_fraction(view: TextView) -> float:
    return _dup_fractions(view.lines)[1]


def dup_paragraph_fraction(view: TextView) -> float:
    return _dup_fractions(view.paragraphs)[0]


def dup_paragraph_char_fraction(view: TextView) -> float:
    return _dup_fractions(view.paragraphs)[1]


def top_ngram_char_fraction(view: TextView, n: int) -> float:
    """Chars covered by the most frequent word n-gram, over all word chars."""
    ws = view.words
    if len(ws) < n:
        return 0.0
    grams = Counter(tuple(ws[i:i + n]) for i in range(len(ws) - n + 1))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    total = view.word_chars
    return count * sum(map(len, gram)) / total if total else 0.0


def dup_ngram_char_fraction(view: TextView, n: int) -> float:
    """Chars of words inside word n-grams that occur more than once (overlaps counted once)."""
    ws = view.words
    if len(ws) < n:
        return 0.0
    grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(ws)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            for j in range(i, i + n):
                covered[j] = True
    total = view.word_chars
    return sum(len(w) for w, c in zip(ws, covered) if c) / total if total else 0.0


# --- C4 / FineWeb -------------------------------------------------------------------
def lorem_ipsum(view: TextView) -> float:
    return float("lorem ipsum" in view.text.lower())


def javascript_lines_fraction(view: TextView) -> float:
    lines = view.lines
    return sum("javascript" in line.lower() for line in lines) / len(lines) if lines else 0.0


def curly_brace(view: TextView) -> float:
    return float("{" in view.text)


def terminal_punctuation_lines(view: TextView) -> float:
    lines = view.lines
    return sum(line.rstrip().endswith(TERMINAL) for line in lines) / len(lines) if lines else 0.0


@dataclass(frozen=True)
class Filter:
    name: str
    measure: Callable[[TextView], float]
    bound: str  # "min" (value must be >= threshold) or "max" (value must be <= threshold)
    default: float
    word_based: bool  # meaningless for languages written without spaces
    origin: str
    english_only: bool = False  # built on an English word list

    def passes(self, value: float, threshold: float) -> bool:
        return value >= threshold if self.bound == "min" else value <= threshold


def _n(fn, n):
    return lambda view: fn(view, n)


FILTERS: dict[str, Filter] = {f.name: f for f in [
    Filter("min_words", word_count, "min", 50, True, "Gopher quality"),
    Filter("max_words", word_count, "max", 100_000, True, "Gopher quality"),
    Filter("min_mean_word_length", mean_word_length, "min", 3, True, "Gopher quality"),
    Filter("max_mean_word_length", mean_word_length, "max", 10, True, "Gopher quality"),
    Filter("symbol_word_ratio", symbol_word_ratio, "max", 0.1, True, "Gopher quality"),
    Filter("bullet_lines", bullet_lines_fraction, "max", 0.9, False, "Gopher quality"),
    Filter("ellipsis_lines", ellipsis_lines_fraction, "max", 0.3, False, "Gopher quality"),
    Filter("alpha_words", alpha_words_fraction, "min", 0.8, True, "Gopher quality"),
    Filter("stop_words", stop_words, "min", 2, True, "Gopher quality", english_only=True),
    Filter("dup_lines", dup_line_fraction, "max", 0.3, False, "Gopher repetition"),
    Filter("dup_paragraphs", dup_paragraph_fraction, "max", 0.3, False, "Gopher repetition"),
    Filter("dup_line_chars", dup_line_char_fraction, "max", 0.2, False, "Gopher repetition"),
    Filter("dup_paragraph_chars", dup_paragraph_char_fraction, "max", 0.2, False, "Gopher repetition"),
    *[Filter(f"top_{n}gram_chars", _n(top_ngram_char_fraction, n), "max", t, True, "Gopher repetition")
      for n, t in ((2, 0.20), (3, 0.18), (4, 0.16))],
    *[Filter(f"dup_{n}gram_chars", _n(dup_ngram_char_fraction, n), "max", t, True, "Gopher repetition")
      for n, t in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))],
    Filter("lorem_ipsum", lorem_ipsum, "max", 0, False, "C4"),
    Filter("javascript_lines", javascript_lines_fraction, "max", 0.5, False, "C4 (document-level)"),
    Filter("curly_brace", curly_brace, "max", 0, False, "C4"),
    Filter("terminal_punctuation_lines", terminal_punctuation_lines, "min", 0.12, False, "FineWeb line_punct_thr"),
]}
